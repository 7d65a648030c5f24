"""Timing, the row record every rows module fills, and the context bench.py hands the rows modules."""
import math
import statistics
import sys
import time
from pathlib import Path


#: A row's implementation repeats its timed calls until they add up to this many seconds (at least --runs of
#: them): the median of three 10-ms calls on a shared machine says little. 0 with --quick.
MIN_SECONDS = 1.0


def wall_clock(fn):
    """Seconds of one call of fn by the host's clock."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_runs(fn, runs, warmup=True, min_seconds=0.0, clock=wall_clock):
    """Seconds of each of ``runs`` calls of fn, after one untimed call; more calls where the warm-up call says
    that ``runs`` of them would take less than ``min_seconds``. ``clock(fn)`` times one call (a GPU clock
    synchronises the device and reads CUDA events)."""
    if warmup:
        once = clock(fn)
        if once * runs < min_seconds:
            runs = math.ceil(min_seconds / max(once, 1e-6))
    return [clock(fn) for _ in range(runs)]


class Row:
    """One benchmark row: per implementation its times, rate and check against ours."""

    def __init__(self, kind, model, workload, flops, unit="GFLOP/s"):
        self.data = {"row": kind, "model": model, "workload": workload, "flops": flops, "unit": unit,
                     "results": {}, "notes": []}

    def add(self, impl, times, check=None):
        median = statistics.median(times)
        result = {"median_s": median, "times_s": times,
                  "rate": self.data["flops"] / median / 1e9 if self.data["flops"] else None}
        if check is not None:
            result["check_rel_error"] = check
        self.data["results"][impl] = result

    def note(self, text):
        self.data["notes"].append(text)

    def finish(self):
        results = self.data["results"]
        ours = results.get("fastrcnn")
        for impl, result in results.items():
            if impl != "fastrcnn" and ours:
                result["ratio"] = ours["median_s"] / result["median_s"]
        return self.data




class Context:
    """What bench.py hands each rows module: the parsed arguments, a scratch folder, the report's notes (a
    module appends to them) and the log; ``on_row(row)``, where given, is called with each finished row."""

    def __init__(self, args, workdir, on_row=None):
        self.args, self.workdir = args, Path(workdir)
        self.notes = []
        self.on_row = on_row
        self.start = time.perf_counter()

    def log(self, text):
        print(f"[{time.perf_counter() - self.start:6.1f}s] {text}", file=sys.stderr, flush=True)

    def recorded(self, row):
        if self.on_row is not None:
            self.on_row(row)
