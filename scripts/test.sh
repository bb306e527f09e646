#!/usr/bin/env bash
# Installs what is missing, configures, builds and runs the whole test suite.
# Usage: scripts/test.sh [ctest args...]     e.g. scripts/test.sh -R Safetensors
# Env: BUILD_DIR (default build), JOBS (default nproc), AGATE_USE_CUDA (AUTO|ON|OFF, default AUTO).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
# The real model the oracle tests use (cached: converted once per checkout, downloaded once per machine).
bash scripts/get_model.sh smollm2

BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
# ccache keys on relative paths under the checkout, so a fresh clone reuses earlier objects.
export CCACHE_BASEDIR=$PWD CCACHE_NOHASHDIR=1
start=$(date +%s)
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DAGATE_USE_CUDA="${AGATE_USE_CUDA:-AUTO}" >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS"
echo "[test] build took $(( $(date +%s) - start )) s"

# CUDA must not switch itself off silently: where nvcc and a CUDA wheel exist, the build must
# have compiled agate's CUDA kernels (and so the NCCL process group).
info=$("$BUILD_DIR/agate" --version)
echo "[test] $info"
wheel_cuda=$(.venv/bin/python -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null || true)
if [[ ${AGATE_USE_CUDA:-AUTO} != OFF && -n $wheel_cuda ]] && { command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]]; }; then
  if [[ $info != *"CUDA kernels compiled"* ]]; then
    echo "[test] error: nvcc and a CUDA torch ($wheel_cuda) are here but the build has no CUDA kernels" >&2
    exit 1
  fi
fi

start=$(date +%s)
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" "$@"
echo "[test] tests took $(( $(date +%s) - start )) s"
