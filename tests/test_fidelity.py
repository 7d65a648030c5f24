"""Bit-for-bit agreement with the original's arithmetic, each formula written out here as the original has it.

Image blobs (utils/blob.py), the RoI projection (roi_data_layer/minibatch.py, fast_rcnn/test.py) and the
bbox-target statistics (roi_data_layer/roidb.py); and the warnings where we deliberately depart (a class of
constant targets, classes without non-difficult ground truth in the mean AP).
"""
import cv2
import numpy as np
import pytest

from fastrcnn.rcnn.config import default_config
from fastrcnn.rcnn.boxes import flip_boxes
from fastrcnn.rcnn.detect import image_pyramid, project_rois
from fastrcnn.rcnn.image import prep_image, read_image
from fastrcnn.rcnn.minibatch import build_minibatch
from fastrcnn.rcnn.roidb import add_bbox_targets, append_flipped, compute_targets, merge_proposals
from fastrcnn.rcnn.voc_eval import evaluate_detections, format_ap_table

MEANS = np.array([[[102.9801, 115.9465, 122.7717]]])  # the original's float64 PIXEL_MEANS


def original_prep(im, target, max_size):
    """The original's prep_im_for_blob, with its image converted and mean-subtracted as in _get_image_blob."""
    im = im.astype(np.float32, copy=True)
    im -= MEANS
    short, long = np.min(im.shape[0:2]), np.max(im.shape[0:2])
    scale = float(target) / float(short)
    if np.round(scale * long) > max_size:
        scale = float(max_size) / float(long)
    im = cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return im, scale


def random_images(count, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        h, w = rng.integers(20, 140, size=2)
        im = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        yield im[:, ::-1] if rng.random() < 0.5 else im


@pytest.mark.parametrize("target,max_size", [(600, 1000), (64, 90), (100, 2000)])
def test_image_blob_matches_original(target, max_size):
    for im in random_images(12):
        ours, scale = prep_image(im, MEANS.tolist(), target, max_size)
        theirs, their_scale = original_prep(im, target, max_size)
        assert scale == their_scale and ours.dtype == np.float32
        np.testing.assert_array_equal(ours, theirs)


def test_mean_subtraction_is_the_float64_one():
    """The float32-rounded means would differ: the test above would catch the old arithmetic."""
    im = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    ours, _ = prep_image(im, MEANS.tolist(), 16, 1000)
    rounded = im.astype(np.float32) - MEANS.astype(np.float32)
    np.testing.assert_array_equal(ours, (im.astype(np.float32) - MEANS).astype(np.float32))
    assert (ours != rounded).any()


def test_demo_image_pyramid_matches_original(reference_dir):
    """The test pyramid (and so frcnn-demo) on a demo image, mirrored as a flipped roidb entry is."""
    cfg = default_config()
    cfg.TEST.SCALES, cfg.TEST.MAX_SIZE = (600, 300), 1000
    image = read_image(reference_dir / "demo-images" / "000004.jpg", flipped=True)
    blob, scales = image_pyramid(image, cfg)
    for level, target in enumerate(cfg.TEST.SCALES):
        theirs, their_scale = original_prep(image, target, cfg.TEST.MAX_SIZE)
        assert scales[level] == their_scale
        h, w = theirs.shape[:2]
        np.testing.assert_array_equal(blob[level, :, :h, :w], theirs.transpose(2, 0, 1))


def random_boxes(rng, count, width, height):
    x = np.sort(rng.integers(0, width, size=(count, 2)), axis=1)
    y = np.sort(rng.integers(0, height, size=(count, 2)), axis=1)
    return np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1).astype(np.uint16)


def original_rois_blob(box_lists, scales):
    """The original's _get_rois_blob per image: boxes (uint16 in its roidb) × the float scale, hstacked with
    the batch index into a float32 blob (one rounding)."""
    blob = np.zeros((0, 5), dtype=np.float32)
    for i, (boxes, scale) in enumerate(zip(box_lists, scales)):
        rois = boxes * scale
        blob = np.vstack((blob, np.hstack((i * np.ones((rois.shape[0], 1)), rois))))
    return blob.astype(np.float32)


def test_training_rois_and_blob_match_original(tmp_path):
    """build_minibatch on random images, one entry flipped, at scales that make float32 products differ."""
    rng = np.random.default_rng(1)
    cfg = default_config()
    cfg.TRAIN.MAX_SIZE = 1000
    roidb, originals = [], []
    for i, flipped in enumerate((False, True)):
        h, w = 73 + 11 * i, 97 - 5 * i
        path = tmp_path / f"{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        boxes = random_boxes(rng, 50, w, h)
        if flipped:
            boxes = flip_boxes(boxes.astype(np.float64), w).astype(np.uint16)
        roidb.append({"image": str(path), "flipped": flipped, "boxes": boxes.astype(np.float32)})
        originals.append((cv2.imread(str(path))[:, ::-1] if flipped else cv2.imread(str(path)), boxes))
    keep = np.arange(50)
    labels = np.zeros(50, np.int32)
    plan = [(0, 500, keep, labels), (1, 613, keep, labels)]
    blobs = build_minibatch(roidb, plan, cfg, 21, with_bbox=False)
    prepped = [original_prep(im, target, 1000) for (im, _), (_, target, _, _) in zip(originals, plan)]
    np.testing.assert_array_equal(blobs["rois"], original_rois_blob([b for _, b in originals],
                                                                    [s for _, s in prepped]))
    for n, (im, _) in enumerate(prepped):
        np.testing.assert_array_equal(blobs["data"][n, :, :im.shape[0], :im.shape[1]], im.transpose(2, 0, 1))
    rounded = np.vstack([b.astype(np.float32) * np.float32(s) for (_, b), (_, s) in zip(originals, prepped)])
    assert (rounded != blobs["rois"][:, 1:]).any()  # the float32 product, the old arithmetic, differs


def test_test_rois_match_original():
    """One test scale: the same projection as training (the original's test.py _project_im_rois)."""
    rng = np.random.default_rng(2)
    boxes = random_boxes(rng, 500, 500, 375).astype(np.float32)
    scale = np.array([600 / 375])
    np.testing.assert_array_equal(project_rois(boxes, scale), original_rois_blob([boxes.astype(np.float64)],
                                                                                  scale))


def random_roidb(rng, num_images, num_classes):
    gt_roidb, proposals = [], []
    for i in range(num_images):
        w, h = rng.integers(200, 500, size=2)
        n_gt = int(rng.integers(1, 5))
        gt = random_boxes(rng, n_gt, w, h)
        jitter = rng.integers(-15, 16, size=(200, 4))
        props = np.clip(gt[rng.integers(0, n_gt, size=200)].astype(np.int64) + jitter, 0, [w - 1, h - 1] * 2)
        props[:, 2:] = np.maximum(props[:, 2:], props[:, :2])
        gt_roidb.append({"image": f"{i}.jpg", "width": int(w), "height": int(h), "boxes": gt,
                         "gt_classes": rng.integers(1, num_classes, size=n_gt).astype(np.int32)})
        proposals.append(np.vstack([props, random_boxes(rng, 100, w, h)]))
    return append_flipped(merge_proposals(gt_roidb, proposals))


def original_normalise(target_list, num_classes):
    """The original's add_bbox_regression_targets after _compute_targets, line for line."""
    class_counts = np.zeros((num_classes, 1)) + 1e-14
    sums = np.zeros((num_classes, 4))
    squared_sums = np.zeros((num_classes, 4))
    for targets in target_list:
        for cls in range(1, num_classes):
            cls_inds = np.where(targets[:, 0] == cls)[0]
            if cls_inds.size > 0:
                class_counts[cls] += cls_inds.size
                sums[cls, :] += targets[cls_inds, 1:].sum(axis=0)
                squared_sums[cls, :] += (targets[cls_inds, 1:] ** 2).sum(axis=0)
    means = sums / class_counts
    stds = np.sqrt(squared_sums / class_counts - means ** 2)
    for targets in target_list:
        for cls in range(1, num_classes):
            cls_inds = np.where(targets[:, 0] == cls)[0]
            targets[cls_inds, 1:] -= means[cls, :]
            targets[cls_inds, 1:] /= stds[cls, :]
    return means.ravel(), stds.ravel()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bbox_target_stats_match_original(seed):
    rng = np.random.default_rng(seed)
    roidb = random_roidb(rng, 30, 6)
    originals = [compute_targets(entry, 0.5) for entry in roidb]
    their_means, their_stds = original_normalise(originals, 6)
    means, stds = add_bbox_targets(roidb, 6, 0.5)
    np.testing.assert_array_equal(means, their_means)
    np.testing.assert_array_equal(stds, their_stds)
    for entry, theirs in zip(roidb, originals):
        assert entry["bbox_targets"].dtype == np.float32
        np.testing.assert_array_equal(entry["bbox_targets"], theirs)


def test_bbox_targets_differ_from_one_rounding():
    """The single-rounding float64 arithmetic the test above rules out does differ on such a roidb."""
    rng = np.random.default_rng(0)
    roidb = random_roidb(rng, 30, 6)
    raw = [compute_targets(entry, 0.5) for entry in roidb]
    means, stds = add_bbox_targets(roidb, 6, 0.5)
    means, stds = means.reshape(6, 4), stds.reshape(6, 4)
    once = [((t[:, 1:] - means[t[:, 0].astype(int)]) / np.where(stds > 0, stds, 1)[t[:, 0].astype(int)])
            .astype(np.float32)[t[:, 0] > 0] for t in raw]
    ours = [e["bbox_targets"][e["bbox_targets"][:, 0] > 0, 1:] for e in roidb]
    assert any((a != b).any() for a, b in zip(once, ours))


def test_constant_class_gets_std_zero_and_a_warning(caplog):
    """Class 2 has only its gt boxes as examples (targets all 0): the original's 0/0 would be NaN."""
    rng = np.random.default_rng(3)
    roidb = random_roidb(rng, 4, 3)
    for entry in roidb:  # keep class 2's gt boxes, drop every other example of class 2
        drop = (entry["max_classes"] == 2) & (entry["max_overlaps"] < 1)
        entry["max_overlaps"][drop] = 0.0
        entry["max_classes"][drop] = 0
    roidb[0]["max_classes"][0] = 2  # row 0 is a gt box: class 2 has at least one example
    originals = [compute_targets(entry, 0.5) for entry in roidb]
    with np.errstate(invalid="ignore", divide="ignore"):
        original_normalise(originals, 3)
    assert not all(np.isfinite(t).all() for t in originals)
    with caplog.at_level("WARNING", logger="fastrcnn"):
        means, stds = add_bbox_targets(roidb, 3, 0.5, ("__background__", "cat", "dog"))
    assert np.isfinite(means).all() and np.isfinite(stds).all()
    assert (stds.reshape(3, 4)[2] == 0).all() and (stds.reshape(3, 4)[1] > 0).all()
    assert all(np.isfinite(e["bbox_targets"]).all() for e in roidb)
    warnings = [r.getMessage() for r in caplog.records if "zero variance" in r.getMessage()]
    assert len(warnings) == 1 and "2 (dog)" in warnings[0] and "cat" not in warnings[0]


def test_class_with_only_difficult_gt_is_left_out_and_named():
    """The original's mean would be NaN; ours is the mean of the others and the table says which were left out."""
    gt = [{"boxes": np.array([[10, 10, 50, 50], [60, 60, 90, 90]]), "gt_classes": np.array([1, 2]),
           "difficult": np.array([False, True])}]
    dets = [[np.zeros((0, 5))], [np.array([[10, 10, 50, 50, 0.9]])], [np.array([[60, 60, 90, 90, 0.8]])]]
    aps = evaluate_detections(dets, gt, ("__background__", "cat", "dog"), use_07_metric=True)
    assert np.isnan(aps["dog"]) and aps["mAP"] == aps["cat"] == pytest.approx(1.0)
    assert format_ap_table(aps).splitlines()[-1] == \
        "left out of the mean AP (no non-difficult ground truth): dog"
