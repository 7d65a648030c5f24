"""Weights files: Caffe's .caffemodel and the project's .npz, read, written and matched to a net by layer name.

An .npz holds one array per param blob under ``"<layer>/<i>"`` and a ``"__meta__"`` JSON string
({"format": "fastrcnn-weights", "version": 1, "layer_types": {...}, ...}). Both formats list every layer
that has params, so a blob shared by several layers is stored under each of them, as Caffe's
Net::ToProto does. Loading follows Net::CopyTrainedLayersFrom: layers are matched by name, layers the
net lacks are skipped, and a blob count or shape that differs is an error. Writes are atomic: a temp file
beside the target, then ``os.replace``, so an interrupted save never leaves a half-written file.
"""
import collections
import json
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy

from . import backend, protoio
from .errors import Error
from .fileio import atomic_write

FORMAT = "fastrcnn-weights"
VERSION = 1
META_KEY = "__meta__"

# Where a mismatch usually comes from, for the layers users most often resize.
_CLASS_HINT = ("the weights were sized for another number of classes: edit num_output of cls_score (K+1) "
               "and bbox_pred (4(K+1)) for K object classes, or rename the layers to learn them from scratch")
_MISMATCH_HINTS = {"cls_score": _CLASS_HINT, "bbox_pred": _CLASS_HINT}
_DEFAULT_HINT = ("the weights were made for another net definition; to learn this layer from scratch instead, "
                 "rename it in the prototxt (layers are matched by name)")


# -- generic atomic .npz files (also used for solver states) ----------------------------------------------
def write_npz(path, arrays, meta):
    """Write ``arrays`` ({key: array}) and ``meta`` (a JSON-able dict) to an .npz, atomically."""
    entries = dict(arrays)
    entries[META_KEY] = numpy.array(json.dumps(meta))
    atomic_write(path, lambda f: numpy.savez(f, allow_pickle=False, **entries))


def _npz_arrays(file):
    """{key: array} of an open .npz file, or None when it holds a single .npy array."""
    npz = numpy.load(file, allow_pickle=False)
    if not isinstance(npz, numpy.lib.npyio.NpzFile):
        return None
    with npz:
        # numpy reads a member only as far as its header says, so the zip CRC would go unchecked when a
        # damaged header (dtype '<f4' -> '<f2') asks for fewer bytes; check every member's CRC first
        bad = npz.zip.testzip()
        if bad is not None:
            raise zipfile.BadZipFile(f"bad CRC-32 for member '{bad}'")
        return {key: npz[key] for key in npz.files}


def read_npz(path, kind):
    """({key: array}, meta dict) of an .npz written by write_npz; ``kind`` names the content in errors."""
    try:
        with open(path, "rb") as f:
            arrays = _npz_arrays(f)
    except FileNotFoundError:
        raise Error(f"{path}: no such file") from None
    except OSError as exc:
        raise Error(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error, tokenize.TokenError,
            NotImplementedError, RuntimeError):
        # what zipfile and numpy raise on damaged files: bad CRCs and headers (ValueError, BadZipFile,
        # TokenError), flipped compression, version or encryption flags (NotImplementedError, RuntimeError)
        raise Error(f"{path}: not an .npz {kind} file (truncated, corrupt, or another format)") from None
    except MemoryError as exc:
        raise Error(f"{path}: an array of this .npz {kind} file does not fit in memory ({exc}); "
                    "its header may be corrupt") from None
    if arrays is None:
        raise Error(f"{path}: holds a single .npy array, not an .npz {kind} file")
    meta = arrays.pop(META_KEY, None)
    if meta is None:
        return arrays, {}
    if meta.shape != () or meta.dtype.kind != "U":
        raise Error(f"{path}: entry '{META_KEY}' must be a JSON string, got a {meta.dtype} array of shape "
                    f"{meta.shape}")
    try:
        meta = json.loads(str(meta[()]))
    except json.JSONDecodeError as exc:
        raise Error(f"{path}: entry '{META_KEY}' is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise Error(f"{path}: entry '{META_KEY}' must hold a JSON object, got {type(meta).__name__}")
    return arrays, meta


# -- weights files -----------------------------------------------------------------------------------------
def _format_of(path):
    suffix = Path(path).suffix.lower()
    if suffix not in (".npz", ".caffemodel"):
        raise Error(f"{path}: unknown weights file type '{suffix}'; use .npz or .caffemodel "
                    "(HDF5 .caffemodel.h5 files are not supported)")
    return suffix


def write_weights(path, layers, meta=None):
    """Write {layer: [arrays]} to ``path`` (.npz or .caffemodel by extension), atomically.

    ``meta`` (JSON-able) goes into the .npz; a .caffemodel keeps only ``meta["net"]`` (its name) and
    ``meta["layer_types"]`` (each LayerParameter's type).
    """
    meta = dict(meta or {})
    if _format_of(path) == ".npz":
        arrays = {f"{name}/{i}": numpy.asarray(a, dtype=numpy.float32)
                  for name, blobs in layers.items() for i, a in enumerate(blobs)}
        write_npz(path, arrays, {**meta, "format": FORMAT, "version": VERSION})
        return
    from .proto import caffe_pb2
    types = meta.get("layer_types") or {}
    if not isinstance(types, dict):
        raise Error(f"{path}: meta 'layer_types' must map layer names to types, got {types!r}")
    net_param = caffe_pb2.NetParameter(name=meta.get("net", ""))
    for name, blobs in layers.items():
        lp = net_param.layer.add(name=name, type=types.get(name, ""))
        lp.blobs.extend(protoio.array_to_blob(a) for a in blobs)
    protoio.write_caffemodel(path, net_param)


def save_weights(net, path, meta=None):
    """Write ``net``'s params to ``path`` (.npz or .caffemodel); ``meta`` is free JSON-able metadata."""
    layer_types = net.layer_dict
    layers = collections.OrderedDict(
        (name, [backend.to_cpu(b.data) for b in blobs]) for name, blobs in net.params.items())
    info = {"net": net.name, "layer_types": {name: layer_types[name].param.type for name in layers}}
    write_weights(path, layers, {**info, **(meta or {})})


def read_weights(path):
    """(OrderedDict {layer: [float32 arrays]}, meta dict) from an .npz or .caffemodel file."""
    if _format_of(path) == ".caffemodel":
        return _read_caffemodel(path)
    arrays, meta = read_npz(path, "weights")
    if meta and meta.get("format") != FORMAT:
        raise Error(f"{path}: not a weights file (its format is {meta.get('format')!r}, expected '{FORMAT}')")
    version = meta.get("version", VERSION)
    if not isinstance(version, int) or version > VERSION:
        raise Error(f"{path}: weights file version {version!r} is not one this fastrcnn reads ({VERSION}); "
                    "update fastrcnn")
    found = collections.OrderedDict()
    for key, array in arrays.items():
        name, sep, index = key.rpartition("/")
        if not sep or not name or not index.isdigit():
            raise Error(f"{path}: bad entry '{key}'; weights entries are named '<layer>/<blob index>'")
        if array.dtype.kind not in "fiu":
            raise Error(f"{path}: entry '{key}' holds {array.dtype} values, not numbers")
        found.setdefault(name, {})[int(index)] = array.astype(numpy.float32, copy=False)
    layers = collections.OrderedDict()
    for name, blobs in found.items():
        if sorted(blobs) != list(range(len(blobs))):
            raise Error(f"{path}: layer '{name}' has blobs {sorted(blobs)}; expected 0..{len(blobs) - 1}")
        layers[name] = [blobs[i] for i in range(len(blobs))]
    return layers, meta


def _read_caffemodel(path):
    net_param = protoio.read_caffemodel(path)
    layers = collections.OrderedDict()
    types = {}
    for lp in net_param.layer:
        if lp.blobs:
            layers[lp.name] = [protoio.blob_to_array(b, what=f"{path}: layer '{lp.name}' blob {i}")
                               for i, b in enumerate(lp.blobs)]
            types[lp.name] = lp.type
    return layers, {"net": net_param.name, "layer_types": types}


def _legacy_shape_matches(expected, found):
    """Caffe's Blob::ShapeEquals for legacy blobs: (1, 1, out, in) fits a 2-D (out, in) param, etc."""
    return len(found) == 4 and len(expected) <= 4 and (1,) * (4 - len(expected)) + tuple(expected) == found


def load_weights(net, path):
    """Copy the weights in ``path`` into ``net`` by layer name (Net::CopyTrainedLayersFrom).

    Layers the net lacks are skipped. Returns the names of the net's layers with params that received
    no weights. The file's meta is kept as ``net.weights_meta``.
    """
    layers, meta = read_weights(path)
    filled = set()
    for name, arrays in layers.items():
        blobs = net.params.get(name)
        if blobs is None:
            continue
        if len(arrays) != len(blobs):
            raise Error(f"{path}: layer '{name}' has {len(arrays)} param blob(s) in the file but "
                        f"{len(blobs)} in net '{net.name}' (does bias_term differ?)")
        for i, (blob, array) in enumerate(zip(blobs, arrays)):
            if array.shape != blob.shape and not _legacy_shape_matches(blob.shape, array.shape):
                hint = _MISMATCH_HINTS.get(name, _DEFAULT_HINT)
                raise Error(f"{path}: cannot copy param {i} of layer '{name}': the net expects shape "
                            f"{blob.shape} but the file has {array.shape}; {hint}")
        for blob, array in zip(blobs, arrays):
            blob.data[...] = backend.to_device(array.reshape(blob.shape))
            filled.add(id(blob))
    net.weights_meta = meta
    return [name for name, blobs in net.params.items() if any(id(b) not in filled for b in blobs)]


def convert(src, dst):
    """Convert a weights file between .caffemodel and .npz (layer names, blobs and layer types carried)."""
    layers, meta = read_weights(src)
    write_weights(dst, layers, meta)
    return layers
