"""Testing a trained detector on a dataset: what ``frcnn-test`` runs (the original's tools/test_net.py).

The weights' metadata carries the training configuration and class names, so detection preprocesses as
training did; ``--cfg``/``--set`` override it. Detections are saved (``detections.npz``, before NMS, as the
original's detections.pkl but never a pickle) so that ``--reval`` re-evaluates without the network.
"""
import collections
import json
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import Error
from ..fileio import atomic_write_text
from ..net import Net
from ..weights import write_npz, read_npz
from . import config as config_mod
from .datasets import get_dataset
from .detect import apply_nms, detect_dataset, shard
from .image import prefetch_images, read_image
from .proposals import load_or_compute_proposals
from .voc_eval import evaluate_detections, format_ap_table, use_07_metric_for_year, write_voc_results

log = logging.getLogger("fastrcnn")
DEFAULT_IMDB = "voc_2007_test"


def test_config(meta, cfg_file=None, set_pairs=()):
    """The training configuration from the weights' metadata (defaults if absent) < YAML < --set."""
    cfg = config_mod.Config.from_dict(meta["config"], "the weights' metadata") if "config" in meta \
        else config_mod.default_config()
    if cfg_file:
        config_mod.merge_yaml_file(cfg, cfg_file)
    if set_pairs:
        config_mod.merge_pairs(cfg, list(set_pairs))
    return cfg


def default_test_imdb(train_imdb):
    """The test split of the set a model was trained on: toy_train → toy_test, voc:F:train → voc:F:test."""
    if not train_imdb or "+" in train_imdb:
        return DEFAULT_IMDB
    if train_imdb.startswith("voc:"):
        folder, _, _ = train_imdb[4:].rpartition(":")
        return f"voc:{folder}:test"
    base, _, split = train_imdb.rpartition("_")
    return f"{base}_test" if base and split in ("train", "trainval", "val") else DEFAULT_IMDB


def use_07_metric(dataset, cfg):
    """TEST.METRIC: 'voc07' (11-point), 'area' (VOC2010+), or 'auto' by the dataset's year."""
    if cfg.TEST.METRIC == "auto":
        return getattr(dataset, "use_07_metric", use_07_metric_for_year(dataset.year))
    return cfg.TEST.METRIC == "voc07"


def profile_breakdown(net, timings):
    """Seconds per stage as the paper's Fig. 2: conv (all before RoI pooling), roi_pool, each fc, other."""
    stages = collections.OrderedDict()
    stage = "conv"
    for name, layer in zip(net.layer_names, net.layers):
        if layer.type == "ROIPooling":
            stage = "roi_pool"
        elif layer.type == "InnerProduct":
            stage = name[:-2] if name.endswith(("_L", "_U")) else name
        elif stage == "roi_pool":
            stage = "other"
        stages[stage] = stages.get(stage, 0.0) + timings.get(name, 0.0)
    return stages


def save_detections(path, dets, image_ids, classes, cfg):
    """The pre-NMS detections as .npz: one (n, 6) array [image, x1, y1, x2, y2, score] per class."""
    arrays = {}
    for j, row in enumerate(dets[1:], 1):
        parts = [np.hstack([np.full((len(d), 1), i, np.float32), d]) for i, d in enumerate(row)]
        arrays[f"dets/{classes[j]}"] = np.vstack(parts) if parts else np.zeros((0, 6), np.float32)
    write_npz(path, arrays, {"format": "fastrcnn-detections", "version": 1, "image_ids": list(image_ids),
                             "classes": list(classes), "config": cfg.to_dict()})


def load_detections(path):
    arrays, meta = read_npz(path, "detections")
    if meta.get("format") != "fastrcnn-detections":
        raise Error(f"{path}: not a fastrcnn detections file")
    classes, num_images = meta["classes"], len(meta["image_ids"])
    dets = [[np.zeros((0, 5), np.float32)] * num_images]
    for name in classes[1:]:
        flat = arrays.get(f"dets/{name}", np.zeros((0, 6), np.float32))
        index = flat[:, 0].astype(np.int64)
        dets.append([flat[index == i, 1:] for i in range(num_images)])
    return dets, meta


def evaluate(dataset, dets, classes, cfg, output_dir):
    """NMS, results files, the AP table (printed and saved); returns the {class: AP, 'mAP': m} dict."""
    final = apply_nms(dets, cfg.TEST.NMS)
    gt = dataset.gt_roidb()
    aps = evaluate_detections(final, gt, classes, use_07_metric(dataset, cfg))
    if hasattr(dataset, "category_ids"):  # a COCO dataset: its own AP as well
        from .coco_eval import evaluate_coco
        coco = evaluate_coco(final, dataset.image_ids, dataset.category_ids, dataset.annotation_file)
        log.info("COCO AP@[.5:.95] %.4f, AP50 %.4f, AP75 %.4f", coco["AP"], coco["AP50"], coco["AP75"])
    write_voc_results(output_dir / "results", dataset.name.replace(":", "_").replace("/", "_"), classes, final,
                      dataset.image_ids)
    atomic_write_text(output_dir / "aps.json",
                      json.dumps({k: (None if np.isnan(v) else float(v)) for k, v in aps.items()}, indent=1))
    return aps


def load_detector(net_path, weights, onnx=None):
    """The TEST net with its weights, or with ``onnx`` that exported model run by onnxruntime (an OnnxNet)."""
    if onnx:
        from ..onnx_export import OnnxNet
        return OnnxNet(onnx)
    return Net(net_path, "TEST", weights=weights)


def run_test(net_path, weights, imdb=None, output_dir=None, cfg_file=None, set_pairs=(), data_root=None,
             profile=False, vis=0, progress=True, workers=2, onnx=None, communicator=None):
    """Detect on a dataset and evaluate; returns the AP dict (printed as a table ending with mAP). ``workers``
    threads decode the next images while the network runs; with ``onnx`` (instead of ``net_path`` and
    ``weights``) onnxruntime runs that exported model. With a ``communicator`` of several ranks each rank
    detects its share of the images and rank 0 alone evaluates, writes and prints, returning the AP dict
    (the others return None)."""
    from tqdm import tqdm
    net = load_detector(net_path, weights, onnx)
    meta = getattr(net, "weights_meta", {}) or {}
    cfg = test_config(meta, cfg_file, set_pairs)
    data_root = config_mod.resolve_data_root(data_root or cfg.DATA_ROOT)
    imdb = imdb or default_test_imdb(meta.get("imdb"))
    dataset = get_dataset(imdb, data_root)
    gt = dataset.validate()
    classes = list(dataset.classes)
    if "classes" in meta and list(meta["classes"]) != classes:
        raise Error(f"the weights were trained on classes {meta['classes'][1:]}, but {imdb} has {classes[1:]}")
    width = net.blobs["cls_score"].shape[-1] if "cls_score" in net.blobs else None
    if width is not None and width != len(classes):
        raise Error(f"net '{net.source}' scores {width} classes but {imdb} has {len(classes)} including background")
    root = communicator is None or communicator.rank == 0
    proposals = load_or_compute_proposals(dataset, cfg, data_root, progress=progress, communicator=communicator)
    include_gt = dataset.year == 2007 or dataset.split != "test"  # the original's VOC07 test roidb
    gt_boxes = [g["boxes"] for g in gt] if include_gt else None
    output_dir = Path(output_dir or Path("output") / "test" / Path(str(onnx or weights)).stem / imdb.replace(":", "_")
                      .replace("/", "_"))
    if root:
        output_dir.mkdir(parents=True, exist_ok=True)
    if profile:
        net.timings = collections.defaultdict(float)
    mine = shard(dataset.num_images, communicator)
    bar = tqdm(total=len(mine), disable=not (progress and root), unit="im", dynamic_ncols=True)
    images = prefetch_images((dataset.image_path(i) for i in mine), workers=workers, depth=2 * workers)
    start = time.perf_counter()
    dets = detect_dataset(net, images, proposals, len(classes), cfg, gt_boxes, progress=lambda: bar.update(1),
                          communicator=communicator)
    bar.close()
    detect_time = time.perf_counter() - start
    if not root:
        return None
    save_detections(output_dir / "detections.npz", dets, dataset.image_ids, classes, cfg)
    start = time.perf_counter()
    aps = evaluate(dataset, dets, classes, cfg, output_dir)
    if profile:
        _print_profile(net, len(mine), detect_time, time.perf_counter() - start)
    if vis:
        from .visualize import draw_detections
        final = apply_nms(dets, cfg.TEST.NMS)
        for i in range(min(vis, dataset.num_images)):
            draw_detections(read_image(dataset.image_path(i)), [row[i] for row in final], classes,
                            output_dir / "vis" / f"{dataset.image_ids[i]}.png", 0.5)
    print(format_ap_table({k: v for k, v in aps.items() if k != "mAP"}))
    log.info("Detections and results in %s", output_dir)
    return aps


def _print_profile(net, num_images, detect_time, eval_time):
    stages = profile_breakdown(net, net.timings)
    per_image = {k: 1000.0 * v / max(num_images, 1) for k, v in stages.items()}
    forward = sum(per_image.values())
    total = 1000.0 * detect_time / max(num_images, 1)
    print("Timing per image (ms), as the paper's Fig. 2:")
    for name, ms in per_image.items():
        print(f"  {name:<10s} {ms:9.2f}")
    print(f"  {'forward':<10s} {forward:9.2f}")
    print(f"  {'im_detect':<10s} {total:9.2f}   (preprocessing, forward, decoding)")
    print(f"  {'nms+eval':<10s} {1000.0 * eval_time / max(num_images, 1):9.2f}")


def reval(output_dir, imdb=None, cfg_file=None, set_pairs=(), data_root=None):
    """Re-evaluate saved detections (``frcnn-test --reval DIR``) without running the network."""
    output_dir = Path(output_dir)
    dets, meta = load_detections(output_dir / "detections.npz")
    cfg = test_config(meta, cfg_file, set_pairs)
    dataset = get_dataset(imdb or meta.get("imdb") or DEFAULT_IMDB,
                          config_mod.resolve_data_root(data_root or cfg.DATA_ROOT))
    if list(dataset.image_ids) != list(meta["image_ids"]):
        raise Error(f"{output_dir}/detections.npz was made on another image list than {dataset.name}")
    aps = evaluate(dataset, dets, meta["classes"], cfg, output_dir)
    print(format_ap_table({k: v for k, v in aps.items() if k != "mAP"}))
    return aps
