"""Normalisation layers, as Caffe's LRN, BatchNorm, Scale and Bias layers."""
import math

from ..blob import Blob
from ..parallel import channel_ranges, in_parallel, planes
from ..proto import caffe_pb2
from . import register
from .activation import canonical_axis
from .base import Layer
from .conv import along, check_4d


def _window_sum(xp, a, size, axes, out):
    """``out`` = Σ of ``a`` over a centred window of ``size`` along each of ``axes``, zero padded (size is
    odd): each shift adds the overlapping parts, so no padded copy is made."""
    for i, axis in enumerate(axes):
        total = out if i == len(axes) - 1 else xp.empty_like(a)
        total[...] = a
        for shift in range(1, size // 2 + 1):
            head, tail = along(axis, None, -shift), along(axis, shift, None)
            total[tail] += a[head]
            total[head] += a[tail]
        a = total
    return a


@register("LRN")
class LRN(Layer):
    """Local response normalisation, y = x · scale^(−beta) (lrn_layer.cpp).

    ACROSS_CHANNELS: scale = k + alpha/n · Σ x² over n channels centred on each one (zero padded).
    WITHIN_CHANNEL: scale = 1 + alpha/n² · Σ x² over an n × n window (zero padded). Caffe builds it from an
    AVE pooling (pad (n−1)/2, so the divisor is always n²) and a Power layer with shift 1, so ``k`` plays no
    part there.
    """
    exact_bottoms = exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.lrn_param
        self.size = self.positive("local_size", p.local_size)
        if self.size % 2 == 0:
            raise self.error(f"local_size must be odd, got {self.size}")
        self.alpha, self.beta = float(p.alpha), float(p.beta)
        if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            self.axes, self.k = (1,), float(p.k)
        else:
            self.axes, self.k = (2, 3), 1.0
        self.norm = self.alpha / self.size ** len(self.axes)
        self._scale = Blob((), bottom[0].dtype)

    def reshape(self, bottom, top):
        shape = check_4d(self, bottom[0])
        top[0].reshape(shape)
        self._scale.reshape(shape)

    def _pieces(self, xp, shape):
        """Index tuples of parts of the (N, C, H, W) arrays that can be normalised apart: ranges of rows across
        channels, ranges of channels within them."""
        axis = 2 if self.axes == (1,) else 1
        return [(slice(n, n + 1),) + along(axis, start, stop)[1:] for n, start, stop in planes(xp, shape, axis)]

    def forward(self, bottom, top):
        if (gpu := self.gpu_variant(bottom[0])):
            return gpu.forward(bottom, top)
        xp = self.xp(bottom[0])
        x, y, scale = bottom[0].data, top[0].data, self._scale.data

        def run(share):
            for i in share:
                xi, yi, si = x[i], y[i], scale[i]
                _window_sum(xp, xi * xi, self.size, self.axes, out=si)
                si *= self.norm
                si += self.k
                xp.power(si, -self.beta, out=yi)
                yi *= xi
        in_parallel(xp, run, self._pieces(xp, x.shape))

    def backward(self, top, propagate_down, bottom):
        """dx = dy · scale^(−beta) − 2·beta·norm · x · Σ_{windows holding x} dy·y/scale (the window is
        symmetric, so the adjoint sum is the same window sum)."""
        if (gpu := self.gpu_variant(bottom[0])):
            return gpu.backward(top, propagate_down, bottom)
        if not propagate_down[0]:
            return
        xp = self.xp(bottom[0])
        x, y, dy, scale, dx = bottom[0].data, top[0].data, top[0].diff, self._scale.data, bottom[0].diff

        def run(share):
            for i in share:
                ratio = dy[i] * y[i]
                ratio /= scale[i]
                _window_sum(xp, ratio, self.size, self.axes, out=dx[i])
                dx[i] *= x[i]
                dx[i] *= -2 * self.beta * self.norm
                xp.power(scale[i], -self.beta, out=ratio)
                ratio *= dy[i]
                dx[i] += ratio
        in_parallel(xp, run, self._pieces(xp, x.shape))


def _channels(blob):
    """Caffe's BatchNorm views the bottom as (N, C, rest); a 1-axis bottom has one channel."""
    shape = blob.shape
    return shape[1] if len(shape) > 1 else 1


def channel_dot(xp, a, b=None):
    """Per-channel sums over axes 0 and 2 of ``a · b`` (of ``a`` without ``b``) for (N, C, S) arrays: dot
    products in BLAS, as Caffe's gemv reductions, without an (N, C, S) temporary."""
    if a.shape[2] == 1:  # (N, C) values: no long axis for BLAS
        return a[:, :, 0].sum(axis=0) if b is None else xp.einsum("nc,nc->c", a[:, :, 0], b[:, :, 0])
    right = xp.ones((a.shape[2], 1), a.dtype) if b is None else b[:, :, :, None]
    return xp.matmul(a[:, :, None, :], right).sum(axis=0).reshape(-1)


@register("BatchNorm")
class BatchNorm(Layer):
    """y = (x − mean) / sqrt(var + eps) per channel, no learned scale (Caffe pairs it with Scale).

    Blobs: the running sums of the mean and variance and their moving-average scale factor. With
    ``use_global_stats`` (default: the TEST phase) the statistics are blobs[0..1] / blobs[2] (0 where
    blobs[2] is 0); otherwise they are the batch's, over N and the spatial axes, and forward updates
    blobs[2] = blobs[2]·maf + 1, blobs[0] = blobs[0]·maf + mean, blobs[1] = blobs[1]·maf + m/(m−1)·var
    (m values per channel). As in Caffe the blobs get lr_mult 0 (a non-zero one is an error), and backward
    never writes their diffs. With ``deferred`` a list, forward appends each batch's (mean, m/(m−1)·var) to
    it instead, for ``update_statistics`` to apply later: a data-parallel run applies every rank's in the
    order of their minibatches, the updates one process makes (the batch statistics, not the running ones,
    are what TRAIN uses, so nothing in the iteration reads them meanwhile).
    """
    exact_bottoms = exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.batch_norm_param
        self.use_global = p.use_global_stats if p.HasField("use_global_stats") else self.phase == "TEST"
        self.fraction, self.eps = float(p.moving_average_fraction), float(p.eps)
        if self.eps <= 0:
            raise self.error(f"eps must be positive, got {self.eps}")
        dtype = bottom[0].dtype
        if not self.blobs:
            c = _channels(bottom[0])
            self.blobs = [Blob((c,), dtype), Blob((c,), dtype), Blob((1,), dtype)]
            for blob in self.blobs:
                blob.data[...] = 0
        specs = self.param.param
        for i, spec in enumerate(specs[:3]):
            if spec.lr_mult != 0:
                raise self.error(f"param {i} has lr_mult {spec.lr_mult}; the statistics are not learned, "
                                 "so lr_mult must be 0")
        while len(specs) < 3:
            specs.add(lr_mult=0)
        self._normalized = Blob((), dtype)  # x̂ for backward; the top may be overwritten by in-place layers
        self._std = None
        self.deferred = None

    def reshape(self, bottom, top):
        c = _channels(bottom[0])
        if (c,) != self.blobs[0].shape:
            raise self.error(f"the bottom {bottom[0].shape} has {c} channels, but the statistics have "
                             f"shape {self.blobs[0].shape}")
        top[0].reshape(bottom[0].shape)
        if not self.use_global:
            self._normalized.reshape(bottom[0].shape)

    @staticmethod
    def _view(array, blob):
        return array.reshape(blob.shape[0], _channels(blob), -1)

    def forward(self, bottom, top):
        xp = self.xp(bottom[0])
        x, y = self._view(bottom[0].data, bottom[0]), self._view(top[0].data, top[0])
        m = x.size // x.shape[1]
        if self.use_global:
            count = self.blobs[2].data
            factor = (count != 0) / xp.where(count == 0, 1, count)
            mean, var = self.blobs[0].data * factor, self.blobs[1].data * factor
        else:
            mean, var = xp.empty(x.shape[1], x.dtype), xp.empty(x.shape[1], x.dtype)
        std = xp.empty((x.shape[1], 1), x.dtype)

        def run(share):
            for start, stop in share:
                xs, ys, part = x[:, start:stop], y[:, start:stop], slice(start, stop)
                if not self.use_global:
                    mean[part] = channel_dot(xp, xs) / m
                xp.subtract(xs, mean[part, None], out=ys)
                if not self.use_global:
                    var[part] = channel_dot(xp, ys, ys) / m
                xp.sqrt(var[part, None] + self.eps, out=std[part])
                ys /= std[part]
                if not self.use_global:
                    self._view(self._normalized.data, bottom[0])[:, part] = ys
        in_parallel(xp, run, channel_ranges(xp, x.shape))
        self._std = std
        if not self.use_global:
            correction = m / (m - 1) if m > 1 else 1.0
            if self.deferred is None:
                self.update_statistics(mean, var * correction)
            else:
                self.deferred.append((mean, var * correction))

    def update_statistics(self, mean, var):
        """The moving averages' update by one batch's statistics (BatchNormLayer::Forward_cpu)."""
        for blob, value in ((self.blobs[0], mean), (self.blobs[1], var)):
            blob.data *= self.fraction
            blob.data += value
        self.blobs[2].data *= self.fraction
        self.blobs[2].data += 1

    def backward(self, top, propagate_down, bottom):
        """Global statistics: dx = dy / std. Batch statistics:
        dx = (dy − mean(dy) − x̂ · mean(dy · x̂)) / std, means over N and the spatial axes."""
        if not propagate_down[0]:
            return
        xp = self.xp(top[0])
        dy = self._view(top[0].diff, top[0])
        dx = self._view(bottom[0].diff, bottom[0])  # may be dy itself (in place)
        xn = None if self.use_global else self._view(self._normalized.data, self._normalized)
        m = dy.size // dy.shape[1]

        def run(share):
            for start, stop in share:
                part = slice(start, stop)
                if self.use_global:
                    xp.divide(dy[:, part], self._std[part], out=dx[:, part])
                    continue
                g, xg, out = dy[:, part], xn[:, part], dx[:, part]
                correction = xg * (channel_dot(xp, g, xg) / m)[:, None]
                correction += (channel_dot(xp, g) / m)[:, None]
                xp.subtract(g, correction, out=out)
                out /= self._std[part]
        in_parallel(xp, run, channel_ranges(xp, dy.shape))


class _Broadcast(Layer):
    """Shared by Scale and Bias: an operand (bottom[1], or the learned blobs[0]) spanning the bottom's axes
    [axis, axis + operand axes), broadcast over the others. The bottom is viewed as (outer, dim, inner)."""
    min_bottoms, max_bottoms = 1, 2
    exact_tops = 1

    def _learned_shape(self, p, bottom):
        """The shape of a learned operand: the bottom's axes [axis, axis + num_axes) (−1: to the end)."""
        shape = bottom[0].shape
        axis = canonical_axis(self, p.axis, len(shape))
        if p.num_axes < -1 or p.num_axes >= 0 and axis + p.num_axes > len(shape):
            raise self.error(f"num_axes {p.num_axes} does not fit a bottom {shape} from axis {axis} "
                             "(use -1 for all remaining axes)")
        return shape[axis:] if p.num_axes == -1 else shape[axis:axis + p.num_axes]

    def operand(self, bottom):
        return bottom[1] if len(bottom) == 2 else self.blobs[0]

    def reshape(self, bottom, top):
        shape, operand = bottom[0].shape, self.operand(bottom).shape
        axis = 0 if not operand else canonical_axis(self, self.axis_param, len(shape))
        if tuple(shape[axis:axis + len(operand)]) != tuple(operand):
            raise self.error(f"the operand {operand} does not match the bottom {shape} at axes from {axis}")
        self.dims = (math.prod(shape[:axis]), math.prod(operand), math.prod(shape[axis + len(operand):]))
        top[0].reshape(shape)

    def view(self, array):
        return array.reshape(self.dims)

    def operand_gradient(self, bottom, propagate_down, compute):
        """The operand's gradient ``compute()`` (per operand element): into bottom[1] (overwritten) where
        propagate_down[1], or accumulated into the learned blobs[0] where its lr_mult is not 0."""
        if len(bottom) == 2:
            if propagate_down[1]:
                bottom[1].diff[...] = compute().reshape(bottom[1].shape)
        elif self.param_propagate_down[0]:
            self.blobs[0].diff += compute().reshape(self.blobs[0].shape)


@register("Scale")
class Scale(_Broadcast):
    """y = x · s (+ b), s from bottom[1] or learned (filler default constant 1), b learned with
    ``bias_term`` (bias_filler, default constant 0)."""

    def setup(self, bottom, top):
        p = self.param.scale_param
        self.axis_param = p.axis
        self.bias_term = p.bias_term
        dtype = bottom[0].dtype
        if not self.blobs:
            if len(bottom) == 1:
                shape = self._learned_shape(p, bottom)
                filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant",
                                                                                           value=1)
                self.blobs.append(self.filled_blob(filler, shape, dtype, "filler"))
            else:
                shape = bottom[1].shape
            if self.bias_term:
                self.blobs.append(self.filled_blob(p.bias_filler, shape, dtype, "bias_filler"))
        self._bottom_copy = Blob((), dtype)  # the input, kept when the layer runs in place

    def forward(self, bottom, top):
        xp = self.xp(bottom[0])
        x, y = self.view(bottom[0].data), self.view(top[0].data)
        keep = top[0] is bottom[0] and self.need_backward  # backward reads the input
        if keep:
            self._bottom_copy.reshape(bottom[0].shape)
        copy = self.view(self._bottom_copy.data) if keep else None
        scale = self.operand(bottom).data.reshape(1, -1, 1)
        bias = self.blobs[-1].data.reshape(1, -1, 1) if self.bias_term else None

        def run(share):
            for start, stop in share:
                part = slice(start, stop)
                if copy is not None:
                    copy[:, part] = x[:, part]
                xp.multiply(x[:, part], scale[:, part], out=y[:, part])
                if bias is not None:
                    y[:, part] += bias[:, part]
        in_parallel(xp, run, channel_ranges(xp, self.dims))

    def backward(self, top, propagate_down, bottom):
        xp = self.xp(top[0])
        dy, dx = self.view(top[0].diff), self.view(bottom[0].diff)
        if top[0] is bottom[0] and self._bottom_copy.shape != bottom[0].shape:
            raise self.error("backward in place needs the input that forward keeps only where the net runs "
                             "backward on this layer (a loss above it, or force_backward)")
        x = self.view(self._bottom_copy.data if top[0] is bottom[0] else bottom[0].data)
        scale = self.operand(bottom).data.reshape(1, -1, 1)
        learned = len(bottom) == 1
        bias_sum, scale_gradient = (xp.empty(self.dims[1], dy.dtype) if needed else None for needed in (
            self.bias_term and self.param_propagate_down[-1],
            self.param_propagate_down[0] if learned else propagate_down[1]))

        def run(share):
            for start, stop in share:
                part = slice(start, stop)
                if bias_sum is not None:
                    bias_sum[part] = channel_dot(xp, dy[:, part])
                if scale_gradient is not None:
                    scale_gradient[part] = channel_dot(xp, dy[:, part], x[:, part])
                if propagate_down[0]:  # after the scale's gradient, which reads dy (maybe dx itself)
                    xp.multiply(dy[:, part], scale[:, part], out=dx[:, part])
        in_parallel(xp, run, channel_ranges(xp, self.dims))
        if bias_sum is not None:
            self.blobs[-1].diff += bias_sum.reshape(self.blobs[-1].shape)
        self.operand_gradient(bottom, propagate_down, lambda: scale_gradient)


@register("Bias")
class Bias(_Broadcast):
    """y = x + b, b from bottom[1] or learned (filler, default constant 0)."""

    def setup(self, bottom, top):
        p = self.param.bias_param
        self.axis_param = p.axis
        if not self.blobs and len(bottom) == 1:
            self.blobs.append(self.filled_blob(p.filler, self._learned_shape(p, bottom), bottom[0].dtype,
                                             "filler"))

    def forward(self, bottom, top):
        bias = self.operand(bottom).data.reshape(1, -1, 1)
        self.view(top[0].data)[...] = self.view(bottom[0].data) + bias

    def backward(self, top, propagate_down, bottom):
        dy = self.view(top[0].diff)
        self.operand_gradient(bottom, propagate_down, lambda: channel_dot(self.xp(top[0]), dy))
        if propagate_down[0] and top[0] is not bottom[0]:
            bottom[0].diff[...] = top[0].diff
