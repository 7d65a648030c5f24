from setuptools import find_packages, setup

setup(
    name="fastrcnn",
    version="0.1.0",
    description="Fast R-CNN object detection as a Caffe-style layer framework on NumPy and CuPy",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["fastrcnn", "fastrcnn.*"]),
    package_data={"fastrcnn": ["cuda/*.cu", "cuda/*.h"]},
    install_requires=[
        "numpy>=1.24",
        "protobuf>=4.21",
        # OpenCV 5 removed readNetFromCaffe, the oracle of the tests; contrib holds selective search.
        "opencv-contrib-python-headless>=4.8,<5",
        "scipy>=1.9",
        "tqdm>=4.60",
        "matplotlib>=3.6",
        "pyyaml>=5.4",
    ],
    extras_require={
        # The CPU build of torch 2.13 lies ready on the CI machine; a range would pull GBs of CUDA wheels.
        # NVRTC compiles the CUDA kernels in the tests (no GPU needed).
        "test": ["pytest>=7", "torch==2.13.0", "pycocotools>=2.0.6", "onnx>=1.15", "onnxruntime>=1.17", "mpi4py>=4",
                 "mpich>=4", "nvidia-cuda-nvrtc>=13; platform_system == 'Linux'"],
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17"],
        # mpiexec and MPI for several processes with no system MPI; tests use the wheel's mpiexec.
        "mpi": ["mpi4py>=4", "mpich>=4"],
        "bench": ["torch==2.13.0"],
        "cuda12": ["cupy-cuda12x>=14", "nvidia-cudnn-cu12>=9", "nvidia-cudnn-frontend>=1.10,<1.29"],
        "cuda13": ["cupy-cuda13x>=14", "nvidia-cudnn-cu13>=9", "nvidia-cudnn-frontend>=1.10,<1.29"],
    },
    entry_points={
        "console_scripts": [
            "frcnn-solve=fastrcnn.cli.solve:main",
            "frcnn-test=fastrcnn.cli.test:main",
            "frcnn-demo=fastrcnn.cli.demo:main",
            "frcnn-compress=fastrcnn.cli.compress:main",
            "frcnn-convert=fastrcnn.cli.convert:main",
            "frcnn-proposals=fastrcnn.cli.proposals:main",
            "frcnn-export=fastrcnn.cli.export:main",
        ]
    },
)
