"""The CUDA kernels of fastrcnn/cuda without a GPU: every source compiled by nvcc and by NVRTC for sm_80 and
sm_90, and run on the CPU (g++ and host_shim.h) against the NumPy layers: RoI pooling, NMS, im2col, MAX/AVE
pooling and LRN, forward and backward, plus finite-difference checks of the backward kernels."""
import ast
import ctypes
import fnmatch
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastrcnn.cuda import host, kernels
from fastrcnn.errors import Error
from fastrcnn.rcnn.boxes import nms as cpu_nms
from layer_helpers import make_layer
from test_layers_roi_loss import random_rois, roi_text

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted(kernels.KERNELS)
ARCHS = ("80", "90")
DTYPES = (np.float32, np.float64)


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    """A fresh kernel cache: the host build is compiled (and tested) in each run."""
    saved = os.environ.get("FASTRCNN_KERNEL_CACHE")
    os.environ["FASTRCNN_KERNEL_CACHE"] = str(tmp_path_factory.mktemp("kernels"))
    host._libraries.clear()
    yield
    host._libraries.clear()
    if saved is None:
        del os.environ["FASTRCNN_KERNEL_CACHE"]
    else:
        os.environ["FASTRCNN_KERNEL_CACHE"] = saved


# -- compilation ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("file", FILES)
def test_nvcc_compiles_for_sm80_and_sm90_without_warnings(file, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc of the CUDA toolkit is not installed")
    # taking the kernels' addresses in host code makes nvcc instantiate and compile every template
    refs = ", ".join(f"(void*)&{e}" for e in kernels.expressions(file))
    (tmp_path / "unit.cu").write_text(f'#include "{file}"\nvoid* frcnn_refs[] = {{{refs}}};\n')
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    done = subprocess.run([nvcc, *kernels.OPTIONS, *gencode, "-Werror", "all-warnings", "-fatbin",
                           "-o", str(tmp_path / "unit.fatbin"), str(tmp_path / "unit.cu")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr + done.stdout


def _find_nvrtc():
    """libnvrtc from the nvidia-cuda-nvrtc wheel or the CUDA toolkit, or None."""
    candidates = []
    for base in sys.path:
        candidates += sorted(glob.glob(os.path.join(base, "nvidia", "*", "lib", "libnvrtc.so*")))
    candidates += sorted(glob.glob("/usr/local/cuda*/lib64/libnvrtc.so*"))
    for path in candidates:
        if "builtins" in path:
            continue
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


@pytest.fixture(scope="module")
def nvrtc():
    lib = _find_nvrtc()
    if lib is None:
        pytest.skip("no libnvrtc of CUDA found (pip install nvidia-cuda-nvrtc)")
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p
    return lib


@pytest.mark.parametrize("arch", ["compute_80", "sm_90"])
@pytest.mark.parametrize("file", FILES)
def test_nvrtc_compiles_with_the_launch_options(nvrtc, file, arch):
    """What ``cupy.RawModule`` does on a GPU: the file with OPTIONS and its name expressions."""
    prog = ctypes.c_void_p()
    name = file.encode()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), kernels.source(file).encode(), name, 0, None, None) == 0
    try:
        for e in kernels.expressions(file):
            assert nvrtc.nvrtcAddNameExpression(prog, e.encode()) == 0
        options = [o.encode() for o in kernels.OPTIONS + (f"--gpu-architecture={arch}",)]
        result = nvrtc.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, log)
        assert result == 0, f"{nvrtc.nvrtcGetErrorString(result).decode()}:\n{log.value.decode()}"
        assert "warning" not in log.value.decode(), log.value.decode()
        for e in kernels.expressions(file):
            lowered = ctypes.c_char_p()
            assert nvrtc.nvrtcGetLoweredName(prog, e.encode(), ctypes.byref(lowered)) == 0, e
        code = "CUBIN" if arch.startswith("sm_") else "PTX"
        getattr(nvrtc, f"nvrtcGet{code}Size")(prog, ctypes.byref(size))
        assert size.value > 0
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.mark.parametrize("file", FILES)
def test_host_build_compiles_with_strict_warnings(file):
    path = host.build(file)
    assert path.exists() and path.parent == Path(os.environ["FASTRCNN_KERNEL_CACHE"])
    assert "-Werror" in host.FLAGS and "-Wextra" in host.FLAGS
    for e in kernels.expressions(file):
        assert hasattr(host.library(file), host.symbol(e))
    assert host.build(file) == path  # cached


def test_missing_gxx_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(host.shutil, "which", lambda name: None)
    with pytest.raises(Error, match="needs g\\+\\+"):
        host.build("nms.cu")


def test_host_launch_checks_its_arguments_against_the_kernel():
    """Every launch passes arrays and scalars of the parameters' own types (the packing CuPy uses)."""
    assert host.signature("nms.cu", "nms_mask", None) == [
        (True, np.dtype(np.float32)), (False, np.dtype(np.int32)), (False, np.dtype(np.int32)),
        (False, np.dtype(np.float64)), (True, np.dtype(np.uint64))]
    out = np.zeros((4, 2), np.float32)
    args = [out, np.int32(4), np.int32(1), np.float64(0.5), np.zeros(4, np.uint64)]
    host.launch("nms.cu", "nms_mask", None, 1, 1, args)
    for i, bad, message in [(0, out[:, :1], "argument 0 must be a C-contiguous array"),
                            (1, np.int64(4), "argument 1 must be a scalar of int32, got a scalar of int64"),
                            (3, 0.5, "argument 3 must be a scalar of float64, got float"),
                            (4, np.zeros(4, np.int64), "argument 4 must be an array of uint64, got an array of int64")]:
        with pytest.raises(Error, match=message):
            host.launch("nms.cu", "nms_mask", None, 1, 1, args[:i] + [bad] + args[i + 1:])
    with pytest.raises(Error, match="kernel nms_mask takes 5 arguments, got 4"):
        host.launch("nms.cu", "nms_mask", None, 1, 1, args[:4])


def test_package_data_holds_every_source_and_header():
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    package_data = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "package_data"))
    globs = package_data["fastrcnn"]
    folder = ROOT / "fastrcnn" / "cuda"
    data = [p for p in folder.iterdir() if p.suffix in (".cu", ".h")]
    assert {p.name for p in data} >= set(kernels.KERNELS) | {"kernel_common.h", "host_shim.h"}
    for path in data:
        assert any(fnmatch.fnmatch(f"cuda/{path.name}", g) for g in globs), path.name


def test_cupy_arrays_launch_through_rawmodule_once_per_file_and_device(monkeypatch):
    """The dispatch to CuPy, with a stand-in module: the file's source, OPTIONS and name expressions go to
    RawModule, compiled once per (file, device), launched on the array's device."""
    calls = []

    class Device:
        def __init__(self, id):
            self.id = id

        def __enter__(self):
            calls.append(("device", self.id))
            return self

        def __exit__(self, *exc):
            return False

    class RawModule:
        def __init__(self, code, options, name_expressions):
            calls.append(("compile", code, options, tuple(name_expressions)))

        def get_function(self, name):
            return lambda grid, block, args: calls.append(("launch", name, grid, block, len(args)))

    Array = type("ndarray", (), {"__module__": "cupy._core.core", "device": Device(3)})
    monkeypatch.setitem(sys.modules, "cupy", type(sys)("cupy"))
    sys.modules["cupy"].RawModule = RawModule
    monkeypatch.setattr(kernels, "_modules", {})
    for _ in range(2):
        kernels._launch("im2col", np.float64, (2,), (256,), (Array(), np.int64(5), Array()))
    compiles = [c for c in calls if c[0] == "compile"]
    assert compiles == [("compile", (ROOT / "fastrcnn/cuda/im2col.cu").read_text(), kernels.OPTIONS,
                         ("im2col<float>", "im2col<double>", "col2im<float>", "col2im<double>"))]
    assert kernels.OPTIONS[-1] == f"-I{ROOT / 'fastrcnn' / 'cuda'}"
    assert calls[-2:] == [("device", 3), ("launch", "im2col<double>", (2,), (256,), 3)]


def test_a_cpu_run_imports_no_cupy():
    kernels.nms(np.array([[0, 0, 1, 1, 1]], np.float32), 0.5)
    assert "cupy" not in sys.modules


# -- RoI pooling ------------------------------------------------------------------------------------------
def _roi_case(rng, dtype, ties):
    x = (rng.integers(0, 3, (2, 3, 9, 11)) if ties else rng.standard_normal((2, 3, 9, 11))).astype(dtype)
    rois = random_rois(rng, 40, 2, 9, 11, 0.5)
    extra = np.array([[1, 4, 4, 4, 4],          # one pixel
                      [0, 30, 30, 40, 40],       # outside: every bin empty
                      [1, -9, -9, -3, 4],        # left of and above the map
                      [0, 1, 1, 2, 2],           # 2×2 pixels scaled to 1: 3×4 bins over 1 pixel
                      [1, 3, 5, 21, 17]], np.float32)
    return x, np.concatenate([rois, extra])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_pooling_matches_the_layer(dtype, ties):
    rng = np.random.default_rng(5 + ties)
    x, rois = _roi_case(rng, dtype, ties)
    layer, bottom, top = make_layer(roi_text(3, 4, 0.5), [x, rois], dtype=dtype)
    got, argmax = kernels.roi_pool_forward(x, rois.astype(dtype), 3, 4, 0.5, with_argmax=True)
    assert got.dtype == dtype and argmax.dtype == np.int32
    np.testing.assert_array_equal(got, top[0].data)
    np.testing.assert_array_equal(argmax, layer.max_idx)
    assert (argmax == -1).any() and (argmax >= 0).any()
    test_top, none = kernels.roi_pool_forward(x, rois, 3, 4, 0.5, with_argmax=False)
    assert none is None
    np.testing.assert_array_equal(test_top, got)

    top[0].diff[...] = rng.standard_normal(top[0].shape)
    layer.backward(top, [True, False], bottom)
    grads = [kernels.roi_pool_backward(top[0].diff, argmax, rois, x.shape, 3, 4, 0.5) for _ in range(2)]
    np.testing.assert_array_equal(grads[0], grads[1])
    np.testing.assert_array_equal(grads[0], bottom[0].diff)


def test_roi_pooling_half_coordinates_and_signed_zeros():
    """x1 = 8 px at 1/16 is 0.5: rounded away from zero to 1 (rintf would give 0); −0 ties with +0."""
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, :] = x[0, 0, :, 0] = 100
    x[0, 0, 1:, 1:] = np.arange(9).reshape(3, 3)
    rois = np.array([[0, 8, 8, 40, 40], [0, 24, 24, 40, 40]], np.float32)
    top, argmax = kernels.roi_pool_forward(x, rois, 1, 1, 0.0625, True)
    np.testing.assert_array_equal(top.ravel(), [8, 8])
    np.testing.assert_array_equal(argmax.ravel(), [15, 15])
    x = np.array([[[[-0.0, 0.0, -3.0], [-1.0, -0.5, -2.0]]]], np.float32)
    rois = np.array([[0, 0, 0, 2, 1], [0, 0, 1, 2, 1], [0, 2, 0, 2, 1]], np.float32)
    layer, _, want = make_layer(roi_text(1, 1, 1.0), [x, rois], dtype=np.float32)
    top, argmax = kernels.roi_pool_forward(x, rois, 1, 1, 1.0, True)
    np.testing.assert_array_equal(argmax, layer.max_idx)
    np.testing.assert_array_equal(top, want[0].data)


def test_roi_pooling_errors_name_the_input():
    x = np.zeros((2, 1, 3, 3), np.float32)
    with pytest.raises(Error, match=r"RoI 0 has batch index 2, outside \[0, 2\)"):
        kernels.roi_pool_forward(x, np.array([[2, 0, 0, 1, 1]], np.float32), 1, 1, 1.0, True)
    with pytest.raises(Error, match=r"rois must have shape \(R, 5\)"):
        kernels.roi_pool_forward(x, np.zeros((1, 4), np.float32), 1, 1, 1.0, True)
    with pytest.raises(Error, match="float32 or float64"):
        kernels.roi_pool_forward(x.astype(np.int32), np.zeros((1, 5), np.float32), 1, 1, 1.0, True)
    with pytest.raises(Error, match="argmax must have shape"):
        kernels.roi_pool_backward(np.zeros((1, 1, 1, 1), np.float32), np.zeros((1, 1, 2, 1), np.int32),
                                  np.zeros((1, 5), np.float32), x.shape, 1, 1, 1.0)


# -- NMS --------------------------------------------------------------------------------------------------
def _dets(rng, n):
    xy = rng.integers(0, 40, (n, 2)).astype(np.float32)
    wh = rng.integers(-1, 25, (n, 2)).astype(np.float32)  # −1: zero-area boxes (x2 = x1 − 1)
    scores = rng.integers(0, 4, n).astype(np.float32) - 1.5   # many ties
    scores[::7] = 0.0
    scores[3::7] = -0.0
    return np.column_stack([xy, xy + wh, scores])


@pytest.mark.parametrize("thresh", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 300])
def test_nms_keeps_exactly_the_cpu_indices(n, thresh):
    dets = _dets(np.random.default_rng(n), n)
    got = kernels.nms(dets, thresh)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, cpu_nms(dets, thresh))


def test_nms_suppresses_an_overlap_exactly_at_the_threshold():
    """IoU 50/100 = 0.5 exactly: suppressed at thresh 0.5 (>=), kept above."""
    dets = np.array([[0, 0, 9, 9, 0.9], [0, 0, 9, 4, 0.8], [20, 20, 29, 29, 0.8]], np.float32)
    np.testing.assert_array_equal(kernels.nms(dets, 0.5), [0, 2])
    np.testing.assert_array_equal(kernels.nms(dets, 0.5000001), [0, 1, 2])
    np.testing.assert_array_equal(kernels.nms(dets, 0.5), cpu_nms(dets, 0.5))


def test_nms_rejects_bad_dets():
    with pytest.raises(Error, match=r"nms: dets must have shape \(N, 5\)"):
        kernels.nms(np.zeros((3, 4), np.float32), 0.5)


# -- im2col / col2im --------------------------------------------------------------------------------------
CONV = [((3, 3), (1, 1), (1, 1), (1, 1)), ((3, 2), (2, 0), (2, 1), (1, 1)), ((2, 3), (1, 2), (3, 2), (2, 1)),
        ((1, 1), (0, 0), (2, 2), (1, 1)), ((5, 5), (2, 2), (1, 1), (1, 1))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, pad, stride, dilation", CONV)
def test_im2col_and_col2im_match_the_convolution_layer(kernel, pad, stride, dilation, dtype):
    rng = np.random.default_rng(sum(kernel + pad + stride))
    x = rng.standard_normal((1, 3, 7, 8)).astype(dtype)
    text = (f'type: "Convolution" convolution_param {{ num_output: 2 kernel_h: {kernel[0]} kernel_w: {kernel[1]} '
            f'pad_h: {pad[0]} pad_w: {pad[1]} stride_h: {stride[0]} stride_w: {stride[1]} '
            f'dilation: {dilation[0]} dilation: {dilation[1]} engine: CAFFE }}')
    layer, _, _ = make_layer(text, [x], dtype=dtype)
    band = (0, layer.out[0])
    want = layer._columns(np, x[0], band)[0].copy()
    col = kernels.im2col(x[0], kernel, pad, stride, dilation)
    assert col.dtype == dtype
    np.testing.assert_array_equal(col, want)
    diff = rng.standard_normal(col.shape).astype(dtype)
    want = np.zeros_like(x[0])
    layer._col2im(diff.reshape(3, *kernel, *layer.out), want, band)
    np.testing.assert_array_equal(kernels.col2im(diff, x[0].shape, kernel, pad, stride, dilation), want)


# -- MAX and AVE pooling ----------------------------------------------------------------------------------
POOL = [((3, 3), (2, 2), (1, 1)), ((2, 2), (2, 2), (1, 1)), ((3, 2), (2, 1), (0, 0)), ((2, 2), (2, 2), (0, 0)),
        ((2, 2), (3, 3), (1, 1)), ((3, 3), (1, 1), (2, 2))]


def _pool_text(pool, kernel, stride, pad):
    return (f'type: "Pooling" pooling_param {{ pool: {pool} kernel_h: {kernel[0]} kernel_w: {kernel[1]} '
            f'stride_h: {stride[0]} stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]} }}')


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad", POOL)
def test_max_pooling_matches_the_layer(kernel, stride, pad, dtype):
    rng = np.random.default_rng(1)
    x = rng.integers(-2, 3, (2, 3, 7, 8)).astype(dtype)  # ties
    layer, bottom, top = make_layer(_pool_text("MAX", kernel, stride, pad), [x], num_tops=2, dtype=dtype)
    got, mask = kernels.max_pool_forward(x, kernel, stride, pad)
    np.testing.assert_array_equal(got, top[0].data)
    np.testing.assert_array_equal(mask, top[1].data)
    top[0].diff[...] = rng.standard_normal(top[0].shape)
    layer.backward(top, [True], bottom)
    np.testing.assert_array_equal(kernels.max_pool_backward(top[0].diff, mask, x.shape, kernel, stride, pad),
                                  bottom[0].diff)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, pad", POOL)
def test_ave_pooling_matches_the_layer(kernel, stride, pad, dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    layer, bottom, top = make_layer(_pool_text("AVE", kernel, stride, pad), [x], dtype=dtype)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    got = kernels.ave_pool_forward(x, kernel, stride, pad)
    np.testing.assert_allclose(got, top[0].data, rtol=rtol, atol=rtol * np.abs(x).max())
    top[0].diff[...] = rng.standard_normal(top[0].shape)
    layer.backward(top, [True], bottom)
    # the same divisions, summed in the layer's order
    np.testing.assert_array_equal(kernels.ave_pool_backward(top[0].diff, x.shape, kernel, stride, pad),
                                  bottom[0].diff)


def test_pooling_floor_rounding_and_errors():
    x = np.random.default_rng(0).standard_normal((1, 1, 7, 7))
    layer, _, top = make_layer('type: "Pooling" pooling_param { pool: MAX kernel_size: 2 stride: 2 '
                               'round_mode: FLOOR }', [x])
    got, mask = kernels.max_pool_forward(x, (2, 2), (2, 2), (0, 0), ceil=False)
    np.testing.assert_array_equal(got, top[0].data)
    assert kernels.max_pool_backward(np.ones_like(got), mask, x.shape, (2, 2), (2, 2), (0, 0))[0, 0, 6].sum() == 0
    with pytest.raises(Error, match="window without bottom cells"):
        kernels.max_pool_forward(x, (2, 2), (4, 4), (0, 0))
    with pytest.raises(Error, match="0 <= pad < kernel"):
        kernels.ave_pool_forward(x, (2, 2), (1, 1), (2, 2))
    with pytest.raises(Error, match="top_diff has shape"):
        kernels.ave_pool_backward(np.zeros((1, 1, 2, 2)), x.shape, (2, 2), (2, 2), (0, 0))


# -- LRN --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size, alpha, beta, k", [(5, 1e-4, 0.75, 1.0), (3, 2.0, 0.5, 2.0), (1, 0.5, 1.5, 1.0)])
def test_lrn_matches_the_layer(size, alpha, beta, k, dtype):
    rng = np.random.default_rng(size)
    x = (rng.standard_normal((2, 7, 3, 4)) * 3).astype(dtype)
    text = f'type: "LRN" lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} }}'
    layer, bottom, top = make_layer(text, [x], dtype=dtype)
    forward_tol, backward_tol = (1e-6, 1e-5) if dtype == np.float32 else (1e-13, 1e-12)
    alpha, beta, k = layer.alpha, layer.beta, layer.k  # the proto's float32 values
    got, scale = kernels.lrn_forward(x, size, alpha, beta, k)
    np.testing.assert_allclose(scale, layer._scale.data, rtol=forward_tol)
    np.testing.assert_allclose(got, top[0].data, rtol=forward_tol)
    top[0].diff[...] = rng.standard_normal(top[0].shape)
    layer.backward(top, [True], bottom)
    got = kernels.lrn_backward(x, got, scale, top[0].diff, size, alpha, beta)
    np.testing.assert_allclose(got, bottom[0].diff, rtol=backward_tol,
                               atol=backward_tol * np.abs(bottom[0].diff).max())


# -- finite differences of the backward kernels (float64) ------------------------------------------------
def _check_gradient(forward, backward, x, seed=0, eps=1e-6):
    """backward(w) against central differences of Σ w·forward(x) for random w."""
    w = np.random.default_rng(seed).standard_normal(forward(x).shape)
    analytic = backward(w)
    numeric = np.empty(x.size)
    flat = x.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + eps
        plus = (forward(x) * w).sum()
        flat[i] = keep - eps
        minus = (forward(x) * w).sum()
        flat[i] = keep
        numeric[i] = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(analytic.reshape(-1), numeric, rtol=1e-6, atol=1e-7 * np.abs(numeric).max())


def _distinct(rng, shape):
    """Values at least 0.01 apart, so that no finite-difference step changes a maximum."""
    return rng.permutation(np.prod(shape)).reshape(shape) * 0.01 + rng.uniform(0, 1e-3)


def test_roi_pooling_gradient():
    rng = np.random.default_rng(0)
    x = _distinct(rng, (2, 2, 6, 7))
    rois = np.concatenate([random_rois(rng, 8, 2, 6, 7, 1.0), [[1, 0, 0, 6, 5]]]).astype(np.float64)
    _, argmax = kernels.roi_pool_forward(x, rois, 2, 3, 1.0, True)
    _check_gradient(lambda v: kernels.roi_pool_forward(v, rois, 2, 3, 1.0, False)[0],
                    lambda w: kernels.roi_pool_backward(w, argmax, rois, x.shape, 2, 3, 1.0), x)


@pytest.mark.parametrize("kernel, stride, pad", [((3, 3), (2, 2), (1, 1)), ((2, 3), (1, 2), (1, 0))])
def test_pooling_gradients(kernel, stride, pad):
    x = _distinct(np.random.default_rng(1), (1, 2, 5, 6))
    _, mask = kernels.max_pool_forward(x, kernel, stride, pad)
    _check_gradient(lambda v: kernels.max_pool_forward(v, kernel, stride, pad)[0],
                    lambda w: kernels.max_pool_backward(w, mask, x.shape, kernel, stride, pad), x)
    _check_gradient(lambda v: kernels.ave_pool_forward(v, kernel, stride, pad),
                    lambda w: kernels.ave_pool_backward(w, x.shape, kernel, stride, pad), x)


def test_lrn_gradient():
    x = np.random.default_rng(2).standard_normal((1, 6, 2, 3))
    top, scale = kernels.lrn_forward(x, 5, 0.8, 0.75, 1.5)
    _check_gradient(lambda v: kernels.lrn_forward(v, 5, 0.8, 0.75, 1.5)[0],
                    lambda w: kernels.lrn_backward(x, top, scale, w, 5, 0.8, 0.75), x)
