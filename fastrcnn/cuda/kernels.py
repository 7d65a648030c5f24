"""Launchers of the package's CUDA kernels (the ``*.cu`` files beside this one), on NumPy or CuPy arrays.

A CuPy array runs the kernel on its GPU through ``cupy.RawModule`` (NVRTC, each file compiled once per
process and device, CuPy imported only then); a NumPy array runs the same source compiled by g++ with
``host_shim.h`` (``fastrcnn.cuda.host``), every block and thread in turn. Every function takes float32 or
float64 arrays (N, C, H, W unless said) and returns arrays of the same kind and dtype:

- ``roi_pool_forward(bottom, rois, pooled_h, pooled_w, spatial_scale, with_argmax)`` → ``(top, argmax)``:
  RoI max pooling of (R, 5) ``[batch, x1, y1, x2, y2]`` rois, top (R, C, pooled_h, pooled_w); ``argmax``
  int32 (h·W + w, −1 for empty bins) of the same shape, or None without ``with_argmax`` (the TEST phase).
- ``roi_pool_backward(top_diff, argmax, rois, bottom_shape, pooled_h, pooled_w, spatial_scale)`` →
  ``bottom_diff``: deterministic, each bottom element sums its image's RoIs' diffs in RoI order.
- ``nms(dets, thresh)`` → the kept indices (a NumPy int64 array, best first) of (N, 5)
  ``[x1, y1, x2, y2, score]`` dets, exactly those of ``fastrcnn.rcnn.boxes.nms``.
- ``im2col(image, kernel, pad, stride, dilation)`` → col (C·kh·kw, out_h·out_w) of a (C, H, W) image;
  ``col2im(col, image_shape, kernel, pad, stride, dilation)`` → the image gradient, summed over the kernel
  offsets in row-major order (the convolution layer's col2im over one band of rows; where the layer splits
  the rows into bands, the pixels on band edges add in another order). The sizes are (h, w) pairs.
- ``max_pool_forward(x, kernel, stride, pad, ceil=True)`` → ``(top, mask)``, mask int32 h·W + w;
  ``max_pool_backward(top_diff, mask, bottom_shape, kernel, stride, pad)`` → ``bottom_diff``.
- ``ave_pool_forward(x, kernel, stride, pad, ceil=True)`` → top;
  ``ave_pool_backward(top_diff, bottom_shape, kernel, stride, pad)`` → ``bottom_diff``.
- ``lrn_forward(x, size, alpha, beta, k)`` → ``(top, scale)`` (ACROSS_CHANNELS);
  ``lrn_backward(x, top, scale, top_diff, size, alpha, beta)`` → ``bottom_diff``.

Pooling sizes follow ``fastrcnn.layers.pooling.pooled_size``. The kernels compute as the NumPy layers, in
the same float32 (or float64) operations, compiled without FMA contraction (``--fmad=false``, g++
``-ffp-contract=off``): equal results except AVE pooling's forward sums (another order) and LRN's ``pow``
(another implementation), within a few ulps. CuPy appends ``-ftz=true`` to the options, so on the GPU float32
subnormal values flush to zero.
"""
from pathlib import Path

import numpy

from ..errors import Error
from ..layers.pooling import pooled_size

FOLDER = Path(__file__).resolve().parent
#: Each source file's kernels; those of nms.cu are float32 only (extern "C"), the others templates on T.
KERNELS = {
    "roi_pooling.cu": ("roi_pool_forward", "roi_pool_backward"),
    "nms.cu": ("nms_mask", "nms_scan"),
    "im2col.cu": ("im2col", "col2im"),
    "pooling.cu": ("max_pool_forward", "max_pool_backward", "ave_pool_forward", "ave_pool_backward"),
    "lrn.cu": ("lrn_forward", "lrn_backward"),
}
UNTYPED = ("nms_mask", "nms_scan")
TYPES = {numpy.dtype(numpy.float32): "float", numpy.dtype(numpy.float64): "double"}
OPTIONS = ("--std=c++17", "--fmad=false", f"-I{FOLDER}")
BLOCK = 256
_FILES = {name: file for file, names in KERNELS.items() for name in names}
_modules = {}


def expression(name, dtype):
    """The C++ name of kernel ``name`` for ``dtype`` (``roi_pool_forward<float>``; untyped kernels: the name)."""
    return name if name in UNTYPED else f"{name}<{TYPES[numpy.dtype(dtype)]}>"


def expressions(file):
    """Every kernel instantiation of a source file."""
    return [expression(name, dtype) for name in KERNELS[file]
            for dtype in ((None,) if name in UNTYPED else TYPES)]


def source(file):
    return (FOLDER / file).read_text(encoding="utf-8")


def _module(cupy, file, device):
    """``file`` compiled for ``device`` (once per process)."""
    key = (file, device.id)
    if key not in _modules:
        _modules[key] = cupy.RawModule(code=source(file), options=OPTIONS, name_expressions=expressions(file))
    return _modules[key]


def _launch(name, dtype, grid, block, args):
    """Run kernel ``name`` (its ``dtype`` instantiation) on the arrays' device."""
    arrays = [a for a in args if _is_cupy(a)]
    if arrays:
        import cupy  # noqa: PLC0415  (only a CuPy array gets here)
        device = arrays[0].device
        with device:
            _module(cupy, _FILES[name], device).get_function(expression(name, dtype))(grid, block, args)
    else:
        from . import host  # noqa: PLC0415
        host.launch(_FILES[name], name, dtype, grid, block, args)


def _run(name, dtype, count, *args):
    """A grid-stride launch over ``count`` elements (nothing for 0)."""
    if count:
        _launch(name, dtype, (min(-(-count // BLOCK), 1 << 16),), (BLOCK,), args)


def _is_cupy(a):
    return type(a).__module__.split(".")[0] == "cupy"


def _xp(a, what):
    if isinstance(a, numpy.ndarray):
        return numpy
    if _is_cupy(a):
        import cupy  # noqa: PLC0415
        return cupy
    raise Error(f"{what} must be a NumPy or CuPy array, got {type(a).__name__}")


def _floats(x, what, ndim=None):
    """``x`` as a C-contiguous float32/float64 array of its module, checked."""
    xp = _xp(x, what)
    if x.dtype not in TYPES:
        raise Error(f"{what} must be float32 or float64, got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise Error(f"{what} must be {ndim}-D, got shape {tuple(x.shape)}")
    return xp, xp.ascontiguousarray(x)


def _like(xp, x, what, shape, dtype):
    """``x`` as a C-contiguous array of ``xp`` with ``shape`` and ``dtype``, checked."""
    if _xp(x, what) is not xp:
        raise Error(f"{what} must live on the same device as the other arrays")
    if tuple(x.shape) != tuple(shape):
        raise Error(f"{what} must have shape {tuple(shape)}, got {tuple(x.shape)}")
    return xp.ascontiguousarray(x, dtype=dtype)


def _host(xp, a):
    return a if xp is numpy else a.get()


def _i32(*values):
    return [numpy.int32(v) for v in values]


def _shape(value, ndim, what):
    """A shape of ``ndim`` ints."""
    shape = tuple(int(v) for v in value)
    if len(shape) != ndim:
        raise Error(f"{what} must have {ndim} sizes, got {value}")
    return shape


def _pair(value, what):
    """An (h, w) pair of ints."""
    values = tuple(int(v) for v in value)
    if len(values) != 2:
        raise Error(f"{what} must be an (h, w) pair, got {value}")
    return values


# -- RoI pooling ----------------------------------------------------------------------------------------
def _roi_batches(xp, rois, num, what):
    """(R, 5) rois of ``xp`` and their batch indices (truncated, on the host), checked against ``num`` images."""
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise Error(f"{what}: rois must have shape (R, 5) = [batch_index, x1, y1, x2, y2], got "
                    f"{tuple(rois.shape)}")
    batch = numpy.trunc(_host(xp, rois[:, 0])).astype(numpy.int64)
    bad = numpy.flatnonzero((batch < 0) | (batch >= num))
    if bad.size:
        i = int(bad[0])
        raise Error(f"{what}: RoI {i} has batch index {batch[i]}, outside [0, {num}) (the features hold {num} "
                    f"image(s))")
    return batch


def _roi_geometry(pooled_h, pooled_w, spatial_scale):
    if int(pooled_h) <= 0 or int(pooled_w) <= 0:
        raise Error(f"RoI pooling: pooled_h and pooled_w must be positive, got {pooled_h} and {pooled_w}")
    if not spatial_scale > 0:
        raise Error(f"RoI pooling: spatial_scale must be positive, got {spatial_scale}")
    return _i32(pooled_h, pooled_w) + [numpy.float32(spatial_scale)]


def roi_pool_forward(bottom, rois, pooled_h, pooled_w, spatial_scale, with_argmax):
    """RoI max pooling (as ``fastrcnn.layers.roi_pooling.ROIPooling``): (top, argmax or None)."""
    xp, bottom = _floats(bottom, "roi_pool_forward: bottom", 4)
    rois = xp.ascontiguousarray(rois, dtype=bottom.dtype)
    _roi_batches(xp, rois, bottom.shape[0], "roi_pool_forward")
    ph, pw, scale = _roi_geometry(pooled_h, pooled_w, spatial_scale)
    shape = (rois.shape[0], bottom.shape[1], int(ph), int(pw))
    top = xp.empty(shape, bottom.dtype)
    argmax = xp.empty(shape if with_argmax else 1, numpy.int32)
    _run("roi_pool_forward", bottom.dtype, top.size, bottom, rois, numpy.int64(top.size),
         *_i32(*bottom.shape[1:]), ph, pw, scale, numpy.int32(bool(with_argmax)), top, argmax)
    return top, (argmax if with_argmax else None)


def roi_pool_backward(top_diff, argmax, rois, bottom_shape, pooled_h, pooled_w, spatial_scale):
    """The bottom gradient of RoI pooling: each top diff onto its bin's argmax, summed in RoI order."""
    xp, top_diff = _floats(top_diff, "roi_pool_backward: top_diff", 4)
    num, channels, height, width = _shape(bottom_shape, 4, "roi_pool_backward: bottom_shape")
    rois = xp.ascontiguousarray(rois, dtype=top_diff.dtype)
    batch = _roi_batches(xp, rois, num, "roi_pool_backward")
    ph, pw, scale = _roi_geometry(pooled_h, pooled_w, spatial_scale)
    shape = (rois.shape[0], channels, int(ph), int(pw))
    top_diff = _like(xp, top_diff, "roi_pool_backward: top_diff", shape, top_diff.dtype)
    argmax = _like(xp, argmax, "roi_pool_backward: argmax", shape, numpy.int32)
    order = numpy.argsort(batch, kind="stable")
    offsets = numpy.searchsorted(batch[order], numpy.arange(num + 1))
    bottom_diff = xp.empty((num, channels, height, width), top_diff.dtype)
    _run("roi_pool_backward", top_diff.dtype, bottom_diff.size, top_diff, argmax, rois,
         xp.asarray(order, dtype=numpy.int32), xp.asarray(offsets, dtype=numpy.int32),
         numpy.int64(bottom_diff.size), *_i32(channels, height, width), ph, pw, scale, bottom_diff)
    return bottom_diff


# -- NMS ------------------------------------------------------------------------------------------------
def nms(dets, thresh):
    """Greedy NMS, exactly ``fastrcnn.rcnn.boxes.nms``: the kept indices (NumPy int64), best first."""
    xp = _xp(dets, "nms: dets")
    dets = xp.ascontiguousarray(dets, dtype=numpy.float32)
    if dets.ndim != 2 or dets.shape[1] != 5:
        raise Error(f"nms: dets must have shape (N, 5) = [x1, y1, x2, y2, score], got {tuple(dets.shape)}")
    n = dets.shape[0]
    order = numpy.argsort(-_host(xp, dets[:, 4]), kind="stable")
    if n == 0:
        return order.astype(numpy.int64)
    boxes = xp.ascontiguousarray(dets[xp.asarray(order), :4])
    blocks = -(-n // 64)
    mask = xp.empty((n, blocks), numpy.uint64)
    removed = xp.zeros(blocks, numpy.uint64)
    keep = xp.empty(n, numpy.int32)
    kept = xp.zeros(1, numpy.int32)
    _run("nms_mask", None, mask.size, boxes, numpy.int32(n), numpy.int32(blocks), numpy.float64(thresh), mask)
    _launch("nms_scan", None, (1,), (1,), (mask, numpy.int32(n), numpy.int32(blocks), removed, keep, kept))
    return order[_host(xp, keep[:int(kept[0])])].astype(numpy.int64)


# -- im2col ---------------------------------------------------------------------------------------------
def _conv_geometry(image_shape, kernel, pad, stride, dilation):
    """The int32 arguments height, width, kernel, pad, stride, dilation (h, w each), out_h, out_w."""
    channels, height, width = _shape(image_shape, 3, "im2col: the image shape")
    pairs = [_pair(v, f) for v, f in ((kernel, "kernel"), (pad, "pad"), (stride, "stride"),
                                      (dilation, "dilation"))]
    out = []
    for axis in range(2):
        (k, p, s, d), size = (pair[axis] for pair in pairs), (height, width)[axis]
        if k <= 0 or s <= 0 or d <= 0 or p < 0:
            raise Error(f"im2col: kernel, stride and dilation must be positive and pad not negative, got "
                        f"kernel {pairs[0]}, pad {pairs[1]}, stride {pairs[2]}, dilation {pairs[3]}")
        o = (size + 2 * p - (d * (k - 1) + 1)) // s + 1
        if o <= 0:
            raise Error(f"im2col: the image's {'hw'[axis]} = {size} with pad {p} is smaller than the (dilated) "
                        f"kernel extent {d * (k - 1) + 1}")
        out.append(o)
    (kh, kw), (ph, pw), (sh, sw), (dh, dw) = pairs
    return channels, out, _i32(height, width, kh, kw, ph, pw, sh, sw, dh, dw, *out)


def im2col(image, kernel, pad, stride, dilation):
    """Caffe's im2col of a (C, H, W) image: (C·kh·kw, out_h·out_w) columns."""
    xp, image = _floats(image, "im2col: image", 3)
    channels, out, geometry = _conv_geometry(image.shape, kernel, pad, stride, dilation)
    kh, kw = geometry[2:4]
    col = xp.empty((channels * int(kh) * int(kw), out[0] * out[1]), image.dtype)
    _run("im2col", image.dtype, col.size, image, numpy.int64(col.size), *geometry, col)
    return col


def col2im(col, image_shape, kernel, pad, stride, dilation):
    """Caffe's col2im: the (C, H, W) sum of the columns' entries onto the pixels they sample."""
    xp, col = _floats(col, "col2im: col", 2)
    channels, out, geometry = _conv_geometry(image_shape, kernel, pad, stride, dilation)
    kh, kw = geometry[2:4]
    col = _like(xp, col, "col2im: col", (channels * int(kh) * int(kw), out[0] * out[1]), col.dtype)
    image = xp.empty(_shape(image_shape, 3, "col2im: image_shape"), col.dtype)
    _run("col2im", col.dtype, image.size, col, numpy.int64(image.size), *geometry, image)
    return image


# -- pooling --------------------------------------------------------------------------------------------
def _pool_geometry(shape, kernel, stride, pad, ceil):
    """(pooled_h, pooled_w) and the int32 arguments height, width, pooled, kernel, stride, pad (h, w each)."""
    height, width = (int(v) for v in shape[2:])
    kernel, stride, pad = _pair(kernel, "kernel"), _pair(stride, "stride"), _pair(pad, "pad")
    pooled = []
    for axis in range(2):
        size, k, s, p = (height, width)[axis], kernel[axis], stride[axis], pad[axis]
        if k <= 0 or s <= 0 or not 0 <= p < k:
            raise Error(f"pooling: kernel and stride must be positive and 0 <= pad < kernel, got kernel "
                        f"{kernel}, stride {stride}, pad {pad}")
        o = pooled_size(size, k, s, p, ceil)
        if o <= 0 or (o - 1) * s - p >= size:
            raise Error(f"pooling: along {'hw'[axis]} = {size}, kernel {k}, stride {s} and pad {p} leave a "
                        f"window without bottom cells ({o} outputs)")
        pooled.append(o)
    return pooled, _i32(height, width, *pooled, *kernel, *stride, *pad)


def _pool_forward(name, x, kernel, stride, pad, ceil, *extra):
    xp, x = _floats(x, f"{name}: x", 4)
    pooled, geometry = _pool_geometry(x.shape, kernel, stride, pad, ceil)
    top = xp.empty(x.shape[:2] + tuple(pooled), x.dtype)
    outputs = [top] + [xp.empty(top.shape, dtype) for dtype in extra]
    _run(name, x.dtype, top.size, x, numpy.int64(top.size), *geometry, *outputs)
    return outputs


def _pool_backward(name, top_diff, mask, bottom_shape, kernel, stride, pad):
    xp, top_diff = _floats(top_diff, f"{name}: top_diff", 4)
    bottom_shape = _shape(bottom_shape, 4, f"{name}: bottom_shape")
    for ceil in (True, False):  # the rounding whose pooled size is top_diff's
        try:
            pooled, geometry = _pool_geometry(bottom_shape, kernel, stride, pad, ceil)
        except Error:
            continue
        if bottom_shape[:2] + tuple(pooled) == tuple(top_diff.shape):
            break
    else:
        raise Error(f"{name}: top_diff has shape {tuple(top_diff.shape)}, which no pooling of a {bottom_shape} "
                    f"bottom with kernel {kernel}, stride {stride} and pad {pad} gives")
    masks = [] if mask is None else [_like(xp, mask, f"{name}: mask", top_diff.shape, numpy.int32)]
    bottom_diff = xp.empty(bottom_shape, top_diff.dtype)
    _run(name, top_diff.dtype, bottom_diff.size, top_diff, *masks, numpy.int64(bottom_diff.size), *geometry,
         bottom_diff)
    return bottom_diff


def max_pool_forward(x, kernel, stride, pad, ceil=True):
    """Caffe's MAX pooling: (top, mask), the mask the first maximum of each window as h·W + w (int32)."""
    top, mask = _pool_forward("max_pool_forward", x, kernel, stride, pad, ceil, numpy.int32)
    return top, mask


def max_pool_backward(top_diff, mask, bottom_shape, kernel, stride, pad):
    """Each top diff onto its window's mask position, summed in window order."""
    return _pool_backward("max_pool_backward", top_diff, mask, bottom_shape, kernel, stride, pad)


def ave_pool_forward(x, kernel, stride, pad, ceil=True):
    """Caffe's AVE pooling: window sums over the window's size within the padded bottom."""
    return _pool_forward("ave_pool_forward", x, kernel, stride, pad, ceil)[0]


def ave_pool_backward(top_diff, bottom_shape, kernel, stride, pad):
    """Each top diff over its divisor onto every cell of its window inside the bottom."""
    return _pool_backward("ave_pool_backward", top_diff, None, bottom_shape, kernel, stride, pad)


# -- LRN ------------------------------------------------------------------------------------------------
def _lrn_size(size):
    size = int(size)
    if size <= 0 or size % 2 == 0:
        raise Error(f"LRN: local_size must be odd and positive, got {size}")
    return size


def lrn_forward(x, size, alpha, beta, k):
    """LRN across channels: (top, scale), scale = k + alpha/size · Σ x², top = x · scale^−beta."""
    xp, x = _floats(x, "lrn_forward: x", 4)
    size = _lrn_size(size)
    t = x.dtype.type
    top, scale = xp.empty_like(x), xp.empty_like(x)
    _run("lrn_forward", x.dtype, x.size, x, numpy.int64(x.size), numpy.int32(x.shape[1]),
         numpy.int64(x.shape[2] * x.shape[3]), numpy.int32(size), t(alpha / size), t(k), t(-beta), top, scale)
    return top, scale


def lrn_backward(x, top, scale, top_diff, size, alpha, beta):
    """The bottom gradient of LRN across channels (Caffe's CrossChannelBackward)."""
    xp, x = _floats(x, "lrn_backward: x", 4)
    size = _lrn_size(size)
    top, scale, top_diff = (_like(xp, a, f"lrn_backward: {what}", x.shape, x.dtype)
                            for a, what in ((top, "top"), (scale, "scale"), (top_diff, "top_diff")))
    t = x.dtype.type
    norm = alpha / size
    bottom_diff = xp.empty_like(x)
    _run("lrn_backward", x.dtype, x.size, x, top, scale, top_diff, numpy.int64(x.size), numpy.int32(x.shape[1]),
         numpy.int64(x.shape[2] * x.shape[3]), numpy.int32(size), t(-beta), t(-2 * beta * norm), bottom_diff)
    return bottom_diff
