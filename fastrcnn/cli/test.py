"""frcnn-test: detect on a dataset and evaluate (the original's tools/test_net.py and tools/reval.py)."""
import argparse

from .common import add_pipeline_options, run_main, set_pairs, setup


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="frcnn-test",
        description="Detect on a test set and print per-class AP; the last line is 'mAP: 0.xxxx'.")
    parser.add_argument("net", nargs="?", help="test prototxt")
    parser.add_argument("weights", nargs="?", help="trained weights (.npz or .caffemodel)")
    parser.add_argument("--imdb", default=None,
                        help="test set (default: the test split of the training set, else voc_2007_test)")
    parser.add_argument("--output", default=None, metavar="DIR", help="detections, results files and APs")
    parser.add_argument("--vis", type=int, default=0, metavar="N", help="draw the detections of the first N images")
    parser.add_argument("--profile", action="store_true", help="print a timing breakdown (conv, RoI pooling, fc)")
    parser.add_argument("--reval", default=None, metavar="DIR",
                        help="re-evaluate the detections saved in DIR without running the network")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="threads decoding the next images while the network runs (default 2; OpenCV "
                             "decodes without holding Python's lock)")
    parser.add_argument("--onnx", default=None, metavar="MODEL.onnx",
                        help="instead of NET and WEIGHTS: a model written by frcnn-export, run by onnxruntime")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_pipeline_options(parser)
    args = parser.parse_args(argv)
    if args.onnx and (args.net or args.weights or args.reval or args.profile):
        parser.error("--onnx replaces NET and WEIGHTS, and goes with neither --reval nor --profile")
    if args.onnx and args.gpu is not None:
        parser.error("--onnx runs onnxruntime on the CPU; leave out --gpu")
    if args.reval is None and args.onnx is None and (args.net is None or args.weights is None):
        parser.error("give NET and WEIGHTS (or --onnx MODEL.onnx, or --reval DIR)")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    return args


def main(argv=None):
    def test(communicator):
        args = parse_args(argv)
        setup(args)
        root = communicator.rank == 0
        if not root:  # one report: rank 0's (the others still warn)
            import logging
            logging.getLogger("fastrcnn").setLevel(logging.WARNING)
        from ..rcnn import tester
        if args.reval:
            aps = tester.reval(args.reval, imdb=args.imdb, cfg_file=args.cfg, set_pairs=set_pairs(args.set),
                               data_root=args.data_root) if root else None
        else:
            aps = tester.run_test(args.net, args.weights, imdb=args.imdb, output_dir=args.output,
                                  cfg_file=args.cfg, set_pairs=set_pairs(args.set), data_root=args.data_root,
                                  profile=args.profile, vis=args.vis, progress=not args.quiet,
                                  workers=args.workers, onnx=args.onnx, communicator=communicator)
        if aps is not None:
            print(f"mAP: {aps['mAP']:.4f}")
    run_main(test, parallel=True)


if __name__ == "__main__":
    main()
