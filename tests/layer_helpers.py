"""Helpers for layer tests: build one layer from prototxt text, and a finite-difference gradient check."""
import numpy
from google.protobuf import text_format

from fastrcnn import backend
from fastrcnn.blob import Blob
from fastrcnn.layers import create_layer
from fastrcnn.proto import caffe_pb2


def make_layer(text, bottoms, num_tops=1, phase="TRAIN", dtype=numpy.float64):
    """(layer, bottom blobs, top blobs) for a layer given as LayerParameter text, set up and forwarded."""
    param = text_format.Parse(text, caffe_pb2.LayerParameter())
    if not param.name:
        param.name = "under_test"
    layer = create_layer(param, phase)
    bottom = []
    for i, arr in enumerate(bottoms):
        blob = Blob(numpy.shape(arr), dtype=dtype, name=f"bottom{i}")
        blob.data[...] = arr
        bottom.append(blob)
    top = [Blob((), dtype=dtype, name=f"top{i}") for i in range(num_tops)]
    layer.check_blob_counts(bottom, top)
    layer.setup(bottom, top)
    layer.param_propagate_down = [True] * len(layer.blobs)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return layer, bottom, top


def _objective(layer, bottom, top, weights, reseed=None):
    if reseed is not None:
        backend.set_random_seed(reseed)
    layer.reshape(bottom, top)
    layer.forward(bottom, top)
    return sum(float((t.data * w).sum()) for t, w in zip(top, weights))


def check_gradient(layer, bottom, top, check_bottoms=None, check_params=True, eps=1e-6, rtol=1e-5,
                   atol=1e-8, seed=0, reseed=None):
    """Compare backward with central differences of Σ w·top for random weights w, in float64.

    ``check_bottoms`` lists the bottom indices to check (default: all). Params are checked too.
    ``reseed`` re-seeds the engine's generator before every forward (for layers that draw random numbers).
    Returns the largest relative error seen.
    """
    rng = numpy.random.default_rng(seed)
    _objective(layer, bottom, top, [0.0] * len(top), reseed)
    weights = [rng.standard_normal(t.shape) for t in top]
    check_bottoms = range(len(bottom)) if check_bottoms is None else check_bottoms
    targets = [(f"bottom {i}", bottom[i]) for i in check_bottoms]
    if check_params:
        targets += [(f"param {i}", b) for i, b in enumerate(layer.blobs)]
    for t, w in zip(top, weights):
        t.diff[...] = w
    for b in layer.blobs:
        b.diff[...] = 0
    propagate = [i in check_bottoms for i in range(len(bottom))]
    layer.backward(top, propagate, bottom)
    analytic = {name: blob.diff.copy() for name, blob in targets}
    worst = 0.0
    for name, blob in targets:
        flat = blob.data.reshape(-1)
        numeric = numpy.empty(flat.size)
        for k in range(flat.size):
            keep = flat[k]
            flat[k] = keep + eps
            plus = _objective(layer, bottom, top, weights, reseed)
            flat[k] = keep - eps
            minus = _objective(layer, bottom, top, weights, reseed)
            flat[k] = keep
            numeric[k] = (plus - minus) / (2 * eps)
        got = analytic[name].reshape(-1)
        scale = max(numpy.abs(numeric).max(), numpy.abs(got).max(), 1e-12)
        err = numpy.abs(got - numeric).max()
        worst = max(worst, err / scale)
        assert err <= atol + rtol * scale, (
            f"{name}: max |analytic - numeric| = {err:.3g} (scale {scale:.3g}) at "
            f"{int(numpy.abs(got - numeric).argmax())}")
    return worst


def relative_error(a, ref):
    """max|a - ref| / max|ref|, the comparison measure used against oracles."""
    a, ref = numpy.asarray(a, dtype=numpy.float64), numpy.asarray(ref, dtype=numpy.float64)
    assert a.shape == ref.shape, f"shapes differ: {a.shape} vs {ref.shape}"
    return float(numpy.abs(a - ref).max() / max(numpy.abs(ref).max(), 1e-30))
