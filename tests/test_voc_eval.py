"""fastrcnn.rcnn.voc_eval (and coco_eval): hand-computed APs, pycocotools agreement, results files."""
import contextlib
import io
import json
import os

import numpy as np
import pytest

from fastrcnn.errors import Error
from fastrcnn.rcnn import voc_eval
from fastrcnn.rcnn.coco_eval import evaluate_coco
from fastrcnn.rcnn.voc_eval import (eval_class, evaluate_detections, format_ap_table, read_voc_results,
                                    use_07_metric_for_year, voc_ap, write_voc_results)

G0, G1 = [0, 0, 9, 9], [20, 20, 29, 29]
FAR = [50, 50, 59, 59]


def _dets(*rows):
    return np.array(rows, np.float32).reshape(-1, 5)


def _gt(*boxes, difficult=None):
    boxes = np.array(boxes, np.float32).reshape(-1, 4)
    return boxes, np.zeros(len(boxes), bool) if difficult is None else np.array(difficult, bool)


# ---------------------------------------------------------------- AP from recall and precision

def test_voc_ap_uses_matlab_recall_steps():
    # MATLAB's 0:0.1:1 holds 3*0.1 = 0.30000000000000004 (not reached by a recall of 3/10) but exactly 0.7
    # (reached by 7/10), so one detection at recall 0.7: t = 0, ..., 0.7 (8 steps) -> 8/11 (np.arange: 7/11)
    assert voc_ap([7 / 10], [1.0], True) == pytest.approx(8 / 11, abs=1e-15)
    assert voc_ap([3 / 10], [1.0], True) == pytest.approx(3 / 11, abs=1e-15)  # t = 0, 0.1, 0.2
    # area: recall 0.7 at precision 1 -> 0.7
    assert voc_ap([7 / 10], [1.0], False) == pytest.approx(0.7, abs=1e-15)


def test_voc_ap_envelope_and_nan_precision():
    rec, prec = [0.0, 0.5, 0.5, 1.0], [np.nan, 1.0, 0.5, 0.75]
    # envelope 1, 1, 0.75, 0.75: area = 0.5 * 1 + 0.5 * 0.75 = 0.875
    assert voc_ap(rec, prec, False) == pytest.approx(0.875, abs=1e-15)
    # 11-point: t = 0..0.5 -> 1 (6 steps), t = 0.6..1 -> 0.75 (5 steps): (6 + 3.75) / 11
    assert voc_ap(rec, prec, True) == pytest.approx(9.75 / 11, abs=1e-15)
    assert voc_ap([], [], True) == 0.0 and voc_ap([], [], False) == 0.0
    with pytest.raises(Error, match="voc_ap"):
        voc_ap([0.1, 0.2], [1.0], True)


# ---------------------------------------------------------------- crafted cases, one class

def test_tied_scores_keep_image_order_and_duplicates_are_false():
    dets = [_dets([*G0, 0.9], [*G0, 0.8]),   # a hit on G0, then a duplicate (FP)
            _dets([*FAR, 0.7], [*G0, 0.8])]  # a miss; a hit on image 1's G0 tied at 0.8 with the duplicate
    gt = [_gt(G0, G1), _gt(G0)]  # npos = 3
    # stable sort: 0.9 TP, 0.8 FP (image 0 first), 0.8 TP, 0.7 FP
    # tp = 1 1 2 2, fp = 0 1 1 2 -> rec = 1/3 1/3 2/3 2/3, prec = 1 1/2 2/3 1/2
    ap, rec, prec = eval_class(dets, gt, use_07_metric=True)
    np.testing.assert_allclose(rec, [1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(prec, [1, 1 / 2, 2 / 3, 1 / 2])
    # 11-point: t = 0..0.3 -> 1 (4 steps), t = 0.4..0.6 -> 2/3 (3 steps), t >= 0.7 -> 0: (4 + 2) / 11
    assert ap == pytest.approx(6 / 11, abs=1e-12)
    # area: envelope 1 over [0, 1/3], 2/3 over [1/3, 2/3], 0 after: 1/3 + 2/9 = 5/9
    assert eval_class(dets, gt, use_07_metric=False)[0] == pytest.approx(5 / 9, abs=1e-12)


def test_difficult_matches_are_ignored():
    dets = [_dets([*G1, 0.9], [*G0, 0.8], [*G1, 0.7], [*FAR, 0.6])]
    gt = [_gt(G0, G1, difficult=[False, True])]  # npos = 1
    # 0.9 hits difficult G1: ignored; 0.8 TP; 0.7 hits G1 again: still ignored, not a duplicate; 0.6 FP
    # tp = 0 1 1 1, fp = 0 0 0 1 -> rec = 0 1 1 1, prec = (0/0 -> 0) 1 1 1/2
    ap, rec, prec = eval_class(dets, gt, use_07_metric=True)
    np.testing.assert_allclose(rec, [0, 1, 1, 1])
    np.testing.assert_allclose(prec, [0, 1, 1, 0.5])
    # every recall step is reached at precision 1: 11-point 1 (the devkit's running sum of eleven 1/11
    # gives 1 + 2e-16); area 1 * 1 = 1
    assert ap == pytest.approx(1.0, abs=1e-15)
    assert eval_class(dets, gt, use_07_metric=False)[0] == 1.0


def test_iou_of_exactly_one_half_matches():
    # [0, 0, 9, 4] covers 50 of G0's 100 pixels: IoU 0.5 >= 0.5 -> TP (py-faster-rcnn's ">" would say FP)
    ap, rec, prec = eval_class([_dets([0, 0, 9, 4, 0.9])], [_gt(G0)], use_07_metric=False)
    assert (ap, rec.tolist(), prec.tolist()) == (1.0, [1.0], [1.0])
    assert eval_class([_dets([0, 0, 9, 3, 0.9])], [_gt(G0)])[0] == 0.0  # IoU 0.4 -> FP, AP 0


def test_no_detections_and_no_ground_truth():
    # ground truth but no detections: AP 0; no ground truth (or only difficult): NaN
    assert eval_class([[], _dets()], [_gt(G0), _gt()])[0] == 0.0
    assert np.isnan(eval_class([_dets([*G0, 0.5])], [_gt()])[0])
    assert np.isnan(eval_class([_dets([*G0, 0.5])], [_gt(G0, difficult=[True])], use_07_metric=False)[0])
    with pytest.raises(Error, match="2 images"):
        eval_class([[], []], [_gt(G0)])
    with pytest.raises(Error, match=r"image 0.*\(N, 5\)"):
        eval_class([np.zeros((2, 4))], [_gt(G0)])


def _devkit_loop(dets_per_image, gt_per_image, iou_thresh=0.5):
    """VOCevaldet's loop, detection by detection (1-based coordinates, stable sort): cumulative tp and fp."""
    found = [np.zeros(len(boxes), bool) for boxes, _ in gt_per_image]
    entries = [(i, d) for i, dets in enumerate(dets_per_image) for d in np.asarray(dets, np.float64).tolist()]
    order = np.argsort([-d[4] for _, d in entries], kind="stable")
    tp, fp = np.zeros(len(entries)), np.zeros(len(entries))
    for rank, k in enumerate(order):
        i, d = entries[k]
        bb = [v + 1 for v in d[:4]]
        boxes, difficult = gt_per_image[i]
        ovmax, jmax = -np.inf, -1
        for j, g in enumerate((np.asarray(boxes, np.float64) + 1).tolist()):
            iw = min(bb[2], g[2]) - max(bb[0], g[0]) + 1
            ih = min(bb[3], g[3]) - max(bb[1], g[1]) + 1
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - iw * ih
                if iw * ih / ua > ovmax:
                    ovmax, jmax = iw * ih / ua, j
        if ovmax >= iou_thresh:
            if not difficult[jmax]:
                if not found[i][jmax]:
                    tp[rank], found[i][jmax] = 1, True
                else:
                    fp[rank] = 1
        else:
            fp[rank] = 1
    return np.cumsum(tp), np.cumsum(fp)


def test_eval_class_equals_devkit_loop_on_random_cases():
    rng = np.random.default_rng(5)
    for _ in range(20):
        all_dets, gt = _random_case(rng, num_images=8, num_classes=1)
        dets = [voc_eval._as_written(d, 3, 1) for d in all_dets[1]]  # ties in score, IoUs on a 0.1 grid
        gt_1 = [(g["boxes"][g["gt_classes"] == 1], g["difficult"][g["gt_classes"] == 1]) for g in gt]
        npos = sum(int(np.count_nonzero(~d)) for _, d in gt_1)
        tp, fp = _devkit_loop(dets, gt_1)
        for use_07 in (True, False):
            ap, rec, prec = eval_class(dets, gt_1, use_07_metric=use_07)
            if npos:
                np.testing.assert_array_equal(rec, tp / npos)
                np.testing.assert_array_equal(prec, np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0))
                assert ap == voc_ap(tp / npos, prec, use_07)


# ---------------------------------------------------------------- all classes

CLASSES = ("__background__", "cat", "dog", "bird", "cow")


def _dataset():
    """Two images: cat G0 and G1 in image 0, cat G0 and a difficult bird in image 1, no dog, a difficult cow."""
    gt = [{"boxes": np.array([G0, G1], np.float32), "gt_classes": np.array([1, 1]),
           "difficult": np.array([False, False])},
          {"boxes": np.array([G0, G1, FAR], np.float32), "gt_classes": np.array([1, 3, 4]),
           "difficult": np.array([False, True, True])}]
    empty = np.zeros((0, 5), np.float32)
    all_dets = [[empty, empty],
                [_dets([*G0, 0.9], [*G0, 0.7996]), _dets([*FAR, 0.7], [*G0, 0.8001])],  # the tie case above
                [_dets([*G0, 0.3]), empty],                                              # dog: no gt -> NaN
                [empty, empty],                                                          # bird: only difficult
                [empty, _dets([*FAR, 0.4])]]                                             # cow: only difficult
    return all_dets, gt


def test_evaluate_detections_rounds_scores_as_the_results_files():
    all_dets, gt = _dataset()
    aps = evaluate_detections(all_dets, gt, CLASSES, use_07_metric=True)
    # rounded to 3 decimals, 0.7996 and 0.8001 tie at 0.800: the duplicate (image 0) comes first -> 6/11
    assert aps["cat"] == pytest.approx(6 / 11, abs=1e-12)
    assert np.isnan(aps["dog"]) and np.isnan(aps["bird"]) and np.isnan(aps["cow"])
    assert aps["mAP"] == aps["cat"]
    # unrounded, image 1's hit (0.8001) comes before the duplicate: TP TP FP FP -> rec 1/3 2/3 2/3 2/3,
    # prec 1 1 2/3 1/2 -> 11-point t = 0..0.6 at precision 1 -> 7/11
    unrounded = evaluate_detections(all_dets, gt, CLASSES, use_07_metric=True, score_decimals=None)
    assert unrounded["cat"] == pytest.approx(7 / 11, abs=1e-12)


def test_evaluate_detections_errors():
    all_dets, gt = _dataset()
    with pytest.raises(Error, match="class names"):
        evaluate_detections(all_dets, gt, CLASSES[1:], use_07_metric=True)
    with pytest.raises(Error, match="image 1: missing field 'gt_classes'"):
        evaluate_detections(all_dets, [gt[0], {"boxes": gt[1]["boxes"]}], CLASSES, use_07_metric=True)


def test_format_ap_table():
    all_dets, gt = _dataset()
    table = format_ap_table(evaluate_detections(all_dets, gt, CLASSES, use_07_metric=False))
    lines = table.splitlines()
    assert lines[1].split() == ["cat", f"{5 / 9:.4f}"]
    assert lines[2].split() == ["dog", "n/a"]
    assert lines[-2].split() == ["mAP", f"{5 / 9:.4f}"]
    assert lines[-1] == "left out of the mean AP (no non-difficult ground truth): dog, bird, cow"


def test_use_07_metric_for_year():
    assert use_07_metric_for_year(2007) is True
    assert use_07_metric_for_year("2012") is False
    assert use_07_metric_for_year(None) is False
    with pytest.raises(Error, match="year"):
        use_07_metric_for_year("voc")


# ---------------------------------------------------------------- results files

def _random_case(rng, num_images=12, num_classes=3):
    """Detections with coordinates and scores that round to ties, near and far from the ground truth."""
    gt, all_dets = [], [[np.zeros((0, 5), np.float32)] * num_images]
    for _ in range(num_images):
        boxes = np.floor(rng.uniform(0, 300, (6, 2)))
        boxes = np.hstack([boxes, boxes + np.floor(rng.uniform(10, 80, (6, 2)))]).astype(np.float32)
        gt.append({"boxes": boxes, "gt_classes": rng.integers(1, num_classes + 1, 6),
                   "difficult": rng.uniform(size=6) < 0.15})
    for _ in range(num_classes):
        per_image = []
        for i in range(num_images):
            n = int(rng.integers(0, 15))
            base = gt[i]["boxes"][rng.integers(0, 6, n)]
            coords = base + rng.normal(0, 6, (n, 4)).round(2)
            scores = rng.integers(0, 40, n) / 40 + rng.choice([0, 5e-4, -4e-4], n)
            per_image.append(np.hstack([coords, scores[:, None]]).astype(np.float32))
        all_dets.append(per_image)
    return all_dets, gt


def test_results_files_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    all_dets, gt = _random_case(rng)
    classes = ("__background__", "a", "b", "c")
    ids = [f"{i:06d}" for i in range(len(gt))]
    paths = write_voc_results(tmp_path, "test", classes, all_dets, ids)
    assert [os.path.basename(p) for p in paths] == [f"comp4_det_test_{c}.txt" for c in classes[1:]]
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths)  # no temporary left
    first = next(i for i in range(len(ids)) if len(all_dets[1][i]))
    x1, y1, x2, y2, s = all_dets[1][first][0]
    with open(paths[0], encoding="utf-8") as f:
        assert f.readline() == f"{ids[first]} {s:.3f} {x1 + 1:.1f} {y1 + 1:.1f} {x2 + 1:.1f} {y2 + 1:.1f}\n"
    back = read_voc_results(tmp_path, "test", classes, ids)
    for c in range(1, len(classes)):
        for i in range(len(ids)):
            # the values the files hold are the ones evaluate_detections rounds to, bit for bit
            expected = voc_eval._as_written(all_dets[c][i].reshape(-1, 5), 3, 1)
            np.testing.assert_array_equal(back[c][i].reshape(-1, 5), expected)
    for use_07 in (True, False):
        in_memory = evaluate_detections(all_dets, gt, classes, use_07)
        from_files = evaluate_detections(back, gt, classes, use_07, score_decimals=None, coord_decimals=None)
        assert in_memory == from_files


def test_results_files_errors(tmp_path):
    classes = ("__background__", "a")
    with pytest.raises(Error, match="image id 'a b'"):
        write_voc_results(tmp_path, "test", classes, [[[]], [[]]], ["a b"])
    (tmp_path / "comp4_det_test_a.txt").write_text("000001 0.5 1 1 5 5\n000009 0.5 1 1 5 5\n")
    with pytest.raises(Error, match="line 2: unknown image id"):
        read_voc_results(tmp_path, "test", classes, ["000001"])
    with pytest.raises(Error, match="cannot read"):
        read_voc_results(tmp_path, "val", classes, ["000001"])


# ---------------------------------------------------------------- against pycocotools

def _coco_case(rng, num_images=25):
    """Ground-truth boxes that do not overlap (one per 100-pixel cell of the left half) and detections that
    are near-copies of one (IoU > 0.8, sometimes twice) or lie in the empty right half (IoU 0)."""
    gt, dets = [], []
    for _ in range(num_images):
        cells = rng.permutation(25)[:int(rng.integers(1, 8))]
        x0, y0 = (cells % 5) * 100.0, (cells // 5) * 100.0
        w, h = rng.integers(40, 90, (2, len(cells)))
        boxes = np.stack([x0, y0, x0 + w - 1, y0 + h - 1], axis=1)
        near = boxes[rng.uniform(size=len(boxes)) < 0.8]
        near = np.vstack([near, near[rng.uniform(size=len(near)) < 0.2]])
        near = near + rng.integers(-1, 2, near.shape)
        far = rng.uniform(600, 900, (int(rng.integers(0, 5)), 2))
        far = np.hstack([far, far + rng.uniform(10, 90, far.shape)])
        coords = np.vstack([near, far])
        dets.append(np.hstack([coords, rng.uniform(size=(len(coords), 1))]))
        gt.append(boxes)
    return dets, gt


def _coco_gt(gt):
    images = [{"id": i + 1, "width": 1000, "height": 600} for i in range(len(gt))]
    annotations = [{"id": len(images) * 100 + k, "image_id": i + 1, "category_id": 7, "iscrowd": 0,
                    "bbox": [b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1],
                    "area": (b[2] - b[0] + 1) * (b[3] - b[1] + 1)}
                   for i, boxes in enumerate(gt) for k, b in enumerate(boxes.tolist())]
    for k, ann in enumerate(annotations):
        ann["id"] = k + 1
    return {"images": images, "annotations": annotations, "categories": [{"id": 7, "name": "thing"}]}


def _interpolated_101(rec, prec):
    """pycocotools' AP at one IoU: the precision envelope sampled at recall 0, 0.01, ..., 1."""
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    inds = np.searchsorted(rec, np.linspace(0, 1, 101), side="left")
    return float(np.mean([envelope[i] if i < len(envelope) else 0.0 for i in inds]))


@pytest.mark.parametrize("seed", range(5))
def test_area_ap_agrees_with_pycocotools(seed):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(10 + seed)
    dets, gt = _coco_case(rng)
    ap, rec, prec = eval_class(dets, [(g, None) for g in gt], use_07_metric=False)
    results = [{"image_id": i + 1, "category_id": 7, "score": float(d[4]),
                "bbox": [float(d[0]), float(d[1]), float(d[2] - d[0] + 1), float(d[3] - d[1] + 1)]}
               for i, image_dets in enumerate(dets) for d in image_dets]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = _coco_gt(gt)
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # pycocotools' AP50 (101-point) is within 0.01 of the area under the envelope, and equals the
    # 101-point interpolation of our precision/recall curve
    assert abs(ap - evaluator.stats[1]) <= 0.01
    assert _interpolated_101(rec, prec) == pytest.approx(evaluator.stats[1], abs=1e-12)
    # evaluate_coco, given the same detections, reports the same AP50
    all_dets = [[np.zeros((0, 5))] * len(dets), dets]
    got = evaluate_coco(all_dets, list(range(1, len(dets) + 1)), [7], _coco_gt(gt))
    assert got["AP50"] == pytest.approx(evaluator.stats[1], abs=1e-12)
    assert got["AP"] == pytest.approx(evaluator.stats[0], abs=1e-12)


def test_evaluate_coco_perfect_detections_and_errors(tmp_path):
    # detections equal to the ground truth: AP 1 at every IoU up to 0.95, so the +1 widths are undone exactly
    gt = [np.array([[0.0, 0.0, 9.0, 9.0], [30.0, 40.0, 33.0, 41.0]])]
    dets = [np.hstack([gt[0], [[0.9], [0.8]]])]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(_coco_gt(gt)))
    got = evaluate_coco([[[]], dets], ["1"], [7], path)
    assert got == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0}
    assert evaluate_coco([[[]], [[]]], [1], [7], path) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with pytest.raises(Error, match="image id 5"):
        evaluate_coco([[[]], dets], [5], [7], path)
    with pytest.raises(Error, match=r"category ids \[3\]"):
        evaluate_coco([[[]], dets], [1], [3], path)
    with pytest.raises(Error, match="cannot read"):
        evaluate_coco([[[]], dets], [1], [7], tmp_path / "missing.json")
    no_area = _coco_gt(gt)
    del no_area["annotations"][1]["area"]
    with pytest.raises(Error, match=r"annotation 1 lacks the field\(s\) \['area'\]"):
        evaluate_coco([[[]], dets], [1], [7], no_area)
