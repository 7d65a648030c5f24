"""Dataset readers (VOC layout, COCO JSON, unions, the toy sets), their validation, and the toy generator."""
import json
import os

import cv2
import numpy as np
import pytest

import fastrcnn
from fastrcnn.rcnn.datasets import COCODataset, ToyDataset, UnionDataset, VOCDataset, get_dataset, toy
from fastrcnn.rcnn.datasets.base import read_image_size
from fastrcnn.rcnn.datasets.toy import (DEFAULT_CLASSES, TOY2_CLASSES, ensure_toy_dataset, generate_toy_dataset,
                                        render_toy_image)
from fastrcnn.rcnn.datasets.voc import VOC_CLASSES


def write_image(path, width, height, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


def voc_xml(objects, size=None):
    """A VOC annotation; ``objects``: (name, xmin, ymin, xmax, ymax, difficult) with 1-based coordinates."""
    parts = ["<annotation><filename>x.jpg</filename>"]
    if size:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>")
    for name, x1, y1, x2, y2, difficult in objects:
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
                     f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>\n"


def write_voc(folder, images, split="train", classes=None):
    """A VOC-layout folder; ``images``: {id: (width, height, objects)}; ``classes`` written to classes.txt."""
    (folder / "Annotations").mkdir(parents=True, exist_ok=True)
    (folder / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for k, (image_id, (width, height, objects)) in enumerate(images.items()):
        write_image(folder / "JPEGImages" / f"{image_id}.jpg", width, height, k)
        (folder / "Annotations" / f"{image_id}.xml").write_text(voc_xml(objects, (width, height)))
    (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    if classes is not None:
        (folder / "classes.txt").write_text(classes)
    return folder


TWO_IMAGES = {"a": (40, 30, [(" DOG ", 1, 1, 40, 30, 0), ("Cat", 5, 6, 10, 12, 1)]),
              "b": (24, 32, [("cat", 2, 3, 20, 31, 0)])}


# -- VOC layout --------------------------------------------------------------------------------------------
def test_voc_boxes_become_0_based_with_difficult_and_normalised_names(tmp_path):
    folder = write_voc(tmp_path / "mine", TWO_IMAGES, classes="  Dog \n\nCAT\n")
    dataset = VOCDataset(folder, "train")
    assert dataset.classes == ("__background__", "dog", "cat") and dataset.num_classes == 3
    assert dataset.image_ids == ["a", "b"] and dataset.name == f"voc:{folder}:train"
    roidb = dataset.validate()
    first, second = roidb
    assert first["boxes"].dtype == np.float32 and first["gt_classes"].dtype == np.int32
    np.testing.assert_array_equal(first["boxes"], [[0, 0, 39, 29], [4, 5, 9, 11]])  # xmin = 1 gives 0
    np.testing.assert_array_equal(first["gt_classes"], [1, 2])
    np.testing.assert_array_equal(first["difficult"], [False, True])
    assert (first["width"], first["height"], first["flipped"]) == (40, 30, False)
    assert first["image"] == os.path.join(str(folder), "JPEGImages", "a.jpg")
    np.testing.assert_array_equal(second["boxes"], [[1, 2, 19, 30]])
    assert (second["width"], second["height"]) == (24, 32)
    assert dataset.gt_roidb() is roidb


def test_voc_without_a_size_or_classes_file_reads_the_image_and_uses_the_20_classes(tmp_path):
    folder = tmp_path / "voc"
    write_voc(folder, {"x": (50, 20, [("person", 1, 1, 50, 20, 0)])})
    (folder / "Annotations" / "x.xml").write_text(voc_xml([("Person", 1, 1, 50, 20, 0)]))  # no <size>
    dataset = VOCDataset(folder, "train")
    assert dataset.classes[1:] == VOC_CLASSES and dataset.num_classes == 21
    (entry,) = dataset.gt_roidb()
    assert (entry["width"], entry["height"]) == (50, 20)
    assert entry["gt_classes"][0] == VOC_CLASSES.index("person") + 1
    for size in ("inf", "0", "-3", "wide"):  # a useless <size> is read from the image instead
        xml = voc_xml([("person", 1, 1, 50, 20, 0)], (size, 20))
        (folder / "Annotations" / "x.xml").write_text(xml)
        (entry,) = VOCDataset(folder, "train").validate()
        assert (entry["width"], entry["height"]) == (50, 20)


def test_voc_images_of_other_formats_and_header_sizes(tmp_path):
    folder = write_voc(tmp_path / "voc", {"p": (33, 17, [("dog", 1, 1, 33, 17, 0)])}, classes="dog\n")
    os.remove(folder / "JPEGImages" / "p.jpg")
    write_image(folder / "JPEGImages" / "p.png", 33, 17)
    dataset = VOCDataset(folder, "train")
    assert dataset.image_path(0).endswith("p.png")
    assert read_image_size(dataset.image_path(0)) == (33, 17)
    dataset.validate()
    (tmp_path / "fake.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(fastrcnn.Error, match="fake.jpg: not a readable image"):
        read_image_size(tmp_path / "fake.jpg")


def test_a_zero_xmin_is_reported_not_wrapped(tmp_path):
    folder = write_voc(tmp_path / "voc", {"z": (40, 30, [("dog", 0, 3, 10, 12, 0)])}, classes="dog\n")
    with pytest.raises(fastrcnn.Error, match=r"box \(x1, y1, x2, y2\) = \(-1, 2, 9, 11\) 0-based lies outside"):
        VOCDataset(folder, "train").validate()


def test_voc_folder_errors(tmp_path):
    folder = write_voc(tmp_path / "voc", TWO_IMAGES, classes="dog\ncat\n")
    with pytest.raises(fastrcnn.Error, match=r"val\.txt: cannot read the image list of split 'val'"):
        VOCDataset(folder, "val")
    (folder / "classes.txt").write_text("dog\ncat\nDOG\n")
    with pytest.raises(fastrcnn.Error, match="class names repeat"):
        VOCDataset(folder, "train")
    (folder / "classes.txt").write_text("\n \n")
    with pytest.raises(fastrcnn.Error, match="classes.txt: the class list is empty"):
        VOCDataset(folder, "train")
    with pytest.raises(fastrcnn.Error, match="JPEGImages: no such folder"):
        VOCDataset(tmp_path / "nowhere", "train")


# -- get_dataset -------------------------------------------------------------------------------------------
def test_get_dataset_voc_folder_form(tmp_path):
    folder = write_voc(tmp_path / "mine", TWO_IMAGES, classes="dog\ncat\n")
    dataset = get_dataset(f"voc:{folder}:train", data_root=tmp_path)
    assert isinstance(dataset, VOCDataset) and dataset.name == f"voc:{folder}:train"
    assert dataset.root == str(folder) and dataset.split == "train" and dataset.num_images == 2
    with pytest.raises(fastrcnn.Error, match="expected voc:<folder>:<split>"):
        get_dataset(f"voc:{folder}", data_root=tmp_path)


def test_get_dataset_voc_named_under_the_data_root(tmp_path):
    images = {"000005": (40, 30, [(" Car", 1, 1, 40, 30, 0), ("cat", 5, 6, 10, 12, 1)])}
    # the 20 VOC classes, whatever a classes.txt says
    write_voc(tmp_path / "VOCdevkit2007" / "VOC2007", images, split="trainval", classes="dog\ncat\n")
    dataset = get_dataset("voc_2007_trainval", data_root=tmp_path)
    assert dataset.name == "voc_2007_trainval" and dataset.year == 2007 and dataset.split == "trainval"
    assert dataset.classes[1:] == VOC_CLASSES
    roidb = dataset.validate()
    np.testing.assert_array_equal(roidb[0]["gt_classes"], [VOC_CLASSES.index("car") + 1,
                                                           VOC_CLASSES.index("cat") + 1])
    with pytest.raises(fastrcnn.Error, match=r"voc_2012_train: .*VOCdevkit2012.* does not exist"):
        get_dataset("voc_2012_train", data_root=tmp_path)


def write_coco(tmp_path):
    images = tmp_path / "images"
    write_image(images / "one.jpg", 64, 48)
    write_image(images / "two.jpg", 32, 40)
    data = {
        "images": [{"id": 9, "file_name": "two.jpg", "width": 32, "height": 40},
                   {"id": 2, "file_name": "one.jpg", "width": 64, "height": 48}],
        "categories": [{"id": 7, "name": "Zebra "}, {"id": 3, "name": "apple"}],
        "annotations": [
            {"id": 1, "image_id": 2, "category_id": 7, "bbox": [10.0, 20.0, 30.0, 15.0], "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [50.5, 0.0, 20.0, 10.0], "iscrowd": 1},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [4.0, 5.0, 1.0, 1.0]},
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return images, path, data


def test_get_dataset_coco_form(tmp_path):
    images, annotations, data = write_coco(tmp_path)
    dataset = get_dataset(f"coco:{images}:{annotations}", data_root=tmp_path)
    assert isinstance(dataset, COCODataset)
    assert dataset.classes == ("__background__", "apple", "Zebra") and dataset.category_ids == (3, 7)
    assert dataset.image_ids == ["2", "9"] and dataset.split == "instances"
    assert dataset.image_path(0) == os.path.join(str(images), "one.jpg")
    one, two = dataset.validate()
    # x, y, w, h -> x, y, x + w - 1, y + h - 1, clipped to the image (50.5 + 19 > 63)
    np.testing.assert_array_equal(one["boxes"], [[10, 20, 39, 34], [50.5, 0, 63, 9], [4, 5, 4, 5]])
    np.testing.assert_array_equal(one["gt_classes"], [2, 1, 1])
    np.testing.assert_array_equal(one["difficult"], [False, True, False])  # iscrowd
    assert (one["width"], one["height"]) == (64, 48)
    assert two["boxes"].shape == (0, 4) and (two["width"], two["height"]) == (32, 40)

    data["annotations"].append({"id": 4, "image_id": 5, "category_id": 3, "bbox": [0, 0, 1, 1]})
    annotations.write_text(json.dumps(data))
    with pytest.raises(fastrcnn.Error, match=r"instances.json: annotations refer to image ids not in 'images': \[5\]"):
        get_dataset(f"coco:{images}:{annotations}", data_root=tmp_path)
    annotations.write_text("{not json")
    with pytest.raises(fastrcnn.Error, match="instances.json: not valid JSON"):
        get_dataset(f"coco:{images}:{annotations}", data_root=tmp_path)
    annotations.write_text(json.dumps({"images": []}))
    with pytest.raises(fastrcnn.Error, match="instances.json: not a COCO instances file .*'categories'"):
        get_dataset(f"coco:{images}:{annotations}", data_root=tmp_path)
    data["images"][0]["width"] = "wide"
    annotations.write_text(json.dumps(data))
    with pytest.raises(fastrcnn.Error, match="instances.json: not a COCO instances file .*'wide'"):
        get_dataset(f"coco:{images}:{annotations}", data_root=tmp_path)


def test_coco_annotation_problems_name_the_annotation(tmp_path):
    images, annotations, data = write_coco(tmp_path)
    data["annotations"][0]["bbox"] = [1, 2, 3]
    data["annotations"][1]["category_id"] = 99
    annotations.write_text(json.dumps(data))
    with pytest.raises(fastrcnn.Error, match=r"image 2 \(one.jpg\): annotation 0 \(id 1\): bad or missing field"):
        COCODataset(images, annotations).validate()
    data["annotations"][0]["bbox"] = [1, 2, 3, 4]
    annotations.write_text(json.dumps(data))
    with pytest.raises(fastrcnn.Error, match=r"object 1 \('category_id=99'\): unknown class"):
        COCODataset(images, annotations).validate()


def test_unions_join_datasets_with_the_same_classes(tmp_path):
    first = write_voc(tmp_path / "first", TWO_IMAGES, classes="dog\ncat\n")
    second = write_voc(tmp_path / "second", {"c": (30, 30, [("dog", 3, 3, 9, 9, 0)])}, classes="dog\ncat\n")
    union = get_dataset(f"voc:{first}:train + voc:{second}:train", data_root=tmp_path)
    assert isinstance(union, UnionDataset) and union.name == f"voc:{first}:train+voc:{second}:train"
    assert union.classes == ("__background__", "dog", "cat") and union.num_images == 3
    assert union.image_ids == [f"voc:{first}:train/a", f"voc:{first}:train/b", f"voc:{second}:train/c"]
    assert union.image_path(2) == os.path.join(str(second), "JPEGImages", "c.jpg")
    assert union.image_size(2) == (30, 30)
    roidb = union.validate()
    assert [entry["image"] for entry in roidb] == [union.image_path(i) for i in range(3)]
    np.testing.assert_array_equal(roidb[2]["boxes"], [[2, 2, 8, 8]])

    other = write_voc(tmp_path / "other", TWO_IMAGES, classes="cat\ndog\n")
    with pytest.raises(fastrcnn.Error, match=f"the classes of 'voc:{other}:train' .* differ"):
        get_dataset(f"voc:{first}:train+voc:{other}:train", data_root=tmp_path)
    with pytest.raises(fastrcnn.Error, match="appears twice"):
        get_dataset(f"voc:{first}:train+voc:{first}:train", data_root=tmp_path)
    with pytest.raises(fastrcnn.Error, match="has an empty part"):
        get_dataset(f"voc:{first}:train+", data_root=tmp_path)


def test_unknown_names_list_the_accepted_forms(tmp_path):
    with pytest.raises(fastrcnn.Error) as info:
        get_dataset("imagenet_train", data_root=tmp_path)
    message = str(info.value)
    assert "unknown dataset 'imagenet_train'" in message
    for form in ("voc_<2007|2012>_<train|val|trainval|test>", "voc:<folder>:<split>",
                 "coco:<images_dir>:<annotations.json>", "toy_<train|test>", "toy2_<train|test>", "a+b"):
        assert form in message
    assert not (tmp_path / "toy").exists()


@pytest.fixture
def small_toy_sets(monkeypatch):
    """Make the named toy sets 6 + 3 images, so that toy names can be used without the full generation."""
    real = toy.generate_toy_dataset

    def small(folder, seed, classes):
        return real(folder, seed, classes, num_train=6, num_test=3)
    monkeypatch.setattr(toy, "NUM_TRAIN", 6)
    monkeypatch.setattr(toy, "NUM_TEST", 3)
    monkeypatch.setattr(toy, "generate_toy_dataset", small)
    return small


def test_toy_names_under_the_data_root(tmp_path, small_toy_sets, monkeypatch):
    dataset = get_dataset("toy_train", data_root=tmp_path)
    assert isinstance(dataset, ToyDataset) and dataset.use_07_metric
    assert dataset.name == "toy_train" and dataset.root == str(tmp_path / "toy") and dataset.num_images == 6
    assert dataset.classes[1:] == DEFAULT_CLASSES
    assert get_dataset("toy_trainval", data_root=tmp_path).image_ids == dataset.image_ids

    def fail(*args):
        raise AssertionError("generated again")
    monkeypatch.setattr(toy, "generate_toy_dataset", fail)
    test = get_dataset("toy_test", data_root=tmp_path)
    assert test.num_images == 3 and test.image_ids[0] == "test_00000"
    monkeypatch.setattr(toy, "generate_toy_dataset", small_toy_sets)
    toy2 = get_dataset("toy2_test", data_root=tmp_path)
    assert toy2.classes[1:] == TOY2_CLASSES and toy2.root == str(tmp_path / "toy2")
    assert sorted(os.listdir(tmp_path)) == ["toy", "toy2"]


def test_toy_dataset_on_a_small_generated_folder(tmp_path):
    folder = generate_toy_dataset(tmp_path / "small", 0, DEFAULT_CLASSES, num_train=6, num_test=3)
    dataset = ToyDataset(folder, "train")
    assert dataset.use_07_metric and dataset.classes[1:] == DEFAULT_CLASSES and dataset.num_images == 6
    roidb = dataset.validate(decode=True)  # every box inside its image, every class known
    for entry in roidb:
        assert 1 <= len(entry["boxes"]) <= toy.MAX_OBJECTS and not entry["difficult"].any()
        image = cv2.imread(entry["image"])
        assert image.shape == (entry["height"], entry["width"], 3)
        assert toy.IMAGE_SIZE[0] <= entry["width"] <= toy.IMAGE_SIZE[1]
        assert toy.IMAGE_SIZE[0] <= entry["height"] <= toy.IMAGE_SIZE[1]


# -- validation --------------------------------------------------------------------------------------------
def test_validation_reports_every_problem_at_once(tmp_path):
    folder = write_voc(tmp_path / "bad", {
        "ok": (40, 30, [("dog", 1, 1, 40, 30, 0)]),
        "noimage": (40, 30, [("dog", 1, 1, 10, 10, 0)]),
        "badxml": (40, 30, []),
        "flipped": (40, 30, [("dog", 1, 1, 10, 10, 0), ("cat", 20, 5, 10, 9, 0)]),
        "outside": (40, 30, [("cat", 5, 5, 41, 12, 0)]),
        "unknown": (40, 30, [("horse", 2, 2, 8, 8, 0)]),
        "resized": (40, 30, [("dog", 1, 1, 5, 5, 0)]),
        "noxml": (40, 30, []),
    }, classes="dog\ncat\n")
    os.remove(folder / "JPEGImages" / "noimage.jpg")
    (folder / "Annotations" / "badxml.xml").write_text("<annotation><object>")
    os.remove(folder / "Annotations" / "noxml.xml")
    write_image(folder / "JPEGImages" / "resized.jpg", 41, 30)
    annotations = folder / "Annotations"
    with pytest.raises(fastrcnn.Error) as info:
        VOCDataset(folder, "train").validate()
    message = str(info.value)
    expected = [
        f"{folder / 'JPEGImages' / 'noimage.jpg'}: cannot read the image",
        f"{annotations / 'badxml.xml'}: not valid XML",
        f"{annotations / 'flipped.xml'}: object 1 ('cat'): box (x1, y1, x2, y2) = (19, 4, 9, 8) 0-based has x2 < x1",
        f"{annotations / 'outside.xml'}: object 0 ('cat'): box (x1, y1, x2, y2) = (4, 4, 40, 11) 0-based lies "
        "outside the 40x30 image",
        f"{annotations / 'unknown.xml'}: object 0 ('horse'): unknown class; the classes are ['dog', 'cat']",
        f"{annotations / 'resized.xml'}: the annotation gives the image size 40x30, but",
        f"{annotations / 'noxml.xml'}: cannot read the annotation",
    ]
    for line in expected:
        assert line in message
    assert message.startswith(f"dataset 'voc:{folder}:train' has 7 problem(s):")
    assert len(info.value.problems) == 7 and "ok.xml" not in message and "ok.jpg" not in message

    # without the image checks, the annotation problems alone (still all of them)
    with pytest.raises(fastrcnn.Error) as info:
        VOCDataset(folder, "train").gt_roidb()
    assert len(info.value.problems) == 5 and "noimage.jpg" not in str(info.value)


def test_bad_xml_fields_name_the_object(tmp_path):
    folder = write_voc(tmp_path / "voc", {"a": (40, 30, [("dog", "one", 1, 5, 5, 0)]),
                                          "b": (40, 30, [("dog", 1, 1, 5, 5, 2)])}, classes="dog\n")
    with pytest.raises(fastrcnn.Error) as info:
        VOCDataset(folder, "train").validate()
    assert "a.xml: object 0 ('dog'): <xmin> is 'one', not a number" in str(info.value)
    assert "b.xml: object 0 ('dog'): <difficult> is '2', not 0 or 1" in str(info.value)


# -- the toy generator -------------------------------------------------------------------------------------
def read_tree(folder):
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def test_toy_generation_is_deterministic_for_a_seed(tmp_path):
    first = generate_toy_dataset(tmp_path / "a", 3, DEFAULT_CLASSES, num_train=3, num_test=2)
    second = generate_toy_dataset(tmp_path / "b", 3, DEFAULT_CLASSES, num_train=3, num_test=2)
    other = generate_toy_dataset(tmp_path / "c", 4, DEFAULT_CLASSES, num_train=3, num_test=2)
    a, b, c = read_tree(first), read_tree(second), read_tree(other)
    assert a.keys() == b.keys() == c.keys()
    for name in a:
        if name.endswith(".jpg"):
            image = cv2.imread(str(first / name))
            np.testing.assert_array_equal(image, cv2.imread(str(second / name)))
            other_image = cv2.imread(str(other / name))
            assert image.shape != other_image.shape or not np.array_equal(image, other_image)
        else:
            assert a[name] == b[name], name
    assert any(a[name] != c[name] for name in a if name.startswith("Annotations/"))
    rng = np.random.default_rng([3, 0, 1])
    image, objects = render_toy_image(rng, DEFAULT_CLASSES)
    again, same = render_toy_image(np.random.default_rng([3, 0, 1]), DEFAULT_CLASSES)
    np.testing.assert_array_equal(image, again)
    assert objects == same


def test_toy_layout_and_settings(tmp_path):
    folder = generate_toy_dataset(tmp_path / "toy", 5, ("ring", "star"), num_train=4, num_test=2)
    main = folder / "ImageSets" / "Main"
    train = main.joinpath("train.txt").read_text().split()
    assert train == [f"train_{k:05d}" for k in range(4)]
    assert main.joinpath("trainval.txt").read_text().split() == train
    assert main.joinpath("test.txt").read_text().split() == ["test_00000", "test_00001"]
    assert (folder / "classes.txt").read_text() == "ring\nstar\n"
    settings = json.loads((folder / "toy.json").read_text())
    assert settings == {"version": toy.GENERATOR_VERSION, "seed": 5, "classes": ["ring", "star"], "num_train": 4,
                        "num_test": 2, "image_size": list(toy.IMAGE_SIZE)}
    for image_id in train + ["test_00000", "test_00001"]:
        assert (folder / "JPEGImages" / f"{image_id}.jpg").is_file()
        assert (folder / "Annotations" / f"{image_id}.xml").is_file()
    names = set()
    for split in ("trainval", "test"):
        for entry in ToyDataset(folder, split).validate():  # boxes inside the images, sizes agree
            names.update(entry["gt_classes"].tolist())
    assert names <= {1, 2}
    with pytest.raises(fastrcnn.Error, match="unknown shape classes \\['dog'\\]"):
        generate_toy_dataset(tmp_path / "x", 0, ("star", "dog"), num_train=1, num_test=1)
    with pytest.raises(fastrcnn.Error, match="image_size"):
        generate_toy_dataset(tmp_path / "x", 0, DEFAULT_CLASSES, num_train=1, num_test=1, image_size=(20, 10))


def outline(shape, samples=8):
    """The corner counts of ``samples`` instances of ``shape`` (their outlines simplified to 2% of the
    perimeter), and their counts of holes."""
    rng = np.random.default_rng(11)
    corners, holes = set(), set()
    for _ in range(samples):
        mask = np.pad((toy._shape_mask(rng, shape, 80) >= 128).astype(np.uint8), 2)
        contours, _ = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        contour = max(contours, key=cv2.contourArea)
        corners.add(len(cv2.approxPolyDP(contour, 0.02 * cv2.arcLength(contour, True), True)))
        holes.add(len(contours) - 1)
    return corners, holes


def test_toy_classes_differ_by_shape():
    found = {shape: outline(shape) for shape in DEFAULT_CLASSES + TOY2_CLASSES}
    corners = {shape: found[shape][0] for shape in found}
    assert corners["triangle"] == {3} and corners["rectangle"] == {4} and corners["hexagon"] == {6}
    assert corners["arrow"] == {7} and corners["cross"] == {12} and corners["star"] <= {10, 12}
    assert min(corners["ellipse"]) >= 8  # a smooth outline
    assert found["ring"][1] == {1} and all(found[shape][1] == {0} for shape in found if shape != "ring")
    # the same random stream gives each class a different picture
    images = {name: render_toy_image(np.random.default_rng(5), (name,))[0] for name in ("star", "ellipse")}
    assert not np.array_equal(images["star"], images["ellipse"])
    _, objects = render_toy_image(np.random.default_rng(5), ("cross",))
    assert {name for name, _ in objects} == {"cross"}


@pytest.mark.parametrize("failure", [RuntimeError("boom"), KeyboardInterrupt()])
def test_ensure_toy_dataset_leaves_nothing_when_the_generation_fails(tmp_path, monkeypatch, failure):
    def broken(folder, seed, classes):
        (folder / "JPEGImages").mkdir()
        (folder / "JPEGImages" / "train_00000.jpg").write_bytes(b"partial")
        raise failure
    monkeypatch.setattr(toy, "generate_toy_dataset", broken)
    with pytest.raises(type(failure)):
        ensure_toy_dataset(tmp_path / "data", "toy")
    assert os.listdir(tmp_path / "data") == []


def test_ensure_toy_dataset_refuses_a_folder_of_other_settings(tmp_path, small_toy_sets):
    generate_toy_dataset(tmp_path / "toy", 0, DEFAULT_CLASSES, num_train=5, num_test=3)
    with pytest.raises(fastrcnn.Error, match=r"toy: not the toy dataset 'toy' .*remove the folder to regenerate it"):
        ensure_toy_dataset(tmp_path, "toy")
    (tmp_path / "toy2").mkdir()
    with pytest.raises(fastrcnn.Error, match="toy.json is None"):
        ensure_toy_dataset(tmp_path, "toy2")
    with pytest.raises(fastrcnn.Error, match="unknown toy dataset 'toy3'"):
        ensure_toy_dataset(tmp_path, "toy3")
    assert ensure_toy_dataset(tmp_path / "fresh", "toy") == tmp_path / "fresh" / "toy"
