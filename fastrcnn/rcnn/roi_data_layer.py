"""The RoI data layer (``type: "RoIData"``), and the original's Python layer spelling mapped onto it.

Tops, as the original's RoIDataLayer: ``data`` (2×3×H×W), ``rois`` (R×5: image index, x1, y1, x2, y2 in the
scaled image), ``labels`` (R) and, when the layer declares five tops, ``bbox_targets`` and
``bbox_loss_weights`` (R×4K); three tops means no bbox regression. The roidb comes from the trainer through
``set_roidb``. Images are visited in random permutations (reshuffled when fewer than IMS_PER_BATCH remain,
so the tail is skipped as in the original); the next minibatch is prepared in a background thread while the
network computes. Every random draw happens in order on the calling thread, so results do not depend on the
thread's timing, and the state saved in a snapshot replays the exact same minibatches after a restore.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import backend
from ..errors import Error
from ..layers import register
from ..layers.base import Layer
from ..layers.python_layer import parse_param_str, register_python_layer
from .minibatch import build_minibatch, plan_minibatch

TOP_NAMES = ("data", "rois", "labels", "bbox_targets", "bbox_loss_weights")


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
        self.rng = np.random.default_rng(cfg.RNG_SEED)
        self.perm, self.cursor = self.rng.permutation(len(roidb)), 0
        self._discard_pending()

    # -- batches --------------------------------------------------------------------------------------
    def _state(self):
        return {"rng": self.rng.bit_generator.state, "perm": self.perm.tolist(), "cursor": self.cursor}

    def _next_indices(self):
        n = self.cfg.TRAIN.IMS_PER_BATCH
        if n > len(self.roidb):
            raise self.error(f"TRAIN.IMS_PER_BATCH is {n} but the roidb has only {len(self.roidb)} images")
        if self.cursor + n >= len(self.roidb):
            self.perm, self.cursor = self.rng.permutation(len(self.roidb)), 0
        indices = self.perm[self.cursor:self.cursor + n]
        self.cursor += n
        return indices

    def _submit_next(self):
        """Draw the next minibatch's plan now and build its blobs in the background."""
        state = self._state()
        plan = plan_minibatch(self.roidb, self._next_indices(), self.cfg, self.rng)
        args = (self.roidb, plan, self.cfg, self.num_classes, self.with_bbox)
        if self.cfg.TRAIN.USE_PREFETCH:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roidata")
            self._pending = (state, self._pool.submit(build_minibatch, *args))
        else:
            self._pending = (state, args)

    def _discard_pending(self):
        if self._pending is not None and hasattr(self._pending[1], "cancel"):
            self._pending[1].cancel()
        self._pending = None

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        if self.roidb is None:
            raise self.error("has no roidb: train with frcnn-solve (or call set_roidb on the layer first)")
        if self._pending is None:
            self._submit_next()
        pending = self._pending[1]
        blobs = pending.result() if hasattr(pending, "result") else build_minibatch(*pending)
        self._submit_next()
        for blob, name in zip(top, TOP_NAMES):
            value = blobs[name]
            blob.reshape(value.shape)
            backend.upload(blob.data, value)  # to a GPU through pinned memory, once per minibatch

    # -- snapshots (solver hooks) ------------------------------------------------------------------------
    def snapshot_state(self):
        """The sampler's state at the next unconsumed minibatch (JSON-able)."""
        return self._pending[0] if self._pending is not None else self._state()

    def restore_state(self, state):
        self._discard_pending()
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = state["rng"]
        self.perm = np.asarray(state["perm"], dtype=np.int64)
        self.cursor = int(state["cursor"])
        if len(self.perm) != len(self.roidb):
            raise Error(f"layer '{self.name}': the snapshot was taken with a roidb of {len(self.perm)} images, "
                        f"this one has {len(self.roidb)}")


register_python_layer("roi_data_layer.layer", "RoIDataLayer", RoIDataLayer)
