"""Element-wise layers: ReLU, Sigmoid, TanH, Dropout (inverted, as Caffe), and Softmax.

All may run in place (top = bottom): their backward passes read only what an in-place forward leaves.
"""
from .. import backend
from ..parallel import elementwise
from . import register
from .base import Layer


class _Elementwise(Layer):
    exact_bottoms = exact_tops = 1

    def reshape(self, bottom, top):
        top[0].reshape(bottom[0].shape)


@register("ReLU")
class ReLU(_Elementwise):
    """y = max(x, 0) + negative_slope · min(x, 0); backward tests the sign of the output, which equals the
    sign of the input, so it is exact in place too."""

    def setup(self, bottom, top):
        self.slope = float(self.param.relu_param.negative_slope)

    def forward(self, bottom, top):
        xp = self.xp(bottom[0])

        def relu(x, y):
            if self.slope:
                xp.multiply(x, xp.where(x > 0, 1, self.slope).astype(x.dtype), out=y)
            else:
                xp.maximum(x, 0, out=y)
        elementwise(xp, relu, bottom[0].data, top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            xp = self.xp(top[0])

            def relu_gradient(y, dy, dx):
                xp.multiply(dy, xp.where(y > 0, 1, self.slope).astype(dy.dtype) if self.slope else y > 0, out=dx)
            elementwise(xp, relu_gradient, top[0].data, top[0].diff, bottom[0].diff)


@register("Sigmoid")
class Sigmoid(_Elementwise):
    def forward(self, bottom, top):
        xp = self.xp(bottom[0])
        top[0].data[...] = 1 / (1 + xp.exp(-bottom[0].data))

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].data
            bottom[0].diff[...] = top[0].diff * y * (1 - y)


@register("TanH")
class TanH(_Elementwise):
    def forward(self, bottom, top):
        self.xp(bottom[0]).tanh(bottom[0].data, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y = top[0].data
            bottom[0].diff[...] = top[0].diff * (1 - y * y)


@register("Dropout")
class Dropout(_Elementwise):
    """Inverted dropout: in TRAIN, y = x · mask / (1 − ratio) with mask ~ Bernoulli(1 − ratio); identity in TEST."""

    def setup(self, bottom, top):
        self.ratio = float(self.param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio}")
        self.scale = 1.0 / (1.0 - self.ratio)
        self.mask = None

    def forward(self, bottom, top):
        x, y = bottom[0].data, top[0].data
        if self.phase != "TRAIN":
            if y is not x:
                y[...] = x
            return
        xp = self.xp(bottom[0])
        keep = backend.rng().random(x.shape, dtype=x.dtype) >= self.ratio
        self.mask = xp.asarray(keep.astype(x.dtype) * x.dtype.type(self.scale))
        xp.multiply(x, self.mask, out=y)

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        dy, dx = top[0].diff, bottom[0].diff
        if self.phase != "TRAIN":
            if dx is not dy:
                dx[...] = dy
            return
        self.xp(top[0]).multiply(dy, self.mask, out=dx)


def softmax(x, axis):
    """Numerically stable softmax along ``axis`` (shared with SoftmaxWithLoss)."""
    xp = backend.get_array_module(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def canonical_axis(layer, axis, ndim):
    """Caffe's CanonicalAxisIndex: negative axes count from the end; out of range is an error."""
    if not -ndim <= axis < ndim:
        raise layer.error(f"axis {axis} is out of range for a bottom with {ndim} axes")
    return axis % ndim


@register("Softmax")
class Softmax(_Elementwise):
    def forward(self, bottom, top):
        self.axis = canonical_axis(self, self.param.softmax_param.axis, len(bottom[0].shape))
        top[0].data[...] = softmax(bottom[0].data, self.axis)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            y, dy = top[0].data, top[0].diff
            bottom[0].diff[...] = y * (dy - (dy * y).sum(axis=self.axis, keepdims=True))
