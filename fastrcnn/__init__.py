"""fastrcnn: Fast R-CNN object detection as a Caffe-style layer framework on NumPy (and CuPy on GPUs).

The engine (Net, layers, SGDSolver, weights I/O) follows Caffe and pycaffe; the Fast R-CNN pipeline
(``fastrcnn.rcnn``) is built on its public API and registers its data layer into the layer registry.

``import fastrcnn`` loads neither NumPy nor the engine and changes nothing process-wide: the engine's names load
on first use (PEP 562), so that ``fastrcnn.tune_cpu()`` can still choose OpenBLAS's kernel before NumPy loads.
"""
import importlib

from .cpu import tune_cpu
from .errors import Error

TRAIN, TEST = "TRAIN", "TEST"

#: The engine's public names and the modules that define them.
_LAZY = {"Net": "net", "SGDSolver": "solver", "allow_python_layers": "layers.python_layer",
         "set_device": "backend", "set_mode_cpu": "backend", "set_mode_gpu": "backend",
         "set_random_seed": "backend", "set_tf32": "backend", "to_cpu": "backend"}

__all__ = ["Error", "TRAIN", "TEST", "tune_cpu", *_LAZY]


def __getattr__(name):
    """The engine's names, imported with the pipeline (which registers its layers) on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'fastrcnn' has no attribute {name!r}")
    importlib.import_module(".rcnn", __name__)
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
