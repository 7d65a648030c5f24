#!/usr/bin/env python3
"""Download the original's precomputed selective-search boxes into ``<data root>/selective_search_data/``.

``selective_search_data.tgz`` (about 0.5 GB) holds ``voc_{2007,2012}_<split>.mat`` (fast mode, 1-based
y1 x1 y2 x2). The original host link is often dead: give a working copy with ``--url-selective-search URL`` or
``FASTRCNN_URL_SELECTIVE_SEARCH``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing

from fastrcnn.rcnn.downloads import Archive, run  # noqa: E402

ARCHIVES = [
    Archive("selective-search", "selective_search_data.tgz",
            ("https://dl.dropboxusercontent.com/s/orrt7o6bp6ae0tc/selective_search_data.tgz",
             "http://www.cs.berkeley.edu/~rbg/fast-rcnn-data/selective_search_data.tgz",
             "http://people.eecs.berkeley.edu/~rbg/faster-rcnn-data/selective_search_data.tgz"),
            "7078c1db87a7851b31966b96774cd9b9"),
]

if __name__ == "__main__":
    sys.exit(run(__doc__.splitlines()[0], ARCHIVES))
