// Caffe's LRN across channels (lrn_layer.cu), as fastrcnn/layers/normalization.py on (N, C, H, W):
// scale = k + alpha/size · Σ x² over the size channels centred on each (zero padded), top = x · scale^−beta.
// The window sums add the centre, then the channels at distance 1, 2, ... below before above: the CPU
// layer's order.
#include "kernel_common.h"

// Σ over the window of channel c of value(c') (T value(int64 offset of c' from channel 0)).
template <typename T, typename F>
__device__ __forceinline__ T lrn_window(int c, int channels, int64 stride, int size, F value) {
    T sum = value(c * stride);
    for (int shift = 1; shift <= size / 2; ++shift) {
        if (c - shift >= 0) sum += value((c - shift) * stride);
        if (c + shift < channels) sum += value((c + shift) * stride);
    }
    return sum;
}

// One thread per element; norm = alpha/size.
template <typename T>
__global__ void lrn_forward(const T* bottom, int64 count, int channels, int64 spatial, int size, T norm, T k,
                            T neg_beta, T* top, T* scale) {
    FRCNN_LOOP(index, count) {
        const int c = static_cast<int>(index / spatial % channels);
        const T* column = bottom + index - c * spatial;
        T s = lrn_window<T>(c, channels, spatial, size, [column](int64 at) { return column[at] * column[at]; });
        s *= norm;
        s += k;
        scale[index] = s;
        top[index] = frcnn_pow(s, neg_beta) * bottom[index];
    }
}

// dx = dy · scale^−beta + coef · x · Σ_window dy·y/scale, coef = −2·beta·alpha/size (the window is
// symmetric, so the adjoint sum is the same window sum).
template <typename T>
__global__ void lrn_backward(const T* bottom, const T* top, const T* scale, const T* top_diff, int64 count,
                             int channels, int64 spatial, int size, T neg_beta, T coef, T* bottom_diff) {
    FRCNN_LOOP(index, count) {
        const int c = static_cast<int>(index / spatial % channels);
        const int64 first = index - c * spatial;
        T d = lrn_window<T>(c, channels, spatial, size, [=](int64 at) {
            return top_diff[first + at] * top[first + at] / scale[first + at];
        });
        d *= bottom[index];
        d *= coef;
        d += frcnn_pow(scale[index], neg_beta) * top_diff[index];
        bottom_diff[index] = d;
    }
}
