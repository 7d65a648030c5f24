"""The S/M/L model definitions of prototxt/ (CaffeNet, VGG_CNN_M_1024, VGG16).

They are written by scripts/make_prototxt.py and must be what it writes; each describes the same network as
the original Fast R-CNN model of the same path (layer by layer, protobuf equality, the data layer aside), each
solver holds the original's values, and each TEST net builds and runs a forward pass.
"""
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

import fastrcnn
from fastrcnn import protoio
from fastrcnn.layers.python_layer import parse_param_str
from fastrcnn.solver import train_net_source
from model_helpers import load_script

ROOT = Path(__file__).resolve().parents[1]
PROTOTXT = ROOT / "prototxt"
MODELS = ("CaffeNet", "VGG_CNN_M_1024", "VGG16")
NETS = ("train", "test", "no_bbox_reg/train", "no_bbox_reg/test", "compressed/test")
TEST_NETS = ("test", "no_bbox_reg/test", "compressed/test")
SOLVERS = ("solver", "no_bbox_reg/solver")
# fc6's input: channels of the last conv x pooled height x pooled width (256·36, 512·36, 512·49).
FC6_INPUT = {"CaffeNet": 9216, "VGG_CNN_M_1024": 18432, "VGG16": 25088}
FC7_OUTPUT = {"CaffeNet": 4096, "VGG_CNN_M_1024": 1024, "VGG16": 4096}
FROZEN = {"CaffeNet": {"conv1"}, "VGG_CNN_M_1024": {"conv1"}, "VGG16": {"conv1_1", "conv1_2", "conv2_1", "conv2_2"}}

EVERY_NET = [pytest.param(m, n, id=f"{m}/{n}") for m in MODELS for n in NETS]
EVERY_SOLVER = [pytest.param(m, s, id=f"{m}/{s}") for m in MODELS for s in SOLVERS]


def _ours(model, name):
    return PROTOTXT / model / f"{name}.prototxt"


def _original(reference_dir, model, name):
    return reference_dir / "original-models" / model / f"{name}.prototxt"


def _generator():
    return load_script("make_prototxt")


# ---------------------------------------------------------------- the generator

def test_files_are_what_the_generator_writes():
    generator = _generator()
    assert generator.stale_files() == [], "prototxt/ is stale: run python scripts/make_prototxt.py"
    committed = {str(p.relative_to(PROTOTXT)) for m in MODELS for p in (PROTOTXT / m).rglob("*")
                 if p.is_file()}
    assert committed == set(generator.render()), "files under prototxt/ that the generator does not write"


def test_generator_check_reports_a_stale_file(tmp_path):
    generator = _generator()
    for path, text in generator.render().items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text, encoding="utf-8")
    assert generator.stale_files(tmp_path) == []
    (tmp_path / "VGG16" / "test.prototxt").write_text("# edited by hand\n", encoding="utf-8")
    (tmp_path / "CaffeNet" / "solver.prototxt").unlink()
    assert sorted(generator.stale_files(tmp_path)) == ["CaffeNet/solver.prototxt", "VGG16/test.prototxt"]


# ---------------------------------------------------------------- the same networks as the originals

def _text(message):
    return text_format.MessageToString(message)


def _assert_same_message(ours, original, what):
    assert ours == original, f"{what} differs:\nours:\n{_text(ours)}\noriginal:\n{_text(original)}"


def _assert_same_data_layer(ours, original):
    """Our RoIData layer against the original's Python RoIDataLayer: same name and tops, same class count."""
    assert ours.type == "RoIData"
    assert (original.python_param.module, original.python_param.layer) == ("roi_data_layer.layer", "RoIDataLayer")
    declared = parse_param_str(original.python_param.param_str, "original data layer")["num_classes"]
    assert ours.roi_data_param.num_classes == declared
    assert ours.roi_data_param.imdb == "voc_2007_trainval"
    copies = []
    for layer in (ours, original):  # compared without what is spelled differently
        copy = type(layer)()
        copy.CopyFrom(layer)
        for field in ("type", "python_param", "roi_data_param"):
            copy.ClearField(field)
        copies.append(copy)
    _assert_same_message(*copies, "data layer")


@pytest.mark.parametrize("model, name", EVERY_NET)
def test_net_matches_the_original(reference_dir, model, name):
    ours = protoio.load_net(_ours(model, name))
    original = protoio.load_net(_original(reference_dir, model, name))
    assert [lp.name for lp in ours.layer] == [lp.name for lp in original.layer]
    for mine, theirs in zip(ours.layer, original.layer):
        if theirs.type == "Python":
            _assert_same_data_layer(mine, theirs)
        else:
            _assert_same_message(mine, theirs, f"layer '{theirs.name}'")
    ours.ClearField("layer")
    original.ClearField("layer")
    _assert_same_message(ours, original, "net-level fields (name, inputs)")


@pytest.mark.parametrize("model, name", EVERY_SOLVER)
def test_solver_matches_the_original(reference_dir, model, name):
    ours = protoio.load_solver(_ours(model, name))
    original = protoio.load_solver(_original(reference_dir, model, name))
    assert ours.train_net == "train.prototxt"
    assert ours.max_iter == 40000
    for solver in (ours, original):
        solver.ClearField("train_net")
        solver.ClearField("max_iter")
    _assert_same_message(ours, original, "solver")


# ---------------------------------------------------------------- on their own

@pytest.mark.parametrize("model, name", EVERY_SOLVER)
def test_solver_names_the_train_net_beside_it(model, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, net = train_net_source(_ours(model, name))
    assert Path(net).resolve() == _ours(model, name).with_name("train.prototxt").resolve()


@pytest.mark.parametrize("model, name", EVERY_NET)
def test_net_is_sized_for_21_classes(model, name):
    from fastrcnn.rcnn.train import check_class_count  # what frcnn-solve checks against the dataset
    path = _ours(model, name)
    net = protoio.load_net(path)
    check_class_count(net, 21, str(path))
    has_bbox = not name.startswith("no_bbox_reg")
    assert ("bbox_pred" in [lp.name for lp in net.layer]) == has_bbox


# One 128×160 image and three RoIs: the whole image, a box, and a 3×3 box (one conv5 cell).
IMAGE = np.random.default_rng(0).standard_normal((1, 3, 128, 160)).astype(np.float32)
ROIS = np.array([[0, 0, 0, 159, 127], [0, 16, 20, 90, 100], [0, 50, 50, 52, 52]], dtype=np.float32)


@pytest.fixture(scope="module", params=[pytest.param((m, n), id=f"{m}/{n}") for m in MODELS for n in TEST_NETS])
def ran_net(request):
    """A TEST net after one forward pass; trunk and fc weights set to 1/fan-in, cls_score/bbox_pred as filled."""
    model, name = request.param
    net = fastrcnn.Net(str(_ours(model, name)), "TEST")
    for layer, params in net.params.items():
        if layer not in ("cls_score", "bbox_pred"):
            weights = params[0].data
            weights[...] = 1.0 / (weights.size // weights.shape[0])
    outputs = net.forward(data=IMAGE, rois=ROIS)
    return model, name, net, outputs


def test_forward_gives_class_probabilities_and_boxes(ran_net):
    model, name, net, outputs = ran_net
    expected = {"cls_prob": (3, 21)} if name.startswith("no_bbox_reg") else {"cls_prob": (3, 21), "bbox_pred": (3, 84)}
    assert {k: v.shape for k, v in outputs.items()} == expected
    prob = outputs["cls_prob"]
    assert np.all(np.isfinite(prob)) and np.allclose(prob.sum(axis=1), 1, atol=1e-5)
    assert prob.std(axis=1).min() > 0, "class scores do not depend on the input"
    assert not np.allclose(prob[0], prob[1]), "different RoIs gave the same scores"


def test_fc_shapes(ran_net):
    model, name, net, _ = ran_net
    fc6_in, fc7_out = FC6_INPUT[model], FC7_OUTPUT[model]
    if name.startswith("compressed"):
        expected = {"fc6_L": (1024, fc6_in), "fc6_U": (4096, 1024), "fc7_L": (256, 4096), "fc7_U": (fc7_out, 256)}
    else:
        expected = {"fc6": (4096, fc6_in), "fc7": (fc7_out, 4096)}
    expected["cls_score"] = (21, fc7_out)
    assert {layer: net.params[layer][0].shape for layer in expected} == expected
    assert net.blobs["pool5"].shape[0] == len(ROIS)


@pytest.mark.parametrize("model, name", [pytest.param(m, n, id=f"{m}/{n}") for m in MODELS
                                         for n in ("train", "no_bbox_reg/train")])
def test_train_net_builds_with_its_frozen_layers(model, name):
    net = fastrcnn.Net(str(_ours(model, name)), "TRAIN")
    bbox_tops = [] if name.startswith("no_bbox_reg") else ["bbox_targets", "bbox_loss_weights"]
    assert net.top_names("data") == ["data", "rois", "labels"] + bbox_tops
    lr_mult = {id(blob): mult for blob, mult in zip(net.learnable_params, net.lr_mults)}
    frozen = {layer for layer, params in net.params.items() if all(lr_mult[id(p)] == 0 for p in params)}
    assert frozen == FROZEN[model]
