#!/usr/bin/env bash
# Runs agate's CUDA flash attention kernels (src/model/cuda/flash_attention.cu and the .cuh
# kernel headers it includes) on the CPU: the kernels and their host code, compiled as C++
# against an emulation of the CUDA features they use (prelude.h: blocks of coroutine threads in a
# random order, barriers, warp shuffles and votes, nvcuda::wmma with a scrambled fragment
# layout), checked by the CUDA test cases (tests/model/test_flash_cuda.cpp) on CPU tensors: the
# float32 FMA kernels and the bfloat16 tensor-core kernels alike.
# A development check for machines without a GPU: it exercises indexing, masking, the online
# softmax, the gradient formulas, tile skipping, fragment use (a guessed fragment layout fails)
# and barrier placement (missing barriers show as wrong values or an abort; a missing __syncwarp
# right after a shuffle or vote is not seen, those order memory here), not the GPU's memory
# model, timing or the compiler's device code.
# Needs a configured and built tree (libagate.a, compile_commands.json), CPU or CUDA flavour.
# Usage: tools/flash_cuda_emu/run.sh [BUILD_DIR] [gtest args...]   (takes a minute or two)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
shift || true
out=$build/flash_cuda_emu
mkdir -p "$out"
python3 "$root/tools/flash_cuda_emu/gen.py" "$root" "$out"
# The test TU's compile flags, the agate_tests link line.
cmd=$(python3 - "$build" "$root" <<'PY'
import json, sys
build, root = sys.argv[1], sys.argv[2]
for e in json.load(open(f"{build}/compile_commands.json")):
    if e["file"].endswith("tests/model/test_flash_cuda.cpp"):
        c = e["command"].split(" -o ")[0]
        print(c.replace(" -O1", " -O2"))
        break
else:
    sys.exit("test_flash_cuda.cpp is not in compile_commands.json: configure and build first")
PY
)
(cd "$build/tests" && $cmd -DAGATE_USE_CUDA=1 -Wno-unknown-pragmas -fno-strict-aliasing -I"$out" -o "$out/emu_test.o" -c "$out/emu_test.cpp")
link=$(sed -E "s# CMakeFiles/agate_tests.dir/[^ ]+\.o##g; s# -o agate_tests # $out/emu_test.o -o $out/emu_test #" "$build/tests/CMakeFiles/agate_tests.dir/link.txt")
(cd "$build/tests" && eval "$link")
"$out/emu_test" "$@"
