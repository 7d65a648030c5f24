"""The built-in toy detection dataset: shapes on cluttered backgrounds, written in the VOC layout.

Classes differ by shape only: every instance gets a random colour and texture (solid, stripes, gradient,
noise), a random size (about 32-160 px), aspect and rotation, on a background of gradients, low-frequency
noise, lines and blobs. Each image holds 1-5 objects; boxes may overlap but no box is covered by another by
more than 30% of its area (so IoU < 0.3 and every object stays recognisable). The smallest objects span four
cells of the toy model's stride-8 features at native scale (version 1 drew them from 16 px, under two cells,
where no detector of that stride finds them reliably). Generation is deterministic for
a seed (image ``k`` of a split has its own ``numpy`` Generator seeded with ``(seed, split, k)``).

Named sets (see `TOY_SETS`): ``toy`` (5 classes, seed 0) and ``toy2`` (4 other classes, seed 1, to test
retargeting a detector to new classes), each with the splits train, trainval (= train) and test.
"""
import json
import math
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

from ...errors import Error

DEFAULT_CLASSES = ("ellipse", "rectangle", "triangle", "star", "cross")
TOY2_CLASSES = ("ring", "hexagon", "arrow", "crescent")
TOY_SETS = {
    "toy": {"seed": 0, "classes": DEFAULT_CLASSES},
    "toy2": {"seed": 1, "classes": TOY2_CLASSES},
}
NUM_TRAIN = 500
NUM_TEST = 200
IMAGE_SIZE = (224, 320)      # each side drawn uniformly in this range (pixels)
OBJECT_SIZE = (32, 160)      # longer side of an object's box, log-uniform, at most 60% of the shorter image side
MAX_OBJECTS = 5
MAX_COVER = 0.3              # largest fraction of a box's area that another box may cover
GENERATOR_VERSION = 2        # bump when the drawing changes, so that stale folders are detected


def _regular(n, radius=1.0, phase=math.pi / 2):
    angles = phase + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), -radius * np.sin(angles)], 1)


def _star(rng):
    points = int(rng.integers(5, 7))
    outer, inner = _regular(points), _regular(points, rng.uniform(0.38, 0.5), math.pi / 2 + math.pi / points)
    return [np.stack([outer, inner], 1).reshape(-1, 2)], []


def _cross(rng):
    t = rng.uniform(0.2, 0.32)
    arm = [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t),
           (-t, -t)]
    return [np.array(arm, float)], []


def _triangle(rng):
    angles = math.pi / 2 + 2 * math.pi * np.arange(3) / 3 + rng.uniform(-0.2, 0.2, 3)
    return [np.stack([np.cos(angles), -np.sin(angles)], 1)], []


def _arrow(rng):
    head, shaft = rng.uniform(0.35, 0.55), rng.uniform(0.15, 0.25)
    tip = 1 - 2 * head
    outline = [(-1, -shaft), (tip, -shaft), (tip, -0.6), (1, 0), (tip, 0.6), (tip, shaft), (-1, shaft)]
    return [np.array(outline, float)], []


def _crescent(rng):
    shift = rng.uniform(0.45, 0.65)
    return [_regular(48)], [_regular(48, rng.uniform(0.85, 1.0)) + (shift, 0)]


SHAPES = {
    # name: (draw(rng) -> (filled polygons, holes) in about [-1, 1]^2, aspect range, rotation range in degrees)
    "ellipse": (lambda rng: ([_regular(48)], []), (0.55, 1.0), 180),
    "rectangle": (lambda rng: ([np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], float)], []), (0.45, 1.0), 15),
    "triangle": (_triangle, (0.7, 1.0), 180),
    "star": (_star, (0.8, 1.0), 180),
    "cross": (_cross, (0.75, 1.0), 20),
    "ring": (lambda rng: ([_regular(48)], [_regular(48, rng.uniform(0.45, 0.65))]), (0.6, 1.0), 180),
    "hexagon": (lambda rng: ([_regular(6, phase=0.0)], []), (0.75, 1.0), 180),
    "arrow": (_arrow, (0.8, 1.0), 180),
    "crescent": (_crescent, (0.8, 1.0), 180),
}


def _shape_mask(rng, shape, size):
    """A uint8 anti-aliased mask (255 inside) of a random instance of ``shape`` whose box's longer side is
    about ``size`` px, cropped to the pixels at or above half coverage."""
    draw, aspect_range, max_turn = SHAPES[shape]
    filled, holes = draw(rng)
    aspect = rng.uniform(*aspect_range)
    squash = np.array([1.0, aspect]) if rng.random() < 0.5 else np.array([aspect, 1.0])
    turn = math.radians(rng.uniform(-max_turn, max_turn))
    rotation = np.array([[math.cos(turn), -math.sin(turn)], [math.sin(turn), math.cos(turn)]])
    polys = [(p * squash) @ rotation.T for p in filled + holes]
    low = np.min([p.min(0) for p in polys[:len(filled)]], 0)
    high = np.max([p.max(0) for p in polys[:len(filled)]], 0)
    scale = (size - 1) / float(np.max(high - low))
    width, height = np.ceil((high - low) * scale).astype(int) + 3
    mask = np.zeros((height, width), np.uint8)
    fixed = [np.round(((p - low) * scale + 1) * 16).astype(np.int32) for p in polys]
    cv2.fillPoly(mask, fixed[:len(filled)], 255, cv2.LINE_AA, shift=4)
    if holes:
        cv2.fillPoly(mask, fixed[len(filled):], 0, cv2.LINE_AA, shift=4)
    ys, xs = np.nonzero(mask >= 128)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def _colour(rng):
    return rng.uniform(0, 255, 3)


def _texture(rng, height, width, base):
    """An instance's float32 (h, w, 3) fill: solid, stripes, a gradient or noise around colour ``base``."""
    second = np.clip(base + rng.uniform(-70, 70, 3), 0, 255)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    along = xs * math.cos(angle) + ys * math.sin(angle)
    kind = rng.integers(4)
    if kind == 0:
        weight = np.zeros_like(along)
    elif kind == 1:
        weight = (np.floor(along / rng.uniform(3, 9)) % 2).astype(np.float32)
    elif kind == 2:
        weight = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    else:
        weight = np.clip(rng.normal(0.5, 0.3, (height, width)), 0, 1).astype(np.float32)
    return (base + weight[..., None] * (second - base)).astype(np.float32)


def _background(rng, height, width):
    """Gradient, low-frequency noise, pixel noise, thin lines and faint blobs."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    along = (xs * math.cos(angle) + ys * math.sin(angle))
    along = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    first, second = _colour(rng), _colour(rng)
    image = first + along[..., None] * (second - first)
    coarse = rng.normal(0, rng.uniform(5, 25), (height // 24 + 2, width // 24 + 2, 3)).astype(np.float32)
    image += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image = image.astype(np.float32)
    for _ in range(rng.integers(2, 9)):
        ends = rng.uniform(0, 1, 4) * (width, height, width, height)
        cv2.line(image, tuple(int(v) for v in ends[:2]), tuple(int(v) for v in ends[2:]),
                 tuple(float(c) for c in _colour(rng)), int(rng.integers(1, 3)), cv2.LINE_AA)
    for _ in range(rng.integers(0, 4)):
        field = cv2.resize(rng.normal(0, 1, (4, 4)).astype(np.float32), (width, height),
                           interpolation=cv2.INTER_CUBIC)
        blob = (field > 1.2).astype(np.float32)[..., None] * 0.4
        image = image * (1 - blob) + blob * _colour(rng).astype(np.float32)
    return image


def _place(rng, boxes, box_w, box_h, width, height):
    """Top-left corner for a box_w x box_h box that no placed box covers (or is covered) beyond MAX_COVER."""
    for _ in range(50):
        x, y = int(rng.integers(0, width - box_w + 1)), int(rng.integers(0, height - box_h + 1))
        ok = True
        for bx1, by1, bx2, by2 in boxes:
            iw = min(bx2, x + box_w - 1) - max(bx1, x) + 1
            ih = min(by2, y + box_h - 1) - max(by1, y) + 1
            smaller = min(box_w * box_h, (bx2 - bx1 + 1) * (by2 - by1 + 1))
            if iw > 0 and ih > 0 and iw * ih > MAX_COVER * smaller:
                ok = False
                break
        if ok:
            return x, y
    return None


def render_toy_image(rng, classes, image_size=IMAGE_SIZE):
    """One BGR uint8 image and its objects [(class name, (x1, y1, x2, y2) 0-based inclusive)]."""
    width, height = (int(rng.integers(image_size[0], image_size[1] + 1)) for _ in range(2))
    image = _background(rng, height, width)
    objects = []
    longest = max(OBJECT_SIZE[0], min(OBJECT_SIZE[1], int(0.6 * min(width, height))))
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        name = classes[int(rng.integers(len(classes)))]
        size = math.exp(rng.uniform(math.log(OBJECT_SIZE[0]), math.log(longest)))
        mask = _shape_mask(rng, name, size)
        box_h, box_w = mask.shape
        corner = _place(rng, [box for _, box in objects], box_w, box_h, width, height)
        if corner is None:
            continue
        x, y = corner
        region = image[y:y + box_h, x:x + box_w]
        base = _colour(rng)
        for _ in range(20):  # keep the object's colour away from the background it lies on
            if np.abs(base - region.reshape(-1, 3).mean(0)).sum() >= 120:
                break
            base = _colour(rng)
        alpha = mask.astype(np.float32)[..., None] / 255.0
        region[:] = region * (1 - alpha) + alpha * _texture(rng, box_h, box_w, base)
        objects.append((name, (x, y, x + box_w - 1, y + box_h - 1)))
    image += rng.normal(0, rng.uniform(2, 8), image.shape).astype(np.float32)
    return np.clip(np.round(image), 0, 255).astype(np.uint8), objects


def _annotation_xml(image_id, filename, width, height, objects):
    """A VOC annotation (1-based inclusive coordinates, difficult 0)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "toy"
    ET.SubElement(root, "filename").text = filename
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for name, box in objects:
        node = ET.SubElement(root, "object")
        for tag, value in (("name", name), ("pose", "Unspecified"), ("truncated", "0"), ("difficult", "0")):
            ET.SubElement(node, tag).text = value
        bndbox = ET.SubElement(node, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            ET.SubElement(bndbox, tag).text = str(int(value) + 1)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def generate_toy_dataset(folder, seed=0, classes=DEFAULT_CLASSES, num_train=NUM_TRAIN, num_test=NUM_TEST,
                         image_size=IMAGE_SIZE):
    """Write a toy dataset in the VOC layout into ``folder`` (created; its files are overwritten).

    Writes JPEGImages/<id>.jpg, Annotations/<id>.xml, ImageSets/Main/{train,trainval,test}.txt, classes.txt and
    toy.json (the settings). Returns ``folder`` as a Path.
    """
    classes = tuple(classes)
    unknown = [c for c in classes if c not in SHAPES]
    if unknown or not classes:
        raise Error(f"toy dataset: unknown shape classes {unknown or list(classes)}; known: {sorted(SHAPES)}")
    if not (0 < image_size[0] <= image_size[1]) or image_size[0] < 2 * OBJECT_SIZE[0]:
        raise Error(f"toy dataset: image_size {tuple(image_size)} must be a (min, max) side range with "
                    f"min >= {2 * OBJECT_SIZE[0]}")
    folder = Path(folder)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    splits = {}
    for code, (split, count) in enumerate((("train", num_train), ("test", num_test))):
        ids = [f"{split}_{k:05d}" for k in range(count)]
        for k, image_id in enumerate(ids):
            rng = np.random.default_rng([seed, code, k])
            image, objects = render_toy_image(rng, classes, image_size)
            filename = image_id + ".jpg"
            cv2.imwrite(str(folder / "JPEGImages" / filename), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
            xml = _annotation_xml(image_id, filename, image.shape[1], image.shape[0], objects)
            (folder / "Annotations" / (image_id + ".xml")).write_text(xml, encoding="utf-8")
        splits[split] = ids
    splits["trainval"] = splits["train"]
    for split, ids in splits.items():
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    (folder / "classes.txt").write_text("".join(c + "\n" for c in classes))
    settings = _settings(seed, classes, num_train, num_test, image_size)
    (folder / "toy.json").write_text(json.dumps(settings, indent=1) + "\n")
    return folder


def _settings(seed, classes, num_train, num_test, image_size):
    return {"version": GENERATOR_VERSION, "seed": seed, "classes": list(classes), "num_train": num_train,
            "num_test": num_test, "image_size": list(image_size)}


def ensure_toy_dataset(data_root, name="toy"):
    """``<data_root>/<name>/``, generating the named toy set there on first use.

    The set is written to a temporary folder beside it and renamed when complete, so an interrupted
    generation never leaves a partial dataset. A folder written by other settings raises `Error`.
    """
    if name not in TOY_SETS:
        raise Error(f"unknown toy dataset '{name}'; known: {sorted(TOY_SETS)}")
    spec = TOY_SETS[name]
    expected = _settings(spec["seed"], spec["classes"], NUM_TRAIN, NUM_TEST, IMAGE_SIZE)
    data_root = Path(data_root)
    folder = data_root / name
    if not folder.exists():
        data_root.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=data_root))
        try:
            generate_toy_dataset(temp, spec["seed"], spec["classes"])
            os.rename(temp, folder)
        except OSError:
            if not folder.exists():  # lost a race to a concurrent generation, else a real failure
                raise
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    try:
        found = json.loads((folder / "toy.json").read_text())
    except (OSError, ValueError):
        found = None
    if found != expected:
        raise Error(f"{folder}: not the toy dataset '{name}' of this version of fastrcnn (toy.json is "
                    f"{found}, expected {expected}); remove the folder to regenerate it")
    return folder
