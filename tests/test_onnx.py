"""ONNX export: onnxruntime runs the exported S, M, L, compressed S, toy and a ResNet-style net as fastrcnn does
(within 1e-4 relative, RoIs on .5 boundaries and at the border included), MaxRoiPool bin for bin as the
original's RoI pooling, layers without a faithful equivalent are refused by name, and ``frcnn-test --onnx``
detects as the native net."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

import fastrcnn
from fastrcnn.errors import Error
from fastrcnn.onnx_export import META_KEY, OnnxNet, build_model

REPO = Path(__file__).resolve().parents[1]


def fill(net, seed=0):
    """Random weights in place: He-scaled convolutions and fc layers, BatchNorm statistics of a plausible
    spread (running sums with a count of 3), Scale factors around 1."""
    rng = np.random.default_rng(seed)
    for name, blobs in net.params.items():
        kind = net.layer_dict[name].type
        if kind == "BatchNorm":
            c = blobs[0].shape[0]
            blobs[0].data[...] = 3 * 0.1 * rng.standard_normal(c)
            blobs[1].data[...] = 3 * rng.uniform(0.5, 2.0, c)
            blobs[2].data[...] = 3
            continue
        if kind in ("Scale", "Bias"):
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].shape)
        else:
            weight = blobs[0]
            weight.data[...] = rng.standard_normal(weight.shape) * np.sqrt(2.0 / (weight.count // weight.shape[0]))
        for bias in blobs[1:]:
            bias.data[...] = 0.01 * rng.standard_normal(bias.shape)


def make_rois(rng, count, height, width, scale):
    """RoIs [batch, x1, y1, x2, y2] over two images: random ones, ones whose corners times ``scale`` fall on
    .5 (where C's round and NumPy's differ), at the border and beyond it, and one malformed (x2 < x1)."""
    x1, y1 = rng.uniform(0, width - 1, count), rng.uniform(0, height - 1, count)
    x2 = np.minimum(x1 + rng.uniform(0, width, count), width - 1)
    y2 = np.minimum(y1 + rng.uniform(0, height, count), height - 1)
    rois = [np.stack([rng.integers(0, 2, count), x1, y1, x2, y2], 1)]
    step = 1 / scale  # a feature cell in image pixels
    half = (rng.integers(0, int(width * scale) - 1, (count, 4)) + 0.5) * step
    half[:, 2:] = np.maximum(half[:, 2:], half[:, :2])
    rois.append(np.hstack([rng.integers(0, 2, (count, 1)), half[:, [0, 1, 2, 3]]]))
    rois.append(np.array([[0, 0, 0, width - 1, height - 1], [1, width - 1, height - 1, width - 1, height - 1],
                          [1, 0.5 * step, 0.5 * step, width + 2 * step, height + 2 * step],
                          [0, -step, -0.5 * step, 0.5 * step, height - 0.5 * step],
                          [1, width - 0.5 * step, 0, width - 0.5 * step, 0.5 * step], [0, 8 * step, 4, 2 * step, 3]]))
    return np.vstack(rois).astype(np.float32)


def run_onnx(model, feed):
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def assert_same_outputs(net, height, width, scale=1 / 16, rois=40, seed=1):
    rng = np.random.default_rng(seed)
    model = build_model(net)
    data = rng.standard_normal((2, 3, height, width), dtype=np.float32)
    boxes = make_rois(rng, rois, height, width, scale)
    ours = {k: np.array(v) for k, v in net.forward(data=data, rois=boxes).items()}
    theirs = run_onnx(model, {"data": data, "rois": boxes})
    assert sorted(theirs) == sorted(ours) == sorted(net.outputs)
    for name, value in ours.items():
        assert theirs[name].shape == value.shape, name
        error = np.abs(theirs[name] - value).max() / np.abs(value).max()
        assert error < 1e-4, f"{name}: relative error {error:.2e}"
    return model


@pytest.mark.parametrize("prototxt, size", [("toy/test.prototxt", (64, 80)), ("CaffeNet/test.prototxt", (96, 112)),
                                            ("CaffeNet/compressed/test.prototxt", (96, 112)),
                                            ("VGG_CNN_M_1024/test.prototxt", (96, 112))])
def test_onnxruntime_matches_fastrcnn(prototxt, size):
    net = fastrcnn.Net(str(REPO / "prototxt" / prototxt), "TEST")
    fill(net)
    model = assert_same_outputs(net, *size, scale=1 / 8 if prototxt.startswith("toy") else 1 / 16)
    graph = model.graph
    assert [i.name for i in graph.input] == ["data", "rois"]
    data_dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert data_dims == ["N", 3, "H", "W"]
    assert [d.dim_param or d.dim_value for d in graph.input[1].type.tensor_type.shape.dim] == ["R", 5]
    assert "Dropout" not in {n.op_type for n in graph.node}


@pytest.mark.slow
def test_onnxruntime_matches_fastrcnn_on_vgg16():
    net = fastrcnn.Net(str(REPO / "prototxt" / "VGG16" / "test.prototxt"), "TEST")
    fill(net)
    assert_same_outputs(net, 64, 80, rois=20)


RESNET = """
name: "TinyResNet"
input: "data" input_shape { dim: 1 dim: 3 dim: 32 dim: 32 }
input: "rois" input_shape { dim: 1 dim: 5 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 bias_term: false } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "a" type: "Convolution" bottom: "pool1" top: "a"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "bn_a" type: "BatchNorm" bottom: "a" top: "a" }
layer { name: "scale_a" type: "Scale" bottom: "a" top: "a" scale_param { bias_term: false } }
layer { name: "leaky" type: "ReLU" bottom: "a" top: "a" relu_param { negative_slope: 0.1 } }
layer { name: "sum" type: "Eltwise" bottom: "pool1" bottom: "a" top: "sum" eltwise_param { coeff: 1 coeff: -0.5 } }
layer { name: "prod" type: "Eltwise" bottom: "sum" bottom: "pool1" top: "prod" eltwise_param { operation: PROD } }
layer { name: "max" type: "Eltwise" bottom: "sum" bottom: "prod" top: "max" eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "max" bottom: "pool1" top: "cat" }
layer { name: "norm" type: "LRN" bottom: "cat" top: "norm"
        lrn_param { local_size: 5 alpha: 0.001 beta: 0.75 k: 2 } }
layer { name: "ave" type: "Pooling" bottom: "norm" top: "ave"
        pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "roi_pool" type: "ROIPooling" bottom: "ave" bottom: "rois" top: "pooled"
        roi_pooling_param { pooled_w: 3 pooled_h: 2 spatial_scale: 0.125 } }
layer { name: "flat" type: "Flatten" bottom: "pooled" top: "flat" }
layer { name: "fc" type: "InnerProduct" bottom: "flat" top: "fc" inner_product_param { num_output: 12 } }
layer { name: "bn_fc" type: "BatchNorm" bottom: "fc" top: "fc" }
layer { name: "drop" type: "Dropout" bottom: "fc" top: "fc" dropout_param { dropout_ratio: 0.5 } }
layer { name: "shaped" type: "Reshape" bottom: "fc" top: "shaped" reshape_param { shape { dim: 0 dim: 3 dim: -1 } } }
layer { name: "tanh" type: "TanH" bottom: "shaped" top: "tanh" }
layer { name: "back" type: "Reshape" bottom: "tanh" top: "back" reshape_param { shape { dim: 0 dim: -1 } } }
layer { name: "cls_score" type: "InnerProduct" bottom: "back" top: "cls_score" inner_product_param { num_output: 4 } }
layer { name: "cls_prob" type: "Softmax" bottom: "cls_score" top: "cls_prob" }
layer { name: "bbox_pred" type: "InnerProduct" bottom: "back" top: "bbox_pred" inner_product_param { num_output: 16 } }
"""


def test_resnet_style_layers_export(tmp_path):
    """BatchNorm/Scale/Eltwise (SUM with coefficients, PROD, MAX), leaky ReLU, Concat, LRN, AVE pooling with
    padding, Flatten, Reshape, TanH, Dropout and the Split layers of blobs read twice."""
    path = tmp_path / "resnet.prototxt"
    path.write_text(RESNET)
    net = fastrcnn.Net(str(path), "TEST")
    fill(net, seed=4)
    assert any(layer.type == "Split" for layer in net.layers)
    for height, width in ((37, 45), (40, 40)):  # ceil pooling's last window past the map, and within it
        assert_same_outputs(net, height, width, scale=0.125, rois=20)


ROI_ONLY = """
input: "data" input_shape { dim: 1 dim: 4 dim: 9 dim: 11 }
input: "rois" input_shape { dim: 1 dim: 5 }
layer { name: "roi_pool" type: "ROIPooling" bottom: "data" bottom: "rois" top: "pooled"
        roi_pooling_param { pooled_w: 3 pooled_h: 4 spatial_scale: %s } }
"""


@pytest.mark.parametrize("scale", ["0.0625", "0.5", "0.3333"])
def test_maxroipool_pools_every_bin_as_the_original(tmp_path, scale):
    """Bin for bin the same maxima (exactly), with empty bins at 0, for RoIs on .5 boundaries, at and beyond the
    border, negative and malformed ones."""
    path = tmp_path / "roi.prototxt"
    path.write_text(ROI_ONLY % scale)
    net = fastrcnn.Net(str(path), "TEST")
    rng = np.random.default_rng(7)
    features = rng.standard_normal((2, 4, 9, 11), dtype=np.float32)
    rois = make_rois(rng, 200, int(9 / float(scale)), int(11 / float(scale)), float(scale))
    ours = np.array(net.forward(data=features, rois=rois)["pooled"])
    theirs = run_onnx(build_model(net), {"data": features, "rois": rois})["pooled"]
    np.testing.assert_array_equal(theirs, ours)
    assert (ours == 0).any()  # some bins are empty (beyond the map)


def net_from(tmp_path, text):
    path = tmp_path / "net.prototxt"
    path.write_text('input: "data" input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }\n' + text)
    return fastrcnn.Net(str(path), "TEST")


@pytest.mark.parametrize("layer, message", [
    ('layer { name: "norm" type: "LRN" bottom: "data" top: "norm" lrn_param { norm_region: WITHIN_CHANNEL } }',
     "layer 'norm' (LRN): norm_region WITHIN_CHANNEL"),
    ('layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" '
     'pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }',
     "layer 'pool' (Pooling): ceil rounding with pad + stride > kernel"),
    ('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { use_global_stats: false } }',
     "layer 'bn' (BatchNorm): use_global_stats false"),
    ('layer { name: "fill" type: "DummyData" top: "fill" dummy_data_param { shape { dim: 1 } } }',
     "layer 'fill' (DummyData): this layer type has no export"),
])
def test_a_layer_without_faithful_equivalent_is_refused_by_name(tmp_path, layer, message):
    with pytest.raises(Error, match="ONNX has no faithful equivalent") as info:
        build_model(net_from(tmp_path, layer))
    assert message in str(info.value)


def test_frcnn_export_writes_a_checked_model_with_the_weights_metadata(tmp_path):
    net = fastrcnn.Net(str(REPO / "prototxt" / "toy" / "test.prototxt"), "TEST")
    fill(net)
    weights = tmp_path / "toy.npz"
    net.save(str(weights), meta={"classes": ["__background__", "a", "b", "c", "d", "e"]})
    out = tmp_path / "toy.onnx"
    command = [sys.executable, "-m", "fastrcnn.cli.export", str(REPO / "prototxt" / "toy" / "test.prototxt"),
               str(weights), str(out)]
    done = subprocess.run(command + ["--opset", "18"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "opset 18" in done.stdout and "outputs bbox_pred, cls_prob" in done.stdout
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    meta = json.loads({p.key: p.value for p in model.metadata_props}[META_KEY])
    assert meta["classes"][1] == "a"
    assert OnnxNet(out).weights_meta["classes"] == meta["classes"]
    bad = subprocess.run(command[:-1] + [str(tmp_path / "x.onnx"), "--opset", "9"], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert bad.returncode == 1 and "--opset 9: the export supports opsets 13" in bad.stderr
    assert not (tmp_path / "x.onnx").exists()


@pytest.fixture(scope="module")
def toy_small(tmp_path_factory):
    from fastrcnn.rcnn.datasets.toy import generate_toy_dataset
    root = tmp_path_factory.mktemp("toydata")
    generate_toy_dataset(root / "small", seed=3, num_train=6, num_test=4)
    return root


def native_and_onnx_detections(weights, imdb, data_root, tmp_path, capsys, extra=()):
    """frcnn-test with NET WEIGHTS, then frcnn-export and frcnn-test --onnx: (mAP lines, detections files)."""
    from fastrcnn.cli import export as export_cli
    from fastrcnn.cli import test as test_cli
    from fastrcnn.rcnn.tester import load_detections
    net = str(REPO / "prototxt" / "toy" / "test.prototxt")
    common = ["--imdb", imdb, "--data-root", str(data_root), "--quiet", *extra]
    test_cli.main([net, weights, "--output", str(tmp_path / "native")] + common)
    native = capsys.readouterr().out.strip().splitlines()[-1]
    export_cli.main([net, weights, str(tmp_path / "toy.onnx")])
    capsys.readouterr()
    test_cli.main(["--onnx", str(tmp_path / "toy.onnx"), "--output", str(tmp_path / "onnx")] + common)
    exported = capsys.readouterr().out.strip().splitlines()[-1]
    return (native, exported), [load_detections(tmp_path / d / "detections.npz")[0] for d in ("native", "onnx")]


def unmatched_detections(a, b, rtol=1e-4, atol=1e-3):
    """Rows of A with no row of B equal within the tolerance (each row of B used once)."""
    free = np.ones(len(b), bool)
    missing = 0
    for row in a:
        close = free & np.all(np.abs(b - row) <= atol + rtol * np.abs(row), axis=1)
        if close.any():
            free[np.argmax(close)] = False
        else:
            missing += 1
    return missing


def assert_same_detections(ours, theirs, flips=0.0):
    """The same detections per class and image within float32 tolerance. FLIPS is the fraction of rows that
    may differ: ONNX Runtime's float32 differs from ours in the last bits, so a box whose overlap with a kept
    box lies at the NMS threshold can be kept by one and suppressed by the other, which moves the rows after
    it (a trained net has many near-duplicate boxes; two iterations' net has none at the threshold)."""
    total = sum(len(d) for row in ours[1:] for d in row)
    assert total > 0
    missing = 0
    for row_ours, row_theirs in zip(ours, theirs):
        for a, b in zip(row_ours, row_theirs):
            if not flips:
                assert a.shape == b.shape
                np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-3)
            missing += max(unmatched_detections(a, b), unmatched_detections(b, a))
    assert missing <= flips * total, f"{missing} of {total} detections differ"


def test_frcnn_test_onnx_detects_as_the_native_net(toy_small, tmp_path, capsys):
    """A toy detector trained two iterations: the same detections (boxes and scores) and mAP, also with the
    RoIs forwarded in chunks (the ONNX model then runs whole per chunk)."""
    from fastrcnn.rcnn.train import train
    weights = train(str(REPO / "prototxt" / "toy" / "solver.prototxt"), imdb=f"voc:{toy_small / 'small'}:train",
                    output_dir=tmp_path / "train", data_root=toy_small, progress=False, iters=2,
                    set_pairs=["TRAIN.SCALES", "(160,)", "TRAIN.MAX_SIZE", "240", "TRAIN.IMS_PER_BATCH", "2"])
    for extra in ((), ("--set", "TEST.ROIS_PER_FORWARD", "50")):
        (native, exported), (ours, theirs) = native_and_onnx_detections(
            weights, f"voc:{toy_small / 'small'}:test", toy_small, tmp_path / str(len(extra)), capsys, extra)
        assert native.startswith("mAP: ") and abs(float(native.split()[1]) - float(exported.split()[1])) <= 0.001
        assert_same_detections(ours, theirs)


def test_frcnn_demo_onnx_and_option_errors(toy_small, tmp_path, capsys):
    from fastrcnn.cli import demo as demo_cli
    from fastrcnn.cli import test as test_cli
    net = fastrcnn.Net(str(REPO / "prototxt" / "toy" / "test.prototxt"), "TEST")
    fill(net)
    net.params["bbox_pred"][0].data *= 0.01  # box deltas of a plausible size
    model = tmp_path / "toy.onnx"
    model.write_bytes(build_model(net).SerializeToString())
    image = next((toy_small / "small" / "JPEGImages").glob("test_*.jpg"))
    demo_cli.main([str(image), "--onnx", str(model), "--thresh", "0", "--output", str(tmp_path / "demo"),
                   "--data-root", str(toy_small)])
    assert (tmp_path / "demo" / f"{image.stem}_detections.png").exists()
    assert "detections" in capsys.readouterr().out
    for argv in (["a.prototxt", "w.npz", "--onnx", str(model)], ["--onnx", str(model), "--profile"]):
        with pytest.raises(SystemExit):
            test_cli.main(argv)
    assert "--onnx replaces NET and WEIGHTS" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        test_cli.main(["--onnx", str(tmp_path / "missing.onnx"), "--imdb", "toy_test", "--quiet"])
    assert "missing.onnx' does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_trained_toy_detector_map_through_onnx_equals_native(tmp_path, capsys):
    """The toy detector as the README trains it (full solver): mAP through frcnn-test --onnx within 0.001."""
    from fastrcnn.rcnn.train import train
    data_root = tmp_path / "data"
    weights = train(str(REPO / "prototxt" / "toy" / "solver.prototxt"), output_dir=tmp_path / "train",
                    data_root=data_root, progress=False)
    (native, exported), (ours, theirs) = native_and_onnx_detections(weights, "toy_test", data_root, tmp_path,
                                                                    capsys)
    print(native, exported)
    assert float(native.split()[1]) >= 0.9
    assert abs(float(native.split()[1]) - float(exported.split()[1])) <= 0.001
    assert_same_detections(ours, theirs, flips=0.01)
