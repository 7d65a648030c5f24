#!/usr/bin/env python3
"""The GPU machine's one check (run through scripts/gpu_check.sh): install, smoke, GPU tests, the toy detector
trained and evaluated on the GPU, and the GPU benchmark, each under ``timeout`` with a stated limit.

    scripts/gpu_check.sh [--wheels DIR] [--out DIR] [--dry-run]

Stages (their limits add up to 480 s, so that the whole check ends within 8 minutes):

  install    the wheels carried in --wheels DIR that this machine lacks (pip --no-index --find-links DIR), the
             checkout itself (pip install --no-deps -e .), then which modules import (gpu_smoke.py --modules)
  smoke      scripts/gpu_smoke.py: CuPy, the cuDNN frontend, one cuDNN plan and convolution, the RoI pooling
             and NMS kernels against the CPU, the TF32 switch; the check STOPS here when it fails, unless only
             its cuDNN steps failed (the engine then runs its CAFFE convolutions, which the next stages test)
  gpu-tests  every test marked gpu but not slow (pytest -m "gpu and not slow"), with a JUnit XML report; the
             slow one trains the toy on both devices, which toy-train and toy-test do here on the GPU
  toy-train  frcnn-solve prototxt/toy/solver.prototxt --gpu 0 (the README's training, on the GPU; the data
             are generated in a temporary folder, the weights and train.log go to DIR/toy), snapshotting every
             250 iterations: stopped by its limit, its latest snapshot is what toy-test evaluates (partial)
  toy-test   frcnn-test on its weights; the mAP beside the bar the CPU-trained detector meets (0.90, the
             slow end-to-end test's)
  bench      scripts/bench.py --device gpu (L, M, S; TF32 off and on; PyTorch beside)

A stage's failure or timeout is recorded and the next stage runs (except after smoke). One JSON summary,
--out DIR/gpu_check.json (default: $OUT, else ./gpu_check_out), is rewritten after every stage, with each
stage's status, seconds, commands and figures; each stage's full output is in DIR/logs/. --dry-run prints
the stages, their commands and limits, and runs nothing. Every command runs with the checkout first on
PYTHONPATH, so that a failed editable install still runs this checkout.
"""
import argparse
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
#: The bar the CPU-trained toy detector meets (tests/test_end_to_end.py): the GPU-trained one is set beside it.
CPU_TOY_MAP_BAR = 0.90
#: toy-train snapshots this often, so that a run its limit stops still leaves weights for toy-test.
TOY_SNAPSHOT_ITERS = 250
class Stage:
    """One stage: its name, its limit (seconds, shared by its commands), the commands (argv lists, or
    callables of the summary so far that return one, for a command that needs an earlier result), whether a
    failure stops the check (True, or a function of (entry, out folder) that decides), and a function of
    (outputs, out folder) that returns its figures."""

    def __init__(self, name, limit_s, commands, figures=None, stop_on_failure=False):
        self.name, self.limit_s, self.commands = name, limit_s, commands
        self.figures = figures or (lambda outputs, out: {})
        self.stop_on_failure = stop_on_failure


def last_json_line(text):
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def smoke_figures(outputs, out):
    path = out / "gpu_smoke.json"
    if not path.exists():
        return {"error": "gpu_smoke.json was not written"}
    report = json.loads(path.read_text())
    return {name: {k: v for k, v in step.items() if k != "status"} | {"status": step["status"]}
            for name, step in report["steps"].items()}


def smoke_stops(entry, out):
    """Whether a failed smoke stage stops the check: unless gpu_smoke.json says only its cuDNN steps failed."""
    try:
        return not json.loads((out / "gpu_smoke.json").read_text()).get("engine_passed", False)
    except (OSError, ValueError):
        return True


def junit_figures(outputs, out):
    path = out / "gpu_tests.xml"
    if not path.exists():
        return {"error": "no JUnit report was written"}
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    totals = {key: sum(int(s.get(key, 0)) for s in suites) for key in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for s in suites for case in s.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return totals | {"failed": failed[:50]}


def toy_train_figures(outputs, out):
    """The weights' path (the last line frcnn-solve prints) and the last iteration its log reached; where the
    run ended before printing it (its limit), the latest snapshot's weights (every TOY_SNAPSHOT_ITERS), marked
    partial, so that toy-test still evaluates a GPU-trained detector."""
    text = outputs[-1] if outputs else ""
    weights = [line.strip() for line in text.splitlines() if line.strip().endswith(".npz")]
    iterations = re.findall(r"Iteration (\d+)", text)
    figures = {"weights": weights[-1] if weights else None,
               "last_logged_iteration": int(iterations[-1]) if iterations else None}
    if figures["weights"] is None and out is not None:
        found = [(int(m.group(1)), path) for path in (Path(out) / "toy").glob("*_iter_*.npz")
                 if (m := re.search(r"_iter_(\d+)\.npz$", path.name))]
        if found:
            iteration, path = max(found)
            figures.update(weights=str(path), partial=True, snapshot_iteration=iteration)
    return figures


def toy_test_figures(outputs, out):
    found = re.findall(r"^mAP: (\d\.\d+)$", outputs[-1] if outputs else "", re.M)
    if not found:
        return {"error": "frcnn-test printed no 'mAP: ' line"}
    value = float(found[-1])
    return {"map": value, "cpu_map_bar": CPU_TOY_MAP_BAR, "meets_cpu_bar": value >= CPU_TOY_MAP_BAR}


def bench_figures(outputs, out):
    path = out / "bench_gpu.json"
    if not path.exists():
        return {"error": "bench_gpu.json was not written"}
    report = json.loads(path.read_text())
    rows = {}
    for row in report.get("rows", []):
        key = f"{row['row']} {row['model']} TF32 {'on' if row.get('tf32') else 'off'}"
        if "error" in row:
            rows[key] = {"error": row["error"]}
        elif row["row"] == "memory":
            rows[key] = {"peak_mib": row["peak_mib"], "device_used_mib": row["device_used_mib"]}
        else:
            rows[key] = {impl: {"ms": r["median_s"] * 1e3, **({"ratio": r["ratio"]} if "ratio" in r else {}),
                                **({"rel_error": r["check_rel_error"]} if "check_rel_error" in r else {})}
                         for impl, r in row["results"].items()}
        if "target" in row:
            rows[key]["target"] = row["target"]
    return {"complete": report.get("complete", True), "rows": rows,
            "gpu": report.get("settings", {}).get("gpu")}


def install_figures(outputs, out):
    return {"modules": last_json_line(outputs[-1]) if outputs else None}


def stages(wheels, out, work):
    """The check's stages with their limits (seconds), which add up to 480 (8 minutes)."""
    install = []
    if wheels is not None:
        names = sorted({p.name.split("-")[0].replace("_", "-") for p in Path(wheels).glob("*.whl")})
        if names:
            install.append([PYTHON, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), *names])
    install.append([PYTHON, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", str(ROOT)])
    install.append([PYTHON, "scripts/gpu_smoke.py", "--modules"])

    def toy_test(summary):
        weights = next((s["figures"].get("weights") for s in summary["stages"] if s["name"] == "toy-train"), None)
        return [PYTHON, "-m", "fastrcnn.cli.test", "prototxt/toy/test.prototxt", weights or "<weights from toy-train>",
                "--gpu", "0", "--output", str(out / "toy_test"), "--data-root", str(work / "data"), "--quiet"]
    return [
        Stage("install", 25, install, install_figures),
        Stage("smoke", 45, [[PYTHON, "scripts/gpu_smoke.py", "--json", str(out / "gpu_smoke.json")]],
              smoke_figures, stop_on_failure=smoke_stops),
        Stage("gpu-tests", 90, [[PYTHON, "-m", "pytest", "-m", "gpu and not slow", "-q", "-o", "addopts=", "-p",
                                 "no:cacheprovider", f"--junitxml={out / 'gpu_tests.xml'}"]], junit_figures),
        Stage("toy-train", 120, [[PYTHON, "-m", "fastrcnn.cli.solve", "prototxt/toy/solver.prototxt", "--gpu", "0",
                                  "--output", str(out / "toy"), "--data-root", str(work / "data"), "--quiet",
                                  "--set", "TRAIN.SNAPSHOT_ITERS", str(TOY_SNAPSHOT_ITERS)]],
              toy_train_figures),
        Stage("toy-test", 30, [toy_test], toy_test_figures),
        # L first: its rows carry the targets, and a run cut short by the limit still has them
        Stage("bench", 170, [[PYTHON, "scripts/bench.py", "--device", "gpu", "--models", "L,M,S", "--json",
                              str(out / "bench_gpu.json")]], bench_figures),
    ]



def command_text(command):
    return shlex.join(command(SUMMARY_BEFORE_START) if callable(command) else command)


SUMMARY_BEFORE_START = {"stages": []}


def run_stage(stage, summary, out, env):
    """Run a stage's commands in turn under one ``timeout`` budget; its summary entry."""
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    entry = {"name": stage.name, "limit_s": stage.limit_s, "status": "passed", "commands": [], "returncodes": [],
             "log": f"logs/{stage.name}.log"}
    start = time.perf_counter()
    outputs = []
    with open(logs / f"{stage.name}.log", "w") as log:
        for command in stage.commands:
            argv = command(summary) if callable(command) else command
            left = stage.limit_s - (time.perf_counter() - start)
            entry["commands"].append(shlex.join(argv))
            if left < 1:
                entry["status"] = "timeout"
                break
            log.write(f"$ {shlex.join(argv)}\n")
            log.flush()
            done = subprocess.run(["timeout", "--kill-after=5", f"{left:.0f}", *argv], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
            log.write(done.stdout)
            outputs.append(done.stdout)
            entry["returncodes"].append(done.returncode)
            if done.returncode != 0:
                entry["status"] = "timeout" if done.returncode in (124, 137) else "failed"
                break
    entry["seconds"] = time.perf_counter() - start
    entry["tail"] = (outputs[-1] if outputs else "")[-1500:]
    try:
        entry["figures"] = stage.figures(outputs, out)
    except Exception as exc:  # noqa: BLE001  (figures of a broken run must not lose the summary)
        entry["figures"] = {"error": f"{type(exc).__name__}: {exc}"}
    return entry


def write_summary(path, summary):
    Path(path).write_text(json.dumps(summary, indent=1))


def run_all(stage_list, out, env=None, notes=()):
    """Run the stages in order, rewriting out/gpu_check.json after each; the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PYTHONUNBUFFERED"] = "1"
    summary = {"host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "limit_s": sum(s.limit_s for s in stage_list), "notes": list(notes), "stages": [], "passed": False,
               "seconds": 0.0}
    start = time.perf_counter()
    stopped = None
    for stage in stage_list:
        if stopped:
            summary["stages"].append({"name": stage.name, "limit_s": stage.limit_s, "status": "skipped",
                                      "reason": f"stage {stopped} failed", "seconds": 0.0, "figures": {}})
            continue
        entry = run_stage(stage, summary, out, env)
        summary["stages"].append(entry)
        stop = stage.stop_on_failure
        if entry["status"] != "passed" and (stop(entry, out) if callable(stop) else stop):
            stopped = stage.name
        summary["seconds"] = time.perf_counter() - start
        write_summary(out / "gpu_check.json", summary)
        print(f"gpu_check: {stage.name}: {entry['status']} in {entry['seconds']:.1f}s (limit {stage.limit_s}s)",
              flush=True)
    summary["passed"] = all(s["status"] == "passed" for s in summary["stages"])
    summary["seconds"] = time.perf_counter() - start
    write_summary(out / "gpu_check.json", summary)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gpu_check.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheels", default=None, metavar="DIR", help="wheels to install offline where missing")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where gpu_check.json and the logs go (default: $OUT, else ./gpu_check_out)")
    parser.add_argument("--dry-run", action="store_true", help="list the stages, commands and limits; run nothing")
    args = parser.parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or "gpu_check_out").resolve()
    wheels = Path(args.wheels).resolve() if args.wheels else None
    notes = []
    if wheels is not None and not wheels.is_dir():
        notes.append(f"--wheels {args.wheels}: no such folder; nothing is installed from it")
        print(f"gpu_check: {notes[-1]}", file=sys.stderr)
        wheels = None
    work = Path(tempfile.mkdtemp(prefix="gpu_check-")) if not args.dry_run else Path("<temporary folder>")
    stage_list = stages(wheels, out, work)
    if args.dry_run:
        for stage in stage_list:
            print(f"{stage.name}: limit {stage.limit_s}s" + (" (stops the check on failure)"
                                                              if stage.stop_on_failure else ""))
            for command in stage.commands:
                print(f"  timeout {stage.limit_s} {command_text(command)}")
        print(f"total limit: {sum(s.limit_s for s in stage_list)}s; summary: {out / 'gpu_check.json'}")
        return 0
    summary = run_all(stage_list, out, notes=notes)
    print(f"gpu_check: {'passed' if summary['passed'] else 'FAILED'} in {summary['seconds']:.0f}s; "
          f"wrote {out / 'gpu_check.json'}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
