// The CUDA names the package's kernels use, for g++: a launch runs every (block, thread) of its grid in turn,
// one at a time, so the kernels (which never synchronise threads) compute what they compute on the GPU.
// FRCNN_HOST_LAUNCHER(symbol, kernel) defines the C entry ``void symbol(grid[3], block[3], args)`` where
// ``args`` points at each argument's value, as cuLaunchKernel's kernelParams, and ``symbol_signature()``: the
// kernel's parameter types as NumPy kinds and sizes (``*f4 i8 ...``, ``*`` for a pointer), which the caller
// checks its arguments against.
#ifndef FRCNN_HOST_SHIM_H
#define FRCNN_HOST_SHIM_H
#ifdef __CUDACC__
#error "host_shim.h is for host compilers; CUDA compilers use the real definitions"
#endif

#include <cmath>
#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))

struct frcnn_dim3 {
    unsigned int x, y, z;
};

// Per calling thread, so that several host threads may launch at once.
inline thread_local frcnn_dim3 gridDim, blockDim, blockIdx, threadIdx;

using std::ceil;
using std::floor;
using std::pow;
using ::ceilf;
using ::floorf;
using ::fmaxf;
using ::fminf;
using ::powf;
using ::roundf;

// Threads run one at a time: a plain read-modify-write is atomic.
template <typename T>
inline T atomicAdd(T* address, T value) {
    T old = *address;
    *address = old + value;
    return old;
}

template <typename T>
inline T __ldg(const T* address) {
    return *address;
}

// A parameter type as a NumPy kind and size: "f4", "i8", "u8"; "*f4" for a pointer to float.
template <typename T>
std::string frcnn_host_code() {
    if constexpr (std::is_pointer_v<T>) {
        return "*" + frcnn_host_code<std::remove_cv_t<std::remove_pointer_t<T>>>();
    } else {
        static_assert(std::is_arithmetic_v<T>, "kernel parameters are numbers and pointers to numbers");
        const char kind = std::is_floating_point_v<T> ? 'f' : (std::is_signed_v<T> ? 'i' : 'u');
        return std::string(1, kind) + std::to_string(sizeof(T));
    }
}

template <typename... A>
const char* frcnn_host_signature(void (*)(A...)) {
    static const std::string codes = ((frcnn_host_code<A>() + " ") + ... + std::string());
    return codes.c_str();
}

template <typename... A, std::size_t... I>
inline void frcnn_host_call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_reference_t<A>*>(args[I])...);
}

template <typename... A>
inline void frcnn_host_launch(void (*kernel)(A...), const unsigned int* grid, const unsigned int* block,
                              void** args) {
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    for (unsigned int bz = 0; bz < grid[2]; ++bz)
        for (unsigned int by = 0; by < grid[1]; ++by)
            for (unsigned int bx = 0; bx < grid[0]; ++bx) {
                blockIdx = {bx, by, bz};
                for (unsigned int tz = 0; tz < block[2]; ++tz)
                    for (unsigned int ty = 0; ty < block[1]; ++ty)
                        for (unsigned int tx = 0; tx < block[0]; ++tx) {
                            threadIdx = {tx, ty, tz};
                            frcnn_host_call(kernel, args, std::index_sequence_for<A...>{});
                        }
            }
}

#define FRCNN_HOST_LAUNCHER(symbol, ...)                                                             \
    extern "C" void symbol(const unsigned int* grid, const unsigned int* block, void** args) { \
        frcnn_host_launch(__VA_ARGS__, grid, block, args);                                       \
    }                                                                                            \
    extern "C" const char* symbol##_signature() { return frcnn_host_signature(__VA_ARGS__); }

#endif
