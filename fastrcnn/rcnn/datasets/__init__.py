"""Datasets by name: the original's ``voc_<year>_<split>``, any VOC-layout folder, COCO JSON, the built-in toy
sets, and unions with ``+``."""
import re
from pathlib import Path

from ...errors import Error
from ..config import resolve_data_root
from .base import Dataset, UnionDataset
from .coco import COCODataset
from .toy import TOY_SETS, ensure_toy_dataset
from .voc import VOCDataset, voc_named

FORMS = ("voc_<2007|2012>_<train|val|trainval|test>", "voc:<folder>:<split>", "coco:<images_dir>:<annotations.json>",
         "toy_<train|test>", "toy2_<train|test>", "a+b (a union)")


class ToyDataset(VOCDataset):
    """A built-in toy set: VOC layout, evaluated with the VOC2007 11-point metric like the original's test set."""
    use_07_metric = True


def _one(name, data_root):
    match = re.fullmatch(r"voc_(\d{4})_(\w+)", name)
    if match:
        return voc_named(int(match.group(1)), match.group(2), data_root)
    if name.startswith("voc:"):
        folder, sep, split = name[4:].rpartition(":")
        if not sep or not folder or not split:
            raise Error(f"dataset '{name}': expected voc:<folder>:<split>")
        return VOCDataset(Path(folder).expanduser(), split, name=name)
    if name.startswith("coco:"):
        images, sep, annotations = name[5:].rpartition(":")
        if not sep or not images or not annotations:
            raise Error(f"dataset '{name}': expected coco:<images_dir>:<annotations.json>")
        return COCODataset(Path(images).expanduser(), Path(annotations).expanduser(), name=name)
    base, _, split = name.rpartition("_")
    if base in TOY_SETS and split in ("train", "trainval", "test"):
        return ToyDataset(ensure_toy_dataset(data_root, base), split, name=name)
    raise Error(f"unknown dataset '{name}'; accepted forms: {', '.join(FORMS)}")


def get_dataset(name, data_root=None):
    """The Dataset that ``name`` names; data is looked for under ``data_root`` (see resolve_data_root)."""
    data_root = resolve_data_root(data_root or "")
    parts = [part.strip() for part in str(name).split("+")]
    if not all(parts):
        raise Error(f"dataset name '{name}' has an empty part")
    datasets = [_one(part, data_root) for part in parts]
    return datasets[0] if len(datasets) == 1 else UnionDataset(datasets)


__all__ = ["Dataset", "UnionDataset", "VOCDataset", "COCODataset", "ToyDataset", "get_dataset"]
