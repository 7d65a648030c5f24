#!/usr/bin/env bash
# The one command a GPU machine runs on a fresh copy of the repository (no internet needed):
#   scripts/gpu_check.sh [--wheels DIR] [--out DIR] [--dry-run]
# Stages, limits and the JSON summary: scripts/gpu_check.py. Wheels to carry: scripts/fetch_gpu_wheels.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
