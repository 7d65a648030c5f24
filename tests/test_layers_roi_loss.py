"""ROIPooling, SoftmaxWithLoss, SmoothL1Loss and Accuracy: gradient checks, the original's semantics, and
independent references (a plain-loop RoI pooling written from the original's description; PyTorch)."""
import math
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pytest
from google.protobuf import text_format

from fastrcnn.errors import Error
from fastrcnn.layers.roi_pooling import round_half_away
from fastrcnn.net import Net
from fastrcnn.proto import caffe_pb2
from layer_helpers import check_gradient, make_layer, relative_error

FLT_MIN = np.finfo(np.float32).tiny


def roi_text(ph, pw, scale):
    return f'type: "ROIPooling" roi_pooling_param {{ pooled_h: {ph} pooled_w: {pw} spatial_scale: {scale} }}'


# ---------------------------------------------------------------- a plain-loop RoI pooling reference
def c_round(v):
    """C's round: halves away from zero (Decimal's ROUND_HALF_UP), on the exact value of a float32."""
    return int(Decimal(float(v)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def roi_pool_loop(x, rois, ph, pw, scale):
    """Forward and argmax of caffe-fast-rcnn's ROIPoolingLayer, one RoI, channel and bin at a time."""
    n, c, h, w = x.shape
    out = np.zeros((len(rois), c, ph, pw), x.dtype)
    arg = -np.ones((len(rois), c, ph, pw), np.int64)
    scale = np.float32(scale)
    for r, roi in enumerate(rois):
        b = int(roi[0])
        xs, ys, xe, ye = (c_round(np.float32(v) * scale) for v in roi[1:])
        bin_h = np.float32(max(ye - ys + 1, 1)) / np.float32(ph)
        bin_w = np.float32(max(xe - xs + 1, 1)) / np.float32(pw)
        for ch in range(c):
            for i in range(ph):
                hs = min(max(math.floor(np.float32(i) * bin_h) + ys, 0), h)
                he = min(max(math.ceil(np.float32(i + 1) * bin_h) + ys, 0), h)
                for j in range(pw):
                    ws = min(max(math.floor(np.float32(j) * bin_w) + xs, 0), w)
                    we = min(max(math.ceil(np.float32(j + 1) * bin_w) + xs, 0), w)
                    if he <= hs or we <= ws:
                        continue
                    best = -np.finfo(np.float32).max
                    for hh in range(hs, he):
                        for ww in range(ws, we):
                            if x[b, ch, hh, ww] > best:
                                best, arg[r, ch, i, j] = x[b, ch, hh, ww], hh * w + ww
                    out[r, ch, i, j] = best
    return out, arg


def random_rois(rng, count, num, height, width, scale):
    """RoIs of every kind: inside, across the border, outside, malformed (x2 < x1), on scaled .5 points,
    with fractional batch indices."""
    span_w, span_h = width / scale, height / scale
    x = rng.uniform(-0.3 * span_w, 1.3 * span_w, (count, 2))
    y = rng.uniform(-0.3 * span_h, 1.3 * span_h, (count, 2))
    rois = np.column_stack([rng.integers(0, num, count) + rng.uniform(0, 0.99, count),
                            x.min(1), y.min(1), x.max(1), y.max(1)])
    rois[::5, 1:] = rois[::5, [3, 4, 1, 2]]  # malformed
    half = (np.arange(count) % 3) == 1       # coordinates whose scaled value ends in .5
    rois[half, 1:] = (np.floor(rois[half, 1:] * scale) + 0.5) / scale
    return rois.astype(np.float32)


def test_roi_pooling_test_phase_computes_argmax_only_on_demand():
    """A TEST-phase forward skips the argmax; max_idx and backward compute it then, as a TRAIN forward does."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 4, 9, 11)).astype(np.float32)
    rois = random_rois(rng, 20, 2, 9, 11, 0.5)
    grads = {}
    for phase in ("TRAIN", "TEST"):
        layer, bottom, top = make_layer(roi_text(3, 2, 0.5), [x, rois], phase=phase, dtype=np.float32)
        assert layer._argmax_ready == (phase == "TRAIN")
        top[0].diff[...] = rng.standard_normal(top[0].shape) if phase == "TRAIN" else grads["dy"]
        grads["dy"] = top[0].diff.copy()
        layer.backward(top, [True, False], bottom)
        grads[phase] = (top[0].data.copy(), layer.max_idx.copy(), bottom[0].diff.copy())
    for train, test in zip(grads["TRAIN"], grads["TEST"]):
        np.testing.assert_array_equal(train, test)


@pytest.mark.parametrize("ph, pw, scale", [(6, 6, 1.0), (2, 3, 0.0625), (7, 7, 0.0625), (3, 1, 0.5)])
def test_roi_pooling_matches_loop_reference(ph, pw, scale):
    rng = np.random.default_rng(ph * 10 + pw)
    x = rng.standard_normal((2, 3, 9, 11)).astype(np.float32)
    rois = random_rois(rng, 15, 2, 9, 11, scale)
    layer, bottom, top = make_layer(roi_text(ph, pw, scale), [x, rois], dtype=np.float32)
    want, want_arg = roi_pool_loop(x, rois, ph, pw, scale)
    np.testing.assert_array_equal(top[0].data, want)
    np.testing.assert_array_equal(layer.max_idx, want_arg)


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_roi_pooling_many_bins_of_one_extent_match_loop_reference(phase):
    """Groups of bins with one extent large enough to take the whole-map window (not the per-bin reads)."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 2, 8, 9)).astype(np.float32)
    corner = rng.integers(0, 5, (300, 2)).astype(np.float32)
    rois = np.column_stack([np.zeros(300), corner, corner + 3]).astype(np.float32)  # every RoI 4×4: 2×2 bins
    layer, bottom, top = make_layer(roi_text(2, 2, 1.0), [x, rois], phase=phase, dtype=np.float32)
    want, want_arg = roi_pool_loop(x, rois, 2, 2, 1.0)
    np.testing.assert_array_equal(top[0].data, want)
    np.testing.assert_array_equal(layer.max_idx, want_arg)


def test_roi_pooling_ties_match_loop_reference():
    """Many equal values: the first maximum in row-major order wins, as in the original's loop."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 3, (2, 4, 10, 12)).astype(np.float32)
    rois = random_rois(rng, 20, 2, 10, 12, 0.5)
    layer, bottom, top = make_layer(roi_text(3, 4, 0.5), [x, rois], dtype=np.float32)
    want, want_arg = roi_pool_loop(x, rois, 3, 4, 0.5)
    np.testing.assert_array_equal(top[0].data, want)
    np.testing.assert_array_equal(layer.max_idx, want_arg)


def test_roi_pooling_signed_zeros_tie_and_negatives_order():
    """−0 ties with +0 (the first wins, as the original's ``>`` keeps it), and negative values order by
    value."""
    x = np.array([[[[-0.0, 0.0, -3.0], [-1.0, -0.5, -2.0]]]], np.float32)
    rois = np.array([[0, 0, 0, 2, 1], [0, 0, 1, 2, 1], [0, 2, 0, 2, 1]], np.float32)
    layer, bottom, top = make_layer(roi_text(1, 1, 1.0), [x, rois], dtype=np.float32)
    np.testing.assert_array_equal(layer.max_idx.ravel(), [0, 4, 5])
    np.testing.assert_array_equal(top[0].data.ravel(), [0.0, -0.5, -2.0])


def test_roi_pooling_first_max_wins_on_a_constant_map():
    x = np.full((1, 1, 5, 5), 3.0)
    rois = np.array([[0, 0, 0, 4, 4], [0, 1, 2, 4, 4]], np.float64)
    layer, bottom, top = make_layer(roi_text(2, 2, 1.0), [x, rois])
    # Bins of roi 0: rows [0,3) [2,5), cols [0,3) [2,5): each argmax is its window's top-left pixel.
    np.testing.assert_array_equal(layer.max_idx[0, 0], [[0, 2], [10, 12]])
    np.testing.assert_array_equal(top[0].data, 3.0)
    top[0].diff[...] = 1
    layer.backward(top, [True, False], bottom)
    assert bottom[0].diff.sum() == 8 and bottom[0].diff[0, 0, 0, 0] == 1


def test_round_half_away_from_zero():
    v = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, 3.4999998, -1.5], np.float32)
    np.testing.assert_array_equal(round_half_away(np, v), [1, 2, 3, -1, -3, 0, 3, -2])


def test_roi_pooling_rounds_half_away_not_to_even():
    """x1 = y1 = 8 px at scale 1/16 is 0.5: the original pools from column/row 1, numpy.round from 0."""
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, :] = x[0, 0, :, 0] = 100  # only reachable when the window starts at 0
    x[0, 0, 1:, 1:] = np.arange(9).reshape(3, 3)
    rois = np.array([[0, 8, 8, 40, 40]], np.float32)  # scaled: 0.5 .. 2.5 -> [1, 3]
    layer, bottom, top = make_layer(roi_text(1, 1, 0.0625), [x, rois], dtype=np.float32)
    assert top[0].data.item() == 8.0
    assert layer.max_idx.item() == 3 * 4 + 3
    assert np.round(np.float32(0.5)) == 0  # numpy's rounding would have let the 100s in


def test_roi_pooling_bin_edges_use_float32_products():
    """7 bins over 57 rows: float32 7·(57/7) = 57.0000038, so the last bin ends at ceil = 58 and takes in
    row 57 past the RoI; over 29 rows 7·(29/7) = 29.0 exactly in float32 (29.000000000000004 in float64)."""
    x = np.zeros((1, 1, 60, 1), np.float32)
    x[0, 0, 57] = x[0, 0, 29] = 100
    rois = np.array([[0, 0, 0, 0, 56], [0, 0, 0, 0, 28]], np.float32)
    layer, bottom, top = make_layer(roi_text(7, 1, 1.0), [x, rois], dtype=np.float32)
    assert top[0].data[0, 0, 6, 0] == 100 and layer.max_idx[0, 0, 6, 0] == 57
    assert top[0].data[1, 0, 6, 0] == 0 and layer.max_idx[1, 0, 6, 0] == 24


def test_roi_pooling_empty_bins_give_zero():
    x = -np.ones((1, 2, 4, 4))
    rois = np.array([[0, 100, 100, 120, 120],   # outside: every bin clips to [4, 4)
                     [0, -9, 0, -5, 3]], np.float64)  # left of the map
    layer, bottom, top = make_layer(roi_text(2, 2, 1.0), [x, rois])
    np.testing.assert_array_equal(top[0].data, 0)
    np.testing.assert_array_equal(layer.max_idx, -1)
    top[0].diff[...] = 1
    layer.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff, 0)


def test_roi_pooling_malformed_roi_pools_one_pixel_and_gets_its_gradient():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 8, 8))
    rois = np.array([[0, 5, 4, 2, 1]], np.float64)  # x2 < x1, y2 < y1: forced to 1×1 at (y=4, x=5)
    layer, bottom, top = make_layer(roi_text(2, 2, 1.0), [x, rois])
    np.testing.assert_array_equal(top[0].data, np.broadcast_to(x[0, :, 4, 5][:, None, None], (2, 2, 2))[None])
    np.testing.assert_array_equal(layer.max_idx, 4 * 8 + 5)
    top[0].diff[...] = rng.standard_normal(top[0].shape)
    layer.backward(top, [True, False], bottom)
    want = np.zeros_like(x)
    want[0, :, 4, 5] = top[0].diff[0].sum(axis=(1, 2))
    np.testing.assert_allclose(bottom[0].diff, want, rtol=1e-12)


def test_roi_pooling_batch_index_truncates_and_is_checked():
    x = np.stack([np.zeros((1, 3, 3)), np.ones((1, 3, 3))])
    layer, bottom, top = make_layer(roi_text(1, 1, 1.0), [x, np.array([[1.9, 0, 0, 2, 2]])])
    assert top[0].data.item() == 1.0
    for bad in (2.0, -1.0):
        bottom[1].data[0, 0] = bad
        with pytest.raises(Error, match=rf"batch index {int(bad)}, outside \[0, 2\)"):
            layer.forward(bottom, top)


def test_roi_pooling_reshapes_to_each_roi_count():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 6, 6))
    layer, bottom, top = make_layer(roi_text(2, 2, 1.0), [x, np.tile([0, 0, 0, 5, 5], (4, 1))])
    assert top[0].shape == (4, 3, 2, 2)
    for count in (1, 0, 3):
        bottom[1].reshape(count, 5)
        bottom[1].data[...] = [0, 1, 1, 4, 4]
        layer.reshape(bottom, top)
        layer.forward(bottom, top)
        assert top[0].shape == (count, 3, 2, 2) and layer.max_idx.shape == (count, 3, 2, 2)
        top[0].diff[...] = 1
        layer.backward(top, [True, True], bottom)
        assert bottom[0].diff.sum() == 12 * count
        np.testing.assert_array_equal(bottom[1].diff, 0)


@pytest.mark.parametrize("text, match", [
    (roi_text(0, 2, 1.0), "pooled_h must be positive, got 0"),
    (roi_text(2, 0, 1.0), "pooled_w must be positive, got 0"),
    (roi_text(2, 2, 0), "spatial_scale must be positive, got 0"),
    (roi_text(2, 2, -0.0625), "spatial_scale must be positive, got -0.0625"),
])
def test_roi_pooling_rejects_bad_parameters(text, match):
    with pytest.raises(Error, match=match):
        make_layer(text, [np.zeros((1, 1, 4, 4)), np.zeros((1, 5))])


def test_roi_pooling_rejects_bad_shapes():
    with pytest.raises(Error, match=r"rois\) must have shape \(R, 5\).*\(3, 4\)"):
        make_layer(roi_text(2, 2, 1.0), [np.zeros((1, 1, 4, 4)), np.zeros((3, 4))])
    with pytest.raises(Error, match=r"must be 4-D.*\(4, 4\)"):
        make_layer(roi_text(2, 2, 1.0), [np.zeros((4, 4)), np.zeros((3, 5))])


def test_roi_pooling_gradient_original_test_case():
    """caffe-fast-rcnn's test_roi_pooling_layer.cpp: 4×3×12×8 input ~ N(0, 10²), four RoIs, 6×6, scale 1."""
    x = np.random.default_rng(1701).normal(0, 10, (4, 3, 12, 8))
    rois = np.array([[0, 1, 1, 6, 6], [2, 6, 2, 7, 11], [1, 3, 1, 5, 10], [0, 3, 3, 3, 3]], np.float64)
    layer, bottom, top = make_layer(roi_text(6, 6, 1.0), [x, rois])
    np.testing.assert_array_equal(top[0].data, roi_pool_loop(x, rois, 6, 6, 1.0)[0])
    check_gradient(layer, bottom, top, check_bottoms=[0])


def test_roi_pooling_gradient_on_half_points_at_one_sixteenth():
    x = np.random.default_rng(5).normal(0, 10, (2, 2, 5, 6))
    rois = np.array([[0, 8, 24, 40, 56], [1, 24, 8, 72, 40], [1, 8, 8, 8, 8], [0, 40, 24, 88, 72]], np.float64)
    layer, bottom, top = make_layer(roi_text(3, 2, 0.0625), [x, rois])
    want, want_arg = roi_pool_loop(x, rois, 3, 2, 0.0625)
    np.testing.assert_array_equal(top[0].data, want)
    np.testing.assert_array_equal(layer.max_idx, want_arg)
    check_gradient(layer, bottom, top, check_bottoms=[0])


# ---------------------------------------------------------------- SoftmaxWithLoss
def softmax_text(extra=""):
    return f'type: "SoftmaxWithLoss" {extra}'


def logits_and_labels(rng, shape=(3, 5, 2, 2), ignore=None):
    x = rng.normal(0, 2, shape)
    labels = rng.integers(0, shape[1], (shape[0],) + shape[2:]).astype(np.float64)
    if ignore is not None:
        labels.reshape(-1)[::3] = ignore
    return x, labels


NORMALISATIONS = ["FULL", "VALID", "BATCH_SIZE", "NONE"]


@pytest.mark.parametrize("mode", NORMALISATIONS)
def test_softmax_loss_gradient(mode):
    x, labels = logits_and_labels(np.random.default_rng(2), ignore=4)
    text = softmax_text(f"loss_param {{ ignore_label: 4 normalization: {mode} }}")
    layer, bottom, top = make_layer(text, [x, labels])
    check_gradient(layer, bottom, top, check_bottoms=[0])


def test_softmax_loss_gradient_2d_and_other_axis():
    rng = np.random.default_rng(3)
    layer, bottom, top = make_layer(softmax_text(), [rng.normal(0, 3, (6, 21)), rng.integers(0, 21, 6)])
    check_gradient(layer, bottom, top, check_bottoms=[0])
    x = rng.normal(0, 1, (2, 3, 4))
    layer, bottom, top = make_layer(softmax_text("softmax_param { axis: -1 }"), [x, rng.integers(0, 4, (2, 3))])
    check_gradient(layer, bottom, top, check_bottoms=[0])


def _normaliser(mode, labels, ignore, batch):
    return {"FULL": labels.size, "VALID": int((labels != ignore).sum()), "BATCH_SIZE": batch, "NONE": 1}[mode]


@pytest.mark.parametrize("mode", NORMALISATIONS)
def test_softmax_loss_matches_torch(mode):
    torch = pytest.importorskip("torch")
    x, labels = logits_and_labels(np.random.default_rng(4), ignore=2)
    text = softmax_text(f"loss_param {{ ignore_label: 2 normalization: {mode} }}")
    layer, bottom, top = make_layer(text, [x, labels])
    logits = torch.tensor(x, requires_grad=True)
    total = torch.nn.functional.cross_entropy(logits, torch.tensor(labels).long(), ignore_index=2, reduction="sum")
    loss = total / _normaliser(mode, labels, 2, x.shape[0])
    (0.7 * loss).backward()
    assert relative_error(top[0].data, loss.item()) <= 1e-5
    top[0].diff[...] = 0.7
    layer.backward(top, [True, False], bottom)
    assert relative_error(bottom[0].diff, logits.grad.numpy()) <= 1e-5


@pytest.mark.parametrize("normalize, mode", [("true", "VALID"), ("false", "BATCH_SIZE")])
def test_softmax_loss_legacy_normalize(normalize, mode):
    x, labels = logits_and_labels(np.random.default_rng(5), ignore=0)
    legacy, _, top_legacy = make_layer(softmax_text(f"loss_param {{ ignore_label: 0 normalize: {normalize} }}"),
                                       [x, labels])
    modern, _, top_modern = make_layer(softmax_text(f"loss_param {{ ignore_label: 0 normalization: {mode} }}"),
                                       [x, labels])
    assert top_legacy[0].data == pytest.approx(top_modern[0].data, rel=1e-12)


def test_softmax_loss_default_is_valid_mean_and_second_top_is_probabilities():
    x, labels = logits_and_labels(np.random.default_rng(6), shape=(8, 3))
    layer, bottom, top = make_layer(softmax_text(), [x, labels], num_tops=2)
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    np.testing.assert_allclose(top[1].data, p, rtol=1e-12)
    want = -np.log(p[np.arange(8), labels.astype(int)]).mean()
    assert top[0].data == pytest.approx(want, rel=1e-12)


def test_softmax_loss_clamps_at_flt_min():
    """p[label] = e^-200 underflows float32; the log is clamped at FLT_MIN, in float64 too."""
    for dtype in (np.float32, np.float64):
        layer, bottom, top = make_layer(softmax_text(), [np.array([[0.0, 200.0]]), np.array([0.0])], dtype=dtype)
        assert top[0].data == pytest.approx(-np.log(FLT_MIN), rel=1e-6)


def test_softmax_loss_ignores_and_truncates_labels():
    x = np.random.default_rng(7).normal(0, 1, (4, 3))
    layer, bottom, top = make_layer(softmax_text("loss_param { ignore_label: -1 }"),
                                    [x, np.array([2.7, -1, -1, 0.2])])
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    assert top[0].data == pytest.approx(-(np.log(p[0, 2]) + np.log(p[3, 0])) / 2, rel=1e-12)
    top[0].diff[...] = 1
    layer.backward(top, [True, False], bottom)
    np.testing.assert_array_equal(bottom[0].diff[1:3], 0)
    bottom[1].data[...] = -1  # every label ignored: the normaliser stays 1, the loss 0
    layer.forward(bottom, top)
    layer.backward(top, [True, False], bottom)
    assert top[0].data == 0 and not bottom[0].diff.any()


def test_softmax_loss_errors():
    x = np.zeros((4, 3))
    with pytest.raises(Error, match=r"label 3 at position 1 is out of range for 3 classes"):
        make_layer(softmax_text(), [x, np.array([0, 3, 1, 2])])
    with pytest.raises(Error, match=r"labels \(5,\) hold 5 value\(s\), but the predictions \(4, 3\) need 4"):
        make_layer(softmax_text(), [x, np.zeros(5)])
    with pytest.raises(Error, match=r"axis 2 is out of range"):
        make_layer(softmax_text("softmax_param { axis: 2 }"), [x, np.zeros(4)])
    layer, bottom, top = make_layer(softmax_text(), [x, np.zeros(4)])
    assert not layer.allow_force_backward(1)
    with pytest.raises(Error, match="cannot backpropagate to the labels"):
        layer.backward(top, [True, True], bottom)


def test_loss_weight_scales_the_gradient_through_the_net():
    text = """
        force_backward: true
        layer { name: "in" type: "Input" top: "x" top: "label"
                input_param { shape { dim: 4 dim: 3 } shape { dim: 4 } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" loss_weight: 2.5 }
    """
    net = Net(text_format.Parse(text, caffe_pb2.NetParameter()), phase="TRAIN")
    x = np.random.default_rng(8).normal(0, 1, (4, 3)).astype(np.float32)
    labels = np.array([0, 1, 2, 1], np.float32)
    net.forward(x=x, label=labels)
    diff = net.backward()["x"].copy()
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    np.testing.assert_allclose(diff, 2.5 * (p - np.eye(3)[labels.astype(int)]) / 4, rtol=1e-5, atol=1e-7)
    assert float(net.loss()) == pytest.approx(2.5 * float(net.blobs["loss"].data), rel=1e-6)


# ---------------------------------------------------------------- SmoothL1Loss
def smooth_l1_text(sigma=None):
    return 'type: "SmoothL1Loss"' + ("" if sigma is None else f" smooth_l1_loss_param {{ sigma: {sigma} }}")


def regression_case(rng, sigma, rois=6, width=8, weights=0):
    """pred, target and ``weights`` weight blobs whose d = w_in·(pred − target) lie on both sides of the
    kink |d| = 1/σ², never within 2 % of it."""
    knee = 1.0 / sigma ** 2
    scale = rng.choice([0.3, 0.7, 0.97, 1.03, 1.5, 3.0], (rois, width)) * rng.choice([-1, 1], (rois, width))
    w_in = rng.uniform(0.5, 2.0, (rois, width)) if weights else np.ones((rois, width))
    w_in[rng.random((rois, width)) < 0.25] = 0
    target = rng.normal(0, 1, (rois, width))
    pred = target + scale * knee / np.where(w_in == 0, 1, w_in)
    blobs = [pred, target] + [w_in, rng.uniform(0.0, 2.0, (rois, width))][:weights]
    return blobs


@pytest.mark.parametrize("sigma", [1.0, 3.0])
@pytest.mark.parametrize("weights", [0, 1, 2])
def test_smooth_l1_gradient(sigma, weights):
    blobs = regression_case(np.random.default_rng(int(sigma) * 10 + weights), sigma, weights=weights)
    layer, bottom, top = make_layer(smooth_l1_text(sigma), blobs)
    check_gradient(layer, bottom, top, check_bottoms=[0, 1])


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_smooth_l1_matches_torch(sigma):
    torch = pytest.importorskip("torch")
    pred, target, w_in, w_out = regression_case(np.random.default_rng(11), sigma, weights=2)
    layer, bottom, top = make_layer(smooth_l1_text(sigma), [pred, target, w_in, w_out])
    p, t = torch.tensor(pred, requires_grad=True), torch.tensor(target, requires_grad=True)
    wi, wo = torch.tensor(w_in), torch.tensor(w_out)
    per_element = torch.nn.functional.smooth_l1_loss(wi * p, wi * t, beta=1 / sigma ** 2, reduction="none")
    loss = (wo * per_element).sum() / pred.shape[0]
    (1.3 * loss).backward()
    assert relative_error(top[0].data, loss.item()) <= 1e-5
    top[0].diff[...] = 1.3
    layer.backward(top, [True, True, False, False], bottom)
    assert relative_error(bottom[0].diff, p.grad.numpy()) <= 1e-5
    assert relative_error(bottom[1].diff, t.grad.numpy()) <= 1e-5


def test_smooth_l1_divides_by_all_rois_not_foreground():
    """8 RoIs, 2 of them foreground (weights 1 on one class's 4 columns): the loss is Σf / 8."""
    target = np.zeros((8, 8))
    pred = np.full((8, 8), 0.5)
    weights = np.zeros((8, 8))
    weights[:2, 4:] = 1
    layer, bottom, top = make_layer(smooth_l1_text(), [pred, target, weights])
    assert top[0].data == pytest.approx(8 * 0.5 * 0.25 / 8)
    top[0].diff[...] = 1
    layer.backward(top, [True, False, False], bottom)
    np.testing.assert_allclose(bottom[0].diff, weights * 0.5 / 8)


def test_smooth_l1_sigma_moves_the_kink():
    pred, target = np.array([[0.2, -0.05, 1.0]]), np.zeros((1, 3))
    layer, _, top = make_layer(smooth_l1_text(3.0), [pred, target])
    # 1/σ² = 1/9: 0.2 and 1.0 are linear (|d| − 1/18), 0.05 quadratic (4.5·d²).
    assert top[0].data == pytest.approx((0.2 - 1 / 18) + 4.5 * 0.05 ** 2 + (1.0 - 1 / 18))


def test_smooth_l1_errors():
    with pytest.raises(Error, match=r"'bbox_targets' have shape \(3, 8\), but the predictions 'bbox_pred' "
                                    r"have shape \(3, 84\); num_output .* must be 4 × \(number of classes"):
        make_layer('type: "SmoothL1Loss" bottom: "bbox_pred" bottom: "bbox_targets"',
                   [np.zeros((3, 84)), np.zeros((3, 8))])
    with pytest.raises(Error, match=r"inside weights bottom 2 have shape \(2, 8\)"):
        make_layer(smooth_l1_text(), [np.zeros((3, 8)), np.zeros((3, 8)), np.zeros((2, 8))])
    for sigma in ("0", "-1"):
        with pytest.raises(Error, match=f"sigma must be positive, got {sigma}"):
            make_layer(smooth_l1_text(sigma), [np.zeros((3, 8)), np.zeros((3, 8))])
    layer, bottom, top = make_layer(smooth_l1_text(), [np.zeros((3, 8))] * 3)
    assert [layer.allow_force_backward(i) for i in range(3)] == [True, True, False]
    with pytest.raises(Error, match="cannot backpropagate to the loss weights"):
        layer.backward(top, [True, False, True], bottom)


# ---------------------------------------------------------------- Accuracy
def test_accuracy_top_k_ignore_and_per_class():
    scores = np.array([[0.1, 0.5, 0.4],   # label 1: best          -> top1 yes
                       [0.3, 0.3, 0.4],   # label 0: tie for 2nd   -> top1 no, top2 yes
                       [0.6, 0.1, 0.3],   # label 2: 2nd           -> top1 no, top2 yes
                       [0.2, 0.2, 0.6],   # ignored
                       [0.7, 0.2, 0.1]])  # label 0: best          -> top1 yes
    labels = np.array([1, 0, 2, 5, 0])
    text = 'type: "Accuracy" accuracy_param {{ top_k: {} ignore_label: 5 }}'
    _, _, top = make_layer(text.format(1), [scores, labels], num_tops=2)
    assert top[0].data == pytest.approx(2 / 4)
    np.testing.assert_allclose(top[1].data, [1 / 2, 1, 0])
    _, _, top = make_layer(text.format(2), [scores, labels], num_tops=2)
    assert top[0].data == pytest.approx(1.0)
    np.testing.assert_allclose(top[1].data, [1, 1, 1])


def test_accuracy_counts_ties_as_found_and_checks_top_k():
    _, _, top = make_layer('type: "Accuracy"', [np.full((2, 4), 0.25), np.array([3, 0])])
    assert top[0].data == 1.0
    with pytest.raises(Error, match=r"top_k \(5\) must not exceed the number of classes \(4\)"):
        make_layer('type: "Accuracy" accuracy_param { top_k: 5 }', [np.zeros((2, 4)), np.zeros(2)])
    with pytest.raises(Error, match=r"label 4 at position 0 is out of range for 4 classes"):
        make_layer('type: "Accuracy"', [np.zeros((2, 4)), np.array([4, 0])])
