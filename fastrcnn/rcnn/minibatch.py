"""Minibatch sampling, as the original's roi_data_layer/minibatch.py.

Per image: ``round(FG_FRACTION · R/N)`` foreground RoIs (max IoU ≥ FG_THRESH) at most, then background RoIs
(max IoU in [BG_THRESH_LO, BG_THRESH_HI)) up to R/N, both drawn without replacement and never padded, so a
minibatch may hold fewer than R RoIs. All random draws happen in ``plan_minibatch`` (cheap, in order);
``build_minibatch`` does the image work and may run in the background without changing the results.
"""
import numpy as np

from ..errors import Error
from .image import images_to_blob, prep_image, read_image, scaled_rois


def sample_rois(entry, rois_per_image, fg_per_image, train_cfg, rng):
    """(indices of the sampled RoIs, their labels): foreground first, background labelled 0."""
    overlaps = entry["max_overlaps"]
    fg = np.flatnonzero(overlaps >= train_cfg.FG_THRESH)
    n_fg = min(fg_per_image, fg.size)
    if n_fg:
        fg = rng.choice(fg, size=n_fg, replace=False)
    bg = np.flatnonzero((overlaps < train_cfg.BG_THRESH_HI) & (overlaps >= train_cfg.BG_THRESH_LO))
    n_bg = min(rois_per_image - n_fg, bg.size)
    if n_bg:
        bg = rng.choice(bg, size=n_bg, replace=False)
    keep = np.concatenate([fg[:n_fg], bg[:n_bg]]).astype(np.int64)
    labels = entry["max_classes"][keep].astype(np.int32)
    labels[n_fg:] = 0
    return keep, labels


def plan_minibatch(roidb, indices, cfg, rng):
    """The random part of a minibatch: per image (roidb index, scale, sampled RoI indices, labels)."""
    train = cfg.TRAIN
    num_images = len(indices)
    if train.BATCH_SIZE % num_images:
        raise Error(f"TRAIN.BATCH_SIZE ({train.BATCH_SIZE}) must be a multiple of TRAIN.IMS_PER_BATCH "
                    f"({num_images})")
    rois_per_image = train.BATCH_SIZE // num_images
    fg_per_image = int(np.round(train.FG_FRACTION * rois_per_image))
    scale_inds = rng.integers(0, len(train.SCALES), size=num_images)
    plan = []
    for index, scale_ind in zip(indices, scale_inds):
        keep, labels = sample_rois(roidb[index], rois_per_image, fg_per_image, train, rng)
        plan.append((int(index), train.SCALES[int(scale_ind)], keep, labels))
    return plan


def build_minibatch(roidb, plan, cfg, num_classes, with_bbox):
    """The blobs of a planned minibatch: data, rois, labels (and bbox_targets, bbox_loss_weights)."""
    images, rois, labels, targets = [], [], [], []
    for n, (index, target_size, keep, lab) in enumerate(plan):
        entry = roidb[index]
        image = read_image(entry["image"], entry["flipped"])
        im, scale = prep_image(image, cfg.PIXEL_MEANS, target_size, cfg.TRAIN.MAX_SIZE)
        images.append(im)
        rois.append(scaled_rois(entry["boxes"][keep], scale, n))
        labels.append(lab)
        if with_bbox:
            targets.append(entry["bbox_targets"][keep])
    blobs = {"data": images_to_blob(images),
             "rois": np.vstack(rois).astype(np.float32),
             "labels": np.concatenate(labels).astype(np.float32)}
    if with_bbox:
        blobs["bbox_targets"], blobs["bbox_loss_weights"] = expand_bbox_targets(np.vstack(targets), num_classes)
    return blobs


def expand_bbox_targets(compact, num_classes):
    """Compact rows [class, dx, dy, dw, dh] → (R, 4K) targets and 0/1 loss weights in the class's columns."""
    targets = np.zeros((len(compact), 4 * num_classes), np.float32)
    weights = np.zeros_like(targets)
    classes = compact[:, 0].astype(np.int64)
    rows = np.flatnonzero(classes > 0)
    cols = 4 * classes[rows, None] + np.arange(4)
    targets[rows[:, None], cols] = compact[rows, 1:]
    weights[rows[:, None], cols] = 1.0
    return targets, weights
