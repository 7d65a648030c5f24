"""The array module switch: NumPy on the CPU, CuPy on an NVIDIA GPU.

Layers never import numpy or cupy for array work directly; they ask for ``xp = get_array_module(x)`` (or
``array_module()`` when they create arrays from nothing), so one body of code runs on both devices and the
arrays never leave the device. CuPy is imported only when the GPU mode is asked for.
"""
import numpy

from .errors import Error

_state = {"gpu": False, "device": 0, "cupy": None, "tf32": False}


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
    _apply_tf32()


def set_tf32(flag):
    """Let cuBLAS and cuDNN round float32 products to TF32 on tensor cores (off by default: Caffe's float32).

    The choice is recorded here; once CuPy is in use it sets CuPy's float32 matmul compute type and the math
    mode of the current device's cuBLAS handle (whatever ``CUPY_TF32`` says), and the cuDNN plans follow it
    (``fastrcnn.cuda.cudnn`` keys them by it). On the CPU nothing is imported."""
    _state["tf32"] = bool(flag)
    if _state["cupy"] is not None:
        _apply_tf32()


def tf32():
    """Whether TF32 is allowed in float32 products on the GPU."""
    return _state["tf32"]


#: CuPy's float32 matmul compute types (cupy/_core/_routines_linalg.pxd): DEFAULT (cuBLAS's own, which
#: follows the handle's math mode) and TF32.
_COMPUTE_TYPE_DEFAULT, _COMPUTE_TYPE_TF32 = 1, 7


def _apply_tf32():
    """Set CuPy's float32 matmul compute type and the current cuBLAS handle's math mode to the TF32 choice."""
    cupy = _state["cupy"]
    from cupy._core import _routines_linalg  # noqa: PLC0415  (CuPy's compute-type switch)
    on = _state["tf32"]
    set_compute_type = getattr(_routines_linalg, "set_compute_type", None)  # internal: absent, CUPY_TF32 rules
    if set_compute_type is not None:
        set_compute_type(numpy.float32, _COMPUTE_TYPE_TF32 if on else _COMPUTE_TYPE_DEFAULT)
    cublas = cupy.cuda.cublas
    cublas.setMathMode(cupy.cuda.device.get_cublas_handle(),
                       cublas.CUBLAS_TF32_TENSOR_OP_MATH if on else cublas.CUBLAS_DEFAULT_MATH)


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
        _apply_tf32()


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


def on_gpu(x):
    """Whether ``x`` is a CuPy array."""
    return get_array_module(x) is not numpy


def upload(dst, src):
    """``dst[...] = src``; a host ``src`` goes into a GPU array through page-locked memory, copied
    asynchronously on the current stream (``fastrcnn.cuda.transfer``)."""
    if not on_gpu(dst) or hasattr(src, "__cuda_array_interface__"):
        dst[...] = src
        return
    from .cuda import transfer  # noqa: PLC0415
    transfer.upload(dst, src)


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
