"""Region proposals: the original's .mat files, OpenCV's selective search and the proposals cache."""
import shutil

import cv2
import numpy as np
import pytest
import scipy.io

import fastrcnn
from fastrcnn.rcnn import proposals
from fastrcnn.rcnn.boxes import bbox_overlaps
from fastrcnn.rcnn.config import default_config
from fastrcnn.rcnn.datasets import VOCDataset, get_dataset
from fastrcnn.rcnn.datasets.toy import DEFAULT_CLASSES, generate_toy_dataset, render_toy_image
from fastrcnn.rcnn.proposals import load_or_compute_proposals, load_proposals_file, selective_search
from fastrcnn.weights import read_npz

REAL_COMPUTE = proposals.compute_selective_search


def cell_array(per_image):
    """A MATLAB cell array (an object array) holding one array per image, as the original's .mat files."""
    cells = np.empty((1, len(per_image)), object)
    for k, boxes in enumerate(per_image):
        cells[0, k] = np.asarray(boxes, np.float64).reshape(-1, 4)
    return cells


def config(proposals_setting="selective_search", top_k=2000):
    cfg = default_config()
    cfg.PROPOSALS = proposals_setting
    cfg.PROPOSALS_TOP_K = top_k
    return cfg


def forbid_compute(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("proposals computed again instead of read from the cache")
    monkeypatch.setattr(proposals, "compute_selective_search", fail)


def count_compute(monkeypatch, fake=None):
    """Replace compute_selective_search by ``fake`` (or the real one) and count the calls in the returned list."""
    calls = []

    def spy(paths, top_k=2000, workers=None, progress=True):
        calls.append((list(paths), top_k))
        return (fake or REAL_COMPUTE)(paths, top_k, workers, progress)
    monkeypatch.setattr(proposals, "compute_selective_search", spy)
    return calls


def toy_root(root):
    generate_toy_dataset(root / "toy", 0, DEFAULT_CLASSES, num_train=6, num_test=3)
    return root


def toy_train(root):
    return get_dataset(f"voc:{root / 'toy'}:train", data_root=root)


# -- .mat files --------------------------------------------------------------------------------------------
def test_dataset_level_mat_becomes_0_based_x1_y1_x2_y2(tmp_path):
    path = tmp_path / "voc_2007_test.mat"
    # 1-based y1 x1 y2 x2, as selective_search_data/*.mat
    scipy.io.savemat(path, {"boxes": cell_array([[[5, 1, 20, 30], [1, 2, 3, 4]], np.zeros((0, 4)),
                                                 [[10, 20, 110, 220]]])})
    boxes = load_proposals_file(path, num_images=3)
    assert isinstance(boxes, list) and len(boxes) == 3
    assert all(b.dtype == np.float32 and b.shape[1] == 4 for b in boxes)
    np.testing.assert_array_equal(boxes[0], [[0, 4, 29, 19], [1, 0, 3, 2]])
    assert boxes[1].shape == (0, 4)
    np.testing.assert_array_equal(boxes[2], [[19, 9, 219, 109]])
    with pytest.raises(fastrcnn.Error, match="3 images, the dataset has 4"):
        load_proposals_file(path, num_images=4)


@pytest.mark.parametrize("name,count", [("000004", 2888), ("001551", 2057)])
def test_demo_boxes_mat_loads_as_0_based_x1_y1_x2_y2(reference_dir, name, count):
    folder = reference_dir / "demo-images"
    raw = scipy.io.loadmat(str(folder / f"{name}_boxes.mat"))["boxes"]
    assert raw.dtype == np.uint16
    boxes = load_proposals_file(folder / f"{name}_boxes.mat")
    assert isinstance(boxes, np.ndarray) and boxes.dtype == np.float32 and boxes.shape == (count, 4)
    np.testing.assert_array_equal(boxes, raw.astype(np.float32))  # already 0-based x1 y1 x2 y2: kept as is
    height, width = cv2.imread(str(folder / f"{name}.jpg")).shape[:2]
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert boxes.min() == 0 and boxes[:, 2].max() <= width - 1 and boxes[:, 3].max() <= height - 1


def test_bad_proposals_files_are_errors(tmp_path):
    with pytest.raises(fastrcnn.Error, match=r"boxes\.pkl: proposals must be a \.mat or \.npz"):
        load_proposals_file(tmp_path / "boxes.pkl")
    scipy.io.savemat(tmp_path / "other.mat", {"proposals": np.zeros((2, 4))})
    with pytest.raises(fastrcnn.Error, match="other.mat: has no 'boxes' variable"):
        load_proposals_file(tmp_path / "other.mat")
    with pytest.raises(fastrcnn.Error, match="missing.mat: cannot read"):
        load_proposals_file(tmp_path / "missing.mat")
    for name, content in (("empty.mat", b""), ("text.mat", b"not a MATLAB file " * 20)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(fastrcnn.Error, match=f"{name}: cannot read the .mat file"):
            load_proposals_file(tmp_path / name)
    scipy.io.savemat(tmp_path / "wide.mat", {"boxes": np.zeros((2, 6))})
    with pytest.raises(fastrcnn.Error, match=r"wide.mat: 'boxes': expected an \(N, 4\) array"):
        load_proposals_file(tmp_path / "wide.mat")
    scipy.io.savemat(tmp_path / "cells.mat", {"boxes": cell_array([[[1, 1, 2, 2]], np.zeros((0, 4))])})
    cells = scipy.io.loadmat(str(tmp_path / "cells.mat"))["boxes"]
    cells[0, 1] = np.zeros((2, 3))
    scipy.io.savemat(tmp_path / "cells.mat", {"boxes": cells})
    with pytest.raises(fastrcnn.Error, match=r"cells.mat: 'boxes' of image 1: expected an \(N, 4\) array"):
        load_proposals_file(tmp_path / "cells.mat")
    scipy.io.savemat(tmp_path / "words.mat", {"boxes": "boxes"})
    with pytest.raises(fastrcnn.Error, match="words.mat: 'boxes': not a numeric array"):
        load_proposals_file(tmp_path / "words.mat")


# -- selective search --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_image():
    return render_toy_image(np.random.default_rng([7, 0, 0]), DEFAULT_CLASSES)[0]


def test_selective_search_is_deterministic_and_inside_the_image(toy_image):
    first = selective_search(toy_image, top_k=0)
    again = selective_search(toy_image, top_k=0)
    np.testing.assert_array_equal(first, again)  # same boxes, same order
    height, width = toy_image.shape[:2]
    assert first.dtype == np.float32 and first.ndim == 2 and first.shape[1] == 4 and len(first) > 100
    assert len(np.unique(first, axis=0)) == len(first)
    assert (first[:, :2] >= 0).all() and (first[:, 2] <= width - 1).all() and (first[:, 3] <= height - 1).all()
    assert (first[:, 2] >= first[:, 0]).all() and (first[:, 3] >= first[:, 1]).all()
    np.testing.assert_array_equal(selective_search(toy_image, top_k=len(first)), first)

    subset = selective_search(toy_image, top_k=50)
    assert subset.shape == (50, 4)
    np.testing.assert_array_equal(selective_search(toy_image, top_k=50), subset)  # a fixed subset
    rows = {tuple(b) for b in first}
    assert all(tuple(b) in rows for b in subset)
    assert not np.array_equal(subset, first[:50])  # spread over the list, not its first (top-left) boxes


# -- load_or_compute_proposals and the cache ---------------------------------------------------------------
@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    """A 6-image toy training set whose selective-search proposals were computed (2 workers) and cached."""
    root = toy_root(tmp_path_factory.mktemp("data"))
    dataset = toy_train(root)
    with pytest.MonkeyPatch.context() as patch:
        calls = count_compute(patch)
        boxes = load_or_compute_proposals(dataset, config(), root, workers=2, progress=False)
    assert len(calls) == 1 and calls[0][1] == 2000
    return root, dataset, boxes


def test_computed_once_then_read_from_the_cache(computed, monkeypatch):
    root, dataset, boxes = computed
    assert len(boxes) == dataset.num_images == 6
    files = list((root / "cache" / "proposals").glob("*.npz"))
    assert len(files) == 1
    arrays, meta = read_npz(files[0], "proposals")
    assert meta["folder"] == "toy"  # relative to the data root
    assert meta["split"] == "train" and meta["top_k"] == 2000 and meta["image_ids"] == dataset.image_ids
    forbid_compute(monkeypatch)
    cached = load_or_compute_proposals(toy_train(root), config(), root, workers=2, progress=False)
    assert len(cached) == len(boxes)
    for a, b in zip(cached, boxes):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.float32


def test_the_cache_survives_moving_the_data_root(computed, tmp_path, monkeypatch):
    root, _, boxes = computed
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    forbid_compute(monkeypatch)
    cached = load_or_compute_proposals(toy_train(moved), config(), moved, progress=False)
    for a, b in zip(cached, boxes):
        np.testing.assert_array_equal(a, b)


def test_proposals_are_inside_the_images_and_recall_the_objects(computed):
    _, dataset, boxes = computed
    hits = total = 0
    for entry, props in zip(dataset.gt_roidb(), boxes):
        assert 0 < len(props) <= 2000
        assert (props[:, :2] >= 0).all() and (props[:, 2] <= entry["width"] - 1).all()
        assert (props[:, 3] <= entry["height"] - 1).all()
        assert (props[:, 2] >= props[:, 0]).all() and (props[:, 3] >= props[:, 1]).all()
        best = bbox_overlaps(props, entry["boxes"]).max(0)
        hits += int((best >= 0.5).sum())
        total += len(entry["boxes"])
    assert total >= 6 and hits / total >= 0.9


def test_the_cache_key_follows_the_image_list_and_top_k(tmp_path, monkeypatch):
    root = toy_root(tmp_path)
    calls = count_compute(monkeypatch, lambda paths, top_k, workers, progress:
                          [np.array([[0, 0, k, k]], np.float32) for k in range(len(paths))])
    load_or_compute_proposals(toy_train(root), config(), root)
    load_or_compute_proposals(toy_train(root), config(), root)
    assert len(calls) == 1
    load_or_compute_proposals(toy_train(root), config(top_k=100), root)
    assert len(calls) == 2 and calls[-1][1] == 100
    load_or_compute_proposals(get_dataset(f"voc:{root / 'toy'}:test", data_root=root), config(), root)
    assert len(calls) == 3 and len(calls[-1][0]) == 3
    index = root / "toy" / "ImageSets" / "Main" / "train.txt"
    index.write_text("".join(index.read_text().splitlines(keepends=True)[:4]))  # the same split, fewer images
    boxes = load_or_compute_proposals(toy_train(root), config(), root)
    assert len(calls) == 4 and len(calls[-1][0]) == 4 and len(boxes) == 4
    assert len(list((root / "cache" / "proposals").glob("*.npz"))) == 4
    load_or_compute_proposals(toy_train(root), config(), root)
    assert len(calls) == 4


def test_a_proposals_file_setting_is_loaded(tmp_path, monkeypatch):
    root = toy_root(tmp_path)
    forbid_compute(monkeypatch)
    dataset = toy_train(root)
    per_image = [[[1, 1, 10 + k, 20 + k], [2, 3, 4, 5], [5, 5, 9, 9]] for k in range(6)]
    path = tmp_path / "mine.mat"
    scipy.io.savemat(path, {"boxes": cell_array(per_image)})
    boxes = load_or_compute_proposals(dataset, config(str(path)), root)
    assert len(boxes) == 6
    np.testing.assert_array_equal(boxes[3], [[0, 0, 22, 12], [2, 1, 4, 3], [4, 4, 8, 8]])
    boxes = load_or_compute_proposals(dataset, config(str(path), top_k=2), root)
    assert all(len(b) == 2 for b in boxes)

    scipy.io.savemat(path, {"boxes": cell_array(per_image[:5])})
    with pytest.raises(fastrcnn.Error, match="mine.mat: holds proposals for 5 images, the dataset has 6"):
        load_or_compute_proposals(dataset, config(str(path)), root)
    scipy.io.savemat(path, {"boxes": np.zeros((6, 4), np.uint16)})  # one image's boxes, as the demo's
    with pytest.raises(fastrcnn.Error, match="not a proposals file for the 6 images"):
        load_or_compute_proposals(dataset, config(str(path)), root)


def test_a_cache_file_is_a_proposals_file(tmp_path, monkeypatch):
    root = toy_root(tmp_path)
    count_compute(monkeypatch, lambda paths, top_k, workers, progress:
                  [np.array([[0, 0, k, k], [1, 1, 5, 5]], np.float32) for k in range(len(paths))])
    computed = load_or_compute_proposals(toy_train(root), config(), root)
    (cache,) = (root / "cache" / "proposals").glob("*.npz")
    forbid_compute(monkeypatch)
    loaded = load_or_compute_proposals(toy_train(root), config(str(cache)), root)
    for a, b in zip(loaded, computed):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(fastrcnn.Error, match="not a proposals file for the 3 images"):
        load_or_compute_proposals(get_dataset(f"voc:{root / 'toy'}:test", data_root=root), config(str(cache)),
                                  root)


def test_the_original_selective_search_data_is_used_for_a_named_set(tmp_path, monkeypatch):
    root = toy_root(tmp_path)
    forbid_compute(monkeypatch)
    dataset = VOCDataset(root / "toy", "test", name="toy_test")
    (root / "selective_search_data").mkdir()
    scipy.io.savemat(root / "selective_search_data" / "toy_test.mat",
                     {"boxes": cell_array([[[1, 2, 3, 4]]] * 3)})
    boxes = load_or_compute_proposals(dataset, config(), root)
    assert len(boxes) == 3
    np.testing.assert_array_equal(boxes[2], [[1, 0, 3, 2]])
