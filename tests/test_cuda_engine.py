"""The GPU engine's ordinary Python, on the CPU: Caffe's engine rule, the cuDNN plan cache (with a stand-in for
the frontend module), the fallback logged once, the TF32 switch and ``--tf32``, the layer hook, the
convolution variant on both engines against torch (NumPy stand-ins for the kernels, CuPy and a frontend that
convolves with torch), the pinned staging of host-to-device copies, snapshots taken through ``to_cpu``, and a
CPU run that never imports CuPy."""
import argparse
import importlib
import json
import logging
import subprocess
import sys
import textwrap
import types

import numpy
import pytest
import torch

from fastrcnn import backend
from fastrcnn.cli import common
from fastrcnn.cuda import cudnn
from fastrcnn.cuda import layers as gpu_layers
from layer_helpers import make_layer


# -- the engine rule ---------------------------------------------------------------------------------------
def _no_import():
    raise ImportError("No module named 'cudnn'")


def _must_not_run(*args):
    raise AssertionError("the CAFFE engine asks for no frontend and no plan")


def test_engine_caffe_never_touches_cudnn():
    assert cudnn.choose_engine("CAFFE", _must_not_run, _must_not_run) == (None, None)


@pytest.mark.parametrize("engine", ["DEFAULT", "CUDNN"])
def test_engine_default_and_cudnn_take_the_plan(engine):
    module = object()
    plan, reason = cudnn.choose_engine(engine, lambda: module, lambda fe: ("plan", fe))
    assert plan == ("plan", module) and reason is None


def test_engine_falls_back_without_the_frontend():
    plan, reason = cudnn.choose_engine("DEFAULT", _no_import, _must_not_run)
    assert plan is None and "does not import" in reason and "cudnn" in reason


def test_engine_falls_back_without_a_plan():
    def no_plan(frontend):
        raise cudnn.PlanUnavailable("RuntimeError: no engine")
    plan, reason = cudnn.choose_engine("CUDNN", lambda: object(), no_plan)
    assert plan is None and "no plan" in reason and "no engine" in reason


def test_fallback_is_logged_once_per_layer_and_reason(caplog):
    caplog.set_level(logging.WARNING, logger="fastrcnn.cuda.cudnn")
    for _ in range(3):
        cudnn.log_fallback("conv_once", "reason a")
    cudnn.log_fallback("conv_once", "reason b")
    cudnn.log_fallback("conv_twice", "reason a")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert sum("conv_once" in m and "reason a" in m for m in messages) == 1


# -- the plan cache, with a stand-in frontend ------------------------------------------------------------
class FakeTensor:
    """A graph tensor: its attributes, set by name (``set_dim(...)``) and chained as the frontend's."""

    def __init__(self, **attrs):
        self.attrs = attrs

    def __getattr__(self, name):
        if not name.startswith("set_"):
            raise AttributeError(name)

        def setter(value):
            self.attrs[name[4:]] = value
            return self
        return setter


def fake_frontend(fail_support=False):
    """A module shaped like the frontend's ``cudnn``: records every graph and the calls made on it."""
    graphs = []

    class Graph:
        def __init__(self, **kwargs):
            self.kwargs, self.calls, self.tensors = kwargs, [], []
            graphs.append(self)

        def tensor(self, **attrs):
            self.tensors.append(FakeTensor(**attrs))
            return self.tensors[-1]

        def _conv(self, op, **kwargs):
            self.calls.append((op, {k: v for k, v in kwargs.items() if k in ("padding", "stride", "dilation")}))
            return FakeTensor(op=op)

        def conv_fprop(self, image, weight, **kwargs):
            return self._conv("fprop", **kwargs)

        def conv_dgrad(self, loss, filter, **kwargs):  # noqa: A002  (the frontend's keyword)
            return self._conv("dgrad", **kwargs)

        def conv_wgrad(self, image, loss, **kwargs):
            return self._conv("wgrad", **kwargs)

        def __getattr__(self, name):
            def record(*args):
                self.calls.append((name, args))
                if name == "check_support" and fail_support:
                    raise RuntimeError("no engine supports this graph")
                return 64 if name == "get_workspace_size" else None
            return record

    enum = types.SimpleNamespace
    module = types.SimpleNamespace(
        pygraph=Graph, data_type=enum(FLOAT="FLOAT", DOUBLE="DOUBLE"), heur_mode=enum(A="A", FALLBACK="FALLBACK"),
        numerical_note=enum(TENSOR_CORE="TENSOR_CORE", DOWN_CONVERT_INPUTS="DOWN_CONVERT_INPUTS"))
    return module, graphs


def key(**changes):
    fields = dict(op=cudnn.FPROP, n=2, c=4, h=9, w=7, k=6, kh=3, kw=3, stride=(1, 1), pad=(1, 1),
                  dilation=(1, 1), group=1, dtype="float32", tf32=False, device=0)
    fields.update(changes)
    return cudnn.PlanKey(**fields)


def test_plan_cache_builds_each_geometry_once():
    module, graphs = fake_frontend()
    handles = []
    cache = cudnn.PlanCache(module, lambda device: handles.append(device) or f"handle{device}")
    first = cache.get(key())
    assert cache.get(key()) is first and len(graphs) == 1
    for change in [dict(stride=(2, 2)), dict(pad=(0, 1)), dict(dilation=(2, 2)), dict(group=2),
                   dict(dtype="float64"), dict(tf32=True), dict(op=cudnn.DGRAD), dict(h=10), dict(device=1)]:
        built = len(graphs)
        plan = cache.get(key(**change))
        assert len(graphs) == built + 1, change
        assert cache.get(key(**change)) is plan and len(graphs) == built + 1
    assert graphs[0].kwargs["handle"] == "handle0" and graphs[-1].kwargs["handle"] == "handle1"
    assert first.workspace == 64


def test_plan_cache_drops_the_least_recently_used_plan():
    module, graphs = fake_frontend()
    cache = cudnn.PlanCache(module, lambda device: None, size=2)
    first = cache.get(key(h=10))
    cache.get(key(h=11))
    assert cache.get(key(h=10)) is first  # used again: now the newer of the two
    cache.get(key(h=12))  # drops h=11
    assert cache.get(key(h=10)) is first and len(graphs) == 3
    cache.get(key(h=11))
    assert len(graphs) == 4 and len(cache.plans) == 2


def test_plan_graph_follows_the_key():
    module, graphs = fake_frontend()
    cache = cudnn.PlanCache(module, lambda device: None)
    plan = cache.get(key(op=cudnn.WGRAD, group=2, stride=(2, 1), pad=(0, 2), dilation=(1, 3)))
    graph = graphs[-1]
    assert graph.kwargs["compute_data_type"] == "FLOAT" and graph.kwargs["io_data_type"] == "FLOAT"
    assert graph.calls[0] == ("wgrad", {"padding": [0, 2], "stride": [2, 1], "dilation": [1, 3]})
    # one group's shapes: x (2, 2, 9, 7), dy (2, 3, (9 - 3) // 2 + 1, 7 + 4 - 7 + 1), dw (3, 2, 3, 3)
    assert [t.attrs["dim"] for t in graph.tensors] == [[2, 2, 9, 7], [2, 3, 4, 5]]
    assert graph.tensors[0].attrs["stride"] == [126, 63, 7, 1]
    assert plan.tensors["dw"].attrs["dim"] == [3, 2, 3, 3] and plan.tensors["dw"].attrs["output"]
    names = [name for name, _ in graph.calls]
    assert names[1:] == ["validate", "build_operation_graph", "create_execution_plans", "deselect_numeric_notes",
                         "check_support", "build_plans", "get_workspace_size"]
    assert dict(graph.calls)["create_execution_plans"] == (["A", "FALLBACK"],)


@pytest.mark.parametrize("changes, deselects", [({}, True), ({"tf32": True}, False),
                                                ({"dtype": "float64"}, False)])
def test_tensor_core_engines_are_removed_unless_tf32(changes, deselects):
    module, graphs = fake_frontend()
    cudnn.PlanCache(module, lambda device: None).get(key(**changes))
    notes = [args for name, args in graphs[-1].calls if name == "deselect_numeric_notes"]
    assert bool(notes) == deselects
    if deselects:
        assert "TENSOR_CORE" in notes[0][0]
    assert graphs[-1].kwargs["compute_data_type"] == ("DOUBLE" if changes.get("dtype") else "FLOAT")


def test_a_geometry_without_plan_is_remembered():
    module, graphs = fake_frontend(fail_support=True)
    cache = cudnn.PlanCache(module, lambda device: None)
    for _ in range(2):
        with pytest.raises(cudnn.PlanUnavailable, match="no engine supports"):
            cache.get(key())
    assert len(graphs) == 1
    with pytest.raises(cudnn.PlanUnavailable, match="dtype float16"):
        cache.get(key(dtype="float16"))


# -- TF32 and --tf32 -------------------------------------------------------------------------------------
def test_set_tf32_records_the_choice_without_cupy():
    code = textwrap.dedent("""
        import sys
        import fastrcnn
        from fastrcnn import backend
        assert backend.tf32() is False
        fastrcnn.set_tf32(True)
        assert backend.tf32() is True
        backend.set_tf32(0)
        assert backend.tf32() is False
        assert 'cupy' not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


def test_tf32_option_parses_and_is_set_on_the_cpu(monkeypatch):
    parser = argparse.ArgumentParser()
    common.add_pipeline_options(parser)
    assert parser.parse_args([]).tf32 is False
    args = parser.parse_args(["--tf32"])
    assert args.tf32 is True and args.gpu is None
    monkeypatch.setitem(backend._state, "tf32", False)
    common.setup(args)
    assert backend.tf32() is True and not backend.gpu_mode()
    common.setup(parser.parse_args([]))
    assert backend.tf32() is False


# -- the layer hook ---------------------------------------------------------------------------------------
CONV = 'type: "Convolution" convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2 %s }'


def test_hook_keeps_numpy_arrays_on_the_cpu_code():
    x = numpy.random.default_rng(0).normal(size=(1, 4, 6, 6))
    for text in [CONV % "", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 }',
                 'type: "LRN" lrn_param { local_size: 3 }', 'type: "ReLU"']:
        layer, bottom, _ = make_layer(text, [x])
        assert layer.gpu_variant(bottom[0]) is None
        assert "_gpu_variant" not in layer.__dict__


def test_hook_picks_the_variant_of_each_layer(monkeypatch):
    monkeypatch.setattr(backend, "on_gpu", lambda array: True)
    x = numpy.zeros((1, 4, 6, 6))
    cases = [(CONV % "", gpu_layers.ConvolutionGPU),
             ('type: "Pooling" pooling_param { pool: AVE kernel_size: 2 stride: 2 }', gpu_layers.PoolingGPU),
             ('type: "LRN" lrn_param { local_size: 3 }', gpu_layers.LRNGPU),
             ('type: "LRN" lrn_param { local_size: 3 norm_region: WITHIN_CHANNEL }', type(None)),
             ('type: "ReLU"', type(None))]
    for text, kind in cases:
        monkeypatch.setattr(backend, "on_gpu", lambda array: False)
        layer, bottom, _ = make_layer(text, [x])
        monkeypatch.setattr(backend, "on_gpu", lambda array: True)
        variant = layer.gpu_variant(bottom[0])
        assert isinstance(variant, kind), text
        assert layer.gpu_variant(bottom[0]) is variant


# -- the CAFFE engine's variant, with NumPy stand-ins for the kernels ------------------------------------------
def _im2col(image, kernel, pad, stride, dilation):
    """Caffe's im2col, one value at a time: rows (c, i, j), columns (oh, ow)."""
    c, h, w = image.shape
    oh = (h + 2 * pad[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * pad[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    col = numpy.zeros((c, kernel[0], kernel[1], oh, ow), image.dtype)
    for ch, i, j, y, x in numpy.ndindex(col.shape):
        r, s = y * stride[0] - pad[0] + i * dilation[0], x * stride[1] - pad[1] + j * dilation[1]
        if 0 <= r < h and 0 <= s < w:
            col[ch, i, j, y, x] = image[ch, r, s]
    return col.reshape(c * kernel[0] * kernel[1], oh * ow)


def _col2im(col, image_shape, kernel, pad, stride, dilation):
    c, h, w = image_shape
    image = numpy.zeros(image_shape, col.dtype)
    ow = (w + 2 * pad[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    col = col.reshape(c, kernel[0], kernel[1], -1, ow)
    for ch, i, j, y, x in numpy.ndindex(col.shape):
        r, s = y * stride[0] - pad[0] + i * dilation[0], x * stride[1] - pad[1] + j * dilation[1]
        if 0 <= r < h and 0 <= s < w:
            image[ch, r, s] += col[ch, i, j, y, x]
    return image


@pytest.fixture
def numpy_kernels(monkeypatch):
    """fastrcnn.cuda.kernels replaced by the NumPy im2col/col2im above, and the arrays treated as the GPU's."""
    module = types.ModuleType("fastrcnn.cuda.kernels")
    module.im2col, module.col2im = _im2col, _col2im
    monkeypatch.setitem(sys.modules, "fastrcnn.cuda.kernels", module)
    monkeypatch.setattr(gpu_layers, "_kernels", lambda: module)
    return module


def backward_matches_torch(layer, bottom, top, rng):
    """Backward of a CONV layer (stride 2, pad 1, dilation 2, group 2) from param diffs of 1 and 2 against
    torch's autograd: the bottom gradient overwritten, the parameter gradients accumulated; the top too."""
    dy = rng.normal(size=top[0].shape)
    top[0].diff[...] = dy
    layer.blobs[0].diff[...] = 1.0
    layer.blobs[1].diff[...] = 2.0
    layer.backward(top, [True], bottom)
    tx = torch.tensor(bottom[0].data, requires_grad=True)
    tw = torch.tensor(layer.blobs[0].data, requires_grad=True)
    tb = torch.tensor(layer.blobs[1].data, requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=2, padding=1, dilation=2, groups=2)
    ty.backward(torch.tensor(dy))
    numpy.testing.assert_allclose(top[0].data, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(bottom[0].diff, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(layer.blobs[0].diff, 1.0 + tw.grad.numpy(), rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(layer.blobs[1].diff, 2.0 + tb.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("engine", ["CAFFE", "DEFAULT"])
def test_caffe_engine_variant_matches_torch(numpy_kernels, monkeypatch, caplog, engine):
    caplog.set_level(logging.WARNING, logger="fastrcnn.cuda.cudnn")
    monkeypatch.setattr(cudnn, "import_frontend", _no_import)
    monkeypatch.setattr(cudnn, "_logged", set())
    rng = numpy.random.default_rng(1)
    x = rng.normal(size=(2, 4, 7, 6))
    fillers = 'bias_filler { type: "gaussian" } weight_filler { type: "gaussian" }'
    text = CONV % f"dilation: 2 engine: {engine} {fillers}"
    layer, bottom, top = make_layer(text, [x])  # the CPU forward
    cpu_top = top[0].data.copy()
    monkeypatch.setattr(backend, "on_gpu", lambda array: True)
    for _ in range(2):
        layer.forward(bottom, top)
    numpy.testing.assert_allclose(top[0].data, cpu_top, rtol=1e-12, atol=1e-12)

    backward_matches_torch(layer, bottom, top, rng)
    fallbacks = [r.getMessage() for r in caplog.records]
    assert len(fallbacks) == (0 if engine == "CAFFE" else 1)
    assert all("under_test" in m and "does not import" in m for m in fallbacks)


# -- snapshots leave the device through to_cpu --------------------------------------------------------------
class DeviceArray(numpy.ndarray):
    """Stands for a GPU array: only ``backend.to_cpu`` (patched below) turns it into a plain NumPy array."""


def test_snapshot_copies_every_array_through_to_cpu(tmp_path, monkeypatch):
    from test_solver import convnet_solver
    solver = convnet_solver()
    solver.step(2)
    solver.snapshot_dir = str(tmp_path)
    solver.param.snapshot_prefix = "snap"
    originals = {}
    for i, blob in enumerate(solver.net.learnable_params):
        originals[f"param/{i}"] = blob.data.copy()
        blob._data = blob.data.view(DeviceArray)
    solver.history = [h.view(DeviceArray) for h in solver.history]
    originals.update({f"history/{i}": numpy.asarray(h).copy() for i, h in enumerate(solver.history)})
    seen = []
    plain = backend.to_cpu

    def to_cpu(x):
        seen.append(type(x))
        return numpy.array(x, copy=True).view(numpy.ndarray) if isinstance(x, DeviceArray) else plain(x)

    monkeypatch.setattr(backend, "to_cpu", to_cpu)
    state = solver.snapshot()
    assert seen.count(DeviceArray) >= 2 * len(solver.history)
    with numpy.load(state, allow_pickle=False) as saved:
        for name, array in originals.items():
            assert type(saved[name]) is numpy.ndarray and numpy.array_equal(saved[name], array), name


# -- a CPU run never imports CuPy or the GPU engine --------------------------------------------------------------
def test_cpu_forward_backward_imports_no_gpu_code():
    code = textwrap.dedent("""
        import json, sys
        import numpy
        from google.protobuf import text_format
        from fastrcnn import Net
        from fastrcnn.proto import caffe_pb2
        text = '''
        input: "data" input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }
        input: "rois" input_shape { dim: 2 dim: 5 }
        force_backward: true
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
          convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
        layer { name: "norm" type: "LRN" bottom: "conv" top: "norm" lrn_param { local_size: 3 } }
        layer { name: "pool" type: "Pooling" bottom: "norm" top: "pool"
          pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
        layer { name: "roi" type: "ROIPooling" bottom: "pool" bottom: "rois" top: "roi"
          roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 0.5 } }
        layer { name: "fc" type: "InnerProduct" bottom: "roi" top: "fc" inner_product_param { num_output: 3 } }
        '''
        param = text_format.Parse(text, caffe_pb2.NetParameter())
        net = Net(param, phase="TRAIN")
        rng = numpy.random.default_rng(0)
        out = net.forward(data=rng.normal(size=(1, 3, 16, 16)), rois=[[0, 0, 0, 8, 8], [0, 2, 4, 15, 15]])
        net.blobs["fc"].diff[...] = 1
        net.backward()
        print(json.dumps(sorted(m for m in sys.modules if m.startswith(("cupy", "cudnn", "fastrcnn.cuda")))))
    """)
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


# -- the cuDNN variant's wiring, with stand-ins for CuPy and a frontend that convolves with torch ---------------
def convolving_frontend():
    """A frontend module whose graphs run their one convolution with torch.nn.grad on NumPy arrays."""
    module, graphs = fake_frontend()
    plain = module.pygraph

    def run(graph, pack, workspace, handle=None):
        by_name = {t.attrs.get("name", "out"): a for t, a in pack.items()}
        op, conv = graph.calls[0]
        geometry = dict(stride=conv["stride"], padding=conv["padding"], dilation=conv["dilation"])
        out = by_name["out"]
        if op == "fprop":
            result = torch.nn.functional.conv2d(torch.tensor(by_name["x"]), torch.tensor(by_name["w"]), **geometry)
        elif op == "dgrad":
            result = torch.nn.grad.conv2d_input(out.shape, torch.tensor(by_name["w"]), torch.tensor(by_name["dy"]),
                                                **geometry)
        else:
            result = torch.nn.grad.conv2d_weight(torch.tensor(by_name["x"]), out.shape, torch.tensor(by_name["dy"]),
                                                 **geometry)
        assert out.flags.c_contiguous and all(a.flags.c_contiguous for a in pack.values())
        out[...] = result.numpy()
        graph.executed += 1

    class Graph(plain):
        executed = 0
        execute = run

    module.pygraph = Graph
    module.set_stream = lambda handle, stream: None
    return module, graphs


def fake_cupy():
    module = types.ModuleType("cupy")
    module.ascontiguousarray, module.empty, module.uint8 = numpy.ascontiguousarray, numpy.empty, numpy.uint8
    module.cuda = types.SimpleNamespace(get_current_stream=lambda: types.SimpleNamespace(ptr=0),
                                        Device=lambda *args: types.SimpleNamespace(id=0))
    return module


def test_cudnn_variant_runs_each_group_and_accumulates(monkeypatch):
    frontend, graphs = convolving_frontend()
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy())
    monkeypatch.setattr(cudnn, "import_frontend", lambda: frontend)
    monkeypatch.setattr(cudnn, "handle_for", lambda device: "handle")
    monkeypatch.setattr(cudnn, "_caches", {})
    rng = numpy.random.default_rng(2)
    x = rng.normal(size=(2, 4, 9, 8))
    fillers = 'bias_filler { type: "gaussian" } weight_filler { type: "gaussian" }'
    layer, bottom, top = make_layer(CONV % f"dilation: 2 engine: CUDNN {fillers}", [x])
    monkeypatch.setattr(backend, "on_gpu", lambda array: True)
    layer.forward(bottom, top)
    layer.forward(bottom, top)
    backward_matches_torch(layer, bottom, top, rng)
    assert [g.calls[0][0] for g in graphs] == ["fprop", "wgrad", "dgrad"]  # one plan per pass, built once
    assert [g.executed for g in graphs] == [4, 2, 2]  # each run once per group


# -- pinned host-to-device copies, with stand-ins for CuPy's pinned memory, streams and events --------------------
class StagedArray(numpy.ndarray):
    """Stands for a GPU array: ``set`` copies a host array in and records the copy."""
    copies = []

    def set(self, array, stream=None):
        StagedArray.copies.append((array, stream))
        self[...] = array


def test_upload_stages_in_pinned_memory_until_the_copy_completes(monkeypatch):
    events = []

    class Stream:
        def record(self):
            events.append(types.SimpleNamespace(done=False))
            return events[-1]

    stream, pinned = Stream(), []
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(alloc_pinned_memory=lambda n: pinned.append(bytearray(n)) or pinned[-1],
                                      get_current_stream=lambda: stream)
    cupy.empty = lambda shape, dtype: numpy.empty(shape, dtype).view(StagedArray)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    transfer = importlib.import_module("fastrcnn.cuda.transfer")
    monkeypatch.setattr(transfer, "cupy", cupy)
    monkeypatch.setattr(transfer, "_in_flight", [])
    monkeypatch.setattr(StagedArray, "copies", [])
    dst = numpy.zeros((2, 3), numpy.float32).view(StagedArray)
    transfer.upload(dst, [[1, 2, 3], [4, 5, 6]])
    numpy.testing.assert_array_equal(dst, [[1, 2, 3], [4, 5, 6]])
    staged, used = StagedArray.copies[0]
    assert used is stream and staged.dtype == numpy.float32 and numpy.shares_memory(staged, pinned[0])
    assert len(transfer._in_flight) == 1  # kept: the copy may still be running
    events[0].done = True
    strided = numpy.zeros((4, 3), numpy.float32).view(StagedArray)[::2]
    transfer.upload(strided, numpy.full((2, 3), 7.0))
    numpy.testing.assert_array_equal(strided, numpy.full((2, 3), 7.0))
    assert [entry[0] for entry in transfer._in_flight] == [pinned[1]]  # the first buffer handed back


# -- the GPU variants through the kernels' host build, against the CPU layers ---------------------------------
@pytest.fixture
def host_kernels(monkeypatch):
    """NumPy arrays routed to the GPU variants, whose kernels then run their g++ build; cuDNN absent."""
    try:
        importlib.import_module("fastrcnn.cuda.kernels")
    except ImportError as exc:
        pytest.skip(f"needs fastrcnn.cuda.kernels, the CUDA kernels whose host build runs the variants: {exc}")

    def upload(dst, src):
        dst[...] = src
    monkeypatch.setattr(cudnn, "import_frontend", _no_import)
    monkeypatch.setattr(backend, "upload", upload)
    return lambda routed: monkeypatch.setattr(
        backend, "on_gpu", (lambda array: isinstance(array, numpy.ndarray)) if routed else (lambda array: False))


def _variant_cases():
    from test_gpu import CASES
    return [c for c in CASES if gpu_layers.VARIANTS.get(c[1].split('"')[1])]


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("case", _variant_cases(), ids=lambda c: c[0])
def test_gpu_variants_match_the_cpu_layers(host_kernels, case, dtype):
    """Tolerances as on the GPU (tests/test_gpu.py) in float32; 1e-12 in float64."""
    from test_gpu import relative_error, run_layer
    name, text, bottoms, propagate, forward_tol, backward_tol = case
    host_kernels(False)
    cpu = run_layer(text, bottoms, "cpu", dtype=dtype, propagate=propagate)
    host_kernels(True)
    routed = run_layer(text, bottoms, "cpu", dtype=dtype, params=cpu["params"], propagate=propagate)
    for kind, tolerance in (("tops", forward_tol), ("bottom_diffs", backward_tol), ("param_diffs", 2e-5),
                            ("params_after", 2e-5)):
        for got, want in zip(routed[kind], cpu[kind]):
            if want is not None and want.size:
                limit = tolerance if dtype == numpy.float32 else min(tolerance, 1e-12)
                assert relative_error(got, want) <= limit, (name, kind, relative_error(got, want))
