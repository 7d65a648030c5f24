"""The GPU check's scripts without a GPU: gpu_check.sh's plan and limits, its JSON summary over stand-in stages,
bench.py's GPU plan (which imports neither CuPy nor PyTorch), the GPU rows' targets, and gpu_smoke.py's
failure on a machine without CuPy."""
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
STAGES = ("install", "smoke", "gpu-tests", "toy-train", "toy-test", "bench")


def from_scripts(name):
    """A module of scripts/ (gpu_check, benchkit.*), imported with scripts/ on sys.path for the import only."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


@pytest.fixture(scope="module")
def gpu_check():
    return from_scripts("gpu_check")


def test_dry_run_lists_every_stage_with_limits_within_eight_minutes(tmp_path):
    done = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    limits = dict(re.findall(r"^(\S+): limit (\d+)s", done.stdout, re.M))
    assert tuple(limits) == STAGES
    assert sum(map(int, limits.values())) <= 480
    assert f"total limit: {sum(map(int, limits.values()))}s" in done.stdout
    commands = [line.strip() for line in done.stdout.splitlines() if line.startswith("  ")]
    assert all(c.startswith("timeout ") for c in commands)
    text = "\n".join(commands)
    for piece in ("scripts/gpu_smoke.py", "pytest -m 'gpu and not slow'",
                  "fastrcnn.cli.solve prototxt/toy/solver.prototxt --gpu 0", "fastrcnn.cli.test prototxt/toy/test.prototxt",
                  "bench.py --device gpu --models L,M,S --json"):
        assert piece in text, piece
    assert not list(tmp_path.iterdir()), "a dry run writes nothing"


def test_toy_figures_read_the_tools_output(gpu_check):
    train = "Solving toy\nIteration 100, lr = 0.02, loss = 1.2\nIteration 2000, loss = 0.3\nout/toy/toy_iter_2000.npz\n"
    assert gpu_check.toy_train_figures([train], None) == {"weights": "out/toy/toy_iter_2000.npz",
                                                          "last_logged_iteration": 2000}
    assert gpu_check.toy_train_figures([], None) == {"weights": None, "last_logged_iteration": None}
    assert gpu_check.toy_test_figures(["star 0.8\nmAP: 0.8812\nINFO done\n"], None) == {
        "map": 0.8812, "cpu_map_bar": 0.90, "meets_cpu_bar": False}
    assert "error" in gpu_check.toy_test_figures(["Traceback\n"], None)


def test_a_toy_training_stopped_by_its_limit_leaves_its_latest_snapshot_to_test(tmp_path, gpu_check):
    (tmp_path / "toy").mkdir()
    for i in (250, 1000, 750):
        (tmp_path / "toy" / f"toy_fast_rcnn_iter_{i}.npz").write_bytes(b"")
    assert gpu_check.toy_train_figures(["Iteration 1000, loss = 0.5\n"], tmp_path) == {
        "weights": str(tmp_path / "toy" / "toy_fast_rcnn_iter_1000.npz"), "last_logged_iteration": 1000,
        "partial": True, "snapshot_iteration": 1000}
    done = "out/toy/toy_fast_rcnn_iter_2000.npz\n"
    assert gpu_check.toy_train_figures([done], tmp_path)["weights"] == "out/toy/toy_fast_rcnn_iter_2000.npz"
    train = gpu_check.stages(None, tmp_path, tmp_path / "work")[3]
    assert train.name == "toy-train" and train.commands[0][-3:] == ["--set", "TRAIN.SNAPSHOT_ITERS", "250"]


def test_wheels_in_the_carried_folder_are_installed_offline(tmp_path, gpu_check):
    (tmp_path / "nvidia_cudnn_frontend-1.28.0-cp312-cp312-manylinux_2_28_x86_64.whl").write_bytes(b"")
    install = gpu_check.stages(tmp_path, tmp_path / "out", tmp_path / "work")[0]
    assert install.commands[0][-5:] == ["install", "--no-index", "--find-links", str(tmp_path),
                                        "nvidia-cudnn-frontend"]
    assert "--no-deps" in install.commands[1] and install.commands[1][-2:] == ["-e", str(ROOT)]


def test_summary_records_each_stage_and_stops_only_after_smoke(tmp_path, gpu_check):
    python = sys.executable
    Stage = gpu_check.Stage
    stages = [
        Stage("install", 20, [[python, "-c", "print('{\"cupy\": \"14.0\"}')"]], gpu_check.install_figures),
        Stage("broken", 20, [[python, "-c", "import sys; print('boom'); sys.exit(3)"]]),
        Stage("slow", 1, [[python, "-c", "import time; time.sleep(30)"]]),
        Stage("toy-test", 20, [[python, "-c", "print('aeroplane 0.5'); print('mAP: 0.9312')"]],
              gpu_check.toy_test_figures),
        Stage("smoke", 20, [[python, "-c", "import sys; sys.exit(1)"]], stop_on_failure=True),
        Stage("after", 20, [[python, "-c", "print('never')"]]),
    ]
    summary = gpu_check.run_all(stages, tmp_path)
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["passed"] is False and written["limit_s"] == 101
    by_name = {s["name"]: s for s in written["stages"]}
    assert [s["name"] for s in written["stages"]] == [s.name for s in stages]
    assert {name: s["status"] for name, s in by_name.items()} == {
        "install": "passed", "broken": "failed", "slow": "timeout", "toy-test": "passed", "smoke": "failed",
        "after": "skipped"}
    assert by_name["install"]["figures"] == {"modules": {"cupy": "14.0"}}
    assert by_name["broken"]["returncodes"] == [3] and "boom" in by_name["broken"]["tail"]
    assert by_name["slow"]["seconds"] < 15
    assert by_name["toy-test"]["figures"] == {"map": 0.9312, "cpu_map_bar": 0.90, "meets_cpu_bar": True}
    assert by_name["after"]["reason"] == "stage smoke failed"
    for entry in written["stages"][:-1]:
        assert set(entry) >= {"name", "limit_s", "status", "seconds", "commands", "figures", "log"}
        assert (tmp_path / entry["log"]).exists()


@pytest.mark.parametrize("engine_passed", [True, False])
def test_a_smoke_failing_only_in_cudnn_lets_the_check_go_on(tmp_path, gpu_check, engine_passed):
    """Without cuDNN the engine runs its CAFFE convolutions: the later stages still test it."""
    python, Stage = sys.executable, gpu_check.Stage
    report = {"passed": False, "engine_passed": engine_passed, "steps": {}}
    write = f"import json, sys; open({str(tmp_path / 'gpu_smoke.json')!r}, 'w').write({json.dumps(report)!r}); sys.exit(1)"
    stages = [Stage("smoke", 20, [[python, "-c", write]], stop_on_failure=gpu_check.smoke_stops),
              Stage("after", 20, [[python, "-c", "print('ran')"]])]
    by_name = {s["name"]: s for s in gpu_check.run_all(stages, tmp_path)["stages"]}
    assert by_name["smoke"]["status"] == "failed"
    assert by_name["after"]["status"] == ("passed" if engine_passed else "skipped")


def test_figures_of_the_tests_and_the_bench(tmp_path, gpu_check):
    (tmp_path / "gpu_tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="x"/></testcase>'
        '<testcase classname="tests.test_a" name="test_skip"><skipped/></testcase></testsuite></testsuites>')
    assert gpu_check.junit_figures([], tmp_path) == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1,
                                                     "failed": ["tests.test_a::test_bad"]}
    rows = [{"row": "detect", "model": "L", "tf32": False, "workload": "w", "results": {
        "fastrcnn": {"median_s": 0.018}, "torch": {"median_s": 0.02, "ratio": 0.9, "check_rel_error": 1e-6}},
        "target": {"text": "t", "status": "pass"}},
        {"row": "train", "model": "L", "tf32": True, "workload": "w", "results": {}, "error": "Error: no plan"}]
    (tmp_path / "bench_gpu.json").write_text(json.dumps({"rows": rows, "complete": False,
                                                          "settings": {"gpu": {"name": "H100"}}}))
    figures = gpu_check.bench_figures([], tmp_path)
    assert figures["complete"] is False and figures["gpu"] == {"name": "H100"}
    assert figures["rows"]["detect L TF32 off"] == {
        "fastrcnn": {"ms": 18.0}, "torch": {"ms": 20.0, "ratio": 0.9, "rel_error": 1e-6},
        "target": {"text": "t", "status": "pass"}}
    assert figures["rows"]["train L TF32 on"] == {"error": "Error: no plan"}
    assert gpu_check.bench_figures([], tmp_path / "missing") == {"error": "bench_gpu.json was not written"}


def test_bench_gpu_plan_imports_neither_cupy_nor_torch():
    code = ("import runpy, sys\n"
            "sys.argv = ['bench.py', '--device', 'gpu', '--dry-run']\n"
            "try:\n"
            "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as exc:\n"
            "    assert not exc.code, exc.code\n"
            "print('IMPORTED', sorted(m for m in ('cupy', 'torch', 'torchvision') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=SCRIPTS, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "IMPORTED []" in done.stdout
    lines = [line.strip() for line in done.stdout.splitlines() if line.startswith("  ")]
    for model in ("S", "M", "L"):
        for tf32 in ("off", "on"):
            for kind in ("detect", "detect-svd", "train"):
                assert any(line.startswith(f"{kind} {model} TF32 {tf32}: fastrcnn, torch") for line in lines), \
                    (kind, model, tf32)
        assert any(line.startswith(f"memory {model} TF32 off: fastrcnn, torch") for line in lines), model
    targets = [line for line in lines if "target" in line]
    assert [line.split(":")[0] for line in targets] == ["detect L TF32 off", "train L TF32 off", "memory L TF32 off"]
    assert "20 ms" in targets[0] and "1.0x PyTorch" in targets[0] and "60 ms" in targets[1] and "8 GB" in targets[2]


@pytest.fixture(scope="module")
def rows_gpu():
    return from_scripts("benchkit.rows_gpu"), from_scripts("benchkit.report")


def _row(kind, model, ours_s, torch_s=None, tf32=False):
    results = {"fastrcnn": {"median_s": ours_s, "rate": None}}
    if torch_s is not None:
        results["torch"] = {"median_s": torch_s, "ratio": ours_s / torch_s, "check_rel_error": 1e-6}
    return {"row": kind, "model": model, "workload": "w", "results": results, "notes": [], "tf32": tf32}


@pytest.mark.parametrize("row, status", [
    (_row("detect", "L", 0.019, 0.020), "pass"),
    (_row("detect", "L", 0.019, 0.018), "miss"),   # faster than 20 ms, but slower than PyTorch
    (_row("detect", "L", 0.021, 0.030), "miss"),   # faster than PyTorch, but over 20 ms
    (_row("detect", "L", 0.010), "n/a"),           # no PyTorch to compare with
    (_row("train", "L", 0.059), "pass"),
    (_row("train", "L", 0.061, 0.05), "miss"),
])
def test_targets_are_the_specs(rows_gpu, row, status):
    rows_gpu, _ = rows_gpu
    assert rows_gpu.judge(row)["status"] == status


def test_targets_apply_to_vgg16_in_float32_only(rows_gpu):
    rows_gpu, _ = rows_gpu
    assert rows_gpu.judge(_row("detect", "L", 0.019, 0.020, tf32=True)) is None
    assert rows_gpu.judge(_row("detect", "M", 0.019, 0.020)) is None
    assert rows_gpu.judge(_row("detect-svd", "L", 0.019, 0.020)) is None
    memory = {"row": "memory", "model": "L", "tf32": False, "peak_mib": {"fastrcnn": {"detect": 900, "train": 7000}},
              "device_used_mib": {"fastrcnn": {"detect": 950, "train": 7600}}}
    assert rows_gpu.judge(memory)["status"] == "pass"  # 7600 MiB = 7.97e9 bytes
    memory["device_used_mib"]["fastrcnn"]["train"] = 7700  # 8.07e9 bytes: the device's use counts too
    assert rows_gpu.judge(memory)["status"] == "miss"


def test_gpu_table_puts_each_tf32_row_beside_its_float32_one(rows_gpu, capsys):
    rows_gpu, report = rows_gpu
    rows = [_row("detect", "L", 0.019, 0.020), _row("train", "L", 0.05, 0.04),
            _row("detect", "L", 0.012, 0.011, tf32=True),
            {"row": "train", "model": "L", "workload": "w", "results": {}, "notes": [], "tf32": True,
             "error": "RuntimeError: no plan"}]
    for row in rows:
        target = rows_gpu.judge(row)
        if target:
            row["target"] = target
    report.print_gpu_table(rows)
    lines = capsys.readouterr().out.splitlines()[2:6]
    assert [line.split()[:3] for line in lines] == [["detect", "L", "off"], ["detect", "L", "on"],
                                                    ["train", "L", "off"], ["train", "L", "on"]]
    assert "19.00 ms" in lines[0] and "20.00 ms" in lines[0] and "0.95x" in lines[0] and "pass" in lines[0]
    assert "error: RuntimeError: no plan" in lines[3]


def test_smoke_without_cupy_fails_naming_cupy_and_the_gpu(tmp_path):
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is importable here: the failure without a GPU is not what this machine shows")
    except ImportError:
        pass
    done = subprocess.run([sys.executable, str(SCRIPTS / "gpu_smoke.py"), "--json", str(tmp_path / "s.json")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "CuPy" in done.stderr and "GPU" in done.stderr
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["passed"] is False and report["steps"]["cupy"]["status"] == "failed"
    assert {s["status"] for name, s in report["steps"].items() if name != "cupy"} == {"skipped"}
