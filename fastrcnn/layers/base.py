"""The layer interface, after Caffe's ``Layer`` (include/caffe/layer.hpp).

The Net calls ``setup`` once (Caffe's LayerSetUp: read parameters, create learnable ``blobs``), then
``reshape`` before every ``forward`` (so image sizes and RoI counts may change between calls), and
``backward`` with one ``propagate_down`` flag per bottom. Parameter gradients are accumulated (+=) into
``blobs[i].diff``; bottom gradients are overwritten. A layer sees only its bottoms, tops and params.

A layer whose CPU code is built for the CPU hands its passes on GPU arrays to its GPU variant
(``fastrcnn.cuda.layers``): ``if (gpu := self.gpu_variant(bottom[0])): return gpu.forward(bottom, top)``.
"""
from .. import backend
from ..errors import Error


class Layer:
    #: Caffe type name, set by @register.
    type = None
    #: Blob count rules (Caffe's ExactNumBottomBlobs and friends); None means no rule.
    exact_bottoms = min_bottoms = max_bottoms = None
    exact_tops = min_tops = max_tops = None
    #: Loss layers give their first top a loss_weight of 1 unless the prototxt says otherwise.
    is_loss = False
    #: Whether backward will run (the Net clears it for layers it never runs backward on, so that their
    #: forward need not keep what only backward reads).
    need_backward = True

    def __init__(self, param, phase="TEST"):
        self.param = param
        self.name = param.name
        self.phase = phase
        self.blobs = []

    # -- the interface ----------------------------------------------------------------------------------
    def setup(self, bottom, top):
        """One-time set-up from the parameters (and the first bottom shapes)."""

    def reshape(self, bottom, top):
        raise NotImplementedError

    def forward(self, bottom, top):
        raise NotImplementedError

    def backward(self, top, propagate_down, bottom):
        """Compute bottom diffs where propagate_down[i]; accumulate param diffs where lr_mult != 0."""

    def allow_force_backward(self, bottom_index):
        """Whether force_backward may ask for this bottom's gradient (not for labels, RoIs, ...)."""
        return True

    # -- helpers ----------------------------------------------------------------------------------------
    def error(self, message):
        return Error(f"layer '{self.name}' ({self.type}): {message}")

    def check_blob_counts(self, bottom, top):
        for what, blobs, exact, lo, hi in (
                ("bottom", bottom, self.exact_bottoms, self.min_bottoms, self.max_bottoms),
                ("top", top, self.exact_tops, self.min_tops, self.max_tops)):
            n = len(blobs)
            if exact is not None and n != exact:
                raise self.error(f"takes exactly {exact} {what} blob(s), got {n}")
            if lo is not None and n < lo:
                raise self.error(f"takes at least {lo} {what} blob(s), got {n}")
            if hi is not None and n > hi:
                raise self.error(f"takes at most {hi} {what} blob(s), got {n}")

    def positive(self, field, value):
        """Check that an integer size parameter is > 0 (kernel_size, stride, num_output, ...)."""
        if value <= 0:
            raise self.error(f"{field} must be positive, got {value}")
        return int(value)

    def filled_blob(self, filler, shape, dtype, field):
        """A new param Blob filled as the FillerParameter ``filler`` says (``field`` names it in errors)."""
        from ..blob import Blob
        from ..fillers import fill
        blob = Blob(shape, dtype)
        backend.upload(blob.data, fill(filler, shape, dtype, f"layer '{self.name}' {field}"))
        return blob

    def gpu_variant(self, blob):
        """This layer's GPU variant when ``blob`` holds a CuPy array and the layer has one, else None (its own
        code runs); made on first use, so a CPU run never imports the GPU engine."""
        if not backend.on_gpu(blob.data):
            return None
        if "_gpu_variant" not in self.__dict__:
            from ..cuda.layers import variant_for  # noqa: PLC0415
            self._gpu_variant = variant_for(self)
        return self._gpu_variant

    @staticmethod
    def xp(blob):
        return backend.get_array_module(blob.data)
