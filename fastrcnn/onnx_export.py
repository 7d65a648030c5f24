"""ONNX export of a TEST net (``frcnn-export``) and ``OnnxNet``, an exported model run by onnxruntime behind the
Net interface that detection uses (``frcnn-test --onnx``, ``frcnn-demo --onnx``).

Every layer becomes ONNX operators that compute what the layer computes, or the export stops with an Error
naming it. The graph's inputs are the net's inputs with their batch axis (and a 4-D input's H and W) dynamic,
``data`` (N×3×H×W) and ``rois`` (R×5); its outputs are the net's outputs, named as their tops. In-place layers
get fresh tensor names (a blob's last writer keeps the prototxt name), inserted Split layers are aliases.
Caffe's semantics as ONNX expresses them:

- Pooling: ceil rounding as floor rounding over ``stride − 1`` extra end padding (MaxPool ignores padding,
  so a window clipped to the image is pooled as Caffe does); Caffe drops a last window that would start in
  the padding, which happens only where pad + stride > kernel, and such layers are refused. AVE: the zero
  padding is explicit (Pad), so that the divisor counts the padding cells inside ``in + pad`` and not those
  beyond, as Caffe's.
- RoI pooling: ``MaxRoiPool``, whose onnxruntime kernel is the original's: float32 ``x · spatial_scale``
  rounded half away from zero, sizes forced to at least 1, float32 bin edges ⌊p·bin⌋/⌈(p+1)·bin⌉ clipped to
  the map, empty bins 0 (tests/test_onnx.py checks it on .5 boundaries and at the border).
- LRN ACROSS_CHANNELS: ONNX's LRN divides alpha by the size and adds bias = k, as Caffe.
- BatchNorm (global statistics): x − mean, divided by the float32 sqrt(var + eps) that the layer uses; Scale
  and Bias: Mul/Add by the learned operand, shaped to broadcast from ``axis``.
- InnerProduct: a flatten from axis 1 (Reshape [0, −1]) and Gemm; Dropout: nothing at test.
"""
import json
from pathlib import Path

import numpy

from .errors import Error
from .fileio import atomic_write

#: The opset written by default, and the lowest accepted (Softmax's single-axis form, Reshape's 0 = copy).
DEFAULT_OPSET, MIN_OPSET = 17, 13
#: The metadata key holding the weights' metadata (training config, classes) as JSON.
META_KEY = "fastrcnn.weights_meta"


def _onnx():
    try:
        import onnx
    except ImportError:
        raise Error("ONNX export needs the onnx package: pip install 'fastrcnn[onnx]'") from None
    return onnx


class _Graph:
    """The nodes, initializers and tensor names of the graph under construction."""

    def __init__(self, onnx, writes):
        self.onnx, self.helper = onnx, onnx.helper
        self.nodes, self.initializers = [], []
        self.current = {}  # blob name -> tensor holding its latest value
        self.writes_left = writes  # blob name -> writes still to come (the last one gets the blob's name)
        self.serial = 0

    def fresh(self, hint):
        self.serial += 1
        return f"{hint}/{self.serial}"

    def const(self, hint, array):
        name = self.fresh(hint)
        self.initializers.append(self.onnx.numpy_helper.from_array(numpy.ascontiguousarray(array), name))
        return name

    def node(self, op, inputs, hint, **attrs):
        out = self.fresh(hint)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def write(self, blob, op, inputs, **attrs):
        """The last node of a layer: writes top ``blob`` (its name where this is the blob's last write)."""
        self.writes_left[blob] -= 1
        out = blob if self.writes_left[blob] == 0 else self.fresh(blob)
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=f"{blob}@{self.serial}", **attrs))
        self.serial += 1
        self.current[blob] = out
        return out


def _refuse(lp, why):
    raise Error(f"layer '{lp.name}' ({lp.type}): {why}; ONNX has no faithful equivalent, so it is not exported")


def _pool(g, lp, layer, x, top):
    if layer.global_pooling:
        return g.write(top, "GlobalMaxPool" if layer.max else "GlobalAveragePool", [x])
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.pad
    extra = (sh - 1, sw - 1) if layer.ceil else (0, 0)
    if layer.ceil and (ph + sh > kh or pw + sw > kw):
        _refuse(lp, f"ceil rounding with pad + stride > kernel (pad {layer.pad}, stride {layer.stride}, kernel "
                    f"{layer.kernel}) drops a last window for some input sizes")
    if layer.max:
        return g.write(top, "MaxPool", [x], kernel_shape=[kh, kw], strides=[sh, sw],
                       pads=[ph, pw, ph + extra[0], pw + extra[1]])
    if ph or pw:
        pads = g.const(f"{lp.name}_pads", numpy.array([0, 0, ph, pw, 0, 0, ph, pw], numpy.int64))
        x = g.node("Pad", [x, pads], f"{lp.name}_padded")
    return g.write(top, "AveragePool", [x], kernel_shape=[kh, kw], strides=[sh, sw],
                   pads=[0, 0, extra[0], extra[1]], count_include_pad=0)


def _broadcast_operand(layer, array, ndim):
    """A Scale/Bias operand shaped to broadcast over a bottom of ``ndim`` axes from the layer's axis."""
    axis = 0 if not array.shape else layer.axis_param % ndim
    return array.reshape(array.shape + (1,) * (ndim - axis - array.ndim))


def _layer(g, lp, layer, shapes):
    """Append the nodes of one layer; ``shapes`` are its bottoms' shapes in the native net."""
    ins = [g.current[b] for b in lp.bottom]
    tops = list(lp.top)
    blobs = [numpy.asarray(b.data, numpy.float32) for b in layer.blobs]
    t = lp.type
    if t == "Split":
        for top in tops:
            g.current[top] = ins[0]
        return
    if t == "Silence":
        return
    if t == "Dropout":  # the identity at test (inverted dropout scales at training)
        if tops[0] != lp.bottom[0]:
            g.write(tops[0], "Identity", ins)
        return
    if len(tops) != 1:
        _refuse(lp, f"{len(tops)} tops (only the single-top form exports)")
    top = tops[0]
    if t == "Convolution":
        inputs = [ins[0], g.const(f"{lp.name}_w", blobs[0])] + ([g.const(f"{lp.name}_b", blobs[1])]
                                                                  if layer.bias_term else [])
        (ph, pw) = layer.pad
        g.write(top, "Conv", inputs, kernel_shape=list(layer.kernel), strides=list(layer.stride),
                pads=[ph, pw, ph, pw], dilations=list(layer.dilation), group=layer.group)
    elif t == "Pooling":
        _pool(g, lp, layer, ins[0], top)
    elif t == "ROIPooling":
        g.write(top, "MaxRoiPool", ins, pooled_shape=[layer.pooled_h, layer.pooled_w],
                spatial_scale=float(layer.spatial_scale))
    elif t == "InnerProduct":
        if layer.axis != 1:
            _refuse(lp, f"inner_product_param.axis {layer.axis} (only axis 1 exports)")
        x = ins[0]
        if len(shapes[0]) != 2:
            x = g.node("Reshape", [x, g.const(f"{lp.name}_shape", numpy.array([0, -1], numpy.int64))],
                       f"{lp.name}_flat")
        inputs = [x, g.const(f"{lp.name}_w", blobs[0])] + ([g.const(f"{lp.name}_b", blobs[1])]
                                                           if layer.bias_term else [])
        g.write(top, "Gemm", inputs, transB=0 if layer.transpose else 1)
    elif t == "ReLU":
        if layer.slope:
            g.write(top, "LeakyRelu", ins, alpha=layer.slope)
        else:
            g.write(top, "Relu", ins)
    elif t in ("Sigmoid", "TanH"):
        g.write(top, "Sigmoid" if t == "Sigmoid" else "Tanh", ins)
    elif t == "Softmax":
        g.write(top, "Softmax", ins, axis=lp.softmax_param.axis % len(shapes[0]))
    elif t == "LRN":
        if layer.axes != (1,):
            _refuse(lp, "norm_region WITHIN_CHANNEL (ONNX's LRN normalises across channels only)")
        g.write(top, "LRN", ins, size=layer.size, alpha=layer.alpha, beta=layer.beta, bias=layer.k)
    elif t == "BatchNorm":
        if not layer.use_global:
            _refuse(lp, "use_global_stats false at test (batch statistics)")
        count = blobs[2].reshape(-1)[0]
        factor = numpy.float32(0 if count == 0 else 1 / count)
        mean, var = blobs[0] * factor, blobs[1] * factor
        std = numpy.sqrt(var + numpy.float32(layer.eps)).astype(numpy.float32)
        trailing = (1,) * (len(shapes[0]) - 2)
        centred = g.node("Sub", [ins[0], g.const(f"{lp.name}_mean", mean.reshape((-1,) + trailing))],
                         f"{lp.name}_centred")
        g.write(top, "Div", [centred, g.const(f"{lp.name}_std", std.reshape((-1,) + trailing))])
    elif t in ("Scale", "Bias"):
        if len(ins) != 1:
            _refuse(lp, "an operand from a second bottom (only a learned operand exports)")
        ndim = len(shapes[0])
        operand = g.const(f"{lp.name}_{t.lower()}", _broadcast_operand(layer, blobs[0], ndim))
        if t == "Bias":
            g.write(top, "Add", [ins[0], operand])
        elif layer.bias_term:
            scaled = g.node("Mul", [ins[0], operand], f"{lp.name}_scaled")
            g.write(top, "Add", [scaled, g.const(f"{lp.name}_bias", _broadcast_operand(layer, blobs[1], ndim))])
        else:
            g.write(top, "Mul", [ins[0], operand])
    elif t == "Eltwise":
        if layer.op == "SUM":
            terms = [x if c == 1 else g.node("Mul", [x, g.const(f"{lp.name}_coeff", numpy.float32(c))],
                                             f"{lp.name}_term") for x, c in zip(ins, layer.coeff)]
            g.write(top, "Sum", terms)
        elif layer.op == "MAX":
            g.write(top, "Max", ins)
        else:
            product = ins[0]
            for x in ins[1:-1]:
                product = g.node("Mul", [product, x], f"{lp.name}_product")
            g.write(top, "Mul", [product, ins[-1]])
    elif t == "Concat":
        g.write(top, "Concat", ins, axis=layer.axis)
    elif t in ("Flatten", "Reshape"):
        ndim = len(shapes[0])
        if t == "Flatten":
            start = lp.flatten_param.axis % ndim
            if lp.flatten_param.end_axis % ndim != ndim - 1:
                _refuse(lp, "flatten_param.end_axis other than the last axis")
            dims = [0] * start + [-1]
        else:
            p = lp.reshape_param
            start = p.axis + ndim + 1 if p.axis < 0 else p.axis
            if p.num_axes != -1 and p.num_axes != len(p.shape.dim):
                _refuse(lp, "reshape_param num_axes that differs from the number of shape dims")
            dims = [0] * start + list(p.shape.dim)
        g.write(top, "Reshape", [ins[0], g.const(f"{lp.name}_shape", numpy.array(dims, numpy.int64))])
    else:
        _refuse(lp, "this layer type has no export")


def _input_info(onnx, name, shape):
    """A graph input: a 4-D input as N×C×H×W with N, H, W dynamic (``data``: N, H, W), else its first axis."""
    if name == "rois":
        dims = ["R"] + list(shape[1:])
    elif len(shape) == 4:
        prefix = "" if name == "data" else f"{name}_"
        dims = [f"{prefix}N", shape[1], f"{prefix}H", f"{prefix}W"]
    else:
        dims = [f"{name}_N"] + list(shape[1:])
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)


def build_model(net, opset=None):
    """The ONNX ModelProto of a TEST ``Net`` (weights inside), checked by onnx.checker and shape inference."""
    onnx = _onnx()
    opset = DEFAULT_OPSET if opset is None else int(opset)
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise Error(f"--opset {opset}: the export supports opsets {MIN_OPSET} to {newest} (this onnx package's)")
    if net.phase != "TEST":
        raise Error(f"net '{net.source}': only a TEST net exports (got phase {net.phase})")
    params = [layer.param for layer in net.layers]
    writes = {}
    for lp in params:
        for top in lp.top:
            writes[top] = writes.get(top, 0) + 1
    g = _Graph(onnx, writes)
    inputs = []
    for lp, layer, bottoms in zip(params, net.layers, net._bottoms):
        if lp.type == "Input":
            for top in lp.top:
                g.current[top] = top
                inputs.append(_input_info(onnx, top, net.blobs[top].shape))
            continue
        _layer(g, lp, layer, [b.shape for b in bottoms])
    for name in net.outputs:
        if g.current[name] != name:  # an output that is an alias (a Split's top) or the input itself
            g.writes_left[name] = 1
            g.write(name, "Identity", [g.current[name]])
    outputs = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [None] * len(net.blobs[name].shape))
               for name in net.outputs]
    graph = onnx.helper.make_graph(g.nodes, net.name or "fastrcnn", inputs, outputs, g.initializers)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)],
                                   producer_name="fastrcnn")
    model.ir_version = min(model.ir_version, 10)  # what onnxruntime releases of 2025 on read
    meta = getattr(net, "weights_meta", None) or {}
    onnx.helper.set_model_props(model, {META_KEY: json.dumps(meta)})
    try:
        onnx.checker.check_model(model, full_check=True)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise Error(f"net '{net.source}': the exported graph does not check: {exc}") from None
    return model


def export_onnx(net_path, weights, output, opset=None):
    """Write ``output`` (.onnx) from a test prototxt and its weights; returns the ModelProto."""
    from .net import Net
    model = build_model(Net(net_path, "TEST", weights=weights), opset)
    data = model.SerializeToString()
    atomic_write(output, lambda f: f.write(data))
    return model


class OnnxNet:
    """An exported model run by onnxruntime with the part of Net's interface that detection uses:
    ``name``, ``inputs``, ``outputs``, ``blobs`` (their names, for membership), ``weights_meta`` and
    ``forward(blobs=None, **inputs)``. A forward without ``data`` reuses the last one (a chunk of RoIs).
    ``threads``: onnxruntime's intra-op threads (default: its own choice, the cores)."""

    def __init__(self, path, threads=None):
        try:
            import onnxruntime
        except ImportError:
            raise Error("--onnx needs onnxruntime: pip install 'fastrcnn[onnx]'") from None
        self.source = self.name = str(path)
        if not Path(path).is_file():
            raise Error(f"ONNX model '{path}' does not exist")
        try:
            options = onnxruntime.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise Error(f"ONNX model '{path}' does not load in onnxruntime: {exc}") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.blobs = dict.fromkeys(self.inputs + self.outputs)
        meta = self.session.get_modelmeta().custom_metadata_map.get(META_KEY)
        self.weights_meta = json.loads(meta) if meta else {}
        self._feed = {}

    def forward(self, blobs=None, start=None, end=None, **inputs):
        unknown = [b for b in (blobs or ()) if b not in self.outputs]
        if unknown or start is not None or end is not None:
            raise Error(f"ONNX model '{self.name}' runs whole and returns its outputs only "
                        f"({', '.join(self.outputs)})")
        for name, value in inputs.items():
            if name not in self.inputs:
                raise Error(f"ONNX model '{self.name}' has no input '{name}' (inputs: {', '.join(self.inputs)})")
            self._feed[name] = numpy.ascontiguousarray(value, dtype=numpy.float32)
        return dict(zip(self.outputs, self.session.run(self.outputs, self._feed)))
