"""Pooling, as Caffe's PoolingLayer (pooling_layer.cpp): MAX and AVE, ceil rounding and Caffe's pad rule.

Output size ``ceil((in + 2·pad − kernel) / stride) + 1`` (``floor`` with round_mode FLOOR), minus one when
padding would make the last window start at or beyond ``in + pad``. MAX windows are clipped to the image, so
padded cells never win, and ties go to the first maximum in row-major order (Caffe's strict ``>``). An AVE
window's divisor counts the padding cells inside ``in + pad`` but not those beyond.

Both passes loop over the kernel offsets, never over output pixels, and read the bottom in place: each offset
touches the outputs whose window cell at that offset lies inside the bottom (a strided slice of it), so
padding needs no bordered copy. The forward pass is separable, the rows of each window first and then its
columns (kh + kw whole-array operations, the first ones on contiguous rows). The MAX argmax is needed only by
backward and by the optional mask top: backward recomputes it from the bottom, so inference never pays for it.
Both passes work on ranges of channels of each image, shared among the CPU's threads (``fastrcnn.parallel``).
"""
import math

import numpy

from ..backend import scatter_add
from ..parallel import in_parallel, planes
from ..proto import caffe_pb2
from . import register
from .base import Layer
from .conv import check_4d, offset_ranges, spatial_pair, work_buffer

_P = caffe_pb2.PoolingParameter


def pooled_size(size, kernel, stride, pad, ceil):
    """Caffe's pooled length of one axis (ceil or floor rounding, then the pad rule)."""
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil else span // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@register("Pooling")
class Pooling(Layer):
    """MAX (with an optional second top: the argmax as ``h·W + w``, as Caffe's mask) or AVE pooling."""
    exact_bottoms = 1
    min_tops, max_tops = 1, 2

    def setup(self, bottom, top):
        p = self.param.pooling_param
        if p.pool not in (_P.MAX, _P.AVE):
            raise self.error(f"pool {_P.PoolMethod.Name(p.pool)} is not supported; use MAX or AVE")
        self.max = p.pool == _P.MAX
        if len(top) == 2 and not self.max:
            raise self.error("a second top (the argmax mask) needs pool MAX")
        self.global_pooling = p.global_pooling
        self.stride = spatial_pair(self, p, "stride", "stride", 1)
        self.pad = spatial_pair(self, p, "pad", "pad", 0)
        if self.global_pooling:
            given = [f for f in ("kernel_size", "kernel_h", "kernel_w") if p.HasField(f)]
            if given:
                raise self.error(f"global_pooling takes its kernel from the bottom; remove {', '.join(given)}")
            if self.stride != (1, 1) or self.pad != (0, 0):
                raise self.error(f"global_pooling needs stride 1 and pad 0, got stride {self.stride} "
                                 f"and pad {self.pad}")
        else:
            self.kernel = spatial_pair(self, p, "kernel_size", "kernel", None)
            for axis, k, s, pad in zip("hw", self.kernel, self.stride, self.pad):
                self.positive(f"kernel_{axis}", k)
                self.positive(f"stride_{axis}", s)
                if pad >= k:
                    raise self.error(f"pad_{axis} {pad} must be smaller than kernel_{axis} {k}")
        self.ceil = p.round_mode == _P.CEIL
        self._geometry = None

    def reshape(self, bottom, top):
        n, c, h, w = shape = check_4d(self, bottom[0])
        if self.global_pooling:
            self.kernel = (h, w)
        out = []
        for axis, size, k, s, pad in zip("hw", (h, w), self.kernel, self.stride, self.pad):
            o = pooled_size(size, k, s, pad, self.ceil)
            if o <= 0:
                raise self.error(f"the bottom's {axis} = {size} with pad_{axis} {pad} leaves no room for "
                                 f"a kernel_{axis} {k} window with stride_{axis} {s}")
            if (o - 1) * s - pad >= size:
                # Only unpadded ceil rounding with stride > kernel gets here; Caffe would emit NaN or −FLT_MAX.
                raise self.error(f"with stride_{axis} {s} > kernel_{axis} {k}, the last of {o} windows along "
                                 f"{axis} = {size} starts past the bottom and would pool nothing; use "
                                 "round_mode FLOOR or a stride no larger than the kernel")
            out.append(o)
        self.out = tuple(out)
        for t in top:
            t.reshape(n, c, *self.out)
        if self._geometry != shape:
            self._geometry = shape
            self._reallocate(bottom[0])

    def _reallocate(self, bottom):
        """For a new bottom shape: each axis's per-offset slices and the AVE divisors."""
        xp = self.xp(bottom)
        h, w = bottom.shape[2:]
        self.ranges = [offset_ranges(size, k, s, p, o) for size, k, s, p, o in
                       zip((h, w), self.kernel, self.stride, self.pad, self.out)]
        if not self.max:
            counts = [xp.minimum(xp.arange(o) * s - p + k, size + p) - (xp.arange(o) * s - p)
                      for size, p, o, s, k in zip((h, w), self.pad, self.out, self.stride, self.kernel)]
            self.divisor = (counts[0][:, None] * counts[1][None, :]).astype(bottom.dtype)

    def _offsets(self):
        """(k, output rows, output cols, bottom rows, bottom cols) for every kernel offset k (row-major) that
        some output samples inside the bottom."""
        rows, cols = self.ranges
        return [(i * self.kernel[1] + j, ro, co, ri, ci)
                for i, (ro, ri) in enumerate(rows) if ro is not None
                for j, (co, ci) in enumerate(cols) if co is not None]

    def _pool(self, xp, x, y):
        """y = the windows' maxima (MAX) or sums (AVE) of x: along rows into the shared work buffer, then
        along columns."""
        shape = x.shape[:2] + (self.out[0], x.shape[3])
        rows = work_buffer(xp, x.dtype, math.prod(shape)).reshape(shape)
        op, fill = (xp.maximum, -xp.inf) if self.max else (xp.add, 0)
        _reduce(op, x, rows, self.ranges[0], 2, fill)
        _reduce(op, rows, y, self.ranges[1], 3, fill)

    def forward(self, bottom, top):
        if (gpu := self.gpu_variant(bottom[0])):
            return gpu.forward(bottom, top)
        xp = self.xp(bottom[0])
        x, y = bottom[0].data, top[0].data

        def run(share):
            for n, start, stop in share:
                part = y[n:n + 1, start:stop]
                self._pool(xp, x[n:n + 1, start:stop], part)
                if not self.max:
                    part /= self.divisor
        in_parallel(xp, run, planes(xp, x.shape, 1))
        if len(top) == 2:
            top[1].data[...] = self._argmax(xp, x)

    def _window_offsets(self, xp, x):
        """Each window's kernel offset (row-major index) holding its first maximum, recomputed from the bottom:
        the maximum first, then the offsets in reverse order each claim the outputs whose maximum they hold, so
        the first offset in row-major order that holds it is the one left (int8 where the kernel allows)."""
        best = xp.empty(x.shape[:2] + self.out, x.dtype)
        self._pool(xp, x, best)
        dtype = numpy.int8 if self.kernel[0] * self.kernel[1] <= 127 else numpy.int32
        arg = xp.zeros(best.shape, dtype)
        for k, ro, co, ri, ci in reversed(self._offsets()):
            claimed = arg[..., ro, co]
            claimed += (dtype(k) - claimed) * (x[..., ri, ci] == best[..., ro, co])
        return arg

    def _argmax(self, xp, x):
        """Each window's first maximum as h·W + w in its plane (Caffe's mask); int32 unless the bottom has
        2³¹ elements or more, so that the planes' offsets can be added."""
        width = x.shape[3]
        dtype = numpy.int32 if x.size < 2 ** 31 else numpy.int64
        kh, kw = self.kernel
        cell = xp.asarray([i * width + j for i in range(kh) for j in range(kw)], dtype)
        rows = xp.arange(self.out[0], dtype=dtype) * self.stride[0] - self.pad[0]
        cols = xp.arange(self.out[1], dtype=dtype) * self.stride[1] - self.pad[1]
        return cell[self._window_offsets(xp, x)] + (rows[:, None] * width + cols)

    def backward(self, top, propagate_down, bottom):
        if (gpu := self.gpu_variant(bottom[0])):
            return gpu.backward(top, propagate_down, bottom)
        if not propagate_down[0]:
            return
        xp = self.xp(bottom[0])
        x, dx, dy = bottom[0].data, bottom[0].diff, top[0].diff

        def run(share):
            for n, start, stop in share:
                d, g = dx[n, start:stop], dy[n, start:stop]
                d[...] = 0
                if self.max:
                    # each top diff goes to its window's first maximum; overlapping windows add up
                    index = self._argmax(xp, x[n:n + 1, start:stop])[0]
                    index = index + (xp.arange(stop - start, dtype=index.dtype) * d[0].size).reshape(-1, 1, 1)
                    scatter_add(d.reshape(-1), index.reshape(-1), g.reshape(-1))
                    continue
                spread = g / self.divisor
                for _, ro, co, ri, ci in self._offsets():
                    d[..., ri, ci] += spread[..., ro, co]
        in_parallel(xp, run, planes(xp, x.shape, 1))


def _reduce(op, src, dst, ranges, axis, fill):
    """dst = op over the kernel offsets along ``axis`` of src's slices (outputs that no offset reaches get
    ``fill``); the widest slice initialises dst, so each output is written once and reduced kernel − 1 times."""
    def along(s):
        return (slice(None),) * axis + (s,)
    (out0, in0), *rest = sorted((r for r in ranges if r is not None), key=lambda r: r[0].start - r[0].stop)
    dst[along(slice(0, out0.start))] = fill
    dst[along(slice(out0.stop, None))] = fill
    dst[along(out0)] = src[along(in0)]
    for out, inp in rest:
        view = dst[along(out)]
        op(view, src[along(inp)], out=view)
