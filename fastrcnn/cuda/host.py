"""The package's CUDA kernels on the CPU: each ``.cu`` file compiled by g++ with ``host_shim.h`` (which
``kernel_common.h`` includes outside CUDA compilers), every block and thread of a launch run in turn.

The shared library of a file holds a C entry per kernel instantiation (``FRCNN_HOST_LAUNCHER``), taking the
grid, the block and the arguments' addresses as cuLaunchKernel does. It is built once into
``$FASTRCNN_KERNEL_CACHE`` (default ``$XDG_CACHE_HOME/fastrcnn/kernels``, ``~/.cache`` without it) under a name
holding a hash of the sources and flags, written to a temporary file and renamed into place, so that
processes building at once never load a partial file.
"""
import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy

from ..errors import Error
from ..fileio import atomic_write
from .kernels import FOLDER, expression, expressions

FLAGS = ("-x", "c++", "-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror")
_libraries = {}
_lock = threading.Lock()


def symbol(expr):
    """The C entry of a kernel instantiation: ``roi_pool_forward<float>`` → ``frcnn_host_roi_pool_forward_float``."""
    return "frcnn_host_" + re.sub(r"\W+", "_", expr).strip("_")


def wrapper(file):
    """The translation unit g++ compiles for ``file``: the source and a launcher per instantiation."""
    lines = [f'#include "{file}"'] + [f"FRCNN_HOST_LAUNCHER({symbol(e)}, {e})" for e in expressions(file)]
    return "\n".join(lines) + "\n"


def compiler():
    found = shutil.which("g++")
    if found is None:
        raise Error("running fastrcnn's CUDA kernels on the CPU needs g++ (a C++17 compiler) on PATH; "
                    "none was found (fastrcnn/cuda/host.py)")
    return found


def cache_dir():
    folder = os.environ.get("FASTRCNN_KERNEL_CACHE")
    if not folder:
        folder = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastrcnn" / "kernels"
    return Path(folder)


def build(file):
    """The path of ``file``'s shared library, compiled unless the cache holds it."""
    gxx = compiler()
    code = wrapper(file)
    digest = hashlib.sha256("\0".join([gxx, *FLAGS, code]).encode())
    for path in sorted(FOLDER.glob("*.h")) + [FOLDER / file]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    folder = cache_dir()
    target = folder / f"{Path(file).stem}-{digest.hexdigest()[:20]}.so"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory(prefix="fastrcnn-kernel-") as scratch:
        built = Path(scratch) / target.name
        done = subprocess.run([gxx, *FLAGS, f"-I{FOLDER}", "-o", str(built), "-"], input=code, text=True,
                              capture_output=True, check=False)
        if done.returncode:
            raise Error(f"g++ failed to compile fastrcnn/cuda/{file} for the CPU:\n{done.stderr}")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Error(f"cannot create the kernel cache {folder} (set FASTRCNN_KERNEL_CACHE): {exc}") from None
        atomic_write(target, lambda f: f.write(built.read_bytes()))
    return target


def library(file):
    """``file``'s shared library, built and loaded once per process."""
    with _lock:
        if file not in _libraries:
            _libraries[file] = ctypes.CDLL(str(build(file)))
        return _libraries[file]


def _dims(value, what):
    dims = (int(value),) if numpy.ndim(value) == 0 else tuple(int(v) for v in value)
    if not 1 <= len(dims) <= 3 or min(dims) <= 0:
        raise Error(f"a launch's {what} must be 1 to 3 positive sizes, got {value}")
    return (ctypes.c_uint * 3)(*(dims + (1,) * (3 - len(dims))))


def signature(file, name, dtype):
    """The kernel's parameter types: NumPy dtypes, those of pointers' elements for pointers, and a flag
    (pointer or not) for each."""
    entry = getattr(library(file), symbol(expression(name, dtype)) + "_signature")
    entry.restype = ctypes.c_char_p
    return [(code.startswith("*"), numpy.dtype(code.lstrip("*"))) for code in entry().decode().split()]


def launch(file, name, dtype, grid, block, args):
    """Run kernel ``name`` (its ``dtype`` instantiation) of ``file`` on NumPy arrays: every (block, thread)
    of ``grid`` × ``block`` in turn. ``args`` are C-contiguous arrays (passed as pointers) and NumPy scalars
    (passed in their own type), in the kernel's order, each checked against the kernel's parameter type (as
    CuPy packs them: a scalar by its own size)."""
    entry = getattr(library(file), symbol(expression(name, dtype)))
    params = signature(file, name, dtype)
    if len(args) != len(params):
        raise Error(f"kernel {name} takes {len(params)} arguments, got {len(args)}")
    values = []
    for i, (a, (pointer, want)) in enumerate(zip(args, params)):
        if pointer and isinstance(a, numpy.ndarray) and a.dtype == want:
            if not a.flags.c_contiguous:
                raise Error(f"kernel {name}: argument {i} must be a C-contiguous array")
            values.append(ctypes.c_void_p(a.ctypes.data))
        elif not pointer and isinstance(a, numpy.generic) and a.dtype == want:
            values.append(numpy.array(a))
        else:
            got = (f"an array of {a.dtype}" if isinstance(a, numpy.ndarray) else
                   f"a scalar of {a.dtype}" if isinstance(a, numpy.generic) else type(a).__name__)
            raise Error(f"kernel {name}: argument {i} must be {'an array' if pointer else 'a scalar'} of "
                        f"{want}, got {got}")
    addresses = [ctypes.addressof(v) if isinstance(v, ctypes.c_void_p) else v.ctypes.data for v in values]
    entry(_dims(grid, "grid"), _dims(block, "block"), (ctypes.c_void_p * max(len(values), 1))(*addresses))
