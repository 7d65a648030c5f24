"""Reading and writing Caffe's protobuf files: net and solver prototxt, .caffemodel weights, blobs.

Text files are parsed with protobuf's text_format, as Caffe's ReadProtoFromTextFile does, and every
net is brought to the current format the way Caffe's upgrade_proto.cpp does: V1 ``layers`` become
``layer``, ``input_dim`` becomes ``input_shape``, and a solver's ``solver_type`` enum becomes ``type``.
"""

import math
import re
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError

from .errors import Error
from .fileio import atomic_write
from .proto import caffe_pb2

__all__ = [
    "load_net", "net_from_string", "upgrade_net", "load_solver",
    "read_caffemodel", "write_caffemodel", "blob_to_array", "array_to_blob", "V1_LAYER_TYPES",
]

_V1 = caffe_pb2.V1LayerParameter

# Caffe's UpgradeV1LayerType: V1 enum value -> layer type string.
V1_LAYER_TYPES = {
    _V1.NONE: "", _V1.ABSVAL: "AbsVal", _V1.ACCURACY: "Accuracy", _V1.ARGMAX: "ArgMax",
    _V1.BNLL: "BNLL", _V1.CONCAT: "Concat", _V1.CONTRASTIVE_LOSS: "ContrastiveLoss",
    _V1.CONVOLUTION: "Convolution", _V1.DATA: "Data", _V1.DECONVOLUTION: "Deconvolution",
    _V1.DROPOUT: "Dropout", _V1.DUMMY_DATA: "DummyData", _V1.EUCLIDEAN_LOSS: "EuclideanLoss",
    _V1.ELTWISE: "Eltwise", _V1.EXP: "Exp", _V1.FLATTEN: "Flatten", _V1.HDF5_DATA: "HDF5Data",
    _V1.HDF5_OUTPUT: "HDF5Output", _V1.HINGE_LOSS: "HingeLoss", _V1.IM2COL: "Im2col",
    _V1.IMAGE_DATA: "ImageData", _V1.INFOGAIN_LOSS: "InfogainLoss",
    _V1.INNER_PRODUCT: "InnerProduct", _V1.LRN: "LRN", _V1.MEMORY_DATA: "MemoryData",
    _V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss", _V1.MVN: "MVN",
    _V1.POOLING: "Pooling", _V1.POWER: "Power", _V1.RELU: "ReLU", _V1.SIGMOID: "Sigmoid",
    _V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss", _V1.SILENCE: "Silence",
    _V1.SOFTMAX: "Softmax", _V1.SOFTMAX_LOSS: "SoftmaxWithLoss", _V1.SPLIT: "Split",
    _V1.SLICE: "Slice", _V1.TANH: "TanH", _V1.WINDOW_DATA: "WindowData",
    _V1.THRESHOLD: "Threshold",
}

# The V1 layer-specific messages; LayerParameter has each under the same name and type.
_V1_PARAM_FIELDS = frozenset(
    f.name for f in _V1.DESCRIPTOR.fields
    if f.name.endswith("_param") and f.message_type is not None)

# Caffe's UpgradeSolverType: legacy solver_type enum -> solver type string.
_SOLVER_TYPES = {
    caffe_pb2.SolverParameter.SGD: "SGD", caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad", caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta", caffe_pb2.SolverParameter.ADAM: "Adam",
}

_LEGACY_DIMS = ("num", "channels", "height", "width")

_LOCATION_PREFIX = re.compile(r"^\d+(?::\d+)? : ")
_ENUM_ERROR = re.compile(r'Enum type "(?P<enum>[\w.]+)" has no value '
                         r'(?:named (?P<name>\S+?)|with number (?P<number>-?\d+))\.')


# ---------------------------------------------------------------- text files

def load_net(path):
    """Read a net prototxt into an upgraded NetParameter; a NetParameter is returned as is."""
    if isinstance(path, caffe_pb2.NetParameter):
        return path
    return net_from_string(_read_text(path), source=str(path))


def net_from_string(text, source="<string>"):
    """Parse net prototxt text into an upgraded NetParameter; errors name `source`:line:column."""
    return upgrade_net(_parse_text(text, caffe_pb2.NetParameter(), source), source)


def load_solver(path):
    """Read a solver prototxt into a SolverParameter; a SolverParameter is returned as is.

    Inline nets are upgraded like load_net's, and the legacy ``solver_type`` enum becomes ``type``.
    """
    if isinstance(path, caffe_pb2.SolverParameter):
        return path
    source = str(path)
    solver = _parse_text(_read_text(path), caffe_pb2.SolverParameter(), source)
    if solver.HasField("solver_type"):
        if solver.HasField("type"):
            raise Error(f"{source}: sets both the legacy 'solver_type' and 'type'; keep only 'type'")
        solver.type = _SOLVER_TYPES[solver.solver_type]
        solver.ClearField("solver_type")
    for name in ("net_param", "train_net_param"):
        if solver.HasField(name):
            upgrade_net(getattr(solver, name), f"{source}: {name}")
    for i, net in enumerate(solver.test_net_param):
        upgrade_net(net, f"{source}: test_net_param #{i}")
    return solver


def _read_text(path):
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise Error(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        byte = e.object[e.start]
        raise Error(f"{path}: not UTF-8 text (byte {byte:#04x} at offset {e.start})") from None
    except OSError as e:
        raise Error(f"{path}: cannot read ({e.strerror})") from None


def _parse_text(text, message, source):
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise Error(_describe_parse_error(e, text, source)) from None
    return message


def _describe_parse_error(error, text, source):
    """Reformat text_format's "LINE:COL : message" as "source:LINE:COL: message"."""
    line, column = error.GetLine(), error.GetColumn()
    message = _LOCATION_PREFIX.sub("", str(error), count=1)
    enum_error = _ENUM_ERROR.search(message)
    if enum_error:
        message = _describe_enum_error(enum_error, text, line, column)
    where = source
    if line is not None:
        where += f":{line}" + (f":{column}" if column is not None else "")
    return f"{where}: {message}"


def _describe_enum_error(match, text, line, column):
    """Name the field, the bad value and the enum's valid names."""
    enum = caffe_pb2.DESCRIPTOR.pool.FindEnumTypeByName(match["enum"])
    value = match["name"] or match["number"]
    field = None
    if line is not None and column is not None:
        lines = text.splitlines()
        if 0 < line <= len(lines):
            # The field name is the identifier before the ':' ahead of the value.
            before = re.search(r"(\w+)\s*:?\s*$", lines[line - 1][:column - 1])
            field = before and before[1]
    valid = ", ".join(v.name for v in enum.values)
    of_field = f"field '{field}' ({enum.full_name})" if field else enum.full_name
    return f"invalid value {value} for {of_field}; valid names: {valid}"


# ---------------------------------------------------------------- upgrades

def upgrade_net(net, source="<net>"):
    """Upgrade a legacy NetParameter in place, as Caffe's UpgradeNetAsNeeded does; returns it.

    V1 ``layers`` become ``layer`` (type enum -> type string, blobs_lr/weight_decay -> ParamSpec
    lr_mult/decay_mult, parameters and blobs carried over); ``input_dim`` becomes ``input_shape``.
    """
    if net.layers:
        if net.layer:
            raise Error(f"{source}: mixes V1 'layers' with 'layer'; a net uses one format")
        for v1 in net.layers:
            _upgrade_v1_layer(v1, net.layer.add())
        net.ClearField("layers")
    if net.input_dim:
        if net.input_shape:
            raise Error(f"{source}: sets both 'input_shape' and the legacy 'input_dim'; keep one")
        dims = list(net.input_dim)
        if len(dims) != 4 * len(net.input):
            raise Error(f"{source}: 'input_dim' needs 4 values per input, got {len(dims)} "
                        f"for {len(net.input)} input(s)")
        for i in range(len(net.input)):
            net.input_shape.add().dim.extend(dims[4 * i:4 * i + 4])
        net.ClearField("input_dim")
    return net


def _upgrade_v1_layer(v1, layer):
    """Caffe's UpgradeV1LayerParameter."""
    if v1.HasField("name"):
        layer.name = v1.name
    if v1.HasField("type"):
        layer.type = V1_LAYER_TYPES[v1.type]
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    layer.loss_weight.extend(v1.loss_weight)
    layer.blobs.extend(v1.blobs)
    for values, attribute in ((v1.param, "name"), (v1.blob_share_mode, "share_mode"),
                              (v1.blobs_lr, "lr_mult"), (v1.weight_decay, "decay_mult")):
        for i, value in enumerate(values):
            while len(layer.param) <= i:
                layer.param.add()
            setattr(layer.param[i], attribute, value)
    for field, value in v1.ListFields():
        if field.name in _V1_PARAM_FIELDS:
            getattr(layer, field.name).CopyFrom(value)


# ---------------------------------------------------------------- binary weights

def read_caffemodel(path):
    """Read a binary .caffemodel (V1 or current format) into an upgraded NetParameter."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise Error(f"{path}: no such file") from None
    except OSError as e:
        raise Error(f"{path}: cannot read ({e.strerror})") from None
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except DecodeError:
        raise Error(f"{path}: not a valid .caffemodel (truncated or corrupt protobuf)") from None
    if not net.layer and not net.layers:
        raise Error(f"{path}: holds no layers; not a .caffemodel")
    return upgrade_net(net, str(path))


def write_caffemodel(path, net_param):
    """Write `net_param` as a binary .caffemodel, atomically."""
    data = net_param.SerializeToString()
    atomic_write(path, lambda f: f.write(data))


# ---------------------------------------------------------------- blobs

def blob_to_array(blob, what="blob"):
    """A BlobProto's values as a float32 array, shaped like Caffe's Blob::FromProto.

    The shape comes from ``shape.dim``, else from the legacy num/channels/height/width; the values
    from ``data``, else ``double_data``. `what` names the blob in errors.
    """
    if blob.HasField("shape"):
        shape = tuple(blob.shape.dim)
    elif any(blob.HasField(name) for name in _LEGACY_DIMS):
        shape = tuple(getattr(blob, name) for name in _LEGACY_DIMS)
    else:
        shape = ()
    if any(d < 0 for d in shape):
        raise Error(f"{what}: negative dimension in shape {shape}")
    if len(blob.data):
        values = np.asarray(blob.data, dtype=np.float32)
    else:
        values = np.asarray(blob.double_data, dtype=np.float64).astype(np.float32)
    count = math.prod(shape)
    if values.size != count:
        raise Error(f"{what}: holds {values.size} values but its shape {shape} needs {count}")
    return values.reshape(shape)


_DATA_FIELD = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name["data"].number


def array_to_blob(array):
    """A BlobProto holding `array` as float32 ``data`` with its ``shape``."""
    array = np.asarray(array, dtype="<f4")
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(array.shape)
    if array.size:
        # Merge the packed field's wire bytes: extending `data` converts one value at a time,
        # about 100 times slower.
        payload = array.tobytes()
        blob.MergeFromString(_varint(_DATA_FIELD << 3 | 2) + _varint(len(payload)) + payload)
    return blob


def _varint(value):
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
