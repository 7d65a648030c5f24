"""The GPU engine on a CUDA device (skipped elsewhere, see conftest.py): every layer type of the prototxts
against the CPU layers, float64 gradient checks, RoI pooling against torchvision, cuDNN and the CAFFE engine
against torch, TF32 really off, snapshots across devices, and training that tracks the CPU.

Tolerances (max |GPU − reference| / max |reference|): max pooling, RoI pooling, ReLU and dropout forward are
exact; float32 products (convolution, inner product, LRN, softmax, batch norm) within 2e-5 (float32 with
TF32 would be ~1e-3); backward passes that scatter-add in another order within 1e-5; float64 central
differences within 1e-6.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy
import pytest
import torch
from google.protobuf import text_format

from fastrcnn import backend
from fastrcnn.blob import Blob
from fastrcnn.cuda import cudnn
from fastrcnn.layers import create_layer
from fastrcnn.proto import caffe_pb2
from layer_helpers import relative_error

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.gpu


@pytest.fixture
def gpu():
    """GPU mode for the test (TF32 off), the CPU again afterwards; yields CuPy."""
    import cupy
    backend.set_tf32(False)
    backend.set_mode_gpu()
    try:
        yield cupy
    finally:
        backend.set_tf32(False)
        backend.set_mode_cpu()


def _parse(text, name="under_test"):
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    param.name = param.name or name
    return param


def run_layer(text, bottoms, device, dtype=numpy.float32, params=None, top_diffs=None, propagate=None,
              phase="TRAIN", num_tops=1, seed=7):
    """Set up, forward and backward one layer on "cpu" or "gpu"; everything returned as NumPy arrays:
    {"tops", "bottom_diffs", "param_diffs", "params" (as set up), "params_after" (the passes)}. ``params``
    replace the filled ones; ``top_diffs`` default to standard normals (seeded)."""
    (backend.set_mode_gpu if device == "gpu" else backend.set_mode_cpu)()
    try:
        layer = create_layer(_parse(text), phase)
        bottom = []
        for i, array in enumerate(bottoms):
            blob = Blob(numpy.shape(array), dtype=dtype, name=f"bottom{i}")
            blob.data[...] = backend.to_device(array, dtype)
            bottom.append(blob)
        top = [Blob((), dtype=dtype, name=f"top{i}") for i in range(num_tops)]
        backend.set_random_seed(seed)
        layer.setup(bottom, top)
        for blob, value in zip(layer.blobs, params or ()):
            blob.data[...] = backend.to_device(value, dtype)
        layer.param_propagate_down = [True] * len(layer.blobs)
        out = {"params": [backend.to_cpu(b.data).copy() for b in layer.blobs]}
        layer.reshape(bottom, top)
        backend.set_random_seed(seed + 1)
        layer.forward(bottom, top)
        out["tops"] = [backend.to_cpu(t.data).copy() for t in top]
        rng = numpy.random.default_rng(seed)
        diffs = top_diffs or [rng.standard_normal(t.shape) for t in top]
        for t, d in zip(top, diffs):
            t.diff[...] = backend.to_device(d, dtype)
        for blob in layer.blobs:
            blob.diff[...] = 0
        propagate = propagate or [True] * len(bottom)
        layer.backward(top, propagate, bottom)
        out["bottom_diffs"] = [backend.to_cpu(b.diff).copy() if p else None for b, p in zip(bottom, propagate)]
        out["param_diffs"] = [backend.to_cpu(b.diff).copy() for b in layer.blobs]
        out["params_after"] = [backend.to_cpu(b.data).copy() for b in layer.blobs]
        return out
    finally:
        backend.set_mode_cpu()


def rois_for(rng, count, width, height, scale):
    """(count, 5) RoIs on image 0 or 1 in input pixels of a feature map of (height, width) at ``scale``,
    half of them on odd coordinates so that x·scale falls on .5 (scale 0.5)."""
    x1 = rng.integers(0, int(width / scale) - 2, count)
    y1 = rng.integers(0, int(height / scale) - 2, count)
    x2 = numpy.minimum(x1 + rng.integers(0, int(width / scale), count), int(width / scale) - 1)
    y2 = numpy.minimum(y1 + rng.integers(0, int(height / scale), count), int(height / scale) - 1)
    x1[::2] |= 1
    y2[::2] |= 1
    return numpy.stack([rng.integers(0, 2, count), x1, y1, x2, y2], axis=1).astype(numpy.float64)


def _cases():
    rng = numpy.random.default_rng(0)
    image = rng.standard_normal((2, 6, 13, 11))
    wide = rng.standard_normal((1, 64, 9, 10))  # 64 channels: Winograd on the CPU, cuDNN on the GPU
    vector = rng.standard_normal((5, 12))
    scores, labels = rng.standard_normal((6, 4)), rng.integers(0, 4, 6).astype(numpy.float64)
    boxes, targets = rng.standard_normal((6, 8)), rng.standard_normal((6, 8))
    conv = 'type: "Convolution" convolution_param { %s weight_filler { type: "gaussian" std: 0.1 } ' \
           'bias_filler { type: "gaussian" std: 0.1 } }'
    f32, exact = 2e-5, 0.0
    return [
        # (id, layer text, bottoms, propagate, forward tolerance, backward tolerance)
        ("conv_caffenet_group2", conv % "num_output: 8 kernel_size: 5 pad: 2 group: 2", [image], None, f32, f32),
        ("conv_stride4", conv % "num_output: 4 kernel_size: 5 stride: 4", [image], None, f32, f32),
        ("conv_vgg3x3", conv % "num_output: 64 kernel_size: 3 pad: 1", [wide], None, f32, f32),
        ("conv_vgg3x3_caffe", conv % "num_output: 64 kernel_size: 3 pad: 1 engine: CAFFE", [wide], None, f32, f32),
        ("conv_1x1", conv % "num_output: 5 kernel_size: 1", [image], None, f32, f32),
        ("conv_dilated", conv % "num_output: 4 kernel_size: 3 dilation: 2 pad: 2", [image], None, f32, f32),
        ("pool_max_ceil", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }', [image], None,
         exact, 1e-6),
        ("pool_max_pad", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }', [image],
         None, exact, 1e-6),
        ("pool_ave", 'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }', [image], None,
         f32, f32),
        ("pool_global", 'type: "Pooling" pooling_param { pool: AVE global_pooling: true }', [image], None, f32, f32),
        ("lrn_across", 'type: "LRN" lrn_param { local_size: 5 alpha: 0.0005 beta: 0.75 k: 2 }', [image * 10],
         None, f32, f32),
        ("lrn_within", 'type: "LRN" lrn_param { local_size: 3 alpha: 0.1 beta: 0.75 norm_region: WITHIN_CHANNEL }',
         [image], None, f32, f32),
        ("roi_pool", 'type: "ROIPooling" roi_pooling_param { pooled_h: 3 pooled_w: 2 spatial_scale: 0.5 }',
         [image, rois_for(rng, 9, 11, 13, 0.5)], [True, False], exact, 1e-6),
        ("inner_product", 'type: "InnerProduct" inner_product_param { num_output: 7 '
         'weight_filler { type: "xavier" } bias_filler { type: "gaussian" } }', [vector], None, f32, f32),
        ("relu", 'type: "ReLU"', [image], None, exact, exact),
        ("dropout", 'type: "Dropout" dropout_param { dropout_ratio: 0.4 }', [image], None, exact, exact),
        ("softmax", 'type: "Softmax"', [scores], None, f32, f32),
        ("softmax_loss", 'type: "SoftmaxWithLoss"', [scores, labels], [True, False], f32, f32),
        ("smooth_l1_loss", 'type: "SmoothL1Loss"', [boxes, targets, (boxes > 0).astype(numpy.float64)],
         [True, False, False], f32, f32),
        ("batch_norm", 'type: "BatchNorm"', [image], None, f32, f32),
        ("batch_norm_global", 'type: "BatchNorm" batch_norm_param { use_global_stats: true }', [image], None,
         f32, f32),
        ("scale", 'type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } '
         'bias_filler { type: "gaussian" } }', [image], None, f32, f32),
    ]


CASES = _cases()


def _compare(got, want, tolerance, what):
    if tolerance == 0:
        numpy.testing.assert_array_equal(got, want, err_msg=what)
    else:
        assert relative_error(got, want) <= tolerance, (what, relative_error(got, want))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_layer_matches_the_cpu_layer(gpu, case):
    name, text, bottoms, propagate, forward_tol, backward_tol = case
    cpu = run_layer(text, bottoms, "cpu", propagate=propagate)
    dev = run_layer(text, bottoms, "gpu", params=cpu["params"], propagate=propagate)
    for i, (a, b) in enumerate(zip(dev["tops"], cpu["tops"])):
        _compare(a, b, forward_tol, f"{name} top {i}")
    for i, (a, b) in enumerate(zip(dev["bottom_diffs"], cpu["bottom_diffs"])):
        if b is not None:
            _compare(a, b, backward_tol, f"{name} bottom diff {i}")
    for i, (a, b) in enumerate(zip(dev["param_diffs"], cpu["param_diffs"])):
        _compare(a, b, max(backward_tol, 2e-5), f"{name} param diff {i}")
    for i, (a, b) in enumerate(zip(dev["params_after"], cpu["params_after"])):
        _compare(a, b, forward_tol and 2e-5, f"{name} param {i} after the passes")


def test_the_cases_cover_every_layer_type_of_the_prototxts():
    used = set()
    for path in (REPO / "prototxt").rglob("*.prototxt"):
        used |= set(re.findall(r'\btype: "(\w+)"', path.read_text()))
    used -= {"RoIData", "constant", "gaussian", "msra", "xavier"}  # the data layer (host) and fillers
    covered = {_parse(text).type for _, text, *_ in CASES}
    assert used <= covered, used - covered


def test_max_pooling_mask_top_matches_the_cpu(gpu):
    text = 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 }'
    x = numpy.random.default_rng(3).integers(0, 3, (1, 3, 9, 8)).astype(numpy.float64)  # many ties
    cpu = run_layer(text, [x], "cpu", num_tops=2)
    dev = run_layer(text, [x], "gpu", num_tops=2)
    for a, b in zip(dev["tops"], cpu["tops"]):
        numpy.testing.assert_array_equal(a, b)
    numpy.testing.assert_allclose(dev["bottom_diffs"][0], cpu["bottom_diffs"][0], rtol=1e-6, atol=1e-6)


# -- float64 central differences on the GPU --------------------------------------------------------------
def gradient_check(gpu, text, bottoms, check=(0,), phase="TRAIN", eps=1e-6, tolerance=1e-6, seed=0):
    """Backward against central differences of Σ w·top, all in float64 on the GPU; returns the worst error."""
    cupy = gpu
    layer = create_layer(_parse(text), phase)
    bottom = []
    for array in bottoms:
        blob = Blob(numpy.shape(array), dtype=numpy.float64)
        blob.data[...] = cupy.asarray(array)
        bottom.append(blob)
    top = [Blob((), dtype=numpy.float64)]
    backend.set_random_seed(seed)
    layer.setup(bottom, top)
    layer.param_propagate_down = [True] * len(layer.blobs)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    weights = cupy.asarray(numpy.random.default_rng(seed).standard_normal(top[0].shape))

    def objective():
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        return float((top[0].data * weights).sum())

    top[0].diff[...] = weights
    for blob in layer.blobs:
        blob.diff[...] = 0
    layer.backward(top, [i in check for i in range(len(bottom))], bottom)
    targets = [bottom[i] for i in check] + list(layer.blobs)
    analytic = [cupy.asnumpy(b.diff).reshape(-1) for b in targets]
    worst = 0.0
    for blob, got in zip(targets, analytic):
        flat = blob.data.reshape(-1)
        numeric = numpy.empty(flat.size)
        for k in range(flat.size):
            keep = float(flat[k])
            flat[k] = keep + eps
            plus = objective()
            flat[k] = keep - eps
            minus = objective()
            flat[k] = keep
            numeric[k] = (plus - minus) / (2 * eps)
        scale = max(numpy.abs(numeric).max(), numpy.abs(got).max(), 1e-12)
        worst = max(worst, numpy.abs(got - numeric).max() / scale)
    assert worst <= tolerance, worst
    return worst


@pytest.mark.parametrize("engine", ["CAFFE", "CUDNN"])
def test_convolution_gradients(gpu, engine, caplog, monkeypatch):
    monkeypatch.setattr(cudnn, "_logged", set())
    rng = numpy.random.default_rng(1)
    text = ('type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2 '
            f'engine: {engine} weight_filler {{ type: "gaussian" }} bias_filler {{ type: "gaussian" }} }}')
    gradient_check(gpu, text, [rng.standard_normal((2, 4, 6, 5))])
    if engine == "CUDNN" and "running the CAFFE engine" in caplog.text:
        pytest.skip(f"cuDNN on this GPU has no float64 convolution plan: {caplog.text.strip()}")


@pytest.mark.parametrize("pool", ["MAX kernel_size: 3 stride: 2", "AVE kernel_size: 3 stride: 2 pad: 1"])
def test_pooling_gradients(gpu, pool):
    x = numpy.random.default_rng(2).permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6) / 10.0  # no ties
    gradient_check(gpu, f'type: "Pooling" pooling_param {{ pool: {pool} }}', [x])


def test_lrn_gradients(gpu):
    x = numpy.random.default_rng(3).standard_normal((2, 7, 4, 3)) * 3
    gradient_check(gpu, 'type: "LRN" lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 k: 2 }', [x])


def test_roi_pooling_gradients(gpu):
    rng = numpy.random.default_rng(4)
    x = rng.permutation(2 * 3 * 8 * 9).reshape(2, 3, 8, 9) / 7.0
    gradient_check(gpu, 'type: "ROIPooling" roi_pooling_param { pooled_h: 2 pooled_w: 3 spatial_scale: 0.5 }',
                   [x, rois_for(rng, 5, 9, 8, 0.5)])


# -- RoI pooling against torchvision ----------------------------------------------------------------------
def test_roi_pooling_matches_torchvision(gpu):
    """torchvision's roi_pool rounds the scaled corners with std::round (halves away from zero, as the
    original's kernel), forces sizes to at least 1, and takes the first maximum on ties with strict >, so its
    values and argmaxes equal the original's exactly, .5 corners included; its backward scatters the same
    gradients (float32 atomics: the order of the adds differs)."""
    pytest.importorskip("torchvision")  # registers torch.ops.torchvision
    from fastrcnn.cuda import kernels
    rng = numpy.random.default_rng(5)
    features = rng.integers(-4, 5, (2, 3, 12, 10)).astype(numpy.float32)  # many ties
    rois = rois_for(rng, 40, 10, 12, 0.5).astype(numpy.float32)
    top, argmax = kernels.roi_pool_forward(gpu.asarray(features), gpu.asarray(rois), 3, 4, 0.5, True)
    want, want_arg = torch.ops.torchvision.roi_pool(torch.tensor(features), torch.tensor(rois), 0.5, 3, 4)
    numpy.testing.assert_array_equal(gpu.asnumpy(top), want.numpy())
    numpy.testing.assert_array_equal(gpu.asnumpy(argmax), want_arg.numpy())
    dy = rng.standard_normal(want.shape).astype(numpy.float32)
    got = kernels.roi_pool_backward(gpu.asarray(dy), argmax, gpu.asarray(rois), features.shape, 3, 4, 0.5)
    x = torch.tensor(features, requires_grad=True)
    torch.ops.torchvision.roi_pool(x, torch.tensor(rois), 0.5, 3, 4)[0].backward(torch.tensor(dy))
    numpy.testing.assert_allclose(gpu.asnumpy(got), x.grad.numpy(), rtol=1e-6, atol=1e-5)


# -- the two convolution engines against torch ------------------------------------------------------------------
@pytest.mark.parametrize("geometry", ["num_output: 6 kernel_size: 3 pad: 1",
                                      "num_output: 8 kernel_size: 5 stride: 2 pad: 2 group: 2",
                                      "num_output: 4 kernel_size: 3 dilation: 2 group: 2"])
def test_cudnn_and_caffe_engines_match_torch(gpu, geometry, caplog, monkeypatch):
    """float32 on both engines against torch in float64; cuDNN must have a float32 plan (no fallback logged)."""
    monkeypatch.setattr(cudnn, "_logged", set())
    caplog.set_level("WARNING", logger="fastrcnn.cuda.cudnn")
    rng = numpy.random.default_rng(6)
    x = rng.standard_normal((2, 4, 11, 9)).astype(numpy.float32)
    results = {}
    for engine in ("CUDNN", "CAFFE"):
        text = (f'type: "Convolution" convolution_param {{ {geometry} engine: {engine} '
                'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }')
        results[engine] = run_layer(text, [x], "gpu", params=results.get("CUDNN", {}).get("params"))
    p = _parse(text).convolution_param
    w, b = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in results["CUDNN"]["params"])
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.conv2d(tx, w, b, stride=p.stride[0] if p.stride else 1, padding=p.pad[0] if p.pad else 0,
                                   dilation=p.dilation[0] if p.dilation else 1, groups=p.group)
    dy = numpy.random.default_rng(7).standard_normal(tuple(y.shape))  # run_layer's top diff
    y.backward(torch.tensor(dy))
    assert "running the CAFFE engine" not in caplog.text
    for engine, out in results.items():
        assert relative_error(out["tops"][0], y.detach().numpy()) < 2e-5, engine
        assert relative_error(out["bottom_diffs"][0], tx.grad.numpy()) < 2e-5, engine
        assert relative_error(out["param_diffs"][0], w.grad.numpy()) < 2e-5, engine
        assert relative_error(out["param_diffs"][1], b.grad.numpy()) < 2e-5, engine


# -- TF32 ---------------------------------------------------------------------------------------------------------
def test_tf32_is_off_by_default(gpu):
    """float32 products keep float32's ~1e-7 relative rounding (TF32's 10-bit mantissa gives ~1e-3)."""
    cupy = gpu
    rng = numpy.random.default_rng(8)
    a, b = rng.standard_normal((512, 1024)), rng.standard_normal((1024, 256))
    want = a @ b

    def gemm_error():
        return relative_error(cupy.asnumpy(cupy.asarray(a, cupy.float32) @ cupy.asarray(b, cupy.float32)), want)

    x = rng.standard_normal((2, 32, 24, 24)).astype(numpy.float32)
    text = ('type: "Convolution" convolution_param { num_output: 32 kernel_size: 3 pad: 1 bias_term: false '
            'weight_filler { type: "gaussian" } }')

    def conv_error():
        out = run_layer(text, [x], "gpu")
        ref = torch.nn.functional.conv2d(torch.tensor(x, dtype=torch.float64),
                                         torch.tensor(out["params"][0], dtype=torch.float64), padding=1)
        return relative_error(out["tops"][0], ref.numpy())

    off = gemm_error(), conv_error()
    assert off[0] < 1e-5 and off[1] < 1e-5, off
    backend.set_tf32(True)
    on = gemm_error(), conv_error()
    backend.set_tf32(False)
    assert gemm_error() < 1e-5
    assert on[0] >= off[0] and on[1] >= off[1] * 0.5, (on, off)


# -- snapshots across devices -----------------------------------------------------------------------------------------
def test_snapshot_moves_between_devices_bit_for_bit(gpu, tmp_path):
    from test_solver import convnet_solver, params_of
    backend.set_mode_gpu()
    on_gpu = convnet_solver()
    on_gpu.snapshot_dir, on_gpu.param.snapshot_prefix = str(tmp_path), "gpu"
    on_gpu.step(5)
    state = on_gpu.snapshot()
    gpu_params, gpu_history = params_of(on_gpu.net), [backend.to_cpu(h).copy() for h in on_gpu.history]

    backend.set_mode_cpu()
    on_cpu = convnet_solver(seed=11)
    on_cpu.snapshot_dir, on_cpu.param.snapshot_prefix = str(tmp_path), "cpu"
    on_cpu.restore(state)
    assert all(isinstance(b.data, numpy.ndarray) for b in on_cpu.net.learnable_params)
    for a, b in zip(params_of(on_cpu.net) + list(on_cpu.history), gpu_params + gpu_history):
        assert a.dtype == b.dtype and numpy.array_equal(a, b)
    state = on_cpu.snapshot()

    backend.set_mode_gpu()
    again = convnet_solver(seed=12)
    again.restore(state)
    assert all(backend.on_gpu(b.data) for b in again.net.learnable_params)
    for a, b in zip(params_of(again.net) + [backend.to_cpu(h) for h in again.history], gpu_params + gpu_history):
        assert numpy.array_equal(a, b)
    assert again.iter == on_gpu.iter == 5


# -- training -------------------------------------------------------------------------------------------------------
def test_short_training_tracks_the_cpu(gpu):
    """The same data, fillers and dropout masks (all drawn on the host): the losses agree to float32 rounding."""
    from test_solver import convnet_solver, params_of

    def losses(device):
        (backend.set_mode_gpu if device == "gpu" else backend.set_mode_cpu)()
        solver = convnet_solver()
        seen = []
        solver.callbacks.append(lambda s: seen.append(float(s.net.blobs["loss"].data)))
        solver.step(20)
        return numpy.array(seen), params_of(solver.net)

    cpu_losses, cpu_params = losses("cpu")
    gpu_losses, gpu_params = losses("gpu")
    numpy.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-3, atol=1e-5)
    assert gpu_losses[-5:].mean() < gpu_losses[:5].mean()
    for a, b in zip(gpu_params, cpu_params):
        assert relative_error(a, b) < 1e-3


def _mean_ap(stdout):
    last = stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"mAP: \d\.\d{4}", last), last
    return float(last.split()[1])


@pytest.mark.slow
def test_toy_detector_trained_on_the_gpu_matches_the_cpu_one(tmp_path):
    """The README's main command on both devices: the GPU-trained detector within 1 mAP point of the CPU one."""
    env = dict(os.environ, FASTRCNN_DATA_ROOT=str(tmp_path / "data"), PYTHONUNBUFFERED="1")

    def run(args):
        done = subprocess.run([sys.executable, "-m"] + args, cwd=REPO, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{args[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    maps = {}
    for device, extra in (("cpu", []), ("gpu", ["--gpu", "0"])):
        weights = run(["fastrcnn.cli.solve", "prototxt/toy/solver.prototxt", "--output", str(tmp_path / device),
                       "--quiet"] + extra).strip().splitlines()[-1]
        maps[device] = _mean_ap(run(["fastrcnn.cli.test", "prototxt/toy/test.prototxt", weights, "--output",
                                     str(tmp_path / f"{device}_test"), "--quiet"] + extra))
    assert abs(maps["gpu"] - maps["cpu"]) <= 0.01, maps
