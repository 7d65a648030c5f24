"""frcnn-proposals: compute and cache selective-search proposals for datasets ahead of training or testing."""
import argparse

from .common import add_pipeline_options, run_main, set_pairs, setup


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="frcnn-proposals",
        description="Compute selective-search proposals (OpenCV, fast mode) for every image of the datasets and "
                    "cache them under <data-root>/cache/proposals/, where frcnn-solve and frcnn-test find them.")
    parser.add_argument("imdb", nargs="+", help="datasets, e.g. voc_2007_trainval voc:<folder>:<split> toy_train")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_pipeline_options(parser)
    return parser.parse_args(argv)


def main(argv=None):
    def proposals(communicator):
        args = parse_args(argv)
        setup(args)
        if communicator.rank != 0:  # one report: rank 0's (the others still warn)
            import logging
            logging.getLogger("fastrcnn").setLevel(logging.WARNING)
        from ..rcnn import config as config_mod
        from ..rcnn.datasets import get_dataset
        from ..rcnn.proposals import load_or_compute_proposals
        cfg = config_mod.default_config()
        if args.cfg:
            config_mod.merge_yaml_file(cfg, args.cfg)
        config_mod.merge_pairs(cfg, set_pairs(args.set))
        data_root = config_mod.resolve_data_root(args.data_root or cfg.DATA_ROOT)
        for name in args.imdb:
            dataset = get_dataset(name, data_root)
            boxes = load_or_compute_proposals(dataset, cfg, data_root, workers=args.workers,
                                              progress=not args.quiet, communicator=communicator)
            count = sum(len(b) for b in boxes)
            if communicator.rank == 0:
                print(f"{name}: {dataset.num_images} images, {count / max(len(boxes), 1):.0f} proposals per image")
    run_main(proposals, parallel=True)


if __name__ == "__main__":
    main()
