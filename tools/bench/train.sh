#!/usr/bin/env bash
# Gate-training speed on the tiny base: tokens/s and the gates' overhead (step time with gates
# / the same frozen model's forward + backward without gates), float32 and bfloat16, both gate
# types; then the peak RSS of a real `agate train` run against its --dry-run estimate.
# Usage: tools/bench/train.sh [AGATE_BIN] [MODEL_DIR] [ROUNDS]   (MODEL_DIR: runs/tiny-pretrain/model)
set -euo pipefail
cd "$(dirname "$0")/../.."
AGATE=${1:-build/agate}
MODEL=${2:-runs/tiny-pretrain/model}
ROUNDS=${3:-3}
[[ -f $MODEL/config.json ]] || { echo "no model at $MODEL: run recipes/tiny/pretrain.yaml first" >&2; exit 1; }
field() { python3 -c "import json,sys; print(json.loads(sys.stdin.readline())['$1'])"; }
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}; 2 threads"
echo "model: $MODEL, seq 128, batch 16 (2048 tokens per step); gate step = fwd + bwd + sparsity loss"
echo
echo "| dtype | gate | gate-training tok/s | frozen fwd+bwd tok/s | overhead |"
echo "|---|---|---|---|---|"
for dtype in float32 bfloat16; do
  for gate in attention mlp; do
    t=(); o=()
    for ((r = 0; r < ROUNDS; r++)); do
      j=$("$AGATE" bench train --model "$MODEL" --dtype $dtype --gate $gate --seq 128 --batch 16 --iters 5 --threads 2)
      t+=("$(echo "$j" | field gate_tokens_per_s)"); o+=("$(echo "$j" | field overhead)")
    done
    tm=$(med "${t[@]}"); om=$(med "${o[@]}")
    printf '| %s | %s | %.0f | %.0f | %.2fx |\n' $dtype $gate "$tm" "$(echo "$tm * $om" | bc -l)" "$om"
  done
done
echo
run=$(mktemp -d)
est=$("$AGATE" train recipes/tiny/cpt.yaml model.path="$MODEL" run.dir="$run/r" --dry-run | grep 'memory estimate' | sed 's/.*= //')
/usr/bin/time -v "$AGATE" train recipes/tiny/cpt.yaml model.path="$MODEL" run.dir="$run/r" train.steps=20 eval.every=20 \
  2>"$run/time" >/dev/null || true
rss=$(grep 'Maximum resident' "$run/time" | awk '{printf "%.1f MB", $NF/1000}')
echo "peak RSS of 'agate train recipes/tiny/cpt.yaml' (20 steps): $rss; dry-run estimate: $est (+ ~165 MB of libtorch itself)"
rm -rf "$run"
