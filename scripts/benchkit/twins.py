"""The twins: the same computation in PyTorch (torch.nn.functional calls on copies of our weights) and in
OpenCV's dnn module (its Caffe importer on our prototxt and weights)."""
import math
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from fastrcnn import protoio
from fastrcnn.backend import to_cpu

from .models import copy_params, norm_error, prototxt, relative_error, train_net


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
    ``device``: where the weights and inputs go (None: the CPU); on a CUDA device RoI pooling is
    ``torchvision.ops.roi_pool``, whose rounding and bins are the original's (it derives from it).
    """

    def __init__(self, torch, net, train=False, channels_last=True, device=None):
        self.torch, self.train, self.device = torch, train, device
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.layers = []
        for name, layer in zip(net.layer_names, net.layers):
            params = [torch.tensor(to_cpu(blob.data), device=device) for blob in layer.blobs]
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
        if self.device is not None:
            blobs = {k: v.to(self.device) for k, v in blobs.items()}
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
        if kind == "ROIPooling" and x.is_cuda:
            from torchvision.ops import roi_pool
            return [roi_pool(x, bottoms[1], (layer.pooled_h, layer.pooled_w), layer.spatial_scale)]
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


def train_step(torch, net, net_param, inputs, device=None):
    """The twin of a train net, and one training step of it: (twin, run). run() clears the gradients, runs
    forward, sums the loss tops times their loss_weight (Caffe's), runs backward and returns the loss."""
    twin = TorchTwin(torch, net, train=True, device=device)
    params = twin.parameters()
    loss_tops = [(lp.top[0], lp.loss_weight[0] if lp.loss_weight else 1.0)
                 for lp in net_param.layer if lp.type in ("SoftmaxWithLoss", "SmoothL1Loss")]
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    if device is not None:
        tensors = {k: v.to(device) for k, v in tensors.items()}

    def run():
        for p in params:
            p.grad = None
        out = twin.forward(tensors)
        loss = sum(w * out[top] for top, w in loss_tops)
        loss.backward()
        return loss
    return twin, run


def check_train(name, sizes, net, inputs, twin, run):
    """Loss and gradients of the twin against our train net in TEST phase (dropout off), built in the current
    mode (CPU or GPU) with ``net``'s weights. Gradients are compared norm-wise, ‖twin − ours‖ / ‖ours‖: a
    near-tie in a max pooling window, decided differently by float32 rounding, sends single elements
    elsewhere."""
    check_net, _, _ = train_net(name, sizes, "TEST")
    copy_params(net, check_net)
    check_net.clear_param_diffs()
    check_net.forward(**inputs)
    loss = float(check_net.loss())
    check_net.backward()
    twin.train = False
    twin_loss = run().item()
    twin.train = True
    errors = [relative_error(twin_loss, loss)]
    for layer_name, _, params in twin.layers:
        for tensor, blob in zip(params, check_net.params.get(layer_name, [])):
            if tensor.requires_grad:
                errors.append(norm_error(tensor.grad.detach().cpu().numpy(), to_cpu(blob.diff)))
    return max(errors)


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


