"""The Fast R-CNN pipeline, built on the engine's public API (datasets, proposals, roidb, sampler, training,
detection, evaluation, compression). Importing it registers the RoI data layer into the layer registry."""
from . import roi_data_layer  # noqa: F401
