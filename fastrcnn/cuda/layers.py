"""The GPU variants of the layers whose CPU code is built for the CPU (threads, Winograd, sparse tables): each
runs the layer's passes on CuPy arrays with the CUDA kernels (``fastrcnn.cuda.kernels``), cuDNN and cuBLAS.

A layer reaches its variant through ``Layer.gpu_variant(blob)`` (fastrcnn/layers/base.py) at the top of its
passes; ``variant_for`` makes one per layer instance, or None where the layer's own code serves both devices.
Semantics are the CPU layers' (the tests compare the two): Caffe's ConvolutionLayer / CuDNNConvolutionLayer,
PoolingLayer's GPU kernels with ceil-mode argmax, LRNLayer's across-channel kernels, and the original's
ROIPoolingLayer kernels.
"""

from .. import backend
from ..errors import Error
from ..proto import caffe_pb2
from . import cudnn


def _kernels():
    from . import kernels  # noqa: PLC0415  (compiled on first use)
    return kernels


class ConvolutionGPU:
    """Convolution on the GPU: cuDNN (engine DEFAULT or CUDNN, where a plan builds) or Caffe's own engine
    (im2col + cuBLAS per image), both with the bias added by CuPy; parameter gradients accumulate (+=)."""

    def __init__(self, layer):
        self.layer = layer
        self.engine = caffe_pb2.ConvolutionParameter.Engine.Name(layer.param.convolution_param.engine)

    def _plan(self, op, x):
        """The cuDNN plan of pass ``op`` on bottom ``x``, or None for the CAFFE engine (the reason logged)."""
        layer = self.layer
        plan, reason = cudnn.choose_engine(
            self.engine, cudnn.import_frontend,
            lambda frontend: cudnn.plan_for(frontend, cudnn.plan_key(op, layer, x.shape, x.dtype)))
        if reason:
            cudnn.log_fallback(layer.name, reason)
        return plan

    def _geometry(self):
        layer = self.layer
        return layer.kernel, layer.pad, layer.stride, layer.dilation

    def _weights(self):
        layer = self.layer
        return layer.blobs[0].data.reshape(layer.group, layer.num_output // layer.group, -1)

    def forward(self, bottom, top):
        layer = self.layer
        x, y = bottom[0].data, top[0].data
        plan = self._plan(cudnn.FPROP, x)
        if plan is not None:
            cudnn.execute(plan, x, layer.blobs[0].data, y)
        else:
            kernel, pad, stride, dilation = self._geometry()
            weights = self._weights()
            for n in range(x.shape[0]):
                col = _kernels().im2col(x[n], kernel, pad, stride, dilation)
                out = y[n].reshape(layer.group, weights.shape[1], -1)
                out[...] = weights @ col.reshape(layer.group, -1, col.shape[1])
        if layer.bias_term:
            y += layer.blobs[1].data.reshape(1, -1, 1, 1)

    def backward(self, top, propagate_down, bottom):
        layer = self.layer
        x, dy = bottom[0].data, top[0].diff
        if layer.bias_term and layer.param_propagate_down[1]:
            layer.blobs[1].diff += dy.sum(axis=(0, 2, 3))
        need_weight, need_bottom = layer.param_propagate_down[0], propagate_down[0]
        wgrad = self._plan(cudnn.WGRAD, x) if need_weight else None
        dgrad = self._plan(cudnn.DGRAD, x) if need_bottom else None
        if wgrad is not None:
            dw = layer.blobs[0].diff
            gradient = backend.get_array_module(dw).empty_like(dw)
            cudnn.execute(wgrad, x, dy, gradient)
            dw += gradient
        if dgrad is not None:
            cudnn.execute(dgrad, dy, layer.blobs[0].data, bottom[0].diff)
        caffe_weight, caffe_bottom = need_weight and wgrad is None, need_bottom and dgrad is None
        if caffe_weight or caffe_bottom:
            self._caffe_backward(x, dy, bottom[0].diff, caffe_weight, caffe_bottom)

    def _caffe_backward(self, x, dy, dx, need_weight, need_bottom):
        """Caffe's backward: per image, dW += dy·colsᵀ and dx = col2im(Wᵀ·dy)."""
        layer = self.layer
        kernel, pad, stride, dilation = self._geometry()
        weights = self._weights()
        weight_diff = layer.blobs[0].diff.reshape(weights.shape)
        for n in range(x.shape[0]):
            g = dy[n].reshape(layer.group, weights.shape[1], -1)
            if need_weight:
                col = _kernels().im2col(x[n], kernel, pad, stride, dilation)
                weight_diff += g @ col.reshape(layer.group, -1, col.shape[1]).transpose(0, 2, 1)
            if need_bottom:
                col = (weights.transpose(0, 2, 1) @ g).reshape(-1, g.shape[2])
                dx[n] = _kernels().col2im(col, x.shape[1:], kernel, pad, stride, dilation)


class PoolingGPU:
    """MAX pooling with the argmax kernels (ceil-mode windows, first maximum on ties) and AVE pooling."""

    def __init__(self, layer):
        self.layer = layer
        self.mask = None

    def forward(self, bottom, top):
        layer, x = self.layer, bottom[0].data
        if layer.max:
            y, mask = _kernels().max_pool_forward(x, layer.kernel, layer.stride, layer.pad, ceil=layer.ceil)
            if len(top) == 2:
                top[1].data[...] = mask
            self.mask = mask if layer.need_backward else None
        else:
            y = _kernels().ave_pool_forward(x, layer.kernel, layer.stride, layer.pad, ceil=layer.ceil)
        top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        layer, dy = self.layer, top[0].diff
        shape = bottom[0].shape
        if layer.max:
            mask = self.mask
            if mask is None:
                mask = _kernels().max_pool_forward(bottom[0].data, layer.kernel, layer.stride, layer.pad,
                                                   ceil=layer.ceil)[1]
            dx = _kernels().max_pool_backward(dy, mask, shape, layer.kernel, layer.stride, layer.pad)
        else:
            dx = _kernels().ave_pool_backward(dy, shape, layer.kernel, layer.stride, layer.pad)
        bottom[0].diff[...] = dx


class LRNGPU:
    """ACROSS_CHANNELS LRN with the kernels, which keep the scale k + alpha/n·Σx² for backward."""

    def __init__(self, layer):
        self.layer = layer
        self.scale = None

    def forward(self, bottom, top):
        layer = self.layer
        y, self.scale = _kernels().lrn_forward(bottom[0].data, layer.size, layer.alpha, layer.beta, layer.k)
        top[0].data[...] = y

    def backward(self, top, propagate_down, bottom):
        if not propagate_down[0]:
            return
        layer = self.layer
        bottom[0].diff[...] = _kernels().lrn_backward(bottom[0].data, top[0].data, self.scale, top[0].diff,
                                                      layer.size, layer.alpha, layer.beta)


class ROIPoolingGPU:
    """RoI max pooling with the original's kernels; the argmax (the top's shape, −1 for empty bins) is kept
    from a TRAIN forward, or computed when backward or ``max_idx`` asks for it."""

    def __init__(self, layer):
        self.layer = layer
        self.argmax = None

    def _pool(self, bottom, with_argmax):
        layer = self.layer
        try:  # the kernels check the batch indices against the features
            top, argmax = _kernels().roi_pool_forward(bottom[0].data, bottom[1].data.reshape(-1, 5), layer.pooled_h,
                                                      layer.pooled_w, float(layer.spatial_scale), with_argmax)
        except Error as exc:
            raise layer.error(str(exc)) from None
        self.argmax = argmax
        return top

    def forward(self, bottom, top):
        layer = self.layer
        top[0].data[...] = self._pool(bottom, layer.phase == "TRAIN" and layer.need_backward)

    def max_idx(self, bottom):
        if self.argmax is None:
            self._pool(bottom, True)
        return self.argmax

    def backward(self, top, propagate_down, bottom):
        if propagate_down[1]:
            bottom[1].diff[...] = 0
        if not propagate_down[0]:
            return
        layer = self.layer
        bottom[0].diff[...] = _kernels().roi_pool_backward(
            top[0].diff, self.max_idx(bottom), bottom[1].data.reshape(-1, 5), bottom[0].shape, layer.pooled_h,
            layer.pooled_w, float(layer.spatial_scale))


def _lrn(layer):
    return LRNGPU(layer) if layer.axes == (1,) else None


#: Layer type → the factory of its GPU variant (None: the layer's own code runs on CuPy).
VARIANTS = {"Convolution": ConvolutionGPU, "Pooling": PoolingGPU, "LRN": _lrn, "ROIPooling": ROIPoolingGPU}


def variant_for(layer):
    """The GPU variant of a layer instance, or None where its own code serves both devices."""
    factory = VARIANTS.get(layer.type)
    return factory(layer) if factory else None

