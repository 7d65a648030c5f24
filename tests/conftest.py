"""Test set-up: the helpers' folder on sys.path, the original Fast R-CNN files located, and CI's strict mode.

Tests that need the original files (``scripts/fetch_reference.py`` downloads them; see
``model_helpers.find_reference``) or an optional oracle (protoc, a third-party caffemodel) skip with a reason
that names the remedy where those are absent, as on a user's clone. With FASTRCNN_STRICT_TESTS=1 (set by
.ci/run) every such skip is a failure: only tests that need a GPU may skip there. Tests marked ``gpu`` are
skipped, with the reason, where CuPy is missing or no CUDA device answers.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_helpers import find_reference  # noqa: E402

STRICT = os.environ.get("FASTRCNN_STRICT_TESTS") == "1"


@pytest.fixture(scope="session")
def reference_dir():
    """The folder holding ``original-models/`` and ``demo-images/``, or a skip saying how to get it."""
    folder, reason = find_reference()
    if folder is None:
        pytest.skip(reason)
    return folder


def gpu_unavailable():
    """Why the ``gpu`` tests cannot run here, or None where CuPy sees a CUDA device. Asked in a child process,
    so that collecting them imports no CuPy into the tests' own (which some tests check)."""
    probe = "import cupy; print(cupy.cuda.runtime.getDeviceCount())"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    if done.returncode == 0:
        return None if done.stdout.strip() != "0" else "needs a CUDA GPU: this machine has none"
    lines = (done.stderr or done.stdout).strip().splitlines() or ["no device"]
    if "No module named 'cupy'" in lines[-1]:
        return f"needs a CUDA GPU and CuPy (install the [cuda12] or [cuda13] extra): {lines[-1]}"
    return f"needs a CUDA GPU: CuPy finds none usable ({lines[-1]})"


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    reason = gpu_unavailable() if gpu_items else None
    for item in gpu_items if reason else ():
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (STRICT and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if "gpu" in item.keywords or "GPU" in reason or "CUDA" in reason:
        return
    report.outcome = "failed"
    report.longrepr = f"skipped, which FASTRCNN_STRICT_TESTS=1 forbids: {reason}"
