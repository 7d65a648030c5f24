"""frcnn-demo: detect objects in images and draw them (the original's tools/demo.py), without a dataset."""
import argparse
import logging
from pathlib import Path

from .common import add_pipeline_options, run_main, set_pairs, setup

log = logging.getLogger("fastrcnn")



def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="frcnn-demo",
        description="Detect objects in images and write PNGs with boxes, class names and scores. Proposals come "
                    "from --proposals, else from <image>_boxes.mat beside the image (the original demo's), else "
                    "from selective search run on the fly.")
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--net", default=None, help="test prototxt")
    parser.add_argument("--weights", default=None, help="trained weights (.npz or .caffemodel)")
    parser.add_argument("--onnx", default=None, metavar="MODEL.onnx",
                        help="instead of --net and --weights: a model written by frcnn-export, run by onnxruntime")
    parser.add_argument("--proposals", default=None, metavar="FILE",
                        help="proposals for a single image: .mat (key 'boxes', 0-based x1 y1 x2 y2) or .npz")
    parser.add_argument("--thresh", type=float, default=0.8, help="score threshold (default 0.8, the original's)")
    parser.add_argument("--output", default="output/demo", metavar="DIR", help="where the PNGs go")
    add_pipeline_options(parser)
    args = parser.parse_args(argv)
    if args.onnx and (args.net or args.weights):
        parser.error("--onnx replaces --net and --weights")
    if args.onnx and args.gpu is not None:
        parser.error("--onnx runs onnxruntime on the CPU; leave out --gpu")
    if not args.onnx and not (args.net and args.weights):
        parser.error("give --net and --weights (or --onnx MODEL.onnx)")
    if args.proposals and len(args.images) != 1:
        parser.error("--proposals goes with a single image")
    return args


def class_names(meta, num_outputs):
    """The class names from the weights' metadata; the VOC classes for 21 outputs; else class_1..class_K."""
    if "classes" in meta and len(meta["classes"]) == num_outputs:
        return list(meta["classes"])
    from ..rcnn.datasets.voc import VOC_CLASSES
    if num_outputs == len(VOC_CLASSES) + 1:
        return ["__background__", *VOC_CLASSES]
    return ["__background__"] + [f"class_{k}" for k in range(1, num_outputs)]


def image_proposals(image_path, image, given):
    from ..rcnn.proposals import load_proposals_file, selective_search
    beside = Path(image_path).with_name(Path(image_path).stem + "_boxes.mat")
    if given:
        return load_proposals_file(given)
    if beside.exists():
        return load_proposals_file(beside)
    log.info("%s: computing selective search proposals", image_path)
    return selective_search(image)


def main(argv=None):
    def demo():
        args = parse_args(argv)
        setup(args)
        import numpy as np

        from ..rcnn.detect import apply_nms, im_detect
        from ..rcnn.image import read_image
        from ..rcnn.tester import load_detector, test_config
        from ..rcnn.visualize import draw_detections
        net = load_detector(args.net, args.weights, args.onnx)
        meta = getattr(net, "weights_meta", {}) or {}
        cfg = test_config(meta, args.cfg, set_pairs(args.set))
        for path in args.images:
            image = read_image(path)
            boxes = image_proposals(path, image, args.proposals)
            scores, pred = im_detect(net, image, boxes, cfg)
            classes = class_names(meta, scores.shape[1])
            dets = [np.zeros((0, 5), np.float32)] + [
                np.hstack([pred[:, 4 * j:4 * j + 4], scores[:, j:j + 1]]).astype(np.float32)
                for j in range(1, scores.shape[1])]
            dets = [d[d[:, 4] >= args.thresh] for d in dets]
            dets = [row[0] for row in apply_nms([[d] for d in dets], cfg.TEST.NMS)]
            out = Path(args.output) / (Path(path).stem + "_detections.png")
            drawn = draw_detections(image, dets, classes, out, args.thresh)
            for name, score, box in drawn:
                print(f"{Path(path).name}: {name} {score:.3f} {box}")
            print(f"{out} ({len(drawn)} detections, {len(boxes)} proposals)")
    run_main(demo)


if __name__ == "__main__":
    main()
