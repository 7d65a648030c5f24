"""fastrcnn: Fast R-CNN object detection as a Caffe-style layer framework on NumPy (and CuPy on GPUs).

The engine (Net, layers, SGDSolver, weights I/O) follows Caffe and pycaffe; the Fast R-CNN pipeline
(``fastrcnn.rcnn``) is built on its public API and registers its data layer into the layer registry.
"""
from .cpu import choose_openblas_kernel, retain_freed_memory

choose_openblas_kernel()  # before anything loads NumPy (and its OpenBLAS)
retain_freed_memory()

from .backend import set_device, set_mode_cpu, set_mode_gpu, set_random_seed, to_cpu  # noqa: E402
from .errors import Error  # noqa: E402
from .layers.python_layer import allow_python_layers  # noqa: E402
from .net import Net  # noqa: E402
from .solver import SGDSolver  # noqa: E402

TRAIN, TEST = "TRAIN", "TEST"

__all__ = ["Error", "Net", "SGDSolver", "TRAIN", "TEST", "allow_python_layers", "set_device", "set_mode_cpu",
           "set_mode_gpu", "set_random_seed", "to_cpu"]

from . import rcnn  # noqa: E402,F401  (registers the pipeline's layers; the engine never imports it)
