"""Region proposals: the original's selective-search .mat files, OpenCV's selective search, and the cache.

OpenCV's selective search (Uijlings et al.'s "fast" mode, as used to make the original's proposals) returns
the same set of boxes on every run but in a varying order, so the boxes are de-duplicated and sorted
canonically; when more than ``top_k`` remain, a fixed pseudo-random subset is kept (a cut of a sorted list
would favour one corner of the image). Proposals for a dataset are computed in worker processes and cached
under ``<data_root>/cache/proposals/`` as .npz, keyed by the dataset folder (relative to the data root, so a
cache can be copied to another machine), split, method, top-k and the image list.
"""
import hashlib
import json
import logging
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from ..errors import Error
from ..weights import read_npz, write_npz
from .boxes import _boxes

log = logging.getLogger("fastrcnn")
CACHE_VERSION = 1


def _canonical(boxes, top_k):
    """Unique boxes in lexicographic order; beyond ``top_k`` (0 = all), a fixed pseudo-random subset."""
    boxes = np.unique(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), axis=0)
    if top_k and len(boxes) > top_k:
        keep = np.sort(np.random.default_rng(0).permutation(len(boxes))[:top_k])
        boxes = boxes[keep]
    return boxes


def selective_search(image, top_k=2000):
    """(n, 4) float32 boxes x1, y1, x2, y2 (0-based inclusive) from OpenCV's selective search, fast mode
    (``switchToSelectiveSearchFast()``: base_k = inc_k = 150, sigma = 0.8), of a BGR, BGRA or grey uint8 image."""
    import cv2
    try:
        segmentation = cv2.ximgproc.segmentation
    except AttributeError:
        raise Error("selective search needs OpenCV's contrib modules: install opencv-contrib-python-headless "
                    "(and not opencv-python alongside it)") from None
    image = np.asarray(image)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise Error(f"selective search needs an 8-bit BGR, BGRA or grey image, got a {image.dtype} array of "
                    f"shape {image.shape}")
    ss = segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(image))
    ss.switchToSelectiveSearchFast()
    rects = np.asarray(ss.process(), dtype=np.float32).reshape(-1, 4)
    boxes = np.column_stack([rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2] - 1,
                             rects[:, 1] + rects[:, 3] - 1])
    return _canonical(boxes, top_k)


def _one_thread():
    """Worker initialiser: one OpenCV thread per worker process (the processes are the parallelism)."""
    import cv2
    cv2.setNumThreads(1)


def _worker(args):
    path, top_k = args
    import cv2
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise Error(f"{path}: cannot read the image")
    return selective_search(image, top_k)


def compute_selective_search(paths, top_k=2000, workers=None, progress=True):
    """Selective search on every image, in parallel worker processes, with a progress bar."""
    from tqdm import tqdm
    workers = workers or os.cpu_count() or 1
    jobs = [(str(p), top_k) for p in paths]
    bar = tqdm(total=len(jobs), desc="selective search", unit="im", disable=not progress, dynamic_ncols=True)
    try:
        if workers == 1 or len(jobs) < 2:
            results = []
            for job in jobs:
                results.append(_worker(job))
                bar.update(1)
            return results
        # spawn, never fork: a child forked after OpenCV has started its thread pool in this process can hang
        # for ever inside OpenCV (seen in cv2.setNumThreads); the workers use one thread each
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context,
                                 initializer=_one_thread) as pool:
            results = []
            for boxes in pool.map(_worker, jobs, chunksize=4):
                results.append(boxes)
                bar.update(1)
            return results
    except BrokenProcessPool:
        raise Error("the selective-search worker processes died; a script that computes proposals must run its "
                    "main code under `if __name__ == \"__main__\":` (the workers are spawned and import it), "
                    "or use one worker") from None
    finally:
        bar.close()


def load_proposals_file(path, num_images=None, layout=None):
    """Proposals from a file: the original's dataset-level selective-search .mat (a cell array of 1-based
    y1 x1 y2 x2 boxes, one per image: a list is returned), a per-image .mat like the demo's ``*_boxes.mat``
    (0-based x1 y1 x2 y2: one array), or an .npz written by this module (a list).

    ``layout`` ('dataset' or 'image') says which .mat form the file is; by default it is told by structure: a
    cell array, or a 3-D array (what ``scipy.io.savemat`` writes for a list of equally long arrays), is
    dataset-level, a 2-D array is one image's.
    """
    path = Path(path)
    if layout not in (None, "dataset", "image"):
        raise Error(f"{path}: the proposals layout must be 'dataset' or 'image', not {layout!r}")
    if path.suffix == ".npz":
        return _read_cache(path)[0]
    if path.suffix != ".mat":
        raise Error(f"{path}: proposals must be a .mat or .npz file")
    import scipy.io
    try:
        boxes = scipy.io.loadmat(str(path))["boxes"]
    except (OSError, ValueError, TypeError, NotImplementedError, scipy.io.matlab.MatReadError) as exc:
        raise Error(f"{path}: cannot read the .mat file ({exc})") from None
    except KeyError:
        raise Error(f"{path}: has no 'boxes' variable") from None
    per_image = boxes.dtype != object and boxes.ndim != 3
    if layout == "image" and not per_image:
        raise Error(f"{path}: 'boxes' holds {boxes.shape} {'cells' if boxes.dtype == object else 'values'}, "
                    f"not one image's (N, 4) array")
    if per_image and layout != "dataset":
        return _mat_boxes(boxes, f"{path}: 'boxes'")
    cells = boxes.ravel() if boxes.dtype == object else (list(boxes) if boxes.ndim == 3 else [boxes])
    if num_images is not None and len(cells) != num_images:
        raise Error(f"{path}: holds proposals for {len(cells)} images, the dataset has {num_images}")
    return [_mat_boxes(c, f"{path}: 'boxes' of image {k}")[:, (1, 0, 3, 2)] - 1 for k, c in enumerate(cells)]


def _mat_boxes(array, name):
    """A .mat variable as an (n, 4) float32 array (an empty one as (0, 4)), or an `Error` naming it."""
    try:
        array = np.asarray(array, np.float32)
    except (TypeError, ValueError):
        raise Error(f"{name}: not a numeric array") from None
    return _boxes(array, name)


# -- the cache ---------------------------------------------------------------------------------------------
def _cache_path(dataset, method, top_k, data_root):
    root = Path(dataset.root or ".").resolve()
    try:
        folder = root.relative_to(Path(data_root).resolve()).as_posix()
    except ValueError:
        folder = root.as_posix()
    key = json.dumps([folder, dataset.split, method, top_k, list(dataset.image_ids)])
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{folder}_{dataset.split}_{method}_top{top_k}")[-80:].lstrip(".")
    meta = {"format": "fastrcnn-proposals", "version": CACHE_VERSION, "folder": folder, "split": dataset.split,
            "method": method, "top_k": top_k, "image_ids": list(dataset.image_ids)}
    return Path(data_root) / "cache" / "proposals" / f"{stem}_{digest}.npz", meta


def _write_cache(path, boxes, meta):
    counts = np.array([len(b) for b in boxes], np.int64)
    flat = np.vstack(boxes) if boxes else np.zeros((0, 4), np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_npz(str(path), {"boxes": flat.astype(np.float32), "counts": counts}, meta)


def _read_cache(path):
    arrays, meta = read_npz(str(path), "proposals")
    if meta.get("format") != "fastrcnn-proposals" or "boxes" not in arrays or "counts" not in arrays:
        raise Error(f"{path}: not a fastrcnn proposals file")
    counts = arrays["counts"]
    if counts.sum() != len(arrays["boxes"]):
        raise Error(f"{path}: corrupt proposals file (counts disagree with the boxes)")
    return np.split(arrays["boxes"].reshape(-1, 4), np.cumsum(counts)[:-1]), meta


def load_or_compute_proposals(dataset, cfg, data_root, workers=None, progress=True, communicator=None):
    """The proposals of every image of ``dataset`` as configured by PROPOSALS and PROPOSALS_TOP_K.

    PROPOSALS 'selective_search' uses the original's ``<data_root>/selective_search_data/<name>.mat`` for the
    VOC named sets when present, else OpenCV's selective search (computed once, then cached); any other value
    is a proposals file (.mat or .npz) with one entry per image. With a ``communicator`` of several ranks,
    each rank computes the selective search of images i ≡ rank (mod ranks), rank 0 gathers them and writes
    the cache (the file one process writes), and the others then read it.
    """
    parts = getattr(dataset, "parts", None)
    if parts:
        return [b for part in parts
                for b in load_or_compute_proposals(part, cfg, data_root, workers, progress, communicator)]
    top_k = cfg.PROPOSALS_TOP_K
    if cfg.PROPOSALS != "selective_search":
        boxes = load_proposals_file(cfg.PROPOSALS, dataset.num_images)
        if isinstance(boxes, np.ndarray) or len(boxes) != dataset.num_images:
            raise Error(f"{cfg.PROPOSALS}: not a proposals file for the {dataset.num_images} images of "
                        f"{dataset.name}")
        return [b[:top_k] if top_k else b for b in boxes]
    original = Path(data_root) / "selective_search_data" / f"{dataset.name}.mat"
    if original.exists():
        log.info("Proposals from %s", original)
        return [b[:top_k] if top_k else b for b in load_proposals_file(original, dataset.num_images)]
    path, meta = _cache_path(dataset, "selective_search", top_k, data_root)
    if path.exists():
        boxes, found = _read_cache(path)
        if found.get("image_ids") == meta["image_ids"] and len(boxes) == dataset.num_images:
            return boxes
        log.warning("%s does not match %s; computing the proposals again", path, dataset.name)
    log.info("Computing selective search proposals for %d images of %s (cached in %s)", dataset.num_images,
             dataset.name, path)
    rank, size = (0, 1) if communicator is None else (communicator.rank, communicator.size)
    boxes = compute_selective_search([dataset.image_path(i) for i in range(rank, dataset.num_images, size)],
                                     top_k, workers, progress and rank == 0)
    if size > 1:
        shares = communicator.gather_object(boxes)
        if rank == 0:
            boxes = [shares[i % size][i // size] for i in range(dataset.num_images)]
            _write_cache(path, boxes, meta)
        communicator.barrier()
        return boxes if rank == 0 else _read_cache(path)[0]
    _write_cache(path, boxes, meta)
    return boxes
