#!/usr/bin/env bash
# One run, one table: agate's gate-training tokens/s against the same step in PyTorch
# (tools/bench_train.py on the venv's torch 2.11), this machine's matmul peak and the model
# FLOPs utilisation (MFU), the gates' overhead, the loader's tokens/s and decode tokens/s
# against keep ratio; on a ~9M and a ~100M-parameter model (random weights: speed does not
# depend on them), against PyTorch eager and under torch.compile (inductor). Same model, data shape, dtype and thread count on both sides;
# medians of ROUNDS interleaved runs.
#
#   tools/bench/perf.sh [DTYPE] [ROUNDS]        (DTYPE: bfloat16 or float32; default bfloat16, 3)
#   COMPILE_MODE=max-autotune tools/bench/perf.sh ...   (the compiled peer's torch.compile mode; default "default")
set -euo pipefail
cd "$(dirname "$0")/../.."
DTYPE=${1:-bfloat16}
ROUNDS=${2:-3}
AGATE=${AGATE:-build/agate}
THREADS=${THREADS:-$(nproc)}
PY=${AGATE_PYTHON:-.venv/bin/python}
COMPILE_MODE=${COMPILE_MODE:-default}
"$PY" -c "import torch" 2>/dev/null || { echo "no torch in $PY: run scripts/setup.sh" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$AGATE" init-model --config tools/bench/model_100m.json --out "$work/m100" --dtype "$DTYPE" >/dev/null
"$AGATE" init-model --config tools/bench/model_9m.json --out "$work/m9" --dtype "$DTYPE" >/dev/null
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.readline())['$1'])"; }
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

peak=$("$AGATE" bench matmul --dtype "$DTYPE" --threads "$THREADS" --iters 3 | field peak_gflops)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); dtype $DTYPE; $THREADS threads;" \
  "torch.compile mode $COMPILE_MODE; OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}; torch $("$PY" -c 'import torch; print(torch.__version__)')"
printf 'matmul peak (%s, best of 256..2048 square GEMMs): %.1f GFLOP/s\n\n' "$DTYPE" "$peak"
echo "| model | params | seq x batch | agate tok/s | PyTorch eager tok/s | PyTorch compile tok/s | agate / eager | agate / compile | MFU | gate overhead |"
echo "|---|---|---|---|---|---|---|---|---|---|"
params() { "$AGATE" inspect "$1" --json | python3 -c 'import json,sys; print("%.0fM" % (json.load(sys.stdin)["num_parameters"] / 1e6))'; }
for spec in "9m:$work/m9:256:8:$(params "$work/m9")" "100m:$work/m100:256:4:$(params "$work/m100")"; do
  IFS=: read -r name dir seq batch params <<<"$spec"
  a=(); p=(); c=(); o=(); g=()
  for ((r = 0; r < ROUNDS; r++)); do  # interleaved: agate, eager, compiled in every round
    j=$("$AGATE" bench train --model "$dir" --dtype "$DTYPE" --seq "$seq" --batch "$batch" --iters 3 --threads "$THREADS" --device cpu)
    a+=("$(echo "$j" | field gate_tokens_per_s)"); o+=("$(echo "$j" | field overhead)"); g+=("$(echo "$j" | field model_gflops_per_s)")
    p+=("$("$PY" tools/bench_train.py --model "$dir" --dtype "$DTYPE" --seq "$seq" --batch "$batch" --iters 3 --threads "$THREADS" | field gate_tokens_per_s)")
    c+=("$("$PY" tools/bench_train.py --compile --compile-mode "$COMPILE_MODE" --model "$dir" --dtype "$DTYPE" --seq "$seq" --batch "$batch" --iters 3 --threads "$THREADS" 2>/dev/null | field gate_tokens_per_s || echo nan)")
  done
  am=$(med "${a[@]}"); pm=$(med "${p[@]}"); cm=$(med "${c[@]}"); om=$(med "${o[@]}"); gm=$(med "${g[@]}")
  printf '| %s | %s | %s x %s | %.0f | %.0f | %.0f | %.2fx | %.2fx | %.1f%% | %.2fx |\n' "$name" "$params" "$seq" "$batch" "$am" "$pm" "$cm" \
    "$(echo "$am / $pm" | bc -l)" "$(echo "$am / $cm" | bc -l)" "$(echo "100 * $gm / $peak" | bc -l)" "$om"
done
echo
data=${DATA:-data/corpus/tokens/train}
if [[ -f "$data/manifest.json" ]]; then
  loader=$("$AGATE" bench loader --data "$data" --seq 128 --batch 16 --batches 2000 2>/dev/null | field tokens_per_s)
  printf 'loader: %.0f M tokens/s (seq 128, batch 16, %s)\n' "$(echo "$loader / 1000000" | bc -l)" "$data"
else
  echo "loader: skipped (no token dataset at $data; set DATA=DIR)"
fi
echo "decode over the ragged cache (9M model, context 1024, 32 new tokens):"
"$AGATE" bench decode --model "$work/m9" --dtype "$DTYPE" --contexts 1024 --keeps 1.0,0.5,0.25 --new 32 --threads "$THREADS" |
  python3 -c '
import json, sys
for line in sys.stdin:
    j = json.loads(line)
    if j.get("mode") == "decode":
        print("  keep %.2f: %.1f tok/s, KV %.2f MB" % (j["keep"], j["decode_tokens_per_s"], j["kv_bytes"] / 1e6))'
