"""COCO-format reader: ``coco:<images_dir>:<annotations.json>``.

COCO boxes are ``[x, y, w, h]`` in continuous pixel units; as py-faster-rcnn's ``coco.py`` they become 0-based
inclusive ``x1, y1, x2, y2 = x, y, x + max(w - 1, 0), y + max(h - 1, 0)`` clipped to the image (COCO's float
boxes may overrun the border by a fraction of a pixel); a box wholly outside the image is reported by
validation. ``iscrowd`` objects are flagged difficult (ignored by evaluation, like VOC's difficult ones).
Classes are the categories sorted by id; ``category_ids[k - 1]`` is the COCO id of class ``k``.
"""
import json
import os

from ...errors import Error
from .base import Annotation, Dataset, GtObject


class COCODataset(Dataset):
    """The images of a COCO annotation file (sorted by image id) with their instance boxes."""

    def __init__(self, images_dir, annotation_file, name=None):
        self.annotation_file = os.fspath(annotation_file)
        try:
            with open(self.annotation_file, encoding="utf-8") as f:
                data = json.load(f)
            categories = sorted(data["categories"], key=lambda c: c["id"])
            images = sorted(data["images"], key=lambda im: im["id"])
            self.category_ids = tuple(int(c["id"]) for c in categories)
            classes = [str(c["name"]).strip() for c in categories]
            self._images = [(im["id"], str(im["file_name"]), int(im["width"]), int(im["height"]))
                            for im in images]
            annotations = data.get("annotations", [])
            by_image = {im[0]: [] for im in self._images}
            for ann in annotations:
                by_image.setdefault(ann["image_id"], []).append(ann)
        except OSError as exc:
            raise Error(f"{self.annotation_file}: cannot read ({exc.strerror or exc})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise Error(f"{self.annotation_file}: not valid JSON ({exc})") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise Error(f"{self.annotation_file}: not a COCO instances file (missing or bad field {exc})") from None
        unknown = sorted(set(by_image) - {im[0] for im in self._images}, key=str)
        if unknown:
            raise Error(f"{self.annotation_file}: annotations refer to image ids not in 'images': {unknown[:10]}")
        self._annotations = by_image
        self._category_names = dict(zip(self.category_ids, classes))
        super().__init__(name or f"coco:{images_dir}:{annotation_file}", classes,
                         [str(im[0]) for im in self._images], root=os.fspath(images_dir),
                         split=os.path.splitext(os.path.basename(self.annotation_file))[0])

    def image_path(self, i):
        return os.path.join(self.root, self._images[i][1])

    def _read_annotation(self, i):
        image_id, file_name, width, height = self._images[i]
        source = f"{self.annotation_file}: image {image_id} ({file_name})"
        objects = []
        for k, ann in enumerate(self._annotations[image_id]):
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
                name = self._category_names.get(ann["category_id"], f"category_id={ann['category_id']}")
                crowd = bool(ann.get("iscrowd", 0))
            except (KeyError, TypeError, ValueError) as exc:
                raise Error(f"{source}: annotation {k} (id {ann.get('id')}): bad or missing field {exc}") from None
            box = (max(x, 0.0), max(y, 0.0), min(x + max(w - 1.0, 0.0), width - 1.0),
                   min(y + max(h - 1.0, 0.0), height - 1.0))
            objects.append(GtObject(name, box, crowd))
        return Annotation(source, width, height, objects)
