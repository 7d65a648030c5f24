// RoI max pooling (Fast R-CNN section 2.1), as fastrcnn/layers/roi_pooling.py and caffe-fast-rcnn's
// roi_pooling_layer.cu: each RoI [batch, x1, y1, x2, y2] times spatial_scale (float32), rounded half away from
// zero (roundf), end inclusive, extent at least 1; float32 bin sizes; bin edges floor(p·bin)/ceil((p+1)·bin)
// past the RoI start, clipped to the map. An empty bin gives 0 and argmax −1; otherwise its maximum, the first
// one in row-major order on ties, with argmax h·W + w. Layouts: bottom (N, C, H, W), rois (R, 5), top and
// argmax (R, C, pooled_h, pooled_w).
#include "kernel_common.h"

// The rounded start of a RoI along one axis and its float32 bin size.
__device__ __forceinline__ void roi_axis(float lo, float hi, float spatial_scale, int pooled, int* start,
                                         float* bin) {
    *start = static_cast<int>(roundf(lo * spatial_scale));
    const int end = static_cast<int>(roundf(hi * spatial_scale));
    const int extent = end - *start + 1 > 1 ? end - *start + 1 : 1;
    *bin = static_cast<float>(extent) / static_cast<float>(pooled);
}

// Bin p's edges [*lo, *hi) along one axis, clipped to [0, size).
__device__ __forceinline__ void roi_bin(int p, int start, float bin, int size, int* lo, int* hi) {
    const int a = static_cast<int>(floorf(static_cast<float>(p) * bin)) + start;
    const int b = static_cast<int>(ceilf(static_cast<float>(p + 1) * bin)) + start;
    *lo = a < 0 ? 0 : (a > size ? size : a);
    *hi = b < 0 ? 0 : (b > size ? size : b);
}

// One thread per top element. With with_argmax 0 (the TEST phase) argmax is not written.
template <typename T>
__global__ void roi_pool_forward(const T* bottom, const T* rois, int64 count, int channels, int height,
                                 int width, int pooled_h, int pooled_w, float spatial_scale, int with_argmax,
                                 T* top, int* argmax) {
    FRCNN_LOOP(index, count) {
        const int pw = static_cast<int>(index % pooled_w);
        const int ph = static_cast<int>((index / pooled_w) % pooled_h);
        const int c = static_cast<int>((index / pooled_w / pooled_h) % channels);
        const int64 r = index / pooled_w / pooled_h / channels;
        const T* roi = rois + r * 5;
        const int64 batch = static_cast<int64>(roi[0]);
        int x1, y1, hstart, hend, wstart, wend;
        float bin_w, bin_h;
        roi_axis(static_cast<float>(roi[1]), static_cast<float>(roi[3]), spatial_scale, pooled_w, &x1, &bin_w);
        roi_axis(static_cast<float>(roi[2]), static_cast<float>(roi[4]), spatial_scale, pooled_h, &y1, &bin_h);
        roi_bin(ph, y1, bin_h, height, &hstart, &hend);
        roi_bin(pw, x1, bin_w, width, &wstart, &wend);
        T best = 0;
        int best_at = -1;
        if (hend > hstart && wend > wstart) {
            frcnn_window_max(bottom + (batch * channels + c) * height * width, width, hstart, hend, wstart, wend,
                             &best, &best_at);
        }
        top[index] = best;
        if (with_argmax) argmax[index] = best_at;
    }
}

// One thread per bottom element: the sum of the top diffs whose argmax it is, over the RoIs of its image in
// RoI order (rois order[offsets[n]], ..., order[offsets[n + 1] − 1], ascending), each RoI's bins in row-major
// order: the CPU layer's order of summation, and the same result on every run.
template <typename T>
__global__ void roi_pool_backward(const T* top_diff, const int* argmax, const T* rois, const int* order,
                                  const int* offsets, int64 count, int channels, int height, int width,
                                  int pooled_h, int pooled_w, float spatial_scale, T* bottom_diff) {
    FRCNN_LOOP(index, count) {
        const int w = static_cast<int>(index % width);
        const int h = static_cast<int>((index / width) % height);
        const int c = static_cast<int>((index / width / height) % channels);
        const int64 n = index / width / height / channels;
        const int at = h * width + w;
        T sum = 0;
        for (int k = offsets[n]; k < offsets[n + 1]; ++k) {
            const int64 r = order[k];
            const T* roi = rois + r * 5;
            int x1, y1, lo, hi;
            float bin_w, bin_h;
            roi_axis(static_cast<float>(roi[1]), static_cast<float>(roi[3]), spatial_scale, pooled_w, &x1,
                     &bin_w);
            roi_axis(static_cast<float>(roi[2]), static_cast<float>(roi[4]), spatial_scale, pooled_h, &y1,
                     &bin_h);
            // the bins of a RoI tile [first bin's start, last bin's end) along each axis
            int last;
            roi_bin(0, y1, bin_h, height, &lo, &hi);
            roi_bin(pooled_h - 1, y1, bin_h, height, &last, &hi);
            if (h < lo || h >= hi) continue;
            roi_bin(0, x1, bin_w, width, &lo, &hi);
            roi_bin(pooled_w - 1, x1, bin_w, width, &last, &hi);
            if (w < lo || w >= hi) continue;
            const int64 first = (r * channels + c) * pooled_h * pooled_w;
            for (int ph = 0; ph < pooled_h; ++ph) {
                roi_bin(ph, y1, bin_h, height, &lo, &hi);
                if (h < lo || h >= hi) continue;
                for (int pw = 0; pw < pooled_w; ++pw) {
                    roi_bin(pw, x1, bin_w, width, &lo, &hi);
                    const int64 i = first + ph * pooled_w + pw;
                    if (w >= lo && w < hi && argmax[i] == at) sum += top_diff[i];
                }
            }
        }
        bottom_diff[index] = sum;
    }
}
