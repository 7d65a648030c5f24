"""A layer's independent pieces of work on all the CPU's cores at once, as Caffe's OpenMP loops and
PyTorch's intra-op threads do.

NumPy runs every element-wise pass (im2col, the Winograd transforms, pooling, ReLU, LRN) on one core; only
its matrix products use OpenBLAS's threads. ``in_parallel`` deals a layer's pieces (bands of a convolution's
output, ranges of channels or rows) into one share per OpenBLAS thread and runs the shares at once on threads
of their own, with OpenBLAS on one thread meanwhile: the products run as fast as one threaded product does
(measured on two Zen 3 cores: 2 × (128 × 1200 × 7676) in 23.3 ms either way), and the element-wise passes
between them, whose NumPy loops release the GIL, run on every core (Winograd transforms of 256 channels on
150 × 200: 44 → 24 ms). The thread count is OpenBLAS's own (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``,
else the cores); with one thread, on the GPU, or where NumPy's OpenBLAS cannot be found among the loaded
libraries (Linux's /proc/self/maps), everything runs in the calling thread as before.
"""
import concurrent.futures
import contextlib
import ctypes
import math
import os
import threading

import numpy

#: (setter, getter) names of the OpenBLAS thread count: the scipy-openblas builds NumPy's wheels bundle
#: (ILP64 and LP64 prefixes), then plain OpenBLAS.
_THREAD_FUNCTIONS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
                     ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
                     ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
                     ("openblas_set_num_threads", "openblas_get_num_threads"))
_state = {"blas": False, "pool": None, "size": 0, "section": 0}
_lock = threading.Lock()
_local = threading.local()


def _forget_threads():
    """In a forked child: the parent's pool threads do not exist there, nor does its section."""
    _state.update(pool=None, size=0, section=0)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_threads)


def _loaded_openblas(maps_path="/proc/self/maps"):
    """Paths of NumPy's OpenBLAS among the libraries mapped into this process: those inside NumPy's own
    installation, else the only OpenBLAS mapped. (Other packages, OpenCV's wheels among them, bring their own
    copy: of several outside NumPy's installation, which one NumPy uses is unknown.)"""
    try:
        with open(maps_path, encoding="utf-8", errors="replace") as f:
            paths = {fields[5].strip() for fields in (line.split(None, 5) for line in f) if len(fields) == 6}
    except OSError:
        return []
    paths = sorted(p for p in paths if "openblas" in os.path.basename(p))
    numpy_root = os.path.dirname(os.path.dirname(os.path.realpath(numpy.__file__)))
    ours = [p for p in paths if p.startswith(numpy_root) and "numpy" in p[len(numpy_root):]]
    return ours or (paths if len(paths) == 1 else [])


def openblas_threads():
    """(set, get) of the thread count of NumPy's OpenBLAS, or None where it cannot be found (looked up once)."""
    if _state["blas"] is False:
        _state["blas"] = None
        for path in _loaded_openblas():
            try:
                library = ctypes.CDLL(path)
            except OSError:
                continue
            for setter, getter in _THREAD_FUNCTIONS:
                if hasattr(library, setter) and hasattr(library, getter):
                    _state["blas"] = (getattr(library, setter), getattr(library, getter))
                    break
            if _state["blas"]:
                break
    return _state["blas"]


def threads(xp=numpy):
    """How many shares ``in_parallel`` runs at once: OpenBLAS's thread count on the CPU (the count it had
    before the current section), else 1; 1 as well inside a share."""
    if xp is not numpy or getattr(_local, "share", False):
        return 1
    if _state["section"]:
        return _state["section"]
    blas = openblas_threads()
    return max(1, int(blas[1]())) if blas else 1


@contextlib.contextmanager
def section(xp=numpy):
    """Within: OpenBLAS on one thread, its count left to ``in_parallel``. Net.forward and Net.backward run in
    one, so that no product between the parallel ones wakes OpenBLAS's own threads: they spin for a while
    after each threaded call and would take a core from the shares (measured: a Winograd layer 12 → 19 ms).
    Nested sections, and sections with one thread, change nothing."""
    count = threads(xp)
    if count < 2 or _state["section"]:
        yield
        return
    set_threads = openblas_threads()[0]
    set_threads(1)
    _state["section"] = count
    try:
        yield
    finally:
        _state["section"] = 0
        set_threads(count)


def _pool(size):
    with _lock:
        if _state["size"] < size:
            if _state["pool"] is not None:
                _state["pool"].shutdown(wait=False)
            _state["pool"] = concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix="fastrcnn")
            _state["size"] = size
        return _state["pool"]


def _as_share(function, share):
    _local.share = True
    try:
        return function(share)
    finally:
        _local.share = False


def in_parallel(xp, function, pieces):
    """[function(share) for each share], where the pieces are dealt round-robin into ``threads(xp)`` shares
    (no more than there are pieces) that run at once in a section, the first in the calling thread. Every
    share has finished when this returns or raises. Pieces must not write to the same memory."""
    pieces = list(pieces)
    count = min(len(pieces), threads(xp))
    if count < 2:
        return [function(pieces)]
    shares = [pieces[i::count] for i in range(count)]
    with section(xp):
        futures = [_pool(count - 1).submit(_as_share, function, share) for share in shares[1:]]
        try:
            first = _as_share(function, shares[0])
        finally:
            concurrent.futures.wait(futures)
    return [first] + [future.result() for future in futures]


#: The fewest elements an element-wise piece has: below, handing it to another thread costs more than it saves.
GRAIN = 1 << 16


def split(length, parts, grain=1):
    """[start, stop) ranges cutting ``length`` into at most ``parts`` nearly equal, non-empty pieces of at
    least ``grain`` (one piece where ``length`` is shorter)."""
    parts = max(1, min(parts, length // grain))
    return [(length * i // parts, length * (i + 1) // parts) for i in range(parts)]


def elementwise(xp, function, *arrays, block=None):
    """function(*pieces) for pieces of the flattened (contiguous) arrays, shared among the threads. With
    ``block``, on the CPU, each thread hands its piece over ``block`` elements at a time, so that a function of
    several passes makes them all while the block is in cache."""
    flat = [a.reshape(-1) for a in arrays]

    def run(share):
        for start, stop in share:
            size = block if block and xp is numpy else max(1, stop - start)
            for first in range(start, stop, size):
                function(*(f[first:min(stop, first + size)] for f in flat))
    in_parallel(xp, run, split(flat[0].size, threads(xp), GRAIN))


def channel_ranges(xp, shape):
    """[start, stop) ranges of axis 1 of an array of ``shape``, each spanning the other axes whole (for work
    that reduces per channel), one per thread where the array is large enough."""
    rest = math.prod(shape) // max(1, shape[1])
    return split(shape[1], threads(xp), -(-GRAIN // max(1, rest)))


def planes(xp, shape, axis):
    """Pieces (n, start, stop) of an (N, C, H, W) array: per image, ranges along ``axis`` (1 or 2), at least one
    per thread where the image is large enough."""
    parts = -(-threads(xp) // max(1, shape[0]))
    grain = -(-GRAIN * shape[axis] // max(1, math.prod(shape[1:])))
    return [(n, start, stop) for n in range(shape[0]) for start, stop in split(shape[axis], parts, grain)]
