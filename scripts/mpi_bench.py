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
    python scripts/mpi_bench.py --predict                     # the model of docs/scaling.md
    python scripts/bench.py --device mpi                      # the same rows in bench.py's report

``--predict`` prints the modelled speed-up of S, M and L on 2, 8 and 64 GPUs (``predict``): compute from each
train net's multiply-adds at 600×1000 (2 images, 128 RoIs) at an assumed sustained rate, ring allreduce at
stated link bandwidths, and the part of it the buckets hide behind the rest of backward.

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


#: Stated link bandwidths, bytes per second in one direction.
LINKS = {"NVLink 450 GB/s": 450e9, "IB 400 Gb/s": 50e9, "IB 100 Gb/s": 12.5e9}
#: Assumed sustained float32 rate of one H100 on these layers (60% of its 67 TFLOP/s without tensor cores).
GPU_FLOPS = 40e12
#: The workload of one rank's iteration: 2 images of 600×1000, 128 RoIs each (the original's defaults).
IMAGES, HEIGHT, WIDTH, ROIS = 2, 600, 1000, 128


def layer_work(model):
    """(net, [(forward, backward) multiply-adds per layer]) of a model's train net at the stated workload:
    Convolution and InnerProduct layers (a product for the weight gradient where the weights are trained, one
    for the bottom gradient where backward continues below), the shapes from a reshape pass."""
    import fastrcnn.rcnn.roi_data_layer  # noqa: F401  (registers the RoIData layer)
    from fastrcnn.net import Net
    net = Net(str(REPO / "prototxt" / MODELS[model] / "train.prototxt"), "TRAIN")
    tops = net._tops[0]
    for blob, shape in zip(tops, [(IMAGES, 3, HEIGHT, WIDTH), (ROIS, 5), (ROIS,), (ROIS, tops[-1].shape[1]),
                                  (ROIS, tops[-1].shape[1])]):
        blob.reshape(shape)
    work = [(0, 0)]
    for i in range(1, len(net.layers)):
        layer, bottoms, tops = net.layers[i], net._bottoms[i], net._tops[i]
        layer.reshape(bottoms, tops)
        if layer.type not in ("Convolution", "InnerProduct"):
            work.append((0, 0))
            continue
        forward = tops[0].count * layer.blobs[0].count // layer.blobs[0].shape[0]
        backward = forward * (int(layer.need_backward and layer.param_propagate_down[0])
                              + int(layer.need_backward and net._bottom_need_backward[i][0]))
        work.append((forward, backward))
    return net, work


def predict(model, ranks, bandwidth, flops=GPU_FLOPS, bucket_bytes=None):
    """The modelled iteration of ``ranks`` GPUs: compute (forward + backward multiply-adds at ``flops``), the
    ring allreduce of each bucket (2(N−1)/N × bytes / ``bandwidth``, one at a time, each from the moment
    backward has left its lowest layer) and the part of it that ends after backward (exposed)."""
    from fastrcnn.data_parallel import BUCKET_BYTES, buckets
    net, work = layer_work(model)
    seconds = [(2 * f / flops, 2 * b / flops) for f, b in work]
    backward = sum(b for _, b in seconds)
    compute = sum(f for f, _ in seconds) + backward
    done, comm, exposed_without = 0.0, 0.0, 0.0
    for bucket in buckets(net, bucket_bytes or BUCKET_BYTES):
        ready = sum(b for _, b in seconds[bucket.ready:])  # backward runs from the top layer down
        cost = 2 * (ranks - 1) / ranks * 4 * bucket.buffer.size / bandwidth
        done = max(done, ready) + cost
        comm += cost
    exposed = max(0.0, done - backward)
    return {"model": model, "ranks": ranks, "compute s": compute, "backward s": backward, "allreduce s": comm,
            "exposed s": exposed, "hidden": 1 - exposed / comm if comm else 1.0,
            "speed-up": ranks * compute / (compute + exposed),
            "speed-up without overlap": ranks * compute / (compute + comm)}


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


def rows(quick=False, ranks=2, models=None):
    """The benchmark's rows as dicts (see the module docstring): the allreduce of each of MODELS (default S, M,
    L; S, M with ``quick``), then the toy's training iteration on 1 and on RANKS ranks."""
    out = []
    repeats = 3 if quick else 10
    for model in models or (("S", "M") if quick else ("S", "M", "L")):
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


def _prediction_table():
    lines = [f"{'model':>5} {'link':>15} {'N':>3} {'compute ms':>10} {'backward ms':>11} {'allreduce ms':>12} "
             f"{'exposed ms':>10} {'hidden':>6} {'speed-up':>8} {'no overlap':>10}"]
    for model in MODELS:
        for link, bandwidth in LINKS.items():
            for ranks in (2, 8, 64):
                r = predict(model, ranks, bandwidth)
                lines.append(f"{model:>5} {link:>15} {ranks:>3} {1e3 * r['compute s']:>10.1f} "
                             f"{1e3 * r['backward s']:>11.1f} {1e3 * r['allreduce s']:>12.1f} "
                             f"{1e3 * r['exposed s']:>10.1f} {r['hidden']:>6.0%} {r['speed-up']:>8.1f} "
                             f"{r['speed-up without overlap']:>10.1f}")
    return "\n".join(lines)


def table(rows_):
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
    parser.add_argument("--predict", action="store_true", help="print the modelled GPU speed-ups instead")
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
    if args.predict:
        print(_prediction_table())
        return
    if args.ranks < 2:
        parser.error("--ranks must be at least 2")
    result = rows(args.quick, args.ranks)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps({"ranks": args.ranks, "cpus": os.cpu_count(), "rows": result},
                                              indent=1))


if __name__ == "__main__":
    main()
