"""Atomic file writes: a temp file beside the target, then ``os.replace``, so an interrupted write never
leaves a half-written file and never destroys the previous one."""
import os
import secrets
from pathlib import Path

from .errors import Error


def atomic_write(path, write, mode="xb"):
    """Call ``write(file)`` on a new temp file beside ``path``, then move it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise Error(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text), mode="x")
