#!/usr/bin/env python3
"""Download the original's ImageNet-pretrained caffemodels into ``<data root>/imagenet_models/``.

``imagenet_models.tgz`` (about 1 GB) holds CaffeNet.v2, VGG_CNN_M_1024.v2 and VGG16.v2.caffemodel, the
starting weights of every Fast R-CNN experiment. The original host link is often dead: give a working copy with
``--url-imagenet-models URL`` or ``FASTRCNN_URL_IMAGENET_MODELS``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing

from fastrcnn.rcnn.downloads import Archive, run  # noqa: E402

ARCHIVES = [
    Archive("imagenet-models", "imagenet_models.tgz",
            ("https://dl.dropboxusercontent.com/s/riazjuizq0w7dqm/imagenet_models.tgz",
             "http://www.cs.berkeley.edu/~rbg/fast-rcnn-data/imagenet_models.tgz"),
            "8b1d4b9da0593fc70ef403284f810adc"),
]

if __name__ == "__main__":
    sys.exit(run(__doc__.splitlines()[0], ARCHIVES))
