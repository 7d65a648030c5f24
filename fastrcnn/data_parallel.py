"""Data-parallel training: what the ranks of one run exchange so that N ranks train as one process with
iter_size N does (Caffe's iter_size, with the minibatches of an iteration dealt to the ranks).

Per iteration, after the ranks' forward/backward passes: the parameter gradients are summed across the ranks,
the losses and BatchNorm's batch statistics gathered in minibatch order (every rank then applies all the
statistics in that order, the updates one process makes), so that every rank's update is the same.

Gradients go in buckets of about ``bucket_bytes`` (PyTorch DDP's 25 MB), filled in reverse layer order: a
bucket's sum starts (``start_allreduce``) as soon as backward has left the lowest layer whose parameters it
holds, and is waited for only before the update, so communication overlaps the rest of backward. Parameters
that no backward reaches (lr_mult 0, frozen layers) are not sent. The sum of an allreduce may add the ranks'
gradients in another order than one process accumulates them, so the result equals iter_size's within
float32 rounding. With ``ordered`` the ranks instead pass the accumulated gradient along: rank r receives
the sum of ranks 0..r−1's before its first backward and accumulates its own onto it, as the next pass of one
process would; the last rank broadcasts the total. That is bitwise iter_size's result, with the ranks'
backward passes run one after another.
"""
import numpy

from . import backend
from .layers.normalization import BatchNorm

#: PyTorch DistributedDataParallel's default bucket size (``bucket_cap_mb=25``).
BUCKET_BYTES = 25 * 1024 * 1024


class _Buffer:
    """One flat float32 buffer over the diffs of some param blobs: ``pack`` copies them in, ``unpack`` out."""

    def __init__(self, blobs, ready=0):
        self.blobs, self.ready, self.handle = blobs, ready, None
        xp = backend.array_module()
        self.buffer = xp.empty(sum(b.count for b in blobs), numpy.float32)
        offsets = numpy.cumsum([0] + [b.count for b in blobs])
        self.views = [self.buffer[a:b].reshape(blob.shape) for a, b, blob in zip(offsets, offsets[1:], blobs)]

    def pack(self):
        for view, blob in zip(self.views, self.blobs):
            view[...] = blob.diff
        return self.buffer

    def unpack(self):
        for view, blob in zip(self.views, self.blobs):
            blob.diff[...] = view


def trained_params(net):
    """[(blob, layer index)] of the learnable params some backward writes, the index the lowest layer that
    writes the blob (its gradient is complete when backward leaves that layer), highest index first."""
    trained = []
    for blob, lr_mult in zip(net.learnable_params, net.lr_mults):
        writers = [i for i, layer in enumerate(net.layers) if layer.need_backward
                   for j, b in enumerate(layer.blobs) if b is blob and layer.param_propagate_down[j]]
        if lr_mult != 0 and writers:
            trained.append((blob, min(writers)))
    return sorted(trained, key=lambda pair: -pair[1])


def buckets(net, bucket_bytes=BUCKET_BYTES):
    """The trained params in buckets of at least ``bucket_bytes`` (the last may be smaller), in the order
    backward completes them."""
    out, blobs, size = [], [], 0
    trained = trained_params(net)
    for k, (blob, ready) in enumerate(trained):
        blobs.append(blob)
        size += 4 * blob.count
        if size >= bucket_bytes or k == len(trained) - 1:
            out.append(_Buffer(blobs, ready))
            blobs, size = [], 0
    return out


class DataParallel:
    """The exchanges of one train net's ranks; the solver calls ``before_backward`` before each of its
    passes' backward and ``finish`` after an iteration's passes."""

    def __init__(self, net, communicator, bucket_bytes=BUCKET_BYTES, ordered=False):
        self.net, self.comm, self.ordered = net, communicator, ordered
        self.buckets = [] if ordered else buckets(net, bucket_bytes)
        self.whole = _Buffer([b for b, _ in trained_params(net)]) if ordered else None
        self._next = 0
        self.norms = [layer for layer in net.layers if isinstance(layer, BatchNorm) and not layer.use_global]
        for layer in self.norms:
            layer.deferred = []

    def before_backward(self, first, last):
        """Before a pass's backward: the ordered chain's receive (first pass), the buckets' hook (last)."""
        if self.ordered:
            if first and self.comm.rank > 0:
                self.comm.recv(self.whole.buffer, self.comm.rank - 1)
                self.whole.unpack()
        elif last:
            self._next = 0
            self.net.after_backward = self._start_ready

    def _start_ready(self, index):
        """Start the sums of the buckets whose params backward has finished (it has left layer ``index``)."""
        while self._next < len(self.buckets) and self.buckets[self._next].ready >= index:
            bucket = self.buckets[self._next]
            bucket.handle = self.comm.start_allreduce(bucket.pack())
            self._next += 1

    def finish(self, losses):
        """End the iteration's exchanges: the summed gradients in every rank's diffs, the batch statistics
        applied in minibatch order; returns every rank's ``losses`` in minibatch order."""
        self.net.after_backward = None
        if self.ordered:
            self.whole.pack()
            if self.comm.rank < self.comm.size - 1:
                self.comm.send(self.whole.buffer, self.comm.rank + 1)
            self.comm.bcast(self.whole.buffer, root=self.comm.size - 1)
            self.whole.unpack()
        else:
            self._start_ready(-1)
            for bucket in self.buckets:
                bucket.handle.wait()
                bucket.unpack()
        self._apply_statistics()
        return self.comm.allgather(numpy.asarray(losses, numpy.float64)).ravel().tolist()

    def _apply_statistics(self):
        """Every rank's BatchNorm batch statistics, applied rank by rank and pass by pass."""
        if not self.norms:
            return
        xp = backend.get_array_module(self.norms[0].blobs[0].data)
        own = xp.concatenate([value for layer in self.norms for pair in layer.deferred for value in pair])
        for row in self.comm.allgather(own):
            offset = 0
            for layer in self.norms:
                channels = layer.blobs[0].count
                for _ in layer.deferred:
                    layer.update_statistics(row[offset:offset + channels], row[offset + channels:offset + 2 * channels])
                    offset += 2 * channels
        for layer in self.norms:
            layer.deferred = []
