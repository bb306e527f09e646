#!/usr/bin/env bash
# Installs what is missing, configures, builds and runs the whole test suite.
# Usage: scripts/test.sh [ctest args...]     e.g. scripts/test.sh -R Safetensors
# Env: BUILD_DIR (default build), JOBS (default nproc).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}
start=$(date +%s)
cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j "$JOBS"
echo "[test] build took $(( $(date +%s) - start )) s"

start=$(date +%s)
ctest --test-dir "$BUILD_DIR" --output-on-failure -j "$JOBS" "$@"
echo "[test] tests took $(( $(date +%s) - start )) s"
