"""Convolution, as Caffe's ConvolutionLayer (base_conv_layer.cpp, conv_layer.cpp), on (N, C, H, W) bottoms.

Output size ``(in + 2·pad − (dilation·(kernel − 1) + 1)) // stride + 1``. Every image and group is one matrix
product of the weights (num_output/group, C/group·kh·kw) with the image's columns (C/group·kh·kw, OH·OW);
1×1 stride-1 unpadded convolutions multiply the image itself. im2col copies, for each kernel offset, the
strided slice of the bottom that the offset samples straight into the columns (zeros where it falls in the
padding, so no padded copy of the image is made). The columns live in one work buffer shared by the
layers of a thread, filled a band of output rows at a time; the bands of all images are shared among the
CPU's threads (``fastrcnn.parallel``), a band per thread at least, and each thread's columns stay within its
share of ``COLUMN_BUDGET`` elements (a band keeps at least ``MIN_BAND_COLUMNS`` columns per thread: BLAS is
slow on narrow products). Backward
rebuilds the columns (as Caffe does) for the weight gradient and scatters the column gradient back with one
strided slice per kernel offset (col2im).

On the CPU, 3×3 stride-1 convolutions with many channels use Winograd's minimal filtering F(2×2, 3×3) (Lavin
and Gray, "Fast algorithms for convolutional neural networks", 2016) instead, forward, for the bottom gradient
(a convolution of the top gradient with the flipped, transposed kernel) and for the weight gradient (the
transformed top gradient times the transformed input tiles, summed over tiles): each 4×4 input tile and 3×3
kernel is transformed (Bᵀ d B, G g Gᵀ), the 16 transformed positions are 16 matrix products of (num_output,
C) by (C, tiles), and Aᵀ m A gives each 2×2 output tile: 2.25× fewer multiply-adds than im2col, at the cost of
element-wise transforms that only pay from ``WINOGRAD_MIN_CHANNELS`` channels on; its bands of tile rows are
shared among the threads as well. ``engine: CAFFE`` keeps
im2col (Caffe's own arithmetic) for a layer.
"""
import itertools
import math
import threading

import numpy

from ..parallel import in_parallel, threads
from . import register
from .activation import canonical_axis
from .base import Layer

#: Elements of the shared column buffer a convolution aims to stay within (256 MiB of float32), and the
#: fewest output columns a band has whatever the budget.
COLUMN_BUDGET = 1 << 26
MIN_BAND_COLUMNS = 1 << 18
#: Winograd applies where both the input and the output channels per group reach this (measured on two Zen
#: cores against im2col, forward: 1.4× faster at 128 channels on 300×400, 1.1-1.15× at 64 (VGG16's conv1_2 and
#: conv2_1), even at 64 on small maps, 0.7× at 32 where the element-wise transforms outweigh the products), and
#: ``WINOGRAD_BAND_TILES`` is the 2×2 output tiles transformed together (a band of tile rows; smaller bands
#: stay in cache, larger ones make wider products).
WINOGRAD_MIN_CHANNELS = 64
WINOGRAD_BAND_TILES = 512
_workspace = threading.local()


def spatial_pair(layer, param, field, short, default):
    """A (h, w) size from Caffe's forms: ``{short}_h``/``{short}_w``, else ``field`` given once or per axis.

    ``field`` may be repeated (ConvolutionParameter) or optional (PoolingParameter); ``default`` applies when
    nothing is given (None: the size is required). A lone ``pad_h`` or ``pad_w`` leaves the other at 0.
    """
    value = getattr(param, field)
    try:
        values = [int(v) for v in value]
    except TypeError:
        values = [int(value)] if param.HasField(field) else []
    if short is not None:
        hf, wf = f"{short}_h", f"{short}_w"
        has_h, has_w = param.HasField(hf), param.HasField(wf)
        if has_h or has_w:
            if values:
                raise layer.error(f"give either {field} or {hf}/{wf}, not both ({field}: {values})")
            if short != "pad" and not (has_h and has_w):
                raise layer.error(f"{hf} and {wf} must be given together")
            return int(getattr(param, hf)), int(getattr(param, wf))
    if not values:
        if default is None:
            raise layer.error(f"{field} (or {short}_h and {short}_w) is required")
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise layer.error(f"{field} takes one value or one per spatial axis (2), got {len(values)}: {values}")


def check_4d(layer, blob):
    """The bottom must be (N, C, H, W)."""
    if len(blob.shape) != 4:
        raise layer.error(f"takes a 4-D bottom (N, C, H, W), got shape {blob.shape}")
    return blob.shape


def work_buffer(xp, dtype, count):
    """A work array of ``count`` elements shared by the layers of this thread (grown, never shrunk): the
    convolutions' columns and the poolings' row pass, whose contents live only within one layer's pass."""
    buffers = _workspace.__dict__.setdefault("buffers", {})
    key = (xp.__name__, dtype.str)
    buf = buffers.get(key)
    if buf is None or buf.size < count:
        buffers[key] = None  # release the smaller buffer before allocating its successor
        buffers[key] = buf = xp.empty(count, dtype=dtype)
    return buf[:count]


def along(axis, start, stop):
    """The index selecting [start, stop) along ``axis`` (None: that end)."""
    return (slice(None),) * axis + (slice(start, stop),)


def offset_ranges(size, kernel, stride, pad, out, dilation=1):
    """Per kernel offset along one axis: (output slice, bottom slice) of the outputs whose window cell at that
    offset lies inside [0, size), or None where no output's does."""
    ranges = []
    for i in range(kernel):
        shift = i * dilation - pad
        lo = max(0, -(shift // stride))
        hi = min(out - 1, (size - 1 - shift) // stride)
        ranges.append((slice(lo, hi + 1), slice(lo * stride + shift, hi * stride + shift + 1, stride))
                      if lo <= hi else None)
    return ranges


def _kernel_transforms():
    """G ⊗ G, the (16, 9) matrix that maps a row-major 3×3 kernel g to G g Gᵀ, and the same for the kernel
    rotated by 180° (the bottom gradient's), whose rotation reverses G's columns."""
    g = numpy.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
    return numpy.kron(g, g).astype(numpy.float32), numpy.kron(g[:, ::-1], g[:, ::-1]).astype(numpy.float32)


_KERNEL_TRANSFORMS = _kernel_transforms()


def winograd_kernels(xp, weights, group, flipped=False):
    """G g Gᵀ of every 3×3 kernel of (K, C/group, 3, 3) ``weights`` (G = [[1, 0, 0], [½, ½, ½], [½, −½, ½],
    [0, 0, 1]]) as (16, group, K/group, C/group); ``flipped``: those of the bottom gradient's convolution, the
    kernels rotated by 180° with K and C swapped, as (16, group, C/group, K/group)."""
    k, c = weights.shape[:2]
    transform = xp.asarray(_KERNEL_TRANSFORMS[flipped], dtype=weights.dtype)
    u = xp.matmul(transform, weights.reshape(k * c, 9).T).reshape(16, group, k // group, c)
    return u.swapaxes(2, 3) if flipped else u


def _input_transform(xp, d, out):
    """out[0..3] = Bᵀ (d[0], d[1], d[2], d[3]) with
    Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]."""
    xp.subtract(d[0], d[2], out=out[0])
    xp.add(d[1], d[2], out=out[1])
    xp.subtract(d[2], d[1], out=out[2])
    xp.subtract(d[1], d[3], out=out[3])


def _output_transform(xp, m, out0, out1):
    """(out0, out1) = Aᵀ (m[0], m[1], m[2], m[3]) with Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]], each m[i] cut to
    the output's last-axis length (an odd output width leaves the last tile's second column out)."""
    m0 = [mi[..., :out0.shape[-1]] for mi in m[:3]]
    m1 = [mi[..., :out1.shape[-1]] for mi in m[1:]]
    xp.add(m0[0], m0[1], out=out0)
    out0 += m0[2]
    xp.subtract(m1[0], m1[1], out=out1)
    out1 -= m1[2]


def _gradient_transform(xp, d0, d1, out):
    """out[0..3] = A (d0, d1) with A = [[1, 0], [1, 1], [1, −1], [0, −1]]: the output transform's adjoint."""
    out[0] = d0
    xp.add(d0, d1, out=out[1])
    xp.subtract(d0, d1, out=out[2])
    xp.negative(d1, out=out[3])


def winograd_bands(out_size, parts=1):
    """(first tile row, tile rows) of the bands of 2×2 tiles covering an (OH, OW) output: at most
    ``WINOGRAD_BAND_TILES`` tiles each (one tile row at least), and ``parts`` bands or more where the tile
    rows allow (one per thread)."""
    th, tw = -(-out_size[0] // 2), -(-out_size[1] // 2)
    rows = max(1, min(WINOGRAD_BAND_TILES // tw, -(-th // parts)))
    return [(t0, min(rows, th - t0)) for t0 in range(0, th, rows)]


def _winograd_pieces(xp, images, out_size):
    """(image, band) pieces of winograd_bands for every image of an (OH, OW) output, a band per thread at least."""
    bands = winograd_bands(out_size, threads(xp))
    return [(n, band) for n in range(images) for band in bands]


def _winograd_input(xp, x, pad, out_size, band, scratch_shapes):
    """(v, scratch) for one band of winograd_bands: v (4, 4, C, rows, TW) holds Bᵀ d B of the band's 4×4
    input tiles of ``x`` (C, H, W) zero-padded by ``pad``, and the scratch arrays have the shapes
    ``scratch_shapes(rows, TW)``, all in this thread's work buffer. The band's padded input is stored with its
    even and odd columns apart, (C, rows, 2, TW + 1), so that the column pass reads contiguous slices."""
    c, h, w = x.shape
    ph, pw = pad
    t0, r = band
    tw = -(-out_size[1] // 2)
    right = min(2 * tw + 2, w + pw)  # the padded column after the last input column
    shapes = [(c, 2 * r + 2, 2, tw + 1), (4, c, r, 2, tw + 1), (4, 4, c, r, tw)] + scratch_shapes(r, tw)
    sizes = [math.prod(shape) for shape in shapes]
    buf = work_buffer(xp, x.dtype, sum(sizes))
    padded, rows, v, *scratch = (buf[start:start + size].reshape(shape) for start, size, shape in
                                 zip(itertools.accumulate([0] + sizes), sizes, shapes))
    top = 2 * t0 - ph  # the input row of the band's first padded row
    lo, hi = max(0, -top), min(2 * r + 2, h - top)
    padded[:, :lo] = 0
    padded[:, max(lo, hi):] = 0
    for b in range(2) if lo < hi else ():
        # the padded columns 2t + b holding input, t in [start, stop), from input column 2t + b − pw
        start, stop = (pw - b + 1) // 2, (right - b + 1) // 2
        part = padded[:, lo:hi, b]
        part[..., :start] = 0
        part[..., stop:] = 0
        part[..., start:stop] = x[:, top + lo:top + hi, 2 * start + b - pw::2][..., :stop - start]
    _input_transform(xp, [padded[:, i:i + 2 * r:2] for i in range(4)], rows)
    for a in range(4):
        q = rows[a]
        _input_transform(xp, [q[:, :, 0, :tw], q[:, :, 1, :tw], q[:, :, 0, 1:], q[:, :, 1, 1:]], v[a])
    return v, scratch


def winograd_conv(xp, x, u, pad, out, bias=None):
    """``out`` (N, K, OH, OW) = the stride-1 3×3 cross-correlation of ``x`` (N, C, H, W) zero-padded by
    ``pad`` = (ph, pw) with the kernels ``u`` of winograd_kernels, plus ``bias`` (K,) if given; the bands of
    tile rows of every image run in parallel."""
    c = x.shape[1]
    k, oh, ow = out.shape[1:]
    group = u.shape[1]

    def scratch(r, tw):
        return [(4, 4, k, r, tw), (2, 4, k, r, tw), (2, k, r, tw)]

    def run(share):
        for n, (t0, r) in share:
            v, (m, s, e) = _winograd_input(xp, x[n], pad, (oh, ow), (t0, r), scratch)
            xp.matmul(u, v.reshape(16, group, c // group, -1), out=m.reshape(16, group, k // group, -1))
            _output_transform(xp, m, s[0], s[1])
            for a in range(2):
                # the output rows 2·t + a of the band, their even and odd columns computed apart, then interleaved
                count = min(r, (oh - a - 2 * t0 + 1) // 2)  # tile rows whose output row a lies inside
                rows_a = out[n, :, 2 * t0 + a::2][:, :count]
                _output_transform(xp, s[a], e[0], e[1])
                rows_a[..., 0::2] = e[0][:, :count]
                rows_a[..., 1::2] = e[1][:, :count, :ow // 2]
            if bias is not None:
                out[n, :, 2 * t0:2 * (t0 + r)] += bias[:, None, None]
    in_parallel(xp, run, _winograd_pieces(xp, x.shape[0], (oh, ow)))


def winograd_weight_gradient(xp, x, dy, pad, group):
    """The gradient of winograd_conv(x, u, pad) with respect to u, for the top gradient ``dy`` (N, K, OH, OW),
    as (16, group, C/group, K/group): per transformed position, the sum over tiles of (A dy Aᵀ) times (Bᵀ d B),
    16 products (C, tiles)·(tiles, K). (G ⊗ G)ᵀ maps it to the 3×3 kernels' gradient."""
    c = x.shape[1]
    k, oh, ow = dy.shape[1:]

    def scratch(r, tw):
        return [(k, 2 * r, 2 * tw), (4, k, r, 2 * tw), (4, 4, k, r, tw)]

    def run(share):
        total = None
        for n, (t0, r) in share:
            v, (tiles, rows, z) = _winograd_input(xp, x[n], pad, (oh, ow), (t0, r), scratch)
            tw = v.shape[4]
            block = dy[n, :, 2 * t0:2 * (t0 + r)]  # the band's top gradient, zero-padded to whole 2×2 tiles
            tiles[:, :block.shape[1], :ow] = block
            tiles[:, block.shape[1]:] = 0
            tiles[:, :, ow:] = 0
            _gradient_transform(xp, tiles[:, 0::2], tiles[:, 1::2], rows)
            for a in range(4):
                _gradient_transform(xp, rows[a][..., 0::2], rows[a][..., 1::2], z[a])
            product = xp.matmul(v.reshape(16, group, c // group, r * tw),
                                z.reshape(16, group, k // group, r * tw).swapaxes(2, 3))
            if total is None:
                total = product
            else:
                total += product
        return total
    return sum(in_parallel(xp, run, _winograd_pieces(xp, x.shape[0], (oh, ow))))


@register("Convolution")
class Convolution(Layer):
    """2-D convolution with groups, dilation, stride, padding and an optional bias.

    Weights (num_output, C/group, kh, kw), bias (num_output,); both fillers default to constant 0 (Caffe).
    """
    exact_bottoms = exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.convolution_param
        c = check_4d(self, bottom[0])[1]
        if canonical_axis(self, p.axis, 4) != 1:
            raise self.error(f"axis must be 1 (the channels of N, C, H, W), got {p.axis}")
        self.num_output = self.positive("num_output", p.num_output)
        self.group = self.positive("group", p.group)
        self.kernel = spatial_pair(self, p, "kernel_size", "kernel", None)
        self.stride = spatial_pair(self, p, "stride", "stride", 1)
        self.pad = spatial_pair(self, p, "pad", "pad", 0)
        self.dilation = spatial_pair(self, p, "dilation", None, 1)
        for field, pair in (("kernel", self.kernel), ("stride", self.stride), ("dilation", self.dilation)):
            self.positive(f"{field}_h", pair[0])
            self.positive(f"{field}_w", pair[1])
        if c % self.group:
            raise self.error(f"group {self.group} does not divide the {c} input channels")
        if self.num_output % self.group:
            raise self.error(f"group {self.group} does not divide num_output {self.num_output}")
        self.channels = c
        self.bias_term = p.bias_term
        self.direct = self.kernel == (1, 1) and self.stride == (1, 1) and self.pad == (0, 0)
        self.winograd = (p.engine != p.CAFFE and self.kernel == (3, 3) and self.stride == (1, 1)
                         and self.dilation == (1, 1) and max(self.pad) <= 2
                         and min(c, self.num_output) // self.group >= WINOGRAD_MIN_CHANNELS)
        dtype = bottom[0].dtype
        if not self.blobs:
            shapes = [("weight_filler", (self.num_output, c // self.group) + self.kernel)]
            if self.bias_term:
                shapes.append(("bias_filler", (self.num_output,)))
            self.blobs = [self.filled_blob(getattr(p, field), shape, dtype, field) for field, shape in shapes]
        self._geometry = None

    def reshape(self, bottom, top):
        n, c, h, w = check_4d(self, bottom[0])
        if c == 0:
            raise self.error(f"bottom has no channels (shape {bottom[0].shape})")
        if c != self.channels:
            raise self.error(f"bottom has {c} channels, but the layer was set up for {self.channels} "
                             f"(weights {self.blobs[0].shape}, group {self.group})")
        out = []
        for size, k, s, p, d, axis in zip((h, w), self.kernel, self.stride, self.pad, self.dilation, "hw"):
            extent = d * (k - 1) + 1
            o = (size + 2 * p - extent) // s + 1
            if o <= 0:
                raise self.error(f"the bottom's {axis} = {size} with pad_{axis} {p} is smaller than the "
                                 f"(dilated) kernel_{axis} extent {extent}")
            out.append(o)
        self.out = tuple(out)
        top[0].reshape(n, self.num_output, *self.out)
        workers = threads(self.xp(bottom[0]))
        if self._geometry != (c, h, w, workers):
            self._geometry = (c, h, w, workers)
            # a band per thread at least; each thread's columns within its share of the budget
            per_row = c * self.kernel[0] * self.kernel[1] * self.out[1]
            rows = max(COLUMN_BUDGET // (workers * per_row), -(-MIN_BAND_COLUMNS // (workers * self.out[1])), 1)
            count = max(1 if self.direct else -(-self.out[0] // rows), min(workers, self.out[0]))
            rows = -(-self.out[0] // count)  # bands of equal height: no narrow last product
            self._bands = [(r, min(r + rows, self.out[0])) for r in range(0, self.out[0], rows)]
            self._col_ranges = offset_ranges(w, self.kernel[1], self.stride[1], self.pad[1], self.out[1],
                                             self.dilation[1])

    # -- im2col / col2im ------------------------------------------------------------------------------
    def _offsets(self, band, height):
        """(i, j, band rows, cols, bottom rows, bottom cols) of every kernel offset for output rows ``band`` =
        (start, stop); the slices are None where the offset samples only padding."""
        start, stop = band
        rows = offset_ranges(height, self.kernel[0], self.stride[0], self.pad[0] - start * self.stride[0],
                             stop - start, self.dilation[0])
        return [(i, j) + (row[0], col[0], row[1], col[1]) if row and col else (i, j, None, None, None, None)
                for i, row in enumerate(rows) for j, col in enumerate(self._col_ranges)]

    def _band_buffer(self, xp, dtype, band):
        """The shared column buffer as (C, kh, kw, band rows, OW)."""
        shape = (self.channels,) + self.kernel + (band[1] - band[0], self.out[1])
        return work_buffer(xp, dtype, math.prod(shape)).reshape(shape)

    def _columns(self, xp, image, band):
        """The (group, C/group·kh·kw, rows·OW) columns of output rows ``band`` of one (C, H, W) image."""
        if self.direct:
            return self._band_view(image, band)
        col = self._band_buffer(xp, image.dtype, band)
        for i, j, ro, co, ri, ci in self._offsets(band, image.shape[1]):
            dst = col[:, i, j]
            if ro is None:
                dst[...] = 0
                continue
            dst[:, :ro.start] = 0
            dst[:, ro.stop:] = 0
            dst[:, ro, :co.start] = 0
            dst[:, ro, co.stop:] = 0
            dst[:, ro, co] = image[:, ri, ci]
        return col.reshape(self.group, -1, col.shape[3] * col.shape[4])

    def _col2im(self, col, image_diff, band):
        """Scatter-add the column gradients (C, kh, kw, band rows, OW) into one image's gradient."""
        for i, j, ro, co, ri, ci in self._offsets(band, image_diff.shape[1]):
            if ro is not None:
                image_diff[:, ri, ci] += col[:, i, j, ro, co]

    # -- passes ---------------------------------------------------------------------------------------
    def _weights(self):
        return self.blobs[0].data.reshape(self.group, self.num_output // self.group, -1)

    def _band_view(self, array, band):
        """The (group, num_output/group, band rows·OW) part of one image's top that output rows ``band`` fill."""
        flat = array.reshape(self.group, array.shape[0] // self.group, -1)
        return flat[:, :, band[0] * self.out[1]:band[1] * self.out[1]]

    def _winograd(self, xp):
        """Whether this pass runs Winograd F(2×2, 3×3): on the CPU, where the layer qualifies."""
        return self.winograd and xp is numpy

    def forward(self, bottom, top):
        if (gpu := self.gpu_variant(bottom[0])):
            return gpu.forward(bottom, top)
        xp = self.xp(bottom[0])
        x, y = bottom[0].data, top[0].data
        bias = self.blobs[1].data if self.bias_term else None
        if self._winograd(xp):
            winograd_conv(xp, x, winograd_kernels(xp, self.blobs[0].data, self.group), self.pad, y, bias)
            return
        weights = self._weights()

        def run(share):
            for n, band in share:
                out = self._band_view(y[n], band)
                xp.matmul(weights, self._columns(xp, x[n], band), out=out)
                if bias is not None:
                    out += bias.reshape(self.group, -1, 1)
        in_parallel(xp, run, [(n, band) for n in range(x.shape[0]) for band in self._bands])

    def backward(self, top, propagate_down, bottom):
        if (gpu := self.gpu_variant(bottom[0])):
            return gpu.backward(top, propagate_down, bottom)
        xp = self.xp(bottom[0])
        x, dy = bottom[0].data, top[0].diff
        need_weight = self.param_propagate_down[0]
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=(0, 2, 3))
        if not (need_weight or propagate_down[0]):
            return
        weights = self._weights()
        weight_diff = self.blobs[0].diff.reshape(weights.shape)
        dx = bottom[0].diff if propagate_down[0] else None
        if need_weight and self._winograd(xp):
            # u = (G ⊗ G) g for each kernel, so g's gradient is (G ⊗ G)ᵀ times u's
            du = winograd_weight_gradient(xp, x, dy, self.pad, self.group)
            transform = xp.asarray(_KERNEL_TRANSFORMS[False], dtype=du.dtype)
            du = du.swapaxes(2, 3).reshape(16, -1)
            self.blobs[0].diff += xp.matmul(du.T, transform).reshape(self.blobs[0].diff.shape)
            need_weight = False
        if dx is not None and self._winograd(xp):
            # the bottom gradient is the full correlation of dy with the flipped kernels: pad 2 − pad
            u = winograd_kernels(xp, self.blobs[0].data, self.group, flipped=True)
            winograd_conv(xp, dy, u, (2 - self.pad[0], 2 - self.pad[1]), dx)
            dx = None
        if not (need_weight or dx is not None):
            return
        if dx is not None and not self.direct:
            dx[...] = 0

        def run(share):
            total = None  # this share's weight gradient, as (group, C/group·kh·kw, num_output/group)
            for n, bands in share:
                for band in bands:
                    dy_band = self._band_view(dy[n], band)
                    if need_weight:
                        # columns · dyᵀ: BLAS is several times slower on dy · columnsᵀ, whose long axis is
                        # the reduction of a transposed operand
                        product = xp.matmul(self._columns(xp, x[n], band), dy_band.transpose(0, 2, 1))
                        if total is None:
                            total = product
                        else:
                            total += product
                    if dx is None:
                        continue
                    if self.direct:
                        xp.matmul(weights.transpose(0, 2, 1), dy_band, out=self._band_view(dx[n], band))
                        continue
                    col = self._band_buffer(xp, x.dtype, band)
                    xp.matmul(weights.transpose(0, 2, 1), dy_band,
                              out=col.reshape(self.group, -1, dy_band.shape[2]))
                    self._col2im(col, dx[n], band)
            return total
        # the col2im of neighbouring bands overlap: then an image's bands stay in one share
        whole = dx is not None and not self.direct
        pieces = ([(n, self._bands) for n in range(x.shape[0])] if whole else
                  [(n, [band]) for n in range(x.shape[0]) for band in self._bands])
        for total in in_parallel(xp, run, pieces):
            if total is not None:
                weight_diff += total.transpose(0, 2, 1)
