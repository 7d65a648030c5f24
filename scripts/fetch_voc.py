#!/usr/bin/env python3
"""Download PASCAL VOC 2007 (trainval, test, devkit) and VOC 2012 trainval into the data root and unpack them.

All four archives unpack into ``<data root>/VOCdevkit/``; the links ``VOCdevkit2007`` and ``VOCdevkit2012`` to it
give the layout the original's README asks for. Each URL can be replaced (``--url-KEY`` or ``FASTRCNN_URL_KEY``)
when a host is down; see ``--help``.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without installing

from fastrcnn.rcnn.downloads import Archive, run  # noqa: E402

PASCAL = "http://host.robots.ox.ac.uk/pascal/VOC"
MIRROR = "https://pjreddie.com/media/files"

ARCHIVES = [
    Archive("voc2007-trainval", "VOCtrainval_06-Nov-2007.tar",
            (f"{PASCAL}/voc2007/VOCtrainval_06-Nov-2007.tar", f"{MIRROR}/VOCtrainval_06-Nov-2007.tar"),
            "c52e279531787c972589f7e41ab4ae64"),
    Archive("voc2007-test", "VOCtest_06-Nov-2007.tar",
            (f"{PASCAL}/voc2007/VOCtest_06-Nov-2007.tar", f"{MIRROR}/VOCtest_06-Nov-2007.tar"),
            "b6e924de25625d8de591ea690078ad9f"),
    Archive("voc2007-devkit", "VOCdevkit_08-Jun-2007.tar",
            (f"{PASCAL}/voc2007/VOCdevkit_08-Jun-2007.tar",),
            None, note="no published md5 for VOCdevkit_08-Jun-2007.tar: its content is not checked"),
    Archive("voc2012-trainval", "VOCtrainval_11-May-2012.tar",
            (f"{PASCAL}/voc2012/VOCtrainval_11-May-2012.tar", f"{MIRROR}/VOCtrainval_11-May-2012.tar"),
            "6cd6e144f989b92b3379bac3b3de84fd"),
]


def link_devkits(root):
    """Point VOCdevkit2007 / VOCdevkit2012 at VOCdevkit for each year present, leaving existing paths alone."""
    for year in ("2007", "2012"):
        link = root / f"VOCdevkit{year}"
        if (root / "VOCdevkit" / f"VOC{year}").is_dir() and not link.exists() and not link.is_symlink():
            try:
                link.symlink_to("VOCdevkit", target_is_directory=True)
            except OSError as exc:
                print(f"could not link {link} -> VOCdevkit ({exc}); link or rename it yourself", file=sys.stderr)
            else:
                print(f"linked {link} -> VOCdevkit")


if __name__ == "__main__":
    sys.exit(run(__doc__.splitlines()[0], ARCHIVES, after=link_devkits))
