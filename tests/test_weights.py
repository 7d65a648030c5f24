"""Weights files: .npz and .caffemodel round trips, matching by layer name, bad files, atomic saves, convert."""
import json
import os

import numpy
import pytest

from fastrcnn import backend, protoio, weights
from fastrcnn.cli import convert as convert_cli
from fastrcnn.errors import Error
from fastrcnn.net import Net
from fastrcnn.proto import caffe_pb2

NET = """
name: "tiny"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 dim: 5 dim: 5 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 4 kernel_size: 3
    weight_filler {{ type: "gaussian" std: 0.1 }} bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "{fc}" type: "InnerProduct" bottom: "conv1" top: "score"
  inner_product_param {{ num_output: {num_output}
    weight_filler {{ type: "gaussian" std: 0.1 }} bias_filler {{ type: "gaussian" std: 0.1 }} }} }}
"""


def make_net(tmp_path, seed, fc="fc/score", num_output=3, phase="TRAIN", weights_file=None):
    path = tmp_path / f"net_{fc.replace('/', '_')}_{num_output}.prototxt"
    path.write_text(NET.format(fc=fc, num_output=num_output))
    backend.set_random_seed(seed)
    return Net(str(path), phase=phase, weights=weights_file)


def params_of(net):
    return {name: [backend.to_cpu(b.data).copy() for b in blobs] for name, blobs in net.params.items()}


def assert_same_params(a, b):
    assert list(a) == list(b)
    for name in a:
        assert len(a[name]) == len(b[name])
        for x, y in zip(a[name], b[name]):
            numpy.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("ext", [".npz", ".caffemodel"])
def test_round_trip(tmp_path, ext):
    src = make_net(tmp_path, 1)
    path = tmp_path / f"w{ext}"
    src.save(str(path), meta={"note": "hello"})
    dst = make_net(tmp_path, 2)
    assert not numpy.array_equal(dst.params["conv1"][0].data, src.params["conv1"][0].data)
    assert dst.copy_from(str(path)) == []
    assert_same_params(params_of(src), params_of(dst))
    layers, meta = weights.read_weights(str(path))
    assert list(layers) == ["conv1", "fc/score"]
    assert all(a.dtype == numpy.float32 for blobs in layers.values() for a in blobs)
    assert meta["layer_types"] == {"conv1": "Convolution", "fc/score": "InnerProduct"}
    if ext == ".npz":
        assert meta["note"] == "hello" and meta["format"] == "fastrcnn-weights" and meta["version"] == 1
        assert dst.weights_meta == meta
        with numpy.load(path, allow_pickle=False) as npz:
            assert sorted(npz.files) == ["__meta__", "conv1/0", "conv1/1", "fc/score/0", "fc/score/1"]
    else:
        net_param = protoio.read_caffemodel(str(path))
        assert [(lp.name, lp.type, len(lp.blobs)) for lp in net_param.layer] == [
            ("conv1", "Convolution", 2), ("fc/score", "InnerProduct", 2)]


def test_shared_blob_saved_under_each_layer(tmp_path):
    path = tmp_path / "shared.prototxt"
    path.write_text("""
        layer { name: "data" type: "Input" top: "a" top: "b" input_param { shape { dim: 2 dim: 3 } } }
        layer { name: "ip1" type: "InnerProduct" bottom: "a" top: "ya"
                param { name: "w" } param { name: "bias" }
                inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
        layer { name: "ip2" type: "InnerProduct" bottom: "b" top: "yb"
                param { name: "w" } param { name: "bias" }
                inner_product_param { num_output: 2 } }
    """)
    net = Net(str(path), phase="TRAIN")
    net.save(str(tmp_path / "s.npz"))
    layers, _ = weights.read_weights(str(tmp_path / "s.npz"))
    assert list(layers) == ["ip1", "ip2"]
    numpy.testing.assert_array_equal(layers["ip1"][0], layers["ip2"][0])


def test_copy_from_reports_layers_left_empty(tmp_path):
    src = make_net(tmp_path, 1)
    path = str(tmp_path / "partial.npz")
    weights.write_weights(path, {"conv1": params_of(src)["conv1"], "not_in_net": [numpy.ones(3)]})
    dst = make_net(tmp_path, 2)
    assert dst.copy_from(path) == ["fc/score"]
    numpy.testing.assert_array_equal(dst.params["conv1"][0].data, src.params["conv1"][0].data)


def test_test_net_with_missing_weights_refuses(tmp_path):
    src = make_net(tmp_path, 1)
    path = str(tmp_path / "partial.npz")
    weights.write_weights(path, {"conv1": params_of(src)["conv1"]})
    with pytest.raises(Error, match="fc/score"):
        make_net(tmp_path, 2, phase="TEST", weights_file=path)
    full = str(tmp_path / "full.npz")
    src.save(full)
    net = make_net(tmp_path, 2, phase="TEST", weights_file=full)
    assert_same_params(params_of(src), params_of(net))


def test_shape_mismatch_names_layer_and_shapes(tmp_path):
    path = str(tmp_path / "w.npz")
    make_net(tmp_path, 1, num_output=5).save(path)
    with pytest.raises(Error) as info:
        make_net(tmp_path, 1, num_output=3).copy_from(path)
    message = str(info.value)
    assert "'fc/score'" in message and "(3, 36)" in message and "(5, 36)" in message and "w.npz" in message


def test_class_count_mismatch_explains_cls_score(tmp_path):
    path = str(tmp_path / "w.caffemodel")
    make_net(tmp_path, 1, fc="cls_score", num_output=21).save(path)
    with pytest.raises(Error, match=r"cls_score.*\(4, 36\).*\(21, 36\).*num_output of cls_score \(K\+1\)"):
        make_net(tmp_path, 1, fc="cls_score", num_output=4).copy_from(path)


def test_blob_count_mismatch(tmp_path):
    src = make_net(tmp_path, 1)
    path = str(tmp_path / "w.npz")
    weights.write_weights(path, {"fc/score": params_of(src)["fc/score"][:1]})
    with pytest.raises(Error, match="'fc/score' has 1 param blob"):
        make_net(tmp_path, 1).copy_from(path)


def test_legacy_4d_inner_product_blob_accepted(tmp_path):
    src = make_net(tmp_path, 1)
    net_param = caffe_pb2.NetParameter(name="legacy")
    layer = net_param.layers.add(name="fc/score", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    for array in params_of(src)["fc/score"]:
        blob = layer.blobs.add(num=1, channels=1, height=1 if array.ndim == 1 else array.shape[0],
                               width=array.shape[-1])
        blob.data.extend(array.ravel().tolist())
    path = tmp_path / "legacy.caffemodel"
    path.write_bytes(net_param.SerializeToString())
    dst = make_net(tmp_path, 2)
    assert dst.copy_from(str(path)) == ["conv1"]
    numpy.testing.assert_array_equal(dst.params["fc/score"][0].data, src.params["fc/score"][0].data)
    numpy.testing.assert_array_equal(dst.params["fc/score"][1].data, src.params["fc/score"][1].data)


@pytest.mark.parametrize("ext", [".npz", ".caffemodel"])
def test_truncated_and_corrupt_files(tmp_path, ext):
    path = tmp_path / f"w{ext}"
    make_net(tmp_path, 1).save(str(path))
    good = path.read_bytes()
    net = make_net(tmp_path, 2)
    for cut in (len(good) // 2, 40, 0):
        path.write_bytes(good[:cut])
        with pytest.raises(Error, match=f"w{ext}"):
            net.copy_from(str(path))
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(Error, match=f"w{ext}"):
        net.copy_from(str(path))
    if ext == ".npz":  # a flipped byte inside an array fails the zip CRC check
        corrupt = bytearray(good)
        corrupt[len(good) // 2] ^= 0xFF
        path.write_bytes(bytes(corrupt))
        with pytest.raises(Error, match="w.npz"):
            net.copy_from(str(path))


def npz_with(path, **entries):
    numpy.savez(path, **entries)
    return str(path)


def test_bad_npz_content(tmp_path):
    net = make_net(tmp_path, 1)
    meta = numpy.array(json.dumps({"format": "fastrcnn-weights", "version": 1}))
    with pytest.raises(Error, match="bad entry 'conv1'"):
        net.copy_from(npz_with(tmp_path / "a.npz", conv1=numpy.zeros(3), __meta__=meta))
    with pytest.raises(Error, match="bad entry 'conv1/x'"):
        net.copy_from(npz_with(tmp_path / "b.npz", **{"conv1/x": numpy.zeros(3)}))
    with pytest.raises(Error, match="not valid JSON"):
        net.copy_from(npz_with(tmp_path / "c.npz", __meta__=numpy.array("{oops")))
    with pytest.raises(Error, match="blobs \\[1\\]"):
        net.copy_from(npz_with(tmp_path / "d.npz", **{"conv1/1": numpy.zeros(3)}))
    with pytest.raises(Error, match="format is 'fastrcnn-solverstate'"):
        net.copy_from(npz_with(tmp_path / "e.npz", __meta__=numpy.array('{"format": "fastrcnn-solverstate"}')))
    with pytest.raises(Error, match="single .npy array"):
        numpy.save(tmp_path / "f.npy", numpy.zeros(3))
        os.rename(tmp_path / "f.npy", tmp_path / "f.npz")
        net.copy_from(str(tmp_path / "f.npz"))
    with pytest.raises(Error, match="no such file"):
        net.copy_from(str(tmp_path / "missing.npz"))


def test_unknown_extension(tmp_path):
    net = make_net(tmp_path, 1)
    with pytest.raises(Error, match="'.h5'"):
        net.save(str(tmp_path / "w.caffemodel.h5"))
    with pytest.raises(Error, match="'.pkl'"):
        net.copy_from(str(tmp_path / "w.pkl"))


def test_interrupted_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    first = make_net(tmp_path, 1)
    first.save(str(path))
    before = path.read_bytes()

    def broken_savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half an archive")
        raise RuntimeError("disk full")

    monkeypatch.setattr(numpy, "savez", broken_savez)
    with pytest.raises(RuntimeError, match="disk full"):
        make_net(tmp_path, 2).save(str(path))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    monkeypatch.undo()
    net = make_net(tmp_path, 3)
    assert net.copy_from(str(path)) == []
    assert_same_params(params_of(first), params_of(net))


def test_convert_both_ways(tmp_path, capsys):
    src = make_net(tmp_path, 1)
    caffemodel, npz, back = (str(tmp_path / n) for n in ("w.caffemodel", "w.npz", "back.caffemodel"))
    src.save(caffemodel)
    convert_cli.main([caffemodel, npz])
    assert "2 layers" in capsys.readouterr().out
    layers, meta = weights.read_weights(npz)
    assert meta["layer_types"] == {"conv1": "Convolution", "fc/score": "InnerProduct"}
    weights.convert(npz, back)
    net_param = protoio.read_caffemodel(back)
    assert [(lp.name, lp.type) for lp in net_param.layer] == [("conv1", "Convolution"),
                                                              ("fc/score", "InnerProduct")]
    for path in (npz, back):
        net = make_net(tmp_path, 2)
        assert net.copy_from(path) == []
        assert_same_params(params_of(src), params_of(net))


def test_convert_cli_reports_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        convert_cli.main([str(tmp_path / "missing.caffemodel"), str(tmp_path / "out.npz")])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.caffemodel" in err
