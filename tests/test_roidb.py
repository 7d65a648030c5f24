"""The training roidb, bbox-target normalisation, the minibatch sampler and the RoI data layer."""
import cv2
import numpy as np
import pytest

import fastrcnn
from fastrcnn import protoio
from fastrcnn.rcnn import config as config_mod
from fastrcnn.rcnn.boxes import bbox_transform
from fastrcnn.rcnn.minibatch import expand_bbox_targets, plan_minibatch, sample_rois
from fastrcnn.rcnn.roidb import add_bbox_targets, append_flipped, compute_targets, merge_proposals
from fastrcnn.rcnn.train import BBoxSnapshots, check_class_count


def gt_entry(path, boxes, classes, width=100, height=80):
    return {"boxes": np.asarray(boxes, np.float32), "gt_classes": np.asarray(classes, np.int32),
            "difficult": np.zeros(len(classes), bool), "width": width, "height": height, "image": str(path),
            "flipped": False}


def test_merge_gives_gt_first_with_overlaps_and_classes():
    gt = gt_entry("a.jpg", [[0, 0, 9, 9], [50, 50, 69, 69]], [2, 1])
    props = np.array([[0, 0, 9, 9], [0, 0, 4, 9], [50, 50, 69, 59], [80, 10, 90, 20]], np.float32)
    entry = merge_proposals([gt], [props])[0]
    assert len(entry["boxes"]) == 6
    np.testing.assert_array_equal(entry["gt_classes"], [2, 1, 0, 0, 0, 0])
    np.testing.assert_allclose(entry["max_overlaps"], [1, 1, 1, 0.5, 0.5, 0], rtol=1e-6)
    np.testing.assert_array_equal(entry["max_classes"], [2, 1, 2, 2, 1, 0])
    with pytest.raises(fastrcnn.Error, match="proposal lists"):
        merge_proposals([gt], [])


def test_flipped_copies_do_not_underflow_at_zero():
    entry = merge_proposals([gt_entry("a.jpg", [[0, 5, 9, 20]], [1])], [np.zeros((0, 4))])[0]
    roidb = append_flipped([entry])
    assert len(roidb) == 2 and roidb[1]["flipped"] and not roidb[0]["flipped"]
    np.testing.assert_array_equal(roidb[1]["boxes"], [[90, 5, 99, 20]])  # W - x2 - 1, W - x1 - 1
    np.testing.assert_array_equal(roidb[0]["boxes"], [[0, 5, 9, 20]])


def test_targets_and_their_normalisation_by_hand():
    gt = gt_entry("a.jpg", [[10, 10, 29, 29]], [1])
    props = np.array([[10, 10, 29, 33], [12, 10, 29, 29], [60, 60, 70, 70]], np.float32)
    entry = merge_proposals([gt], [props])[0]
    targets = compute_targets(entry, 0.5)
    # the gt box regresses onto itself; the proposals onto the gt; the far box gets nothing
    np.testing.assert_array_equal(targets[:, 0], [1, 1, 1, 0])
    np.testing.assert_allclose(targets[1, 1:], bbox_transform(entry["boxes"][1:2], entry["boxes"][0:1])[0],
                               rtol=1e-6)
    np.testing.assert_allclose(targets[1, 1:], [0, (19.5 - 21.5) / 23, 0, np.log(19 / 23)], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(targets[3], 0)
    roidb = [entry]
    means, stds = add_bbox_targets(roidb, num_classes=3, bbox_thresh=0.5)
    raw = targets[:3, 1:].astype(np.float64)
    n = 3 + 1e-14
    mean = raw.sum(0) / n
    std = np.sqrt((raw ** 2).sum(0) / n - mean ** 2)
    np.testing.assert_allclose(means.reshape(3, 4)[1], mean, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(stds.reshape(3, 4)[1], std, rtol=1e-6, atol=1e-12)
    assert not means.reshape(3, 4)[[0, 2]].any() and not stds.reshape(3, 4)[0].any()
    normalised = roidb[0]["bbox_targets"][:3, 1:]
    safe = np.where(std > 0, std, 1)
    np.testing.assert_allclose(normalised, (raw - mean) / safe, rtol=1e-5, atol=1e-6)


def synthetic_entry(n_fg, n_bg, n_none, rng):
    overlaps = np.concatenate([rng.uniform(0.5, 1.0, n_fg), rng.uniform(0.1, 0.4999, n_bg),
                               rng.uniform(0.0, 0.0999, n_none)]).astype(np.float32)
    classes = np.where(overlaps >= 0.1, rng.integers(1, 3, overlaps.size), 0).astype(np.int32)
    boxes = np.tile(np.array([[1, 2, 30, 40]], np.float32), (overlaps.size, 1))
    return {"boxes": boxes, "max_overlaps": overlaps, "max_classes": classes, "image": "x.jpg", "flipped": False,
            "bbox_targets": np.zeros((overlaps.size, 5), np.float32)}


def test_sampler_fraction_thresholds_and_no_replacement():
    cfg = config_mod.default_config()
    rng = np.random.default_rng(0)
    entry = synthetic_entry(40, 300, 50, rng)
    for _ in range(20):
        keep, labels = sample_rois(entry, 64, 16, cfg.TRAIN, rng)
        assert len(keep) == 64 and len(set(keep.tolist())) == 64
        fg = entry["max_overlaps"][keep] >= 0.5
        assert fg.sum() == 16 and fg[:16].all()  # foreground first, at most 25%
        assert (entry["max_overlaps"][keep[16:]] >= 0.1).all() and (entry["max_overlaps"][keep[16:]] < 0.5).all()
        np.testing.assert_array_equal(labels[16:], 0)
        np.testing.assert_array_equal(labels[:16], entry["max_classes"][keep[:16]])
    # few candidates: no padding, no replacement
    small = synthetic_entry(3, 10, 5, rng)
    keep, labels = sample_rois(small, 64, 16, cfg.TRAIN, rng)
    assert len(keep) == 13 and len(set(keep.tolist())) == 13


def test_plan_has_image_index_column_and_scales(tmp_path):
    cfg = config_mod.default_config()
    cfg.TRAIN.SCALES = (300, 400)
    rng = np.random.default_rng(1)
    roidb = [synthetic_entry(20, 100, 0, rng) for _ in range(4)]
    plan = plan_minibatch(roidb, [2, 0], cfg, rng)
    assert [p[0] for p in plan] == [2, 0]
    assert all(p[1] in (300, 400) for p in plan)
    cfg.TRAIN.BATCH_SIZE = 127
    with pytest.raises(fastrcnn.Error, match="multiple of TRAIN.IMS_PER_BATCH"):
        plan_minibatch(roidb, [0, 1], cfg, rng)


def test_expand_bbox_targets():
    compact = np.array([[0, 1, 2, 3, 4], [2, 0.5, -0.5, 0.1, 0.2]], np.float32)
    targets, weights = expand_bbox_targets(compact, 3)
    assert targets.shape == weights.shape == (2, 12)
    assert not targets[0].any() and not weights[0].any()
    np.testing.assert_array_equal(targets[1, 8:], compact[1, 1:])
    np.testing.assert_array_equal(weights[1], [0] * 8 + [1] * 4)


DATA_NET = '''
layer { name: "data" type: "RoIData" top: "data" top: "rois" top: "labels" top: "bbox_targets"
        top: "bbox_loss_weights" roi_data_param { num_classes: 3 } }
layer { name: "silence" type: "Silence" bottom: "data" bottom: "rois" bottom: "labels" bottom: "bbox_targets"
        bottom: "bbox_loss_weights" }
'''


def write_images(tmp_path, count):
    paths = []
    for i in range(count):
        path = tmp_path / f"im{i}.jpg"
        cv2.imwrite(str(path), np.full((60 + 4 * i, 80, 3), 30 * i, np.uint8))
        paths.append(str(path))
    return paths


def test_data_layer_blobs_are_deterministic_and_resume_exactly(tmp_path):
    cfg = config_mod.default_config()
    cfg.TRAIN.SCALES = (60,)
    cfg.TRAIN.BATCH_SIZE = 16
    rng = np.random.default_rng(0)
    roidb = []
    for path in write_images(tmp_path, 5):
        entry = synthetic_entry(6, 30, 3, rng)
        entry["image"] = path
        entry["bbox_targets"][:6, 0] = entry["max_classes"][:6]
        entry["bbox_targets"][:6, 1:] = rng.standard_normal((6, 4))
        roidb.append(entry)

    def run(steps, restore=None):
        net = fastrcnn.Net(protoio.net_from_string(DATA_NET), "TRAIN")
        layer = net.layers[0]
        layer.set_roidb(roidb, cfg, 3)
        if restore is not None:
            layer.restore_state(restore)
        seen = []
        for _ in range(steps):
            net.forward()
            seen.append({k: net.blobs[k].data.copy() for k in ("data", "rois", "labels", "bbox_targets")})
        return seen, layer.snapshot_state()

    straight, _ = run(6)
    first, state = run(3)
    second, _ = run(3, restore=state)
    for a, b in zip(straight, first + second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    rois = straight[0]["rois"]
    assert set(np.unique(rois[:, 0])) <= {0.0, 1.0} and straight[0]["data"].shape[:2] == (2, 3)
    labels, targets = straight[0]["labels"], straight[0]["bbox_targets"]
    assert ((labels > 0) == targets.any(axis=1)).all()


def test_class_count_mismatch_names_the_lines(tmp_path):
    path = tmp_path / "train.prototxt"
    path.write_text(DATA_NET + '''
layer { name: "cls_score" type: "InnerProduct" bottom: "x" top: "cls_score"
        inner_product_param { num_output: 3 } }
layer { name: "bbox_pred" type: "InnerProduct" bottom: "x" top: "bbox_pred"
        inner_product_param { num_output: 12 } }
''')
    net_param = protoio.load_net(str(path))
    check_class_count(net_param, 3, str(path))
    with pytest.raises(fastrcnn.Error) as info:
        check_class_count(net_param, 6, str(path))
    message = str(info.value)
    assert "num_classes is 3, should be 6" in message and f"{path}:3" in message
    assert "layer 'cls_score' num_output is 3, should be 6" in message
    assert "layer 'bbox_pred' num_output is 12, should be 24" in message


SNAP_NET = '''
input: "x" input_shape { dim: 4 dim: 5 }
layer { name: "bbox_pred" type: "InnerProduct" bottom: "x" top: "bbox_pred"
        inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 1 }
                              bias_filler { type: "gaussian" std: 1 } } }
'''


def test_snapshot_unnormalises_bbox_pred_exactly_once(tmp_path):
    """The test net decoding saved weights gives what the training net gives with normalised targets."""
    net = fastrcnn.Net(protoio.net_from_string(SNAP_NET), "TRAIN")
    means = np.array([0, 0, 0, 0, 0.1, -0.2, 0.05, 0.3])
    stds = np.array([0, 0, 0, 0, 0.5, 0.7, 1.3, 0.9])
    x = np.random.default_rng(0).standard_normal((4, 5))
    normalised = net.forward(x=x)["bbox_pred"].copy()
    keep = [b.data.copy() for b in net.params["bbox_pred"]]
    BBoxSnapshots(net, means, stds, {"classes": ["a", "b"]})(str(tmp_path / "w.npz"), {"iter": 1})
    for blob, before in zip(net.params["bbox_pred"], keep):
        np.testing.assert_array_equal(blob.data, before)  # training values put back exactly
    test = fastrcnn.Net(protoio.net_from_string(SNAP_NET), "TEST", weights=str(tmp_path / "w.npz"))
    raw = test.forward(x=x)["bbox_pred"]
    np.testing.assert_allclose(raw, normalised * stds + means, rtol=1e-5, atol=1e-6)
    assert test.weights_meta["classes"] == ["a", "b"] and test.weights_meta["iter"] == 1
