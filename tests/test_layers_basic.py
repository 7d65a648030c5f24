"""Element-wise, structural, data and Python layers: gradient checks and Caffe semantics."""
import sys
import types

import numpy
import pytest

import fastrcnn
from fastrcnn import backend
from fastrcnn.layers.python_layer import parse_param_str
from layer_helpers import check_gradient, make_layer

rng = numpy.random.default_rng(0)


def away_from_zero(shape):
    x = rng.uniform(0.2, 2.0, size=shape)
    return x * rng.choice([-1.0, 1.0], size=shape)


@pytest.mark.parametrize("text", ['type: "ReLU"', 'type: "ReLU" relu_param { negative_slope: 0.1 }',
                                  'type: "Sigmoid"', 'type: "TanH"', 'type: "Softmax"',
                                  'type: "Softmax" softmax_param { axis: -1 }'])
def test_elementwise_gradients(text):
    layer, bottom, top = make_layer(text, [away_from_zero((2, 3, 4))])
    check_gradient(layer, bottom, top)


def test_relu_in_place_backward_matches_out_of_place():
    x = away_from_zero((3, 5))
    layer, bottom, top = make_layer('type: "ReLU" relu_param { negative_slope: 0.25 }', [x])
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    expected = bottom[0].diff.copy()
    # in place: the top is the bottom blob itself
    layer.forward(bottom, bottom)
    bottom[0].diff[...] = 1.0
    layer.backward(bottom, [True], bottom)
    numpy.testing.assert_array_equal(bottom[0].diff, expected)
    numpy.testing.assert_allclose(expected, numpy.where(x > 0, 1.0, 0.25))


def test_softmax_sums_to_one_and_is_stable():
    x = numpy.array([[1000.0, 1001.0, 1002.0], [-5.0, 0.0, 5.0]])
    _, _, top = make_layer('type: "Softmax"', [x])
    numpy.testing.assert_allclose(top[0].data.sum(axis=1), 1.0)
    e = numpy.exp([0.0, 1.0, 2.0])
    numpy.testing.assert_allclose(top[0].data[0], e / e.sum())


def test_dropout_is_inverted_in_train_and_identity_in_test():
    x = numpy.ones((200, 100))
    backend.set_random_seed(1)
    layer, bottom, top = make_layer('type: "Dropout" dropout_param { dropout_ratio: 0.25 }', [x])
    y = top[0].data
    kept = y != 0
    numpy.testing.assert_allclose(y[kept], 1.0 / 0.75)  # survivors scaled by 1/(1-p) at training time
    assert abs(kept.mean() - 0.75) < 0.01
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    numpy.testing.assert_array_equal(bottom[0].diff, y)  # the same mask and scale
    _, _, top = make_layer('type: "Dropout"', [x], phase="TEST")
    numpy.testing.assert_array_equal(top[0].data, x)


def test_dropout_gradient_with_fixed_mask():
    layer, bottom, top = make_layer('type: "Dropout"', [away_from_zero((4, 6))])
    check_gradient(layer, bottom, top, reseed=5)


def test_dropout_ratio_out_of_range_is_an_error():
    with pytest.raises(fastrcnn.Error, match="dropout_ratio"):
        make_layer('type: "Dropout" dropout_param { dropout_ratio: 1.0 }', [numpy.ones((2, 2))])


def test_split_sums_diffs():
    layer, bottom, top = make_layer('type: "Split"', [away_from_zero((2, 3))], num_tops=3)
    for t in top:
        numpy.testing.assert_array_equal(t.data, bottom[0].data)
    check_gradient(layer, bottom, top)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    a, b = away_from_zero((2, 3, 4)), away_from_zero((2, 3, 4))
    layer, bottom, top = make_layer(f'type: "Concat" concat_param {{ axis: {axis} }}', [a, b])
    numpy.testing.assert_array_equal(top[0].data, numpy.concatenate([a, b], axis=axis))
    check_gradient(layer, bottom, top)


def test_concat_shape_mismatch_names_shapes():
    with pytest.raises(fastrcnn.Error, match=r"\(2, 3\).*\(3, 3\)"):
        make_layer('type: "Concat"', [numpy.ones((2, 3)), numpy.ones((3, 3))])


@pytest.mark.parametrize("text", ['type: "Eltwise" eltwise_param { operation: SUM coeff: 1 coeff: -0.5 }',
                                  'type: "Eltwise" eltwise_param { operation: PROD }',
                                  'type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: false }',
                                  'type: "Eltwise" eltwise_param { operation: MAX }'])
def test_eltwise_gradients(text):
    layer, bottom, top = make_layer(text, [away_from_zero((2, 5)), away_from_zero((2, 5))])
    check_gradient(layer, bottom, top)


def test_eltwise_values():
    a, b, c = numpy.array([1.0, 5.0]), numpy.array([3.0, 2.0]), numpy.array([2.0, 2.0])
    _, _, top = make_layer('type: "Eltwise" eltwise_param { coeff: 1 coeff: 2 coeff: -1 }', [a, b, c])
    numpy.testing.assert_array_equal(top[0].data, [5.0, 7.0])
    _, _, top = make_layer('type: "Eltwise" eltwise_param { operation: MAX }', [a, b, c])
    numpy.testing.assert_array_equal(top[0].data, [3.0, 5.0])
    with pytest.raises(fastrcnn.Error, match="coeff"):
        make_layer('type: "Eltwise" eltwise_param { coeff: 1 }', [a, b])


def test_flatten_and_reshape():
    x = away_from_zero((2, 3, 4, 5))
    layer, bottom, top = make_layer('type: "Flatten"', [x])
    assert top[0].shape == (2, 60)
    check_gradient(layer, bottom, top)
    _, _, top = make_layer('type: "Flatten" flatten_param { axis: 2 }', [x])
    assert top[0].shape == (2, 3, 20)
    layer, bottom, top = make_layer('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 10 } }', [x])
    assert top[0].shape == (2, 6, 10)
    check_gradient(layer, bottom, top)
    _, _, top = make_layer('type: "Reshape" reshape_param { shape { dim: 2 dim: 2 } axis: 1 num_axes: 1 }',
                           [numpy.ones((2, 4, 5))])
    assert top[0].shape == (2, 2, 2, 5)
    with pytest.raises(fastrcnn.Error, match="cannot reshape"):
        make_layer('type: "Reshape" reshape_param { shape { dim: 7 } }', [x])


def test_silence_zeroes_gradient():
    layer, bottom, _ = make_layer('type: "Silence"', [numpy.ones((2, 2))], num_tops=0)
    bottom[0].diff[...] = 3
    layer.backward([], [True], bottom)
    assert not bottom[0].diff.any()


def test_dummy_data_and_input_shapes():
    _, _, top = make_layer('type: "DummyData" dummy_data_param { shape { dim: 2 dim: 3 } '
                           'data_filler { type: "constant" value: 7 } }', [], num_tops=1)
    numpy.testing.assert_array_equal(top[0].data, numpy.full((2, 3), 7.0))
    _, _, top = make_layer('type: "DummyData" dummy_data_param { num: 1 channels: 2 height: 3 width: 4 }',
                           [], num_tops=1)
    assert top[0].shape == (1, 2, 3, 4) and not top[0].data.any()
    _, _, top = make_layer('type: "Input" input_param { shape { dim: 1 dim: 5 } }', [], num_tops=2)
    assert top[0].shape == top[1].shape == (1, 5)


def test_param_str_is_parsed_without_eval():
    assert parse_param_str("'num_classes': 21", "x") == {"num_classes": 21}
    assert parse_param_str("{'a': [1, 2]}", "x") == {"a": [1, 2]}
    assert parse_param_str("num_classes: 5", "x") == {"num_classes": 5}
    assert parse_param_str("", "x") == {}
    with pytest.raises(fastrcnn.Error, match="param_str"):
        parse_param_str("__import__('os').system('true')", "x")


PY_NET = '''
input: "data" input_shape { dim: 2 dim: 3 }
layer { name: "double" type: "Python" bottom: "data" top: "out"
        python_param { module: "fastrcnn_test_pylayer" layer: "Double" param_str: "'factor': 2" } }
'''


def test_python_layer_needs_opt_in(monkeypatch):
    module = types.ModuleType("fastrcnn_test_pylayer")

    class Double:
        def setup(self, bottom, top):
            self.factor = parse_param_str(self.param_str, "double")["factor"]

        def reshape(self, bottom, top):
            top[0].reshape(*bottom[0].shape)

        def forward(self, bottom, top):
            top[0].data[...] = self.factor * bottom[0].data

        def backward(self, top, propagate_down, bottom):
            bottom[0].diff[...] = self.factor * top[0].diff

    module.Double = Double
    monkeypatch.setitem(sys.modules, "fastrcnn_test_pylayer", module)
    monkeypatch.delenv("FASTRCNN_ALLOW_PYTHON_LAYERS", raising=False)
    from fastrcnn import protoio
    with pytest.raises(fastrcnn.Error, match=r"layer 'double'.*allow_python_layers"):
        fastrcnn.Net(protoio.net_from_string(PY_NET))
    fastrcnn.allow_python_layers()
    try:
        net = fastrcnn.Net(protoio.net_from_string(PY_NET))
        out = net.forward(data=numpy.ones((2, 3)))
        numpy.testing.assert_array_equal(out["out"], numpy.full((2, 3), 2.0))
    finally:
        fastrcnn.allow_python_layers(False)
