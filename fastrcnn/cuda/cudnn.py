"""Convolution through cuDNN's graph API (NVIDIA's cuDNN frontend, Python module ``cudnn``) on CuPy arrays, and
Caffe's engine rule.

One graph of one operation (forward, backward data or backward filter) is built per convolution geometry and
kept: ``PlanCache`` keys it by the operation, the bottom shape, the weights' shape, stride, pad, dilation,
group, dtype, the TF32 choice and the device. A grouped convolution runs its groups one after the other
through the plan of one group's shapes. Inputs and outputs are dense NCHW arrays; the workspace comes from
CuPy's memory pool, and each device has one cuDNN handle, bound to CuPy's current stream at every execution.

Float32 plans use float32 compute; with TF32 off (``fastrcnn.set_tf32``, the default) the engines that cuDNN
marks as using tensor cores or down-converting inputs are removed before a plan is chosen.

The engine rule (Caffe's ``engine`` field of ConvolutionParameter): ``CAFFE`` runs im2col and a matrix
product; ``DEFAULT`` and ``CUDNN`` run cuDNN where the frontend imports and a plan builds for the geometry,
and otherwise the CAFFE engine, with the reason logged once per layer and reason.
"""
import collections
import logging

import numpy

from .. import backend

log = logging.getLogger(__name__)

FPROP, DGRAD, WGRAD = "fprop", "dgrad", "wgrad"

#: What identifies a plan: the operation, the whole bottom (N, C, H, W), the weights' (K, kh, kw), the (h, w)
#: pairs, group, the dtype's name, the TF32 choice and the device.
PlanKey = collections.namedtuple("PlanKey", "op n c h w k kh kw stride pad dilation group dtype tf32 device")


class PlanUnavailable(Exception):
    """cuDNN has no plan for a geometry (the frontend's own exception is the cause)."""


def output_size(key):
    """(OH, OW) of a convolution key."""
    return tuple((size + 2 * p - (d * (k - 1) + 1)) // s + 1 for size, k, s, p, d in
                 zip((key.h, key.w), (key.kh, key.kw), key.stride, key.pad, key.dilation))


def group_shapes(key):
    """The dense NCHW shapes of one group's image, weights and output: (x, w, y)."""
    cg, kg = key.c // key.group, key.k // key.group
    return (key.n, cg, key.h, key.w), (kg, cg, key.kh, key.kw), (key.n, kg) + output_size(key)


def dense_strides(shape):
    strides, step = [], 1
    for size in reversed(shape):
        strides.insert(0, step)
        step *= size
    return strides


#: The roles of each operation's tensors, output last.
ROLES = {FPROP: ("x", "w", "y"), DGRAD: ("dy", "w", "dx"), WGRAD: ("x", "dy", "dw")}


class Plan:
    """A built graph of one operation: its PlanKey, ``graph``, its tensors by role (ROLES) and its workspace
    in bytes."""

    def __init__(self, key, graph, tensors, workspace):
        self.key, self.graph, self.tensors, self.workspace = key, graph, tensors, workspace


def build_plan(frontend, key, handle):
    """Build the plan of ``key`` with the frontend module; PlanUnavailable when cuDNN has none."""
    data_type = {"float32": frontend.data_type.FLOAT, "float64": frontend.data_type.DOUBLE}.get(key.dtype)
    if data_type is None:
        raise PlanUnavailable(f"no cuDNN convolution for dtype {key.dtype}")
    x_shape, w_shape, y_shape = group_shapes(key)
    conv = {"padding": list(key.pad), "stride": list(key.stride), "dilation": list(key.dilation)}
    try:
        graph = frontend.pygraph(io_data_type=data_type, intermediate_data_type=data_type,
                                 compute_data_type=data_type, handle=handle)

        def tensor(name, shape):
            return graph.tensor(name=name, dim=list(shape), stride=dense_strides(shape), data_type=data_type)

        if key.op == FPROP:
            tensors = {"x": tensor("x", x_shape), "w": tensor("w", w_shape)}
            out, out_shape = graph.conv_fprop(image=tensors["x"], weight=tensors["w"], **conv), y_shape
            tensors["y"] = out
        elif key.op == DGRAD:
            tensors = {"dy": tensor("dy", y_shape), "w": tensor("w", w_shape)}
            out, out_shape = graph.conv_dgrad(loss=tensors["dy"], filter=tensors["w"], **conv), x_shape
            tensors["dx"] = out
        else:
            tensors = {"x": tensor("x", x_shape), "dy": tensor("dy", y_shape)}
            out, out_shape = graph.conv_wgrad(image=tensors["x"], loss=tensors["dy"], **conv), w_shape
            tensors["dw"] = out
        out.set_output(True).set_dim(list(out_shape)).set_stride(dense_strides(out_shape)).set_data_type(data_type)
        graph.validate()
        graph.build_operation_graph()
        graph.create_execution_plans([frontend.heur_mode.A, frontend.heur_mode.FALLBACK])
        if key.dtype == "float32" and not key.tf32:
            graph.deselect_numeric_notes([frontend.numerical_note.TENSOR_CORE,
                                          frontend.numerical_note.DOWN_CONVERT_INPUTS])
        graph.check_support()
        graph.build_plans()
        workspace = int(graph.get_workspace_size())
    except Exception as exc:  # noqa: BLE001  (the frontend raises RuntimeError, ValueError or its own types)
        raise PlanUnavailable(f"{type(exc).__name__}: {exc}") from exc
    return Plan(key, graph, tensors, workspace)


class PlanCache:
    """Plans by PlanKey, each built once (a geometry cuDNN has no plan for is remembered too). At most
    ``size`` are kept, the least recently used dropped first: a test set of many image sizes would otherwise
    keep a plan per size and layer for the whole run."""

    def __init__(self, frontend, handle_for, size=512):
        self.frontend, self.handle_for, self.size = frontend, handle_for, size
        self.plans = collections.OrderedDict()

    def get(self, key):
        """The plan of ``key``; PlanUnavailable if it does not build."""
        if key in self.plans:
            self.plans.move_to_end(key)
        else:
            try:
                handle = self.handle_for(key.device)
            except Exception as exc:  # noqa: BLE001  (cuDNN reports a missing or mismatched library so)
                self.plans[key] = PlanUnavailable(f"no cuDNN handle: {type(exc).__name__}: {exc}")
            else:
                try:
                    self.plans[key] = build_plan(self.frontend, key, handle)
                except PlanUnavailable as exc:
                    self.plans[key] = exc
            if len(self.plans) > self.size:
                self.plans.popitem(last=False)
        plan = self.plans[key]
        if isinstance(plan, PlanUnavailable):
            raise plan
        return plan


def choose_engine(engine, import_frontend, get_plan):
    """Caffe's engine rule for one pass of a convolution: (plan, None) to run cuDNN, or (None, reason) to run
    the CAFFE engine (reason None where ``engine`` is CAFFE itself).

    ``engine`` is the ConvolutionParameter.Engine name; ``import_frontend()`` returns the frontend module or
    raises ImportError; ``get_plan(frontend)`` returns a plan or raises PlanUnavailable."""
    if engine == "CAFFE":
        return None, None
    try:
        frontend = import_frontend()
    except ImportError as exc:
        return None, f"the cuDNN frontend (module cudnn) does not import: {exc}"
    try:
        return get_plan(frontend), None
    except PlanUnavailable as exc:
        return None, f"cuDNN has no plan for this convolution ({exc})"


_logged = set()


def log_fallback(layer_name, reason):
    """Log once per (layer, reason) that a convolution runs the CAFFE engine instead of cuDNN."""
    if (layer_name, reason) not in _logged:
        _logged.add((layer_name, reason))
        log.warning("layer '%s': running the CAFFE engine (im2col and cuBLAS): %s", layer_name, reason)


# -- the process's frontend, handles and plans ------------------------------------------------------------
_frontend = {}


def import_frontend():
    """The cuDNN frontend module, imported once (an ImportError is remembered and raised again)."""
    if "module" not in _frontend:
        try:
            import cudnn  # noqa: PLC0415  (optional: the [cuda12] / [cuda13] extras install it)
            _frontend["module"] = cudnn
        except ImportError as exc:
            _frontend["module"] = exc
        except (OSError, RuntimeError) as exc:  # the module is there but libcudnn does not load
            _frontend["module"] = ImportError(f"{type(exc).__name__}: {exc}")
    module = _frontend["module"]
    if isinstance(module, ImportError):
        raise module
    return module


_handles = {}


def handle_for(device):
    """The cuDNN handle of a device (created on first use, with that device current)."""
    if device not in _handles:
        import cupy  # noqa: PLC0415
        with cupy.cuda.Device(device):
            _handles[device] = import_frontend().create_handle()
    return _handles[device]


_caches = {}


def plan_for(frontend, key):
    """The process-wide cached plan of ``key`` built with ``frontend`` (PlanUnavailable if none builds)."""
    cache = _caches.get(id(frontend))
    if cache is None:
        cache = _caches[id(frontend)] = PlanCache(frontend, handle_for)
    return cache.get(key)


def plan_key(op, layer, bottom_shape, dtype):
    """The PlanKey of one pass of a Convolution layer on a bottom of ``bottom_shape``."""
    import cupy  # noqa: PLC0415
    n, c, h, w = bottom_shape
    return PlanKey(op, n, c, h, w, layer.num_output, *layer.kernel, tuple(layer.stride), tuple(layer.pad),
                   tuple(layer.dilation), layer.group, numpy.dtype(dtype).name, backend.tf32(),
                   cupy.cuda.Device().id)


def execute(plan, *arrays):
    """Run ``plan`` once per group on the whole layer's CuPy arrays, given in the order of ROLES[op] (the
    last, the output, is overwritten); each group's slices are made dense where they are not."""
    import cupy  # noqa: PLC0415
    key = plan.key
    frontend = import_frontend()
    handle = handle_for(key.device)
    frontend.set_stream(handle=handle, stream=cupy.cuda.get_current_stream().ptr)
    workspace = cupy.empty(plan.workspace, dtype=cupy.uint8)
    *in_roles, out_role = ROLES[key.op]
    *inputs, out = arrays
    for g in range(key.group):
        pack = {role: cupy.ascontiguousarray(_group_part(role, a, g, key.group))
                for role, a in zip(in_roles, inputs)}
        target = _group_part(out_role, out, g, key.group)
        result = target if target.flags.c_contiguous else cupy.empty(target.shape, target.dtype)
        pack[out_role] = result
        plan.graph.execute({plan.tensors[role]: a for role, a in pack.items()}, workspace, handle=handle)
        if result is not target:
            target[...] = result


def _group_part(role, array, g, group):
    """Group ``g``'s part of a whole-layer array: channels of images and gradients, output rows of weights."""
    if group == 1:
        return array
    if role in ("w", "dw"):
        size = array.shape[0] // group
        return array[g * size:(g + 1) * size]
    size = array.shape[1] // group
    return array[:, g * size:(g + 1) * size]
