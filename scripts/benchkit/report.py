"""The report: the machine's description, the table printed at the end and the JSON written."""
import os
import platform
from pathlib import Path

import numpy as np

from fastrcnn.cpu import retain_freed_memory

from .twins import optional_cv2, optional_torch


def machine_info(threads):
    info = {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count(),
            "threads": threads, "cpu": platform.processor(), "numpy": np.__version__,
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "(OpenBLAS's own choice)"),
            # idempotent: true where tune_cpu made glibc keep freed memory (for every implementation)
            "malloc_keeps_freed_memory": retain_freed_memory()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = {k: blas.get(k) for k in ("name", "version", "openblas configuration")}
    except (TypeError, KeyError):
        info["blas"] = None
    torch, cv2 = optional_torch(), optional_cv2()
    info["torch"] = torch.__version__ if torch else None
    info["cv2"] = cv2.__version__ if cv2 else None
    return info


def format_row(row):
    results = row["results"]
    parts = [f"{row['row']:<10} {row['model']:<4} {row['workload']:<30}"]
    extra = [impl for impl in results if impl not in ("fastrcnn", "torch", "opencv")]
    for impl in ("fastrcnn", "torch", "opencv", *extra):
        r = results.get(impl)
        if r is None:
            parts.append(f"{'-':>27}")
            continue
        rate = f"{r['rate']:7.1f}" if r.get("rate") is not None else f"{'':7}"
        ratio = f"{r['ratio']:5.2f}x" if "ratio" in r else f"{'':6}"
        check = f" e={r['check_rel_error']:.0e}" if r.get("check_rel_error") is not None else ""
        parts.append((f"{impl}: " if impl in extra else "") + f"{r['median_s']:8.3f}s {rate} {ratio}{check}")
    return " | ".join(parts)


def format_memory(row):
    peaks = ", ".join(f"{impl} {mib:.0f} MiB (baseline {row['baseline_rss_mib'][impl]:.0f})"
                      for impl, mib in row["peak_rss_mib"].items())
    return f"{'memory':<10} {row['model']:<4} {row['workload']:<30} | {peaks}"


def print_lines(header, lines, legend):
    """A table: its header, a rule as wide, its lines and the legend below."""
    print(header)
    print("-" * len(header))
    for line in lines:
        print(line)
    print(legend)


def print_cpu_table(rows):
    header = (f"{'row':<10} {'mdl':<4} {'workload':<30} | {'fastrcnn: s  rate':>27} | "
              f"{'torch: s  rate  ratio':>27} | {'opencv: s  rate  ratio':>27}")
    print_lines(header, [format_memory(row) if row["row"] == "memory" else format_row(row) for row in rows],
                "rate: GFLOP/s (2 × multiply-adds of conv and fc layers) or Gop/s for RoI pooling; ratio: fastrcnn "
                "time / twin time (below 1: fastrcnn is faster); e: relative error of the twin's output vs ours")


def print_footer(notes, machine):
    for note in notes:
        print("note:", note)
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} thread(s), "
          f"instructions: {machine['isa']}; malloc keeps freed memory: {machine['malloc_keeps_freed_memory']}; "
          "load average "
          f"{machine['load_average_start'][0]:.2f} at the start, {machine['load_average_end'][0]:.2f} at the end "
          "(above the thread count, other processes shared the cores and the times are inflated)")


#: The order of the GPU table: model, row kind, TF32 off then on (each TF32 row beside its float32 one).
_GPU_ORDER = ("setup", "detect", "detect-svd", "train", "memory")


def format_gpu_row(row):
    head = f"{row['row']:<10} {row['model']:<4} {'on' if row.get('tf32') else 'off':<4} {row['workload']:<34}"
    target = row.get("target")
    verdict = f"{target['status']:<4} ({target['text']})" if target else "-"
    if "error" in row:
        return f"{head} | error: {row['error'][:200]} | {verdict}"
    if row["row"] == "memory":
        parts = [f"{impl} detect {p['detect']:.0f} / train {p['train']:.0f} MiB (device "
                 f"{row['device_used_mib'][impl]['detect']:.0f} / {row['device_used_mib'][impl]['train']:.0f})"
                 for impl, p in row["peak_mib"].items()]
        return f"{head} | {'; '.join(parts)} | {verdict}"
    results = row["results"]
    ours = results["fastrcnn"]
    rate = f"{ours['rate']:8.0f}" if ours.get("rate") is not None else f"{'':8}"
    cells = [f"{ours['median_s'] * 1e3:9.2f} ms {rate}"]
    twin = results.get("torch")
    if twin:
        cells.append(f"{twin['median_s'] * 1e3:9.2f} ms {twin['ratio']:5.2f}x e={twin['check_rel_error']:.0e}")
    else:
        cells.append(f"{'-':>27}")
    return f"{head} | {' | '.join(cells)} | {verdict}"


def print_gpu_table(rows):
    header = (f"{'row':<10} {'mdl':<4} {'tf32':<4} {'workload':<34} | {'fastrcnn: time  GFLOP/s':>20} | "
              f"{'torch: time  ratio  e':>27} | target")
    models = list(dict.fromkeys(row["model"] for row in rows))
    order = {kind: i for i, kind in enumerate(_GPU_ORDER)}
    ordered = sorted(rows, key=lambda r: (models.index(r["model"]), order.get(r["row"], 99), bool(r.get("tf32"))))
    print_lines(header, map(format_gpu_row, ordered),
                "time: median per call (CUDA events, after a synchronisation); ratio: fastrcnn time / PyTorch time "
                "on the same GPU (below 1: fastrcnn is faster); e: relative error of PyTorch's output vs ours; "
                "target: the spec's, for float32 (TF32 off), pass or miss; tf32 on: fastrcnn.set_tf32(True) and "
                "PyTorch's TF32 switches on; memory: MiB above the start, pool (CuPy) or caching allocator "
                "(PyTorch) peak, and the device's use in brackets")
