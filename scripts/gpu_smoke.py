#!/usr/bin/env python3
"""GPU smoke check (under a minute): the first thing a fresh GPU machine runs, before any test or benchmark.

Steps, each timed and reported in one JSON object (stdout, and --json PATH):

  cupy             CuPy imports and sees a CUDA device (its name, CuPy's and CUDA's versions)
  cudnn_frontend   NVIDIA's cuDNN frontend (module ``cudnn``) imports; cuDNN's version
  cudnn_conv       one cuDNN graph (a float32 3×3 convolution) planned, built and executed on CuPy arrays,
                   against a float64 NumPy convolution
  gpu_mode         fastrcnn.set_mode_gpu()
  roi_pool         fastrcnn.cuda.kernels.roi_pool_forward on the GPU against the CPU ROIPooling layer
  nms              fastrcnn.cuda.kernels.nms on GPU dets against fastrcnn.rcnn.boxes.nms
  tf32             fastrcnn.set_tf32 round trip (on, off; fastrcnn.backend.tf32() follows), and a GPU-mode
                   Convolution layer against the CPU one with TF32 off (and its error with TF32 on)

``--modules`` instead prints which of the modules the GPU path uses import here (and exits 0).

Exit status 0 when every step passed, 1 otherwise (a step that needs an earlier one's result is skipped after
its failure); the message on stderr names what failed. The report's ``engine_passed`` says whether every step
but the cuDNN ones passed: without cuDNN the engine runs its CAFFE convolutions (im2col and cuBLAS), so the
GPU engine is still usable.
"""
import argparse
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

#: Largest relative error max|gpu − reference| / max|reference| accepted from float32 arithmetic.
TOLERANCE = 1e-4


class StepFailed(Exception):
    pass


def relative_error(value, reference):
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    if value.shape != reference.shape:
        raise StepFailed(f"shape {value.shape}, expected {reference.shape}")
    return float(np.abs(value - reference).max() / max(np.abs(reference).max(), 1e-30))


def within(error, what, tolerance=TOLERANCE):
    if not error <= tolerance:
        raise StepFailed(f"{what}: relative error {error:.2e} above {tolerance:.0e}")
    return error


def numpy_conv(x, w, pad):
    """Cross-correlation of x (N, C, H, W) with w (K, C, kh, kw), stride 1, in float64."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))
    return np.einsum("nchwij,kcij->nkhw", windows, w.astype(np.float64))


def step_cupy(state):
    try:
        import cupy
    except ImportError as exc:
        raise StepFailed(f"CuPy is not importable ({exc}): this check needs CuPy (pip install '.[cuda13]' or "
                         "'.[cuda12]') and an NVIDIA GPU") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001  (a missing driver shows in several ways)
        raise StepFailed(f"CuPy imports but finds no usable CUDA GPU: {exc}") from None
    if count == 0:
        raise StepFailed("CuPy imports but this machine has no CUDA GPU")
    state["cupy"] = cupy
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    return {"cupy": cupy.__version__, "devices": count, "gpu": name.decode() if isinstance(name, bytes) else name,
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(), "driver": cupy.cuda.runtime.driverGetVersion()}


def step_cudnn_frontend(state):
    try:
        import cudnn
    except ImportError as exc:
        raise StepFailed(f"the cuDNN frontend (module cudnn, wheel nvidia-cudnn-frontend) is not importable: "
                         f"{exc}") from None
    state["cudnn"] = cudnn
    return {"frontend": getattr(cudnn, "__version__", None), "cudnn": cudnn.backend_version()}


def step_cudnn_conv(state):
    """A bare graph of one float32 convolution, its tensor-core and down-converting engines left out (float32
    arithmetic, as fastrcnn's with TF32 off), built step by step so that a failure names its step."""
    cupy, cudnn = state["cupy"], state["cudnn"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 8, 16, 16), dtype=np.float32)
    w = rng.standard_normal((16, 8, 3, 3), dtype=np.float32)
    y_shape = (2, 16, 16, 16)
    strides = {shape: [int(np.prod(shape[i + 1:])) for i in range(4)] for shape in (x.shape, w.shape, y_shape)}
    handle = cudnn.create_handle()
    cudnn.set_stream(handle=handle, stream=cupy.cuda.get_current_stream().ptr)
    f32 = cudnn.data_type.FLOAT
    graph = cudnn.pygraph(handle=handle, io_data_type=f32, intermediate_data_type=f32, compute_data_type=f32)
    tx = graph.tensor(name="x", dim=list(x.shape), stride=strides[x.shape], data_type=f32)
    tw = graph.tensor(name="w", dim=list(w.shape), stride=strides[w.shape], data_type=f32)
    ty = graph.conv_fprop(image=tx, weight=tw, padding=[1, 1], stride=[1, 1], dilation=[1, 1])
    ty.set_output(True).set_dim(list(y_shape)).set_stride(strides[y_shape]).set_data_type(f32)
    start = time.perf_counter()
    for step, call in (("validate", graph.validate), ("build_operation_graph", graph.build_operation_graph),
                       ("create_execution_plans",
                        lambda: graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])),
                       ("deselect_numeric_notes", lambda: graph.deselect_numeric_notes(
                           [cudnn.numerical_note.TENSOR_CORE, cudnn.numerical_note.DOWN_CONVERT_INPUTS])),
                       ("check_support", graph.check_support), ("build_plans", graph.build_plans)):
        try:
            call()
        except Exception as exc:  # noqa: BLE001  (the frontend raises several types)
            raise StepFailed(f"cuDNN graph step {step}: {type(exc).__name__}: {exc}") from None
    plan_s = time.perf_counter() - start
    gx, gw, gy = cupy.asarray(x), cupy.asarray(w), cupy.empty(y_shape, np.float32)
    workspace = cupy.empty(int(graph.get_workspace_size()), np.uint8)
    graph.execute({tx: gx, tw: gw, ty: gy}, workspace, handle=handle)
    cupy.cuda.get_current_stream().synchronize()
    error = within(relative_error(cupy.asnumpy(gy), numpy_conv(x, w, 1)), "cuDNN convolution")
    return {"plan_s": plan_s, "rel_error": error, "workspace_bytes": int(workspace.size)}


def step_gpu_mode(state):
    import fastrcnn
    fastrcnn.set_mode_gpu()
    fastrcnn.set_mode_cpu()
    return {}


def step_roi_pool(state):
    cupy = state["cupy"]
    from fastrcnn import backend, protoio
    from fastrcnn.cuda import kernels
    from fastrcnn.net import Net
    rng = np.random.default_rng(1)
    features = rng.standard_normal((2, 16, 24, 32), dtype=np.float32)
    x1, y1 = rng.uniform(0, 400, 64), rng.uniform(0, 300, 64)
    rois = np.column_stack([rng.integers(0, 2, 64), x1, y1, x1 + rng.uniform(0, 200, 64),
                            y1 + rng.uniform(0, 150, 64)]).astype(np.float32)
    text = ('name: "roi" input: "features" input_shape { dim: 2 dim: 16 dim: 24 dim: 32 } input: "rois" '
            'input_shape { dim: 64 dim: 5 } layer { name: "pool" type: "ROIPooling" bottom: "features" '
            'bottom: "rois" top: "pooled" roi_pooling_param { pooled_h: 7 pooled_w: 7 spatial_scale: 0.0625 } }')
    backend.set_mode_cpu()
    reference = Net(protoio.net_from_string(text), "TEST").forward(features=features, rois=rois)["pooled"]
    top, _ = kernels.roi_pool_forward(cupy.asarray(features), cupy.asarray(rois), 7, 7, 0.0625, False)
    if not isinstance(top, cupy.ndarray):
        raise StepFailed(f"roi_pool_forward returned a {type(top).__name__}, not a CuPy array")
    return {"rel_error": within(relative_error(cupy.asnumpy(top), reference), "RoI pooling", 0.0)}


def step_nms(state):
    cupy = state["cupy"]
    from fastrcnn.cuda import kernels
    from fastrcnn.rcnn.boxes import nms
    rng = np.random.default_rng(2)
    x1, y1 = rng.uniform(0, 500, 2000), rng.uniform(0, 400, 2000)
    dets = np.column_stack([x1, y1, x1 + rng.uniform(8, 120, 2000), y1 + rng.uniform(8, 120, 2000),
                            rng.random(2000)]).astype(np.float32)
    expected = nms(dets, 0.3)
    kept = np.asarray(kernels.nms(cupy.asarray(dets), 0.3))
    if not np.array_equal(kept, expected):
        raise StepFailed(f"kernels.nms kept {len(kept)} boxes, the CPU NMS {len(expected)}; first difference at "
                         f"{int(np.argmax(kept[:len(expected)] != expected[:len(kept)]))}")
    return {"kept": int(len(kept)), "of": len(dets)}


def step_tf32(state):
    cupy = state["cupy"]
    import fastrcnn
    from fastrcnn import backend, protoio
    from fastrcnn.net import Net
    if getattr(fastrcnn, "set_tf32", None) is None:
        raise StepFailed("fastrcnn.set_tf32 is missing in this version")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 64, 40, 48), dtype=np.float32)
    text = ('name: "c" input: "x" input_shape { dim: 1 dim: 64 dim: 40 dim: 48 } layer { name: "conv" '
            'type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 64 kernel_size: 3 pad: 1 '
            'weight_filler { type: "gaussian" std: 0.05 } } }')
    backend.set_mode_cpu()
    cpu_net = Net(protoio.net_from_string(text), "TEST")
    reference = np.array(cpu_net.forward(x=x)["y"], copy=True)
    errors = {}
    try:
        fastrcnn.set_mode_gpu()
        gpu_net = Net(protoio.net_from_string(text), "TEST")
        for mine, theirs in zip(gpu_net.params["conv"], cpu_net.params["conv"]):
            mine.data = theirs.data
        for flag in (True, False):
            fastrcnn.set_tf32(flag)
            if getattr(backend, "tf32", lambda: flag)() is not flag:
                raise StepFailed(f"fastrcnn.set_tf32({flag}) left backend.tf32() at {backend.tf32()}")
            errors["on" if flag else "off"] = relative_error(cupy.asnumpy(gpu_net.forward(x=x)["y"]), reference)
    finally:
        fastrcnn.set_tf32(False)
        fastrcnn.set_mode_cpu()
    within(errors["off"], "GPU Convolution with TF32 off")
    return {"rel_error_tf32_off": errors["off"], "rel_error_tf32_on": errors["on"]}


STEPS = [("cupy", step_cupy), ("cudnn_frontend", step_cudnn_frontend), ("cudnn_conv", step_cudnn_conv),
         ("gpu_mode", step_gpu_mode), ("roi_pool", step_roi_pool), ("nms", step_nms), ("tf32", step_tf32)]
#: The steps whose failure leaves the engine usable (its convolutions then run the CAFFE engine).
CUDNN_STEPS = ("cudnn_frontend", "cudnn_conv")
#: The steps each one needs (skipped when one of those failed).
NEEDS = {"cudnn_frontend": ("cupy",), "cudnn_conv": ("cupy", "cudnn_frontend"), "gpu_mode": ("cupy",),
         "roi_pool": ("cupy",), "nms": ("cupy",), "tf32": ("cupy", "gpu_mode")}


def run_steps():
    state, report = {}, {"steps": {}, "passed": True}
    for name, fn in STEPS:
        failed = [need for need in NEEDS.get(name, ()) if report["steps"][need]["status"] != "passed"]
        if failed:
            report["steps"][name] = {"status": "skipped", "reason": f"needs {', '.join(failed)}"}
            continue
        start = time.perf_counter()
        try:
            figures = fn(state)
            entry = {"status": "passed", **figures}
        except Exception as exc:  # noqa: BLE001  (every failure is reported as the step's)
            message = str(exc) if isinstance(exc, StepFailed) else f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, StepFailed):
                traceback.print_exc(file=sys.stderr)
            entry = {"status": "failed", "error": message}
            report["passed"] = False
        entry["seconds"] = time.perf_counter() - start
        report["steps"][name] = entry
    report["engine_passed"] = all(step["status"] == "passed" for name, step in report["steps"].items()
                                  if name not in CUDNN_STEPS)
    return report


#: The modules the GPU path uses (and the tools beside it), as ``--modules`` reports them.
MODULES = ("cupy", "cudnn", "torch", "torchvision", "cv2", "google.protobuf", "scipy", "yaml", "tqdm", "matplotlib")


def modules():
    """{module: its version, or None where it does not import}, and whether OpenCV has its contrib part
    (selective search) and PyTorch a CUDA device."""
    import importlib
    found = {}
    for name in MODULES:
        try:
            found[name] = getattr(importlib.import_module(name), "__version__", "yes")
        except Exception:  # noqa: BLE001  (a broken install raises more than ImportError)
            found[name] = None
    found["cv2.ximgproc"] = found["cv2"] is not None and hasattr(sys.modules["cv2"], "ximgproc")
    found["torch.cuda"] = found["torch"] is not None and sys.modules["torch"].cuda.is_available()
    return found


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument("--modules", action="store_true", help="print which modules import, and stop")
    args = parser.parse_args(argv)
    if args.modules:
        print(json.dumps(modules()))
        return 0
    start = time.perf_counter()
    report = run_steps()
    report["seconds"] = time.perf_counter() - start
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    for name, entry in report["steps"].items():
        if entry["status"] == "failed":
            print(f"gpu_smoke: {name} failed: {entry['error']}", file=sys.stderr)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
