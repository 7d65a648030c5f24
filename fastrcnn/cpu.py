"""Process-wide CPU settings that the commands make first and a library user asks for with ``fastrcnn.tune_cpu()``
(``import fastrcnn`` changes nothing): the BLAS kernel NumPy's OpenBLAS runs, chosen before NumPy loads it, and
C-library memory that is kept for reuse rather than handed back to the kernel.

OpenBLAS's DYNAMIC_ARCH builds (NumPy's wheels among them) pick their kernels from the CPU's family and
model; releases up to 0.3.34 lack AMD family 0x1A (Zen 5, EPYC Turin) and fall back to the AVX2 Haswell
kernels on such CPUs although they have full-width AVX-512: single-precision GEMM, most of every forward and
backward pass here, then runs at about half the rate of the SkylakeX kernels (measured 224 against 412
GFLOP/s on two Zen 5 cores). OpenBLAS reads ``OPENBLAS_CORETYPE`` once, when it loads, so the choice has to
be made before the first ``import numpy``; a user's own ``OPENBLAS_CORETYPE`` always wins.
"""
import ctypes
import os
import sys

#: The AVX-512 subsets the SkylakeX kernels use (Linux lists a flag only when the OS saves its state).
AVX512_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
#: AMD CPU families that OpenBLAS's runtime detection does not know (0x1A: Zen 5).
UNKNOWN_AMD_FAMILIES = frozenset({0x1A})


def openblas_coretype(cpuinfo):
    """The OPENBLAS_CORETYPE to set for a CPU described by /proc/cpuinfo text, or None to let OpenBLAS choose."""
    fields = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break  # the first processor's block is enough
            continue
        fields.setdefault(key.strip(), value.strip())
    try:
        family = int(fields.get("cpu family", ""))
    except ValueError:
        return None
    if fields.get("vendor_id") != "AuthenticAMD" or family not in UNKNOWN_AMD_FAMILIES:
        return None
    return "SkylakeX" if AVX512_FLAGS <= set(fields.get("flags", "").split()) else None


def choose_openblas_kernel(environ=os.environ, cpuinfo_path="/proc/cpuinfo"):
    """Set OPENBLAS_CORETYPE for a CPU OpenBLAS misdetects, if NumPy is not loaded yet and the user set none.

    Returns the value set, or None."""
    if "OPENBLAS_CORETYPE" in environ or "numpy" in sys.modules:
        return None
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as f:
            coretype = openblas_coretype(f.read())
    except OSError:
        return None
    if coretype:
        environ["OPENBLAS_CORETYPE"] = coretype
    return coretype


#: glibc's mallopt parameters.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
#: The user's own malloc settings, which are always left as they are.
MALLOC_VARIABLES = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_TOP_PAD_")


def retain_freed_memory(environ=os.environ):
    """Let glibc's malloc keep freed memory for the next allocation, as Caffe keeps its blobs' memory.

    Every forward and backward pass creates NumPy temporaries of a few to a few hundred MiB. By default glibc
    maps blocks over its (adaptive, at most 32 MiB) mmap threshold afresh and gives the top of the heap back
    once 128 KiB-plus is free, so each pass faults in its temporaries' pages again, which costs as much as
    the arithmetic on them (measured: a toy training iteration 94 → 80 ms, M's conv trunk 212 → 190 ms).
    With mmap off and the trim threshold at 2 GiB, every block comes from the heap and freed memory stays
    with the process for reuse: the resident size stays at its peak, which is reached anyway (L's detection
    peak 2066 → 2081 MiB). Nothing is changed where the user set malloc variables (``MALLOC_TRIM_THRESHOLD_``,
    ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_MMAP_MAX_``, ``MALLOC_TOP_PAD_`` or glibc.malloc tunables), or outside
    glibc. Returns whether the settings were made."""
    if not sys.platform.startswith("linux") or any(name in environ for name in MALLOC_VARIABLES):
        return False
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl's mallopt does nothing)
    except (OSError, AttributeError):
        return False
    return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1))


def tune_cpu():
    """Both settings for this process, as every command makes them before it loads NumPy: call it first thing
    (OpenBLAS's kernel can only be chosen before NumPy is imported). Returns what was set, e.g.
    ``{"openblas_coretype": None, "malloc_keeps_freed_memory": True}``."""
    return {"openblas_coretype": choose_openblas_kernel(), "malloc_keeps_freed_memory": retain_freed_memory()}
