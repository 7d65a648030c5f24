"""Helpers shared by the command-line tools: CPU tuning, error reporting and the ``--set KEY VALUE`` option.

The tools' modules import nothing that loads NumPy at module level, so that ``run_main`` can tune the CPU
(``fastrcnn.cpu.tune_cpu``: OpenBLAS's kernel is chosen before NumPy loads) before the work begins.
"""
import sys

from ..cpu import tune_cpu
from ..errors import Error


def run_main(fn):
    """Tune the CPU, then call ``fn()``; a user error prints ``error: <message>`` to stderr and exits 1, Ctrl-C
    exits 130."""
    tune_cpu()
    try:
        fn()
    except Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def add_set_option(parser, help_text="override a config key (e.g. --set TRAIN.SCALES '(600,)'); repeatable"):
    """Add the repeatable ``--set KEY VALUE`` option (collected in ``args.set`` as [KEY, VALUE] pairs)."""
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help=help_text)


def set_pairs(pairs):
    """``args.set`` as the flat [KEY, VALUE, KEY, VALUE, ...] list that config.merge_pairs takes."""
    return [item for pair in pairs for item in pair]


def add_pipeline_options(parser):
    """The options every Fast R-CNN tool shares: --gpu, --cfg, --set, --data-root."""
    parser.add_argument("--gpu", type=int, default=None, metavar="ID",
                        help="run on this CUDA GPU (needs the [cuda12] or [cuda13] extra); default: the CPU")
    parser.add_argument("--cfg", default=None, metavar="FILE.yml", help="config overrides from a YAML file")
    add_set_option(parser)
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="where datasets, proposal caches and models live (default: $FASTRCNN_DATA_ROOT "
                             "or ./data)")


def setup(args):
    """Logging to stderr, and the device that ``--gpu`` asks for."""
    import logging
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if getattr(args, "gpu", None) is not None:
        from .. import backend
        backend.set_device(args.gpu)
        backend.set_mode_gpu()
