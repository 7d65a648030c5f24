"""fastrcnn: Fast R-CNN object detection as a Caffe-style layer framework on NumPy (and CuPy on GPUs).

The engine (Net, layers, SGDSolver, weights I/O) follows Caffe and pycaffe; the Fast R-CNN pipeline
(``fastrcnn.rcnn``) is built on its public API and registers its data layer into the layer registry.
"""
from .backend import set_device, set_mode_cpu, set_mode_gpu, set_random_seed, to_cpu
from .errors import Error
from .layers.python_layer import allow_python_layers
from .net import Net
from .solver import SGDSolver

TRAIN, TEST = "TRAIN", "TEST"

__all__ = ["Error", "Net", "SGDSolver", "TRAIN", "TEST", "allow_python_layers", "set_device", "set_mode_cpu",
           "set_mode_gpu", "set_random_seed", "to_cpu"]

from . import rcnn  # noqa: E402,F401  (registers the pipeline's layers; the engine never imports it)
