"""PASCAL VOC layout reader (the original's ``pascal_voc``), for VOC itself and for any folder laid out alike.

A folder holds ``JPEGImages/<id>.jpg``, ``Annotations/<id>.xml`` and ``ImageSets/Main/<split>.txt``, and
optionally ``classes.txt`` (one class per line, no background; the 20 VOC classes when absent). As in the
original, class names are lower-cased and stripped, "difficult" objects are kept (they are flagged), and the
1-based inclusive XML coordinates become 0-based by subtracting 1 (in float32, so ``xmin = 1`` gives 0 and a
wrong ``xmin = 0`` gives -1, reported by validation, where the original's uint16 wrapped to 65535).

The XML is parsed with ``xml.etree.ElementTree``: it never fetches external entities or DTDs, and the expat
it uses (>= 2.4.1, bundled with Python 3.11) refuses entity-expansion ("billion laughs") amplification.
"""
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from ...errors import Error
from .base import Annotation, Dataset, GtObject

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")
VOC_YEARS = (2007, 2012)
VOC_SPLITS = ("train", "val", "trainval", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def read_classes_file(path):
    """Class names from a ``classes.txt`` (one a line, blank lines ignored), lower-cased and stripped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise Error(f"{path}: cannot read the class list ({exc})") from None
    classes = tuple(line.strip().lower() for line in text.splitlines() if line.strip())
    if not classes:
        raise Error(f"{path}: the class list is empty")
    return classes


class VOCDataset(Dataset):
    """A VOC-layout folder and one of its splits."""

    def __init__(self, folder, split, name=None, classes=None, year=None):
        folder = Path(folder)
        index_file = folder / "ImageSets" / "Main" / f"{split}.txt"
        for needed in (folder / "JPEGImages", folder / "Annotations"):
            if not needed.is_dir():
                raise Error(f"{needed}: no such folder; a VOC-layout dataset has JPEGImages/, Annotations/ and "
                            f"ImageSets/Main/<split>.txt")
        try:
            lines = index_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise Error(f"{index_file}: cannot read the image list of split '{split}' ({exc})") from None
        ids = [line.split()[0] for line in lines if line.strip()]
        if classes is None:
            classes_file = folder / "classes.txt"
            classes = read_classes_file(classes_file) if classes_file.exists() else VOC_CLASSES
        super().__init__(name or f"voc:{folder}:{split}", classes, ids, root=str(folder), split=split,
                         year=year)
        self._paths = {}

    def image_path(self, i):
        """``JPEGImages/<id>.jpg``, or the id with another image extension where only that exists."""
        if i not in self._paths:
            stem = os.path.join(self.root, "JPEGImages", self.image_ids[i])
            found = [stem + ext for ext in IMAGE_EXTENSIONS if os.path.exists(stem + ext)]
            self._paths[i] = found[0] if found else stem + IMAGE_EXTENSIONS[0]
        return self._paths[i]

    def annotation_path(self, i):
        return os.path.join(self.root, "Annotations", self.image_ids[i] + ".xml")

    def _read_annotation(self, i):
        path = self.annotation_path(i)
        try:
            tree = ET.parse(path)
        except OSError as exc:
            raise Error(f"{path}: cannot read the annotation ({exc.strerror or exc})") from None
        except ET.ParseError as exc:
            raise Error(f"{path}: not valid XML ({exc})") from None
        root = tree.getroot()
        width = _optional_int(root.findtext("size/width"))
        height = _optional_int(root.findtext("size/height"))
        objects = []
        for k, node in enumerate(root.findall("object")):
            name = (node.findtext("name") or "").strip().lower()
            where = f"{path}: object {k} ('{name}')"
            box = node.find("bndbox")
            if box is None:
                raise Error(f"{where}: no <bndbox>")
            coords = []
            for tag in ("xmin", "ymin", "xmax", "ymax"):
                text = box.findtext(tag)
                try:
                    coords.append(float(text) - 1.0)
                except (TypeError, ValueError):
                    raise Error(f"{where}: <{tag}> is {text!r}, not a number") from None
            difficult = (node.findtext("difficult") or "0").strip()
            if difficult not in ("0", "1"):
                raise Error(f"{where}: <difficult> is {difficult!r}, not 0 or 1")
            objects.append(GtObject(name, tuple(coords), difficult == "1"))
        return Annotation(path, width, height, objects)


def _optional_int(text):
    """A positive size from the XML, or None when absent or not a positive integer (then read the image)."""
    try:
        value = int(float(text))
    except (TypeError, ValueError, OverflowError):
        return None
    return value if value > 0 else None


def voc_named(year, split, data_root):
    """The original's ``voc_<year>_<split>``: ``<data_root>/VOCdevkit<year>/VOC<year>``, the 20 VOC classes."""
    folder = Path(data_root) / f"VOCdevkit{year}" / f"VOC{year}"
    if not folder.is_dir():
        raise Error(f"voc_{year}_{split}: {folder} does not exist; download and unpack VOC{year} "
                    f"(VOCdevkit{year}/VOC{year}) under the data root {data_root}")
    return VOCDataset(folder, split, name=f"voc_{year}_{split}", classes=VOC_CLASSES, year=year)
