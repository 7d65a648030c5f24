#!/usr/bin/env python3
"""Data-parallel scaling on this machine: what ``mpiexec -n N frcnn-solve`` pays to communicate.

Rows (each the median of the timed repeats after a warm-up):

  allreduce   the sum across N ranks of one model's trained gradients (S: CaffeNet, M: VGG_CNN_M_1024,
              L: VGG16 train nets; the params some backward writes, frozen layers left out; random float32),
              as one buffer; ``GB/s`` is the algorithm bandwidth bytes / time, ``bus GB/s`` the ring's
              2(N−1)/N × bytes / time (what a link must carry), as nccl-tests report them
  train       one training iteration of the toy model (2 images per rank, the real data layer on a
              generated toy set, gradients summed in 25 MB buckets during backward), on 1 rank and on N
              ranks; ``ratio`` is time(N) / time(1) (1 is perfect weak scaling: N times the images in the
              same time), ``speed-up`` N·time(1) / time(N) in images per second. The ranks share this
              machine's cores (each gets cores/N OpenBLAS threads), so the speed-up is bounded by the cores,
              not by communication.

    python scripts/mpi_bench.py --ranks 2 --json out.json     # S, M, L allreduce, toy training
    python scripts/mpi_bench.py --quick                       # S and M, fewer repeats

It launches mpiexec itself (``fastrcnn.comm.mpiexec``: the MPI mpi4py uses). ``rows(quick=False)`` returns
the rows as dicts, for other benchmark drivers.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODELS = {"S": "CaffeNet", "M": "VGG_CNN_M_1024", "L": "VGG16"}
TOY_SETTINGS = ["TRAIN.SCALES", "(224,)", "TRAIN.MAX_SIZE", "480", "TRAIN.IMS_PER_BATCH", "2"]


def gradient_floats(model):
    """The number of trained gradient values of a model's train net (what one iteration sends)."""
    import fastrcnn.rcnn.roi_data_layer  # noqa: F401  (registers the RoIData layer)
    from fastrcnn.data_parallel import trained_params
    from fastrcnn.net import Net
    net = Net(str(REPO / "prototxt" / MODELS[model] / "train.prototxt"), "TRAIN")
    return sum(blob.count for blob, _ in trained_params(net))


def _env(threads):
    from fastrcnn import comm
    env = {k: v for k, v in os.environ.items() if not comm.launched_by_mpi({k: v})}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env["OPENBLAS_NUM_THREADS"] = str(max(1, threads))
    return env


def _launch(ranks, args, timeout=600):
    """Run this script's worker on ``ranks`` ranks (a plain process for 1); returns rank 0's JSON result."""
    from fastrcnn import comm
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", *args, "--out", str(out)]
        if ranks > 1:
            command = [comm.mpiexec(), "-n", str(ranks)] + command
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                env=_env((os.cpu_count() or 1) // ranks))
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-4000:]}")
        return json.loads(out.read_text())


def _allreduce_worker(floats, repeats):
    import numpy
    from fastrcnn import comm
    c = comm.communicator()
    buffer = numpy.random.default_rng(c.rank).standard_normal(floats, dtype=numpy.float32)
    c.allreduce(buffer)  # warm-up: connections, pages
    times = []
    for _ in range(repeats):
        c.barrier()
        start = time.perf_counter()
        c.allreduce(buffer)
        times.append(time.perf_counter() - start)
    return c.rank, {"seconds": statistics.median(c.bcast_object(times)), "ranks": c.size}


def _toy_set(folder):
    """A toy training set of 16 images and its proposal cache under ``folder``."""
    from fastrcnn.rcnn.datasets import get_dataset
    from fastrcnn.rcnn.datasets.toy import generate_toy_dataset
    from fastrcnn.rcnn.proposals import load_or_compute_proposals
    from fastrcnn.rcnn.train import build_config
    from fastrcnn import protoio
    from fastrcnn.rcnn import config as config_mod
    generate_toy_dataset(Path(folder) / "small", seed=4, num_train=16, num_test=1)
    cfg = build_config(protoio.load_net(str(REPO / "prototxt" / "toy" / "train.prototxt")))
    config_mod.merge_pairs(cfg, TOY_SETTINGS)
    load_or_compute_proposals(get_dataset(f"voc:{Path(folder) / 'small'}:train", folder), cfg, folder,
                              progress=False)


def _train_worker(folder, iters, warmup):
    """Seconds per toy training iteration on this run's ranks (the solver and data layer as frcnn-solve
    sets them up, timed around ``step(1)``)."""
    import logging
    from fastrcnn import backend, comm, protoio
    from fastrcnn.rcnn import config as config_mod
    from fastrcnn.rcnn.datasets import get_dataset
    from fastrcnn.rcnn.proposals import load_or_compute_proposals
    from fastrcnn.rcnn.roidb import training_roidb
    from fastrcnn.rcnn.train import build_config
    from fastrcnn.solver import SGDSolver
    logging.getLogger("fastrcnn").setLevel(logging.ERROR)
    c = comm.communicator()
    solver_file = REPO / "prototxt" / "toy" / "solver.prototxt"
    cfg = build_config(protoio.load_net(str(REPO / "prototxt" / "toy" / "train.prototxt")))
    config_mod.merge_pairs(cfg, TOY_SETTINGS)
    dataset = get_dataset(f"voc:{Path(folder) / 'small'}:train", folder)
    roidb, _, _ = training_roidb(dataset, load_or_compute_proposals(dataset, cfg, folder, progress=False), cfg)
    backend.set_random_seed(cfg.RNG_SEED)
    solver = SGDSolver(str(solver_file), c)
    layer = solver.net.layer_dict["data"]
    layer.set_roidb(roidb, cfg, dataset.num_classes)
    layer.shard(c.rank, c.size, solver.param.iter_size)
    solver.share_state()
    solver.step(warmup)
    times = []
    for _ in range(iters):
        c.barrier()
        start = time.perf_counter()
        solver.step(1)
        times.append(time.perf_counter() - start)
    return c.rank, {"seconds": statistics.median(c.bcast_object(times)), "ranks": c.size}


def rows(quick=False, ranks=2):
    """The benchmark's rows as dicts (see the module docstring)."""
    out = []
    repeats = 3 if quick else 10
    for model in ("S", "M") if quick else ("S", "M", "L"):
        floats = gradient_floats(model)
        measured = _launch(ranks, ["allreduce", str(floats), str(repeats)])
        size = 4 * floats
        out.append({"row": "allreduce", "model": model, "ranks": ranks, "MB": round(size / 1e6, 1),
                    "seconds": measured["seconds"], "GB/s": size / measured["seconds"] / 1e9,
                    "bus GB/s": 2 * (ranks - 1) / ranks * size / measured["seconds"] / 1e9})
    with tempfile.TemporaryDirectory() as folder:
        _toy_set(folder)
        iters, warmup = (3, 1) if quick else (10, 2)
        one = _launch(1, ["train", folder, str(iters), str(warmup)])["seconds"]
        many = _launch(ranks, ["train", folder, str(iters), str(warmup)])["seconds"]
    out.append({"row": "train", "model": "toy", "ranks": 1, "images": 2, "seconds": one})
    out.append({"row": "train", "model": "toy", "ranks": ranks, "images": 2 * ranks, "seconds": many,
                "ratio": many / one, "speed-up": ranks * one / many})
    return out


def _table(rows_):
    columns = ["row", "model", "ranks", "MB", "images", "seconds", "GB/s", "bus GB/s", "ratio", "speed-up"]
    lines = ["  ".join(f"{c:>9}" for c in columns)]
    for row in rows_:
        cells = []
        for c in columns:
            value = row.get(c, "")
            cells.append(f"{value:>9.4g}" if isinstance(value, float) else f"{value!s:>9}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="the ranks N of the multi-rank rows (default 2)")
    parser.add_argument("--quick", action="store_true", help="S and M only, fewer repeats")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the rows here")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, *params = args.worker
        if kind == "allreduce":
            rank, result = _allreduce_worker(int(params[0]), int(params[1]))
        else:
            rank, result = _train_worker(params[0], int(params[1]), int(params[2]))
        if rank == 0:
            Path(args.out).write_text(json.dumps(result))
        return
    if args.ranks < 2:
        parser.error("--ranks must be at least 2")
    result = rows(args.quick, args.ranks)
    print(_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps({"ranks": args.ranks, "cpus": os.cpu_count(), "rows": result},
                                              indent=1))


if __name__ == "__main__":
    main()
