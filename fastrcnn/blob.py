"""Blob: a named pair of arrays (data, diff) with Caffe's reshape semantics.

As in Caffe, a reshape to a size that fits the allocated capacity reuses the memory, so a net whose image
sizes and RoI counts change from call to call does not reallocate on every forward. ``diff`` is allocated on
first use: a test net that never runs backward never pays for it.
"""
import numpy

from . import backend
from .errors import Error


def _check_shape(shape):
    try:
        shape = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise Error(f"a blob shape must be a sequence of integers, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise Error(f"a blob shape must not have negative dimensions, got {shape}")
    return shape


class Blob:
    """``data`` and ``diff`` arrays of one shape (pycaffe's ``net.blobs[name]``)."""

    def __init__(self, shape=(), dtype=numpy.float32, name=""):
        self.name = name
        self.dtype = numpy.dtype(dtype)
        self._shape = _check_shape(shape)
        self._data_buf = None
        self._diff_buf = None
        self._data = None
        self._diff = None
        self._alloc_data()

    # -- shape ------------------------------------------------------------------------------------------
    @property
    def shape(self):
        return self._shape

    @property
    def count(self):
        return int(numpy.prod(self._shape, dtype=numpy.int64))

    @property
    def num(self):
        return self._shape[0] if self._shape else 1

    def reshape(self, *shape):
        """Change the shape; memory is kept when the new count fits (contents are then unspecified)."""
        if len(shape) == 1 and not isinstance(shape[0], (int, numpy.integer)):
            shape = shape[0]
        shape = _check_shape(shape)
        if shape == self._shape:
            return
        self._shape = shape
        self._alloc_data()
        if self._diff_buf is not None:
            self._diff = self._view(self._diff_buf, "_diff_buf")

    def _view(self, buf, attr):
        count = self.count
        xp = backend.get_array_module(buf) if buf is not None else backend.array_module()
        if buf is None or buf.size < count or xp is not backend.array_module():
            buf = backend.array_module().zeros(max(count, 1), dtype=self.dtype)
            setattr(self, attr, buf)
        return buf[:count].reshape(self._shape)

    def _alloc_data(self):
        self._data = self._view(self._data_buf, "_data_buf")

    # -- arrays ---------------------------------------------------------------------------------------
    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        self._assign("data", value)

    @property
    def diff(self):
        if self._diff is None or self._diff.shape != self._shape:
            self._diff = self._view(self._diff_buf, "_diff_buf")
        return self._diff

    @diff.setter
    def diff(self, value):
        self._assign("diff", value)

    def has_diff(self):
        return self._diff_buf is not None

    def _assign(self, which, value):
        xp = backend.array_module()
        value = xp.asarray(value)
        if value.shape != self._shape:
            if value.size == self.count:
                value = value.reshape(self._shape)
            else:
                raise Error(f"blob '{self.name}': cannot assign an array of shape {value.shape} to {which} "
                            f"of shape {self._shape}; call reshape first")
        getattr(self, which)[...] = value

    def __repr__(self):
        return f"Blob({self.name!r}, shape={self._shape}, dtype={self.dtype})"
