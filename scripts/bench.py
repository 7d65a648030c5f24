#!/usr/bin/env python3
"""Benchmark of the fastrcnn engine, with PyTorch and OpenCV dnn twins running the same computation.

Rows, each the median of --runs calls after a warm-up (of more where --runs calls would take under
MIN_SECONDS), with the GFLOP/s achieved (2 × the multiply-adds of the Convolution and InnerProduct layers,
counted from the layer shapes) and the ratio fastrcnn time / twin time:

  gemm        a large float32 matrix product: the machine's GEMM rate, the yardstick for the rest
  trunk       the convolution trunk (the data up to the last layer before RoI pooling), 600×800 image
  roi         RoI pooling of 2000 RoIs on the model's conv5 map (forward); roi-train: 128 RoIs, forward +
              backward (its rate counts one max per pooled input element)
  head        fc6, fc7, cls_score, bbox_pred and the softmax for 2000 RoIs
  detect      im_detect on a 600×800 image with 2000 proposals (random boxes, drawn deterministically; dedup
              off); detect-svd: the same through the model's compressed/test.prototxt, whose fc6 and fc7 are
              factorised with fastrcnn.rcnn.compress.factorize
  train       one training iteration, forward + backward (2 images, 128 RoIs, the original's frozen layers;
              the train net with its data layer replaced by Input blobs), for toy, S and M
  export      S only: frcnn-export's work (the ONNX graph built, checked by onnx, serialised; one run), and
  ort-detect  the detect row's im_detect with onnxruntime running that graph (its column: onnxruntime)
  memory      peak resident memory of one detection at 600×1000 with 2000 proposals, each implementation in
              a fresh process

Twins, in the same process and with the same thread count: PyTorch (the same layers as torch.nn.functional
calls, weights copied from our net; RoI pooling as a loop over RoIs, each window cropped as the original
rounds it from a −inf-bordered map and adaptive max pooled; no CPU torchvision exists) and OpenCV dnn
(cv2.dnn.readNetFromCaffe on the same prototxt and a .caffemodel written by fastrcnn.weights.save_weights; its
Caffe importer ignores LRN's k, so M runs there with k: 1). Every twin's output is checked once against ours
(relative error max|twin − ours| / max|ours|), so that the rows compare the same computation. --isa avx2
caps every implementation at the same vector width (OpenBLAS's Haswell kernels, PyTorch's and oneDNN's
AVX2 paths, OpenCV without AVX-512): an AVX2 machine's comparison on an AVX-512 one, and the default where
OPENBLAS_CORETYPE already pins OpenBLAS to AVX2 kernels.

With --device gpu (CuPy and a CUDA GPU; the twin is PyTorch with CUDA and torchvision on the same GPU), for
S, M and L at 600×1000 with 2000 proposals, each with TF32 off (float32 throughout, the default) and on
(fastrcnn.set_tf32(True); PyTorch's TF32 switches set to match), and the spec's targets beside them:

  detect      im_detect, as above; detect-svd: through the compressed prototxt (random factors: the time of
              a forward does not depend on the values)
  train       one training iteration, forward + backward, 2 images of 600×1000 and 128 RoIs
  memory      peak GPU memory of one detection and of one training iteration (TF32 off): CuPy's memory
              pool's high-water mark and the device's used memory (cudaMemGetInfo), against PyTorch's
              caching allocator's peak

GPU times come from CUDA events around each call after a synchronisation. --dry-run prints the rows a run
would make, for the chosen device, and imports neither CuPy nor PyTorch.

    python scripts/bench.py                       # toy, S, M, L on the CPU, 3 runs; writes bench.json
    python scripts/bench.py --models S --runs 5 --threads 1 --json s.json
    python scripts/bench.py --quick               # tiny sizes, 1 run (CI)
    python scripts/bench.py --device gpu --json gpu.json
    python scripts/bench.py --device gpu --dry-run
    python scripts/bench.py --device mpi          # allreduce S, M, L and toy training, 1 against 2 ranks
"""
import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("toy", "S", "M", "L")
#: The rows modules of each device (benchkit/__init__.py describes their interface), run in this order.
ROW_MODULES = {"cpu": ["benchkit.rows_cpu"], "gpu": ["benchkit.rows_gpu"], "mpi": ["benchkit.rows_mpi"]}
#: The models of a run without --models (and with --quick).
DEFAULT_MODELS = {"cpu": ("toy,S,M,L", "toy,S"), "gpu": ("S,M,L", "S"), "mpi": ("S,M,L", "S,M")}
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
#: OpenBLAS kernels that use AVX2 at most: a pin to one of them (OPENBLAS_CORETYPE) stands for an AVX2 machine.
AVX2_OPENBLAS_CORES = ("haswell", "zen", "skylake", "sandybridge", "excavator")
#: What caps every implementation at AVX2 (read when each library loads): OpenBLAS, PyTorch's own kernels,
#: its oneDNN convolutions and MKL GEMM, OpenCV's dispatch.
AVX2_ONLY = {"OPENBLAS_CORETYPE": "Haswell", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "OPENCV_CPU_DISABLE": "AVX512F,AVX512-COMMON,AVX512-SKX,AVX512-CNL,AVX512-CLX,AVX512-ICL"}


def openblas_pinned_to_avx2():
    return os.environ.get("OPENBLAS_CORETYPE", "").lower() in AVX2_OPENBLAS_CORES


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu", "mpi"), default="cpu",
                        help="cpu (default), gpu (CuPy and a CUDA GPU), or mpi: the data-parallel rows of "
                             "scripts/mpi_bench.py (allreduce of each model's gradients on --ranks ranks, "
                             "the toy's training iteration on 1 and on --ranks ranks)")
    parser.add_argument("--ranks", type=int, default=2, help="ranks of --device mpi's rows (default 2)")
    parser.add_argument("--models", default=None,
                        help="comma-separated subset of toy,S,M,L (default: all on the CPU, S,M,L on the GPU; "
                             "toy,S and S with --quick)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per row (default 3; 1 with --quick)")
    parser.add_argument("--json", default="bench.json", help="where to write every number (default bench.json)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 1 run, for CI")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the rows the run would make and stop (imports neither CuPy nor PyTorch)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for every implementation (default: all cores)")
    parser.add_argument("--isa", choices=("auto", "native", "avx2"), default="auto",
                        help="vector instructions every implementation may use: avx2 caps NumPy's OpenBLAS, "
                             "PyTorch and OpenCV at AVX2 (an AVX2 machine's speeds on an AVX-512 one); auto "
                             "(default): avx2 where OPENBLAS_CORETYPE already pins OpenBLAS to an AVX2 kernel, "
                             "so that the twins do not use wider vectors than ours, native otherwise")
    args = parser.parse_args(argv)
    if args.isa == "auto":
        args.isa = "avx2" if openblas_pinned_to_avx2() else "native"
    names = args.models or DEFAULT_MODELS[args.device][args.quick]
    args.models = [m.strip() for m in names.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"--models: unknown model(s) {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(MODELS)}")
    args.runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    if args.runs < 1 or args.threads < 1:
        parser.error("--runs and --threads must be at least 1")
    if args.ranks < 2:
        parser.error("--ranks must be at least 2")
    return args


if __name__ == "__main__":
    # BLAS reads its thread count when it loads: set it before NumPy is imported (spawned children inherit it).
    ARGS = parse_args(sys.argv[1:])
    for _variable in _THREAD_VARIABLES:
        os.environ[_variable] = str(ARGS.threads)
    if ARGS.isa == "avx2":
        for _variable, _value in AVX2_ONLY.items():
            if _variable != "OPENBLAS_CORETYPE" or not openblas_pinned_to_avx2():  # keep an AVX2 pin of OpenBLAS
                os.environ[_variable] = _value
    sys.path.insert(0, str(ROOT))
    from fastrcnn.cpu import tune_cpu
    tune_cpu()  # as the commands: OpenBLAS's kernel for CPUs it misdetects (before NumPy loads it), malloc

import importlib  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from benchkit.core import Context  # noqa: E402


def row_modules(device):
    return [importlib.import_module(name) for name in ROW_MODULES[device]]


def dry_run(args):
    for module in row_modules(args.device):
        print(f"{module.__name__} ({args.device}):")
        for line in module.plan(args):
            print("  " + line)
    return 0


def run_benchmark(args):
    if args.dry_run:
        return dry_run(args)
    modules = row_modules(args.device)
    for module in modules:
        missing = getattr(module, "missing", lambda _: None)(args)
        if missing:
            print(f"bench.py: {missing}", file=sys.stderr)
            return 2
    from benchkit.report import machine_info, print_footer
    start = time.perf_counter()
    load_start = os.getloadavg()
    report = {}
    rows = []

    def write(complete):
        report.update({"rows": rows, "notes": ctx.notes, "seconds": time.perf_counter() - start})
        if not complete:
            report["complete"] = False  # a GPU run's JSON after each row: what a killed run leaves
        else:
            report.pop("complete", None)
        Path(args.json).write_text(json.dumps(report, indent=1))

    def partial(row):
        if args.device == "gpu":
            write(False)
    tables = []
    with tempfile.TemporaryDirectory(prefix="fastrcnn-bench-") as workdir:
        ctx = Context(args, workdir, partial)
        for module in modules:
            mine = module.rows(ctx)
            rows.extend(mine)
            tables.append((module, mine))
    machine = machine_info(args.threads)
    machine["isa"] = args.isa if args.isa == "native" else "AVX2 (" + ", ".join(
        f"{k}={os.environ.get(k)}" for k in AVX2_ONLY) + ")"
    machine["load_average_start"], machine["load_average_end"] = load_start, os.getloadavg()
    settings = {"device": args.device, "models": args.models, "runs": args.runs, "quick": args.quick,
                "threads": args.threads, "isa": args.isa}
    for module in modules:
        settings.update(getattr(module, "settings", lambda _: {})(args))
    report = {"machine": machine, "settings": settings}
    for module, mine in tables:
        module.table(mine)
    print_footer(ctx.notes, machine)
    write(True)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_benchmark(ARGS))
