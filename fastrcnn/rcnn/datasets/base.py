"""The dataset base class (the original's ``imdb``), ground-truth roidbs and their validation.

Boxes are ``x1, y1, x2, y2``, 0-based and inclusive (a box's width is ``x2 - x1 + 1``), as in the original.
The original stores them as uint16, which wraps to 65535 when a 1-based ``xmin`` of 0 is made 0-based; here
they are **float32**: signed, exact for integer pixel coordinates (up to 2**24) and able to hold the
sub-pixel boxes of COCO. Every problem in a dataset is gathered and reported in one `Error`, before training.
"""
import os
import struct
from dataclasses import dataclass, field

import cv2
import numpy as np

from ...errors import Error

BACKGROUND = "__background__"


@dataclass
class GtObject:
    """One annotated object as read from a file: class name, 0-based inclusive box, difficult flag."""
    name: str
    box: tuple
    difficult: bool = False


@dataclass
class Annotation:
    """One image's annotation as read from a file; ``source`` names it in messages (file, entry)."""
    source: str
    width: int | None = None
    height: int | None = None
    objects: list = field(default_factory=list)


def read_image_size(path):
    """(width, height) of an image file, from the JPEG or PNG header without decoding the pixels.

    JPEGs with an EXIF block (which may rotate the image, as ``cv2.imread`` honours EXIF orientation) and
    other formats are decoded with ``cv2.imread`` instead. Raises `Error` if the file is missing or unreadable.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        raise Error(f"{path}: cannot read the image ({exc.strerror or exc})") from None
    size = _png_size(head) if head.startswith(b"\x89PNG\r\n\x1a\n") else _jpeg_size(head)
    if size is None:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise Error(f"{path}: not a readable image")
        size = (image.shape[1], image.shape[0])
    return size


def _png_size(head):
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return (width, height) if width > 0 and height > 0 else None


def _jpeg_size(head):
    """Scan the JPEG markers up to the frame header (SOFn); None where EXIF or the data is not understood."""
    if not head.startswith(b"\xff\xd8"):
        return None
    pos = 2
    while pos + 9 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = struct.unpack(">H", head[pos + 2:pos + 4])[0]
        if marker == 0xE1 and head[pos + 4:pos + 10] == b"Exif\x00\x00":
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[pos + 5:pos + 9])
            return (width, height) if width > 0 and height > 0 else None
        pos += 2 + length
    return None


def problems_error(name, problems, limit=200):
    """One `Error` listing a dataset's problems (the first ``limit`` of them, and how many more)."""
    lines = [f"  {p}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    error = Error(f"dataset '{name}' has {len(problems)} problem(s):\n" + "\n".join(lines))
    error.problems = list(problems)
    return error


class Dataset:
    """A list of images with ground-truth boxes (the original's imdb).

    Subclasses implement `image_path(i)` and `_read_annotation(i)` (returning an `Annotation`, or raising
    `Error` when the file cannot be read or parsed); the base class turns annotations into roidb entries and
    checks them.
    """

    def __init__(self, name, classes, image_ids, root=None, split=None, year=None):
        """``classes``: the object class names, without the background (which becomes class 0)."""
        classes = (BACKGROUND,) + tuple(classes)
        if len(set(classes)) != len(classes):
            raise Error(f"dataset '{name}': class names repeat: {list(classes[1:])}")
        if len(classes) < 2:
            raise Error(f"dataset '{name}': no object classes")
        self.name = name
        self.classes = classes
        self.image_ids = list(image_ids)
        self.root = root
        self.split = split
        self.year = year
        self._class_index = {c: k for k, c in enumerate(classes)}
        self._sizes = {}
        self._roidb = None

    def __repr__(self):
        return f"<{type(self).__name__} '{self.name}': {self.num_images} images, {self.num_classes - 1} classes>"

    @property
    def num_classes(self):
        """Number of classes including the background (K + 1)."""
        return len(self.classes)

    @property
    def num_images(self):
        return len(self.image_ids)

    def image_path(self, i):
        """Path of image ``i`` (str)."""
        raise NotImplementedError

    def _read_annotation(self, i):
        raise NotImplementedError

    def image_size(self, i):
        """(width, height) of image ``i`` read from its header, read once and cached."""
        if i not in self._sizes:
            self._sizes[i] = read_image_size(self.image_path(i))
        return self._sizes[i]

    def gt_roidb(self):
        """Per-image ground truth: a list of dicts ``boxes`` (n,4) float32 0-based inclusive, ``gt_classes``
        (n,) int32 in 1..K, ``difficult`` (n,) bool, ``width``, ``height``, ``image`` (path), ``flipped``
        (False). Cached. Raises one `Error` listing every problem in the annotations."""
        if self._roidb is None:
            roidb, problems = self._build(check_images=False)
            if problems:
                raise problems_error(self.name, problems)
            self._roidb = roidb
        return self._roidb

    def validate(self, decode=False):
        """Check the whole dataset before training and raise one `Error` listing every problem.

        Every image must exist and have a readable header (``decode=True`` decodes every image fully), agree
        with the size its annotation gives, every annotation must parse, every class be known and every box
        have x1 <= x2, y1 <= y2 and lie inside its image. Returns the gt roidb.
        """
        roidb, problems = self._build(check_images=True, decode=decode)
        if problems:
            raise problems_error(self.name, problems)
        self._roidb = roidb
        return roidb

    def _build(self, check_images, decode=False):
        """(roidb entries, problem lines) for every image."""
        roidb, problems = [], []
        for i in range(self.num_images):
            found = []
            entry = self._entry(i, check_images, decode, found)
            problems.extend(found)
            if entry is not None:
                roidb.append(entry)
        return roidb, problems

    def _entry(self, i, check_images, decode, problems):
        path = self.image_path(i)
        size = None
        if check_images:
            try:
                size = self.image_size(i)
                if decode and cv2.imread(path, cv2.IMREAD_COLOR) is None:
                    raise Error(f"{path}: not a readable image")
            except Error as exc:
                problems.append(str(exc))
        try:
            ann = self._read_annotation(i)
        except Error as exc:
            problems.append(str(exc))
            return None
        if ann.width and ann.height:
            if size is not None and size != (ann.width, ann.height):
                problems.append(f"{ann.source}: the annotation gives the image size {ann.width}x{ann.height}, "
                                f"but {path} is {size[0]}x{size[1]}")
            size = (ann.width, ann.height)
        elif size is None:
            try:
                size = self.image_size(i)
            except Error as exc:
                problems.append(str(exc))
                return None
        width, height = size
        count = len(ann.objects)
        boxes = np.zeros((count, 4), np.float32)
        classes = np.zeros(count, np.int32)
        difficult = np.zeros(count, bool)
        for k, obj in enumerate(ann.objects):
            where = f"{ann.source}: object {k} ('{obj.name}')"
            cls = self._class_index.get(obj.name, 0)
            if cls == 0:
                problems.append(f"{where}: unknown class; the classes are {list(self.classes[1:])}")
            problems.extend(f"{where}: {p}" for p in box_problems(obj.box, width, height))
            boxes[k] = obj.box
            classes[k] = cls
            difficult[k] = obj.difficult
        return {"boxes": boxes, "gt_classes": classes, "difficult": difficult, "width": int(width),
                "height": int(height), "image": path, "flipped": False}


def box_problems(box, width, height):
    """What is wrong with a 0-based inclusive box in a width x height image (empty list when nothing)."""
    x1, y1, x2, y2 = box
    text = f"box (x1, y1, x2, y2) = ({x1:g}, {y1:g}, {x2:g}, {y2:g}) 0-based"
    if not np.all(np.isfinite(box)):
        return [f"{text} is not finite"]
    found = []
    if x2 < x1:
        found.append(f"{text} has x2 < x1")
    if y2 < y1:
        found.append(f"{text} has y2 < y1")
    if x1 < 0 or y1 < 0 or x2 > width - 1 or y2 > height - 1:
        found.append(f"{text} lies outside the {width}x{height} image")
    return found


class UnionDataset(Dataset):
    """Several datasets with the same classes trained as one (``a+b``, as ``voc_2007_trainval+voc_2012_trainval``).

    Image ids are qualified as ``<part name>/<id>`` so that they stay distinct.
    """

    def __init__(self, parts):
        parts = list(parts)
        name = "+".join(p.name for p in parts)
        seen = set()
        for part in parts:
            if part.name in seen:
                raise Error(f"dataset '{name}': '{part.name}' appears twice")
            seen.add(part.name)
            if part.classes != parts[0].classes:
                raise Error(f"dataset '{name}': the classes of '{part.name}' {list(part.classes[1:])} differ "
                            f"from those of '{parts[0].name}' {list(parts[0].classes[1:])}")
        ids = [f"{p.name}/{image_id}" for p in parts for image_id in p.image_ids]
        years = {p.year for p in parts}
        super().__init__(name, parts[0].classes[1:], ids, year=years.pop() if len(years) == 1 else None)
        self.parts = parts
        self._where = [(p, i) for p in parts for i in range(p.num_images)]

    def image_path(self, i):
        part, j = self._where[i]
        return part.image_path(j)

    def image_size(self, i):
        part, j = self._where[i]
        return part.image_size(j)

    def _build(self, check_images, decode=False):
        roidb, problems = [], []
        for part in self.parts:
            part_roidb, part_problems = part._build(check_images, decode)
            roidb += part_roidb
            problems += part_problems
        return roidb, problems
