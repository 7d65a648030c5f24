"""The training roidb: ground truth merged with proposals, flipped copies, and normalised bbox targets.

Follows the original (lib/datasets/imdb.py, lib/roi_data_layer/roidb.py): every image's RoIs are its gt boxes
followed by its proposals; each RoI carries its best IoU with a gt box (``max_overlaps``) and that box's class
(``max_classes``, 0 when it overlaps nothing); ``USE_FLIPPED`` appends a mirrored copy of every image; regression
targets use +EPS widths and are normalised per class to zero mean and unit variance over the whole roidb.
Only what the sampler needs is kept (no dense overlap matrix), as compact float32 arrays.
"""
import logging

import numpy as np

from ..errors import Error
from .boxes import EPS, bbox_overlaps, bbox_transform, flip_boxes

log = logging.getLogger("fastrcnn")


def merge_proposals(gt_roidb, proposals):
    """One entry per image: gt boxes first, then the proposals, with max_overlaps and max_classes."""
    if len(proposals) != len(gt_roidb):
        raise Error(f"{len(proposals)} proposal lists for {len(gt_roidb)} images: the proposals were made for "
                    "another image list (delete the proposal cache or give the matching file)")
    roidb = []
    for gt, props in zip(gt_roidb, proposals):
        props = np.asarray(props, dtype=np.float32).reshape(-1, 4)
        gt_boxes = gt["boxes"].astype(np.float32)
        boxes = np.vstack([gt_boxes, props])
        n_gt = len(gt_boxes)
        max_overlaps = np.zeros(len(boxes), np.float32)
        max_classes = np.zeros(len(boxes), np.int32)
        max_overlaps[:n_gt] = 1.0
        max_classes[:n_gt] = gt["gt_classes"]
        if n_gt and len(props):
            iou = bbox_overlaps(props.astype(np.float64), gt_boxes.astype(np.float64))
            best = iou.argmax(axis=1)
            top = iou[np.arange(len(props)), best]
            max_overlaps[n_gt:] = top
            max_classes[n_gt:] = np.where(top > 0, gt["gt_classes"][best], 0)
        gt_classes = np.zeros(len(boxes), np.int32)
        gt_classes[:n_gt] = gt["gt_classes"]
        roidb.append({"image": gt["image"], "width": gt["width"], "height": gt["height"], "flipped": False,
                      "boxes": boxes, "gt_classes": gt_classes, "max_overlaps": max_overlaps,
                      "max_classes": max_classes})
    return roidb


def append_flipped(roidb):
    """The original's append_flipped_images: a mirrored copy of every entry (x' = W - x - 1), no underflow."""
    flipped = []
    for entry in roidb:
        copy = dict(entry)
        copy["boxes"] = flip_boxes(entry["boxes"], entry["width"]).astype(np.float32)
        copy["flipped"] = True
        flipped.append(copy)
    return roidb + flipped


def compute_targets(entry, bbox_thresh):
    """Compact targets [class, dx, dy, dw, dh] per RoI (class 0 and zeros for RoIs with no target).

    Examples are RoIs with max_overlaps >= bbox_thresh; each regresses to the gt RoI (max_overlaps == 1) it
    overlaps most, class-agnostically, as the original's _compute_targets. An image without gt boxes gets zero
    targets, where the original's argmax over no gt boxes raised ValueError.
    """
    boxes, overlaps = entry["boxes"].astype(np.float64), entry["max_overlaps"]
    targets = np.zeros((len(boxes), 5), np.float32)
    gt_inds = np.flatnonzero(overlaps == 1)
    ex_inds = np.flatnonzero(overlaps >= bbox_thresh)
    if len(gt_inds) == 0 or len(ex_inds) == 0:
        return targets
    assign = bbox_overlaps(boxes[ex_inds], boxes[gt_inds]).argmax(axis=1)
    targets[ex_inds, 0] = entry["max_classes"][ex_inds]
    targets[ex_inds, 1:] = bbox_transform(boxes[ex_inds], boxes[gt_inds[assign]])
    return targets


def add_bbox_targets(roidb, num_classes, bbox_thresh, class_names=None):
    """Add normalised ``bbox_targets`` to every entry; returns (means, stds), each of length 4·num_classes.

    The original's add_bbox_regression_targets, in its precisions: per image and class c ≥ 1 the float32
    targets and their float32 squares are summed in float32, those sums accumulated over the roidb in float64;
    mean = Σt/(n+EPS), std = sqrt(Σt²/(n+EPS) − mean²); each target is normalised in place in two float32
    roundings, t −= mean then t /= std. The background class gets mean 0 and std 0 (its bbox_pred rows are
    saved as zeros).

    Departure: a class whose examples all have the same target value (typically only gt boxes, all zeros)
    has variance 0 (or a rounding-level negative one); the original gives std 0 or NaN there and NaN
    targets. Here that std is 0, those targets are only mean-subtracted, and a warning names the class.
    """
    sums = np.zeros((num_classes, 4))
    squares = np.zeros((num_classes, 4))
    counts = np.zeros(num_classes) + EPS
    for entry in roidb:
        entry["bbox_targets"] = targets = compute_targets(entry, bbox_thresh)
        labels = targets[:, 0].astype(np.int64)
        if labels.size and labels.max() >= num_classes:
            raise Error(f"{entry['image']}: class index {labels.max()} is outside the {num_classes} classes of "
                        "the net")
        for c in np.unique(labels[labels > 0]):
            rows = np.flatnonzero(labels == c)
            counts[c] += rows.size
            sums[c] += targets[rows, 1:].sum(axis=0)
            squares[c] += (targets[rows, 1:] ** 2).sum(axis=0)
    means = sums / counts[:, None]
    variances = squares / counts[:, None] - means ** 2
    stds = np.sqrt(np.maximum(variances, 0.0))
    means[0], stds[0] = 0.0, 0.0
    constant = [c for c in range(1, num_classes) if counts[c] >= 1 and (stds[c] == 0).any()]
    if constant:
        names = ", ".join(f"{c} ({class_names[c]})" if class_names is not None else str(c) for c in constant)
        log.warning("bbox targets of class %s have zero variance (all examples equal); they get std 0 and are "
                    "only mean-subtracted (the original would make them NaN)", names)
    for entry in roidb:
        targets = entry["bbox_targets"]
        labels = targets[:, 0].astype(np.int64)
        fg = labels > 0
        targets[fg, 1:] -= means[labels[fg]]
        targets[fg, 1:] /= np.where(stds[labels[fg]] > 0, stds[labels[fg]], 1.0)
    return means.ravel(), stds.ravel()


def training_roidb(dataset, proposals, cfg):
    """The roidb the data layer samples from, and the target (means, stds) for snapshots."""
    roidb = merge_proposals(dataset.gt_roidb(), proposals)
    if cfg.TRAIN.USE_FLIPPED:
        roidb = append_flipped(roidb)
    means, stds = add_bbox_targets(roidb, dataset.num_classes, cfg.TRAIN.BBOX_THRESH, dataset.classes)
    return roidb, means, stds
