"""fastrcnn.cpu: OpenBLAS's kernel is chosen for the AVX-512 CPUs its runtime detection misses, and only those;
freed memory is kept for reuse unless the user set malloc's variables."""
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


def test_importing_fastrcnn_applies_the_choice_for_this_machine():
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    done = subprocess.run([sys.executable, "-c", "import os, fastrcnn; print(os.environ.get('OPENBLAS_CORETYPE'))"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    try:
        expected = openblas_coretype(Path("/proc/cpuinfo").read_text())
    except OSError:
        expected = None
    assert done.stdout.strip() == str(expected)


REUSE_SCRIPT = """
import resource, fastrcnn, numpy
from fastrcnn.cpu import retain_freed_memory

def temporaries():  # eight 4 MiB arrays alive together, then freed, as a pass's temporaries
    arrays = [numpy.ones(1 << 20, numpy.float32) for _ in range(8)]
    del arrays

temporaries()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
temporaries()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(retain_freed_memory({"MALLOC_TRIM_THRESHOLD_": "131072"}), faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize("user_setting", [None, "131072"])
def test_freed_memory_is_reused_without_page_faults_unless_the_user_set_malloc(user_setting):
    """After ``import fastrcnn`` a second round of large temporaries reuses the first round's pages (no page
    faults); with the user's own MALLOC_TRIM_THRESHOLD_ glibc's defaults stay, and 32 MiB fault in again."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    if user_setting:
        env["MALLOC_TRIM_THRESHOLD_"] = user_setting
    done = subprocess.run([sys.executable, "-c", REUSE_SCRIPT], capture_output=True, text=True, timeout=120,
                          env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    declined, faults = done.stdout.split()
    assert declined == "False"  # a user's malloc variable is never overridden
    if user_setting:
        assert int(faults) > 1000  # 32 MiB: 8192 pages of 4 KiB (fewer where huge pages are used)
    else:
        assert int(faults) < 100
