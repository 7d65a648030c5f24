"""The RoI data layer (``type: "RoIData"``), and the original's Python layer spelling mapped onto it.

Tops, as the original's RoIDataLayer: ``data`` (2×3×H×W), ``rois`` (R×5: image index, x1, y1, x2, y2 in the
scaled image), ``labels`` (R) and, when the layer declares five tops, ``bbox_targets`` and
``bbox_loss_weights`` (R×4K); three tops means no bbox regression. The roidb comes from the trainer through
``set_roidb``. Images are visited in random permutations (a new one when fewer than IMS_PER_BATCH remain, so
the tail is skipped as in the original); the next minibatch is prepared in a background thread while the
network computes.

Every random draw is a function of (RNG_SEED, global minibatch index): the permutation of epoch e comes from
the seed sequence (RNG_SEED, 0, e) and the scales and RoIs of minibatch g from (RNG_SEED, 1, g). So results do
not depend on the thread's timing, a snapshot's state is just the count of minibatches the run consumed, and
the ranks of a data-parallel run (``shard``) draw exactly what one process with iter_size ranks·iter_size
draws for the same minibatches.
"""
import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import backend
from ..errors import Error
from ..layers import register
from ..layers.base import Layer
from ..layers.python_layer import parse_param_str, register_python_layer
from .minibatch import build_minibatch, plan_minibatch

TOP_NAMES = ("data", "rois", "labels", "bbox_targets", "bbox_loss_weights")


def minibatch_indices(seed, g, count, ims_per_batch):
    """The roidb indices of global minibatch ``g`` of a roidb of ``count`` entries: consecutive slices of
    epoch permutations, each epoch as many minibatches as fit before ``ims_per_batch`` or fewer entries remain
    (the original's rule, which skips the tail)."""
    epoch, k = divmod(g, max(1, -(-(count - ims_per_batch) // ims_per_batch)))
    return _permutation(seed, epoch, count)[k * ims_per_batch:(k + 1) * ims_per_batch]


@functools.lru_cache(maxsize=2)
def _permutation(seed, epoch, count):
    order = np.random.default_rng([seed, 0, epoch]).permutation(count)
    order.flags.writeable = False
    return order


@register("RoIData")
class RoIDataLayer(Layer):
    exact_bottoms = 0

    def setup(self, bottom, top):
        if len(top) not in (3, 5):
            raise self.error(f"declares {len(top)} tops; it has 3 (data, rois, labels) or 5 (with bbox_targets "
                             "and bbox_loss_weights for bbox regression)")
        if self.param.type == "Python":
            params = parse_param_str(self.param.python_param.param_str, f"layer '{self.name}'")
            self.num_classes = params.get("num_classes")
            self.imdb = None
        else:
            p = self.param.roi_data_param
            self.num_classes = p.num_classes if p.HasField("num_classes") else None
            self.imdb = p.imdb or None
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 2):
            raise self.error(f"num_classes must be an integer ≥ 2 (classes + background), got {self.num_classes!r}")
        self.with_bbox = len(top) == 5
        k = self.num_classes or 2
        for blob, shape in zip(top, [(1, 3, 100, 100), (1, 5), (1,), (1, 4 * k), (1, 4 * k)]):
            blob.reshape(shape)
        self.roidb = None
        self._pool = None
        self._pending = None

    def set_roidb(self, roidb, cfg, num_classes):
        """Give the layer its training roidb and configuration (the original's ``set_roidb``)."""
        if self.num_classes is not None and self.num_classes != num_classes:
            raise self.error(f"num_classes is {self.num_classes}, but the dataset has {num_classes} classes "
                             "including background")
        if not roidb:
            raise self.error("the training roidb is empty")
        self.roidb, self.cfg, self.num_classes = roidb, cfg, num_classes
        self.seed = int(cfg.RNG_SEED)
        self.shard(0, 1, 1)

    def shard(self, rank, size, passes):
        """Take the minibatches of rank ``rank`` of ``size``, ``passes`` per iteration: of the size·passes
        minibatches of an iteration (in the order one process with iter_size size·passes takes them), this
        rank's are those from rank·passes on. Restarts at minibatch 0."""
        self.rank, self.size, self.passes = int(rank), int(size), int(passes)
        self.taken = 0
        self._discard_pending()

    # -- batches --------------------------------------------------------------------------------------
    def minibatch_index(self, taken):
        """The global index of this rank's ``taken``-th minibatch."""
        iteration, i = divmod(taken, self.passes)
        return (iteration * self.size + self.rank) * self.passes + i

    def _submit(self, taken):
        """Draw the plan of this rank's ``taken``-th minibatch now and build its blobs in the background."""
        g, n = self.minibatch_index(taken), self.cfg.TRAIN.IMS_PER_BATCH
        if n > len(self.roidb):
            raise self.error(f"TRAIN.IMS_PER_BATCH is {n} but the roidb has only {len(self.roidb)} images")
        plan = plan_minibatch(self.roidb, minibatch_indices(self.seed, g, len(self.roidb), n), self.cfg,
                              np.random.default_rng([self.seed, 1, g]))
        args = (self.roidb, plan, self.cfg, self.num_classes, self.with_bbox)
        if self.cfg.TRAIN.USE_PREFETCH:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roidata")
            self._pending = (taken, self._pool.submit(build_minibatch, *args))
        else:
            self._pending = (taken, args)

    def _discard_pending(self):
        if self._pending is not None and hasattr(self._pending[1], "cancel"):
            self._pending[1].cancel()
        self._pending = None

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        if self.roidb is None:
            raise self.error("has no roidb: train with frcnn-solve (or call set_roidb on the layer first)")
        if self._pending is None or self._pending[0] != self.taken:
            self._submit(self.taken)
        pending = self._pending[1]
        blobs = pending.result() if hasattr(pending, "result") else build_minibatch(*pending)
        self.taken += 1
        self._submit(self.taken)
        for blob, name in zip(top, TOP_NAMES):
            value = blobs[name]
            blob.reshape(value.shape)
            backend.upload(blob.data, value)  # to a GPU through pinned memory, once per minibatch

    # -- snapshots (solver hooks) ------------------------------------------------------------------------
    def snapshot_state(self):
        """The minibatches the whole run has consumed (every rank's, at an iteration boundary), JSON-able."""
        return {"minibatch": self.taken // self.passes * self.size * self.passes, "images": len(self.roidb)}

    def restore_state(self, state):
        if "minibatch" not in state:
            raise Error(f"layer '{self.name}': the snapshot holds the sampler state of an older version "
                        "(a random generator's); continue from its weights (--weights) instead")
        if int(state["images"]) != len(self.roidb):
            raise Error(f"layer '{self.name}': the snapshot was taken with a roidb of {state['images']} images, "
                        f"this one has {len(self.roidb)}")
        g, per_iteration = int(state["minibatch"]), self.size * self.passes
        if g % per_iteration:
            raise Error(f"layer '{self.name}': the snapshot was taken after {g} minibatches, not a whole number "
                        f"of iterations of {per_iteration} ({self.size} rank(s) × iter_size {self.passes})")
        self._discard_pending()
        self.taken = g // per_iteration * self.passes


register_python_layer("roi_data_layer.layer", "RoIDataLayer", RoIDataLayer)
