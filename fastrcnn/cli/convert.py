"""frcnn-convert: convert weights between Caffe's .caffemodel and fastrcnn's .npz, without a prototxt."""
import argparse

from .common import run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="frcnn-convert",
        description="Convert a weights file between .caffemodel and .npz (layer names, blobs and layer types "
                    "are carried; the format is chosen by each file's extension).")
    parser.add_argument("src", help="the weights file to read (.caffemodel or .npz)")
    parser.add_argument("dst", help="the weights file to write (.npz or .caffemodel)")
    return parser.parse_args(argv)


def main(argv=None):
    def convert():
        args = parse_args(argv)
        from .. import weights
        layers = weights.convert(args.src, args.dst)
        count = sum(a.size for blobs in layers.values() for a in blobs)
        print(f"wrote {args.dst}: {len(layers)} layers, {count} parameters")
    run_main(convert)


if __name__ == "__main__":
    main()
