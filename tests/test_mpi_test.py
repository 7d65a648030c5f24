"""Sharded testing: ``mpiexec -n 2 frcnn-test`` deals the images to two ranks and writes what one process
writes; a rank that fails ends the whole run quickly; ``mpiexec -n 2 frcnn-proposals`` writes the proposal
cache of one process."""
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy
import pytest
from mpi_helpers import break_quantization_tables

from fastrcnn import comm
from fastrcnn.rcnn.datasets import get_dataset
from fastrcnn.rcnn.datasets.toy import generate_toy_dataset
from fastrcnn.rcnn.proposals import load_or_compute_proposals
from fastrcnn.rcnn import tester
from fastrcnn.rcnn.train import train
from fastrcnn.weights import read_weights

REPO = Path(__file__).resolve().parents[1]
NET = str(REPO / "prototxt" / "toy" / "test.prototxt")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy set of 5 test images (rank 0 gets 3, rank 1 gets 2) and weights trained for 2 iterations."""
    root = tmp_path_factory.mktemp("toy")
    generate_toy_dataset(root / "small", seed=4, num_train=4, num_test=5)
    weights = train(str(REPO / "prototxt" / "toy" / "solver.prototxt"), imdb=f"voc:{root / 'small'}:train",
                    iters=2, output_dir=root / "train", data_root=root, progress=False,
                    set_pairs=["TRAIN.SCALES", "(160,)", "TRAIN.MAX_SIZE", "240"])
    return root, weights


def _frcnn_test(toy, output, ranks=None, timeout=120):
    root, weights = toy
    command = [sys.executable, "-m", "fastrcnn.cli.test", NET, weights, "--imdb", f"voc:{root / 'small'}:test",
               "--data-root", str(root), "--output", str(output), "--quiet", "--workers", "1"]
    if ranks:
        command = [comm.mpiexec(), "-n", str(ranks)] + command
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env())


def _members(path):
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def test_two_ranks_write_the_detections_and_map_of_one_process(toy, tmp_path):
    one = _frcnn_test(toy, tmp_path / "one")
    assert one.returncode == 0, one.stderr
    two = _frcnn_test(toy, tmp_path / "two", ranks=2)
    assert two.returncode == 0, two.stderr
    assert one.stdout.splitlines()[-1].startswith("mAP: ")
    assert two.stdout == one.stdout  # the AP table and mAP, printed once (rank 1 prints nothing)
    assert two.stderr.count("Detections and results in") == 1
    # every array and the metadata of the .npz byte for byte (the zip's own timestamps are the write's time)
    dets = numpy.load(tmp_path / "one" / "detections.npz")
    assert all(len(dets[k]) < 5 * 100 for k in dets.files if k.startswith("dets/"))  # the set-wide cap bit
    assert _members(tmp_path / "two" / "detections.npz") == _members(tmp_path / "one" / "detections.npz")
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    for name in files:
        if name.suffix != ".npz":
            assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


def test_a_failing_rank_ends_every_rank_with_its_message(toy, tmp_path):
    root, weights = toy
    broken = tmp_path / "broken"
    generate_toy_dataset(broken / "small", seed=4, num_train=4, num_test=5)
    dataset = get_dataset(f"voc:{broken / 'small'}:test", broken)
    load_or_compute_proposals(dataset, tester.test_config(read_weights(weights)[1]), broken, progress=False)
    images = sorted((broken / "small" / "JPEGImages").glob("test_*.jpg"))
    break_quantization_tables(images[1])  # image 1: rank 1's first; its header still reads
    start = time.monotonic()
    result = _frcnn_test((broken, weights), tmp_path / "out", ranks=2, timeout=60)
    assert result.returncode != 0
    assert time.monotonic() - start < 30
    assert f"rank 1: error: {images[1]}: cannot read the image" in result.stderr
    assert not (tmp_path / "out" / "detections.npz").exists()


def _env():
    env = {k: v for k, v in os.environ.items() if not comm.launched_by_mpi({k: v})}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


def test_two_ranks_write_the_proposal_cache_of_one_process(tmp_path):
    outputs, caches = [], []
    for ranks in (None, 2):
        root = tmp_path / f"ranks{ranks}"
        generate_toy_dataset(root / "small", seed=6, num_train=1, num_test=5)
        command = [sys.executable, "-m", "fastrcnn.cli.proposals", f"voc:{root / 'small'}:test", "--data-root",
                   str(root), "--workers", "1", "--quiet"]
        if ranks:
            command = [comm.mpiexec(), "-n", str(ranks)] + command
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=_env())
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout.replace(str(root), "ROOT"))
        (cache,) = (root / "cache" / "proposals").glob("*.npz")
        caches.append((cache.name, _members(cache)))
    assert outputs[1] == outputs[0] and outputs[0].count("\n") == 1  # printed once
    assert caches[1] == caches[0]
