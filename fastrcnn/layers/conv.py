"""Convolution, as Caffe's ConvolutionLayer (base_conv_layer.cpp, conv_layer.cpp), on (N, C, H, W) bottoms.

Output size ``(in + 2·pad − (dilation·(kernel − 1) + 1)) // stride + 1``. Every image and group is one matrix
product of the weights (num_output/group, C/group·kh·kw) with the image's columns (C/group·kh·kw, OH·OW),
which im2col writes into a work buffer kept across calls; 1×1 stride-1 unpadded convolutions multiply the
image itself. Backward recomputes the columns (as Caffe does) for the weight gradient and scatters the
column gradient back with col2im, one strided slice per kernel offset.
"""
from ..blob import Blob
from ..fillers import fill
from . import register
from .activation import canonical_axis
from .base import Layer


def spatial_pair(layer, param, field, short, default):
    """A (h, w) size from Caffe's forms: ``{short}_h``/``{short}_w``, else ``field`` given once or per axis.

    ``field`` may be repeated (ConvolutionParameter) or optional (PoolingParameter); ``default`` applies when
    nothing is given (None: the size is required). A lone ``pad_h`` or ``pad_w`` leaves the other at 0.
    """
    value = getattr(param, field)
    try:
        values = [int(v) for v in value]
    except TypeError:
        values = [int(value)] if param.HasField(field) else []
    if short is not None:
        hf, wf = f"{short}_h", f"{short}_w"
        has_h, has_w = param.HasField(hf), param.HasField(wf)
        if has_h or has_w:
            if values:
                raise layer.error(f"give either {field} or {hf}/{wf}, not both ({field}: {values})")
            if short != "pad" and not (has_h and has_w):
                raise layer.error(f"{hf} and {wf} must be given together")
            return int(getattr(param, hf)), int(getattr(param, wf))
    if not values:
        if default is None:
            raise layer.error(f"{field} (or {short}_h and {short}_w) is required")
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise layer.error(f"{field} takes one value or one per spatial axis (2), got {len(values)}: {values}")


def check_4d(layer, blob):
    """The bottom must be (N, C, H, W)."""
    if len(blob.shape) != 4:
        raise layer.error(f"takes a 4-D bottom (N, C, H, W), got shape {blob.shape}")
    return blob.shape


def windows(xp, src, channels, kernel, dilation, out, stride):
    """A strided view (C, kh, kw, OH, OW) of a (C, H, W) array: every kernel offset's sampling grid."""
    s_c, s_h, s_w = src.strides
    return xp.lib.stride_tricks.as_strided(
        src, shape=(channels, kernel[0], kernel[1], out[0], out[1]),
        strides=(s_c, dilation[0] * s_h, dilation[1] * s_w, stride[0] * s_h, stride[1] * s_w))


def offset_slices(kernel, dilation, out, stride):
    """For every kernel offset (i, j), row-major, the (i, j, rows, cols) slices of a padded array's last two
    axes that the offset samples for all outputs."""
    return [(i, j,
             slice(i * dilation[0], i * dilation[0] + stride[0] * (out[0] - 1) + 1, stride[0]),
             slice(j * dilation[1], j * dilation[1] + stride[1] * (out[1] - 1) + 1, stride[1]))
            for i in range(kernel[0]) for j in range(kernel[1])]


@register("Convolution")
class Convolution(Layer):
    """2-D convolution with groups, dilation, stride, padding and an optional bias.

    Weights (num_output, C/group, kh, kw), bias (num_output,); both fillers default to constant 0 (Caffe).
    """
    exact_bottoms = exact_tops = 1

    def setup(self, bottom, top):
        p = self.param.convolution_param
        c = check_4d(self, bottom[0])[1]
        if canonical_axis(self, p.axis, 4) != 1:
            raise self.error(f"axis must be 1 (the channels of N, C, H, W), got {p.axis}")
        self.num_output = self.positive("num_output", p.num_output)
        self.group = self.positive("group", p.group)
        self.kernel = spatial_pair(self, p, "kernel_size", "kernel", None)
        self.stride = spatial_pair(self, p, "stride", "stride", 1)
        self.pad = spatial_pair(self, p, "pad", "pad", 0)
        self.dilation = spatial_pair(self, p, "dilation", None, 1)
        for field, pair in (("kernel", self.kernel), ("stride", self.stride), ("dilation", self.dilation)):
            self.positive(f"{field}_h", pair[0])
            self.positive(f"{field}_w", pair[1])
        if c % self.group:
            raise self.error(f"group {self.group} does not divide the {c} input channels")
        if self.num_output % self.group:
            raise self.error(f"group {self.group} does not divide num_output {self.num_output}")
        self.channels = c
        self.bias_term = p.bias_term
        self.direct = self.kernel == (1, 1) and self.stride == (1, 1) and self.pad == (0, 0)
        dtype = bottom[0].dtype
        if not self.blobs:
            shapes = [("weight_filler", (self.num_output, c // self.group) + self.kernel)]
            if self.bias_term:
                shapes.append(("bias_filler", (self.num_output,)))
            for field, shape in shapes:
                blob = Blob(shape, dtype)
                blob.data[...] = fill(getattr(p, field), shape, dtype, f"layer '{self.name}' {field}")
                self.blobs.append(blob)
        self._col = Blob((), dtype)         # im2col columns, and the column gradient in backward
        self._padded = Blob((), dtype)      # a zero-bordered copy of one image
        self._padded_diff = Blob((), dtype)
        self._geometry = None

    def reshape(self, bottom, top):
        n, c, h, w = check_4d(self, bottom[0])
        if c != self.channels:
            raise self.error(f"bottom has {c} channels, but the layer was set up for {self.channels} "
                             f"(weights {self.blobs[0].shape}, group {self.group})")
        out = []
        for size, k, s, p, d, axis in zip((h, w), self.kernel, self.stride, self.pad, self.dilation, "hw"):
            extent = d * (k - 1) + 1
            o = (size + 2 * p - extent) // s + 1
            if o <= 0:
                raise self.error(f"the bottom's {axis} = {size} with pad_{axis} {p} is smaller than the "
                                 f"(dilated) kernel_{axis} extent {extent}")
            out.append(o)
        self.out = tuple(out)
        top[0].reshape(n, self.num_output, *self.out)
        if self._geometry != (c, h, w) and not self.direct:
            self._geometry = (c, h, w)
            self._col.reshape(c, self.kernel[0], self.kernel[1], *self.out)
            if self.pad != (0, 0):
                padded = (c, h + 2 * self.pad[0], w + 2 * self.pad[1])
                self._padded.reshape(padded)
                self._padded.data[...] = 0
                self._padded_diff.reshape(padded)

    # -- im2col / col2im ------------------------------------------------------------------------------
    def _columns(self, xp, image):
        """The (group, C/group·kh·kw, OH·OW) columns of one (C, H, W) image."""
        g = self.group
        if self.direct:
            return image.reshape(g, -1, image.shape[1] * image.shape[2])
        src = image
        if self.pad != (0, 0):
            (ph, pw), (h, w) = self.pad, image.shape[1:]
            src = self._padded.data
            src[:, ph:ph + h, pw:pw + w] = image
        col = self._col.data
        col[...] = windows(xp, src, self.channels, self.kernel, self.dilation, self.out, self.stride)
        return col.reshape(g, -1, self.out[0] * self.out[1])

    def _col2im(self, col, image_diff):
        """Scatter-add column gradients (C, kh, kw, OH, OW) into one image's gradient (overwritten)."""
        (ph, pw), (h, w) = self.pad, image_diff.shape[1:]
        dst = self._padded_diff.data if (ph or pw) else image_diff
        dst[...] = 0
        for i, j, rows, cols in offset_slices(self.kernel, self.dilation, self.out, self.stride):
            dst[..., rows, cols] += col[:, i, j]
        if ph or pw:
            image_diff[...] = dst[:, ph:ph + h, pw:pw + w]

    # -- passes ---------------------------------------------------------------------------------------
    def _weights(self):
        return self.blobs[0].data.reshape(self.group, self.num_output // self.group, -1)

    def forward(self, bottom, top):
        xp = self.xp(bottom[0])
        x, y = bottom[0].data, top[0].data
        weights = self._weights()
        for n in range(x.shape[0]):
            xp.matmul(weights, self._columns(xp, x[n]), out=y[n].reshape(weights.shape[:2] + (-1,)))
        if self.bias_term:
            y += self.blobs[1].data.reshape(1, -1, 1, 1)

    def backward(self, top, propagate_down, bottom):
        xp = self.xp(bottom[0])
        x, dy = bottom[0].data, top[0].diff
        need_weight = self.param_propagate_down[0]
        if self.bias_term and self.param_propagate_down[1]:
            self.blobs[1].diff += dy.sum(axis=(0, 2, 3))
        if not (need_weight or propagate_down[0]):
            return
        weights = self._weights()
        weight_diff = self.blobs[0].diff.reshape(weights.shape)
        for n in range(x.shape[0]):
            dy_n = dy[n].reshape(weights.shape[:2] + (-1,))
            if need_weight:
                weight_diff += xp.matmul(dy_n, self._columns(xp, x[n]).transpose(0, 2, 1))
            if propagate_down[0]:
                dx_n = bottom[0].diff[n]
                target = dx_n if self.direct else self._col.data
                xp.matmul(weights.transpose(0, 2, 1), dy_n, out=target.reshape(self.group, -1, dy_n.shape[2]))
                if not self.direct:
                    self._col2im(target, dx_n)
