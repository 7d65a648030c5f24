"""Helpers for tests on the original Fast R-CNN model definitions and demo images, and on the nets of prototxt/.

The original files (``original-models/``, ``demo-images/``) are found by :func:`find_reference`: in
``$FASTRCNN_REFERENCE``, then ``data/reference/`` (where ``scripts/fetch_reference.py`` puts them), then
``../shared/reference/`` beside the checkout. The inventory lists the 29 files of the original ``models/`` folder;
the fill gives a net random weights whose activations neither vanish nor explode through 16 layers, so
comparisons stay meaningful.
"""
import importlib.util
import os
from pathlib import Path

import numpy

REPO = Path(__file__).resolve().parents[1]
PROTOTXT = REPO / "prototxt"
REFERENCE_ENV = "FASTRCNN_REFERENCE"
FETCH_HINT = f"run `python scripts/fetch_reference.py` (or set {REFERENCE_ENV})"

MODELS = ("CaffeNet", "VGG_CNN_M_1024", "VGG16")
#: The 9 test nets: each model's full, compressed (truncated-SVD fc6/fc7) and no_bbox_reg variants.
TEST_NETS = tuple(f"{m}/{v}test.prototxt" for m in MODELS for v in ("", "compressed/", "no_bbox_reg/"))
#: The 10 training variants; each has a train.prototxt and a solver.prototxt.
TRAIN_VARIANTS = tuple(f"{m}/{v}" for m in MODELS for v in ("", "no_bbox_reg/", "piecewise/")) + ("VGG16/fc_only/",)
TRAIN_NETS = tuple(f"{v}train.prototxt" for v in TRAIN_VARIANTS)
SOLVERS = tuple(f"{v}solver.prototxt" for v in TRAIN_VARIANTS)
ALL_FILES = TEST_NETS + TRAIN_NETS + SOLVERS

#: The last conv blob, the RoI pooling grid and the fc7 width of each model.
CONV5 = {"CaffeNet": "conv5", "VGG_CNN_M_1024": "conv5", "VGG16": "conv5_3"}
POOLED = {"CaffeNet": 6, "VGG_CNN_M_1024": 6, "VGG16": 7}


def load_script(name):
    """scripts/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fetch_script():
    """scripts/fetch_reference.py as a module (its manifest, source paths and main)."""
    return load_script("fetch_reference")


def find_reference():
    """(folder, None) for the first place holding every file of scripts/fetch_reference.sha256, else
    (None, a one-line reason that says how to get them). ``$FASTRCNN_REFERENCE``, where set, is the only place."""
    script = fetch_script()
    manifest = script.read_manifest()
    env = os.environ.get(REFERENCE_ENV)
    places = [Path(env)] if env else [script.DEFAULT_OUTPUT, REPO.parent / "shared" / "reference"]
    incomplete = []
    for place in places:
        missing = [rel for rel in manifest if not (place / rel).is_file()]
        if not missing:
            return place, None
        if place.is_dir() or env:
            incomplete.append(f"{place} lacks {len(missing)} of the {len(manifest)} files, e.g. {missing[0]}")
    return None, "; ".join([f"needs the original Fast R-CNN model files and demo images: {FETCH_HINT}"]
                           + incomplete)


def models_dir(reference_dir):
    return reference_dir / "original-models"


def msra_fill(net, seed):
    """He-initialise every weight (std sqrt(2 / fan_in)) and give biases small random values, in place."""
    rng = numpy.random.default_rng(seed)
    for blobs in net.params.values():
        weight = blobs[0]
        fan_in = weight.count // weight.shape[0]
        weight.data[...] = rng.standard_normal(weight.shape, dtype=numpy.float32)
        weight.data *= numpy.float32(numpy.sqrt(2.0 / fan_in))
        for bias in blobs[1:]:
            bias.data[...] = 0.01 * rng.standard_normal(bias.shape, dtype=numpy.float32)


def image_blob(rng, shape):
    """A mean-subtracted-looking image blob: roughly unit-scale values, float32."""
    return rng.standard_normal(shape, dtype=numpy.float32)


def layer_mults(net, layer):
    """[(lr_mult, decay_mult)] for each param blob of ``layer``, from the net's learnable-param lists."""
    index = {id(blob): i for i, blob in enumerate(net.learnable_params)}
    return [(net.lr_mults[index[id(b)]], net.decay_mults[index[id(b)]]) for b in net.params[layer]]
