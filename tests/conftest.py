"""Test set-up: the helpers' folder on sys.path, ../shared located, and CI's strict mode.

Tests that need ../shared (the reference models) or an oracle (PyTorch, OpenCV's dnn, protoc) skip with a
reason where those are absent, as on a user's clone. With FASTRCNN_STRICT_TESTS=1 (set by .ci/run) every
such skip is a failure: only tests that need a GPU may skip there.
"""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
STRICT = os.environ.get("FASTRCNN_STRICT_TESTS") == "1"


@pytest.fixture(scope="session")
def shared_dir():
    """The reference material beside the checkout (../shared), or a skip."""
    if not (SHARED / "reference").is_dir():
        pytest.skip(f"needs the reference material at {SHARED}")
    return SHARED


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
