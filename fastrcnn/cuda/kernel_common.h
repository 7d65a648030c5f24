// Shared definitions of the package's CUDA sources. The same sources compile with NVRTC/nvcc for the GPU and
// with g++ for the CPU (host_shim.h), where every block and thread of a launch runs in turn.
#ifndef FRCNN_KERNEL_COMMON_H
#define FRCNN_KERNEL_COMMON_H

#ifndef __CUDACC__
#include "host_shim.h"
#endif

typedef long long int64;

// A kernel that is no template: an unmangled name (extern "C"), for RawModule.get_function and ctypes alike.
#define FRCNN_EXPORT extern "C" __global__

// Grid-stride loop over [0, n): any launch size covers every index.
#define FRCNN_LOOP(i, n)                                                                  \
    for (int64 i = static_cast<int64>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
         i += static_cast<int64>(blockDim.x) * gridDim.x)

// pow in the precision of T (powf for float).
__device__ __forceinline__ float frcnn_pow(float a, float b) { return powf(a, b); }
__device__ __forceinline__ double frcnn_pow(double a, double b) { return pow(a, b); }

// The first maximum in row-major order of plane[h·width + w] over [h0, h1) × [w0, w1) (not empty): Caffe's
// strict > from the window's first cell. Its value goes to *best, its position h·width + w to *best_at.
template <typename T>
__device__ __forceinline__ void frcnn_window_max(const T* plane, int width, int h0, int h1, int w0, int w1,
                                                 T* best, int* best_at) {
    *best_at = h0 * width + w0;
    *best = plane[*best_at];
    for (int h = h0; h < h1; ++h)
        for (int w = w0; w < w1; ++w)
            if (plane[h * width + w] > *best) {
                *best_at = h * width + w;
                *best = plane[*best_at];
            }
}

#endif
