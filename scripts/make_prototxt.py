#!/usr/bin/env python3
"""Write the S/M/L model definitions under prototxt/ from the tables in this file.

The paper's three ImageNet backbones, CaffeNet (S), VGG_CNN_M_1024 (M) and VGG16 (L), each as train/test/solver,
no_bbox_reg/{train,test,solver} and compressed/test. Architectures, frozen layers, lr/decay multipliers, the
fillers of the new layers and the solver values are those of the original Fast R-CNN models (paper sections
2-3); layer names are the ImageNet models', so caffemodels load by name. The files are committed: after
editing this script, run it and commit its output (tests/test_prototxt_models.py checks they agree).

    python scripts/make_prototxt.py          rewrite prototxt/{CaffeNet,VGG_CNN_M_1024,VGG16}/
    python scripts/make_prototxt.py --check  list the files that differ and exit 1 if any does
"""
import argparse
import sys
import textwrap
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent / "prototxt"
NUM_CLASSES = 21  # PASCAL VOC: 20 classes + background
TRAIN_IMDB = "voc_2007_trainval"
RETARGET = ("To retarget it to K classes: num_classes K+1 in the train net's roi_data_param, cls_score "
            "num_output K+1, bbox_pred num_output 4(K+1).")


class Conv(NamedTuple):
    name: str
    num_output: int
    kernel: int
    stride: int = 1
    pad: int = 0
    group: int = 1


class Pool(NamedTuple):
    name: str
    kernel: int
    stride: int
    pad: int = 0


class LRN(NamedTuple):
    name: str
    alpha: str  # written as given, e.g. "0.0001"
    k: int = 1


class Model(NamedTuple):
    folder: str
    net_name: str          # the ImageNet model's net name
    title: str             # the model in a few words, for the headers
    paper_name: str        # S, M or L
    input_size: int        # the test net's declared image side
    trunk: tuple           # Conv/Pool/LRN in order; a ReLU follows every Conv
    frozen: tuple          # conv layers with lr_mult 0
    pooled: int            # RoI pooling output side
    fc7: int               # fc7 width (fc6 is 4096 for all three)
    snapshot_prefix: str
    imagenet_weights: str  # file in <data root>/imagenet_models/


def _vgg16_trunk():
    layers = []
    for block, (width, depth) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], start=1):
        if block > 1:
            layers.append(Pool(f"pool{block - 1}", 2, 2))
        layers += [Conv(f"conv{block}_{i}", width, 3, pad=1) for i in range(1, depth + 1)]
    return tuple(layers)


MODELS = (
    Model("CaffeNet", "CaffeNet", "CaffeNet, the BVLC reference AlexNet variant", "S", 227,
          (Conv("conv1", 96, 11, stride=4, pad=5), Pool("pool1", 3, 2, pad=1), LRN("norm1", "0.0001"),
           Conv("conv2", 256, 5, pad=2, group=2), Pool("pool2", 3, 2, pad=1), LRN("norm2", "0.0001"),
           Conv("conv3", 384, 3, pad=1), Conv("conv4", 384, 3, pad=1, group=2),
           Conv("conv5", 256, 3, pad=1, group=2)),
          ("conv1",), 6, 4096, "caffenet_fast_rcnn", "CaffeNet.v2.caffemodel"),
    Model("VGG_CNN_M_1024", "VGG_CNN_M_1024", "VGG_CNN_M_1024, Chatfield et al.'s CNN-M with a 1024-wide fc7",
          "M", 224,
          (Conv("conv1", 96, 7, stride=2), LRN("norm1", "0.0005", k=2), Pool("pool1", 3, 2),
           Conv("conv2", 256, 5, stride=2, pad=1), LRN("norm2", "0.0005", k=2), Pool("pool2", 3, 2),
           Conv("conv3", 512, 3, pad=1), Conv("conv4", 512, 3, pad=1), Conv("conv5", 512, 3, pad=1)),
          ("conv1",), 6, 1024, "vgg_cnn_m_1024_fast_rcnn", "VGG_CNN_M_1024.v2.caffemodel"),
    Model("VGG16", "VGG_ILSVRC_16_layers", "VGG16, Simonyan and Zisserman's 16-layer net", "L", 224,
          _vgg16_trunk(), ("conv1_1", "conv1_2", "conv2_1", "conv2_2"), 7, 4096, "vgg16_fast_rcnn",
          "VGG16.v2.caffemodel"),
)

# Variants: (path under the model's folder, phase, with bbox regression, fc6/fc7 factorised by SVD).
NETS = (
    ("train.prototxt", "TRAIN", True, False),
    ("test.prototxt", "TEST", True, False),
    ("no_bbox_reg/train.prototxt", "TRAIN", False, False),
    ("no_bbox_reg/test.prototxt", "TEST", False, False),
    ("compressed/test.prototxt", "TEST", True, True),
)
SVD_RANKS = {"fc6": 1024, "fc7": 256}  # paper section 3.1, the same for all three models
LEARN = ((1, 1), (2, 0))   # weights: lr_mult 1, decay_mult 1; biases: lr_mult 2, no weight decay
FROZEN = ((0, 0), (0, 0))


# ---------------------------------------------------------------- text

def _layer(name, type_, bottoms=(), tops=(), params=(), fields=()):
    """One ``layer { }`` block: on one line when it is short and plain, as in prototxt/toy."""
    lines = [f'name: "{name}"', f'type: "{type_}"']
    lines += [f'bottom: "{b}"' for b in bottoms] + [f'top: "{t}"' for t in tops]
    lines += [f"param {{ lr_mult: {lr} decay_mult: {decay} }}" for lr, decay in params] + list(fields)
    one_line = "layer { " + " ".join(lines) + " }"
    if not params and len(one_line) <= 110 and not any("\n" in f or "#" in f for f in lines):
        return one_line
    body = "\n".join(lines).replace("\n", "\n  ")
    return f"layer {{\n  {body}\n}}"


def _comment(*paragraphs):
    """Paragraphs as ``#`` lines of at most 110 characters."""
    return "".join(f"# {line}\n" for text in paragraphs for line in textwrap.wrap(text, 108, break_on_hyphens=False))


def _conv(c, bottom, frozen):
    spec = [f"num_output: {c.num_output}", f"kernel_size: {c.kernel}"]
    spec += [f"{key}: {value}" for key, value, default in
             (("stride", c.stride, 1), ("pad", c.pad, 0), ("group", c.group, 1)) if value != default]
    return [_layer(c.name, "Convolution", [bottom], [c.name], FROZEN if frozen else LEARN,
                   [f"convolution_param {{ {' '.join(spec)} }}"]),
            _layer("relu" + c.name[len("conv"):], "ReLU", [c.name], [c.name])]


def _trunk(model):
    """The conv layers up to the last conv, and the name of its top."""
    text, bottom = [], "data"
    for item in model.trunk:
        if isinstance(item, Conv):
            text += _conv(item, bottom, item.name in model.frozen)
        elif isinstance(item, Pool):
            pad = f" pad: {item.pad}" if item.pad else ""
            text.append(_layer(item.name, "Pooling", [bottom], [item.name], fields=[
                f"pooling_param {{ pool: MAX kernel_size: {item.kernel} stride: {item.stride}{pad} }}"]))
        else:
            k = f" k: {item.k}" if item.k != 1 else ""
            text.append(_layer(item.name, "LRN", [bottom], [item.name], fields=[
                f"lrn_param {{ local_size: 5 alpha: {item.alpha} beta: 0.75{k} }}"]))
        bottom = item.name
    return text, bottom


def _fc(name, bottom, num_output, bias=True, filler_std=None):
    """An InnerProduct layer; new layers get a Gaussian weight filler and zero biases."""
    if filler_std is not None:
        spec = (f"inner_product_param {{\n  num_output: {num_output}\n"
                f'  weight_filler {{ type: "gaussian" std: {filler_std} }}\n'
                '  bias_filler { type: "constant" value: 0 }\n}')
    else:
        spec = f"inner_product_param {{ num_output: {num_output}{'' if bias else ' bias_term: false'} }}"
    return _layer(name, "InnerProduct", [bottom], [name], LEARN if bias else LEARN[:1], [spec])


def _fc_block(index, bottom, num_output, compressed):
    """fc6 or fc7 with its ReLU and Dropout (in place); factorised as <fc>_L then <fc>_U when compressed."""
    name = f"fc{index}"
    if compressed:
        rank = SVD_RANKS[name]
        text = [_fc(f"{name}_L", bottom, rank, bias=False), _fc(f"{name}_U", f"{name}_L", num_output)]
        top = f"{name}_U"
    else:
        text, top = [_fc(name, bottom, num_output)], name
    text.append(_layer(f"relu{index}", "ReLU", [top], [top]))
    text.append(_layer(f"drop{index}", "Dropout", [top], [top], fields=["dropout_param { dropout_ratio: 0.5 }"]))
    return text, top


def _data(model, phase, bbox_reg):
    if phase == "TEST":
        side = model.input_size
        return (f'input: "data"\ninput_shape {{ dim: 1 dim: 3 dim: {side} dim: {side} }}'
                "  # BGR, mean subtracted; reshaped to the scaled image\n"
                'input: "rois"\ninput_shape { dim: 1 dim: 5 }  # [image index, x1, y1, x2, y2], reshaped on every call')
    tops = ["data", "rois", "labels"] + (["bbox_targets", "bbox_loss_weights"] if bbox_reg else [])
    return _layer("data", "RoIData", tops=tops, fields=[
        f'roi_data_param {{ num_classes: {NUM_CLASSES} imdb: "{TRAIN_IMDB}" }}'])


def _outputs(phase, bbox_reg):
    if phase == "TEST":
        return [_layer("cls_prob", "Softmax", ["cls_score"], ["cls_prob"])]
    text = [_layer("loss_cls", "SoftmaxWithLoss", ["cls_score", "labels"], ["loss_cls"], fields=["loss_weight: 1"])]
    if bbox_reg:
        text.append(_layer("loss_bbox", "SmoothL1Loss", ["bbox_pred", "bbox_targets", "bbox_loss_weights"],
                           ["loss_bbox"], fields=["loss_weight: 1"]))
    return text


def _frozen_text(model):
    names = model.frozen
    return names[0] if len(names) == 1 else f"{names[0]} to {names[-1]}"


def _net_header(model, phase, bbox_reg, compressed):
    what = {"TRAIN": "training", "TEST": "detection"}[phase]
    variant = ("" if bbox_reg else " without bounding-box regression") + (
        " with fc6 and fc7 compressed by truncated SVD" if compressed else "")
    use = {"TRAIN": "Trained by frcnn-solve through solver.prototxt beside it; the RoIData layer samples 2 images "
                    f"x 128 RoIs per iteration from {TRAIN_IMDB}.",
           "TEST": "Run by frcnn-test and frcnn-demo: one image blob and its RoIs in, cls_prob"
                   + (" and bbox_pred out." if bbox_reg else " out.")}[phase]
    paragraphs = [f"{model.title} (the paper's model {model.paper_name}): the Fast R-CNN {what} net{variant}.", use]
    if not bbox_reg and phase == "TRAIN":
        paragraphs.append("No bbox_pred or loss_bbox, and the data layer has three tops (data, rois, labels).")
    if compressed:
        paragraphs.append("fc6_L (rank 1024, no bias) then fc6_U, and fc7_L (rank 256) then fc7_U, as in paper "
                          "section 3.1; frcnn-compress writes their weights from a trained model, without "
                          "retraining.")
    last = model.trunk[-1].name
    paragraphs += [
        f"ImageNet trunk up to {last} (total stride 16), RoI max pooling {model.pooled}x{model.pooled} in place of "
        f"pool5, fc6 and fc7 (4096 and {model.fc7} wide), then two sibling layers: cls_score ({NUM_CLASSES} = 20 "
        "VOC classes + background)" + (" and bbox_pred (4 box deltas per class)." if bbox_reg else ".")
        + f" Layer names are the ImageNet model's, so {model.imagenet_weights} loads by name.",
        f"Frozen (lr_mult 0): {_frozen_text(model)}; the rest learn at lr_mult 1/2, decay_mult 1/0 "
        "(weights/biases).",
        RETARGET]
    return _comment(*paragraphs)


def net_text(model, phase, bbox_reg, compressed):
    """The prototxt text of one net of ``model``."""
    trunk, last = _trunk(model)
    fc6, top = _fc_block(6, "pool5", 4096, compressed)
    fc7, top = _fc_block(7, top, model.fc7, compressed)
    head = [_fc("cls_score", top, NUM_CLASSES, filler_std=0.01)]
    if bbox_reg:
        head.append(_fc("bbox_pred", top, 4 * NUM_CLASSES, filler_std=0.001))
    roi_pool = _layer("roi_pool5", "ROIPooling", [last, "rois"], ["pool5"], fields=[
        f"roi_pooling_param {{ pooled_w: {model.pooled} pooled_h: {model.pooled} spatial_scale: 0.0625 }}"
        f"  # 1/16: {last}'s stride"])
    layers = [_data(model, phase, bbox_reg)] + trunk + [roi_pool] + fc6 + fc7 + head + _outputs(phase, bbox_reg)
    return _net_header(model, phase, bbox_reg, compressed) + f'name: "{model.net_name}"\n' + "\n".join(layers) + "\n"


def solver_text(model, bbox_reg):
    """The solver of ``model``'s train net beside it: the original's values, 40000 iterations."""
    variant = "" if bbox_reg else ", without bounding-box regression"
    folder = model.folder + ("" if bbox_reg else "/no_bbox_reg")
    header = _comment(
        f"Solver of {model.title} (the paper's model {model.paper_name}){variant}: the original's values. lr 0.001 "
        "for 30000 iterations, then 0.0001 to 40000 (frcnn-solve --max-iter N sets max_iter for a run).",
        f"Frozen (in train.prototxt): {_frozen_text(model)}. For K classes, edit train.prototxt (see its header).",
        "Usage, from the project root (ImageNet weights: scripts/fetch_imagenet_models.py):")
    header += (f"#   frcnn-solve prototxt/{folder}/solver.prototxt \\\n"
               f"#       --weights data/imagenet_models/{model.imagenet_weights}\n")
    return header + "\n".join([
        'train_net: "train.prototxt"  # beside this file',
        "base_lr: 0.001",
        'lr_policy: "step"',
        "gamma: 0.1",
        "stepsize: 30000",
        "max_iter: 40000",
        "display: 20",
        "average_loss: 100",
        "momentum: 0.9",
        "weight_decay: 0.0005",
        "snapshot: 0  # Caffe's snapshots off: frcnn-solve writes its own every TRAIN.SNAPSHOT_ITERS",
        f'snapshot_prefix: "{model.snapshot_prefix}"',
    ]) + "\n"


def render():
    """{path relative to prototxt/: text} for every generated file."""
    files = {}
    for model in MODELS:
        for path, phase, bbox_reg, compressed in NETS:
            files[f"{model.folder}/{path}"] = net_text(model, phase, bbox_reg, compressed)
        files[f"{model.folder}/solver.prototxt"] = solver_text(model, True)
        files[f"{model.folder}/no_bbox_reg/solver.prototxt"] = solver_text(model, False)
    return files


def stale_files(root=ROOT):
    """The generated files under ``root`` that are missing or differ from what render() gives."""
    return [path for path, text in render().items()
            if not (root / path).is_file() or (root / path).read_text(encoding="utf-8") != text]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report the files that are not up to date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"stale: prototxt/{path}")
        return 1 if stale else 0
    for path, text in render().items():
        target = ROOT / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(f"wrote prototxt/{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
