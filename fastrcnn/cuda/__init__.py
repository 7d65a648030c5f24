"""The GPU engine: CUDA sources of the package (``*.cu``, launched through ``cupy.RawModule``, and compiled
by g++ with ``host_shim.h`` to run on the CPU in the tests), the cuDNN convolution, and the GPU variants of
the layers. Nothing here is imported on a plain CPU run.
"""
