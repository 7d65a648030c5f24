// Greedy non-maximum suppression in bitmask form, as fastrcnn.rcnn.boxes.nms (the original's Cython nms):
// boxes sorted by descending score (a stable sort, done by the caller), float32 IoU with +1 widths in the same
// order of operations, a box suppressed where its IoU with a kept box, as a double, is >= thresh.
#include "kernel_common.h"

typedef unsigned long long uint64;

// One thread per (box i, block b of 64 boxes): bit j of mask[i·blocks + b] is set where box 64·b + j comes
// after box i and overlaps it by at least thresh. boxes is (n, 4) [x1, y1, x2, y2] in score order.
FRCNN_EXPORT void nms_mask(const float* boxes, int n, int blocks, double thresh, uint64* mask) {
    FRCNN_LOOP(index, static_cast<int64>(n) * blocks) {
        const int64 i = index / blocks;
        const int b = static_cast<int>(index % blocks);
        const float* a = boxes + i * 4;
        const float area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1);
        uint64 bits = 0;
        for (int j = 0; j < 64; ++j) {
            const int64 k = static_cast<int64>(b) * 64 + j;
            if (k <= i || k >= n) continue;
            const float* o = boxes + k * 4;
            const float area_o = (o[2] - o[0] + 1) * (o[3] - o[1] + 1);
            const float x2 = o[2] < a[2] ? o[2] : a[2], x1 = o[0] > a[0] ? o[0] : a[0];
            const float y2 = o[3] < a[3] ? o[3] : a[3], y1 = o[1] > a[1] ? o[1] : a[1];
            float w = x2 - x1 + 1, h = y2 - y1 + 1;
            w = w < 0 ? 0.0f : w;
            h = h < 0 ? 0.0f : h;
            const float inter = w * h;
            const float overlap = inter / (area_a + area_o - inter);
            if (static_cast<double>(overlap) >= thresh) bits |= 1ULL << j;
        }
        mask[index] = bits;
    }
}

// A single thread walks the boxes in score order: each box not removed by an earlier kept box is kept and
// removes the boxes its mask row marks. removed (blocks words) must be zero; keep[0 .. *kept) gets the kept
// positions in score order.
FRCNN_EXPORT void nms_scan(const uint64* mask, int n, int blocks, uint64* removed, int* keep, int* kept) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    int count = 0;
    for (int i = 0; i < n; ++i) {
        if (removed[i / 64] >> (i % 64) & 1ULL) continue;
        keep[count++] = i;
        const uint64* row = mask + static_cast<int64>(i) * blocks;
        for (int b = i / 64; b < blocks; ++b) removed[b] |= row[b];
    }
    *kept = count;
}
