"""Host-to-device copies through page-locked (pinned) memory, as Caffe's SyncedMemory copies a prefetched
batch: the host array is staged in pinned memory and copied asynchronously on the current stream, so the copy
overlaps the work queued before it. A staging buffer is kept until its copy has completed (an event recorded
after it), then handed back to CuPy's pinned memory pool.
"""
import numpy

import cupy

_in_flight = []  # (pinned memory, event) of copies that may not have completed


def upload(dst, src):
    """``dst[...] = src``: ``src`` a host array (converted to ``dst``'s dtype), ``dst`` a CuPy array."""
    src = numpy.asarray(src, dtype=dst.dtype)
    if src.shape != dst.shape:
        src = numpy.broadcast_to(src, dst.shape)
    _in_flight[:] = [(memory, event) for memory, event in _in_flight if not event.done]
    if dst.size == 0:
        return
    memory = cupy.cuda.alloc_pinned_memory(src.nbytes)
    staged = numpy.frombuffer(memory, dst.dtype, dst.size).reshape(dst.shape)
    staged[...] = src
    stream = cupy.cuda.get_current_stream()
    if dst.flags.c_contiguous:
        dst.set(staged, stream=stream)
    else:
        dense = cupy.empty(dst.shape, dst.dtype)
        dense.set(staged, stream=stream)
        dst[...] = dense
    _in_flight.append((memory, stream.record()))
