"""The Fast R-CNN configuration: the original's ``cfg`` keys and defaults, typed, with a fixed precedence.

The original keeps one global EasyDict (``lib/fast_rcnn/config.py``) that every module reads. Here a tool builds
its own :class:`Config` and passes it down, in this order of precedence (later wins):

1. :func:`default_config` -- the original's defaults (plus a few keys of this project, marked below);
2. :func:`apply_roi_data_param` -- the fields set in the train prototxt's ``roi_data_param``;
3. :func:`merge_yaml_file` -- a ``--cfg`` YAML file, as the original's ``experiments/cfgs/*.yml``;
4. :func:`merge_pairs` -- ``--set KEY VALUE ...`` pairs.

Every value is type-checked when it is set (the original raised KeyError / ValueError / AssertionError); an
unknown key or a wrong type is an :class:`~fastrcnn.errors.Error` naming the key, the value and its source.
"""
import ast
import difflib
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from ..errors import Error

DATA_ROOT_ENV = "FASTRCNN_DATA_ROOT"
PROTOCOLS = ("original", "py-faster-rcnn")


# ---------------------------------------------------------------------------------------------- key kinds

@dataclass(frozen=True)
class _Key:
    """One leaf key: its default, what it accepts (in words) and the converter that checks a value."""
    default: Any
    expected: str
    convert: Callable[[Any], Any]  # returns the stored value, raises ValueError when the value does not fit


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _int(default, minimum):
    def convert(value):
        if not _is_int(value) or value < minimum:
            raise ValueError
        return int(value)
    return _Key(default, f"an int >= {minimum}", convert)


def _float(default, low, high=None):
    def convert(value):
        if not _is_real(value) or value < low or (high is not None and value > high):
            raise ValueError
        return float(value)
    bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
    return _Key(default, f"a number {bounds}", convert)


def _bool(default):
    def convert(value):
        if not isinstance(value, bool):
            raise ValueError
        return value
    return _Key(default, "True or False", convert)


def _str(default, choices=None):
    def convert(value):
        if not isinstance(value, str) or (choices is not None and value not in choices):
            raise ValueError
        return value
    expected = "one of " + ", ".join(repr(c) for c in choices) if choices else "a string"
    return _Key(default, expected, convert)


def _scales(default):
    """Shortest-side sizes: a non-empty list/tuple of positive numbers; a single number becomes a 1-tuple."""
    def convert(value):
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        if not values or not all(_is_real(v) and v > 0 for v in values):
            raise ValueError
        return tuple(int(v) if _is_int(v) else float(v) for v in values)
    return _Key(default, "a positive number or a non-empty list/tuple of them", convert)


def _pixel_means(default):
    """BGR means, stored with the original's (1, 1, 3) nesting so np.asarray broadcasts over an HxWx3 image."""
    def convert(value):
        flat = value
        while isinstance(flat, (list, tuple)) and len(flat) == 1:
            flat = flat[0]
        if not isinstance(flat, (list, tuple)) or len(flat) != 3 or not all(_is_real(v) for v in flat):
            raise ValueError
        return (((float(flat[0]), float(flat[1]), float(flat[2])),),)
    return _Key(default, "3 BGR numbers, as [[[b, g, r]]] or [b, g, r]", convert)


# The original's keys and defaults (reference section 1.2); keys marked "project" are this project's additions.
_SPEC = {
    "TRAIN": {
        "SCALES": _scales((600,)),
        "MAX_SIZE": _int(1000, 1),
        "IMS_PER_BATCH": _int(2, 1),
        "BATCH_SIZE": _int(128, 1),
        "FG_FRACTION": _float(0.25, 0.0, 1.0),
        "FG_THRESH": _float(0.5, 0.0, 1.0),
        "BG_THRESH_HI": _float(0.5, 0.0, 1.0),
        "BG_THRESH_LO": _float(0.1, 0.0, 1.0),
        "USE_FLIPPED": _bool(True),
        "BBOX_REG": _bool(True),
        "BBOX_THRESH": _float(0.5, 0.0, 1.0),
        "SNAPSHOT_ITERS": _int(10000, 0),
        "SNAPSHOT_INFIX": _str(""),
        # The original's experimental multiprocessing fetcher defaulted to False; here minibatches are
        # prepared in the background by default.
        "USE_PREFETCH": _bool(True),
    },
    "TEST": {
        "SCALES": _scales((600,)),
        "MAX_SIZE": _int(1000, 1),
        "NMS": _float(0.3, 0.0, 1.0),
        "SVM": _bool(False),
        "BBOX_REG": _bool(True),
        # project: which test loop runs -- the original's adaptive thresholds, or py-faster-rcnn's.
        "PROTOCOL": _str("original", PROTOCOLS),
        "MAX_PER_IMAGE": _int(100, 0),
        # project: py-faster-rcnn protocol's score threshold.
        "DET_THRESH": _float(0.05, 0.0),
        # project: RoIs per forward of the fc head (the conv layers run once); 0 forwards all at once.
        "ROIS_PER_FORWARD": _int(0, 0),
        # project: the AP metric -- 'voc07' (11-point), 'area' (VOC2010+), or 'auto' by the dataset's year.
        "METRIC": _str("auto", ("auto", "voc07", "area")),
    },
    "DEDUP_BOXES": _float(1.0 / 16.0, 0.0),
    "PIXEL_MEANS": _pixel_means((((102.9801, 115.9465, 122.7717),),)),
    "RNG_SEED": _int(3, 0),
    "EPS": _float(1e-14, 0.0),
    "EXP_DIR": _str("default"),
    # project: where datasets, proposals and models live; '' resolves as resolve_data_root('').
    "DATA_ROOT": _str(""),
    # project: the proposal source and the most proposals kept per image (0 keeps them all).
    "PROPOSALS": _str("selective_search"),
    "PROPOSALS_TOP_K": _int(2000, 0),
}


# ---------------------------------------------------------------------------------------------- Config

class Config:
    """A tree of typed keys with attribute access (``cfg.TRAIN.SCALES``); sections are Config nodes too.

    Assigning an attribute checks the value like every other way of setting it. Values are immutable
    (numbers, strings, tuples), so :meth:`copy` (also ``copy.copy`` / ``copy.deepcopy``) gives an independent
    tree.
    """
    __slots__ = ("_spec", "_prefix", "_values")

    def __init__(self, _spec=None, _prefix=""):
        spec = _SPEC if _spec is None else _spec
        object.__setattr__(self, "_spec", spec)
        object.__setattr__(self, "_prefix", _prefix)
        object.__setattr__(self, "_values", {
            key: Config(entry, f"{_prefix}{key}.") if isinstance(entry, dict) else entry.default
            for key, entry in spec.items()})

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        values = object.__getattribute__(self, "_values")
        if name not in values:
            raise AttributeError(f"config has no key {self._prefix}{name}")
        return values[name]

    def __setattr__(self, name, value):
        self._set(name, value, "assignment")

    def __eq__(self, other):
        return isinstance(other, Config) and self._prefix == other._prefix and self.to_dict() == other.to_dict()

    __hash__ = None

    def __repr__(self):
        return f"Config({self.to_dict()!r})"

    def __reduce__(self):
        return _rebuild, (self._prefix, self.to_dict())

    def copy(self):
        """An independent copy of this tree."""
        return _rebuild(self._prefix, self.to_dict())

    __copy__ = copy

    def __deepcopy__(self, memo):
        return self.copy()

    def to_dict(self):
        """Plain nested dicts with lists for tuples: JSON-able, and accepted back by :meth:`from_dict`."""
        return {key: value.to_dict() if isinstance(value, Config) else _to_plain(value)
                for key, value in self._values.items()}

    @classmethod
    def from_dict(cls, data, source="dict"):
        """Defaults overridden by ``data``: keys it lacks keep their defaults (older metadata); unknown keys
        and wrong types are Errors naming ``source``."""
        cfg = cls()
        cfg._merge(data, source)
        return cfg

    def _merge(self, data, source):
        if isinstance(data, Config):
            data = data.to_dict()
        if not isinstance(data, Mapping):
            raise Error(f"{source}: config section {self._prefix.rstrip('.') or '(top level)'} must be a "
                        f"mapping of keys to values, got {data!r}")
        for key, value in data.items():
            self._set(key, value, source)

    def _set(self, key, value, source):
        entry = self._spec.get(key) if isinstance(key, str) else None
        if entry is None:
            close = difflib.get_close_matches(str(key), list(self._spec), n=1)
            hint = f"; did you mean {self._prefix}{close[0]}?" if close else ""
            raise Error(f"{source}: unknown config key {self._prefix}{key} (value {value!r}){hint}")
        if isinstance(entry, dict):
            self._values[key]._merge(value, source)
            return
        try:
            self._values[key] = entry.convert(value)
        except (ValueError, TypeError):
            raise Error(f"{source}: config key {self._prefix}{key} must be {entry.expected}, "
                        f"got {value!r}") from None

    def _set_dotted(self, dotted, value, source):
        node = self
        *sections, key = dotted.split(".")
        for name in sections:
            child = node._values.get(name)
            if not isinstance(child, Config):
                raise Error(f"{source}: unknown config section {node._prefix}{name} in key {dotted!r}")
            node = child
        node._set(key, value, source)


def _to_plain(value):
    return [_to_plain(v) for v in value] if isinstance(value, tuple) else value


def _rebuild(prefix, values):
    """The node at ``prefix`` ('' for the root) of a fresh tree holding ``values``."""
    node = Config()
    for name in prefix.split(".")[:-1]:
        node = node._values[name]
    node._merge(values, "copy")
    return node


def default_config():
    """A fresh Config holding the defaults."""
    return Config()


# ---------------------------------------------------------------------------------------------- precedence

_ROI_DATA_FIELDS = {name: "TRAIN." + name.upper() for name in (
    "scales", "max_size", "ims_per_batch", "batch_size", "fg_fraction", "fg_thresh", "bg_thresh_hi",
    "bg_thresh_lo", "bbox_thresh", "use_flipped", "bbox_reg", "snapshot_iters")}
_ROI_DATA_FIELDS.update(rng_seed="RNG_SEED", test_scales="TEST.SCALES", test_max_size="TEST.MAX_SIZE")


def apply_roi_data_param(cfg, param, source="roi_data_param"):
    """Override ``cfg`` in place with the fields SET in a RoIDataParameter message (duck-typed) and return it.

    A singular field counts when ``param.HasField(name)``; ``scales`` when it is non-empty. ``num_classes`` and
    ``imdb`` are no config keys: the data layer reads them itself. Float fields arrive as float32 and are
    taken at their shortest decimal (0.1f gives 0.1, as written in the prototxt).
    """
    for field, dotted in _ROI_DATA_FIELDS.items():
        if field in ("scales", "test_scales"):
            value = tuple(getattr(param, field, ()))
            if not value:
                continue
        else:
            try:
                if not param.HasField(field):
                    continue
            except ValueError:  # a message type without this field: nothing set
                continue
            value = getattr(param, field)
            if isinstance(value, float) and float(np.float32(value)) == value:
                value = float(str(np.float32(value)))
        cfg._set_dotted(dotted, value, f"{source}.{field}")
    return cfg


class _CfgLoader(yaml.SafeLoader):
    """SafeLoader that also reads ``!!python/tuple`` sequences, as the original's cfg files use for SCALES."""


_CfgLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                           lambda loader, node: tuple(loader.construct_sequence(node)))


def merge_yaml_file(cfg, path):
    """Merge a YAML file (the original's experiments/cfgs format) recursively into ``cfg``; return ``cfg``.

    An empty file changes nothing.
    """
    try:
        with open(path, encoding="utf-8") as stream:
            data = yaml.load(stream, Loader=_CfgLoader)  # noqa: S506  (a SafeLoader subclass)
    except OSError as exc:
        raise Error(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise Error(f"config file {path} is not valid YAML: {exc}") from None
    if data is not None:
        cfg._merge(data, str(path))
    return cfg


def merge_pairs(cfg, pairs, source="--set"):
    """Apply ``[KEY, VALUE, KEY, VALUE, ...]`` with dotted keys (``TRAIN.SCALES``) to ``cfg``; return ``cfg``.

    Values are parsed with ``ast.literal_eval``, falling back to the raw string, as the original's
    ``cfg_from_list``.
    """
    pairs = list(pairs)
    if len(pairs) % 2:
        raise Error(f"{source} needs KEY VALUE pairs, got an odd number of items: {' '.join(pairs)}")
    for key, text in zip(pairs[0::2], pairs[1::2]):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = text
        cfg._set_dotted(key, value, f"{source} {key} {text}")
    return cfg


def format_config(cfg):
    """The whole tree, one ``KEY: value`` per line (values as Python literals, usable with --set)."""
    lines = []

    def walk(node, indent):
        for key, value in node._values.items():
            if isinstance(value, Config):
                lines.append(f"{indent}{key}:")
                walk(value, indent + "  ")
            else:
                lines.append(f"{indent}{key}: {value!r}")
    walk(cfg, "")
    return "\n".join(lines)


def resolve_data_root(path=""):
    """The data folder: ``path`` if given, else $FASTRCNN_DATA_ROOT if set, else ``./data``."""
    return Path(path or os.environ.get(DATA_ROOT_ENV) or "data")
