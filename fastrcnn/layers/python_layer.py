"""``type: "Python"`` layers, resolved safely.

A prototxt names a module and a class; Caffe imports and runs that module. Here (module, layer) pairs
resolve first through a registry of native classes (the Fast R-CNN pipeline registers the original
``roi_data_layer.layer``/``RoIDataLayer`` there), and any other module is imported only when the user opted
in, with ``fastrcnn.allow_python_layers()`` or ``FASTRCNN_ALLOW_PYTHON_LAYERS=1``: a prototxt from elsewhere
must not run code by being loaded. ``param_str`` is parsed with a literal parser, never ``eval``.
"""
import ast
import importlib
import os

import yaml

from ..errors import Error
from . import REGISTRY
from .base import Layer

PYTHON_LAYERS = {}
_allowed = {"import": False}


def register_python_layer(module, layer, cls):
    """Serve ``python_param { module: <module> layer: <layer> }`` with the native class ``cls``."""
    PYTHON_LAYERS[(module, layer)] = cls


def allow_python_layers(allow=True):
    """Opt in (or out) to importing the modules that Python layers of a prototxt name."""
    _allowed["import"] = bool(allow)


def parse_param_str(text, where):
    """A Python layer's ``param_str`` as a dict: a Python/JSON literal (``"'num_classes': 21"`` as in the
    original prototxts, braces optional) or YAML, parsed without evaluating code."""
    text = (text or "").strip()
    if not text:
        return {}
    for candidate in (text, "{" + text + "}"):
        try:
            value = ast.literal_eval(candidate)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict):
            return value
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise Error(f"{where}: param_str {text!r} is neither a literal dict nor YAML ({exc})") from None
    if not isinstance(value, dict):
        raise Error(f"{where}: param_str {text!r} must describe a dict of parameters")
    return value


class UserPythonLayer(Layer):
    """Adapts a pycaffe-style class (setup/reshape/forward/backward on blob lists) to the engine."""

    def __init__(self, param, phase, cls):
        super().__init__(param, phase)
        self.impl = cls()
        self.impl.param_str = self.impl.param_str_ = param.python_param.param_str
        self.impl.phase = phase
        self.type = f"Python:{param.python_param.module}.{param.python_param.layer}"

    def setup(self, bottom, top):
        self.impl.setup(bottom, top)
        self.blobs = list(getattr(self.impl, "blobs", []) or [])

    def reshape(self, bottom, top):
        self.impl.reshape(bottom, top)

    def forward(self, bottom, top):
        self.impl.forward(bottom, top)

    def backward(self, top, propagate_down, bottom):
        self.impl.backward(top, propagate_down, bottom)


def create_python_layer(param, phase):
    module, name = param.python_param.module, param.python_param.layer
    native = PYTHON_LAYERS.get((module, name))
    if native is not None:
        return native(param, phase)
    where = f"layer '{param.name}'"
    if not module or not name:
        raise Error(f"{where}: a Python layer needs python_param {{ module: ... layer: ... }}")
    if not (_allowed["import"] or os.environ.get("FASTRCNN_ALLOW_PYTHON_LAYERS") == "1"):
        builtin = ", ".join(f"{m}.{c}" for m, c in sorted(PYTHON_LAYERS)) or "none"
        raise Error(f"{where}: Python layer '{module}.{name}' is not built in (built in: {builtin}); importing "
                    f"module '{module}' would run its code, so it needs an explicit opt-in: call "
                    "fastrcnn.allow_python_layers() or set FASTRCNN_ALLOW_PYTHON_LAYERS=1")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise Error(f"{where}: cannot import Python layer module '{module}': {exc}") from None
    except AttributeError:
        raise Error(f"{where}: module '{module}' has no layer class '{name}'") from None
    return UserPythonLayer(param, phase, cls)


create_python_layer.type = "Python"
create_python_layer.is_loss = False
REGISTRY["Python"] = create_python_layer
