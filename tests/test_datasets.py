"""Image headers, the toy generator's geometry and the second toy set (the readers: test_dataset_readers.py)."""
import struct

import cv2
import numpy as np
import pytest

import fastrcnn
from fastrcnn.rcnn.datasets import get_dataset
from fastrcnn.rcnn.datasets import toy
from fastrcnn.rcnn.datasets.base import read_image_size
from fastrcnn.rcnn.datasets.toy import SHAPES, TOY2_CLASSES, render_toy_image


def exif_jpeg(image, orientation):
    """A JPEG of ``image`` with an EXIF block whose Orientation tag is ``orientation``."""
    data = cv2.imencode(".jpg", image)[1].tobytes()
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0\0\0\0"
    payload = b"Exif\0\0" + b"II*\0" + struct.pack("<I", 8) + ifd
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def test_header_sizes_agree_with_decoding(tmp_path):
    rng = np.random.default_rng(0)
    for k, (width, height) in enumerate([(33, 17), (320, 224), (1, 1), (641, 479)]):
        image = rng.integers(0, 255, (height, width, 3), np.uint8)
        for ext in (".jpg", ".png", ".bmp"):
            path = tmp_path / f"{k}{ext}"
            cv2.imwrite(str(path), image)
            assert read_image_size(path) == (width, height), path


def test_an_exif_rotated_jpeg_is_measured_as_opencv_reads_it(tmp_path):
    image = np.zeros((20, 50, 3), np.uint8)
    path = tmp_path / "rotated.jpg"
    path.write_bytes(exif_jpeg(image, 6))  # 6: rotate 90 degrees clockwise to display
    decoded = cv2.imread(str(path))
    assert decoded.shape[:2] == (50, 20)
    assert read_image_size(path) == (20, 50)


def test_missing_images_are_errors_naming_the_file(tmp_path):
    with pytest.raises(fastrcnn.Error, match="nothing.jpg: cannot read the image"):
        read_image_size(tmp_path / "nothing.jpg")


def test_every_shape_renders_at_the_smallest_size():
    for name in SHAPES:
        for seed in range(5):
            mask = toy._shape_mask(np.random.default_rng(seed), name, toy.OBJECT_SIZE[0])
            on = mask >= 128
            # a crescent's hole may take a bite out of its extent
            assert 0.75 * toy.OBJECT_SIZE[0] <= max(mask.shape) <= toy.OBJECT_SIZE[0] + 1, (name, mask.shape)
            # the mask is cropped to the object: every border row and column holds object pixels
            assert on[0].any() and on[-1].any() and on[:, 0].any() and on[:, -1].any()


def test_toy_images_keep_objects_inside_apart_and_in_the_size_range():
    counts = []
    for k in range(40):
        image, objects = render_toy_image(np.random.default_rng([0, 0, k]), toy.DEFAULT_CLASSES)
        height, width = image.shape[:2]
        assert toy.IMAGE_SIZE[0] <= min(width, height) and max(width, height) <= toy.IMAGE_SIZE[1]
        boxes = np.array([box for _, box in objects], float)
        counts.append(len(objects))
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width - 1).all() and (boxes[:, 3] <= height - 1).all()
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1
        assert (sides >= 0.75 * toy.OBJECT_SIZE[0]).all() and (sides <= toy.OBJECT_SIZE[1] + 1).all()
        areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
        for i in range(len(boxes)):
            for j in range(i):
                iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0]) + 1
                ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1]) + 1
                assert max(iw, 0) * max(ih, 0) <= toy.MAX_COVER * min(areas[i], areas[j])
    assert min(counts) >= 1 and max(counts) <= toy.MAX_OBJECTS and len(set(counts)) >= 3


def test_the_second_toy_set_has_other_classes_and_images(tmp_path, monkeypatch):
    real = toy.generate_toy_dataset
    monkeypatch.setattr(toy, "NUM_TRAIN", 3)
    monkeypatch.setattr(toy, "NUM_TEST", 2)
    monkeypatch.setattr(toy, "generate_toy_dataset",
                        lambda folder, seed, classes: real(folder, seed, classes, num_train=3, num_test=2))
    first, second = get_dataset("toy_test", data_root=tmp_path), get_dataset("toy2_test", data_root=tmp_path)
    assert second.classes == ("__background__",) + TOY2_CLASSES
    assert not set(first.classes[1:]) & set(second.classes[1:])
    assert second.root == str(tmp_path / "toy2") and second.num_images == 2
    names = {second.classes[c] for entry in second.validate() for c in entry["gt_classes"]}
    assert names <= set(TOY2_CLASSES)
    assert (cv2.imread(first.image_path(0)).shape != cv2.imread(second.image_path(0)).shape
            or not np.array_equal(cv2.imread(first.image_path(0)), cv2.imread(second.image_path(0))))
