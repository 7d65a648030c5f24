"""The layer registry: Caffe type names to layer classes (Caffe's LayerRegistry).

Each layer family lives in its own module and registers its classes with ``@register("TypeName")``.
The Fast R-CNN pipeline registers its data layer here too; this package never imports the pipeline.
"""
from ..errors import Error

REGISTRY = {}


def register(*type_names):
    """Class decorator: register a layer class under one or more Caffe type names."""
    def deco(cls):
        for name in type_names:
            if name in REGISTRY and REGISTRY[name] is not cls:
                raise RuntimeError(f"layer type {name!r} is registered twice")
            REGISTRY[name] = cls
        cls.type = type_names[0]
        return cls
    return deco


def create_layer(param, phase):
    """Instantiate the layer for a LayerParameter; an unknown type names the known ones."""
    cls = REGISTRY.get(param.type)
    if cls is None:
        known = ", ".join(sorted(REGISTRY))
        raise Error(f"layer '{param.name}': unknown layer type '{param.type}'; known types: {known}")
    return cls(param, phase)


# Importing the families fills the registry.
from . import (activation, conv, data, inner_product, loss, normalization, pooling,  # noqa: E402,F401
               python_layer, roi_pooling, structure)
