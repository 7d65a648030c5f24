"""Detection: ``im_detect`` and the test protocols, as the original's lib/fast_rcnn/test.py.

``im_detect`` builds the image pyramid of TEST.SCALES, gives each RoI the level where its area is closest to
224², removes duplicate RoIs as the original does (``np.round`` hashing at DEDUP_BOXES, both RoIs and boxes
reduced, results broadcast back through the inverse index), forwards all RoIs at once (in chunks of
TEST.ROIS_PER_FORWARD over one conv pass when set), and decodes ``bbox_pred`` with +EPS widths, clipped to
the image. Scores come from ``cls_prob`` (or the raw ``cls_score`` with TEST.SVM).
"""
import heapq

import numpy as np

from .. import backend
from ..errors import Error
from .boxes import bbox_transform_inv, clip_boxes, nms
from .image import images_to_blob, prep_image, scaled_rois

_DEDUP_WEIGHTS = np.array([1, 1e3, 1e6, 1e9, 1e12])


def image_pyramid(image, cfg):
    """(N×3×H×W blob of the image at every TEST.SCALES, the scale factors)."""
    levels, scales = [], []
    for target in cfg.TEST.SCALES:
        im, scale = prep_image(image, cfg.PIXEL_MEANS, target, cfg.TEST.MAX_SIZE)
        levels.append(im)
        scales.append(scale)
    return images_to_blob(levels), np.array(scales)


def project_rois(boxes, scales):
    """RoIs [level, x1, y1, x2, y2] at the level whose scaled area is closest to 224² (the original's rule)."""
    boxes = boxes.astype(np.float64)
    if len(scales) > 1:
        widths = boxes[:, 2] - boxes[:, 0] + 1
        heights = boxes[:, 3] - boxes[:, 1] + 1
        areas = (widths * heights)[:, None] * (scales[None, :] ** 2)
        levels = np.abs(areas - 224 * 224).argmin(axis=1)
    else:
        levels = np.zeros(len(boxes), dtype=np.int64)
    return scaled_rois(boxes, scales[levels], levels)


def _roi_layer(net):
    for name, layer in zip(net.layer_names, net.layers):
        if layer.type == "ROIPooling":
            return name
    raise Error(f"net '{net.name}' has no ROIPooling layer; a Fast R-CNN test net needs one")


def forward_rois(net, data, rois, chunk=0):
    """Forward the image blob and RoIs; with ``chunk`` > 0 the conv layers run once and the RoI part in
    chunks of at most ``chunk`` RoIs. Returns {output: array} on the host, concatenated over chunks."""
    if "data" not in net.blobs or "rois" not in net.blobs:
        raise Error(f"net '{net.name}' needs inputs named 'data' and 'rois' (it has {', '.join(net.inputs)})")
    wanted = [b for b in ("cls_prob", "cls_score", "bbox_pred") if b in net.blobs]
    if not chunk or len(rois) <= chunk:
        out = net.forward(blobs=wanted, data=data, rois=rois)
        return {k: np.array(backend.to_cpu(v), copy=True) for k, v in out.items()}
    start = _roi_layer(net) if hasattr(net, "layers") else None  # an OnnxNet runs whole, on the last data
    parts = []
    for i in range(0, len(rois), chunk):
        if i == 0:
            out = net.forward(blobs=wanted, data=data, rois=rois[:chunk])
        else:
            out = net.forward(blobs=wanted, start=start, rois=rois[i:i + chunk])
        parts.append({k: np.array(backend.to_cpu(v), copy=True) for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def im_detect(net, image, boxes, cfg):
    """(scores (R, K+1), boxes (R, 4(K+1))) for proposals ``boxes`` (R, 4) of a BGR image."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    data, scales = image_pyramid(image, cfg)
    rois = project_rois(boxes, scales)
    inverse = None
    if cfg.DEDUP_BOXES > 0 and len(rois):
        hashes = np.round(rois * cfg.DEDUP_BOXES).dot(_DEDUP_WEIGHTS)
        _, index, inverse = np.unique(hashes, return_index=True, return_inverse=True)
        rois, boxes = rois[index], boxes[index]
    out = forward_rois(net, data, rois, cfg.TEST.ROIS_PER_FORWARD)
    if cfg.TEST.SVM:
        if "cls_score" not in out:
            raise Error(f"TEST.SVM is set but net '{net.name}' has no 'cls_score' blob")
        scores = out["cls_score"]
    elif "cls_prob" in out:
        scores = out["cls_prob"]
    else:
        raise Error(f"net '{net.name}' has no 'cls_prob' output (a Softmax on cls_score); set TEST.SVM to "
                    "score with the raw cls_score")
    scores = scores.reshape(len(rois), -1)
    if cfg.TEST.BBOX_REG and "bbox_pred" in out:
        pred = bbox_transform_inv(boxes, out["bbox_pred"].reshape(len(rois), -1))
        pred = clip_boxes(pred, image.shape)
    else:
        pred = np.tile(boxes, (1, scores.shape[1]))
    if inverse is not None:
        scores, pred = scores[inverse.ravel()], pred[inverse.ravel()]
    return scores, pred


def _class_dets(scores, boxes, j, inds):
    return np.hstack([boxes[inds, 4 * j:4 * j + 4], scores[inds, j:j + 1]]).astype(np.float32)


class OriginalProtocol:
    """The original test protocol: per class, at most 100 detections per image before NMS, and an adaptive
    threshold that keeps 40 × (number of images) detections per class over the whole set.

    ``image`` keeps each class's top 100 candidates of one image, whatever the threshold; ``add``, called in
    image order, keeps those above the running threshold and raises it. The top 100 above a threshold are
    those of the top 100 that pass it, so the two steps select what the original selects, and ``image``
    depends on its image alone (ranks can run it on their shares of the set).

    The per-image top-k cut sorts by descending score with a stable sort, the same rule as our NMS and VOC
    evaluation: among equal scores the earlier RoI wins. The original's default (unstable) ``np.argsort``
    leaves the order of ties, and so which of them survive the cut, to NumPy.
    """

    def __init__(self, num_classes, num_images, cfg):
        self.max_per_image = cfg.TEST.MAX_PER_IMAGE
        self.max_per_set = 40 * num_images
        self.thresh = [-np.inf] * num_classes
        self.heaps = [[] for _ in range(num_classes)]

    def image(self, scores, boxes, candidate):
        dets = [np.zeros((0, 5), np.float32)]
        inds = np.flatnonzero(candidate)
        for j in range(1, scores.shape[1]):
            top = inds[np.argsort(-scores[inds, j], kind="stable")[:self.max_per_image]]  # ties: earlier RoI
            dets.append(_class_dets(scores, boxes, j, top))
        return dets

    def add(self, dets):
        kept = [dets[0]]
        for j, d in enumerate(dets[1:], 1):
            d = d[d[:, 4] > self.thresh[j]]
            heap = self.heaps[j]
            for s in d[:, 4]:
                heapq.heappush(heap, float(s))
            if len(heap) > self.max_per_set:
                while len(heap) > self.max_per_set:
                    heapq.heappop(heap)
                self.thresh[j] = heap[0]
            kept.append(d)
        return kept

    def finish(self, all_boxes):
        """Re-filter every class with its final threshold (the detections the original saves before NMS)."""
        return [[d[d[:, 4] > self.thresh[j]] for d in row] for j, row in enumerate(all_boxes)]


class PyFasterProtocol:
    """py-faster-rcnn's protocol: score ≥ TEST.DET_THRESH, NMS per class, then at most
    TEST.MAX_PER_IMAGE detections per image over all classes."""

    def __init__(self, num_classes, num_images, cfg):
        self.cfg = cfg

    def image(self, scores, boxes, candidate):
        dets = [np.zeros((0, 5), np.float32)]
        for j in range(1, scores.shape[1]):
            inds = np.flatnonzero((scores[:, j] >= self.cfg.TEST.DET_THRESH) & candidate)
            d = _class_dets(scores, boxes, j, inds)
            dets.append(d[nms(d, self.cfg.TEST.NMS)] if len(d) else d)
        limit = self.cfg.TEST.MAX_PER_IMAGE
        all_scores = np.concatenate([d[:, 4] for d in dets[1:]])
        if limit and len(all_scores) > limit:
            cut = np.sort(all_scores)[-limit]
            dets = [dets[0]] + [d[d[:, 4] >= cut] for d in dets[1:]]
        return dets

    def add(self, dets):
        return dets

    def finish(self, all_boxes):
        return all_boxes


PROTOCOLS = {"original": OriginalProtocol, "py-faster-rcnn": PyFasterProtocol}


def apply_nms(all_boxes, thresh):
    """NMS per class and image (the original's apply_nms); idempotent on already suppressed sets."""
    return [[d[nms(d, thresh)] if len(d) else d for d in row] for row in all_boxes]


def shard(num_images, communicator=None):
    """The indices of the images this rank detects: image i goes to rank i mod (number of ranks)."""
    return range(num_images) if communicator is None else range(communicator.rank, num_images, communicator.size)


def detect_dataset(net, images, proposals, num_classes, cfg, gt_boxes=None, progress=None, communicator=None):
    """Run detection over a set: ``images`` yields BGR arrays, ``proposals`` the boxes of each image.

    ``gt_boxes`` (per image, optional) are forwarded with the proposals, as the original's VOC07 test roidb
    carries them, but never reported. Returns ``dets[j][i]``, (n, 5) float32 arrays of class j in image i,
    thresholded by the protocol and not yet suppressed (the original saves these; ``apply_nms`` follows).
    With a ``communicator`` of several ranks, ``images`` yields this rank's ``shard`` only: each rank detects
    its images, and rank 0 gathers them and applies the set-wide part of the protocol in image order, so it
    returns what one process returns (the other ranks return None).
    """
    num_images = len(proposals)
    protocol = PROTOCOLS[cfg.TEST.PROTOCOL](num_classes, num_images, cfg)
    mine = []
    for i, image in zip(shard(num_images, communicator), images):
        props = np.asarray(proposals[i], dtype=np.float32).reshape(-1, 4)
        gt = np.zeros((0, 4), np.float32) if gt_boxes is None else np.asarray(gt_boxes[i], np.float32)
        boxes = np.vstack([gt, props])
        candidate = np.arange(len(boxes)) >= len(gt)
        scores, pred = im_detect(net, image, boxes, cfg)
        mine.append(protocol.image(scores, pred, candidate))
        if progress is not None:
            progress()
    per_image = mine
    if communicator is not None and communicator.size > 1:
        shares = communicator.gather_object(mine)
        if communicator.rank != 0:
            return None
        per_image = [shares[i % communicator.size][i // communicator.size] for i in range(num_images)]
    dets = [[None] * num_images for _ in range(num_classes)]
    for i, image_dets in enumerate(per_image):
        for j, d in enumerate(protocol.add(image_dets)):
            dets[j][i] = d
    return protocol.finish(dets)
