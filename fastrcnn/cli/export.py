"""frcnn-export: write a trained detector's TEST net as an ONNX model (weights inside) for serving runtimes."""
import argparse

from .common import run_main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="frcnn-export",
        description="Export the TEST net of a prototxt with its weights as an ONNX graph: inputs 'data' "
                    "(N×3×H×W) and 'rois' (R×5), outputs named as the prototxt's tops (needs the [onnx] extra).")
    parser.add_argument("net", help="test prototxt")
    parser.add_argument("weights", help="trained weights (.npz or .caffemodel)")
    parser.add_argument("output", help="the ONNX file to write (.onnx)")
    parser.add_argument("--opset", type=int, default=None, metavar="N",
                        help="ONNX opset to write (default 17; 13 or later)")
    return parser.parse_args(argv)


def main(argv=None):
    def export():
        args = parse_args(argv)
        from ..onnx_export import export_onnx
        model = export_onnx(args.net, args.weights, args.output, opset=args.opset)
        print(f"wrote {args.output}: opset {model.opset_import[0].version}, {len(model.graph.node)} nodes, "
              f"outputs {', '.join(o.name for o in model.graph.output)}")
    run_main(export)


if __name__ == "__main__":
    main()
