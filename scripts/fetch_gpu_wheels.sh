#!/usr/bin/env bash
# Download the wheels a GPU machine without internet lacks, into a folder it is given with the checkout
# (scripts/gpu_check.sh --wheels DIR installs them with pip --no-index):
#   scripts/fetch_gpu_wheels.sh [-d DIR] [--python VERSIONS] [--with "PKG ..."]
# The lent GPU machines have CuPy 14, PyTorch (whose nvidia-cudnn wheel brings libcudnn), torchvision and
# OpenCV, but not NVIDIA's cuDNN frontend (module cudnn), which the GPU engine's convolutions need: by
# default only nvidia-cudnn-frontend is fetched, for every CPython in VERSIONS (pip on the machine picks
# its own; about 6 MB each). --with adds more requirements, e.g. --with "nvidia-cudnn-cu13>=9" (about
# 700 MB: more than a carried folder may hold, 64 MiB) or --with "opencv-contrib-python-headless>=4.8,<5".
set -euo pipefail
dir=wheels
versions="3.10 3.11 3.12 3.13"
extra=""
while [ $# -gt 0 ]; do
    case "$1" in
        -d) dir="$2"; shift 2 ;;
        --python) versions="$2"; shift 2 ;;
        --with) extra="$2"; shift 2 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "fetch_gpu_wheels.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$dir"
# the bounds of setup.py's [cuda12]/[cuda13] extras
requirements=("nvidia-cudnn-frontend>=1.10,<1.29")
for req in $extra; do requirements+=("$req"); done
for version in $versions; do
    python3 -m pip download "${requirements[@]}" --no-deps --only-binary :all: --python-version "$version" \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 \
        -d "$dir" --quiet
done
ls -l "$dir"
size=$(du -sm "$dir" | cut -f1)
echo "$dir: ${size} MiB"
if [ "$size" -gt 60 ]; then
    echo "fetch_gpu_wheels.sh: $dir holds ${size} MiB, over what a carried folder may hold (64 MiB in all)" >&2
    exit 1
fi
