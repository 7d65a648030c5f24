"""Downloading and unpacking the public data: PASCAL VOC, the ImageNet caffemodels, selective-search boxes, and
the original's model definitions and demo images.

The original's ``data/scripts/fetch_*.sh`` skip a file whose md5 is already right, download with wget and untar.
Here a download goes to a temporary file beside the destination, is checked against its md5 (or SHA-256) and
only then renamed into place, so an interrupted or corrupt download never looks like a finished one. Several of the
original hosts are gone, so every archive takes a list of mirrors and a URL override (flag or environment
variable); the scripts in ``scripts/`` are thin tables of archives around :func:`run`.
"""
import argparse
import hashlib
import http.client
import os
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import Error
from .config import DATA_ROOT_ENV, resolve_data_root

_CHUNK = 1 << 20
_TIMEOUT_S = 60
_ARCHIVE_SUFFIXES = (".tar", ".tgz", ".tar.gz")


def file_digest(path, algorithm="md5"):
    """The hex digest (``md5`` or ``sha256``) of a file, read in chunks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url, dest, md5=None, progress=True, sha256=None):
    """Download ``url`` to ``dest`` unless ``dest`` is already there with the right digest; return ``dest``.

    The digest checked is ``sha256`` where given, else ``md5``. Without either an existing ``dest`` is kept as it
    is (only complete downloads are ever renamed into place). A wrong digest is an Error naming url, expected and
    actual digests; the downloaded bytes are deleted.
    """
    dest = Path(dest)
    algorithm, expected = ("sha256", sha256) if sha256 else ("md5", md5)
    expected = expected.lower() if expected else None
    if dest.is_file():
        if expected is None or file_digest(dest, algorithm) == expected:
            print(f"{dest} is already present{f' with the right {algorithm}' if expected else ''}; not downloading")
            return dest
        print(f"{dest} has the wrong {algorithm}; downloading it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    handle, part = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            actual = _download(url, out, progress, algorithm)
        if expected is not None and actual != expected:
            raise Error(f"{algorithm} mismatch for {url}: expected {expected}, got {actual} (the download was deleted)")
        os.replace(part, dest)
    finally:
        if os.path.exists(part):
            os.remove(part)
    return dest


def _download(url, out, progress, algorithm):
    """Stream ``url`` into the open file ``out``; return the ``algorithm`` digest of what was written."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    request = urllib.request.Request(url, headers={"User-Agent": "fastrcnn-downloader"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:  # noqa: S310  (user-chosen URL)
            total = int(response.headers.get("Content-Length") or 0) or None
            size = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1][:40],
                      disable=not progress) as bar:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise Error(f"download of {url} failed: {exc}") from None
    if total is not None and size != total:
        raise Error(f"download of {url} failed: got {size} of {total} bytes")
    return digest.hexdigest()


def fetch_any(urls, dest, md5=None, progress=True, sha256=None):
    """:func:`fetch` from the first of ``urls`` that works (a failed download or wrong digest tries the next)."""
    failures = []
    for i, url in enumerate(urls):
        try:
            return fetch(url, dest, md5, progress, sha256)
        except Error as exc:
            failures.append(str(exc))
            if i + 1 < len(urls):
                print(f"{exc}; trying the next URL", file=sys.stderr)
    raise Error(f"could not download {Path(dest).name} from any of {len(failures)} URL(s):\n  "
                + "\n  ".join(failures))


def extract(archive, dest_dir):
    """Unpack a .tar / .tgz / .tar.gz into ``dest_dir``, refusing members that would land outside it.

    Every member is checked before anything is written: absolute names, '..' components, links that point
    outside ``dest_dir`` and device files are Errors naming the archive and the member. Python's tarfile
    'data' filter does the check where it exists (3.11.4+, 3.10.12+); an equivalent check stands in elsewhere.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if not archive.name.endswith(_ARCHIVE_SUFFIXES):
        raise Error(f"cannot unpack {archive}: expected one of {', '.join(_ARCHIVE_SUFFIXES)}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, dest_dir, archive)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest_dir, members=members, filter="data")
            else:
                tar.extractall(dest_dir, members=members)
    except (tarfile.TarError, EOFError) as exc:
        raise Error(f"cannot unpack {archive}: {exc}") from None


def _check_member(member, dest_dir, archive):
    def refuse(problem):
        raise Error(f"refusing to unpack {archive}: member {member.name!r} {problem}")

    # The 'data' filter would strip a leading '/' and unpack such a member inside; it is refused outright.
    if os.path.isabs(member.name) or ".." in Path(member.name).parts:
        refuse("has an absolute path or a '..' component")
    if hasattr(tarfile, "data_filter"):
        try:
            tarfile.data_filter(member, str(dest_dir))
        except tarfile.FilterError as exc:
            refuse(f"is unsafe: {exc}")
        return
    root = os.path.realpath(dest_dir)

    def inside(path):
        return os.path.commonpath([root, os.path.realpath(path)]) == root

    if member.isdev():
        refuse("is a device file")
    link_base = os.path.dirname(member.name) if member.issym() else ""
    if (member.issym() or member.islnk()) and (
            os.path.isabs(member.linkname) or not inside(os.path.join(root, link_base, member.linkname))):
        refuse(f"is a link pointing outside the destination ({member.linkname!r})")


# ---------------------------------------------------------------------------------------------- scripts

@dataclass(frozen=True)
class Archive:
    """One downloadable archive: ``key`` names its --url-KEY flag and FASTRCNN_URL_KEY variable."""
    key: str
    filename: str
    urls: tuple
    md5: str | None
    note: str = ""

    @property
    def env_var(self):
        return "FASTRCNN_URL_" + self.key.upper().replace("-", "_")


def run(description, archives, argv=None, after=None):
    """Command-line entry of the fetch scripts: download each archive into the data root and unpack it there.

    Returns the exit status (an Error is printed alone, status 1). ``after(data_root)`` runs once all are in.
    An archive is unpacked again only when it is newer than its ``<archive>.extracted`` stamp.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-root", default="",
                        help=f"where to put the files (default: ${DATA_ROOT_ENV}, else ./data)")
    for archive in archives:
        parser.add_argument(f"--url-{archive.key}", metavar="URL", dest=f"url_{archive.key.replace('-', '_')}",
                            help=f"download {archive.filename} from URL (also ${archive.env_var}; default: "
                                 f"{' then '.join(archive.urls)})")
    if len(archives) > 1:
        parser.add_argument("--only", nargs="+", choices=[a.key for a in archives], metavar="KEY",
                            help="fetch only these archives: " + ", ".join(a.key for a in archives))
    parser.add_argument("--no-md5-check", action="store_true",
                        help="accept any content (only for a mirror that repackaged the archive)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    root = resolve_data_root(args.data_root)
    wanted = getattr(args, "only", None) or [a.key for a in archives]
    try:
        for archive in archives:
            if archive.key not in wanted:
                continue
            override = getattr(args, f"url_{archive.key.replace('-', '_')}") or os.environ.get(archive.env_var)
            urls = (override,) if override else archive.urls
            md5 = None if args.no_md5_check else archive.md5
            if archive.note:
                print(f"note: {archive.note}")
            path = fetch_any(urls, root / archive.filename, md5, progress=not args.no_progress)
            stamp = path.with_name(path.name + ".extracted")
            if stamp.is_file() and stamp.stat().st_mtime >= path.stat().st_mtime:
                print(f"{path} is already unpacked")
                continue
            print(f"unpacking {path} into {root}")
            extract(path, root)
            stamp.touch()
        if after is not None:
            after(root)
    except Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
