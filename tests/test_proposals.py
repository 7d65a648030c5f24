"""Proposal .mat layouts, selective search on other image kinds, worker threads and recall on the toy data
(the cache and the original's files: test_region_proposals.py)."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

import fastrcnn
from fastrcnn.rcnn.boxes import bbox_overlaps
from fastrcnn.rcnn.datasets import VOCDataset
from fastrcnn.rcnn.datasets.toy import DEFAULT_CLASSES, generate_toy_dataset, render_toy_image
from fastrcnn.rcnn.proposals import compute_selective_search, load_proposals_file, selective_search


def test_a_list_of_equally_long_arrays_saved_by_scipy_is_dataset_level(tmp_path):
    path = tmp_path / "two.mat"
    scipy.io.savemat(path, {"boxes": [[[5, 1, 20, 30]], [[1, 2, 3, 4]]]})  # stored as a (2, 1, 4) array
    boxes = load_proposals_file(path, num_images=2)
    np.testing.assert_array_equal(boxes[0], [[0, 4, 29, 19]])
    np.testing.assert_array_equal(boxes[1], [[1, 0, 3, 2]])


def test_the_caller_may_name_the_mat_layout(tmp_path):
    path = tmp_path / "one.mat"
    scipy.io.savemat(path, {"boxes": np.array([[5, 1, 20, 30]], np.float64)})
    np.testing.assert_array_equal(load_proposals_file(path), [[5, 1, 20, 30]])  # by structure: one image
    (only,) = load_proposals_file(path, num_images=1, layout="dataset")
    np.testing.assert_array_equal(only, [[0, 4, 29, 19]])
    cells = np.empty((1, 1), object)
    cells[0, 0] = np.zeros((0, 4))
    scipy.io.savemat(tmp_path / "cells.mat", {"boxes": cells})
    with pytest.raises(fastrcnn.Error, match=r"cells.mat: 'boxes' holds \(1, 1\) cells, not one image's"):
        load_proposals_file(tmp_path / "cells.mat", layout="image")
    with pytest.raises(fastrcnn.Error, match="one.mat: the proposals layout must be 'dataset' or 'image'"):
        load_proposals_file(path, layout="rows")


@pytest.fixture(scope="module")
def toy_image():
    return render_toy_image(np.random.default_rng([3, 1, 0]), DEFAULT_CLASSES)[0]


def test_grey_and_bgra_images_are_searched_as_bgr(toy_image):
    grey = cv2.cvtColor(toy_image, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(selective_search(grey), selective_search(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)))
    bgra = cv2.cvtColor(toy_image, cv2.COLOR_BGR2BGRA)
    np.testing.assert_array_equal(selective_search(bgra), selective_search(toy_image))
    with pytest.raises(fastrcnn.Error, match="needs an 8-bit BGR, BGRA or grey image, got a float32"):
        selective_search(toy_image.astype(np.float32))


def test_workers_leave_the_callers_opencv_threads_alone(tmp_path):
    generate_toy_dataset(tmp_path, 0, DEFAULT_CLASSES, num_train=2, num_test=0)
    dataset = VOCDataset(tmp_path, "train")
    threads = cv2.getNumThreads()
    paths = [dataset.image_path(i) for i in range(2)]
    parallel = compute_selective_search(paths, workers=2, progress=False)
    assert cv2.getNumThreads() == threads
    for a, b in zip(parallel, compute_selective_search(paths, workers=1, progress=False)):
        np.testing.assert_array_equal(a, b)


def test_an_unguarded_script_gets_an_error_not_a_hang(tmp_path, toy_image):
    cv2.imwrite(str(tmp_path / "a.jpg"), toy_image)
    script = tmp_path / "unguarded.py"
    script.write_text("from fastrcnn.rcnn.proposals import compute_selective_search\n"
                      f"compute_selective_search([{str(tmp_path / 'a.jpg')!r}] * 2, workers=2, progress=False)\n")
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    assert "must run its main code under `if __name__ == \"__main__\":`" in done.stderr.splitlines()[-1]


def test_selective_search_recalls_nearly_every_toy_object(tmp_path):
    generate_toy_dataset(tmp_path, 0, DEFAULT_CLASSES, num_train=0, num_test=16)
    dataset = VOCDataset(tmp_path, "test")
    boxes = compute_selective_search([dataset.image_path(i) for i in range(dataset.num_images)], progress=False)
    best = np.concatenate([bbox_overlaps(props, entry["boxes"]).max(0)
                           for props, entry in zip(boxes, dataset.gt_roidb())])
    assert len(best) >= 30
    assert (best >= 0.5).mean() >= 0.97 and (best >= 0.7).mean() >= 0.85
