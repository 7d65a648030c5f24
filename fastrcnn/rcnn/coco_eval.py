"""COCO box AP (0.5:0.95, 0.5, 0.75) of Fast R-CNN detections, through pycocotools.

Boxes here are 0-based inclusive ``x1, y1, x2, y2`` (width ``x2 - x1 + 1``); the COCO dataset reader made
them from COCO's ``[x, y, w, h]`` as ``x2 = x + w - 1`` (py-faster-rcnn's ``coco.py``). Detections go back the
same way, ``[x1, y1, x2 - x1 + 1, y2 - y1 + 1]``, so a detection that copies a ground-truth box is scored
against the original annotation box exactly.
"""
import contextlib
import io
import json
import os

import numpy as np

from ..errors import Error

_ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")


def _load_annotations(annotation_json):
    """The instances file as a dict (``annotation_json`` is a path or an already loaded dict)."""
    if isinstance(annotation_json, dict):
        data, source = annotation_json, "the annotation dict"
    else:
        source = os.fspath(annotation_json)
        try:
            with open(source, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as exc:
            raise Error(f"{source}: cannot read the annotation file ({exc.strerror or exc})") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise Error(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not all(key in data for key in ("images", "annotations", "categories")):
        raise Error(f"{source}: not a COCO instances file (needs 'images', 'annotations' and 'categories')")
    for k, ann in enumerate(data["annotations"]):
        missing = [key for key in _ANNOTATION_FIELDS if not isinstance(ann, dict) or key not in ann]
        if missing:
            raise Error(f"{source}: annotation {k} lacks the field(s) {missing} that COCOeval needs")
    if data is annotation_json:  # the caller's dict: COCOeval writes into the annotations, so it gets copies
        data = dict(data, annotations=[dict(ann) for ann in data["annotations"]])
    return data, source


def evaluate_coco(all_dets, image_ids, category_ids, annotation_json):
    """``{"AP": AP@[0.5:0.95], "AP50": ..., "AP75": ...}`` of ``all_dets[cls][img]`` by pycocotools' COCOeval.

    ``all_dets[cls][img]``: (n, 5) ``[x1, y1, x2, y2, score]``, class 0 (the background) ignored;
    ``image_ids[img]``: the COCO image id (an int or its decimal string); ``category_ids[cls - 1]``: the COCO
    category id of class ``cls``; ``annotation_json``: the instances file (path) or its loaded dict. Only the
    images of ``image_ids`` are evaluated; with no detections at all every AP is 0. COCOeval's own rules apply
    (IoU without +1 on the ``[x, y, w, h]`` boxes, at most 100 detections per image and class, crowd boxes
    ignored, 101-point interpolation).
    """
    try:
        from pycocotools.coco import COCO  # noqa: PLC0415  (an optional dependency, needed only here)
        from pycocotools.cocoeval import COCOeval  # noqa: PLC0415
    except ImportError as exc:
        raise Error(f"COCO evaluation needs pycocotools: pip install pycocotools ({exc})") from None
    data, source = _load_annotations(annotation_json)
    try:
        known_images = {str(image["id"]): image["id"] for image in data["images"]}
        known_categories = {c["id"] for c in data["categories"]}
    except (KeyError, TypeError):
        raise Error(f"{source}: every entry of 'images' and 'categories' needs an 'id'") from None
    if len(category_ids) != len(all_dets) - 1:
        raise Error(f"evaluate_coco: detections for {len(all_dets) - 1} object classes but "
                    f"{len(category_ids)} category ids")
    unknown = [c for c in category_ids if c not in known_categories]
    if unknown:
        raise Error(f"{source}: category ids {unknown[:10]} are not among its categories")
    coco_images = []
    for image_id in image_ids:
        if str(image_id) not in known_images:
            raise Error(f"{source}: image id {image_id!r} is not among its images")
        coco_images.append(known_images[str(image_id)])

    results = []
    for cls in range(1, len(all_dets)):
        if len(all_dets[cls]) != len(coco_images):
            raise Error(f"evaluate_coco: class {cls} has detections for {len(all_dets[cls])} images, "
                        f"expected {len(coco_images)}")
        for image_id, dets in zip(coco_images, all_dets[cls]):
            dets = np.asarray(dets, dtype=np.float64)
            if dets.size == 0:
                continue
            if dets.ndim != 2 or dets.shape[1] != 5:
                raise Error(f"evaluate_coco: detections of class {cls}, image {image_id}: expected an (N, 5) "
                            f"array, got shape {dets.shape}")
            widths = dets[:, 2] - dets[:, 0] + 1
            heights = dets[:, 3] - dets[:, 1] + 1
            results.extend({"image_id": image_id, "category_id": category_ids[cls - 1],
                            "bbox": [x, y, w, h], "score": s}
                           for x, y, w, h, s in zip(dets[:, 0].tolist(), dets[:, 1].tolist(), widths.tolist(),
                                                     heights.tolist(), dets[:, 4].tolist()))
    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools reports its progress on stdout
        coco_gt = COCO()
        coco_gt.dataset = data
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = sorted(set(coco_images))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {"AP": float(evaluator.stats[0]), "AP50": float(evaluator.stats[1]), "AP75": float(evaluator.stats[2])}
