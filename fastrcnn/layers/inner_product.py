"""InnerProduct, as Caffe's InnerProductLayer (inner_product_layer.cpp): y = x·Wᵀ + b.

The bottom is flattened from ``axis`` into K inputs; W is (num_output, K), or (K, num_output) with
``transpose``. Both fillers default to constant 0 (Caffe).

Each pass is one matrix product, its rows shared among the CPU's threads, the bias added in place; the weight
gradient is accumulated a block of rows at a time, with no temporary the size of W.
"""
import math

from ..parallel import in_parallel, split, threads
from . import register
from .activation import canonical_axis
from .base import Layer
from .conv import work_buffer

#: Elements of the work buffer that weight gradients are accumulated through (a block of rows at a time,
#: so that fc6's 4096 × 25088 gradient needs no second full-size array).
_BLOCK = 1 << 22
#: The fewest rows a thread's share of a product has (fewer would run as BLAS's matrix-vector product, whose
#: sums round differently: a row's result would depend on how many rows came with it).
_ROWS = 32


@register("InnerProduct")
class InnerProduct(Layer):
    exact_bottoms = exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.inner_product_param
        self.num_output = self.positive("num_output", p.num_output)
        self.transpose = p.transpose
        self.bias_term = p.bias_term
        shape = bottom[0].shape
        axis = canonical_axis(self, p.axis, len(shape))
        k = math.prod(shape[axis:])
        dtype = bottom[0].dtype
        if not self.blobs:
            shapes = [("weight_filler", (k, self.num_output) if self.transpose else (self.num_output, k))]
            if self.bias_term:
                shapes.append(("bias_filler", (self.num_output,)))
            self.blobs = [self.filled_blob(getattr(p, field), s, dtype, field) for field, s in shapes]

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        self.axis = canonical_axis(self, self.param.inner_product_param.axis, len(shape))
        k = math.prod(shape[self.axis:])
        weight = self.blobs[0].shape
        expected = weight[0] if self.transpose else weight[1]
        if k != expected:
            raise self.error(
                f"the bottom {shape} flattens from axis {self.axis} to {k} inputs, but the weights {weight} "
                f"(transpose: {self.transpose}) take {expected}; usually the weights belong to another "
                "prototxt, or a layer below changed its output size (RoI pooling size, channel count)")
        top[0].reshape(shape[:self.axis] + (self.num_output,))

    def _matrices(self, blob, which):
        """(rows, K) view of the bottom and (rows, num_output) view of the top."""
        array = getattr(blob, which)
        # both sizes explicit: -1 cannot be inferred when there are no rows (a forward with no RoIs)
        return array.reshape(math.prod(blob.shape[:self.axis]), math.prod(blob.shape[self.axis:]))

    def forward(self, bottom, top):
        xp = self.xp(bottom[0])
        weight = self.blobs[0].data
        _product(xp, self._matrices(bottom[0], "data"), weight if self.transpose else weight.T,
                 self._matrices(top[0], "data"), self.blobs[1].data if self.bias_term else None)

    def backward(self, top, propagate_down, bottom):
        xp = self.xp(bottom[0])
        dy = self._matrices(top[0], "diff")
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=0)
        if self.param_propagate_down[0]:
            x = self._matrices(bottom[0], "data")
            a, b = (x.T, dy) if self.transpose else (dy.T, x)
            _accumulate_product(xp, a, b, self.blobs[0].diff)
        if propagate_down[0]:
            weight = self.blobs[0].data
            _product(xp, dy, weight.T if self.transpose else weight, self._matrices(bottom[0], "diff"))


def _product(xp, a, b, out, bias=None):
    """out = a @ b (+ bias), the rows shared among the threads."""
    def run(share):
        for start, stop in share:
            xp.matmul(a[start:stop], b, out=out[start:stop])
            if bias is not None:
                out[start:stop] += bias
    in_parallel(xp, run, split(a.shape[0], threads(xp), _ROWS))


def _accumulate_product(xp, a, b, out):
    """out += a @ b, a block of rows at a time through each thread's work buffer. (BLAS's beta = 1 through
    SciPy would save the adds, but SciPy brings its own OpenBLAS, whose threads then compete with NumPy's.)"""
    def run(share):
        for start, stop in share:
            block = work_buffer(xp, out.dtype, (stop - start) * out.shape[1]).reshape(stop - start, -1)
            xp.matmul(a[start:stop], b, out=block)
            out[start:stop] += block
    # a block per thread at least, of _ROWS rows where there are enough
    rows = max(1, min(_BLOCK // max(out.shape[1], 1), max(_ROWS, -(-out.shape[0] // threads(xp)))))
    in_parallel(xp, run, [(start, min(start + rows, out.shape[0])) for start in range(0, out.shape[0], rows)])
