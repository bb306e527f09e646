#!/usr/bin/env bash
# Forward tokens/s of agate vs the Python reference (tools/llama_reference.py on the venv's
# torch) on the same ~9M-parameter model, side by side in one run, plus weight loading.
# Usage: tools/bench/forward.sh [AGATE_BIN] [ROUNDS]     (needs the venv from scripts/setup.sh)
# Prints a markdown table. Each cell: median over ROUNDS rounds of (median of 5 forwards);
# agate and Python alternate within each round so machine noise hits both alike.
set -euo pipefail
cd "$(dirname "$0")/../.."
AGATE=${1:-build/agate}
ROUNDS=${2:-3}
PY=${AGATE_PYTHON:-.venv/bin/python}
model=$(mktemp -d)/tiny-9m
trap 'rm -rf "$(dirname "$model")"' EXIT
"$AGATE" init-model --config tools/bench/model_9m.json --out "$model" --seed 0 2>/dev/null

field() { $PY -c "import json,sys; print(json.loads(sys.stdin.readline())['$1'])"; }
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
echo "model: tools/bench/model_9m.json (8.9M params: 6 layers, d 256, GQA 8/4, vocab 8192), seq 256, batch 1"
echo
echo "| dtype | threads | agate tok/s | python tok/s | agate / python |"
echo "|---|---|---|---|---|"
for dtype in float32 bfloat16; do
  for threads in 1 2; do
    a=(); p=()
    for ((r = 0; r < ROUNDS; r++)); do
      a+=("$("$AGATE" bench forward --model "$model" --dtype $dtype --threads $threads --iters 5 | field tokens_per_s_median)")
      p+=("$($PY tools/bench_forward.py --model "$model" --dtype $dtype --threads $threads --iters 5 | field tokens_per_s_median)")
    done
    am=$(med "${a[@]}"); pm=$(med "${p[@]}")
    printf '| %s | %s | %.0f | %.0f | %.2fx |\n' $dtype $threads "$am" "$pm" "$(echo "$am / $pm" | bc -l)"
  done
done
echo
echo "| load (f32 file) | agate load | python load | plain read of the file (agate / python) |"
echo "|---|---|---|---|"
for dtype in float32 bfloat16; do
  aj=$("$AGATE" bench load --model "$model" --dtype $dtype --iters 5)
  pj=$($PY tools/bench_forward.py --model "$model" --dtype $dtype --load-only --iters 5)
  printf '| -> %s | %.1f ms | %.1f ms | %.1f ms / %.1f ms |\n' $dtype \
    "$(echo "$aj" | field load_s | awk '{print $1*1000}')" "$(echo "$pj" | field load_s | awk '{print $1*1000}')" \
    "$(echo "$aj" | field read_s | awk '{print $1*1000}')" "$(echo "$pj" | field read_s | awk '{print $1*1000}')"
done
