// Caffe's MAX and AVE pooling (pooling_layer.cu), as fastrcnn/layers/pooling.py, on (N, C, H, W) planes; the
// caller sizes the output (ceil or floor rounding and Caffe's pad rule). A MAX window is clipped to the image;
// its first maximum in row-major order wins (Caffe's strict >) and the mask holds it as h·W + w. An AVE
// window's divisor counts the cells inside [−pad, size + pad).
#include "kernel_common.h"

// The window of output p along one axis: [*lo, *hi) clipped to the image, *span its extent within the
// padded size (the AVE divisor's factor).
__device__ __forceinline__ void pool_window(int p, int kernel, int stride, int pad, int size, int* lo, int* hi,
                                            int* span) {
    const int start = p * stride - pad;
    const int end = start + kernel < size + pad ? start + kernel : size + pad;
    *span = end - start;
    *lo = start > 0 ? start : 0;
    *hi = end < size ? end : size;
}

// The outputs [*first, *last) along one axis whose windows hold bottom position x.
__device__ __forceinline__ void pool_outputs(int x, int kernel, int stride, int pad, int pooled, int* first,
                                             int* last) {
    *first = x + pad < kernel ? 0 : (x + pad - kernel) / stride + 1;
    *last = (x + pad) / stride + 1 < pooled ? (x + pad) / stride + 1 : pooled;
}

// One thread per top element.
template <typename T>
__global__ void max_pool_forward(const T* bottom, int64 count, int height, int width, int pooled_h,
                                 int pooled_w, int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h,
                                 int pad_w, T* top, int* mask) {
    FRCNN_LOOP(index, count) {
        const int pw = static_cast<int>(index % pooled_w);
        const int ph = static_cast<int>((index / pooled_w) % pooled_h);
        const T* plane = bottom + index / pooled_w / pooled_h * height * width;
        int hstart, hend, wstart, wend, span;
        pool_window(ph, kernel_h, stride_h, pad_h, height, &hstart, &hend, &span);
        pool_window(pw, kernel_w, stride_w, pad_w, width, &wstart, &wend, &span);
        T best;
        int best_at;
        frcnn_window_max(plane, width, hstart, hend, wstart, wend, &best, &best_at);
        top[index] = best;
        mask[index] = best_at;
    }
}

// One thread per bottom element: the sum of the top diffs whose mask is it, windows in row-major order from
// 0 (the CPU layer's order).
template <typename T>
__global__ void max_pool_backward(const T* top_diff, const int* mask, int64 count, int height, int width,
                                  int pooled_h, int pooled_w, int kernel_h, int kernel_w, int stride_h,
                                  int stride_w, int pad_h, int pad_w, T* bottom_diff) {
    FRCNN_LOOP(index, count) {
        const int w = static_cast<int>(index % width);
        const int h = static_cast<int>((index / width) % height);
        const int64 first = index / width / height * pooled_h * pooled_w;
        int ph0, ph1, pw0, pw1;
        pool_outputs(h, kernel_h, stride_h, pad_h, pooled_h, &ph0, &ph1);
        pool_outputs(w, kernel_w, stride_w, pad_w, pooled_w, &pw0, &pw1);
        T sum = 0;
        for (int ph = ph0; ph < ph1; ++ph)
            for (int pw = pw0; pw < pw1; ++pw) {
                const int64 i = first + ph * pooled_w + pw;
                if (mask[i] == h * width + w) sum += top_diff[i];
            }
        bottom_diff[index] = sum;
    }
}

// One thread per top element: the window's sum (row-major) over its divisor.
template <typename T>
__global__ void ave_pool_forward(const T* bottom, int64 count, int height, int width, int pooled_h,
                                 int pooled_w, int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h,
                                 int pad_w, T* top) {
    FRCNN_LOOP(index, count) {
        const int pw = static_cast<int>(index % pooled_w);
        const int ph = static_cast<int>((index / pooled_w) % pooled_h);
        const T* plane = bottom + index / pooled_w / pooled_h * height * width;
        int hstart, hend, wstart, wend, span_h, span_w;
        pool_window(ph, kernel_h, stride_h, pad_h, height, &hstart, &hend, &span_h);
        pool_window(pw, kernel_w, stride_w, pad_w, width, &wstart, &wend, &span_w);
        T sum = 0;
        for (int h = hstart; h < hend; ++h)
            for (int w = wstart; w < wend; ++w) sum += plane[h * width + w];
        top[index] = sum / static_cast<T>(span_h * span_w);
    }
}

// One thread per bottom element: the sum of top diff / divisor over the windows holding it, in the CPU
// layer's order (kernel offsets in row-major order, that is windows in reverse row-major order).
template <typename T>
__global__ void ave_pool_backward(const T* top_diff, int64 count, int height, int width, int pooled_h,
                                  int pooled_w, int kernel_h, int kernel_w, int stride_h, int stride_w,
                                  int pad_h, int pad_w, T* bottom_diff) {
    FRCNN_LOOP(index, count) {
        const int w = static_cast<int>(index % width);
        const int h = static_cast<int>((index / width) % height);
        const T* diff = top_diff + index / width / height * pooled_h * pooled_w;
        int ph0, ph1, pw0, pw1, lo, hi, span_h, span_w;
        pool_outputs(h, kernel_h, stride_h, pad_h, pooled_h, &ph0, &ph1);
        pool_outputs(w, kernel_w, stride_w, pad_w, pooled_w, &pw0, &pw1);
        T sum = 0;
        for (int ph = ph1 - 1; ph >= ph0; --ph) {
            pool_window(ph, kernel_h, stride_h, pad_h, height, &lo, &hi, &span_h);
            for (int pw = pw1 - 1; pw >= pw0; --pw) {
                pool_window(pw, kernel_w, stride_w, pad_w, width, &lo, &hi, &span_w);
                sum += diff[ph * pooled_w + pw] / static_cast<T>(span_h * span_w);
            }
        }
        bottom_diff[index] = sum;
    }
}
