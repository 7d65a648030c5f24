"""frcnn-solve: train a Fast R-CNN detector from a solver prototxt (the original's tools/train_net.py).

Under ``mpiexec -n N`` the ranks train data-parallel, as one process with iter_size N (``fastrcnn.rcnn.train``);
with ``--gpu`` each rank takes the GPU of its rank on its machine and the gradients go through NCCL.
"""
import argparse

from ..errors import Error
from .common import add_pipeline_options, run_main, set_pairs, setup


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="frcnn-solve",
        description="Train a Fast R-CNN detector. The last line printed is the path of the final weights.")
    parser.add_argument("solver", help="solver prototxt (its train_net holds the RoI data layer)")
    parser.add_argument("--weights", default=None, help="initial weights, e.g. ImageNet (.caffemodel or .npz)")
    parser.add_argument("--restore", default=None, metavar="STATE", help="continue from a .solverstate")
    parser.add_argument("--iters", type=int, default=None,
                        help="train to this iteration (default: the solver's max_iter, else 40000); past max_iter "
                        "under lr_policy poly (lr 0 there) it is refused: raise max_iter too")
    parser.add_argument("--max-iter", type=int, default=None, metavar="N",
                        help="the solver's max_iter for this run (where poly's lr reaches 0), saved in the "
                        "snapshots; --restore puts it back")
    parser.add_argument("--imdb", default=None, help="training set, e.g. voc_2007_trainval, voc:<folder>:<split>, "
                        "coco:<images>:<annotations.json>, toy_train (default: the data layer's imdb)")
    parser.add_argument("--output", default=None, metavar="DIR",
                        help="snapshots, log and loss curves (default: output/<solver folder name>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--ordered-sum", action="store_true",
                        help="under mpiexec: add the ranks' gradients in rank order, bitwise what one process with "
                        "iter_size N computes (the ranks' backward passes then run one after another)")
    parser.add_argument("--bucket-mb", type=float, default=None, metavar="MB",
                        help="under mpiexec: the size of the gradient buckets summed during backward (default 25)")
    add_pipeline_options(parser)
    return parser.parse_args(argv)


def main(argv=None):
    def solve(communicator):
        args = parse_args(argv)
        if args.bucket_mb is not None and args.bucket_mb <= 0:
            raise Error(f"--bucket-mb must be positive, got {args.bucket_mb}")
        if communicator.size > 1 and args.gpu is not None:
            from .. import comm
            communicator = comm.NCCL(communicator.comm)
            args.gpu = communicator.local_rank
        setup(args)
        if communicator.rank != 0:
            import logging
            logging.getLogger("fastrcnn").setLevel(logging.ERROR)
        from ..rcnn.train import train
        path = train(args.solver, weights=args.weights, restore=args.restore, iters=args.iters, imdb=args.imdb,
                     cfg_file=args.cfg, set_pairs=set_pairs(args.set), output_dir=args.output,
                     data_root=args.data_root, progress=not args.quiet, max_iter=args.max_iter,
                     communicator=communicator, bucket_mb=args.bucket_mb, ordered_sum=args.ordered_sum)
        if communicator.rank == 0:
            print(path)
    run_main(solve, parallel=True)


if __name__ == "__main__":
    main()
