// Caffe's im2col and col2im (im2col.cu) with padding, stride and dilation, as the columns of
// fastrcnn/layers/conv.py:
//   col[(c·kh + i)·kw + j][oh·out_w + ow] = image[c][oh·sh − ph + i·dh][ow·sw − pw + j·dw], 0 in the padding.
// image (C, H, W), col (C·kh·kw, out_h·out_w).
#include "kernel_common.h"

// One thread per column element.
template <typename T>
__global__ void im2col(const T* image, int64 count, int height, int width, int kernel_h, int kernel_w,
                       int pad_h, int pad_w, int stride_h, int stride_w, int dilation_h, int dilation_w,
                       int out_h, int out_w, T* col) {
    FRCNN_LOOP(index, count) {
        const int ow = static_cast<int>(index % out_w);
        const int oh = static_cast<int>((index / out_w) % out_h);
        const int j = static_cast<int>((index / out_w / out_h) % kernel_w);
        const int i = static_cast<int>((index / out_w / out_h / kernel_w) % kernel_h);
        const int64 c = index / out_w / out_h / kernel_w / kernel_h;
        const int h = oh * stride_h - pad_h + i * dilation_h;
        const int w = ow * stride_w - pad_w + j * dilation_w;
        col[index] = (h >= 0 && h < height && w >= 0 && w < width) ? image[(c * height + h) * width + w] : T(0);
    }
}

// One thread per image element: the sum of the column entries that sample it, kernel offsets (i, j) in
// row-major order from 0, the CPU layer's order of summation.
template <typename T>
__global__ void col2im(const T* col, int64 count, int height, int width, int kernel_h, int kernel_w, int pad_h,
                       int pad_w, int stride_h, int stride_w, int dilation_h, int dilation_w, int out_h,
                       int out_w, T* image) {
    FRCNN_LOOP(index, count) {
        const int w = static_cast<int>(index % width);
        const int h = static_cast<int>((index / width) % height);
        const int64 c = index / width / height;
        T sum = 0;
        for (int i = 0; i < kernel_h; ++i) {
            const int hh = h + pad_h - i * dilation_h;
            if (hh < 0 || hh % stride_h != 0 || hh / stride_h >= out_h) continue;
            for (int j = 0; j < kernel_w; ++j) {
                const int ww = w + pad_w - j * dilation_w;
                if (ww < 0 || ww % stride_w != 0 || ww / stride_w >= out_w) continue;
                sum += col[(((c * kernel_h + i) * kernel_w + j) * out_h + hh / stride_h) * out_w + ww / stride_w];
            }
        }
        image[index] = sum;
    }
}
