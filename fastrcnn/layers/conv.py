"""Convolution, as Caffe's ConvolutionLayer (base_conv_layer.cpp, conv_layer.cpp), on (N, C, H, W) bottoms.

Output size ``(in + 2·pad − (dilation·(kernel − 1) + 1)) // stride + 1``. Every image and group is one matrix
product of the weights (num_output/group, C/group·kh·kw) with the image's columns (C/group·kh·kw, OH·OW);
1×1 stride-1 unpadded convolutions multiply the image itself. im2col copies, for each kernel offset, the
strided slice of the bottom that the offset samples straight into the columns (zeros where it falls in the
padding, so no padded copy of the image is made). The columns live in one work buffer shared by the
layers of a thread, filled a band of output rows at a time so that it stays within ``COLUMN_BUDGET``
elements (a band keeps at least ``MIN_BAND_COLUMNS`` columns: BLAS is slow on narrow products). Backward
rebuilds the columns (as Caffe does) for the weight gradient and scatters the column gradient back with one
strided slice per kernel offset (col2im).
"""
import math
import threading

from . import register
from .activation import canonical_axis
from .base import Layer

#: Elements of the shared column buffer a convolution aims to stay within (256 MiB of float32), and the
#: fewest output columns a band has whatever the budget.
COLUMN_BUDGET = 1 << 26
MIN_BAND_COLUMNS = 1 << 18
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
        if self._geometry != (c, h, w):
            self._geometry = (c, h, w)
            per_row = c * self.kernel[0] * self.kernel[1] * self.out[1]
            rows = max(COLUMN_BUDGET // per_row, -(-MIN_BAND_COLUMNS // self.out[1]), 1)
            count = 1 if self.direct else -(-self.out[0] // rows)
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
            return image.reshape(self.group, -1, image.shape[1] * image.shape[2])
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

    def forward(self, bottom, top):
        xp = self.xp(bottom[0])
        x, y = bottom[0].data, top[0].data
        weights = self._weights()
        for n in range(x.shape[0]):
            for band in self._bands:
                xp.matmul(weights, self._columns(xp, x[n], band), out=self._band_view(y[n], band))
        if self.bias_term:
            y += self.blobs[1].data.reshape(1, -1, 1, 1)

    def backward(self, top, propagate_down, bottom):
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
        if dx is not None and not self.direct:
            dx[...] = 0
        for n in range(x.shape[0]):
            for band in self._bands:
                dy_band = self._band_view(dy[n], band)
                if need_weight:
                    # (columns · dyᵀ)ᵀ: BLAS is several times slower on dy · columnsᵀ, whose long axis is
                    # the reduction of a transposed operand
                    product = xp.matmul(self._columns(xp, x[n], band), dy_band.transpose(0, 2, 1))
                    weight_diff += product.transpose(0, 2, 1)
                if dx is None:
                    continue
                if self.direct:
                    xp.matmul(weights.transpose(0, 2, 1), dy_band, out=self._band_view(dx[n], band))
                    continue
                col = self._band_buffer(xp, x.dtype, band)
                xp.matmul(weights.transpose(0, 2, 1), dy_band, out=col.reshape(self.group, -1, dy_band.shape[2]))
                self._col2im(col, dx[n], band)
