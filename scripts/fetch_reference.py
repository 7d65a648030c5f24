#!/usr/bin/env python3
"""Download the original Fast R-CNN files the tests compare against into ``data/reference/``.

From one commit of github.com/rbgirshick/fast-rcnn: the 29 PASCAL VOC model definitions of its ``models/`` folder
(into ``original-models/``; its COCO variants are not needed) and the two demo images with their selective-search
proposals, ``data/demo/*.jpg`` and ``*_boxes.mat`` (into ``demo-images/``), about 0.4 MB in all. Each file is
checked against its SHA-256 in ``fetch_reference.sha256`` beside this script and renamed into place only then; a
file already present with the right SHA-256 is not downloaded again, so an interrupted run picks up where it
stopped. The tests look for this folder in ``$FASTRCNN_REFERENCE``, then ``data/reference/``, then
``../shared/reference/``.
"""
import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # runs from a checkout without installing

from fastrcnn.errors import Error  # noqa: E402
from fastrcnn.rcnn.downloads import fetch  # noqa: E402

COMMIT = "b612190f279da3c11dd8b1396dd5e72779f8e463"  # the last commit of the original's master branch
BASE_URL = f"https://raw.githubusercontent.com/rbgirshick/fast-rcnn/{COMMIT}"
URL_ENV = "FASTRCNN_URL_REFERENCE"
MANIFEST = Path(__file__).resolve().with_name("fetch_reference.sha256")
DEFAULT_OUTPUT = REPO / "data" / "reference"
#: Where each folder of the local layout lives in the original repository.
SOURCES = {"original-models": "models", "demo-images": "data/demo"}


def read_manifest():
    """{relative path: sha256} from :data:`MANIFEST`, a ``sha256sum``-format list ('#' lines are comments)."""
    files = {}
    for line in MANIFEST.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            digest, rel = line.split(maxsplit=1)
            files[rel.lstrip("*")] = digest
    return files


def source_path(rel):
    """The path in the original repository of ``rel`` (a path of the local layout)."""
    folder, rest = rel.split("/", 1)
    return f"{SOURCES[folder]}/{rest}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", metavar="DIR", default=str(DEFAULT_OUTPUT),
                        help=f"where to put the files (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--base-url", metavar="URL", default=os.environ.get(URL_ENV) or BASE_URL,
                        help=f"a copy of the original repository at commit {COMMIT[:7]} (also ${URL_ENV}; "
                             f"default: {BASE_URL})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    output, base = Path(args.output), args.base_url.rstrip("/")
    manifest = read_manifest()
    try:
        for rel, sha256 in manifest.items():
            fetch(f"{base}/{source_path(rel)}", output / rel, sha256=sha256, progress=not args.no_progress)
    except Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("rerun to fetch the rest: the files already checked are kept", file=sys.stderr)
        return 1
    where = "" if output.resolve() == DEFAULT_OUTPUT else f" (the tests find them with FASTRCNN_REFERENCE={output})"
    print(f"{len(manifest)} files in {output}{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
