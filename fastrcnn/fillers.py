"""Weight fillers, as Caffe's filler.hpp: constant, gaussian, uniform, xavier, msra, positive_unitball."""
import numpy

from . import backend
from .errors import Error


def _fans(shape):
    count = int(numpy.prod(shape))
    fan_in = count // shape[0] if shape and shape[0] else count
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _variance_n(filler, shape, caffe_pb2):
    fan_in, fan_out = _fans(shape)
    norm = filler.variance_norm
    if norm == caffe_pb2.FillerParameter.FAN_OUT:
        return fan_out
    if norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def fill(filler, shape, dtype, where):
    """A new array of ``shape`` filled as the FillerParameter ``filler`` says (``where`` names the layer)."""
    from .proto import caffe_pb2
    rng = backend.rng()
    dtype = numpy.dtype(dtype)
    draw = dtype if dtype in (numpy.float32, numpy.float64) else numpy.float64  # drawn directly, no copy

    def normal(mean, std):
        return rng.standard_normal(shape, dtype=draw) * draw.type(std) + draw.type(mean)

    def uniform(low, high):
        return rng.random(shape, dtype=draw) * draw.type(high - low) + draw.type(low)

    kind = filler.type
    if kind == "constant":
        out = numpy.full(shape, filler.value, dtype=dtype)
    elif kind == "gaussian":
        if filler.sparse >= 0:
            raise Error(f"{where}: gaussian filler with sparse={filler.sparse} is not supported")
        out = normal(filler.mean, filler.std)
    elif kind == "uniform":
        out = uniform(filler.min, filler.max)
    elif kind == "xavier":
        scale = numpy.sqrt(3.0 / _variance_n(filler, shape, caffe_pb2))
        out = uniform(-scale, scale)
    elif kind == "msra":
        out = normal(0.0, numpy.sqrt(2.0 / _variance_n(filler, shape, caffe_pb2)))
    elif kind == "positive_unitball":
        out = uniform(0.0, 1.0)
        rows = out.reshape(shape[0], -1)
        rows /= rows.sum(axis=1, keepdims=True)
    else:
        raise Error(f"{where}: unknown filler type '{kind}'; known: constant, gaussian, uniform, xavier, msra, "
                    "positive_unitball")
    return backend.to_device(out, dtype=dtype)
