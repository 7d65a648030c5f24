"""fastrcnn.cpu: OpenBLAS's kernel is chosen for the AVX-512 CPUs its runtime detection misses, and only those;
freed memory is kept for reuse unless the user set malloc's variables; the commands and ``fastrcnn.tune_cpu()`` make
these settings, ``import fastrcnn`` none."""
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from fastrcnn.cpu import openblas_coretype

ROOT = Path(__file__).resolve().parents[1]
AVX512 = "fpu sse sse2 avx avx2 fma avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"


def cpuinfo(vendor, family, flags, processors=2):
    block = f"processor\t: {{}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: 2\nflags\t\t: {flags}\n"
    return "\n".join(block.format(i) for i in range(processors))


def test_zen5_with_avx512_gets_the_skylakex_kernels():
    assert openblas_coretype(cpuinfo("AuthenticAMD", 26, AVX512)) == "SkylakeX"


def test_cpus_openblas_knows_or_without_avx512_are_left_alone():
    assert openblas_coretype(cpuinfo("AuthenticAMD", 25, AVX512)) is None  # Zen 3/4: detected by OpenBLAS
    assert openblas_coretype(cpuinfo("GenuineIntel", 6, AVX512)) is None
    assert openblas_coretype(cpuinfo("AuthenticAMD", 26, "fpu sse avx avx2 fma avx512f")) is None  # no bw/dq/vl
    assert openblas_coretype("") is None
    assert openblas_coretype("vendor_id : AuthenticAMD\ncpu family : twenty-six\n") is None


def test_choice_is_set_before_numpy_and_never_over_the_users(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(cpuinfo("AuthenticAMD", 26, AVX512))
    # fastrcnn/cpu.py loaded on its own, in a process where NumPy is not imported yet
    script = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("cpu", {str(ROOT / "fastrcnn" / "cpu.py")!r})
cpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu)
for env in ({{}}, {{"OPENBLAS_CORETYPE": "Haswell"}}):
    print(cpu.choose_openblas_kernel(env, {str(info)!r}), env)
import numpy
env = {{}}
print(cpu.choose_openblas_kernel(env, {str(info)!r}), env)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["SkylakeX {'OPENBLAS_CORETYPE': 'SkylakeX'}",
                                        "None {'OPENBLAS_CORETYPE': 'Haswell'}",
                                        "None {}"]  # too late once NumPy has loaded OpenBLAS


#: Eight 4 MiB blocks allocated, written and freed together three times, as a pass's temporaries: the page
#: faults of the last two rounds (none where freed memory is kept for reuse, 16 K with glibc's defaults).
FAULTS = """
import ctypes, resource
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]

def temporaries():
    blocks = [libc.malloc(4 << 20) for _ in range(8)]
    for block in blocks:
        ctypes.memset(block, 1, 4 << 20)
    for block in blocks:
        libc.free(block)

def faults():
    temporaries()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    temporaries()
    temporaries()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
"""
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def run_script(script, **extra_env):
    """Run ``script`` in a fresh interpreter without the user's OpenBLAS and malloc settings; its stdout lines."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "OPENBLAS_CORETYPE")}
    env.update(extra_env)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_importing_fastrcnn_changes_nothing_process_wide():
    """The environment is as it was, NumPy (and its OpenBLAS) is not loaded, and glibc's malloc still hands
    freed blocks back: the second and third rounds of temporaries fault their pages in again."""
    lines = run_script(FAULTS + """
import os, sys
before = dict(os.environ)
import fastrcnn
print(dict(os.environ) == before, "numpy" in sys.modules, faults())
""")
    same_env, numpy_loaded, faults = lines[-1].split()
    assert (same_env, numpy_loaded) == ("True", "False")
    assert int(faults) > 1000  # 64 MiB: 16 K pages of 4 KiB (fewer where huge pages are used)


@pytest.mark.skipif(not GLIBC, reason="glibc only")
@pytest.mark.parametrize("user_setting", [None, "131072"])
def test_tune_cpu_keeps_freed_memory_unless_the_user_set_malloc(user_setting):
    """After ``fastrcnn.tune_cpu()`` the later rounds reuse the first round's pages (no page faults); with the
    user's own MALLOC_TRIM_THRESHOLD_ glibc's defaults stay, and 64 MiB fault in again."""
    extra = {"MALLOC_TRIM_THRESHOLD_": user_setting} if user_setting else {}
    lines = run_script(FAULTS + """
import fastrcnn
print(fastrcnn.tune_cpu()["malloc_keeps_freed_memory"], faults())
""", **extra)
    kept, faults = lines[-1].split()
    if user_setting:
        assert kept == "False" and int(faults) > 1000  # a user's malloc variable is never overridden
    else:
        assert kept == "True" and int(faults) < 100


@pytest.mark.skipif(not GLIBC, reason="glibc only")
@pytest.mark.parametrize("command", ["solve", "test", "demo", "compress", "convert", "proposals", "export"])
def test_commands_tune_the_cpu_before_numpy_loads(command):
    """Every command chooses OpenBLAS's kernel (here a CPU that needs SkylakeX is simulated) while NumPy is not
    loaded yet, which ``choose_openblas_kernel`` requires, and makes glibc keep freed memory."""
    lines = run_script(FAULTS + f"""
import os, sys
import fastrcnn.cpu
fastrcnn.cpu.openblas_coretype = lambda cpuinfo: "SkylakeX"
from fastrcnn.cli import {command}
try:
    {command}.main(["--help"])
except SystemExit:
    pass
print(os.environ.get("OPENBLAS_CORETYPE"), faults())
""")
    coretype, faults = lines[-1].split()
    assert coretype == "SkylakeX"
    assert int(faults) < 100
