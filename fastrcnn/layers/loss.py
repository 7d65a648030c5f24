"""Loss layers: SoftmaxWithLoss and Accuracy (BVLC Caffe), SmoothL1Loss (Fast R-CNN, with py-faster-rcnn's
sigma and inside/outside weights).

Loss tops are scalars. The Net puts each loss top's weight into its diff before backward, and the bottom
gradients are scaled by it (Caffe's convention).
"""
import math

import numpy

from ..proto import caffe_pb2
from . import register
from .activation import canonical_axis, softmax
from .base import Layer

#: Caffe clamps probabilities at FLT_MIN before the log (in the float and the double model alike).
FLT_MIN = float(numpy.finfo(numpy.float32).tiny)
_MODES = caffe_pb2.LossParameter


def _class_axis(layer, bottom, axis):
    """(axis, outer, classes, inner) of a prediction bottom, after checking that the label bottom holds
    one label per position outside the class axis (Caffe's outer_num × inner_num)."""
    shape = bottom[0].shape
    axis = canonical_axis(layer, axis, len(shape))
    outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
    if bottom[1].count != outer * inner:
        raise layer.error(f"the labels {bottom[1].shape} hold {bottom[1].count} value(s), but the predictions "
                          f"{shape} need {outer * inner}: one per position outside the class axis {axis} "
                          f"(predictions (N, C, H, W) with axis 1 need N·H·W labels)")
    return axis, outer, shape[axis], inner


def _labels(layer, xp, blob, outer, inner, classes, ignore_label):
    """Labels cast to int by truncation as (outer, inner), ignored ones replaced by 0, and the mask of the
    labels that count. A label outside [0, classes) is an error."""
    label = xp.trunc(blob.data.reshape(outer, inner)).astype(numpy.int64)
    valid = label != ignore_label if ignore_label is not None else xp.ones(label.shape, dtype=bool)
    bad = xp.flatnonzero(valid & ((label < 0) | (label >= classes)))
    if bad.size:
        i = int(bad[0])
        ignored = f" (or ignore_label {ignore_label})" if ignore_label is not None else ""
        raise layer.error(f"label {int(label.reshape(-1)[i])} at position {i} is out of range for "
                          f"{classes} classes: labels must lie in 0..{classes - 1}{ignored}")
    return xp.where(valid, label, 0), valid


def _optional(message, field):
    return getattr(message, field) if message.HasField(field) else None


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(Layer):
    """Multinomial logistic loss of a softmax: −Σ log(max(p[label], FLT_MIN)) / normaliser.

    The softmax runs along ``softmax_param.axis`` (default 1); labels (one per other position) arrive as
    floats and are truncated to int. ``loss_param.normalization``: VALID (default; the number of labels
    that are not ``ignore_label``), FULL (all positions), BATCH_SIZE (the positions before the axis), NONE
    (1); the normaliser is at least 1. The legacy ``normalize: false`` means BATCH_SIZE, ``true`` VALID.
    An optional second top gets the probabilities. Gradient: (p − onehot) · top diff / normaliser, zero
    at ignored positions; the labels get none.
    """

    exact_bottoms = 2
    min_tops, max_tops = 1, 2
    is_loss = True

    def setup(self, bottom, top):
        p = self.param.loss_param
        self.ignore_label = _optional(p, "ignore_label")
        if not p.HasField("normalization") and p.HasField("normalize"):
            self.normalization = _MODES.VALID if p.normalize else _MODES.BATCH_SIZE
        else:
            self.normalization = p.normalization

    def _normaliser(self, xp, valid, dtype):
        """The divisor of the summed loss (Caffe's get_normalizer), at least 1."""
        if self.normalization == _MODES.VALID:
            n = valid.sum()
        elif self.normalization == _MODES.FULL:
            n = valid.size
        elif self.normalization == _MODES.BATCH_SIZE:
            n = self.outer
        else:
            n = 1
        return xp.maximum(xp.asarray(n, dtype=dtype), 1)

    def allow_force_backward(self, bottom_index):
        return bottom_index == 0

    def reshape(self, bottom, top):
        self.axis, self.outer, self.classes, self.inner = _class_axis(
            self, bottom, self.param.softmax_param.axis)
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        xp = self.xp(bottom[0])
        self.prob = softmax(bottom[0].data, self.axis)
        self.label, self.valid = _labels(self, xp, bottom[1], self.outer, self.inner, self.classes,
                                         self.ignore_label)
        prob = self.prob.reshape(self.outer, self.classes, self.inner)
        p_true = xp.take_along_axis(prob, self.label[:, None, :], axis=1)[:, 0, :]
        log_p = xp.log(xp.maximum(p_true, FLT_MIN)) * self.valid
        self.normaliser = self._normaliser(xp, self.valid, bottom[0].dtype)
        top[0].data[...] = -log_p.sum() / self.normaliser
        if len(top) > 1:
            top[1].data[...] = self.prob

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            raise self.error("cannot backpropagate to the labels (bottom 1); set propagate_down: false for it")
        if not propagate_down[0]:
            return
        xp = self.xp(bottom[0])
        onehot = xp.arange(self.classes)[None, :, None] == self.label[:, None, :]
        grad = self.prob.reshape(self.outer, self.classes, self.inner) - onehot
        grad *= self.valid[:, None, :] * (top[0].diff / self.normaliser)
        bottom[0].diff[...] = grad.reshape(bottom[0].shape)


@register("Accuracy")
class Accuracy(Layer):
    """Top-k accuracy (BVLC Caffe): a label counts as found when fewer than ``top_k`` classes score
    strictly higher than it (so ties count as found). Labels equal to ``ignore_label`` are skipped; with
    no labels left the accuracy is 0. An optional second top gets the accuracy of each class (0 for a
    class without labels). No backward.
    """

    exact_bottoms = 2
    min_tops, max_tops = 1, 2

    def setup(self, bottom, top):
        p = self.param.accuracy_param
        self.top_k = self.positive("accuracy_param.top_k", p.top_k)
        self.ignore_label = _optional(p, "ignore_label")

    def allow_force_backward(self, bottom_index):
        return False

    def reshape(self, bottom, top):
        self.axis, self.outer, self.classes, self.inner = _class_axis(
            self, bottom, self.param.accuracy_param.axis)
        if self.top_k > self.classes:
            raise self.error(f"accuracy_param.top_k ({self.top_k}) must not exceed the number of classes "
                             f"({self.classes})")
        top[0].reshape(())
        if len(top) > 1:
            top[1].reshape(self.classes)

    def forward(self, bottom, top):
        xp = self.xp(bottom[0])
        label, valid = _labels(self, xp, bottom[1], self.outer, self.inner, self.classes, self.ignore_label)
        scores = bottom[0].data.reshape(self.outer, self.classes, self.inner)
        true_score = xp.take_along_axis(scores, label[:, None, :], axis=1)
        found = valid & ((scores > true_score).sum(axis=1) < self.top_k)
        counted = valid.sum()
        top[0].data[...] = found.sum() / xp.maximum(counted, 1)
        if len(top) > 1:
            per_class = xp.bincount(label[valid], minlength=self.classes)
            hits = xp.bincount(label[found], minlength=self.classes)
            top[1].data[...] = hits / xp.maximum(per_class, 1)

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down):
            raise self.error("has no backward; set propagate_down: false for its bottoms")


@register("SmoothL1Loss")
class SmoothL1Loss(Layer):
    """Fast R-CNN's bounding-box loss, with py-faster-rcnn's ``smooth_l1_loss_param.sigma`` (default 1).

    Bottoms: pred, target (same shape (R, ...)), then optionally inside weights w_in and outside weights
    w_out. d = w_in ⊙ (pred − target); f(d) = 0.5·σ²·d² where |d| < 1/σ², else |d| − 0.5/σ²;
    loss = Σ w_out ⊙ f(d) / R, where R is the number of RoIs (bottom 0's first axis), not the number of
    foreground RoIs. With 3 bottoms the third is w_in (Fast R-CNN's bbox_loss_weights).

    Gradient to pred: top diff · w_out ⊙ f'(d) ⊙ w_in / R; to target its negative; the weights get none.
    The original does not multiply by the weights again in backward; for its 0/1 weights that is the same.
    """

    min_bottoms, max_bottoms = 2, 4
    exact_tops = 1
    is_loss = True
    _ROLES = ("predictions", "targets", "inside weights", "outside weights")

    def setup(self, bottom, top):
        sigma = self.param.smooth_l1_loss_param.sigma
        if not sigma > 0:
            raise self.error(f"smooth_l1_loss_param.sigma must be positive, got {sigma}")
        self.sigma2 = float(sigma) ** 2

    def allow_force_backward(self, bottom_index):
        return bottom_index < 2

    def _bottom_name(self, i):
        names = self.param.bottom
        return f"'{names[i]}'" if i < len(names) else f"bottom {i}"

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        for i in range(1, len(bottom)):
            other = bottom[i].shape
            if other == shape:
                continue
            hint = ""
            if len(other) == len(shape) >= 2 and other[0] == shape[0] and other[2:] == shape[2:]:
                hint = (f"; num_output of the layer producing {self._bottom_name(0)} must be 4 × (number of "
                        f"classes incl. background), the width of {self._bottom_name(i)}")
            raise self.error(f"{self._ROLES[i]} {self._bottom_name(i)} have shape {other}, but the "
                             f"predictions {self._bottom_name(0)} have shape {shape}{hint}")
        self.normaliser = max(shape[0], 1)  # R, the number of RoIs
        top[0].reshape(())

    def forward(self, bottom, top):
        xp = self.xp(bottom[0])
        d = bottom[0].data - bottom[1].data
        if len(bottom) > 2:
            d *= bottom[2].data
        abs_d = xp.abs(d)
        self.quadratic = abs_d < 1.0 / self.sigma2
        f = xp.where(self.quadratic, (0.5 * self.sigma2) * d * d, abs_d - 0.5 / self.sigma2)
        if len(bottom) > 3:
            f *= bottom[3].data
        self.d = d
        top[0].data[...] = f.sum() / self.normaliser

    def backward(self, top, propagate_down, bottom):
        if any(propagate_down[2:]):
            raise self.error("cannot backpropagate to the loss weights (bottoms 2 and 3); "
                             "set propagate_down: false for them")
        if not (propagate_down[0] or propagate_down[1]):
            return
        xp = self.xp(bottom[0])
        grad = xp.where(self.quadratic, self.sigma2 * self.d, xp.sign(self.d))
        for w in bottom[2:]:
            grad *= w.data
        grad *= top[0].diff / self.normaliser
        if propagate_down[0]:
            bottom[0].diff[...] = grad
        if propagate_down[1]:
            bottom[1].diff[...] = -grad
