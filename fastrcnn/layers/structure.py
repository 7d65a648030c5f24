"""Layers that route or reshape blobs: Split, Concat, Eltwise, Flatten, Reshape, Silence."""
import numpy

from . import register
from .activation import canonical_axis
from .base import Layer


@register("Split")
class Split(Layer):
    """Copies its bottom to every top (inserted by the Net for blobs read twice); backward sums the diffs."""
    exact_bottoms = 1
    min_tops = 1

    def reshape(self, bottom, top):
        for t in top:
            t.reshape(bottom[0].shape)

    def forward(self, bottom, top):
        for t in top:
            t.data[...] = bottom[0].data

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            dx = bottom[0].diff
            dx[...] = top[0].diff
            for t in top[1:]:
                dx += t.diff


@register("Concat")
class Concat(Layer):
    """Concatenation along ``axis`` (or the legacy ``concat_dim``)."""
    min_bottoms = exact_tops = 1

    def reshape(self, bottom, top):
        p = self.param.concat_param
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        ref = bottom[0].shape
        self.axis = canonical_axis(self, axis, len(ref))
        for b in bottom[1:]:
            if len(b.shape) != len(ref) or any(b.shape[i] != ref[i] for i in range(len(ref)) if i != self.axis):
                raise self.error(f"bottoms {ref} and {b.shape} differ outside the concat axis {self.axis}")
        shape = list(ref)
        shape[self.axis] = sum(b.shape[self.axis] for b in bottom)
        top[0].reshape(shape)

    def forward(self, bottom, top):
        self.xp(bottom[0]).concatenate([b.data for b in bottom], axis=self.axis, out=top[0].data)

    def backward(self, top, propagate_down, bottom):
        start = 0
        for b, down in zip(bottom, propagate_down):
            size = b.shape[self.axis]
            if down:
                index = (slice(None),) * self.axis + (slice(start, start + size),)
                b.diff[...] = top[0].diff[index]
            start += size


@register("Eltwise")
class Eltwise(Layer):
    """Element-wise SUM (with optional coefficients), PROD, or MAX of equally shaped bottoms."""
    min_bottoms = 2
    exact_tops = 1

    def setup(self, bottom, top):
        from ..proto import caffe_pb2
        p = self.param.eltwise_param
        self.op = caffe_pb2.EltwiseParameter.EltwiseOp.Name(p.operation)
        if p.coeff and len(p.coeff) != len(bottom):
            raise self.error(f"eltwise_param gives {len(p.coeff)} coeff(s) for {len(bottom)} bottoms")
        if p.coeff and self.op != "SUM":
            raise self.error("coeff is only allowed with operation SUM")
        self.coeff = list(p.coeff) or [1.0] * len(bottom)
        self.stable_prod_grad = p.stable_prod_grad

    def reshape(self, bottom, top):
        for b in bottom[1:]:
            if b.shape != bottom[0].shape:
                raise self.error(f"all bottoms must have one shape; got {bottom[0].shape} and {b.shape}")
        top[0].reshape(bottom[0].shape)

    def forward(self, bottom, top):
        y = top[0].data
        xp = self.xp(bottom[0])
        if self.op == "SUM":
            y[...] = self.coeff[0] * bottom[0].data
            for c, b in zip(self.coeff[1:], bottom[1:]):
                y += c * b.data
        elif self.op == "PROD":
            y[...] = bottom[0].data
            for b in bottom[1:]:
                y *= b.data
        else:
            stacked = xp.stack([b.data for b in bottom])
            self.argmax = stacked.argmax(axis=0)  # first maximum wins, as Caffe's strict '>'
            y[...] = stacked.max(axis=0)

    def backward(self, top, propagate_down, bottom):
        dy = top[0].diff
        for i, (b, down) in enumerate(zip(bottom, propagate_down)):
            if not down:
                continue
            if self.op == "SUM":
                b.diff[...] = self.coeff[i] * dy
            elif self.op == "PROD":
                if self.stable_prod_grad:
                    others = self.xp(b).ones_like(dy)
                    for j, o in enumerate(bottom):
                        if j != i:
                            others *= o.data
                    b.diff[...] = dy * others
                else:
                    b.diff[...] = dy * top[0].data / b.data
            else:
                b.diff[...] = dy * (self.argmax == i)


@register("Flatten")
class Flatten(Layer):
    """Collapses axes ``axis``..``end_axis`` into one."""
    exact_bottoms = exact_tops = 1

    def reshape(self, bottom, top):
        shape = bottom[0].shape
        start = canonical_axis(self, self.param.flatten_param.axis, len(shape))
        end = canonical_axis(self, self.param.flatten_param.end_axis, len(shape))
        top[0].reshape(shape[:start] + (int(numpy.prod(shape[start:end + 1])),) + shape[end + 1:])

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data.reshape(top[0].shape)

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = top[0].diff.reshape(bottom[0].shape)


@register("Reshape")
class Reshape(Flatten):
    """Caffe's Reshape: ``shape`` replaces axes [axis, axis + num_axes); 0 copies a dimension, −1 is inferred."""

    def reshape(self, bottom, top):
        p = self.param.reshape_param
        shape = bottom[0].shape
        ndim = len(shape)
        start = p.axis + ndim + 1 if p.axis < 0 else p.axis
        if not 0 <= start <= ndim:
            raise self.error(f"reshape_param axis {p.axis} is out of range for a bottom with {ndim} axes")
        end = ndim if p.num_axes == -1 else start + p.num_axes
        if p.num_axes < -1 or end > ndim:
            raise self.error(f"reshape_param num_axes {p.num_axes} is out of range")
        dims = list(p.shape.dim)
        if sum(d == -1 for d in dims) > 1:
            raise self.error("reshape_param shape may infer at most one dimension (-1)")
        new = []
        for k, d in enumerate(dims):
            if d == 0:
                if start + k >= ndim:
                    raise self.error(f"shape dim {k} is 0 (copy) but the bottom has no axis {start + k}")
                new.append(shape[start + k])
            elif d < -1:
                raise self.error(f"shape dim {k} must be positive, 0 or -1, got {d}")
            else:
                new.append(int(d))
        out = list(shape[:start]) + new + list(shape[end:])
        count = int(numpy.prod(shape))
        if -1 in out:
            known = int(numpy.prod([d for d in out if d != -1]))
            if known == 0 or count % known:
                raise self.error(f"cannot infer a dimension: {shape} does not reshape to {out}")
            out[out.index(-1)] = count // known
        if int(numpy.prod(out)) != count:
            raise self.error(f"cannot reshape {shape} ({count} values) to {tuple(out)}")
        top[0].reshape(out)


@register("Silence")
class Silence(Layer):
    """Consumes blobs so that they are not net outputs; passes zero gradient."""
    min_bottoms = 1
    exact_tops = 0

    def reshape(self, bottom, top):
        pass

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        for b, down in zip(bottom, propagate_down):
            if down:
                b.diff[...] = 0
