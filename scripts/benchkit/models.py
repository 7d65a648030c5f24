"""The workloads: the models' nets with random weights, their images and proposals, the training minibatch,
the sizes of every row, and the FLOP counts and error measures the rows report."""
import math
from pathlib import Path

import numpy as np

from fastrcnn import protoio
from fastrcnn.net import Net
from fastrcnn.rcnn.compress import factorize
from fastrcnn.rcnn.config import Config
from fastrcnn.rcnn.detect import image_pyramid

ROOT = Path(__file__).resolve().parents[2]
MODELS = {"toy": "toy", "S": "CaffeNet", "M": "VGG_CNN_M_1024", "L": "VGG16"}
TRAIN_MODELS = ("toy", "S", "M")


class Sizes:
    """The workload sizes: the brief's full ones, or tiny ones for --quick."""

    def __init__(self, quick):
        self.quick = quick
        self.image = (96, 128) if quick else (600, 800)      # detection, trunk and training images
        self.toy_image = (96, 128) if quick else (288, 384)  # the toy net detects at scale 288
        self.memory_image = (96, 160) if quick else (600, 1000)
        self.rois = 64 if quick else 2000
        self.train_rois = 16 if quick else 128
        self.gemm = 512 if quick else 4096

    def image_for(self, model):
        return self.toy_image if model == "toy" else self.image


def prototxt(model, variant="test.prototxt"):
    return ROOT / "prototxt" / MODELS[model] / variant


def he_fill(net, seed):
    """Random weights that keep activations near unit scale: He-initialised convolutions and fully connected
    layers (std sqrt(2 / fan_in); the first one divided by 64, as its input is mean-subtracted pixels of about
    ±128) with small random biases; BatchNorm statistics of mean ~0 and variance ~1; Scale factors ~1."""
    rng = np.random.default_rng(seed)
    first = True
    for layer in net.layers:
        blobs = layer.blobs
        if not blobs:
            continue
        if layer.type == "BatchNorm":
            blobs[0].data[...] = 0.1 * rng.standard_normal(blobs[0].shape, dtype=np.float32)
            blobs[1].data[...] = rng.uniform(0.5, 1.5, blobs[1].shape).astype(np.float32)
            blobs[2].data[...] = 1
            continue
        if layer.type == "Scale":
            blobs[0].data[...] = rng.uniform(0.8, 1.2, blobs[0].shape).astype(np.float32)
        else:
            weight = blobs[0]
            weight.data[...] = rng.standard_normal(weight.shape, dtype=np.float32)
            weight.data *= np.float32(math.sqrt(2.0 / (weight.count // weight.shape[0])) / (64 if first else 1))
            first = False
        for bias in blobs[1:]:
            bias.data[...] = 0.01 * rng.standard_normal(bias.shape, dtype=np.float32)


def copy_params(source, target):
    """Copy every param of ``source`` into the layer of the same name in ``target`` (which may be a GPU net)."""
    for name, blobs in target.params.items():
        for mine, theirs in zip(blobs, source.params[name]):
            mine.data = theirs.data


def random_boxes(rng, count, height, width):
    """Proposal-like boxes inside the image, [x1, y1, x2, y2] float32, sides from 16 px to the whole image."""
    w = np.exp(rng.uniform(np.log(16), np.log(width), count))
    h = np.exp(rng.uniform(np.log(16), np.log(height), count))
    x1 = rng.uniform(0, width - w)
    y1 = rng.uniform(0, height - h)
    return np.column_stack([x1, y1, x1 + w - 1, y1 + h - 1]).astype(np.float32)


def random_image(rng, height, width):
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def detect_config(height, width):
    """The TEST config of a detection at the image's own size, without RoI de-duplication."""
    cfg = Config()
    cfg.DEDUP_BOXES = 0.0
    cfg.TEST.SCALES = (min(height, width),)
    cfg.TEST.MAX_SIZE = max(height, width)
    return cfg


def conv_flops(net, lo=0, hi=None):
    """2 × multiply-adds of the Convolution and InnerProduct layers lo..hi (current blob shapes)."""
    total = 0
    for layer in net.layers[lo:None if hi is None else hi + 1]:
        if layer.type in ("Convolution", "InnerProduct"):
            top = net.blobs[layer.param.top[0]]
            total += 2 * top.count * (layer.blobs[0].count // layer.num_output)
    return total


def train_flops(net):
    """Forward plus backward FLOPs of a training iteration: a learnable layer's weight gradient costs its
    forward again, and so does its input gradient where a learnable layer lies below it."""
    total, below = 0, False
    for layer in net.layers:
        if layer.type in ("Convolution", "InnerProduct"):
            top = net.blobs[layer.param.top[0]]
            flops = 2 * top.count * (layer.blobs[0].count // layer.num_output)
            learnable = bool(layer.param_propagate_down and layer.param_propagate_down[0])
            total += flops * (1 + learnable + below)
            below = below or learnable
    return total


def roi_compares(rois, pooled, scale, channels, height, width):
    """The number of max operations RoI pooling does: Σ over bins of the bin area, times the channels."""
    coords = np.asarray(rois, np.float32)[:, 1:5] * np.float32(scale)
    start_x, start_y, end_x, end_y = (np.sign(coords) * np.floor(np.abs(coords.astype(np.float64)) + 0.5)).T
    total = np.zeros(len(rois))
    for start, end, bins, size, axis in ((start_y, end_y, pooled[0], height, 0), (start_x, end_x, pooled[1], width, 1)):
        extent = np.maximum(end - start + 1, 1).astype(np.float32)
        step = extent / np.float32(bins)
        p = np.arange(bins, dtype=np.float32)
        lo = np.clip(np.floor(p * step[:, None]) + start[:, None], 0, size)
        hi = np.clip(np.ceil((p + 1) * step[:, None]) + start[:, None], 0, size)
        span = np.maximum(hi - lo, 0).sum(axis=1)
        total = span if axis == 0 else total * span
    return int(total.sum()) * channels


class Model:
    """One model's test net with He weights, its image, proposals and the derived inputs of every row."""

    def __init__(self, name, sizes, seed=0):
        self.name = name
        self.sizes = sizes
        self.height, self.width = sizes.image_for(name)
        self.net = Net(str(prototxt(name)), "TEST")
        he_fill(self.net, seed)
        rng = np.random.default_rng(seed + 1)
        self.image = random_image(rng, self.height, self.width)
        self.boxes = random_boxes(rng, sizes.rois, self.height, self.width)
        self.cfg = detect_config(self.height, self.width)
        self.data, _ = image_pyramid(self.image, self.cfg)
        self.roi_index = next(i for i, layer in enumerate(self.net.layers) if layer.type == "ROIPooling")
        roi_layer = self.net.layers[self.roi_index]
        self.roi_name = self.net.layer_names[self.roi_index]
        self.trunk_end = self.net.layer_names[self.roi_index - 1]
        self.head_start = self.net.layer_names[self.roi_index + 1]
        self.features = roi_layer.param.bottom[0]
        self.pooled_blob = roi_layer.param.top[0]
        p = roi_layer.param.roi_pooling_param
        self.pooled = (p.pooled_h, p.pooled_w)
        self.spatial_scale = p.spatial_scale
        self.rois = np.column_stack([np.zeros(len(self.boxes), np.float32), self.boxes])

    def forward_all(self):
        """One forward of the whole net (shapes every blob; the conv5 map and pool5 come from it)."""
        return self.net.forward(data=self.data, rois=self.rois)

    def svd_net(self, factorise=None):
        """The compressed test net (None for toy, which has none): the other layers' weights are ours, fc6 and
        fc7 factorised by fastrcnn.rcnn.compress.factorize at the ranks its prototxt gives. --quick (and
        ``factorise=False``) uses random factors instead: the float64 SVD of S's fc6 alone takes about a
        minute, and the time of a forward does not depend on the values."""
        factorise = not self.sizes.quick if factorise is None else factorise
        path = prototxt(self.name, "compressed/test.prototxt")
        if not path.exists():
            return None
        net = Net(str(path), "TEST")
        he_fill(net, 1)
        for name, blobs in net.params.items():
            if name.endswith("_U") and factorise:
                base = name[:-2]
                lower, upper, _ = factorize(self.net.params[base][0].data, net.params[name][0].shape[1])
                net.params[base + "_L"][0].data[...] = lower
                blobs[0].data[...] = upper
                blobs[1].data[...] = self.net.params[base][1].data
            elif name in self.net.params:
                for mine, theirs in zip(blobs, self.net.params[name]):
                    mine.data[...] = theirs.data
        return net


def train_net(model, sizes, phase="TRAIN"):
    """(the train net with its data layer replaced by Input blobs, its NetParameter, the inputs)."""
    net_param = protoio.load_net(str(prototxt(model, "train.prototxt")))
    data = net_param.layer[0]
    tops = list(data.top)
    inputs = train_inputs(model, net_param, sizes)
    data.Clear()
    data.name, data.type = "data", "Input"
    data.top.extend(tops)
    for top in tops:
        data.input_param.shape.add(dim=inputs[top].shape)
    return Net(net_param, phase), net_param, inputs


def train_inputs(model, net_param, sizes, seed=3):
    """Two images and a minibatch of RoIs (a quarter foreground), labels and box targets, as the data layer's."""
    rng = np.random.default_rng(seed)
    height, width = sizes.image_for(model)
    cfg = detect_config(height, width)
    data = np.concatenate([image_pyramid(random_image(rng, height, width), cfg)[0] for _ in range(2)])
    count = sizes.train_rois
    classes = next(lp.inner_product_param.num_output for lp in net_param.layer if lp.name == "cls_score")
    boxes = random_boxes(rng, count, height, width)
    batch = (np.arange(count) >= count // 2).astype(np.float32)
    labels = np.where(np.arange(count) % 4 == 0, rng.integers(1, classes, count), 0).astype(np.float32)
    targets = rng.standard_normal((count, 4 * classes)).astype(np.float32)
    weights = np.zeros_like(targets)
    for i in np.flatnonzero(labels):
        weights[i, 4 * int(labels[i]):4 * int(labels[i]) + 4] = 1
    return {"data": data, "rois": np.column_stack([batch, boxes]), "labels": labels,
            "bbox_targets": targets, "bbox_loss_weights": weights}


def norm_error(value, reference):
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    return float(np.linalg.norm(value - reference) / max(np.linalg.norm(reference), 1e-30))


def relative_error(value, reference):
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    if value.shape != reference.shape:
        return float("inf")
    return float(np.abs(value - reference).max() / max(np.abs(reference).max(), 1e-30))


