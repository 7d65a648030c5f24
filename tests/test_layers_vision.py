"""Convolution, Pooling, InnerProduct, LRN, BatchNorm, Scale and Bias: gradient checks, Caffe's own
semantics with hand-worked values, and forward/backward comparisons with PyTorch (CPU, float64)."""
import numpy
import pytest

from fastrcnn.errors import Error
from fastrcnn.layers import conv
from layer_helpers import check_gradient, make_layer, relative_error

rng = numpy.random.default_rng(0)
TOL = 1e-5  # max|ours − torch| / max|torch|


def distinct(shape, step=0.1):
    """Values at least ``step`` apart, so that no MAX window has a tie within a finite-difference step."""
    return rng.permutation(int(numpy.prod(shape))).reshape(shape) * step - 1.0


def conv_text(num_output, extra=""):
    return (f'type: "Convolution" convolution_param {{ num_output: {num_output} {extra} '
            'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }')


def pool_text(extra):
    return f'type: "Pooling" pooling_param {{ {extra} }}'


def backward_with(layer, bottom, top, seed=1):
    """Run backward for random top diffs (all bottoms and params asked for); returns the top diffs."""
    diffs = [numpy.random.default_rng(seed).standard_normal(t.shape) for t in top]
    for t, d in zip(top, diffs):
        t.diff[...] = d
    for b in layer.blobs:
        b.diff[...] = 0
    layer.backward(top, [True] * len(bottom), bottom)
    return diffs


# -- Convolution ---------------------------------------------------------------------------------------
CONV_CASES = [
    "kernel_size: 3 stride: 2 pad: 1 group: 2",
    "kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 2 pad_w: 0 dilation: 2",
    "kernel_size: 1 group: 2",  # the direct path: no im2col
    "kernel_size: 2 bias_term: false",
]


@pytest.mark.parametrize("extra", CONV_CASES)
def test_conv_gradient(extra):
    layer, bottom, top = make_layer(conv_text(4, extra), [rng.standard_normal((2, 4, 6, 5))])
    check_gradient(layer, bottom, top)


@pytest.mark.parametrize("shape, extra, expected", [
    ((1, 3, 227, 227), "kernel_size: 11 stride: 4", (55, 55)),
    ((1, 3, 600, 1000), "kernel_size: 11 stride: 4 pad: 5", (150, 250)),  # Fast R-CNN CaffeNet conv1
    ((1, 3, 7, 8), "kernel_size: 3 stride: 2 pad: 1 dilation: 2", (3, 3)),  # (7 + 2 − 5) // 2 + 1
    ((1, 3, 7, 8), "kernel_h: 3 kernel_w: 1 pad_h: 0 pad_w: 2", (5, 12)),
])
def test_conv_output_size(shape, extra, expected):
    layer, _, top = make_layer(conv_text(2, extra), [numpy.zeros(shape)], dtype=numpy.float32)
    assert top[0].shape == (1, 2) + expected
    assert layer.blobs[0].shape == (2, 3) + (layer.kernel[0], layer.kernel[1])


def test_conv_follows_a_new_image_size():
    layer, bottom, top = make_layer(conv_text(2, "kernel_size: 3 pad: 1"), [rng.standard_normal((1, 2, 5, 5))])
    x = rng.standard_normal((1, 2, 4, 7))
    bottom[0].reshape(x.shape)
    bottom[0].data[...] = x
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    assert top[0].shape == (1, 2, 4, 7)
    check_gradient(layer, bottom, top)


def test_conv_default_fillers_are_zero():
    layer, _, top = make_layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 }',
                               [numpy.ones((1, 2, 2, 2))])
    assert not layer.blobs[0].data.any() and not layer.blobs[1].data.any() and not top[0].data.any()


def test_frozen_conv_leaves_param_diffs_alone():
    layer, bottom, top = make_layer(conv_text(2, "kernel_size: 3"), [rng.standard_normal((2, 2, 5, 5))])
    layer.param_propagate_down = [False, False]
    for b in layer.blobs:
        b.diff[...] = 7.0
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    assert all((b.diff == 7.0).all() for b in layer.blobs)
    assert bottom[0].diff.any()


@pytest.mark.parametrize("text", [conv_text(3, "kernel_size: 3 pad: 1"),
                                  'type: "InnerProduct" inner_product_param { num_output: 3 '
                                  'weight_filler { type: "gaussian" } }'])
def test_param_gradients_accumulate(text):
    layer, bottom, top = make_layer(text, [rng.standard_normal((2, 2, 4, 4))])
    backward_with(layer, bottom, top)
    once = [b.diff.copy() for b in layer.blobs]
    layer.backward(top, [True], bottom)
    for b, g in zip(layer.blobs, once):
        numpy.testing.assert_allclose(b.diff, 2 * g)


@pytest.mark.parametrize("extra, bottom_shape, message", [
    ("num_output: 0 kernel_size: 3", (1, 2, 5, 5), "num_output must be positive, got 0"),
    ("num_output: 2 kernel_size: 0", (1, 2, 5, 5), "kernel_h must be positive, got 0"),
    ("num_output: 2 kernel_size: 3 stride: 0", (1, 2, 5, 5), "stride_h must be positive, got 0"),
    ("num_output: 2 kernel_size: 3 group: 3", (1, 2, 5, 5), "group 3 does not divide the 2 input channels"),
    ("num_output: 3 kernel_size: 3 group: 2", (1, 2, 5, 5), "group 2 does not divide num_output 3"),
    ("num_output: 2 kernel_size: 3", (2, 5, 5), "takes a 4-D bottom"),
    ("num_output: 2 kernel_size: 3 kernel_h: 3 kernel_w: 3", (1, 2, 5, 5), "not both"),
    ("num_output: 2 kernel_h: 3", (1, 2, 5, 5), "kernel_h and kernel_w must be given together"),
    ("num_output: 2", (1, 2, 5, 5), "kernel_size (or kernel_h and kernel_w) is required"),
    ("num_output: 2 kernel_size: 7", (1, 2, 5, 5), "smaller than the (dilated) kernel_h extent 7"),
])
def test_conv_errors(extra, bottom_shape, message):
    with pytest.raises(Error, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_layer(f'type: "Convolution" convolution_param {{ {extra} }}', [numpy.zeros(bottom_shape)])


def test_conv_rejects_a_bottom_with_other_channels():
    layer, bottom, top = make_layer(conv_text(2, "kernel_size: 1"), [numpy.zeros((1, 2, 3, 3))])
    bottom[0].reshape(1, 3, 3, 3)
    with pytest.raises(Error, match="bottom has 3 channels, but the layer was set up for 2"):
        layer.reshape(bottom, top)


# -- Convolution by Winograd F(2×2, 3×3) -----------------------------------------------------------------
@pytest.fixture
def winograd_everywhere(monkeypatch):
    """Winograd for layers of any width, over bands of three 2×2 tiles (so that every case has several)."""
    monkeypatch.setattr(conv, "WINOGRAD_MIN_CHANNELS", 1)
    monkeypatch.setattr(conv, "WINOGRAD_BAND_TILES", 3)


WINOGRAD_CASES = [  # (channels, num_output, extra, (H, W)): odd and even sizes, every pad it takes, groups
    (4, 6, "kernel_size: 3 pad: 1", (7, 5)),
    (4, 4, "kernel_size: 3 pad: 0 group: 2", (6, 7)),
    (3, 2, "kernel_size: 3 pad_h: 2 pad_w: 1", (5, 4)),
    (2, 3, "kernel_size: 3 pad: 1 bias_term: false", (1, 2)),
]


@pytest.mark.parametrize("shape, extra, winograd", [
    ((1, 128, 6, 5), "kernel_size: 3 pad: 1", True),
    ((1, 256, 6, 5), "kernel_size: 3 pad: 2 group: 2", True),
    ((1, 128, 6, 5), "kernel_size: 3 pad: 1 engine: CAFFE", False),  # Caffe's im2col, asked for
    ((1, 128, 6, 5), "kernel_size: 3 pad: 1 stride: 2", False),
    ((1, 128, 6, 5), "kernel_size: 3 pad: 1 dilation: 2", False),
    ((1, 128, 6, 5), "kernel_size: 3 pad: 3", False),
    ((1, 128, 6, 5), "kernel_size: 3 pad: 1 group: 2", True),  # 64 channels per group
    ((1, 128, 6, 5), "kernel_size: 3 pad: 1 group: 4", False),  # 32 channels per group
    ((1, 64, 6, 5), "kernel_size: 3 pad: 1", True),
    ((1, 32, 6, 5), "kernel_size: 3 pad: 1", False),
    ((1, 128, 6, 5), "kernel_size: 5 pad: 2", False),
])
def test_winograd_is_chosen_for_wide_3x3_stride_1_layers(shape, extra, winograd):
    layer, _, _ = make_layer(conv_text(256, extra), [numpy.zeros(shape)], dtype=numpy.float32)
    assert layer.winograd is winograd


@pytest.mark.parametrize("channels, num_output, extra, size", WINOGRAD_CASES)
def test_winograd_gradient(winograd_everywhere, channels, num_output, extra, size):
    layer, bottom, top = make_layer(conv_text(num_output, extra), [rng.standard_normal((2, channels) + size)])
    assert layer.winograd
    check_gradient(layer, bottom, top)


@pytest.mark.parametrize("channels, num_output, extra, size", WINOGRAD_CASES)
def test_winograd_matches_im2col_in_float32(winograd_everywhere, channels, num_output, extra, size):
    x = rng.standard_normal((2, channels) + size).astype(numpy.float32)
    results = []
    for engine in ("", "engine: CAFFE"):
        layer, bottom, top = make_layer(conv_text(num_output, f"{extra} {engine}"), [x], dtype=numpy.float32)
        params = numpy.random.default_rng(5)
        for blob in layer.blobs:
            blob.data[...] = params.standard_normal(blob.shape)
        layer.forward(bottom, top)
        backward_with(layer, bottom, top)
        results.append((layer.winograd, top[0].data.copy(), bottom[0].diff.copy(), layer.blobs[0].diff.copy()))
    (wino, *ours), (im2col, *caffe) = results
    assert wino and not im2col
    for got, expected in zip(ours, caffe):
        assert relative_error(got, expected) <= 1e-6


# -- Pooling -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", [
    "pool: MAX kernel_size: 3 stride: 2 pad: 1",
    "pool: MAX kernel_size: 2 stride: 2 pad: 1",  # the pad rule drops the last window
    "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1",
    "pool: AVE kernel_size: 3 stride: 2 pad: 1",
    "pool: AVE kernel_size: 2 stride: 3 pad: 1",  # windows with gaps between them
    "pool: MAX global_pooling: true",
    "pool: AVE global_pooling: true",
])
def test_pool_gradient(extra):
    layer, bottom, top = make_layer(pool_text(extra), [distinct((2, 2, 5, 6))])
    check_gradient(layer, bottom, top)


@pytest.mark.parametrize("size, extra, expected", [
    (6, "kernel_size: 3 stride: 2", 3),                  # ceil(1.5) + 1; floor would give 2
    (6, "kernel_size: 3 stride: 2 round_mode: FLOOR", 2),
    (5, "kernel_size: 2 stride: 2 pad: 1", 3),           # ceil(2.5) + 1 = 4, but window 3 starts at 6 ≥ 5 + 1
    (6, "kernel_size: 3 stride: 2 pad: 1", 4),           # ceil(2.5) + 1 = 4, window 3 starts at 6 < 7
    (150, "kernel_size: 3 stride: 2 pad: 1", 76),        # Fast R-CNN CaffeNet pool1 after conv1 on 600 rows
    (13, "kernel_size: 3 stride: 2", 6),                 # CaffeNet pool5 (13 → 6)
    (2, "kernel_size: 3 stride: 2", 1),                  # ceil mode keeps a window larger than the image
])
def test_pool_output_size(size, extra, expected):
    _, _, top = make_layer(pool_text(extra), [numpy.zeros((1, 1, size, size))])
    assert top[0].shape == (1, 1, expected, expected)


def test_max_pool_first_maximum_wins():
    x = numpy.array([[5.0, 1.0, 5.0],
                     [5.0, 2.0, 0.0],
                     [0.0, 5.0, 5.0]]).reshape(1, 1, 3, 3)
    layer, bottom, top = make_layer(pool_text("pool: MAX kernel_size: 2 stride: 1"), [x], num_tops=2)
    numpy.testing.assert_array_equal(top[0].data[0, 0], [[5, 5], [5, 5]])
    numpy.testing.assert_array_equal(top[1].data[0, 0], [[0, 2], [3, 7]])  # mask h·W + w, first in row-major
    top[0].diff[...] = 1.0
    layer.backward(top, [True], bottom)
    numpy.testing.assert_array_equal(bottom[0].diff[0, 0], [[1, 0, 1], [1, 0, 0], [0, 1, 0]])


def test_max_pool_padding_never_wins():
    x = -numpy.arange(1.0, 10.0).reshape(1, 1, 3, 3)  # all negative: a padded zero would beat them
    _, _, top = make_layer(pool_text("pool: MAX kernel_size: 2 stride: 2 pad: 1"), [x], num_tops=2)
    numpy.testing.assert_array_equal(top[0].data[0, 0], [[-1, -2], [-4, -5]])
    numpy.testing.assert_array_equal(top[1].data[0, 0], [[0, 1], [3, 4]])


def test_ave_pool_divisor_at_the_border():
    # H = W = 4, kernel 3, stride 2, pad 1: 3 windows per axis; the first starts in the padding (3 cells,
    # 2 real), the last covers row 3 and one padding row (2 cells counted, 1 real), never row 5 beyond H + pad.
    _, _, top = make_layer(pool_text("pool: AVE kernel_size: 3 stride: 2 pad: 1"), [numpy.ones((1, 1, 4, 4))])
    expected = numpy.outer([2 / 3, 3 / 3, 1 / 2], [2 / 3, 3 / 3, 1 / 2])
    numpy.testing.assert_allclose(top[0].data[0, 0], expected)


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_pool_follows_a_new_image_size(pool):
    text = pool_text(f"pool: {pool} kernel_size: 3 stride: 2 pad: 1")
    layer, bottom, top = make_layer(text, [distinct((1, 2, 6, 6))])
    x = distinct((1, 2, 5, 8))
    bottom[0].reshape(x.shape)
    bottom[0].data[...] = x
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    _, _, fresh = make_layer(text, [x])
    numpy.testing.assert_array_equal(top[0].data, fresh[0].data)
    check_gradient(layer, bottom, top)


def test_global_pooling_reduces_each_plane():
    x = rng.standard_normal((2, 3, 4, 5))
    _, _, top = make_layer(pool_text("pool: MAX global_pooling: true"), [x])
    numpy.testing.assert_array_equal(top[0].data[..., 0, 0], x.max(axis=(2, 3)))
    _, _, top = make_layer(pool_text("pool: AVE global_pooling: true"), [x])
    numpy.testing.assert_allclose(top[0].data[..., 0, 0], x.mean(axis=(2, 3)))


@pytest.mark.parametrize("extra, message", [
    ("pool: STOCHASTIC kernel_size: 2", "pool STOCHASTIC is not supported"),
    ("kernel_size: 2 pad: 2", "pad_h 2 must be smaller than kernel_h 2"),
    ("kernel_size: 0", "kernel_h must be positive, got 0"),
    ("kernel_size: 2 stride: 0", "stride_h must be positive, got 0"),
    ("global_pooling: true kernel_size: 2", "remove kernel_size"),
    ("stride: 2", "kernel_size .or kernel_h and kernel_w. is required"),
    ("kernel_size: 1 stride: 2", "the last of 3 windows along h = 4 starts past the bottom"),
])
def test_pool_errors(extra, message):
    with pytest.raises(Error, match=message):
        make_layer(pool_text(extra), [numpy.zeros((1, 1, 4, 4))])


# -- InnerProduct -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra", ["", "transpose: true", "axis: 2", "bias_term: false"])
def test_inner_product_gradient(extra):
    text = ('type: "InnerProduct" inner_product_param { num_output: 3 weight_filler { type: "gaussian" } '
            f'bias_filler {{ type: "gaussian" }} {extra} }}')
    layer, bottom, top = make_layer(text, [rng.standard_normal((2, 3, 2, 2))])
    assert top[0].shape == ((2, 3, 3) if "axis" in extra else (2, 3))
    check_gradient(layer, bottom, top)


def test_inner_product_names_both_sizes_when_the_input_changes():
    layer, bottom, top = make_layer('type: "InnerProduct" inner_product_param { num_output: 4 }',
                                    [numpy.zeros((2, 3, 6, 6))])
    bottom[0].reshape(2, 3, 7, 7)
    with pytest.raises(Error, match=r"flattens from axis 1 to 147 inputs, but the weights \(4, 108\)"):
        layer.reshape(bottom, top)


# -- LRN ---------------------------------------------------------------------------------------------------
def test_lrn_across_channels_divides_alpha_by_n():
    x = numpy.array([1.0, 2.0, 3.0]).reshape(1, 3, 1, 1)
    for k in (1.0, 2.0):
        _, _, top = make_layer(f'type: "LRN" lrn_param {{ local_size: 3 alpha: 3 beta: 1 k: {k} }}', [x])
        scale = k + numpy.array([1 + 4, 1 + 4 + 9, 4 + 9])  # alpha / n = 1
        numpy.testing.assert_allclose(top[0].data.ravel(), [1, 2, 3] / scale)


def test_lrn_within_channel_divides_by_n_squared_and_shifts_by_one():
    # every 3 × 3 window over a 2 × 2 plane of ones holds all four: scale = 1 + 9/9 · 4 (Caffe ignores k here)
    _, _, top = make_layer('type: "LRN" lrn_param { local_size: 3 alpha: 9 beta: 1 k: 5 '
                           'norm_region: WITHIN_CHANNEL }', [numpy.ones((1, 2, 2, 2))])
    numpy.testing.assert_allclose(top[0].data, 0.2)


@pytest.mark.parametrize("extra", ["local_size: 3 alpha: 0.8 beta: 0.75", "local_size: 5 alpha: 0.5 k: 2",
                                   "local_size: 3 alpha: 0.5 norm_region: WITHIN_CHANNEL"])
def test_lrn_gradient(extra):
    layer, bottom, top = make_layer(f'type: "LRN" lrn_param {{ {extra} }}', [rng.standard_normal((2, 6, 3, 4))])
    check_gradient(layer, bottom, top)


def test_lrn_rejects_an_even_size():
    with pytest.raises(Error, match="local_size must be odd, got 4"):
        make_layer('type: "LRN" lrn_param { local_size: 4 }', [numpy.zeros((1, 5, 2, 2))])


# -- BatchNorm, Scale, Bias ----------------------------------------------------------------------------------
def test_batch_norm_gradient_with_batch_statistics():
    layer, bottom, top = make_layer('type: "BatchNorm"', [rng.standard_normal((3, 2, 2, 3))])
    assert not layer.use_global
    check_gradient(layer, bottom, top)


def test_batch_norm_gradient_with_global_statistics():
    layer, bottom, top = make_layer('type: "BatchNorm"', [rng.standard_normal((2, 3, 2, 2))], phase="TEST")
    layer.blobs[0].data[...] = [0.5, -1.0, 2.0]
    layer.blobs[1].data[...] = [2.0, 1.0, 3.0]
    layer.blobs[2].data[...] = 2.0
    check_gradient(layer, bottom, top, check_params=False)


def test_batch_norm_updates_the_running_sums():
    x = rng.standard_normal((4, 2, 3, 1))
    layer, bottom, top = make_layer('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.5 }', [x])
    layer.forward(bottom, top)  # a second pass: blobs = blobs · 0.5 + batch
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    numpy.testing.assert_allclose(layer.blobs[2].data, [1.5])
    numpy.testing.assert_allclose(layer.blobs[0].data, 1.5 * mean)
    numpy.testing.assert_allclose(layer.blobs[1].data, 1.5 * var * 12 / 11)  # m = N·H·W = 12
    numpy.testing.assert_allclose(top[0].data, (x - mean[:, None, None]) / numpy.sqrt(var + 1e-5)[:, None, None])


def test_batch_norm_global_stats_with_a_zero_scale_factor():
    x = rng.standard_normal((2, 3, 2, 2))
    layer, _, top = make_layer('type: "BatchNorm" batch_norm_param { use_global_stats: true eps: 0.01 }', [x])
    numpy.testing.assert_allclose(top[0].data, x / numpy.sqrt(0.01))  # mean = var = 0 while blobs[2] is 0


def test_batch_norm_statistics_are_not_learned():
    layer, _, _ = make_layer('type: "BatchNorm" param { lr_mult: 0 }', [numpy.zeros((2, 3))])
    assert [spec.lr_mult for spec in layer.param.param] == [0, 0, 0]
    with pytest.raises(Error, match="param 1 has lr_mult 1.0"):
        make_layer('type: "BatchNorm" param { lr_mult: 0 } param { decay_mult: 0 }', [numpy.zeros((2, 3))])


def test_batch_norm_in_place_matches_out_of_place():
    x = rng.standard_normal((3, 2, 2, 2))
    layer, bottom, top = make_layer('type: "BatchNorm"', [x])
    dy = backward_with(layer, bottom, top)[0]
    expected = bottom[0].diff.copy()
    bottom[0].data[...] = x
    layer.forward(bottom, bottom)
    bottom[0].data[...] = -5.0  # a later in-place layer overwrites the shared blob
    bottom[0].diff[...] = dy
    layer.backward(bottom, [True], bottom)
    numpy.testing.assert_allclose(bottom[0].diff, expected)


@pytest.mark.parametrize("text, shapes", [
    ('type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
     [(2, 3, 2, 2)]),
    ('type: "Scale" scale_param { axis: 1 num_axes: 2 filler { type: "gaussian" } }', [(2, 3, 2, 2)]),
    ('type: "Scale" scale_param { num_axes: 0 filler { type: "gaussian" } }', [(2, 3, 2)]),
    ('type: "Scale" scale_param { axis: 0 bias_term: true }', [(2, 3, 2), (2, 3)]),
    ('type: "Bias" bias_param { filler { type: "gaussian" } num_axes: -1 }', [(2, 3, 2)]),
    ('type: "Bias"', [(2, 3, 2, 2), (3, 2)]),
])
def test_scale_and_bias_gradient(text, shapes):
    layer, bottom, top = make_layer(text, [rng.standard_normal(s) for s in shapes])
    check_gradient(layer, bottom, top)


def test_scale_and_bias_default_fillers():
    layer, _, _ = make_layer('type: "Scale" scale_param { bias_term: true }', [numpy.zeros((1, 3, 2))])
    assert (layer.blobs[0].data == 1).all() and (layer.blobs[1].data == 0).all()
    layer, _, _ = make_layer('type: "Bias"', [numpy.zeros((1, 3, 2))])
    assert layer.blobs[0].shape == (3,) and (layer.blobs[0].data == 0).all()


def test_scale_in_place_matches_out_of_place():
    x = rng.standard_normal((2, 3, 2))
    text = 'type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } }'
    layer, bottom, top = make_layer(text, [x])
    dy = backward_with(layer, bottom, top)[0]
    expected = [bottom[0].diff.copy()] + [b.diff.copy() for b in layer.blobs]
    for b in layer.blobs:
        b.diff[...] = 0
    layer.forward(bottom, bottom)
    bottom[0].diff[...] = dy
    layer.backward(bottom, [True], bottom)
    for got, want in zip([bottom[0].diff] + [b.diff for b in layer.blobs], expected):
        numpy.testing.assert_allclose(got, want)


def test_scale_rejects_a_mismatched_operand():
    with pytest.raises(Error, match=r"the operand \(4,\) does not match the bottom \(2, 3, 2\)"):
        make_layer('type: "Scale"', [numpy.zeros((2, 3, 2)), numpy.zeros(4)])


# -- PyTorch comparisons ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="PyTorch is the oracle of these comparisons")


def compare_with_torch(torch, layer, bottom, top, reference, inputs=None):
    """Our forward and backward against ``reference(*tensors)`` for the bottoms and the layer's params."""
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    inputs = inputs if inputs is not None else [b.data for b in bottom] + [b.data for b in layer.blobs]
    tensors = [torch.tensor(a.copy(), requires_grad=True) for a in inputs]
    expected = reference(*tensors)
    dy = backward_with(layer, bottom, top)[0]
    expected.backward(torch.tensor(dy))
    assert relative_error(top[0].data, expected.detach().numpy()) <= TOL
    ours = [b.diff for b in bottom] + [b.diff for b in layer.blobs]
    for got, t in zip(ours, tensors):
        assert relative_error(got, t.grad.numpy()) <= TOL


@pytest.mark.parametrize("channels, num_output, extra, size", WINOGRAD_CASES)
def test_winograd_conv_matches_torch(torch, winograd_everywhere, channels, num_output, extra, size):
    layer, bottom, top = make_layer(conv_text(num_output, extra), [rng.standard_normal((2, channels) + size)])
    p = layer.param.convolution_param
    bias = (lambda x, w, b: torch.nn.functional.conv2d(x, w, b, padding=layer.pad, groups=p.group)) \
        if p.bias_term else (lambda x, w: torch.nn.functional.conv2d(x, w, padding=layer.pad, groups=p.group))
    compare_with_torch(torch, layer, bottom, top, bias)


@pytest.mark.parametrize("extra, stride, pad, dilation, groups", [
    ("kernel_size: 3 stride: 2 pad_h: 2 pad_w: 1 dilation: 2 group: 2", 2, (2, 1), 2, 2),
    ("kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 3 pad: 1 group: 3", (1, 3), 1, 1, 3),
    ("kernel_size: 1 group: 1", 1, 0, 1, 1),
])
def test_conv_matches_torch(torch, extra, stride, pad, dilation, groups):
    layer, bottom, top = make_layer(conv_text(6, extra), [rng.standard_normal((2, 6, 9, 10))])
    compare_with_torch(torch, layer, bottom, top, lambda x, w, b: torch.nn.functional.conv2d(
        x, w, b, stride=stride, padding=pad, dilation=dilation, groups=groups))


POOL_CASES = [  # (H, W), kernel, stride, pad: the ceil rounding and the last-window rule in several forms
    ((5, 5), 2, 2, 1),        # the pad rule drops a window
    ((7, 6), 3, 2, 1),
    ((6, 7), 3, 2, 0),        # ceil mode adds a window past the image
    ((8, 5), (3, 2), (2, 1), (1, 1)),
    ((9, 9), 3, 3, 1),
    ((13, 13), 3, 2, 0),
]


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("size, kernel, stride, pad", POOL_CASES)
def test_pool_matches_torch(torch, pool, size, kernel, stride, pad):
    pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(pad)
    text = pool_text(f"pool: {pool} kernel_h: {kh} kernel_w: {kw} stride_h: {sh} stride_w: {sw} "
                     f"pad_h: {ph} pad_w: {pw}")
    layer, bottom, top = make_layer(text, [rng.standard_normal((2, 3) + size)])
    F = torch.nn.functional
    if pool == "MAX":
        reference = lambda x: F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil_mode=True)  # noqa: E731
    else:
        reference = lambda x: F.avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil_mode=True,  # noqa: E731
                                           count_include_pad=True)
    compare_with_torch(torch, layer, bottom, top, reference)


@pytest.mark.parametrize("size, alpha, beta, k", [(5, 1e-1, 0.75, 1.0), (5, 5e-1, 0.75, 2.0), (3, 2.0, 0.5, 1.0)])
def test_lrn_matches_torch(torch, size, alpha, beta, k):
    text = f'type: "LRN" lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} }}'
    layer, bottom, top = make_layer(text, [rng.standard_normal((2, 7, 3, 4))])
    # torch's local_response_norm averages the squares over the window, i.e. alpha/n as Caffe
    compare_with_torch(torch, layer, bottom, top,
                       lambda x: torch.nn.functional.local_response_norm(x, size, alpha, beta, k))


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_matches_torch(torch, transpose):
    text = ('type: "InnerProduct" inner_product_param { num_output: 5 weight_filler { type: "gaussian" } '
            f'bias_filler {{ type: "gaussian" }} transpose: {str(transpose).lower()} }}')
    layer, bottom, top = make_layer(text, [rng.standard_normal((4, 3, 2, 2))])
    compare_with_torch(torch, layer, bottom, top, lambda x, w, b: torch.nn.functional.linear(
        x.reshape(4, -1), w.T if transpose else w, b))


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_batch_norm_matches_torch(torch, phase):
    x = rng.standard_normal((4, 3, 3, 2)) * 2 + 1
    layer, bottom, top = make_layer('type: "BatchNorm" batch_norm_param { eps: 1e-3 }', [x], phase=phase)
    stats = [rng.uniform(0.5, 2.0, 3), rng.uniform(0.5, 2.0, 3), 1.7]
    for blob, value in zip(layer.blobs, stats):
        blob.data[...] = value
    mean, var = stats[0] / stats[2], stats[1] / stats[2]
    training = phase == "TRAIN"
    compare_with_torch(torch, layer, bottom, top, lambda t: torch.nn.functional.batch_norm(
        t, torch.tensor(mean), torch.tensor(var), training=training, eps=1e-3), inputs=[x])
