"""Training a Fast R-CNN detector: what ``frcnn-solve`` runs (the original's tools/train_net.py and
lib/fast_rcnn/train.py).

Configuration precedence: defaults, the data layer's ``roi_data_param``, ``--cfg FILE.yml``, ``--set KEY VALUE``.
The dataset is checked whole before training starts, its class count against the prototxt, proposals are
computed on first use, and the roidb gets flipped copies and normalised bbox targets. Weights snapshots are
test-ready: ``bbox_pred`` is saved un-normalised (W·std, b·std + mean), with the configuration, the class names
and the target statistics in their metadata; the solver state keeps the normalised values, so a restored run
continues exactly.

With a ``communicator`` of several ranks (``mpiexec -n N frcnn-solve``) the ranks train data-parallel, as one
process with iter_size N·iter_size (``fastrcnn.solver``, ``fastrcnn.data_parallel``); rank 0 alone logs, draws
the progress bar and the loss curves, and writes the snapshots.
"""
import logging
import math
import re
import time
from pathlib import Path

import numpy as np

from .. import backend, protoio
from ..errors import Error
from ..fileio import atomic_write
from ..solver import SGDSolver, check_schedule, train_net_source
from . import config as config_mod
from .datasets import get_dataset
from .proposals import load_or_compute_proposals
from .roidb import training_roidb

log = logging.getLogger("fastrcnn")
DEFAULT_IMDB = "voc_2007_trainval"


def data_layer_param(net_param):
    """The LayerParameter of the RoI data layer (native or the original's Python spelling), or None."""
    for lp in net_param.layer:
        if lp.type == "RoIData" or (lp.type == "Python" and lp.python_param.layer == "RoIDataLayer"):
            return lp
    return None


def build_config(net_param, cfg_file=None, set_pairs=()):
    """The training configuration: defaults < roi_data_param < YAML file < --set pairs."""
    cfg = config_mod.default_config()
    lp = data_layer_param(net_param)
    if lp is not None and lp.type == "RoIData":
        config_mod.apply_roi_data_param(cfg, lp.roi_data_param, f"layer '{lp.name}' roi_data_param")
    if cfg_file:
        config_mod.merge_yaml_file(cfg, cfg_file)
    if set_pairs:
        config_mod.merge_pairs(cfg, list(set_pairs))
    return cfg


def _line_of(path, layer_name, field):
    """'path:LINE' of ``field`` inside the layer named ``layer_name`` in a prototxt (best effort)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, TypeError):
        return str(path)
    inside = False
    for number, line in enumerate(lines, 1):
        if re.search(r'\bname:\s*["\']%s["\']' % re.escape(layer_name), line):
            inside = True
        if inside and re.search(r"\b%s\s*:" % field, line):
            return f"{path}:{number}"
    return str(path)


def check_class_count(net_param, num_classes, source):
    """The prototxt's class counts against the dataset's, with the lines to change when they differ."""
    problems = []
    lp = data_layer_param(net_param)
    if lp is not None:
        if lp.type == "RoIData":
            declared = lp.roi_data_param.num_classes if lp.roi_data_param.HasField("num_classes") else None
            field = "num_classes"
        else:
            from ..layers.python_layer import parse_param_str
            declared = parse_param_str(lp.python_param.param_str, f"layer '{lp.name}'").get("num_classes")
            field = "param_str"
        if declared is not None and declared != num_classes:
            problems.append(f"{_line_of(source, lp.name, field)}: layer '{lp.name}' num_classes is {declared}, "
                            f"should be {num_classes}")
    for name, per_class in (("cls_score", 1), ("bbox_pred", 4)):
        for layer in net_param.layer:
            if layer.name == name and layer.type == "InnerProduct":
                found = layer.inner_product_param.num_output
                if found != per_class * num_classes:
                    problems.append(f"{_line_of(source, name, 'num_output')}: layer '{name}' num_output is "
                                    f"{found}, should be {per_class * num_classes}")
    if problems:
        raise Error(f"the dataset has {num_classes} classes including background, but the prototxt is sized "
                    "for another number; change:\n  " + "\n  ".join(problems))


def _trained_layers_without_init(net, net_param, loaded):
    """Learnable layers (some lr_mult > 0) that got no weights from a file and have no weight filler."""
    params = {lp.name: lp for lp in net_param.layer}
    missing = []
    for name, layer in zip(net.layer_names, net.layers):
        lp = params.get(name)
        if not layer.blobs or name in loaded or lp is None or not any(layer.param_propagate_down):
            continue
        sub = next((getattr(lp, f) for f in ("convolution_param", "inner_product_param")
                    if lp.HasField(f)), None)
        if sub is not None and not sub.HasField("weight_filler"):
            missing.append(name)
    return missing


class BBoxSnapshots:
    """Writes test-ready weights: bbox_pred un-normalised with the targets' (means, stds) for the write only.

    The normalised values are put back from exact copies afterwards, so training continues unchanged.
    """

    def __init__(self, net, means, stds, meta):
        self.net, self.meta = net, meta
        self.params = net.params.get("bbox_pred")
        self.means = means.astype(np.float32)
        self.stds = stds.astype(np.float32)

    def __call__(self, path, meta):
        meta = dict(self.meta, **meta)
        if self.params is None:
            self.net.save(path, meta=meta)
            return
        w, b = self.params[0], self.params[1]
        keep_w, keep_b = w.data.copy(), b.data.copy()
        xp = backend.get_array_module(w.data)
        stds, means = xp.asarray(self.stds), xp.asarray(self.means)
        try:
            w.data[...] = w.data * stds[:, None]
            b.data[...] = b.data * stds + means
            self.net.save(path, meta=meta)
        finally:
            w.data[...] = keep_w
            b.data[...] = keep_b


def default_output_dir(solver_path):
    """output/<the solver's folder>, relative to the current directory without a leading prototxt/ or models/
    (prototxt/toy → output/toy, prototxt/VGG16/no_bbox_reg → output/VGG16/no_bbox_reg)."""
    folder = Path(solver_path).resolve().parent
    try:
        parts = folder.relative_to(Path.cwd().resolve()).parts
    except ValueError:
        parts = (folder.name,)
    if parts and parts[0] in ("prototxt", "models"):
        parts = parts[1:]
    return Path("output", *parts) if parts else Path("output", folder.name)


def log_schedule(solver, cfg, num_images, num_entries, stop):
    """Set the solver's iterations per epoch (a pass over the roidb, flipped copies included) and log what an
    epoch and the schedule to iteration ``stop`` cover in images and RoIs (every rank's images)."""
    ims = cfg.TRAIN.IMS_PER_BATCH * solver.param.iter_size * solver.comm.size
    solver.iters_per_epoch = num_entries / ims
    rois_per_image = cfg.TRAIN.BATCH_SIZE // cfg.TRAIN.IMS_PER_BATCH
    log.info("Epoch: %d images (%d%s), %d RoIs (%d per image), %.4g iterations of %d images", num_entries,
             num_images, " and their flipped copies" if num_entries > num_images else "",
             num_entries * rois_per_image, rois_per_image, solver.iters_per_epoch, ims)
    log.info("Schedule: %d iterations = %.3g epochs (%d images, %d RoIs)%s", stop, stop / solver.iters_per_epoch,
             stop * ims, stop * ims * rois_per_image, f", from iteration {solver.iter}" if solver.iter else "")


def train(solver_path, weights=None, restore=None, iters=None, imdb=None, cfg_file=None, set_pairs=(),
          output_dir=None, data_root=None, progress=True, max_iter=None, communicator=None, bucket_mb=None,
          ordered_sum=False):
    """Train as the solver says; returns the path of the final weights.

    ``communicator`` (``fastrcnn.comm``) makes its ranks train data-parallel; ``bucket_mb`` is the size of the
    gradient buckets and ``ordered_sum`` sums the gradients in rank order (``fastrcnn.data_parallel``).

    ``iters`` is the iteration to train to (default the solver's ``max_iter``); ``max_iter`` overrides the
    solver's for this run (recorded in the snapshots, put back by ``restore``). Training past ``max_iter``
    under poly, whose learning rate is 0 from there on, is refused before anything is loaded.
    """
    solver_param, net_source = train_net_source(solver_path)
    if max_iter is not None:
        if max_iter < 1:
            raise Error(f"--max-iter must be at least 1, got {max_iter}")
        solver_param.max_iter = max_iter
    if iters and (restore is None or max_iter is not None):  # else the state may bring its own max_iter
        check_schedule(solver_param, iters, str(solver_path))
    net_param = protoio.load_net(net_source)
    cfg = build_config(net_param, cfg_file, set_pairs)
    lp = data_layer_param(net_param)
    if lp is None:
        raise Error(f"{net_source}: the train net has no RoI data layer (type: \"RoIData\", or the original's "
                    "Python layer roi_data_layer.layer.RoIDataLayer)")
    with_bbox = len(lp.top) == 5
    if with_bbox != cfg.TRAIN.BBOX_REG:
        if with_bbox:
            raise Error(f"{net_source}: layer '{lp.name}' has the bbox_targets and bbox_loss_weights tops but "
                        "TRAIN.BBOX_REG is False; use the no_bbox_reg prototxt or set TRAIN.BBOX_REG True")
        cfg.TRAIN.BBOX_REG = False  # three tops: no bbox regression
    data_root = config_mod.resolve_data_root(data_root or cfg.DATA_ROOT)
    imdb = imdb or (lp.roi_data_param.imdb if lp.type == "RoIData" else "") or DEFAULT_IMDB
    output_dir = Path(output_dir or default_output_dir(solver_path))
    from .. import comm
    communicator = communicator or comm.SingleProcess()
    handler = logging.NullHandler()
    if communicator.rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(output_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    try:
        log.info("Training %s on %s; output in %s", solver_path, imdb, output_dir)
        log.info("Configuration:\n%s", config_mod.format_config(cfg))
        dataset = get_dataset(imdb, data_root)
        dataset.validate()
        check_class_count(net_param, dataset.num_classes, net_source)
        proposals = load_or_compute_proposals(dataset, cfg, data_root, progress=progress,
                                              communicator=communicator)
        roidb, means, stds = training_roidb(dataset, proposals, cfg)
        log.info("roidb: %d entries (%d images%s)", len(roidb), dataset.num_images,
                 ", with flipped copies" if cfg.TRAIN.USE_FLIPPED else "")
        backend.set_random_seed(cfg.RNG_SEED)
        bucket_bytes = None if bucket_mb is None else int(bucket_mb * 2 ** 20)
        solver = SGDSolver(solver_path, communicator, bucket_bytes, ordered_sum)
        solver.snapshot_dir = str(output_dir)
        data_layer = solver.net.layers[solver.net.layer_names.index(lp.name)]
        data_layer.set_roidb(roidb, cfg, dataset.num_classes)
        data_layer.shard(communicator.rank, communicator.size, solver.param.iter_size)
        solver.snapshot_hooks.append(data_layer)
        meta = {"config": cfg.to_dict(), "classes": list(dataset.classes), "imdb": imdb,
                "bbox_means": means.tolist(), "bbox_stds": stds.tolist()}
        solver.weights_writer = BBoxSnapshots(solver.net, means, stds, meta)
        loaded = set()
        if weights:
            missing = set(solver.net.copy_from(weights))
            loaded = {name for name in solver.net.params if name not in missing}
            log.info("Initialised from %s (%d layers)", weights, len(loaded))
        for name in _trained_layers_without_init(solver.net, net_param, loaded):
            log.warning("WARNING: layer '%s' is trained but got no weights and has no weight_filler: it starts "
                        "from zeros (give --weights or a weight_filler)", name)
        if restore:
            solver.restore(restore)
        if max_iter is not None:
            solver.override(max_iter=max_iter)
        solver.share_state()
        if communicator.size > 1:
            log.info("Data-parallel on %d ranks: each iteration sums %d minibatches of %d images", communicator.size,
                     communicator.size * solver.param.iter_size, cfg.TRAIN.IMS_PER_BATCH)
        stop = iters or solver.param.max_iter or 40000
        check_schedule(solver.param, stop, str(solver_path))
        log_schedule(solver, cfg, dataset.num_images, len(roidb), stop)
        return _run(solver, cfg, stop, output_dir, progress)
    finally:
        log.removeHandler(handler)
        handler.close()


def _run(solver, cfg, max_iters, output_dir, progress):
    """The training loop: snapshots every TRAIN.SNAPSHOT_ITERS (and the solver's ``snapshot``) and at the end,
    progress, curves; a non-finite loss or param stops it before anything snapshots it (a solver callback)."""
    from tqdm import tqdm
    history = []

    def guard(solver):
        """After each update, before any snapshot: stop when the loss or the weights are not finite."""
        losses = {name: float(np.asarray(backend.to_cpu(solver.net.blobs[name].data)).sum())
                  for name in solver.net.outputs}
        total = sum(losses.values())
        _stop_with_a_failing_rank(solver, total)
        last = f"The last good snapshot is {solver.last_snapshot or 'none (no snapshot yet)'}"
        if not math.isfinite(total):
            raise Error(f"the loss became {total} at iteration {solver.iter} ({losses}); training stopped. {last}. "
                        "Lower base_lr, or check the dataset for degenerate boxes")
        broken = _non_finite_layers(solver.net)
        if broken:
            raise Error(f"the params of {', '.join(broken)} became non-finite at iteration {solver.iter} (the loss "
                        f"was {total}); training stopped. {last}. Lower base_lr, or set clip_gradients")
        history.append((solver.iter, total, losses))

    lead = solver.comm.rank == 0
    bar = tqdm(total=max_iters, initial=solver.iter, disable=not (progress and lead), unit="it", dynamic_ncols=True)
    start, start_iter = time.perf_counter(), solver.iter
    solver.callbacks.append(guard)
    try:
        while solver.iter < max_iters:
            solver.step(1)
            seconds = (time.perf_counter() - start) / (solver.iter - start_iter)
            bar.set_postfix_str(f"epoch {solver.epoch():.2f} loss {solver.smoothed_loss:.4f} lr {solver.lr():.2g} "
                                f"{seconds:.2f}s/it")
            bar.update(1)
            if cfg.TRAIN.SNAPSHOT_ITERS and solver.iter % cfg.TRAIN.SNAPSHOT_ITERS == 0:
                _snapshot_once(solver)
    finally:
        solver.callbacks.remove(guard)
    bar.close()
    _snapshot_once(solver)
    if lead:
        _plot_losses(history, output_dir / "loss.png")
    return solver.last_snapshot[:-len(".solverstate")] + ".npz"


def _snapshot_once(solver):
    """Snapshot the current iteration unless the solver's own ``snapshot`` interval already has."""
    if not (solver.last_snapshot or "").endswith(f"_iter_{solver.iter}.solverstate"):
        solver.snapshot()


def _non_finite_layers(net):
    """The names of the layers with a non-finite param value (BatchNorm's statistics included)."""
    pairs = [(name, blob) for name, blobs in net.params.items() for blob in blobs]
    if not pairs:
        return []
    xp = backend.get_array_module(pairs[0][1].data)
    finite = backend.to_cpu(xp.stack([xp.isfinite(blob.data).all() for _, blob in pairs]))  # one device sync
    return list(dict.fromkeys(name for (name, _), ok in zip(pairs, finite) if not ok))


def _stop_with_a_failing_rank(solver, total):
    """With several ranks: when another rank's loss is not finite (the losses the solver gathered), wait for
    its error to end the run (it names the loss and the last good snapshot), so that no rank writes a snapshot
    of the broken weights."""
    failing = np.flatnonzero(~np.isfinite(solver.pass_losses)) // solver.param.iter_size
    if math.isfinite(total) and len(failing) and failing[0] != solver.comm.rank:
        time.sleep(30)  # the failing rank aborts every rank well before
        raise Error(f"the loss on rank {failing[0]} became non-finite at iteration {solver.iter}")


def _plot_losses(history, path):
    """The loss curves (each loss output and their sum) as a PNG."""
    if not history:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    iters = [h[0] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(iters, [h[1] for h in history], label="total", linewidth=1)
    for name in history[0][2]:
        ax.plot(iters, [h[2][name] for h in history], label=name, linewidth=0.8, alpha=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=100, format="png"))
    plt.close(fig)
