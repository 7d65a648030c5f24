"""fastrcnn.rcnn.boxes against hand values and scalar re-statements of the original's Cython loops."""
import math

import numpy as np
import pytest

from fastrcnn.errors import Error
from fastrcnn.rcnn.boxes import (EPS, bbox_overlaps, bbox_transform, bbox_transform_inv, clip_boxes, flip_boxes,
                                 nms)


def _random_boxes(rng, n, size=100.0, integer=False):
    x1 = rng.uniform(0, size, n)
    y1 = rng.uniform(0, size, n)
    boxes = np.stack([x1, y1, x1 + rng.uniform(0, size / 2, n), y1 + rng.uniform(0, size / 2, n)], axis=1)
    return np.floor(boxes) if integer else boxes


# ---------------------------------------------------------------- IoU

def _overlaps_loop(boxes, query):
    """The original's cython_bbox.bbox_overlaps, element by element in float64."""
    out = np.zeros((len(boxes), len(query)))
    for k, q in enumerate(query.tolist()):
        q_area = (q[2] - q[0] + 1) * (q[3] - q[1] + 1)
        for n, b in enumerate(boxes.tolist()):
            iw = min(b[2], q[2]) - max(b[0], q[0]) + 1
            if iw > 0:
                ih = min(b[3], q[3]) - max(b[1], q[1]) + 1
                if ih > 0:
                    ua = (b[2] - b[0] + 1) * (b[3] - b[1] + 1) + q_area - iw * ih
                    out[n, k] = iw * ih / ua
    return out


def test_overlaps_hand_values():
    query = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [10, 0, 19, 9], [9, 9, 18, 18]], np.uint16)
    got = bbox_overlaps(np.array([[0, 0, 9, 9]], np.uint16), query)
    # identical: 1; half-shifted: 50 / (100 + 100 - 50); touching edges: iw = 9 - 10 + 1 = 0 -> 0;
    # one shared pixel: 1 / 199
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, [[1.0, 50 / 150, 0.0, 1 / 199]])


@pytest.mark.parametrize("integer", [False, True])
def test_overlaps_equal_loop(integer):
    rng = np.random.default_rng(0)
    boxes, query = _random_boxes(rng, 40, integer=integer), _random_boxes(rng, 30, integer=integer)
    np.testing.assert_array_equal(bbox_overlaps(boxes, query), _overlaps_loop(boxes, query))


def test_overlaps_empty_and_bad_shapes():
    assert bbox_overlaps(np.zeros((0, 4)), np.ones((3, 4))).shape == (0, 3)
    assert bbox_overlaps(np.ones((2, 4)), []).shape == (2, 0)
    with pytest.raises(Error, match="bbox_overlaps query"):
        bbox_overlaps(np.ones((2, 4)), np.ones((2, 5)))


# ---------------------------------------------------------------- regression targets and decoding

def test_targets_hand_values():
    ex = np.array([[0, 0, 9, 19]], np.uint16)
    gt = np.array([[2, 4, 21, 23]], np.uint16)
    # ex: w = 9, h = 19 (+EPS), centre (4.5, 9.5); gt: w = 19, h = 19, centre (11.5, 13.5)
    expected = [[(11.5 - 4.5) / 9, (13.5 - 9.5) / 19, math.log(19 / 9), 0.0]]
    np.testing.assert_allclose(bbox_transform(ex, gt), expected, rtol=1e-12, atol=1e-12)


def test_decode_hand_values():
    boxes = np.array([[0, 0, 9, 19]], np.uint16)
    deltas = np.array([[0, 0, 0, 0, 0.1, -0.2, math.log(2), 0.0]], np.float32)
    # class 1: w = 9, h = 19, centre (4.5, 9.5) -> centre (5.4, 5.7), size (18, 19)
    expected = [[0, 0, 9, 19, 5.4 - 9, 5.7 - 9.5, 5.4 + 9, 5.7 + 9.5]]
    got = bbox_transform_inv(boxes, deltas)
    assert got.dtype == np.float64 and got.shape == (1, 8)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_decode_arithmetic_is_the_originals():
    """exp(dw) in the deltas' float32, the rest in float64, as ``_bbox_pred``."""
    rng = np.random.default_rng(1)
    boxes = _random_boxes(rng, 20)
    deltas = rng.normal(0, 0.5, (20, 12)).astype(np.float32)
    w = (boxes[:, 2] - boxes[:, 0] + EPS)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + EPS)[:, None]
    cx, cy = boxes[:, :1] + 0.5 * w, boxes[:, 1:2] + 0.5 * h
    pcx, pcy = deltas[:, 0::4] * w + cx, deltas[:, 1::4] * h + cy
    pw, ph = np.exp(deltas[:, 2::4]) * w, np.exp(deltas[:, 3::4]) * h
    got = bbox_transform_inv(boxes, deltas)
    for c, expected in enumerate([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph]):
        np.testing.assert_array_equal(got[:, c::4], expected)


def test_targets_decode_round_trip():
    rng = np.random.default_rng(2)
    ex, gt = _random_boxes(rng, 50), _random_boxes(rng, 50)
    decoded = bbox_transform_inv(ex, bbox_transform(ex, gt))
    # +EPS widths: decoding the targets gives back x1, y1 and x2 + EPS, y2 + EPS
    np.testing.assert_allclose(decoded, gt, rtol=0, atol=1e-9)


def test_decode_empty_and_mismatch():
    assert bbox_transform_inv(np.zeros((0, 4)), np.zeros((0, 84), np.float32)).shape == (0, 84)
    with pytest.raises(Error, match="rows of deltas"):
        bbox_transform_inv(np.zeros((2, 4)), np.zeros((3, 8)))
    with pytest.raises(Error, match="multiple of 4"):
        bbox_transform_inv(np.zeros((2, 4)), np.zeros((2, 6)))


# ---------------------------------------------------------------- clip and flip

def test_clip_is_the_originals_four_bounds():
    boxes = np.array([[-3.0, -1.0, 12.5, 7.0, 2.0, 1.0, 5.0, 4.0],
                      [11.0, 6.0, 15.0, 9.0, -5.0, -5.0, -2.0, -1.0]])
    got = clip_boxes(boxes, (5, 10, 3))  # H = 5, W = 10
    # x1 >= 0, y1 >= 0, x2 <= 9, y2 <= 4, and nothing else (a box beyond the border keeps x1 > x2)
    np.testing.assert_array_equal(got, [[0, 0, 9, 4, 2, 1, 5, 4],
                                        [11, 6, 9, 4, 0, 0, -2, -1]])
    assert boxes[0, 0] == -3.0  # the input is left alone


def test_flip_uint16_at_zero_does_not_wrap():
    boxes = np.array([[0, 3, 0, 7], [0, 0, 9, 9], [5, 1, 19, 2]], np.uint16)
    got = flip_boxes(boxes, 20)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, [[19, 3, 19, 7], [10, 0, 19, 9], [0, 1, 14, 2]])
    assert np.all(got[:, 2] >= got[:, 0])
    np.testing.assert_array_equal(flip_boxes(got, 20), boxes)


def test_flip_out_of_image_goes_signed_and_floats_keep_dtype():
    got = flip_boxes(np.array([[2, 0, 25, 3]], np.uint16), 20)  # x2 beyond the image: x1' = 20 - 25 - 1 < 0
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, [[-6, 0, 17, 3]])
    floats = flip_boxes(np.array([[0.0, 1.0, 4.5, 2.0]], np.float32), 10)
    assert floats.dtype == np.float32
    np.testing.assert_array_equal(floats, [[4.5, 1.0, 9.0, 2.0]])


# ---------------------------------------------------------------- NMS

def _nms_loop(dets, thresh, stable=True):
    """The original's Cython nms, scalar by scalar: float32 arithmetic, the IoU compared as a double.

    ``stable``: the stable descending order of `nms`; otherwise the Cython's ``argsort()[::-1]`` (which
    differs only in the order of tied scores).
    """
    dets = dets.astype(np.float32)
    x1, y1, x2, y2, scores = (dets[:, c] for c in range(5))
    areas = (x2 - x1 + np.float32(1)) * (y2 - y1 + np.float32(1))
    order = np.argsort(-scores, kind="stable") if stable else scores.argsort()[::-1]
    suppressed = np.zeros(len(dets), bool)
    keep = []
    for _i, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        for j in order[_i + 1:]:
            if suppressed[j]:
                continue
            xx1, yy1 = max(x1[i], x1[j]), max(y1[i], y1[j])
            xx2, yy2 = min(x2[i], x2[j]), min(y2[i], y2[j])
            w = max(np.float32(0), xx2 - xx1 + np.float32(1))
            h = max(np.float32(0), yy2 - yy1 + np.float32(1))
            inter = w * h
            ovr = inter / (areas[i] + areas[j] - inter)
            assert isinstance(ovr, np.float32)
            if float(ovr) >= thresh:
                suppressed[j] = True
    return keep


def test_nms_equals_scalar_loop_on_random_sets():
    rng = np.random.default_rng(3)
    for trial in range(150):
        n = int(rng.integers(0, 50))
        boxes = _random_boxes(rng, n, size=float(rng.choice([20, 100, 1000])), integer=trial % 2 == 0)
        scores = rng.uniform(0, 1, n)
        if trial % 3 == 0:
            scores = np.round(scores, 1)  # many ties
        dets = np.hstack([boxes, scores[:, None]]).astype(np.float32)
        for thresh in (0.3, 0.5, 0.7):
            got = nms(dets, thresh)
            assert got.dtype == np.int64
            assert got.tolist() == _nms_loop(dets, thresh), (trial, thresh)
            if len(np.unique(dets[:, 4])) == n:
                assert got.tolist() == _nms_loop(dets, thresh, stable=False), (trial, thresh)


def test_nms_iou_exactly_at_threshold():
    # 1-pixel-high boxes: IoU 300 / 1000 is exactly float32(0.3), >= 0.3 -> suppressed; 299 / 1000 -> kept
    assert np.float32(300) / np.float32(1000) == np.float32(0.3)
    dets = np.array([[0, 0, 999, 0, 0.9], [0, 0, 299, 0, 0.8], [0, 0, 298, 0, 0.7]], np.float32)
    assert nms(dets, 0.3).tolist() == [0, 2]
    assert nms(dets, 0.3).tolist() == _nms_loop(dets, 0.3)
    # IoU 50 / 100 = 0.5 exactly: suppressed at 0.5 (the original's Cython ">=", not lib/utils/nms.py's "<=")
    half = np.array([[0, 0, 9, 9, 0.9], [0, 0, 9, 4, 0.8]], np.float32)
    assert nms(half, 0.5).tolist() == [0]
    # IoU 70 / 100 is float32(0.7) = 0.699999988 < 0.7 as a double: kept at 0.7, suppressed at float32(0.7)
    seven = np.array([[0, 0, 9, 9, 0.9], [0, 0, 9, 6, 0.8]], np.float32)
    assert nms(seven, 0.7).tolist() == [0, 1]
    assert nms(seven, float(np.float32(0.7))).tolist() == [0]


def test_nms_ties_keep_index_order():
    same = np.array([[0, 0, 9, 9, 0.5]] * 3, np.float32)
    assert nms(same, 0.3).tolist() == [0]
    apart = np.array([[50, 50, 59, 59, 0.5], [0, 0, 9, 9, 0.9], [20, 20, 29, 29, 0.5]], np.float32)
    assert nms(apart, 0.3).tolist() == [1, 0, 2]


def test_nms_empty_and_bad_shape():
    assert nms(np.zeros((0, 5), np.float32), 0.3).tolist() == []
    assert nms([], 0.3).dtype == np.int64
    with pytest.raises(Error, match="nms dets"):
        nms(np.zeros((3, 4)), 0.3)
