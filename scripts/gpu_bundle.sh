#!/usr/bin/env bash
# Packs what scripts/test_gpu.sh needs on a GPU machine that has torch 2.11.0+cu130 and nvcc
# but no apt and none of Debian's -dev libraries: the CUDA build of agate and its tests, the
# SentencePiece shim, and the non-Torch shared libraries they link (spdlog, fmt, yaml-cpp,
# SentencePiece, libstdc++). Torch, CUDA and NCCL come from the GPU machine's own torch wheel.
#
#   scripts/gpu_bundle.sh [BUILD_DIR]      -> gpu-bundle/ (git-ignored; ~15 MB)
#
# Carry gpu-bundle/ to the GPU machine with the source tree (the device tool: carry
# ["gpu-bundle"]), then run scripts/test_gpu.sh there. The binaries need a glibc at least as
# new as this machine's (Debian 12: 2.36); test_gpu.sh checks and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
[[ -x $BUILD/agate && -x $BUILD/tests/agate_tests ]] || { echo "[bundle] error: build first (scripts/test.sh or cmake --build $BUILD)" >&2; exit 1; }
[[ $("$BUILD/agate" --version) == *"CUDA kernels compiled"* ]] || {  # (not grep -q: SIGPIPE under pipefail)
  echo "[bundle] error: $BUILD/agate has no CUDA kernels (configure with -DAGATE_USE_CUDA=ON on a machine with nvcc)" >&2; exit 1; }
out=gpu-bundle
rm -rf "$out.tmp" && mkdir -p "$out.tmp/bin" "$out.tmp/lib"
cp "$BUILD/agate" "$BUILD/tests/agate_tests" "$out.tmp/bin/"
cp "$BUILD/libagate_spm.so" "$out.tmp/lib/"
# Every shared library the binaries and the shim take from the system, except glibc's own and
# what the torch wheel provides.
for f in "$BUILD/agate" "$BUILD/tests/agate_tests" "$BUILD/libagate_spm.so"; do
  ldd "$f" | awk '/=> \// {print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|libutil.so*|ld-linux*|libgcc_s.so*) ;;
    libtorch*|libc10*|libcudart*|libcublas*|libnccl*|libcudnn*|libnv*|libcu*|libgomp*|libshm*) ;;
    *) cp -L "$lib" "$out.tmp/lib/" ;;
  esac
done
glibc=$(ldd --version | head -1 | awk '{print $NF}')
echo "$glibc" >"$out.tmp/GLIBC"
"$BUILD/agate" --version >"$out.tmp/VERSION"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "[bundle] $out: $(du -sh "$out" | cut -f1) ($(ls "$out/lib" | tr '\n' ' ')); built against glibc $glibc"
