"""PASCAL VOC detection AP with the MATLAB devkit's rules (``VOCevaldet``, ``VOCap``), and VOC results files.

The original wrote one ``comp4_det_<set>_<cls>.txt`` per class and ran the devkit in MATLAB. This module
computes the same numbers in NumPy:

- detections are sorted by descending score with a stable sort (MATLAB's ``sort``), image order then box order
  for ties, after rounding the scores to 3 decimals and the 1-based coordinates to 1 decimal as the results
  files hold them (for float32 detections the rounding gives exactly the values the devkit parses);
- IoU uses +1 widths and is computed on 1-based coordinates in the devkit's order of operations;
- each detection goes to the ground-truth box of highest IoU (the first of equals) and counts when that IoU is
  ``>= iou_thresh`` (py-faster-rcnn's port uses ``>``); a match to a difficult box is ignored, a second match
  to a box is a false positive; there is no fallback to the second-best box;
- VOC2007 uses the 11-point AP, later devkits the area under the monotone precision envelope.
"""
import os

import numpy as np

from ..errors import Error
from ..fileio import atomic_write_text
from .boxes import bbox_overlaps

# MATLAB's ``0:0.1:1``: the first half is 0 + k*0.1 and the second half 1 - k*0.1, so the fourth value is
# 3*0.1 = 0.30000000000000004 (a recall of exactly 0.3 does not reach it) while the eighth is exactly 0.7.
VOC07_RECALL_STEPS = np.array([k * 0.1 for k in range(6)] + [1.0 - k * 0.1 for k in range(4, -1, -1)])


def use_07_metric_for_year(year):
    """True (11-point AP) for VOC years before 2010, False (area AP) for later ones and for ``None``."""
    if year is None:
        return False
    try:
        return int(year) < 2010
    except (TypeError, ValueError):
        raise Error(f"dataset year: expected a year such as 2007, got {year!r}") from None


def voc_ap(rec, prec, use_07_metric):
    """AP from recall and precision arrays (in detection order), as the devkit's ``VOCevaldet``/``VOCap``.

    ``use_07_metric``: the mean over t in MATLAB's ``0:0.1:1`` of the highest precision at recall >= t (0 where
    no recall reaches t). Otherwise the area under the monotone envelope of the precision, with the sentinels
    (0, 0) and (1, 0). Precision entries that are NaN (0/0) are skipped, as MATLAB's ``max`` skips them.
    """
    rec = np.asarray(rec, dtype=np.float64)
    prec = np.asarray(prec, dtype=np.float64)
    if rec.ndim != 1 or rec.shape != prec.shape:
        raise Error(f"voc_ap: recall {rec.shape} and precision {prec.shape} must be 1-D of one length")
    if use_07_metric:
        reached = rec[None, :] >= VOC07_RECALL_STEPS[:, None]
        best = np.where(reached & ~np.isnan(prec)[None, :], prec[None, :], -np.inf).max(axis=1, initial=-np.inf)
        ap = 0.0
        for p in np.where(np.isfinite(best), best, 0.0).tolist():
            ap += p / 11  # the devkit's running sum, term by term
        return ap
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.fmax.accumulate(np.concatenate([[0.0], prec, [0.0]])[::-1])[::-1]
    changes = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[changes] - mrec[changes - 1]) * mpre[changes]))


def _dets_array(dets, where):
    """Detections as an (n, 5) floating array (its own float dtype kept); an empty list or array stands for none."""
    dets = np.asarray(dets)
    if not np.issubdtype(dets.dtype, np.floating):
        dets = dets.astype(np.float64)
    if dets.size == 0:
        return np.zeros((0, 5))
    if dets.ndim != 2 or dets.shape[1] != 5:
        raise Error(f"{where}: expected an (N, 5) array [x1, y1, x2, y2, score], got shape {dets.shape}")
    return dets


def _gt_arrays(boxes, difficult, where):
    """Ground-truth boxes (m, 4) float64 and difficult flags (m,) bool; ``difficult`` None means none."""
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        boxes = np.zeros((0, 4))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise Error(f"{where}: expected (M, 4) ground-truth boxes, got shape {boxes.shape}")
    difficult = np.zeros(len(boxes), bool) if difficult is None else np.asarray(difficult, dtype=bool).ravel()
    if difficult.shape != (len(boxes),):
        raise Error(f"{where}: {len(boxes)} boxes but {difficult.size} difficult flags")
    return boxes, difficult


def eval_class(dets_per_image, gt_per_image, iou_thresh=0.5, use_07_metric=True):
    """(ap, rec, prec) of one class, as the devkit's ``VOCevaldet``.

    ``dets_per_image``: per image an (n_i, 5) array ``[x1, y1, x2, y2, score]`` (0-based inclusive);
    ``gt_per_image``: per image ``(boxes (m_i, 4), difficult (m_i,) bool)``. ``rec`` and ``prec`` have one entry
    per detection in score order (a detection matched to a difficult box changes neither; precision before any
    counted detection is 0 rather than the devkit's NaN, which changes no AP). No non-difficult ground truth:
    ap is NaN. Ground truth but no detections: ap is 0.
    """
    if len(dets_per_image) != len(gt_per_image):
        raise Error(f"eval_class: detections for {len(dets_per_image)} images but ground truth for "
                    f"{len(gt_per_image)}")
    if not 0.0 < iou_thresh <= 1.0:
        raise Error(f"eval_class: iou_thresh must lie in (0, 1], got {iou_thresh}")
    scores, best_iou, gt_difficult = [np.zeros(0)], [np.zeros(0)], [np.zeros(0, bool)]
    best_gt = [np.zeros(0, np.int64)]
    gt_offset = 0
    for i, (dets, gt) in enumerate(zip(dets_per_image, gt_per_image)):
        dets = _dets_array(dets, f"detections of image {i}")
        try:
            gt_boxes, difficult = gt
        except (TypeError, ValueError):
            raise Error(f"ground truth of image {i}: expected a pair (boxes, difficult)") from None
        gt_boxes, difficult = _gt_arrays(gt_boxes, difficult, f"ground truth of image {i}")
        if len(gt_boxes):
            # 1-based coordinates, as the devkit reads them: the IoU arithmetic is then the devkit's.
            overlaps = bbox_overlaps(dets[:, :4].astype(np.float64) + 1.0, gt_boxes + 1.0)
            column = overlaps.argmax(axis=1)
            best_iou.append(overlaps[np.arange(len(dets)), column])
        else:
            column = np.zeros(len(dets), np.int64)
            best_iou.append(np.zeros(len(dets)))
        best_gt.append(column + gt_offset)
        scores.append(dets[:, 4])
        gt_difficult.append(difficult)
        gt_offset += len(gt_boxes)
    gt_difficult = np.concatenate(gt_difficult)
    npos = int(np.count_nonzero(~gt_difficult))
    order = np.argsort(-np.concatenate(scores).astype(np.float64), kind="stable")
    best_gt = np.concatenate(best_gt)[order]
    matched = np.concatenate(best_iou)[order] >= iou_thresh
    counts = matched.copy()  # matched to a box that is not difficult
    counts[matched] = ~gt_difficult[best_gt[matched]]
    tp = np.zeros(len(order), bool)
    candidates = np.nonzero(counts)[0]
    _, first = np.unique(best_gt[candidates], return_index=True)
    tp[candidates[first]] = True  # the first detection to reach a box takes it; later ones are duplicates
    fp = ~matched | (counts & ~tp)
    tp, fp = np.cumsum(tp, dtype=np.float64), np.cumsum(fp, dtype=np.float64)
    prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1.0), 0.0)
    if npos == 0:
        return float("nan"), np.full(len(order), np.nan), prec
    rec = tp / npos
    return voc_ap(rec, prec, use_07_metric), rec, prec


def _as_written(dets, score_decimals, coord_decimals):
    """Detections with the values a results file gives the devkit: 1-based coordinates computed in the
    detections' dtype (as the original's writer does) and rounded, scores rounded, then back to 0-based."""
    coords = dets[:, :4] + 1
    out = np.empty(dets.shape, np.float64)
    out[:, :4] = coords if coord_decimals is None else np.round(coords.astype(np.float64), coord_decimals)
    out[:, :4] -= 1.0
    scores = dets[:, 4].astype(np.float64)
    out[:, 4] = scores if score_decimals is None else np.round(scores, score_decimals)
    return out


def _check_classes(all_dets, class_names, num_images, where):
    if len(all_dets) != len(class_names):
        raise Error(f"{where}: detections for {len(all_dets)} classes but {len(class_names)} class names "
                    "(class 0 is the background)")
    for c in range(1, len(all_dets)):
        if len(all_dets[c]) != num_images:
            raise Error(f"{where}: class '{class_names[c]}' has detections for {len(all_dets[c])} images, "
                        f"expected {num_images}")


def evaluate_detections(all_dets, gt, class_names, use_07_metric, score_decimals=3, coord_decimals=1,
                        iou_thresh=0.5):
    """Per-class VOC AP and their NaN-ignoring mean: ``{class_name: ap, ..., "mAP": mean}``.

    Departure: a class with no non-difficult ground truth has AP NaN and is left out of the mean (the
    original's Python evaluation makes the mean NaN too); :func:`format_ap_table` names such classes.

    ``all_dets[cls][img]``: (n, 5) detections, class 0 (the background) ignored; ``class_names`` includes the
    background at index 0; ``gt[img]``: a dict with ``boxes`` (0-based inclusive), ``gt_classes`` (1..K) and
    ``difficult`` (optional; none difficult when absent). ``score_decimals`` and ``coord_decimals`` round the
    scores and the 1-based coordinates as the results files do (``%.3f``, ``%.1f``; None keeps full values).
    """
    num_images = len(gt)
    _check_classes(all_dets, class_names, num_images, "evaluate_detections")
    gt_arrays = []
    for i, entry in enumerate(gt):
        try:
            boxes, classes = entry["boxes"], np.asarray(entry["gt_classes"]).ravel()
        except (KeyError, TypeError) as exc:
            raise Error(f"ground truth of image {i}: missing field {exc}") from None
        boxes, difficult = _gt_arrays(boxes, entry.get("difficult"), f"ground truth of image {i}")
        if classes.shape != (len(boxes),):
            raise Error(f"ground truth of image {i}: {len(boxes)} boxes but {classes.size} gt_classes")
        gt_arrays.append((boxes, difficult, classes))
    aps = {}
    for c in range(1, len(class_names)):
        dets = [_as_written(_dets_array(d, f"detections of class '{class_names[c]}', image {i}"),
                            score_decimals, coord_decimals)
                for i, d in enumerate(all_dets[c])]
        gt_c = [(boxes[classes == c], difficult[classes == c]) for boxes, difficult, classes in gt_arrays]
        aps[class_names[c]] = eval_class(dets, gt_c, iou_thresh, use_07_metric)[0]
    values = np.array(list(aps.values()))
    aps["mAP"] = float(np.mean(values[~np.isnan(values)])) if np.any(~np.isnan(values)) else float("nan")
    return aps


def format_ap_table(aps):
    """A text table of per-class APs (fractions, 4 decimals; n/a for NaN), with the mAP after them and, last,
    a line naming the n/a classes, which the mean leaves out."""
    names = [name for name in aps if name != "mAP"] + (["mAP"] if "mAP" in aps else [])
    width = max([len(name) for name in names] + [len("class")])
    lines = [f"{'class':<{width}}  AP"]
    for name in names:
        if name == "mAP":
            lines.append("-" * (width + 8))
        value = aps[name]
        lines.append(f"{name:<{width}}  {'n/a' if np.isnan(value) else f'{value:.4f}'}")
    left_out = [name for name in names if name != "mAP" and np.isnan(aps[name])]
    if left_out:
        lines.append(f"left out of the mean AP (no non-difficult ground truth): {', '.join(left_out)}")
    return "\n".join(lines)


def _results_path(out_dir, prefix, set_name, cls):
    return os.path.join(os.fspath(out_dir), f"{prefix}_det_{set_name}_{cls}.txt")


def _check_token(value, what):
    value = str(value)
    if not value or any(ch.isspace() for ch in value):
        raise Error(f"VOC results files: {what} {value!r} must be non-empty and contain no whitespace")
    return value


def write_voc_results(out_dir, set_name, class_names, all_dets, image_ids, prefix="comp4"):
    """Write ``<prefix>_det_<set>_<cls>.txt`` per object class (the original's ``_write_voc_results_file``).

    One line per detection, image by image: ``<img_id> <score %.3f> <x1+1 %.1f> <y1+1 %.1f> <x2+1 %.1f>
    <y2+1 %.1f>`` (1-based coordinates, computed in the detections' dtype). Each file is written to a temporary
    file beside it and renamed into place. Returns the paths.
    """
    _check_classes(all_dets, class_names, len(image_ids), "write_voc_results")
    ids = [_check_token(image_id, "image id") for image_id in image_ids]
    os.makedirs(os.fspath(out_dir), exist_ok=True)
    paths = []
    for c in range(1, len(class_names)):
        cls = _check_token(class_names[c], "class name")
        lines = []
        for i, image_id in enumerate(ids):
            dets = np.asarray(all_dets[c][i])
            if dets.size == 0:
                continue
            if dets.ndim != 2 or dets.shape[1] != 5:
                raise Error(f"write_voc_results: detections of class '{cls}', image {image_id}: expected an "
                            f"(N, 5) array, got shape {dets.shape}")
            coords = dets[:, :4] + 1
            lines.extend(f"{image_id} {s:.3f} {a:.1f} {b:.1f} {x:.1f} {y:.1f}\n"
                         for s, (a, b, x, y) in zip(dets[:, 4].tolist(), coords.tolist()))
        path = _results_path(out_dir, prefix, set_name, cls)
        atomic_write_text(path, "".join(lines))
        paths.append(path)
    return paths


def read_voc_results(out_dir, set_name, class_names, image_ids, prefix="comp4"):
    """Read the files of `write_voc_results` back: ``all_dets[cls][img]`` (n, 5) float64, 0-based coordinates.

    Lines are grouped by image in file order; class 0 (the background) gets empty arrays. Raises `Error` for a
    missing file, a malformed line or an unknown image id.
    """
    index = {str(image_id): i for i, image_id in enumerate(image_ids)}
    empty = np.zeros((0, 5))
    all_dets = [[empty] * len(index)]
    for c in range(1, len(class_names)):
        path = _results_path(out_dir, prefix, set_name, class_names[c])
        rows = [[] for _ in index]
        try:
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    fields = line.split()
                    if not fields:
                        continue
                    if len(fields) != 6 or fields[0] not in index:
                        problem = "unknown image id" if len(fields) == 6 else "expected 6 fields"
                        raise Error(f"{path}, line {number}: {problem}: {line.strip()!r}")
                    try:
                        values = [float(v) for v in fields[1:]]
                    except ValueError:
                        raise Error(f"{path}, line {number}: not a number: {line.strip()!r}") from None
                    rows[index[fields[0]]].append(values[1:] + values[:1])
        except OSError as exc:
            raise Error(f"{path}: cannot read the results file ({exc.strerror or exc})") from None
        all_dets.append([np.array(r) - [1.0, 1.0, 1.0, 1.0, 0.0] if r else empty for r in rows])
    return all_dets
