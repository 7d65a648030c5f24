"""frcnn-compress: truncated SVD of the fc layers of a trained detector (the original's compress_net.py)."""
import argparse

from .common import run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="frcnn-compress",
        description="Factorise fc layers by truncated SVD; writes the compressed weights and test prototxt.")
    parser.add_argument("net", help="the uncompressed test prototxt")
    parser.add_argument("weights", help="its trained weights (.npz or .caffemodel)")
    parser.add_argument("--layers", default="fc6:1024,fc7:256", help="NAME:RANK,... (default: the paper's "
                        "fc6:1024,fc7:256)")
    parser.add_argument("--output", default=None, metavar="DIR", help="where to write (default: beside WEIGHTS)")
    return parser.parse_args(argv)


def main(argv=None):
    def compress():
        args = parse_args(argv)
        from ..rcnn.compress import compress as run, parse_layers
        prototxt, weights, errors = run(args.net, args.weights, parse_layers(args.layers), args.output)
        for name, error in errors.items():
            print(f"{name}: relative reconstruction error {error:.4f}")
        print(f"compressed test prototxt: {prototxt}")
        print(weights)
    run_main(compress)


if __name__ == "__main__":
    main()
