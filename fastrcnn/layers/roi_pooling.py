"""RoI max pooling (Fast R-CNN section 2.1; caffe-fast-rcnn's roi_pooling_layer.cu).

Each RoI ``[batch, x1, y1, x2, y2]`` (input-image pixels) is scaled by ``spatial_scale``, rounded, and split
into ``pooled_h × pooled_w`` bins; each bin takes the maximum of its window of the feature map, per channel.

Instead of visiting every pixel of every bin, the forward pass builds, for each window extent (eh, ew) that
some bin uses, the map of all eh × ew sliding-window maxima of the feature map (a sparse table: O(log) whole-map
operations per extent), then reads every bin of that extent with one gather. The work is then proportional to
the map size times the number of distinct bin extents, not to the total area of the RoIs. With few bins for
the map (a training minibatch of 128 RoIs), each bin instead reads four entries of a 2-D sparse table (levels
of 2^i × 2^j windows) and takes the larger, which avoids the whole-map pass per extent. Both passes work on
ranges of channels, shared among the CPU's threads (``fastrcnn.parallel``).
"""
import numpy

from ..backend import scatter_add
from ..blob import Blob
from ..parallel import channel_ranges, in_parallel
from . import register
from .base import Layer
from .conv import along


def round_half_away(xp, v):
    """C's ``round`` on float32 values: halves go away from zero (``numpy.round`` goes to even).

    The 0.5 is added in float64, where the sum of a float32 and 0.5 is exact.
    """
    return (xp.sign(v) * xp.floor(xp.abs(v.astype(numpy.float64)) + 0.5)).astype(numpy.int64)


def _larger(xp, left, right):
    """Elementwise max of two (value, argmax) pairs; ``right`` wins only when strictly larger, so the
    earlier (left) of equal maxima is kept. Without argmaxes (None), the maximum alone."""
    if left[1] is None:
        return xp.maximum(left[0], right[0]), None
    take_right = right[0] > left[0]
    arg = right[1] - left[1]
    arg *= take_right  # arithmetic select: masked selection is slow on random masks
    arg += left[1]
    return xp.maximum(left[0], right[0]), arg


class _SlidingMax:
    """Max and first argmax over every window [i, i + k) along one axis, for any k (a sparse table).

    Level j holds the windows of length 2^j; a window of length k is the larger of two overlapping level
    windows, the left one winning ties. That keeps the first maximum: where the first maximal element lies
    in the overlap, the left window holds it too. With ``arg`` None only the maxima are computed.
    """

    def __init__(self, xp, value, arg, axis):
        self.xp, self.axis, self.length = xp, axis, value.shape[axis]
        self.levels = [(value, arg)]

    def level(self, j):
        while len(self.levels) <= j:
            step = 1 << (len(self.levels) - 1)
            value, arg = self.levels[-1]
            n = value.shape[self.axis] - step
            head, tail = along(self.axis, 0, n), along(self.axis, step, step + n)
            self.levels.append(_larger(self.xp, _part(value, arg, head), _part(value, arg, tail)))
        return self.levels[j]

    def window(self, k):
        j = k.bit_length() - 1
        value, arg = self.level(j)
        if k == 1 << j:
            return value, arg
        n, shift = self.length - k + 1, k - (1 << j)
        head, tail = along(self.axis, 0, n), along(self.axis, shift, shift + n)
        return _larger(self.xp, _part(value, arg, head), _part(value, arg, tail))


def _part(value, arg, index):
    return value[index], (None if arg is None else arg[index])


@register("ROIPooling")
class ROIPooling(Layer):
    """Max pooling of each RoI into a fixed ``pooled_h × pooled_w`` grid, exactly as the original.

    Bottoms: features (N, C, H, W) and rois (R, 5) = [batch_index, x1, y1, x2, y2]. Top: (R, C, ph, pw).
    Forward, per RoI: batch index by truncation; ``x*spatial_scale`` in float32, rounded half away from zero;
    roi_w/roi_h forced to at least 1; float32 bin sizes; bin edges floor(p·bin)/ceil((p+1)·bin) offset by the
    RoI start and clipped to [0, H]/[0, W]; an empty bin gives 0 and argmax −1; otherwise the maximum, the
    first one in row-major order on ties, with argmax h·W + w (``max_idx``, shape of the top). The RoI
    geometry is float32 whatever the blob dtype, as in the float model.

    Backward scatters each top diff onto its bin's argmax; the rois get no gradient (zeros if asked: the
    output is piecewise constant in them). One deliberate difference: for a malformed RoI (x2 < x1 or
    y2 < y1 after rounding) the original's kernel passes no gradient although its forward pooled the forced
    1-pixel window; here that pixel receives its gradient like any other.
    """

    exact_bottoms = 2
    exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.roi_pooling_param
        self.pooled_h = self.positive("roi_pooling_param.pooled_h", p.pooled_h)
        self.pooled_w = self.positive("roi_pooling_param.pooled_w", p.pooled_w)
        if not p.spatial_scale > 0:
            raise self.error(f"roi_pooling_param.spatial_scale must be positive, got {p.spatial_scale}")
        self.spatial_scale = numpy.float32(p.spatial_scale)
        self._argmax = Blob((), dtype=numpy.int32, name=f"{self.name}_argmax")
        self._argmax_ready = False

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottom, top):
        if len(bottom[0].shape) != 4:
            raise self.error(f"bottom 0 (features) must be 4-D (N, C, H, W), got shape {bottom[0].shape}")
        rois = bottom[1].shape
        if len(rois) < 2 or bottom[1].count != 5 * rois[0]:
            raise self.error(f"bottom 1 (rois) must have shape (R, 5) = [batch_index, x1, y1, x2, y2], "
                             f"got {rois}")
        r, c = rois[0], bottom[0].shape[1]
        top[0].reshape(r, c, self.pooled_h, self.pooled_w)
        # Stored as (R, ph, pw, C), the order the forward pass fills; ``max_idx`` shows it as the top's.
        self._argmax.reshape(r, self.pooled_h, self.pooled_w, c)

    @property
    def max_idx(self):
        """The argmax of every top element, h·W + w within its (batch, channel) plane, −1 for empty bins."""
        if (gpu := self.gpu_variant(self._bottom[0])):
            return gpu.max_idx(self._bottom)
        return self._argmaxes(self._bottom).transpose(0, 3, 1, 2)

    def _bins(self, xp, rois, height, width):
        """Batch indices (R,) and clipped bin edges: hstart, hend (R, ph) and wstart, wend (R, pw)."""
        batch = xp.trunc(rois[:, 0]).astype(numpy.int64)
        x1, y1, x2, y2 = round_half_away(xp, rois[:, 1:5].astype(numpy.float32) * self.spatial_scale).T
        hstart, hend = self._edges(xp, y1, y2, self.pooled_h, height)
        wstart, wend = self._edges(xp, x1, x2, self.pooled_w, width)
        return batch, hstart, hend, wstart, wend

    @staticmethod
    def _edges(xp, start, end, pooled, size):
        extent = xp.maximum(end - start + 1, 1).astype(numpy.float32)
        bin_size = extent / numpy.float32(pooled)
        p = xp.arange(pooled, dtype=numpy.float32)
        lo = xp.floor(p[None, :] * bin_size[:, None]).astype(numpy.int64) + start[:, None]
        hi = xp.ceil((p[None, :] + 1) * bin_size[:, None]).astype(numpy.int64) + start[:, None]
        return xp.clip(lo, 0, size), xp.clip(hi, 0, size)

    def _check_batch(self, xp, batch, num):
        bad = xp.flatnonzero((batch < 0) | (batch >= num))
        if bad.size:
            i = int(bad[0])
            raise self.error(f"RoI {i} has batch index {int(batch[i])}, outside [0, {num}) "
                             f"(the features hold {num} image(s))")

    def forward(self, bottom, top):
        """The maxima; their argmaxes too in the TRAIN phase where backward runs (only backward and ``max_idx``
        need them, and compute them on demand otherwise)."""
        self._bottom = bottom
        if (gpu := self.gpu_variant(bottom[0])):
            return gpu.forward(bottom, top)
        self._argmax_ready = False
        self._pool(bottom, top[0].data.transpose(0, 2, 3, 1),
                   with_argmax=self.phase == "TRAIN" and self.need_backward)

    def _pool(self, bottom, out, with_argmax):
        """Fill ``out`` (R, ph, pw, C) with the bins' maxima and, ``with_argmax``, the argmax blob; ranges of
        channels are shared among the CPU's threads."""
        xp = self.xp(bottom[0])
        num, channels, height, width = bottom[0].shape
        rois = bottom[1].data.reshape(-1, 5)
        batch, hstart, hend, wstart, wend = self._bins(xp, rois, height, width)
        self._check_batch(xp, batch, num)
        self._batch = batch
        # the sparse table's keys are made of float32 bits: other dtypes pool the whole map
        bins = _Bins(xp, batch, hstart, wstart, hend - hstart, wend - wstart,
                     num * height * width if bottom[0].dtype == numpy.float32 else 0)
        argmax = self._argmax.data if with_argmax else None

        def run(share):
            for start, stop in share:
                # (N, H, W, C') for this range of channels
                features = xp.ascontiguousarray(bottom[0].data[:, start:stop].transpose(0, 2, 3, 1))
                bins.pool(features, out[..., start:stop], None if argmax is None else argmax[..., start:stop])
        in_parallel(xp, run, channel_ranges(xp, bottom[0].shape))
        if with_argmax:
            self._argmax_ready = True

    def _argmaxes(self, bottom):
        """The argmax blob's array, computed again from ``bottom`` if the forward pass skipped it."""
        if not self._argmax_ready:
            self._pool(bottom, self.xp(bottom[0]).empty(self._argmax.shape, bottom[0].dtype), with_argmax=True)
        return self._argmax.data

    def backward(self, top, propagate_down, bottom):
        if (gpu := self.gpu_variant(bottom[0])):
            return gpu.backward(top, propagate_down, bottom)
        if propagate_down[1]:
            bottom[1].diff[...] = 0
        if not propagate_down[0]:
            return
        xp = self.xp(bottom[0])
        channels, height, width = bottom[0].shape[1:]
        argmax = self._argmaxes(bottom)  # (R, ph, pw, C)
        diff, dy = bottom[0].diff, top[0].diff.transpose(0, 2, 3, 1)

        def run(share):
            for start, stop in share:
                diff[:, start:stop] = 0
                index = argmax[..., start:stop]
                plane = (self._batch[:, None, None, None] * channels + xp.arange(start, stop)) * (height * width)
                hit = index >= 0
                scatter_add(diff.reshape(-1), (plane + index)[hit], dy[..., start:stop][hit])
        in_parallel(xp, run, channel_ranges(xp, bottom[0].shape))


class _Bins:
    """The non-empty bins of a set of RoIs in groups read alike, found once: batch (R,), first rows (R, ph) and
    columns (R, pw), extents (R, ph) and (R, pw), empty where ≤ 0. ``pool`` then pools any range of channels.

    With fewer bins than ``map_size`` (a map's N·H·W) times the distinct bin widths (a training minibatch),
    each bin is the largest of four reads of a 2-D sparse table of 2^i × 2^j window maxima (with argmaxes the
    table holds keys ordered as (value, −position), so that the largest key is the first maximum in row-major
    order), and a group is the bins of one (⌊log2 ew⌋, ⌊log2 eh⌋). Otherwise (test time) a group is the bins
    of one extent (ew, eh), read from the whole map's maxima of that extent.
    """

    def __init__(self, xp, batch, hstart, wstart, ext_h, ext_w, map_size):
        count = int(((ext_h > 0).sum(axis=1) * (ext_w > 0).sum(axis=1)).sum())
        self.xp = xp
        self.sparse = sparse = count < map_size * len(_distinct(xp, ext_w[ext_w > 0]))
        self.empty = xp.nonzero((ext_h <= 0)[:, :, None] | (ext_w <= 0)[:, None, :])
        # the groups' keys: the extents, or their logarithms; −1 marks an empty row or column of bins
        key_h, key_w = ((xp.where(e > 0, _floor_log2(xp, e) if sparse else e, -1)) for e in (ext_h, ext_w))
        self.groups = []  # (key_w, [(key_h, (roi, p, q), the bins' corner reads)])
        for kw in _distinct(xp, key_w[key_w >= 0]):
            in_kw = key_w == kw
            inner = []
            for kh in _distinct(xp, key_h[(key_h >= 0) & in_kw.any(axis=1)[:, None]]):
                roi, p, q = xp.nonzero((key_h == kh)[:, :, None] & in_kw[:, None, :])
                b, h0, w0 = batch[roi], hstart[roi, p], wstart[roi, q]
                if sparse:  # the rows and columns of the other two corners' level windows
                    h1, w1 = h0 + ext_h[roi, p] - (1 << kh), w0 + ext_w[roi, q] - (1 << kw)
                    reads = [(b, h0, w0), (b, h1, w0), (b, h0, w1), (b, h1, w1)]
                else:
                    reads = [(b, h0, w0)]
                inner.append((kh, (roi, p, q), reads))
            self.groups.append((kw, inner))

    def pool(self, features, out, argmax):
        """``out`` (R, ph, pw, C') = the bins' maxima of ``features`` (N, H, W, C'), and their positions h·W + w
        in ``argmax`` unless it is None (−1 and 0 for empty bins)."""
        xp = self.xp
        if self.sparse:
            keys = features if argmax is None else _keys(xp, features)
            along_w = _SlidingMax(xp, keys, None, axis=2)
            for jw, inner in self.groups:
                along_h = _SlidingMax(xp, along_w.level(jw)[0], None, axis=1)
                for jh, target, reads in inner:
                    table = along_h.level(jh)[0]
                    corners = [table[read] for read in reads]
                    best = xp.maximum(xp.maximum(corners[0], corners[1]), xp.maximum(corners[2], corners[3]))
                    _store(out, argmax, target, (best, None) if argmax is None else _unkey(best))
        else:
            height, width = features.shape[1:3]
            flat = xp.arange(height * width, dtype=numpy.int32).reshape(1, height, width, 1)
            along_w = _SlidingMax(xp, features, None if argmax is None else xp.broadcast_to(flat, features.shape),
                                  axis=2)
            for ew, inner in self.groups:
                along_h = _SlidingMax(xp, *along_w.window(ew), axis=1)
                for eh, target, (read,) in inner:
                    _store(out, argmax, target, _part(*along_h.window(eh), read))
        out[self.empty] = 0
        if argmax is not None:
            argmax[self.empty] = -1


def _store(out, argmax, target, best):
    out[target] = best[0]
    if argmax is not None:
        argmax[target] = best[1]


def _floor_log2(xp, values):
    """⌊log2 v⌋ of positive integers (anything for the others)."""
    return xp.frexp(xp.maximum(values, 1).astype(numpy.float64))[1] - 1


def _keys(xp, features):
    """int64 keys of float32 (N, H, W, C) features ordered as (value, −(h·W + w)): the high half is the
    value's bits made order-preserving as an int32 (−0 counted as +0, which ties with it), the low half
    2^32 − 1 − position."""
    bits = _order_preserving((features + numpy.float32(0)).view(numpy.int32))  # −0 + 0 = +0
    keys = bits.astype(numpy.int64) << 32
    height, width = features.shape[1:3]
    keys |= (0xFFFFFFFF - xp.arange(height * width, dtype=numpy.int64)).reshape(1, height, width, 1)
    return keys


def _unkey(keys):
    """(value, position) of ``_keys``' keys."""
    bits = _order_preserving((keys >> 32).astype(numpy.int32))
    return bits.view(numpy.float32), 0xFFFFFFFF - (keys & 0xFFFFFFFF)


def _order_preserving(bits):
    """float32 bit patterns (as int32, in place) flipped so that negative values order as ints do; the same
    flip undoes itself."""
    bits ^= (bits >> 31) & 0x7FFFFFFF
    return bits


def _distinct(xp, values):
    """The distinct values of an integer array as Python ints, ascending."""
    return [int(v) for v in xp.unique(values).tolist()]
