"""Truncated SVD of fully connected layers (paper section 3.1; the original's tools/compress_net.py).

A layer y = W·x + b with W (out × in) becomes two: ``<name>_L`` with weights Σ_l·V_lᵀ (l × in) and no bias,
then ``<name>_U`` with weights U_l (out × l) and the original bias: (out + in)·l parameters instead of
out·in. The compressed test prototxt is written too (the original needed one written by hand); the U layer
keeps the original top name, so the layers after it read it unchanged.
"""
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from .. import protoio
from ..errors import Error
from ..fileio import atomic_write_text
from ..weights import read_weights, write_weights

DEFAULT_RANKS = {"fc6": 1024, "fc7": 256}


def parse_layers(text):
    """'fc6:1024,fc7:256' → {'fc6': 1024, 'fc7': 256}."""
    ranks = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, rank = item.rpartition(":")
        if not sep or not name or not rank.isdigit() or int(rank) < 1:
            raise Error(f"--layers: expected NAME:RANK items like fc6:1024, got '{item}'")
        ranks[name] = int(rank)
    return ranks


def factorize(weight, rank):
    """(W_L (rank × in), W_U (out × rank), relative Frobenius error of W_U·W_L against W)."""
    w = np.asarray(weight, dtype=np.float64)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    lower = s[:rank, None] * vt[:rank]
    upper = u[:, :rank]
    error = np.linalg.norm(w - upper @ lower) / max(np.linalg.norm(w), 1e-30)
    return lower.astype(np.float32), upper.astype(np.float32), float(error)


def _split_layer(net_param, name, rank):
    """Replace InnerProduct ``name`` in the NetParameter by ``name_L`` and ``name_U``."""
    index = next((i for i, lp in enumerate(net_param.layer) if lp.name == name), None)
    if index is None:
        raise Error(f"the net has no layer '{name}' to compress")
    layer = net_param.layer[index]
    if layer.type != "InnerProduct":
        raise Error(f"layer '{name}' is a {layer.type}; only InnerProduct layers can be compressed")
    lower, upper = type(layer)(), type(layer)()
    lower.CopyFrom(layer)
    upper.CopyFrom(layer)
    lower.name, upper.name = f"{name}_L", f"{name}_U"
    del lower.top[:]
    lower.top.append(f"{name}_L")
    lower.inner_product_param.num_output = rank
    lower.inner_product_param.bias_term = False
    lower.inner_product_param.ClearField("bias_filler")
    del lower.param[1:]
    del upper.bottom[:]
    upper.bottom.append(f"{name}_L")
    layers = list(net_param.layer)
    layers[index:index + 1] = [lower, upper]
    del net_param.layer[:]
    net_param.layer.extend(layers)


def compress(net_path, weights_path, ranks=None, output_dir=None):
    """Write the compressed weights (.npz) and test prototxt; returns (prototxt, weights, {layer: error})."""
    ranks = dict(DEFAULT_RANKS if ranks is None else ranks)
    net_param = protoio.load_net(net_path)
    layers, meta = read_weights(weights_path)
    errors = {}
    for name, rank in ranks.items():
        if name not in layers:
            raise Error(f"{weights_path}: has no weights for layer '{name}'")
        blobs = layers.pop(name)
        weight = blobs[0].reshape(blobs[0].shape[-2], -1) if blobs[0].ndim > 2 else blobs[0]
        out_dim, in_dim = weight.shape
        if rank > min(out_dim, in_dim):
            raise Error(f"layer '{name}': rank {rank} exceeds min(out, in) = {min(out_dim, in_dim)} of its "
                        f"{out_dim}×{in_dim} weights")
        lower, upper, errors[name] = factorize(weight, rank)
        layers[f"{name}_L"] = [lower]
        layers[f"{name}_U"] = [upper] + list(blobs[1:])
        _split_layer(net_param, name, rank)
    tag = "_".join(f"{name}_{rank}" for name, rank in ranks.items())
    output_dir = Path(output_dir or Path(weights_path).parent)
    output_dir.mkdir(parents=True, exist_ok=True)
    prototxt = output_dir / f"{Path(net_path).stem}_svd_{tag}.prototxt"
    weights_out = output_dir / f"{Path(weights_path).stem}_svd_{tag}.npz"
    header = (f"# {Path(net_path).name} with truncated SVD of " + ", ".join(f"{n} (rank {r})" for n, r in
              ranks.items()) + ", written by frcnn-compress\n")
    atomic_write_text(prototxt, header + text_format.MessageToString(net_param))
    types = dict(meta.get("layer_types") or {})
    for name in ranks:
        types.pop(name, None)
        types[f"{name}_L"] = types[f"{name}_U"] = "InnerProduct"
    meta = dict(meta, layer_types=types, compressed={name: {"rank": rank, "error": errors[name]} for name, rank in ranks.items()})
    write_weights(str(weights_out), layers, meta)
    return prototxt, weights_out, errors
