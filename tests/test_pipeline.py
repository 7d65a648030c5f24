"""The training and test pipeline on small generated datasets: the original S/M/L prototxts train unchanged,
toy training resumes bitwise, and detection, evaluation, compression and the demo run end to end."""
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

import fastrcnn
from fastrcnn.rcnn.datasets.toy import DEFAULT_CLASSES, generate_toy_dataset
from fastrcnn.rcnn.datasets.voc import VOC_CLASSES
from fastrcnn.rcnn.train import train
from fastrcnn.weights import read_weights
from model_helpers import msra_fill

REPO = Path(__file__).resolve().parents[1]
SMALL = ["TRAIN.SCALES", "(96,)", "TRAIN.MAX_SIZE", "160", "TEST.SCALES", "(96,)", "TEST.MAX_SIZE", "160"]


@pytest.fixture(scope="module")
def voc20(tmp_path_factory):
    """A VOC-layout dataset of 4 images whose objects carry VOC class names (no classes.txt: the 20 classes)."""
    folder = generate_toy_dataset(tmp_path_factory.mktemp("voc20") / "VOC", seed=5, num_train=4, num_test=2)
    rename = dict(zip(DEFAULT_CLASSES, VOC_CLASSES[::4]))
    for xml in (folder / "Annotations").glob("*.xml"):
        text = xml.read_text()
        for shape, voc in rename.items():
            text = text.replace(f"<name>{shape}</name>", f"<name>{voc}</name>")
        xml.write_text(text)
    (folder / "classes.txt").unlink()
    return folder


@pytest.mark.parametrize("model", ["CaffeNet", "VGG_CNN_M_1024", "VGG16"])
def test_original_solver_trains_one_iteration_unchanged(model, voc20, reference_dir, tmp_path, monkeypatch):
    """The original solver names models/<Model>/train.prototxt relative to the fast-rcnn root."""
    (tmp_path / "models").symlink_to(reference_dir / "original-models")
    monkeypatch.chdir(tmp_path)
    weights = train(f"models/{model}/solver.prototxt", iters=1, imdb=f"voc:{voc20}:train", set_pairs=SMALL,
                    output_dir=tmp_path / "out", data_root=tmp_path / "data", progress=False)
    layers, meta = read_weights(weights)
    assert meta["iter"] == 1 and meta["classes"][1:] == list(VOC_CLASSES)
    assert layers["bbox_pred"][0].shape[0] == 84
    assert not layers["bbox_pred"][0][:4].any()  # the background rows are saved as zeros (std 0)


@pytest.fixture(scope="module")
def toy_small(tmp_path_factory):
    root = tmp_path_factory.mktemp("toydata")
    generate_toy_dataset(root / "small", seed=3, num_train=6, num_test=4)
    return root


def toy_train(toy_small, out, **kw):
    return train(str(REPO / "prototxt" / "toy" / "solver.prototxt"), imdb=f"voc:{toy_small / 'small'}:train",
                 output_dir=out, data_root=toy_small, progress=False,
                 set_pairs=["TRAIN.SCALES", "(160,)", "TRAIN.MAX_SIZE", "240", "TRAIN.IMS_PER_BATCH", "2"], **kw)


def test_toy_training_resumes_bitwise(toy_small, tmp_path):
    straight = toy_train(toy_small, tmp_path / "a", iters=6)
    toy_train(toy_small, tmp_path / "b", iters=3)
    resumed = toy_train(toy_small, tmp_path / "b", iters=6, restore=tmp_path / "b" / "toy_fast_rcnn_iter_3.solverstate")
    a, _ = read_weights(straight)
    b, _ = read_weights(resumed)
    assert list(a) == list(b)
    for name in a:
        for x, y in zip(a[name], b[name]):
            np.testing.assert_array_equal(x, y, err_msg=name)


def test_wrong_class_count_is_reported_before_training(toy_small, tmp_path):
    text = (REPO / "prototxt" / "toy" / "train.prototxt").read_text()
    (tmp_path / "train.prototxt").write_text(text)
    (tmp_path / "solver.prototxt").write_text('train_net: "train.prototxt" base_lr: 0.01 lr_policy: "fixed" '
                                               'max_iter: 1 snapshot_prefix: "x"')
    folder = toy_small / "small"
    custom = tmp_path / "custom"
    shutil.copytree(folder, custom)
    (custom / "classes.txt").write_text("ellipse\nrectangle\ntriangle\nstar\ncross\nring\n")
    with pytest.raises(fastrcnn.Error, match=r"(?s)7 classes including background.*num_classes is 6, should be 7"):
        train(str(tmp_path / "solver.prototxt"), imdb=f"voc:{custom}:train", output_dir=tmp_path / "o",
              data_root=toy_small, progress=False)


@pytest.mark.parametrize("snapshots", [["TRAIN.SNAPSHOT_ITERS", "1"], ["TRAIN.SNAPSHOT_ITERS", "0"]],
                         ids=["snapshot_iters", "solver_snapshot"])
def test_a_diverging_run_stops_before_it_snapshots_broken_weights(toy_small, tmp_path, snapshots):
    """base_lr 1e6: BatchNorm's running statistics overflow a few iterations before the loss does. Training
    stops at the first non-finite param or loss, every snapshot written is finite, and the message names the last
    one; the same with the solver's own ``snapshot`` interval in place of TRAIN.SNAPSHOT_ITERS."""
    solver = re.sub(r"base_lr: \S+", "base_lr: 1e6", (REPO / "prototxt" / "toy" / "solver.prototxt").read_text())
    solver = solver.replace('train_net: "train.prototxt"', f'train_net: "{REPO / "prototxt/toy/train.prototxt"}"')
    if snapshots[1] == "0":
        solver = solver.replace("snapshot: 0", "snapshot: 1")
    (tmp_path / "solver.prototxt").write_text(solver)
    with pytest.raises(fastrcnn.Error, match=r"(the loss|the params of .*) became .* at iteration \d+") as error:
        train(str(tmp_path / "solver.prototxt"), imdb=f"voc:{toy_small / 'small'}:train", iters=50,
              output_dir=tmp_path / "o", data_root=toy_small, progress=False,
              set_pairs=["TRAIN.SCALES", "(160,)", *snapshots])
    snapshots = sorted((tmp_path / "o").glob("*.solverstate"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    assert snapshots and f"The last good snapshot is {snapshots[-1]}." in str(error.value)
    for path in snapshots:
        layers, _ = read_weights(path.with_suffix(".npz"))
        for name, blobs in layers.items():
            assert all(np.isfinite(b).all() for b in blobs), (path.name, name)


def test_test_and_reval_compress_and_demo(toy_small, tmp_path, capsys):
    from fastrcnn.cli import compress as compress_cli
    from fastrcnn.cli import demo as demo_cli
    from fastrcnn.cli import test as test_cli
    weights = toy_train(toy_small, tmp_path / "train", iters=2)
    net = str(REPO / "prototxt" / "toy" / "test.prototxt")
    common = ["--imdb", f"voc:{toy_small / 'small'}:test", "--data-root", str(toy_small), "--quiet"]
    test_cli.main([net, weights, "--output", str(tmp_path / "test"), "--profile", "--vis", "1", "--workers", "3"]
                  + common)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("mAP: 0.") or lines[-1] == "mAP: 1.0000"
    assert {"conv", "roi_pool", "fc6", "fc7"} <= {line.split()[0] for line in lines if line.startswith("  ")}
    assert (tmp_path / "test" / "detections.npz").exists() and list((tmp_path / "test" / "vis").glob("*.png"))
    assert len(list((tmp_path / "test" / "results").glob("comp4_det_*.txt"))) == len(DEFAULT_CLASSES)
    test_cli.main(["--reval", str(tmp_path / "test")] + common)
    assert capsys.readouterr().out.strip().splitlines()[-1] == lines[-1]
    compress_cli.main([net, weights, "--layers", "fc6:64,fc7:64", "--output", str(tmp_path / "svd")])
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("fc6: relative reconstruction error") and out[-1].endswith(".npz")
    small = fastrcnn.Net(out[-2].split(": ", 1)[1], "TEST", weights=out[-1])
    assert small.params["fc6_L"][0].shape == (64, 128 * 36) and small.params["fc6_U"][0].shape == (256, 64)
    image = next((toy_small / "small" / "JPEGImages").glob("test_*.jpg"))
    demo_cli.main([str(image), "--net", net, "--weights", weights, "--thresh", "0", "--output",
                   str(tmp_path / "demo"), "--data-root", str(toy_small)])
    assert (tmp_path / "demo" / f"{image.stem}_detections.png").exists()


@pytest.mark.slow
def test_demo_runs_on_the_original_images_with_the_s_net(reference_dir, tmp_path, capsys):
    from fastrcnn.cli import demo as demo_cli
    net_path = str(REPO / "prototxt" / "CaffeNet" / "test.prototxt")
    net = fastrcnn.Net(net_path, "TEST")
    msra_fill(net, seed=0)
    net.save(str(tmp_path / "s.caffemodel"))
    images = [str(reference_dir / "demo-images" / f"{i}.jpg") for i in ("000004", "001551")]
    demo_cli.main(images + ["--net", net_path, "--weights", str(tmp_path / "s.caffemodel"), "--thresh", "0.0",
                            "--output", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert "2888 proposals" in out and "2057 proposals" in out
    for stem in ("000004", "001551"):
        assert cv2.imread(str(tmp_path / "demo" / f"{stem}_detections.png")) is not None
