"""Box maths of the original Fast R-CNN: IoU, regression targets and decoding, clipping, flipping and NMS.

One convention throughout, the original's: boxes are ``x1, y1, x2, y2``, 0-based and inclusive, so IoU and
NMS use ``+1`` widths (``utils/bbox.pyx``, ``utils/nms.pyx``), while the regression targets and their decoding
use ``+EPS`` widths (``roi_data_layer/roidb.py``, ``fast_rcnn/test.py``; py-faster-rcnn later switched to +1).
"""
import numpy as np

from ..errors import Error

EPS = 1e-14
"""``cfg.EPS`` of the original: added to box widths and heights for the regression targets and decoding."""


def _boxes(array, name, columns=4, multiple=False):
    """``array`` as a 2-D NumPy array with ``columns`` columns (a multiple of them if ``multiple``)."""
    array = np.asarray(array)
    if array.size == 0 and (array.ndim != 2 or array.shape[1] == 0):
        array = array.reshape(0, columns)  # an empty list or array stands for no boxes
    cols = array.shape[1] if array.ndim == 2 else -1
    if array.ndim != 2 or cols == 0 or (cols % columns if multiple else cols != columns):
        kind = f"a multiple of {columns}" if multiple else str(columns)
        raise Error(f"{name}: expected an (N, {kind}) array, got shape {array.shape}")
    return array


def bbox_overlaps(boxes, query):
    """(N, K) float64 IoU of ``boxes`` (N, 4) with ``query`` (K, 4), as the original's ``cython_bbox``.

    Areas and intersections use +1; a pair's IoU is 0 unless the intersection's width and height are both
    positive; the union is ``area(box) + area(query) - intersection`` in that order, all in float64.
    """
    boxes = _boxes(boxes, "bbox_overlaps boxes").astype(np.float64)
    query = _boxes(query, "bbox_overlaps query").astype(np.float64)
    b, q = boxes[:, None, :], query[None, :, :]
    iw = np.minimum(b[..., 2], q[..., 2]) - np.maximum(b[..., 0], q[..., 0]) + 1
    ih = np.minimum(b[..., 3], q[..., 3]) - np.maximum(b[..., 1], q[..., 1]) + 1
    box_area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    query_area = (query[:, 2] - query[:, 0] + 1) * (query[:, 3] - query[:, 1] + 1)
    hit = (iw > 0) & (ih > 0)
    inter = np.where(hit, iw * ih, 0.0)
    union = box_area[:, None] + query_area[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(hit, inter / np.where(hit, union, 1.0), 0.0)


def _centres(boxes):
    """Widths, heights and centres with the original's +EPS widths (float64)."""
    boxes = boxes.astype(np.float64)
    widths = boxes[:, 2] - boxes[:, 0] + EPS
    heights = boxes[:, 3] - boxes[:, 1] + EPS
    return widths, heights, boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights


def bbox_transform(ex_rois, gt_rois):
    """(N, 4) float64 regression targets ``dx, dy, dw, dh`` taking ``ex_rois`` onto ``gt_rois`` (both (N, 4)).

    The original's ``_compute_targets``: ``dx = (gcx - cx) / w``, ``dw = log(gw / w)`` with ``w = x2 - x1 + EPS``
    and ``cx = x1 + 0.5 w``, likewise for y.
    """
    ex_rois = _boxes(ex_rois, "bbox_transform ex_rois")
    gt_rois = _boxes(gt_rois, "bbox_transform gt_rois")
    if ex_rois.shape != gt_rois.shape:
        raise Error(f"bbox_transform: ex_rois {ex_rois.shape} and gt_rois {gt_rois.shape} differ in shape")
    ew, eh, ecx, ecy = _centres(ex_rois)
    gw, gh, gcx, gcy = _centres(gt_rois)
    return np.stack([(gcx - ecx) / ew, (gcy - ecy) / eh, np.log(gw / ew), np.log(gh / eh)], axis=1)


def bbox_transform_inv(boxes, deltas):
    """(N, 4K) float64 boxes decoded from ``boxes`` (N, 4) and ``deltas`` (N, 4K), every class group at once.

    The original's ``_bbox_pred``: the boxes become float64 with +EPS widths; the deltas keep their dtype, so
    ``exp(dw)`` is taken in float32 for float32 deltas before it meets the float64 widths, and the result is
    float64 (the original fills ``np.zeros(deltas.shape)``). Centres are ``dx * w + cx`` and sizes
    ``exp(dw) * w``; the corners are the centre -/+ half the size.
    """
    boxes = _boxes(boxes, "bbox_transform_inv boxes")
    deltas = _boxes(deltas, "bbox_transform_inv deltas", multiple=True)
    if boxes.shape[0] != deltas.shape[0]:
        raise Error(f"bbox_transform_inv: {boxes.shape[0]} boxes but {deltas.shape[0]} rows of deltas")
    if boxes.shape[0] == 0:
        return np.zeros(deltas.shape)
    widths, heights, ctr_x, ctr_y = (v[:, None] for v in _centres(boxes))
    pred_ctr_x = deltas[:, 0::4] * widths + ctr_x
    pred_ctr_y = deltas[:, 1::4] * heights + ctr_y
    pred_w = np.exp(deltas[:, 2::4]) * widths
    pred_h = np.exp(deltas[:, 3::4]) * heights
    pred = np.zeros(deltas.shape)
    pred[:, 0::4] = pred_ctr_x - 0.5 * pred_w
    pred[:, 1::4] = pred_ctr_y - 0.5 * pred_h
    pred[:, 2::4] = pred_ctr_x + 0.5 * pred_w
    pred[:, 3::4] = pred_ctr_y + 0.5 * pred_h
    return pred


def clip_boxes(boxes, im_shape):
    """A copy of ``boxes`` (N, 4K) clipped to an image of shape ``(H, W, ...)``, as the original's ``_clip_boxes``.

    Exactly the original's four bounds: ``x1 >= 0``, ``y1 >= 0``, ``x2 <= W - 1``, ``y2 <= H - 1``. (A decoded
    box lying wholly beyond the right or bottom border therefore keeps ``x1 > x2``; it has no area, and every
    IoU with it is 0.)
    """
    boxes = _boxes(boxes, "clip_boxes boxes", multiple=True).copy()
    height, width = int(im_shape[0]), int(im_shape[1])
    boxes[:, 0::4] = np.maximum(boxes[:, 0::4], 0)
    boxes[:, 1::4] = np.maximum(boxes[:, 1::4], 0)
    boxes[:, 2::4] = np.minimum(boxes[:, 2::4], width - 1)
    boxes[:, 3::4] = np.minimum(boxes[:, 3::4], height - 1)
    return boxes


def flip_boxes(boxes, width):
    """``boxes`` (N, 4K) mirrored in an image ``width`` pixels wide: ``x1' = W - x2 - 1``, ``x2' = W - x1 - 1``.

    The original's ``append_flipped_images``, computed in a signed type: the original did it in uint16, where
    a box outside the image wraps around. Integer boxes come back in their own dtype when every value fits in
    it and as int64 otherwise; floating boxes keep their dtype. ``x2' - x1' == x2 - x1`` for every box.
    """
    boxes = _boxes(boxes, "flip_boxes boxes", multiple=True)
    width = int(width)
    integer = np.issubdtype(boxes.dtype, np.integer)
    flipped = boxes.astype(np.int64 if integer else boxes.dtype)
    flipped[:, 0::4] = width - boxes[:, 2::4].astype(flipped.dtype) - 1
    flipped[:, 2::4] = width - boxes[:, 0::4].astype(flipped.dtype) - 1
    if integer and flipped.size:
        info = np.iinfo(boxes.dtype)
        if info.min <= flipped.min() and flipped.max() <= info.max:
            return flipped.astype(boxes.dtype)
    return flipped


def nms(dets, thresh):
    """Greedy non-maximum suppression, as the original's Cython ``nms``; kept indices (int64), best first.

    ``dets`` (N, 5) ``[x1, y1, x2, y2, score]`` is taken as float32 (the original's typed buffer) and all the
    IoU arithmetic is float32 with +1 widths, in the original's order of operations. A box is suppressed when
    its IoU with a kept box is ``>= thresh``, the float32 IoU being compared with ``thresh`` as a double (as C
    compares a float with the Python float ``thresh``). The order is descending score by a *stable* sort of
    ``-score``, so tied scores keep their index order; the original's ``argsort()[::-1]`` leaves ties in
    whatever order NumPy's unstable sort produced, reversed. Each kept box suppresses the rest with one
    vector operation. A zero union (degenerate boxes only) suppresses nothing, where the Cython raised
    ZeroDivisionError.
    """
    dets = _boxes(np.asarray(dets, dtype=np.float32), "nms dets", columns=5)
    thresh = float(thresh)
    order = np.argsort(-dets[:, 4], kind="stable")
    x1, y1, x2, y2 = (dets[order, c] for c in range(4))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    keep = []
    rest = np.arange(len(order))
    while rest.size:
        i, rest = rest[0], rest[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):
            ovr = inter / (areas[i] + areas[rest] - inter)
        rest = rest[~(ovr.astype(np.float64) >= thresh)]
    return order[np.asarray(keep, dtype=np.int64)].astype(np.int64, copy=False)
