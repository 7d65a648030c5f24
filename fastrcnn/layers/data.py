"""Layers that bring data into a net: Input (shapes given, data set by the caller) and DummyData."""
from .. import backend, fillers
from . import register
from .base import Layer


def _shapes(layer, shapes, count, what):
    """One BlobShape for all tops, or one per top (Caffe's Input/DummyData rule)."""
    if len(shapes) not in (1, count):
        raise layer.error(f"{what} must be given once or once per top ({count}), got {len(shapes)}")
    out = [tuple(int(d) for d in s.dim) for s in shapes]
    for shape in out:
        if any(d < 0 for d in shape):
            raise layer.error(f"{what} dims must not be negative, got {shape}")
    return out * count if len(out) == 1 else out


@register("Input")
class Input(Layer):
    """Blobs shaped by ``input_param``; the caller fills them (net.forward(data=...), blob.data[...] = ...)."""
    exact_bottoms = 0
    min_tops = 1

    def setup(self, bottom, top):
        shapes = list(self.param.input_param.shape)
        if shapes:
            for t, shape in zip(top, _shapes(self, shapes, len(top), "input_param shape")):
                t.reshape(shape)

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass


@register("DummyData")
class DummyData(Layer):
    """Tops filled by ``data_filler`` (constant 0 by default); non-constant fillers refill every forward."""
    exact_bottoms = 0
    min_tops = 1

    def setup(self, bottom, top):
        from ..proto import caffe_pb2
        p = self.param.dummy_data_param
        if p.shape:
            shapes = _shapes(self, list(p.shape), len(top), "dummy_data_param shape")
        else:
            legacy = [p.num, p.channels, p.height, p.width]
            if not all(len(v) in (1, len(top)) for v in legacy):
                raise self.error("num/channels/height/width must each be given once or once per top")
            shapes = [tuple(int(v[i if len(v) > 1 else 0]) for v in legacy) for i in range(len(top))]
        fills = list(p.data_filler) or [caffe_pb2.FillerParameter(type="constant", value=0)]
        if len(fills) not in (1, len(top)):
            raise self.error(f"data_filler must be given once or once per top ({len(top)}), got {len(fills)}")
        self.fills = fills * len(top) if len(fills) == 1 else fills
        self.shapes = shapes
        for t, shape, f in zip(top, shapes, self.fills):
            t.reshape(shape)
            backend.upload(t.data, fillers.fill(f, shape, t.dtype, f"layer '{self.name}'"))

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        for t, shape, f in zip(top, self.shapes, self.fills):
            if f.type != "constant":
                backend.upload(t.data, fillers.fill(f, shape, t.dtype, f"layer '{self.name}'"))
