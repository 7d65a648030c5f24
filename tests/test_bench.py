"""scripts/bench.py --quick end to end: it runs, and its JSON holds every row with finite numbers."""
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = {("gemm", "-"), ("gemm-end", "-")} | {
    (row, model) for model in ("toy", "S") for row in ("trunk", "roi", "roi-train", "head", "detect", "train")
} | {("detect-svd", "S"), ("export", "S"), ("ort-detect", "S"), ("memory", "toy"), ("memory", "S")}
#: the twins each row kind has (OpenCV runs the inference rows only)
TWINS = {"gemm": {"torch"}, "gemm-end": {"torch"}, "trunk": {"torch", "opencv"}, "roi": {"torch"},
         "roi-train": {"torch"}, "head": {"torch"}, "detect": {"torch", "opencv"}, "detect-svd": {"torch"},
         "train": {"torch"}, "export": set(), "ort-detect": {"onnxruntime"}}


def twins_here():
    """The twins this machine can run: a missing PyTorch or OpenCV dnn leaves its columns out (onnxruntime is
    in the test extra)."""
    found = {"onnxruntime"}
    try:
        import torch  # noqa: F401
        found.add("torch")
    except ImportError:
        pass
    try:
        import cv2
        if hasattr(getattr(cv2, "dnn", None), "readNetFromCaffe"):
            found.add("opencv")
    except ImportError:
        pass
    return found


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ratio: fastrcnn time / twin time" in done.stdout  # the table was printed
    return json.loads(path.read_text())


def test_every_row_is_there(report):
    assert {(row["row"], row["model"]) for row in report["rows"]} == ROWS


def test_every_number_is_finite_and_every_twin_checked(report):
    available = twins_here()
    for row in report["rows"]:
        if row["row"] == "memory":
            expected = {"fastrcnn"} | (available & {"torch", "opencv"})
            assert set(row["peak_rss_mib"]) == expected, row
            assert all(0 < mib < 1e6 for mib in row["peak_rss_mib"].values()), row
            continue
        results = row["results"]
        assert set(results) == {"fastrcnn"} | (TWINS[row["row"]] & available), row
        for impl, result in results.items():
            assert math.isfinite(result["median_s"]) and result["median_s"] > 0, (row["row"], impl)
            assert result["rate"] is None or (math.isfinite(result["rate"]) and result["rate"] > 0)
            if impl != "fastrcnn":
                assert math.isfinite(result["ratio"]) and result["ratio"] > 0
        for impl in set(results) - {"fastrcnn"}:
            if row["row"] not in ("gemm", "gemm-end"):
                assert results[impl]["check_rel_error"] <= 1e-3, (row["row"], row["model"], impl, results[impl])


def test_machine_and_settings_are_recorded(report):
    machine, settings = report["machine"], report["settings"]
    assert machine["cores"] >= 1 and machine["numpy"] and machine["threads"] == settings["threads"]
    assert settings["quick"] is True and settings["runs"] == 1 and settings["models"] == ["toy", "S"]


def test_gpu_without_cupy_exits_2():
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed: the GPU path does not stop at the import")
    except ImportError:
        pass
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--device", "gpu"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "CuPy" in done.stderr


def test_short_rows_repeat_until_they_fill_the_minimum_time():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from benchkit.core import time_runs
    finally:
        sys.path.pop(0)
    calls = []

    def sleep():
        calls.append(None)
        time.sleep(0.01)
    assert len(time_runs(sleep, 3)) == 3 and len(calls) == 4  # the warm-up call, then --runs
    assert len(time_runs(sleep, 2, min_seconds=0.1)) >= 9  # ~10 calls of 10 ms fill 0.1 s
    assert len(time_runs(sleep, 2, min_seconds=0.01)) == 2  # --runs calls fill it already


def test_mpi_rows_run_under_mpiexec_and_report_the_scaling(tmp_path):
    """--device mpi: the allreduce of S's gradients on 2 ranks (its size: S's trained parameters) and the toy's
    iteration on 1 and 2 ranks, with the ratio of their times."""
    path = tmp_path / "mpi.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--device", "mpi", "--quick",
                           "--models", "S", "--json", str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    rows = json.loads(path.read_text())["rows"]
    assert [(r["row"], r["model"], r["ranks"]) for r in rows] == [("allreduce", "S", 2), ("train", "toy", 1),
                                                                  ("train", "toy", 2)]
    assert 200 < rows[0]["MB"] < 250 and all(math.isfinite(r["seconds"]) and r["seconds"] > 0 for r in rows)
    assert rows[2]["ratio"] == pytest.approx(rows[2]["seconds"] / rows[1]["seconds"])
    assert "allreduce" in done.stdout and "speed-up" in done.stdout
