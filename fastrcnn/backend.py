"""The array module switch: NumPy on the CPU, CuPy on an NVIDIA GPU.

Layers never import numpy or cupy for array work directly; they ask for ``xp = get_array_module(x)`` (or
``array_module()`` when they create arrays from nothing), so one body of code runs on both devices and the
arrays never leave the device. CuPy is imported only when the GPU mode is asked for.
"""
import numpy

from .errors import Error

_state = {"gpu": False, "device": 0, "cupy": None}


def _import_cupy():
    if _state["cupy"] is None:
        try:
            import cupy  # noqa: PLC0415  (imported lazily: the CPU path never imports CuPy)
        except ImportError as exc:
            raise Error("GPU mode needs CuPy: install fastrcnn with the [cuda12] or [cuda13] extra "
                        f"({exc})") from None
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # noqa: BLE001  (CUDA reports a missing driver in several ways)
            raise Error(f"GPU mode asked for, but no CUDA device is usable: {exc}") from None
        if count == 0:
            raise Error("GPU mode asked for, but this machine has no CUDA device")
        _state["cupy"] = cupy
    return _state["cupy"]


def set_mode_cpu():
    """Run every layer on the CPU with NumPy (the default)."""
    _state["gpu"] = False


def set_mode_gpu():
    """Run every layer on the current GPU with CuPy."""
    cupy = _import_cupy()
    cupy.cuda.Device(_state["device"]).use()
    _state["gpu"] = True


def set_device(device_id):
    """Choose the GPU that GPU mode uses (as ``caffe.set_device``)."""
    device_id = int(device_id)
    if device_id < 0:
        raise Error(f"GPU id must be 0 or more, got {device_id}")
    _state["device"] = device_id
    if _state["gpu"] or _state["cupy"] is not None:
        cupy = _import_cupy()
        count = cupy.cuda.runtime.getDeviceCount()
        if device_id >= count:
            raise Error(f"GPU {device_id} asked for, but this machine has {count} CUDA device(s)")
        cupy.cuda.Device(device_id).use()


def gpu_mode():
    return _state["gpu"]


def array_module():
    """numpy, or cupy in GPU mode."""
    return _state["cupy"] if _state["gpu"] else numpy


def get_array_module(*arrays):
    """The module (numpy or cupy) that owns these arrays."""
    cupy = _state["cupy"]
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return numpy


def to_cpu(x):
    """A NumPy array with the values of ``x`` (which may live on the GPU)."""
    cupy = _state["cupy"]
    if cupy is not None and isinstance(x, cupy.ndarray):
        return cupy.asnumpy(x)
    return numpy.asarray(x)


def scatter_add(target, index, values):
    """``target[index] += values`` with repeated indices adding up (1-D ``target``, in place)."""
    if get_array_module(target) is numpy:
        numpy.add.at(target, index, values)
    else:
        import cupyx
        cupyx.scatter_add(target, index, values)


def to_device(x, dtype=None):
    """``x`` as an array of the current mode's module (a copy only where needed)."""
    return array_module().asarray(x, dtype=dtype)


# -- random numbers --------------------------------------------------------------------------------------
# One generator for everything random in the engine (fillers, dropout masks), seeded by
# ``set_random_seed`` (caffe.set_random_seed) or a solver's ``random_seed``; its state goes into
# solver snapshots so that a restored run continues exactly.
_rng = {"gen": numpy.random.default_rng()}


def set_random_seed(seed):
    _rng["gen"] = numpy.random.default_rng(int(seed))


def set_random_stream(seed, index):
    """Restart the generator at the stream of (``seed``, ``index``): the solver gives each minibatch its own,
    so that its dropout masks do not depend on which process runs it or on what ran before."""
    _rng["gen"] = numpy.random.default_rng([int(seed), int(index)])


def rng():
    return _rng["gen"]


def get_rng_state():
    """The generator's state as a JSON-able dict."""
    return _rng["gen"].bit_generator.state


def set_rng_state(state):
    gen = numpy.random.default_rng()
    gen.bit_generator.state = state
    _rng["gen"] = gen
