#!/usr/bin/env python3
"""Benchmark of the fastrcnn engine, with PyTorch and OpenCV dnn twins running the same computation.

Rows, each the median of --runs calls after a warm-up (of more where --runs calls would take under
MIN_SECONDS), with the GFLOP/s achieved (2 × the multiply-adds of the Convolution and InnerProduct layers,
counted from the layer shapes) and the ratio fastrcnn time / twin time:

  gemm        a large float32 matrix product: the machine's GEMM rate, the yardstick for the rest
  trunk       the convolution trunk (the data up to the last layer before RoI pooling), 600×800 image
  roi         RoI pooling of 2000 RoIs on the model's conv5 map (forward); roi-train: 128 RoIs, forward +
              backward (its rate counts one max per pooled input element)
  head        fc6, fc7, cls_score, bbox_pred and the softmax for 2000 RoIs
  detect      im_detect on a 600×800 image with 2000 proposals (random boxes, drawn deterministically; dedup
              off); detect-svd: the same through the model's compressed/test.prototxt, whose fc6 and fc7 are
              factorised with fastrcnn.rcnn.compress.factorize
  train       one training iteration, forward + backward (2 images, 128 RoIs, the original's frozen layers;
              the train net with its data layer replaced by Input blobs), for toy, S and M
  export      S only: frcnn-export's work (the ONNX graph built, checked by onnx, serialised; one run), and
  ort-detect  the detect row's im_detect with onnxruntime running that graph (its column: onnxruntime)
  memory      peak resident memory of one detection at 600×1000 with 2000 proposals, each implementation in
              a fresh process

Twins, in the same process and with the same thread count: PyTorch (the same layers as torch.nn.functional
calls, weights copied from our net; RoI pooling as a loop over RoIs, each window cropped as the original
rounds it from a −inf-bordered map and adaptive max pooled; no CPU torchvision exists) and OpenCV dnn
(cv2.dnn.readNetFromCaffe on the same prototxt and a .caffemodel written by fastrcnn.weights.save_weights; its
Caffe importer ignores LRN's k, so M runs there with k: 1). Every twin's output is checked once against ours
(relative error max|twin − ours| / max|ours|), so that the rows compare the same computation. --isa avx2
caps every implementation at the same vector width (OpenBLAS's Haswell kernels, PyTorch's and oneDNN's
AVX2 paths, OpenCV without AVX-512): an AVX2 machine's comparison on an AVX-512 one, and the default where
OPENBLAS_CORETYPE already pins OpenBLAS to AVX2 kernels.

    python scripts/bench.py                       # toy, S, M, L on the CPU, 3 runs; writes bench.json
    python scripts/bench.py --models S --runs 5 --threads 1 --json s.json
    python scripts/bench.py --quick               # tiny sizes, 1 run (CI)
"""
import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"toy": "toy", "S": "CaffeNet", "M": "VGG_CNN_M_1024", "L": "VGG16"}
TRAIN_MODELS = ("toy", "S", "M")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
#: OpenBLAS kernels that use AVX2 at most: a pin to one of them (OPENBLAS_CORETYPE) stands for an AVX2 machine.
AVX2_OPENBLAS_CORES = ("haswell", "zen", "skylake", "sandybridge", "excavator")
#: What caps every implementation at AVX2 (read when each library loads): OpenBLAS, PyTorch's own kernels,
#: its oneDNN convolutions and MKL GEMM, OpenCV's dispatch.
AVX2_ONLY = {"OPENBLAS_CORETYPE": "Haswell", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "OPENCV_CPU_DISABLE": "AVX512F,AVX512-COMMON,AVX512-SKX,AVX512-CNL,AVX512-CLX,AVX512-ICL"}


def openblas_pinned_to_avx2():
    return os.environ.get("OPENBLAS_CORETYPE", "").lower() in AVX2_OPENBLAS_CORES


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--models", default=None,
                        help="comma-separated subset of toy,S,M,L (default: all; toy,S with --quick)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per row (default 3; 1 with --quick)")
    parser.add_argument("--json", default="bench.json", help="where to write every number (default bench.json)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and 1 run, for CI")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="threads for every implementation (default: all cores)")
    parser.add_argument("--isa", choices=("auto", "native", "avx2"), default="auto",
                        help="vector instructions every implementation may use: avx2 caps NumPy's OpenBLAS, "
                             "PyTorch and OpenCV at AVX2 (an AVX2 machine's speeds on an AVX-512 one); auto "
                             "(default): avx2 where OPENBLAS_CORETYPE already pins OpenBLAS to an AVX2 kernel, "
                             "so that the twins do not use wider vectors than ours, native otherwise")
    args = parser.parse_args(argv)
    if args.isa == "auto":
        args.isa = "avx2" if openblas_pinned_to_avx2() else "native"
    names = args.models or ("toy,S" if args.quick else ",".join(MODELS))
    args.models = [m.strip() for m in names.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"--models: unknown model(s) {', '.join(unknown) or '(none given)'}; "
                     f"choose from {', '.join(MODELS)}")
    args.runs = args.runs if args.runs is not None else (1 if args.quick else 3)
    if args.runs < 1 or args.threads < 1:
        parser.error("--runs and --threads must be at least 1")
    return args


if __name__ == "__main__":
    # BLAS reads its thread count when it loads: set it before NumPy is imported (spawned children inherit it).
    ARGS = parse_args(sys.argv[1:])
    for _variable in _THREAD_VARIABLES:
        os.environ[_variable] = str(ARGS.threads)
    if ARGS.isa == "avx2":
        for _variable, _value in AVX2_ONLY.items():
            if _variable != "OPENBLAS_CORETYPE" or not openblas_pinned_to_avx2():  # keep an AVX2 pin of OpenBLAS
                os.environ[_variable] = _value
    sys.path.insert(0, str(ROOT))
    from fastrcnn.cpu import tune_cpu
    tune_cpu()  # as the commands: OpenBLAS's kernel for CPUs it misdetects (before NumPy loads it), malloc

import gc  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402

import numpy as np  # noqa: E402
from google.protobuf import text_format  # noqa: E402

from fastrcnn import protoio  # noqa: E402
from fastrcnn.cpu import retain_freed_memory  # noqa: E402
from fastrcnn.net import Net  # noqa: E402
from fastrcnn.rcnn.compress import factorize  # noqa: E402
from fastrcnn.rcnn.config import Config  # noqa: E402
from fastrcnn.rcnn.detect import im_detect, image_pyramid  # noqa: E402
from fastrcnn.weights import save_weights  # noqa: E402


# ------------------------------------------------------------------------------------------- settings
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


# ------------------------------------------------------------------------------------------- machine
def machine_info(threads):
    info = {"platform": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count(),
            "threads": threads, "cpu": platform.processor(), "numpy": np.__version__,
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "(OpenBLAS's own choice)"),
            # idempotent: true where tune_cpu made glibc keep freed memory (for every implementation)
            "malloc_keeps_freed_memory": retain_freed_memory()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = {k: blas.get(k) for k in ("name", "version", "openblas configuration")}
    except (TypeError, KeyError):
        info["blas"] = None
    torch, cv2 = optional_torch(), optional_cv2()
    info["torch"] = torch.__version__ if torch else None
    info["cv2"] = cv2.__version__ if cv2 else None
    return info


def optional_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def optional_cv2():
    try:
        import cv2
    except ImportError:
        return None
    return cv2 if hasattr(getattr(cv2, "dnn", None), "readNetFromCaffe") else None


def set_threads(threads, libraries=("torch", "cv2")):
    """The thread count of the libraries configured after import (BLAS took it from the environment)."""
    torch = optional_torch() if "torch" in libraries else None
    cv2 = optional_cv2() if "cv2" in libraries else None
    if torch:
        torch.set_num_threads(threads)
    if cv2:
        cv2.setNumThreads(threads)


# ------------------------------------------------------------------------------------------- workloads
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
    """Copy every param of ``source`` into the layer of the same name in ``target``."""
    for name, blobs in target.params.items():
        for mine, theirs in zip(blobs, source.params[name]):
            mine.data[...] = theirs.data


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

    def svd_net(self):
        """The compressed test net (None for toy, which has none): the other layers' weights are ours, fc6 and
        fc7 factorised by fastrcnn.rcnn.compress.factorize at the ranks its prototxt gives. --quick uses
        random factors instead: the float64 SVD of S's fc6 alone takes about a minute."""
        path = prototxt(self.name, "compressed/test.prototxt")
        if not path.exists():
            return None
        net = Net(str(path), "TEST")
        he_fill(net, 1)
        for name, blobs in net.params.items():
            if name.endswith("_U") and not self.sizes.quick:
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


# ------------------------------------------------------------------------------------------- PyTorch twin
def torch_roi_pool(torch, features, rois, pooled, scale):
    """RoI max pooling in PyTorch: each RoI's window, rounded as the original (C round of x·scale, at least
    1 px), is cropped from a −inf-bordered map and adaptive max pooled into ``pooled`` bins; bins wholly
    outside the map give 0. Adaptive pooling's integer bin edges equal the original's float32 ones for the
    window sizes of these maps (they first differ at 57 px for 7 bins)."""
    functional = torch.nn.functional
    coords = np.asarray(rois, np.float32)[:, 1:5] * np.float32(scale)
    x1, y1, x2, y2 = (np.sign(coords) * np.floor(np.abs(coords.astype(np.float64)) + 0.5)).astype(np.int64).T
    width, height = np.maximum(x2 - x1 + 1, 1), np.maximum(y2 - y1 + 1, 1)
    batch = np.trunc(np.asarray(rois)[:, 0]).astype(np.int64)
    size_h, size_w = features.shape[2:]
    before = int(max(0, -x1.min(initial=0), -y1.min(initial=0)))
    after = int(max(0, (x1 + width).max(initial=0) - size_w, (y1 + height).max(initial=0) - size_h))
    padded = functional.pad(features, (before, after, before, after), value=-math.inf)
    crops = [functional.adaptive_max_pool2d(padded[b, :, y + before:y + before + h, x + before:x + before + w],
                                            pooled)
             for b, x, y, w, h in zip(batch.tolist(), x1.tolist(), y1.tolist(), width.tolist(), height.tolist())]
    out = torch.stack(crops) if crops else features.new_zeros((0, features.shape[1]) + tuple(pooled))
    return out.masked_fill(out == -math.inf, 0)


class TorchTwin:
    """Our net's layers as torch.nn.functional calls on copies of its weights, run in the net's layer order
    over the same blob names (Split layers alias their bottom).

    ``train``: dropout is applied and the weights of layers with lr_mult ≠ 0 require gradients.
    ``channels_last``: convolutions run on NHWC tensors (PyTorch's faster CPU layout here).
    """

    def __init__(self, torch, net, train=False, channels_last=True):
        self.torch, self.train = torch, train
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.layers = []
        for name, layer in zip(net.layer_names, net.layers):
            params = [torch.tensor(blob.data) for blob in layer.blobs]
            if layer.type == "Convolution" and params:
                params[0] = params[0].contiguous(memory_format=self.format)
            for tensor, learn in zip(params, layer.param_propagate_down or []):
                tensor.requires_grad_(bool(train and learn))
            self.layers.append((name, layer, params))
        self.names = [name for name, _, _ in self.layers]

    def parameters(self):
        return [p for _, _, params in self.layers for p in params if p.requires_grad]

    def forward(self, inputs, start=None, end=None):
        """{blob: tensor} after running layers start..end (names, inclusive) from the given input arrays."""
        torch = self.torch
        blobs = {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
                 for k, v in inputs.items()}
        lo = self.names.index(start) if start else 0
        hi = self.names.index(end) if end else len(self.layers) - 1
        for name, layer, params in self.layers[lo:hi + 1]:
            bottoms = [blobs[b] for b in layer.param.bottom]
            tops = self._run(layer, params, bottoms)
            blobs.update(zip(layer.param.top, tops))
        return blobs

    def _run(self, layer, params, bottoms):
        functional, kind, p = self.torch.nn.functional, layer.type, layer.param
        x = bottoms[0] if bottoms else None
        if kind == "Input":
            return []
        if kind == "Split":
            return [x] * len(p.top)
        if kind == "Convolution":
            x = x.contiguous(memory_format=self.format)
            return [functional.conv2d(x, params[0], params[1] if layer.bias_term else None, layer.stride,
                                      layer.pad, layer.dilation, layer.group)]
        if kind == "ReLU":
            if layer.slope:
                return [functional.leaky_relu(x, layer.slope, inplace=not self.train)]
            return [functional.relu(x, inplace=True)]
        if kind == "Pooling":
            if layer.global_pooling:
                raise NotImplementedError(f"layer '{layer.name}': global pooling has no twin here")
            pool = functional.max_pool2d if layer.max else functional.avg_pool2d
            return [pool(x, layer.kernel, layer.stride, layer.pad, ceil_mode=layer.ceil)]
        if kind == "BatchNorm":
            bn = p.batch_norm_param  # as ours: global statistics by default in TEST, batch ones in TRAIN
            if bn.use_global_stats if bn.HasField("use_global_stats") else not self.train:
                count = params[2].item()
                factor = 1.0 / count if count else 0.0
                return [functional.batch_norm(x, params[0] * factor, params[1] * factor, training=False,
                                              eps=layer.eps)]
            return [functional.batch_norm(x, None, None, training=True, eps=layer.eps)]
        if kind in ("Scale", "Bias") and len(bottoms) == 1 and params[0].dim() == 1:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = x * params[0].view(shape) if kind == "Scale" else x + params[0].view(shape)
            return [y + params[1].view(shape) if kind == "Scale" and layer.bias_term else y]
        if kind == "LRN":
            if layer.axes != (1,):
                raise NotImplementedError(f"layer '{layer.name}': WITHIN_CHANNEL LRN has no twin here")
            return [functional.local_response_norm(x, layer.size, layer.alpha, layer.beta, layer.k)]
        if kind == "ROIPooling":
            return [torch_roi_pool(self.torch, x, bottoms[1].numpy(), (layer.pooled_h, layer.pooled_w),
                                   layer.spatial_scale)]
        if kind == "InnerProduct":
            weight = params[0].t() if layer.transpose else params[0]
            flat = x.reshape(x.shape[:layer.axis] + (-1,))
            return [functional.linear(flat, weight, params[1] if layer.bias_term else None)]
        if kind == "Dropout":
            return [functional.dropout(x, layer.ratio, training=self.train)]
        if kind == "Softmax":
            return [functional.softmax(x, dim=p.softmax_param.axis)]
        if kind == "SoftmaxWithLoss":
            return [functional.cross_entropy(x, bottoms[1].long())]
        if kind == "SmoothL1Loss":
            d = (x - bottoms[1]) * bottoms[2]
            quadratic = d.abs() < 1.0 / layer.sigma2
            f = self.torch.where(quadratic, 0.5 * layer.sigma2 * d * d, d.abs() - 0.5 / layer.sigma2)
            return [f.sum() / x.shape[0]]
        raise NotImplementedError(f"layer '{layer.name}': type {kind} has no PyTorch twin here")


# ------------------------------------------------------------------------------------------- OpenCV twin
def opencv_prototxt(model, directory, trunk_end=None):
    """A copy of the model's test prototxt for OpenCV: LRN k set to 1 (its importer ignores k), and with
    ``trunk_end`` only the layers up to it and the 'data' input."""
    net_param = protoio.load_net(str(prototxt(model)))
    for lp in net_param.layer:
        if lp.type == "LRN":
            lp.lrn_param.k = 1.0
    if trunk_end is not None:
        names = [lp.name for lp in net_param.layer]
        del net_param.layer[names.index(trunk_end) + 1:]
        keep = [i for i, name in enumerate(net_param.input) if name == "data"]
        shapes = [net_param.input_shape[i] for i in keep]
        del net_param.input[:]
        net_param.input.append("data")
        kept_shapes = [type(shapes[0])(dim=list(s.dim)) for s in shapes]
        del net_param.input_shape[:]
        net_param.input_shape.extend(kept_shapes)
    path = Path(directory) / f"{model}_{'trunk' if trunk_end else 'test'}.prototxt"
    path.write_text(text_format.MessageToString(net_param))
    return path, net_param


def last_writer(net_param, blob):
    """OpenCV names outputs by layer: the last layer writing ``blob`` (in-place layers write it again)."""
    return [lp.name for lp in net_param.layer if blob in lp.top][-1]


def opencv_net(cv2, path, weights):
    net = cv2.dnn.readNetFromCaffe(str(path), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return net


class NetAdapter:
    """What im_detect uses of a Net (blob names, forward of data and rois), over another implementation."""

    def __init__(self, name, forward):
        self.name = name
        self.inputs = ["data", "rois"]
        self.blobs = dict.fromkeys(("data", "rois", "cls_prob", "bbox_pred"))
        self._forward = forward

    def forward(self, blobs=None, data=None, rois=None):
        return self._forward(data, rois)


# ------------------------------------------------------------------------------------------- timing
#: A row's implementation repeats its timed calls until they add up to this many seconds (at least --runs of
#: them): the median of three 10-ms calls on a shared machine says little. 0 with --quick.
MIN_SECONDS = 1.0


def time_runs(fn, runs, warmup=True, min_seconds=0.0):
    """Seconds of each of ``runs`` calls of fn, after one untimed call; more calls where the warm-up call says
    that ``runs`` of them would take less than ``min_seconds``."""
    if warmup:
        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
        if once * runs < min_seconds:
            runs = math.ceil(min_seconds / max(once, 1e-6))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


class Row:
    """One benchmark row: per implementation its times, rate and check against ours."""

    def __init__(self, kind, model, workload, flops, unit="GFLOP/s"):
        self.data = {"row": kind, "model": model, "workload": workload, "flops": flops, "unit": unit,
                     "results": {}, "notes": []}

    def add(self, impl, times, check=None):
        median = statistics.median(times)
        result = {"median_s": median, "times_s": times,
                  "rate": self.data["flops"] / median / 1e9 if self.data["flops"] else None}
        if check is not None:
            result["check_rel_error"] = check
        self.data["results"][impl] = result

    def note(self, text):
        self.data["notes"].append(text)

    def finish(self):
        results = self.data["results"]
        ours = results.get("fastrcnn")
        for impl, result in results.items():
            if impl != "fastrcnn" and ours:
                result["ratio"] = ours["median_s"] / result["median_s"]
        return self.data


# ------------------------------------------------------------------------------------------- the rows
class Bench:
    def __init__(self, args, sizes, workdir):
        self.args, self.sizes, self.workdir = args, sizes, Path(workdir)
        self.torch, self.cv2 = optional_torch(), optional_cv2()
        self.rows, self.notes = [], []
        self.start = time.perf_counter()
        if not self.torch:
            self.notes.append("PyTorch is not installed (pip install '.[bench]'): its columns are skipped")
        if not self.cv2:
            self.notes.append("OpenCV dnn (cv2.dnn.readNetFromCaffe, OpenCV 4) is missing: its columns are skipped")

    def log(self, text):
        print(f"[{time.perf_counter() - self.start:6.1f}s] {text}", file=sys.stderr, flush=True)

    def time(self, fn):
        """time_runs with --runs, repeated up to MIN_SECONDS except with --quick."""
        return time_runs(fn, self.args.runs, min_seconds=0.0 if self.args.quick else MIN_SECONDS)

    def record(self, row):
        data = row.finish()
        self.rows.append(data)
        self.log(format_row(data))

    # -- gemm --
    def gemm(self, kind="gemm"):
        """NumPy's BLAS on one large product, the rate the GEMM-bound rows aim at; measured first and again
        last ("gemm-end"), as a check that the machine ran at one speed throughout."""
        n = self.sizes.gemm
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
        c = np.empty_like(a)
        row = Row(kind, "-", f"{n}x{n}x{n} float32", 2 * n ** 3)
        row.add("fastrcnn", self.time(lambda: np.matmul(a, b, out=c)))
        if self.torch:
            ta, tb = self.torch.from_numpy(a), self.torch.from_numpy(b)
            with self.torch.inference_mode():
                row.add("torch", self.time(lambda: self.torch.mm(ta, tb)))
        self.record(row)

    # -- one model --
    def model_rows(self, name):
        self.log(f"== {name} ({MODELS[name]})")
        model = Model(name, self.sizes)
        model.forward_all()
        twin = TorchTwin(self.torch, model.net) if self.torch else None
        weights = None
        if self.cv2:
            weights = self.workdir / f"{name}.caffemodel"
            save_weights(model.net, str(weights))
        self.trunk(model, twin, weights)
        self.roi(model)
        self.head(model, twin)
        self.detect(model, twin, weights)
        svd = model.svd_net()
        if svd is not None:
            self.detect(model, TorchTwin(self.torch, svd) if self.torch else None, None, svd)
        del svd, twin
        gc.collect()
        if name == "S":
            self.onnx(model)
        if name in TRAIN_MODELS:
            self.train(name)
        return model

    def trunk(self, model, twin, weights):
        net = model.net
        h, w = model.data.shape[2:]
        row = Row("trunk", model.name, f"{h}x{w}", conv_flops(net, 0, model.roi_index - 1))
        ours = lambda: net.forward(blobs=[model.features], data=model.data, end=model.trunk_end)  # noqa: E731
        reference = np.array(ours()[model.features], copy=True)
        row.add("fastrcnn", self.time(ours))
        if twin:
            with self.torch.inference_mode():
                run = lambda: twin.forward({"data": model.data}, end=model.trunk_end)[model.features]  # noqa: E731
                row.add("torch", self.time(run), relative_error(run().numpy(), reference))
        if weights:
            path, net_param = opencv_prototxt(model.name, self.workdir, model.trunk_end)
            cv_net = opencv_net(self.cv2, path, weights)
            output = last_writer(net_param, model.features)

            def run():
                cv_net.setInput(model.data, "data")
                return cv_net.forward(output)
            check = relative_error(run(), reference) if model.name != "M" else None
            row.add("opencv", self.time(run), check)
            if model.name == "M":
                row.note("OpenCV runs M's LRN with k = 1 (its importer ignores k): not compared")
        self.record(row)

    def roi(self, model):
        """RoI pooling alone, in a net of its own: 2000 RoIs forward, and 128 forward + backward."""
        feature_map = np.array(model.net.blobs[model.features].data, copy=True)
        _, channels, height, width = feature_map.shape
        layer = model.net.layers[model.roi_index].param
        pooling = text_format.MessageToString(layer.roi_pooling_param, as_one_line=True)
        text = (f'name: "roi" force_backward: true input: "features" input_shape {{ dim: 1 dim: {channels} '
                f'dim: {height} dim: {width} }} input: "rois" input_shape {{ dim: 1 dim: 5 }} '
                f'layer {{ name: "roi_pool" type: "ROIPooling" bottom: "features" bottom: "rois" top: "pooled" '
                f'roi_pooling_param {{ {pooling} }} }}')
        net = Net(protoio.net_from_string(text), "TRAIN")
        rng = np.random.default_rng(5)
        for kind, count, train in (("roi", self.sizes.rois, False), ("roi-train", self.sizes.train_rois, True)):
            rois = model.rois[:count]
            compares = roi_compares(rois, model.pooled, model.spatial_scale, channels, height, width)
            row = Row(kind, model.name, f"{count} RoIs on {channels}x{height}x{width}",
                      compares, unit="Gop/s")
            diff = rng.standard_normal((count, channels) + model.pooled).astype(np.float32)

            def ours():
                out = net.forward(features=feature_map, rois=rois)["pooled"]
                if train:
                    return out, net.backward(pooled=diff)["features"]
                return out, None
            reference = [np.array(a, copy=True) if a is not None else None for a in ours()]
            row.add("fastrcnn", self.time(ours))
            if self.torch:
                torch = self.torch
                features = torch.from_numpy(feature_map)

                def run():
                    x = features.detach().requires_grad_(train)
                    out = torch_roi_pool(torch, x, rois, model.pooled, model.spatial_scale)
                    if train:
                        out.backward(torch.from_numpy(diff))
                        return out.detach(), x.grad
                    return out, None
                with torch.inference_mode(not train):
                    out, grad = run()
                    check = relative_error(out.numpy(), reference[0])
                    if train:
                        check = max(check, relative_error(grad.numpy(), reference[1]))
                    row.add("torch", self.time(run), check)
            row.note("rate: one max per pooled input element (backward not counted)")
            self.record(row)

    def head(self, model, twin):
        net = model.net
        pooled = np.array(net.blobs[model.pooled_blob].data, copy=True)
        row = Row("head", model.name, f"{len(pooled)} RoIs", conv_flops(net, model.roi_index + 1))
        outputs = ("cls_prob", "bbox_pred")

        def ours():
            return net.forward(start=model.head_start)
        net.blobs[model.pooled_blob].data[...] = pooled
        reference = {k: np.array(v, copy=True) for k, v in ours().items()}
        row.add("fastrcnn", self.time(ours))
        if twin:
            tensor = self.torch.from_numpy(pooled)
            with self.torch.inference_mode():
                run = lambda: twin.forward({model.pooled_blob: tensor}, start=model.head_start)  # noqa: E731
                out = run()
                check = max(relative_error(out[k].numpy(), reference[k]) for k in outputs)
                row.add("torch", self.time(run), check)
        self.record(row)

    def detect(self, model, twin, weights, svd=None):
        net = svd or model.net
        def ours():
            return im_detect(net, model.image, model.boxes, model.cfg)
        reference = ours()
        row = Row("detect-svd" if svd is not None else "detect", model.name,
                  f"{model.height}x{model.width}, {len(model.boxes)} proposals", conv_flops(net))
        row.add("fastrcnn", self.time(ours))
        if twin:
            torch = self.torch

            def forward(data, rois):
                out = twin.forward({"data": data, "rois": rois})
                return {k: out[k].numpy() for k in ("cls_prob", "bbox_pred")}
            adapter = NetAdapter(f"{model.name} (PyTorch)", forward)
            with torch.inference_mode():
                run = lambda: im_detect(adapter, model.image, model.boxes, model.cfg)  # noqa: E731
                check = max(map(relative_error, run(), reference))
                row.add("torch", self.time(run), check)
        if weights:
            self.detect_opencv(model, weights, row, reference)
        self.record(row)

    def onnx(self, model):
        """The export row and the ort-detect row (ratio: native im_detect time / onnxruntime's)."""
        try:
            import onnxruntime  # noqa: F401
            from fastrcnn.onnx_export import OnnxNet, build_model
        except ImportError:
            self.notes.append("onnx or onnxruntime is missing (pip install '.[onnx]'): the ONNX rows are skipped")
            return
        path = self.workdir / f"{model.name}.onnx"
        row = Row("export", model.name, "build, check, serialise", 0)
        row.add("fastrcnn", time_runs(lambda: path.write_bytes(build_model(model.net).SerializeToString()), 1,
                                      warmup=False))
        self.record(row)
        exported = OnnxNet(path, threads=self.args.threads)
        row = Row("ort-detect", model.name, f"{model.height}x{model.width}, {len(model.boxes)} proposals",
                  conv_flops(model.net))
        reference = im_detect(model.net, model.image, model.boxes, model.cfg)
        row.add("fastrcnn", self.time(lambda: im_detect(model.net, model.image, model.boxes, model.cfg)))
        run = lambda: im_detect(exported, model.image, model.boxes, model.cfg)  # noqa: E731
        row.add("onnxruntime", self.time(run), max(map(relative_error, run(), reference)))
        self.record(row)

    def detect_opencv(self, model, weights, row, reference):
        path, net_param = opencv_prototxt(model.name, self.workdir)
        cv_net = opencv_net(self.cv2, path, weights)
        outputs = [last_writer(net_param, b) for b in ("cls_prob", "bbox_pred")]

        def forward(data, rois):
            cv_net.setInput(data, "data")
            cv_net.setInput(rois, "rois")
            return dict(zip(("cls_prob", "bbox_pred"), cv_net.forward(outputs)))
        adapter = NetAdapter(f"{model.name} (OpenCV)", forward)
        # one untimed call with a few RoIs sets its layers up; the 2000-RoI detection itself runs once
        im_detect(adapter, model.image, model.boxes[:8], model.cfg)
        result = []
        times = time_runs(lambda: result.append(im_detect(adapter, model.image, model.boxes, model.cfg)), 1,
                          warmup=False)
        check = None
        if model.name == "M":
            row.note("OpenCV runs M's LRN with k = 1 (its importer ignores k): checked against our net with k = 1")
            k1 = Net(str(path), "TEST")
            copy_params(model.net, k1)
            reference = im_detect(k1, model.image, model.boxes, model.cfg)
            del k1
        check = max(map(relative_error, result[0], reference))
        row.add("opencv", times, check)
        row.note("OpenCV: 1 timed run (slow with many RoIs), after a warm-up with 8 RoIs")

    def train(self, name):
        net, net_param, inputs = train_net(name, self.sizes)
        he_fill(net, 0)
        net.forward(**inputs)
        h, w = inputs["data"].shape[2:]
        row = Row("train", name, f"2x{h}x{w}, {self.sizes.train_rois} RoIs", train_flops(net))

        def ours():
            net.clear_param_diffs()
            net.forward(**inputs)
            net.backward()
        row.add("fastrcnn", self.time(ours))
        if self.torch:
            torch = self.torch
            twin = TorchTwin(torch, net, train=True)
            params = twin.parameters()
            loss_tops = [(lp.top[0], lp.loss_weight[0] if lp.loss_weight else 1.0)
                         for lp in net_param.layer if lp.type in ("SoftmaxWithLoss", "SmoothL1Loss")]
            tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}

            def run():
                for p in params:
                    p.grad = None
                out = twin.forward(tensors)
                loss = sum(w * out[top] for top, w in loss_tops)
                loss.backward()
                return loss
            check = self.check_train(name, net, inputs, twin, run)
            row.add("torch", self.time(run), check)
            row.note("checked with dropout off: the loss, and every parameter gradient norm-wise")
        row.note("one iteration: forward + backward, no parameter update")
        self.record(row)

    def check_train(self, name, net, inputs, twin, run):
        """Loss and gradients of the twin against our train net in TEST phase (dropout off). Gradients are
        compared norm-wise, ‖twin − ours‖ / ‖ours‖: a near-tie in a max pooling window, decided differently
        by float32 rounding, sends single elements elsewhere."""
        check_net, _, _ = train_net(name, self.sizes, "TEST")
        copy_params(net, check_net)
        check_net.clear_param_diffs()
        check_net.forward(**inputs)
        loss = float(check_net.loss())
        check_net.backward()
        twin.train = False
        twin_loss = run().item()
        twin.train = True
        errors = [relative_error(twin_loss, loss)]
        for name, _, params in twin.layers:
            for tensor, blob in zip(params, check_net.params.get(name, [])):
                if tensor.requires_grad:
                    errors.append(norm_error(tensor.grad.numpy(), blob.diff))
        return max(errors)

    # -- memory --
    def memory(self, name):
        height, width = self.sizes.memory_image
        row = {"row": "memory", "model": name, "workload": f"detection {height}x{width}, {self.sizes.rois} "
               "proposals", "peak_rss_mib": {}, "baseline_rss_mib": {}, "notes": [
                   "VmHWM of a fresh spawned process running one detection, its peak reset after set-up "
                   "(the weights stay resident and count); baseline: the process before building the model"]}
        impls = ["fastrcnn"] + (["torch"] if self.torch else []) + (["opencv"] if self.cv2 else [])
        weights = path = None
        if self.cv2:
            model = Net(str(prototxt(name)), "TEST")
            he_fill(model, 0)
            weights = self.workdir / f"{name}_memory.caffemodel"
            save_weights(model, str(weights))
            path, _ = opencv_prototxt(name, self.workdir)
            del model
            gc.collect()
        for impl in impls:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                peak, baseline = pool.submit(memory_child, impl, name, self.sizes.quick, self.args.threads,
                                             str(path) if path else None,
                                             str(weights) if weights else None).result()
            row["peak_rss_mib"][impl] = peak
            row["baseline_rss_mib"][impl] = baseline
        self.rows.append(row)
        self.log(format_memory(row))


def _status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def memory_child(impl, name, quick, threads, opencv_path, weights):
    """Run one detection with one implementation; (peak RSS, baseline RSS) in MiB of this process."""
    set_threads(threads, {"torch": ("torch",), "opencv": ("cv2",)}.get(impl, ()))
    baseline = _status_kib("VmRSS") / 1024
    sizes = Sizes(quick)
    sizes.image = sizes.memory_image
    model = None
    if impl == "opencv":
        cv2 = optional_cv2()
        rng = np.random.default_rng(1)
        height, width = sizes.memory_image
        image, boxes = random_image(rng, height, width), random_boxes(rng, sizes.rois, height, width)
        cfg = detect_config(height, width)
        net_param = protoio.load_net(opencv_path)
        cv_net = opencv_net(cv2, opencv_path, weights)
        outputs = [last_writer(net_param, b) for b in ("cls_prob", "bbox_pred")]

        def forward(data, rois):
            cv_net.setInput(data, "data")
            cv_net.setInput(rois, "rois")
            return dict(zip(("cls_prob", "bbox_pred"), cv_net.forward(outputs)))
        run = lambda: im_detect(NetAdapter("opencv", forward), image, boxes, cfg)  # noqa: E731
    else:
        model = Model(name, sizes)
        image, boxes, cfg = model.image, model.boxes, model.cfg
        if impl == "torch":
            torch = optional_torch()
            twin = TorchTwin(torch, model.net)
            model = None
            gc.collect()

            def forward(data, rois):
                with torch.inference_mode():
                    out = twin.forward({"data": data, "rois": rois})
                    return {k: out[k].numpy() for k in ("cls_prob", "bbox_pred")}
            run = lambda: im_detect(NetAdapter("torch", forward), image, boxes, cfg)  # noqa: E731
        else:
            run = lambda: im_detect(model.net, image, boxes, cfg)  # noqa: E731
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass
    run()
    return _status_kib("VmHWM") / 1024, baseline


# ------------------------------------------------------------------------------------------- output
def format_row(row):
    results = row["results"]
    parts = [f"{row['row']:<10} {row['model']:<4} {row['workload']:<30}"]
    extra = [impl for impl in results if impl not in ("fastrcnn", "torch", "opencv")]
    for impl in ("fastrcnn", "torch", "opencv", *extra):
        r = results.get(impl)
        if r is None:
            parts.append(f"{'-':>27}")
            continue
        rate = f"{r['rate']:7.1f}" if r.get("rate") is not None else f"{'':7}"
        ratio = f"{r['ratio']:5.2f}x" if "ratio" in r else f"{'':6}"
        check = f" e={r['check_rel_error']:.0e}" if r.get("check_rel_error") is not None else ""
        parts.append((f"{impl}: " if impl in extra else "") + f"{r['median_s']:8.3f}s {rate} {ratio}{check}")
    return " | ".join(parts)


def format_memory(row):
    peaks = ", ".join(f"{impl} {mib:.0f} MiB (baseline {row['baseline_rss_mib'][impl]:.0f})"
                      for impl, mib in row["peak_rss_mib"].items())
    return f"{'memory':<10} {row['model']:<4} {row['workload']:<30} | {peaks}"


def print_table(bench, machine):
    header = (f"{'row':<10} {'mdl':<4} {'workload':<30} | {'fastrcnn: s  rate':>27} | "
              f"{'torch: s  rate  ratio':>27} | {'opencv: s  rate  ratio':>27}")
    print(header)
    print("-" * len(header))
    for row in bench.rows:
        print(format_memory(row) if row["row"] == "memory" else format_row(row))
    print("rate: GFLOP/s (2 × multiply-adds of conv and fc layers) or Gop/s for RoI pooling; ratio: fastrcnn "
          "time / twin time (below 1: fastrcnn is faster); e: relative error of the twin's output vs ours")
    for note in bench.notes:
        print("note:", note)
    print(f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} thread(s), "
          f"instructions: {machine['isa']}; malloc keeps freed memory: {machine['malloc_keeps_freed_memory']}; "
          "load average "
          f"{machine['load_average_start'][0]:.2f} at the start, {machine['load_average_end'][0]:.2f} at the end "
          "(above the thread count, other processes shared the cores and the times are inflated)")


def run_benchmark(args):
    if args.device == "gpu":
        try:
            import cupy  # noqa: F401
        except ImportError:
            print("bench.py: the GPU rows need CuPy (pip install '.[cuda12]' or '.[cuda13]'), which is not "
                  "importable here", file=sys.stderr)
            return 2
        print("bench.py: the GPU rows are not written yet; run with --device cpu", file=sys.stderr)
        return 2
    set_threads(args.threads)
    sizes = Sizes(args.quick)
    start = time.perf_counter()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="fastrcnn-bench-") as workdir:
        bench = Bench(args, sizes, workdir)
        bench.gemm()
        for name in args.models:
            bench.model_rows(name)
            gc.collect()
        for name in args.models:
            bench.memory(name)
        bench.gemm("gemm-end")
    machine = machine_info(args.threads)
    machine["isa"] = args.isa if args.isa == "native" else "AVX2 (" + ", ".join(
        f"{k}={os.environ.get(k)}" for k in AVX2_ONLY) + ")"
    machine["load_average_start"], machine["load_average_end"] = load_start, os.getloadavg()
    report = {"machine": machine,
              "settings": {"device": args.device, "models": args.models, "runs": args.runs, "quick": args.quick,
                           "threads": args.threads, "isa": args.isa, "image": sizes.image,
                           "toy_image": sizes.toy_image, "memory_image": sizes.memory_image, "rois": sizes.rois,
                           "train_rois": sizes.train_rois},
              "rows": bench.rows, "notes": bench.notes, "seconds": time.perf_counter() - start}
    print_table(bench, machine)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(run_benchmark(ARGS))
