"""Net construction and execution: the pycaffe API and Caffe's Net::Init semantics."""
import numpy
import pytest

import fastrcnn
from fastrcnn import protoio


def net_from(text, phase="TEST", **kw):
    return fastrcnn.Net(protoio.net_from_string(text), phase, **kw)


MLP = '''
name: "mlp"
input: "data" input_shape { dim: 4 dim: 3 }
input: "label" input_shape { dim: 4 }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
        inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip2" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "prob" type: "Softmax" bottom: "ip2" top: "prob" include { phase: TEST } }
'''


def test_pycaffe_api_and_splits():
    net = net_from(MLP)
    assert net.inputs == ["data", "label"]
    assert list(net.params) == ["ip1", "ip2"]
    assert net.params["ip1"][0].data.shape == (5, 3)
    # ip2 is read by loss, acc and prob: one Split named as Caffe names it
    assert "ip2_ip2_0_split" in net.layer_names
    assert net.bottom_names("prob") == ["ip2_ip2_0_split_2"]
    assert net.outputs == ["acc", "loss", "prob"]
    out = net.forward(data=numpy.ones((4, 3)), label=numpy.array([0, 1, 2, 0]))
    assert set(out) == {"acc", "loss", "prob"}
    numpy.testing.assert_allclose(out["prob"].sum(axis=1), 1.0, rtol=1e-6)
    assert net.blobs["data"].data.dtype == numpy.float32


def test_phase_filtering():
    train = net_from(MLP, "TRAIN")
    assert "acc" not in train.layer_names and "prob" not in train.layer_names
    assert train.outputs == ["loss"]
    assert "ip2_ip2_0_split" not in train.layer_names


RULES = '''
input: "data" input_shape { dim: 1 dim: 2 }
layer { name: "a" type: "ReLU" bottom: "data" top: "a" include { stage: "deploy" } }
layer { name: "b" type: "ReLU" bottom: "data" top: "b" exclude { stage: "deploy" } }
layer { name: "c" type: "ReLU" bottom: "data" top: "c" include { min_level: 1 } }
layer { name: "d" type: "ReLU" bottom: "data" top: "d" include { phase: TRAIN max_level: 0 } }
layer { name: "e" type: "ReLU" bottom: "data" top: "e" include { stage: "x" not_stage: "y" } }
'''


@pytest.mark.parametrize("phase,stages,level,expected", [
    ("TEST", (), 0, ["b"]),
    ("TEST", ("deploy",), 0, ["a"]),
    ("TEST", (), 1, ["b", "c"]),
    ("TRAIN", (), 0, ["b", "d"]),
    ("TRAIN", (), 2, ["b", "c"]),
    ("TEST", ("x",), 0, ["b", "e"]),
    ("TEST", ("x", "y"), 0, ["b"]),
])
def test_state_rules(phase, stages, level, expected):
    net = net_from(RULES, phase, stages=stages, level=level)
    assert [n for n in net.layer_names if n != "input" and not n.endswith("_split")] == expected


def test_include_and_exclude_together_is_an_error():
    with pytest.raises(fastrcnn.Error, match="either include or exclude"):
        net_from('input: "d" input_shape { dim: 1 } layer { name: "x" type: "ReLU" bottom: "d" top: "y" '
                 'include { phase: TEST } exclude { phase: TRAIN } }')


def test_in_place_shares_the_blob_and_backward_is_right():
    net = net_from(MLP, "TRAIN")
    relu = net.layer_names.index("relu1")
    assert net._tops[relu][0] is net._bottoms[relu][0] is net.blobs["ip1"]
    x = numpy.random.default_rng(0).standard_normal((4, 3))
    net.forward(data=x, label=numpy.array([0, 1, 2, 0]))
    # relu ran in place: blob 'ip1' holds the rectified values
    assert (net.blobs["ip1"].data >= 0).all()
    net.clear_param_diffs()
    net.backward()
    w1, b1 = net.params["ip1"][0].data.astype(numpy.float64), net.params["ip1"][1].data
    h = numpy.maximum(x @ w1.T + b1, 0)
    assert numpy.allclose(h, net.blobs["ip1"].data, atol=1e-5)


def test_shapes_follow_the_inputs_on_every_forward():
    net = net_from(MLP)
    for n in (4, 9, 1):
        out = net.forward(data=numpy.ones((n, 3)), label=numpy.zeros(n))
        assert out["prob"].shape == (n, 3)


def test_blob_data_assignment_sticks_and_reshape():
    net = net_from(MLP)
    net.blobs["data"].reshape(2, 3)
    net.blobs["data"].data[...] = 5.0
    net.blobs["label"].reshape(2)
    net.blobs["label"].data[...] = 1
    out = net.forward()
    assert out["prob"].shape == (2, 3)
    assert (net.blobs["data"].data == 5.0).all()
    with pytest.raises(fastrcnn.Error, match="cannot assign"):
        net.blobs["data"].data = numpy.ones((7, 7))


def test_loss_weight_scales_gradient_and_loss():
    base = MLP.replace('top: "loss" }', 'top: "loss" loss_weight: 1 }')
    doubled = MLP.replace('top: "loss" }', 'top: "loss" loss_weight: 2 }')
    grads, losses = [], []
    for text in (base, doubled):
        fastrcnn.set_random_seed(3)
        net = net_from(text, "TRAIN")
        net.forward(data=numpy.ones((4, 3)), label=numpy.array([0, 1, 2, 0]))
        losses.append(float(net.loss()))
        net.clear_param_diffs()
        net.backward()
        grads.append(net.params["ip1"][0].diff.copy())
    assert losses[1] == pytest.approx(2 * losses[0])
    numpy.testing.assert_allclose(grads[1], 2 * grads[0], rtol=1e-6)


def test_backward_keeps_caller_diffs_and_returns_input_diffs():
    net = net_from('force_backward: true input: "x" input_shape { dim: 2 dim: 3 } '
                   'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')
    net.forward(x=numpy.array([[1.0, -1.0, 2.0], [-3.0, 4.0, 5.0]]))
    diffs = net.backward(y=numpy.full((2, 3), 7.0))
    numpy.testing.assert_array_equal(diffs["x"], [[7, 0, 7], [0, 7, 7]])
    numpy.testing.assert_array_equal(net.blobs["y"].diff, numpy.full((2, 3), 7.0))


SHARED = '''
input: "a" input_shape { dim: 2 dim: 3 }
input: "b" input_shape { dim: 2 dim: 3 }
input: "label" input_shape { dim: 2 }
layer { name: "ip_a" type: "InnerProduct" bottom: "a" top: "fa" param { name: "w" } param { name: "bias" }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "ip_b" type: "InnerProduct" bottom: "b" top: "fb" param { name: "w" } param { name: "bias" }
        inner_product_param { num_output: 2 } }
layer { name: "sum" type: "Eltwise" bottom: "fa" bottom: "fb" top: "s" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" top: "loss" }
'''


def test_shared_params_alias_data_and_sum_gradients():
    net = net_from(SHARED, "TRAIN")
    assert net.params["ip_a"][0] is net.params["ip_b"][0]
    assert len(net.learnable_params) == 2
    a, b = numpy.ones((2, 3)), 2 * numpy.ones((2, 3))
    net.forward(a=a, b=b, label=numpy.array([0, 1]))
    net.clear_param_diffs()
    net.backward()
    ds = net.blobs["s"].diff.astype(numpy.float64)
    numpy.testing.assert_allclose(net.params["ip_a"][0].diff, ds.T @ a + ds.T @ b, rtol=1e-5)


def test_shared_param_shape_mismatch():
    text = SHARED.replace('top: "fb" param { name: "w" }', 'top: "fb" param { name: "w" }').replace(
        "num_output: 2 } }\nlayer { name: \"sum\"", "num_output: 3 } }\nlayer { name: \"sum\"")
    with pytest.raises(fastrcnn.Error, match="shared parameter 'w'"):
        net_from(text, "TRAIN")


FROZEN = '''
input: "data" input_shape { dim: 1 dim: 1 dim: 6 dim: 6 }
input: "label" input_shape { dim: 1 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        param { lr_mult: 0 } param { lr_mult: 0 }
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 2 kernel_size: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "conv2" top: "ip" inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
'''


def test_frozen_first_layer_needs_no_backward():
    net = net_from(FROZEN, "TRAIN")
    need = dict(zip(net.layer_names, net._layer_need_backward))
    assert need == {"input": False, "conv1": False, "conv2": True, "ip": True, "loss": True}
    # conv2 computes no gradient for its bottom: nothing below it learns
    assert net._bottom_need_backward[net.layer_names.index("conv2")] == [False]


def test_force_backward_and_propagate_down():
    net = net_from("force_backward: true\n" + FROZEN, "TRAIN")
    assert all(net._layer_need_backward[1:])
    loss_index = net.layer_names.index("loss")
    assert net._bottom_need_backward[loss_index] == [True, False]  # never into the labels
    text = FROZEN.replace('bottom: "conv1" top: "conv2"', 'bottom: "conv1" top: "conv2" propagate_down: false')
    net = net_from(text.replace("param { lr_mult: 0 } param { lr_mult: 0 }", ""), "TRAIN")
    assert net._bottom_need_backward[net.layer_names.index("conv2")] == [False]
    assert not net._layer_need_backward[net.layer_names.index("conv1")]


@pytest.mark.parametrize("text,match", [
    ('input: "d" input_shape { dim: 1 } layer { name: "x" type: "ReLU" bottom: "nope" top: "y" }',
     r"layer 'x' \(ReLU\): bottom blob 'nope' is produced by no layer"),
    ('input: "d" input_shape { dim: 1 } layer { name: "x" type: "ReLU" bottom: "d" top: "y" } '
     'layer { name: "z" type: "ReLU" bottom: "d" top: "y" }', "already produced by layer 'x'"),
    ('input: "d" input_shape { dim: 1 } layer { name: "x" type: "Frobnicate" bottom: "d" top: "y" }',
     "unknown layer type 'Frobnicate'; known types: .*Convolution"),
    ('input: "d" layer { name: "x" type: "ReLU" bottom: "d" top: "y" }', "input_shape"),
    ('input: "d" input_shape { dim: 1 } layer { name: "x" type: "ReLU" bottom: "d" top: "y" } '
     'layer { name: "x" type: "ReLU" bottom: "y" top: "z" }', "two layers are named 'x'"),
])
def test_construction_errors(text, match):
    with pytest.raises(fastrcnn.Error, match=match):
        net_from(text)


def test_incompatible_shapes_name_layers_and_shapes():
    net = net_from(MLP)
    with pytest.raises(fastrcnn.Error, match=r"layer 'ip1'.*\(4, 7\)"):
        net.forward(data=numpy.ones((4, 7)), label=numpy.zeros(4))


SCALED = '''input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }
layer { name: "scale" type: "Scale" bottom: "x" top: "y" scale_param { filler { type: "gaussian" } } }
layer { name: "scale2" type: "Scale" bottom: "y" top: "y" scale_param { filler { type: "gaussian" } } }'''


@pytest.mark.parametrize("force", [False, True])
def test_layers_without_backward_keep_nothing_for_it(force):
    """A test net runs no backward: an in-place Scale keeps no copy of its input (Caffe's always does), and
    the output is the same; with force_backward it keeps one and its gradient is right."""
    net = net_from(("force_backward: true\n" if force else "") + SCALED)
    scale = net.layers[net.layer_names.index("scale2")]
    assert scale.need_backward == force
    x = numpy.random.default_rng(0).standard_normal((2, 3, 4, 5))
    out = net.forward(x=x)["y"]
    s1, s2 = (net.params[n][0].data.reshape(1, 3, 1, 1) for n in ("scale", "scale2"))
    numpy.testing.assert_allclose(out, x * s1 * s2, rtol=1e-6)
    assert scale._bottom_copy.shape == (x.shape if force else ())
    if force:
        dy = numpy.ones_like(out)
        grads = net.backward(y=dy.astype(numpy.float32))
        numpy.testing.assert_allclose(grads["x"], numpy.broadcast_to(s1 * s2, x.shape), rtol=1e-6)
        numpy.testing.assert_allclose(net.params["scale2"][0].diff, (x * s1).sum(axis=(0, 2, 3)), rtol=1e-5)
    else:
        with pytest.raises(fastrcnn.Error, match="scale2.*force_backward"):
            scale.backward([net.blobs["y"]], [True], [net.blobs["y"]])
