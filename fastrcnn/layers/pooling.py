"""Pooling, as Caffe's PoolingLayer (pooling_layer.cpp): MAX and AVE, ceil rounding and Caffe's pad rule.

Output size ``ceil((in + 2·pad − kernel) / stride) + 1`` (``floor`` with round_mode FLOOR), minus one when
padding would make the last window start at or beyond ``in + pad``. MAX windows are clipped to the image, so
padded cells never win, and ties go to the first maximum in row-major order (Caffe's strict ``>``). An AVE
window's divisor counts the padding cells inside ``in + pad`` but not those beyond. Both passes loop over the
kernel offsets, each a strided slice of a padded copy of the bottom, never over output pixels.
"""
import numpy

from ..blob import Blob
from ..proto import caffe_pb2
from . import register
from .base import Layer
from .conv import check_4d, offset_slices, spatial_pair

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
        dtype = bottom[0].dtype
        self._padded = Blob((), dtype)
        self._padded_diff = Blob((), dtype)
        self._argmax = Blob((), numpy.int32)
        self._better = Blob((), numpy.bool_)
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
        """Work buffers for a new bottom shape: the padded copy (borders −inf for MAX, 0 for AVE)."""
        xp = self.xp(bottom)
        n, c, h, w = bottom.shape
        self.padded_size = tuple(max(size + 2 * p, (o - 1) * s + k) for size, p, o, s, k in
                            zip((h, w), self.pad, self.out, self.stride, self.kernel))
        if self.padded_size != (h, w):
            self._padded.reshape(n, c, *self.padded_size)
            self._padded.data[...] = -xp.inf if self.max else 0
            self._padded_diff.reshape(n, c, *self.padded_size)
        if self.max:
            self._argmax.reshape(n, c, *self.out)
            self._better.reshape(n, c, *self.out)
        else:
            counts = [xp.minimum(xp.arange(o) * s - p + k, size + p) - (xp.arange(o) * s - p)
                      for size, p, o, s, k in zip((h, w), self.pad, self.out, self.stride, self.kernel)]
            self.divisor = (counts[0][:, None] * counts[1][None, :]).astype(bottom.dtype)

    def _offsets(self):
        return offset_slices(self.kernel, (1, 1), self.out, self.stride)

    def forward(self, bottom, top):
        xp = self.xp(bottom[0])
        x, y = bottom[0].data, top[0].data
        src = x
        if self.padded_size != x.shape[2:]:
            (ph, pw), (h, w) = self.pad, x.shape[2:]
            src = self._padded.data
            src[:, :, ph:ph + h, pw:pw + w] = x
        if self.max:
            arg, better = self._argmax.data, self._better.data
            for k, (_, _, rows, cols) in enumerate(self._offsets()):
                window = src[..., rows, cols]
                if k == 0:
                    y[...] = window
                    arg[...] = 0
                else:
                    xp.greater(window, y, out=better)
                    xp.copyto(y, window, where=better)
                    xp.copyto(arg, k, where=better)
            if len(top) == 2:
                kw = self.kernel[1]
                rows = xp.arange(self.out[0])[:, None] * self.stride[0] - self.pad[0] + arg // kw
                cols = xp.arange(self.out[1]) * self.stride[1] - self.pad[1] + arg % kw
                top[1].data[...] = rows * x.shape[3] + cols
        else:
            y[...] = 0
            for _, _, rows, cols in self._offsets():
                y += src[..., rows, cols]
            y /= self.divisor

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        xp = self.xp(bottom[0])
        dx, dy = bottom[0].diff, top[0].diff
        padded = self.padded_size != dx.shape[2:]
        dst = self._padded_diff.data if padded else dx
        dst[...] = 0
        if self.max:
            arg = self._argmax.data
            for k, (_, _, rows, cols) in enumerate(self._offsets()):
                dst[..., rows, cols] += xp.where(arg == k, dy, 0)
        else:
            share = dy / self.divisor
            for _, _, rows, cols in self._offsets():
                dst[..., rows, cols] += share
        if padded:
            (ph, pw), (h, w) = self.pad, dx.shape[2:]
            dx[...] = dst[:, :, ph:ph + h, pw:pw + w]
