"""Helpers shared by the command-line tools: CPU tuning, error reporting and the ``--set KEY VALUE`` option.

The tools' modules import nothing that loads NumPy at module level, so that ``run_main`` can tune the CPU
(``fastrcnn.cpu.tune_cpu``: OpenBLAS's kernel is chosen before NumPy loads) before the work begins.
"""
import sys
import time

from ..cpu import tune_cpu
from ..errors import Error


def run_main(fn, parallel=False):
    """Tune the CPU, then call ``fn()``; a user error prints ``error: <message>`` to stderr and exits 1, Ctrl-C
    exits 130.

    With ``parallel``, ``fn`` is called with the run's communicator (``fastrcnn.comm.communicator``: MPI when an
    MPI launcher started the process); when a rank of several fails, it prints its message (a traceback for an
    unexpected exception) naming its rank and aborts every rank, so that none waits for it forever.
    """
    tune_cpu()
    communicator = None
    try:
        if not parallel:
            fn()
        else:
            from .. import comm
            communicator = comm.communicator()
            fn(communicator)
    except Error as exc:
        _fail(communicator, f"error: {exc}", 1)
    except KeyboardInterrupt:
        _fail(communicator, "interrupted", 130)
    except Exception:
        if communicator is None or communicator.size == 1:
            raise
        import traceback
        _fail(communicator, traceback.format_exc().rstrip(), 1)


def _fail(communicator, message, code):
    """Print ``message`` to stderr and exit with ``code``; one of several ranks names itself and aborts them all."""
    if communicator is None or communicator.size == 1:
        print(message, file=sys.stderr)
        sys.exit(code)
    print(f"rank {communicator.rank}: {message}", file=sys.stderr, flush=True)
    time.sleep(1)  # an abort kills the launcher's output forwarding too: let it pass the message on first
    communicator.abort(code)


def add_set_option(parser, help_text="override a config key (e.g. --set TRAIN.SCALES '(600,)'); repeatable"):
    """Add the repeatable ``--set KEY VALUE`` option (collected in ``args.set`` as [KEY, VALUE] pairs)."""
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"), help=help_text)


def set_pairs(pairs):
    """``args.set`` as the flat [KEY, VALUE, KEY, VALUE, ...] list that config.merge_pairs takes."""
    return [item for pair in pairs for item in pair]


def add_pipeline_options(parser):
    """The options every Fast R-CNN tool shares: --gpu, --tf32, --cfg, --set, --data-root."""
    parser.add_argument("--gpu", type=int, default=None, metavar="ID",
                        help="run on this CUDA GPU (needs the [cuda12] or [cuda13] extra); default: the CPU")
    parser.add_argument("--tf32", action="store_true",
                        help="with --gpu, let cuBLAS and cuDNN round float32 products to TF32 on tensor cores "
                             "(faster, about 3 decimal digits); default: full float32 as Caffe")
    parser.add_argument("--cfg", default=None, metavar="FILE.yml", help="config overrides from a YAML file")
    add_set_option(parser)
    parser.add_argument("--data-root", default=None, metavar="DIR",
                        help="where datasets, proposal caches and models live (default: $FASTRCNN_DATA_ROOT "
                             "or ./data)")


def setup(args):
    """Logging to stderr, and the device and TF32 choice that ``--gpu`` and ``--tf32`` ask for."""
    import logging
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .. import backend
    backend.set_tf32(getattr(args, "tf32", False))
    if getattr(args, "gpu", None) is not None:
        backend.set_device(args.gpu)
        backend.set_mode_gpu()
