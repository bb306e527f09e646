#!/usr/bin/env bash
# Gated attention side by side: agate's kernels (`agate bench attention --kernel flash|rows|
# reference`) against the PyTorch 2.x peers a user would pick (tools/bench/attention_peers.py:
# eager composed, torch.compile, SDPA with a float or boolean mask, FlexAttention, and SDPA plain
# causal as the ungated reference), on one attention layer of SmolLM2-135M's shape by default.
# Every run is a fresh process; runs are interleaved in rounds (round r: every implementation once
# per configuration, the order rotated each round) so machine noise hits all alike. Writes
# $OUT/results.jsonl (one JSON line per run, "round" added) and $OUT/table.md (via
# tools/bench/attention_table.py: median across rounds, agate flash against the best peer and
# against SDPA plain causal), and prints the table.
#
#   tools/bench/attention.sh
# Environment (defaults): SEQS ("512 1024 2048 4096 8192"), DTYPES ("float32 bfloat16"),
#   MODES ("forward train"), THREADS (2), ROUNDS (3), ITERS (5: timed calls per run),
#   MAX_GB (16: configurations whose estimated peak exceeds it are skipped and reported as such),
#   BATCH (1), HEADS (9), KV_HEADS (3), HEAD_DIM (64), KEEP (0.5), WINDOW (0), RECENT (0),
#   KERNELS ("flash rows reference"), PEERS ("eager compile sdpa-mask sdpa-bool flex sdpa-causal"),
#   RUN_TIMEOUT (1800 s per run), OUT (runs/bench-attention), AGATE (build/agate),
#   DEVICE (cpu; cuda runs both sides on the GPU, peak = the CUDA caching allocator's),
#   AGATE_PYTHON (.venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/../.."
AGATE=${AGATE:-build/agate}
PY=${AGATE_PYTHON:-.venv/bin/python}
SEQS=${SEQS:-"512 1024 2048 4096 8192"}
DTYPES=${DTYPES:-"float32 bfloat16"}
MODES=${MODES:-"forward train"}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
ITERS=${ITERS:-5}
MAX_GB=${MAX_GB:-16}
B=${BATCH:-1} H=${HEADS:-9} HKV=${KV_HEADS:-3} HD=${HEAD_DIM:-64}
KEEP=${KEEP:-0.5} WINDOW=${WINDOW:-0} RECENT=${RECENT:-0}
KERNELS=${KERNELS:-"flash rows reference"}
DEVICE=${DEVICE:-cpu}
PEERS=${PEERS:-"eager compile sdpa-mask sdpa-bool flex sdpa-causal"}
RUN_TIMEOUT=${RUN_TIMEOUT:-1800}
OUT=${OUT:-runs/bench-attention}
[ -x "$AGATE" ] || { echo "no agate binary at $AGATE: build first (cmake --build build)" >&2; exit 1; }
"$PY" -c "import torch" 2>/dev/null || { echo "no torch in $PY: run scripts/setup.sh" >&2; exit 1; }
mkdir -p "$OUT/logs"
results=$OUT/results.jsonl
[ -s "$results" ] && mv "$results" "$OUT/results.prev.jsonl"
: >"$results"
# Inductor's cache in the output folder, emptied first: round 0 compiles cold, later rounds hit
# the cache (compile_s in the table shows both: median / max).
export TORCHINDUCTOR_CACHE_DIR=$(realpath -m "$OUT")/inductor-cache
rm -rf "$TORCHINDUCTOR_CACHE_DIR"
export OMP_NUM_THREADS=$THREADS

# Estimated peak bytes of one step: B*H*T*T score elements times the bytes each implementation
# keeps per element (peak_bytes measured at T=512 by this script, the larger of float32 and
# bfloat16, rounded up; 0 = memory linear in T). agate flash counts as linear (its blocked
# kernel's contract; until it lands it runs the rows path, ~16 bytes per element, under the cap).
per_elem() {  # impl mode
  case "$1:$2" in
    flash:*|sdpa-causal:*) echo 0 ;;
    sdpa-bool:train) echo 0 ;;                   # not run: the peer reports itself as not applicable
    rows:forward|reference:forward) echo 20 ;;   # forward without autograd takes the reference path
    rows:train) echo 16 ;;
    reference:train) echo 36 ;;
    eager:*|compile:train) echo 16 ;;
    compile:forward) echo 12 ;;
    sdpa-mask:forward|sdpa-bool:forward) echo 8 ;;
    sdpa-mask:train) echo 20 ;;
    flex:*) echo 2 ;;                            # block mask and buffers: mostly linear
    *) echo 40 ;;
  esac
}
over_cap() {  # impl mode T -> prints the estimate in GB and succeeds when it exceeds MAX_GB
  local f; f=$(per_elem "$1" "$2")
  awk -v f="$f" -v t="$3" -v b="$B" -v h="$H" -v cap="$MAX_GB" \
    'BEGIN { gb = f * t * t * b * h / 2^30; printf "%.3g", gb; exit !(gb > cap) }'
}

shape=(--batch "$B" --heads "$H" --kv-heads "$HKV" --head-dim "$HD" --keep "$KEEP" --window "$WINDOW" --recent "$RECENT"
  --iters "$ITERS" --threads "$THREADS" --device "$DEVICE")
impls=()
for k in $KERNELS; do impls+=("agate:$k"); done
for p in $PEERS; do impls+=("pytorch:$p"); done
n=${#impls[@]}

# A record the script writes itself (skipped or failed runs), in the runs' schema.
note() {  # round impl kernel mode dtype T status error
  python3 -c 'import json, sys
r, impl, kernel, mode, dtype, T, status, error, B, H, Hkv, hd, keep, W, R, th = sys.argv[1:]
print(json.dumps({"round": int(r), "impl": impl, "kernel": kernel, "mode": mode, "dtype": dtype, "T": int(T),
                  "batch": int(B), "heads": int(H), "kv_heads": int(Hkv), "head_dim": int(hd), "keep": float(keep),
                  "window": int(W), "recent": int(R), "threads": int(th), "status": status, "error": error}))' \
    "$@" "$B" "$H" "$HKV" "$HD" "$KEEP" "$WINDOW" "$RECENT" "$THREADS"
}

# One run: appends its JSON line (round added), or a failed record when it produced none.
run_one() {  # round impl kernel mode dtype T
  local r=$1 impl=$2 kernel=$3 mode=$4 dtype=$5 T=$6 log line rc=0
  log=$OUT/logs/$impl-$kernel-$mode-$dtype-$T-r$r.log
  if [ "$impl" = agate ]; then
    line=$(timeout "$RUN_TIMEOUT" "$AGATE" bench attention --kernel "$kernel" --mode "$mode" --dtype "$dtype" --seq "$T" \
      "${shape[@]}" 2>"$log" | tail -n 1) || rc=$?
  else
    line=$(timeout "$RUN_TIMEOUT" "$PY" tools/bench/attention_peers.py --impl "$kernel" --mode "$mode" --dtype "$dtype" \
      --seq "$T" "${shape[@]}" 2>"$log" | tail -n 1) || rc=$?
  fi
  if [[ "$line" == "{"* ]]; then
    line="{\"round\": $r, ${line#\{}"
  else
    local why="exit status $rc"
    [ "$rc" = 124 ] && why="timed out after ${RUN_TIMEOUT}s"
    [ "$rc" = 137 ] && why="killed (out of memory?)"
    line=$(note "$r" "$impl" "$kernel" "$mode" "$dtype" "$T" failed "$why: $(tail -n 1 "$log" | cut -c1-300)")
  fi
  echo "$line" >>"$results"
  printf '  r%d %-7s %-11s %-7s %-8s T=%-5s %s\n' "$r" "$impl" "$kernel" "$mode" "$dtype" "$T" \
    "$(echo "$line" | python3 -c 'import json,sys; j=json.loads(sys.stdin.read()); print("%.2f ms" % j["median_ms"] if j.get("status")=="ok" else j.get("status","?")+": "+j.get("error","")[:80])')" >&2
}

echo "attention benchmark: DEVICE=$DEVICE SEQS=\"$SEQS\" DTYPES=\"$DTYPES\" MODES=\"$MODES\" THREADS=$THREADS ROUNDS=$ROUNDS" \
  "B=$B H=$H Hkv=$HKV hd=$HD keep=$KEEP window=$WINDOW recent=$RECENT MAX_GB=$MAX_GB -> $results" >&2
for ((r = 0; r < ROUNDS; r++)); do
  for mode in $MODES; do
    for dtype in $DTYPES; do
      for T in $SEQS; do
        for ((i = 0; i < n; i++)); do
          spec=${impls[$(((i + r) % n))]}
          impl=${spec%%:*} kernel=${spec#*:}
          if est=$(over_cap "$kernel" "$mode" "$T"); then
            if [ "$r" = 0 ]; then
              note 0 "$impl" "$kernel" "$mode" "$dtype" "$T" skipped "estimated peak $est GB over MAX_GB=$MAX_GB" >>"$results"
              printf '  r%d %-7s %-11s %-7s %-8s T=%-5s skipped (estimated %s GB > %s)\n' "$r" "$impl" "$kernel" "$mode" "$dtype" "$T" "$est" "$MAX_GB" >&2
            fi
            continue
          fi
          run_one "$r" "$impl" "$kernel" "$mode" "$dtype" "$T"
        done
      done
    done
  done
done
python3 tools/bench/attention_table.py "$results" | tee "$OUT/table.md"
