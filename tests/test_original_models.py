"""The 29 original Fast R-CNN model definitions load unchanged, and their nets build and run.

Every TEST net runs a forward pass with random weights on a small image (128×160, enough for the total
stride of 16); every TRAIN net builds with the original RoI data layer (``type: "Python"``, module
``roi_data_layer.layer``, served natively) and freezes exactly the layers the paper freezes (paper section 4.5:
conv1 of S and M, conv1_x/conv2_x of VGG16; all convs in VGG16/fc_only; all but bbox_pred in piecewise).
"""
import numpy
import pytest

import fastrcnn
from fastrcnn import protoio
from fastrcnn.rcnn.downloads import file_digest
from fastrcnn.rcnn.roi_data_layer import RoIDataLayer
from model_helpers import (ALL_FILES, CONV5, POOLED, SOLVERS, TEST_NETS, TRAIN_NETS, fetch_script, image_blob,
                           layer_mults, models_dir, msra_fill)

IMAGE = (1, 3, 128, 160)
# [batch, x1, y1, x2, y2]: the whole image, boxes whose corners × 1/16 land on .5, a 1-pixel box.
ROIS = numpy.array([[0, 0, 0, 159, 127],
                    [0, 8, 24, 104, 88],
                    [0, 40.5, 7.9, 120.3, 100.2],
                    [0, 70, 50, 70, 50]], dtype=numpy.float32)
# Caffe's floor-mode convolutions and ceil-mode pools on 128×160 (CaffeNet pads; M does not)
CONV5_SIZE = {"CaffeNet": (9, 11), "VGG_CNN_M_1024": (7, 9), "VGG16": (8, 10)}


def model_of(rel):
    return rel.split("/")[0]


def test_inventory(reference_dir):
    found = sorted(str(p.relative_to(models_dir(reference_dir))) for p in models_dir(reference_dir).rglob("*.prototxt"))
    assert found == sorted(ALL_FILES)
    assert len(found) == 29


def test_files_are_those_of_the_sha256_list(reference_dir):
    """The copy the tests read is the one scripts/fetch_reference.py downloads, byte for byte."""
    wrong = [rel for rel, digest in fetch_script().read_manifest().items()
             if file_digest(reference_dir / rel, "sha256") != digest]
    assert not wrong, f"SHA-256 not that of scripts/fetch_reference.sha256: {wrong} in {reference_dir}"


@pytest.mark.parametrize("rel", SOLVERS)
def test_solver_parses(reference_dir, rel):
    solver = protoio.load_solver(models_dir(reference_dir) / rel)
    assert solver.train_net == f"models/{rel.replace('solver.prototxt', 'train.prototxt')}"
    assert (solver.base_lr, solver.lr_policy, solver.gamma, solver.stepsize) == pytest.approx(
        (0.001, "step", 0.1, 30000))
    assert (solver.momentum, solver.weight_decay, solver.snapshot) == pytest.approx((0.9, 0.0005, 0))


@pytest.mark.parametrize("rel", TEST_NETS + TRAIN_NETS)
def test_net_parses(reference_dir, rel):
    net = protoio.load_net(models_dir(reference_dir) / rel)
    assert net.layer and not net.layers
    types = {lp.type for lp in net.layer}
    if rel.endswith("test.prototxt"):
        assert list(net.input) == ["data", "rois"]
        assert [list(s.dim) for s in net.input_shape][1] == [1, 5]
        assert "Softmax" in types and "Python" not in types
    else:
        assert net.layer[0].type == "Python"
        assert net.layer[0].python_param.module == "roi_data_layer.layer"
        assert {"SoftmaxWithLoss", "ROIPooling"} <= types


# -- TEST nets: one build and forward per net, shared by the checks below --------------------------------
@pytest.fixture(scope="module", params=TEST_NETS)
def test_net(request, reference_dir):
    rel = request.param
    net = fastrcnn.Net(str(models_dir(reference_dir) / rel), "TEST")
    msra_fill(net, seed=1)
    image = image_blob(numpy.random.default_rng(2), IMAGE)
    out = net.forward(blobs=[CONV5[model_of(rel)], "pool5"], data=image, rois=ROIS)
    out = {name: value.copy() for name, value in out.items()}
    yield rel, net, image, out


def test_test_net_outputs(test_net):
    rel, net, _, out = test_net
    no_bbox = "no_bbox_reg" in rel
    assert net.inputs == ["data", "rois"]
    assert net.outputs == (["cls_prob"] if no_bbox else ["bbox_pred", "cls_prob"])
    prob = out["cls_prob"]
    assert prob.shape == (len(ROIS), 21) and prob.dtype == numpy.float32
    assert (prob >= 0).all()
    numpy.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-5)
    if no_bbox:
        assert "bbox_pred" not in out
    else:
        assert out["bbox_pred"].shape == (len(ROIS), 84)
        assert numpy.isfinite(out["bbox_pred"]).all()
    # the random weights keep the features alive: not all zero, not exploding
    assert 1e-2 < numpy.abs(out["pool5"]).max() < 1e3


def test_test_net_feature_shapes(test_net):
    rel, net, _, out = test_net
    model = model_of(rel)
    channels = 256 if model == "CaffeNet" else 512
    assert out[CONV5[model]].shape == (1, channels) + CONV5_SIZE[model]
    assert out["pool5"].shape == (len(ROIS), channels, POOLED[model], POOLED[model])


def test_test_net_rois_are_independent_and_inputs_reshape(test_net):
    """The same image with fewer, reordered RoIs gives the same rows; a new image size reshapes the net."""
    rel, net, image, out = test_net
    order = [2, 0]
    again = net.forward(data=image, rois=ROIS[order])
    for name, value in again.items():
        # equal up to float32 rounding: BLAS may sum a product's rows in another order for another row count
        scale = max(1.0, float(numpy.abs(out[name]).max()))
        numpy.testing.assert_allclose(value, out[name][order], rtol=1e-4, atol=1e-6 * scale, err_msg=name)
    smaller = image_blob(numpy.random.default_rng(3), (1, 3, 96, 112))
    rois = numpy.array([[0, 5, 5, 90, 60], [0, 0, 0, 111, 95], [0, 30, 30, 60, 50]], dtype=numpy.float32)
    again = net.forward(data=smaller, rois=rois)
    assert again["cls_prob"].shape == (3, 21)
    numpy.testing.assert_allclose(again["cls_prob"].sum(axis=1), 1.0, rtol=1e-5)


# -- TRAIN nets ------------------------------------------------------------------------------------------
VGG16_CONVS = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
               "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")


def frozen_layers(rel):
    """The layers with params whose lr_mult is 0 in the original train prototxt."""
    model = model_of(rel)
    convs = VGG16_CONVS if model == "VGG16" else ("conv1", "conv2", "conv3", "conv4", "conv5")
    if "piecewise" in rel:
        return set(convs) | {"fc6", "fc7", "cls_score"}
    if "fc_only" in rel:
        return set(convs)
    return set(convs[:4]) if model == "VGG16" else {"conv1"}


@pytest.fixture(scope="module", params=TRAIN_NETS)
def train_net(request, reference_dir):
    yield request.param, fastrcnn.Net(str(models_dir(reference_dir) / request.param), "TRAIN")


def test_train_net_uses_the_native_roi_data_layer(train_net):
    rel, net = train_net
    data = net.layers[0]
    assert isinstance(data, RoIDataLayer)
    assert data.num_classes == 21
    tops = ["data", "rois", "labels"] + ([] if "no_bbox_reg" in rel else ["bbox_targets", "bbox_loss_weights"])
    assert net.top_names(net.layer_names[0]) == tops
    assert net.blobs["data"].shape == (1, 3, 100, 100)


def test_train_net_frozen_layers_need_no_backward(train_net):
    rel, net = train_net
    frozen = frozen_layers(rel)
    with_params = [name for name in net.layer_names if name in net.params]
    assert frozen < set(with_params)
    need = dict(zip(net.layer_names, net._layer_need_backward))
    assert {name for name in with_params if not need[name]} == frozen
    # nothing below the first trainable layer runs backward: not the data layer, ReLUs, pools or LRNs
    first = min(net.layer_names.index(name) for name in with_params if name not in frozen)
    assert not any(net._layer_need_backward[:first])


def test_train_net_lr_and_decay_mults(train_net):
    rel, net = train_net
    frozen = frozen_layers(rel)
    for name in net.params:
        expected = [(0, 0), (0, 0)] if name in frozen else [(1, 1), (2, 0)]
        assert layer_mults(net, name) == expected, name


def test_train_net_losses(train_net):
    rel, net = train_net
    losses = {name: net._loss[i] for i, name in enumerate(net.layer_names) if any(net._loss[i])}
    if "piecewise" in rel:
        assert losses == {"loss_bbox": [1.0]}  # loss_cls has loss_weight 0: bbox regression alone
    elif "no_bbox_reg" in rel:
        assert losses == {"loss_cls": [1.0]}
    else:
        assert losses == {"loss_cls": [1.0], "loss_bbox": [1.0]}
