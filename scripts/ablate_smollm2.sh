#!/usr/bin/env bash
# Issue 19's training ablation on SmolLM2-135M: every variant of recipes/smollm2/ablations.txt
# (recipes/smollm2/gates.yaml + the file's `@base` overrides + one changed factor) is trained on the same data for the same
# steps, exported, and evaluated on the held-out tasks of scripts/curves_smollm2.sh; the
# training-free baselines are evaluated once on the same samples. Writes
#   OUT/ablation.md, OUT/ablation.json   every variant x deployment x task x budget, with the
#                                        paired bootstrap 95% interval against the best baseline
#   OUT/runs/NAME/ (metrics.jsonl, logs), OUT/exports/NAME/, OUT/eval/{baselines,NAME}/TASK.json
# Needs the model and the training mix (scripts/train_smollm2_gates.sh makes both). Re-running
# skips what is done (trained runs, exports, evaluated tasks).
#
# Settings (environment): OUT (runs/ablate-smollm2), VARIANTS (recipes/smollm2/ablations.txt),
# ONLY (names to run, space-separated; default all), STEPS (default 300), TRAIN_SECONDS (if set:
# a 6-step probe of every variant at once measures the slowest step and STEPS becomes what fits
# in TRAIN_SECONDS), BATCH (sequences per step, default 8), JOBS (processes at once; default: every
# variant on a GPU, 1 on a CPU), THREADS (intra-op threads per process, default 1), DEVICE (auto),
# SAMPLES (32), TASKS and KEEP (as curves_smollm2.sh), COMMON (overrides for every variant).
set -euo pipefail
cd "$(dirname "$0")/.."
AGATE=${AGATE:-build/agate}
OUT=${OUT:-runs/ablate-smollm2}
VARIANTS=${VARIANTS:-recipes/smollm2/ablations.txt}
BATCH=${BATCH:-8}
THREADS=${THREADS:-1}
DEVICE=${DEVICE:-auto}
SAMPLES=${SAMPLES:-32}
TASKS=${TASKS:-passkey-after ppl-512 passkey-inside ppl-1024}
MIX=data/corpus/smollm2-mix
GATE_POLICIES=gate,gate-post,gate-rank,ada-gate
BASELINES=streamingllm,h2o,snapkv,pyramidkv,ada-snapkv,ada-pyramid
die() { echo "ablate: error: $1 (hint: $2)" >&2; exit 2; }
[[ -x $AGATE ]] || die "$AGATE not found" "build first: scripts/test.sh, or AGATE=path"
[[ -f $VARIANTS ]] || die "no variants file $VARIANTS" "see recipes/smollm2/ablations.txt"
[[ -f models/smollm2-135m-instruct/model.safetensors ]] || die "no SmolLM2 model folder" "scripts/get_model.sh smollm2"
[[ -f $MIX/train/manifest.json ]] || die "no training mix at $MIX" "scripts/train_smollm2_gates.sh builds it (or run its first steps)"
log() { echo "[ablate $(date +%H:%M:%S)] $*"; }

# name -> overrides, in file order; ONLY filters.
names=()
declare -A overrides=()
base_overrides=""
while read -r name rest; do
  [[ -z $name || $name == \#* ]] && continue
  if [[ $name == @base ]]; then base_overrides=$rest; continue; fi
  [[ -n ${overrides[$name]+x} ]] && die "variant '$name' appears twice in $VARIANTS" "names must be unique"
  if [[ -n ${ONLY:-} && " $ONLY " != *" $name "* ]]; then continue; fi
  names+=("$name") overrides[$name]=$rest
done <"$VARIANTS"
(( ${#names[@]} > 0 )) || die "no variant selected from $VARIANTS" "check ONLY='${ONLY:-}'"
gpus=$("$AGATE" --version | sed -n 's/.* \([0-9][0-9]*\) CUDA device(s) visible.*/\1/p')
on_gpu=$([[ ${gpus:-0} -gt 0 && $DEVICE != cpu ]] && echo 1 || echo 0)
JOBS=${JOBS:-$([[ $on_gpu == 1 ]] && echo ${#names[@]} || echo 1)}
mkdir -p "$OUT/runs" "$OUT/exports" "$OUT/eval"
t0=$(date +%s)

# Expands {steps/N} and {batch/N} in a variant's overrides.
expand() {
  local s=$1 k
  while [[ $s =~ \{(steps|batch)/([0-9]+)\} ]]; do
    k=${BASH_REMATCH[1]}
    local v=$([[ $k == steps ]] && echo "$2" || echo "$BATCH")
    s=${s/"${BASH_REMATCH[0]}"/$(( v / BASH_REMATCH[2] ))}
  done
  echo "$s"
}

# Runs "$@" in the background, at most JOBS at once.
baseline_pid=0
running() { jobs -rp | grep -vx "$baseline_pid" | wc -l; }
throttle() { while (( $(running) >= JOBS )); do wait -n || true; done; "$@" & }

train_one() {  # name steps dir log_every
  local name=$1 steps=$2 dir=$3 every=$4
  [[ -f $dir/summary.json ]] && return 0
  # shellcheck disable=SC2046  # the overrides are words by design
  "$AGATE" train recipes/smollm2/gates.yaml run.dir="$dir" run.name="$name" run.threads="$THREADS" \
    run.device="$DEVICE" train.steps="$steps" train.global_batch="$BATCH" train.micro_batch="$BATCH" \
    train.log_every="$every" checkpoint.every_steps=0 eval.every=0 $base_overrides ${COMMON:-} $(expand "${overrides[$name]}" "$steps") \
    >"$dir.log" 2>&1 || { echo "ablate: training $name failed; the end of $dir.log:" >&2; tail -5 "$dir.log" >&2; return 1; }
}

eval_one() {  # name: gates policies of one variant, or the baselines
  local name=$1 gates policies
  if [[ $name == baselines ]]; then gates=none policies=$BASELINES
  else gates=$OUT/exports/$name policies=$GATE_POLICIES; fi
  local done_all=1 t
  for t in $TASKS; do [[ -f $OUT/eval/$name/$t.json ]] || done_all=0; done
  [[ $done_all == 1 ]] && return 0
  AGATE=$AGATE GATES=$gates POLICIES=$policies OUT=$OUT/eval/$name SAMPLES=$SAMPLES TASKS=$TASKS \
    KEEP=${KEEP:-0.1,0.25,0.5,0.75} THREADS=$THREADS DEVICE=$DEVICE scripts/curves_smollm2.sh >"$OUT/eval/$name.log" 2>&1 ||
    { echo "ablate: evaluating $name failed; the end of $OUT/eval/$name.log:" >&2; tail -5 "$OUT/eval/$name.log" >&2; return 1; }
}

# The baselines need no training: on a GPU they run beside it; on a CPU after it (two
# multi-threaded processes on the same cores spin against each other: measured 62 tokens/s of
# training beside them on the 2-core machine, against ~300 alone).
log "${#names[@]} variants (${names[*]}), $JOBS at once, batch $BATCH, device $DEVICE, $SAMPLES samples per task"
if [[ $on_gpu == 1 ]]; then
  eval_one baselines &
  baseline_pid=$!
fi

if [[ -n ${TRAIN_SECONDS:-} && -z ${STEPS:-} ]]; then
  slowest=0
  mkdir -p "$OUT/probe"
  for n in "${names[@]}"; do throttle train_one "$n" 6 "$OUT/probe/$n" 3; done
  for p in $(jobs -rp | grep -vx "$baseline_pid"); do wait "$p" || true; done
  for n in "${names[@]}"; do
    [[ -f $OUT/probe/$n/summary.json ]] || die "the 6-step probe of $n failed (the end of $OUT/probe/$n.log: $(tail -1 "$OUT/probe/$n.log" 2>/dev/null))" \
      "fix that variant's overrides in $VARIANTS, or set STEPS instead of TRAIN_SECONDS"
    ms=$(python3 - "$OUT/probe/$n/metrics.jsonl" "$OUT/probe/$n/config.resolved.yaml" <<'EOF'
import json, re, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
cfg = open(sys.argv[2]).read()
seq = int(re.search(r"seq_len:\s*(\d+)", cfg).group(1)); batch = int(re.search(r"global_batch:\s*(\d+)", cfg).group(1))
print(int(1000 * seq * batch / recs[-1]["tokens_per_s"]))
EOF
)
    log "probe: $n ${ms} ms per step (all variants at once)"
    (( ms > slowest )) && slowest=$ms
  done
  STEPS=$(( TRAIN_SECONDS * 1000 / slowest ))
  (( STEPS >= 20 )) || die "only $STEPS steps fit in TRAIN_SECONDS=$TRAIN_SECONDS" "give it more time or fewer variants"
  log "STEPS=$STEPS fit in ${TRAIN_SECONDS} s at the slowest variant's ${slowest} ms per step"
fi
STEPS=${STEPS:-300}
echo "$STEPS" >"$OUT/steps"

for n in "${names[@]}"; do throttle train_one "$n" "$STEPS" "$OUT/runs/$n" 10; done
for p in $(jobs -rp | grep -vx "$baseline_pid"); do wait "$p" || true; done
failed=0
for n in "${names[@]}"; do [[ -f $OUT/runs/$n/summary.json ]] || { echo "ablate: $n did not finish (see $OUT/runs/$n.log)" >&2; failed=1; }; done
log "trained in $(( $(date +%s) - t0 )) s"
export_one() { [[ -f $OUT/exports/$1/gates.safetensors ]] || "$AGATE" export "$OUT/runs/$1" --out "$OUT/exports/$1" >/dev/null; }
for n in "${names[@]}"; do [[ -f $OUT/runs/$n/summary.json ]] && throttle export_one "$n"; done
for p in $(jobs -rp | grep -vx "$baseline_pid"); do wait "$p" || true; done
[[ $on_gpu == 1 ]] || throttle eval_one baselines
for n in "${names[@]}"; do
  [[ -f $OUT/exports/$n/gates.safetensors ]] && throttle eval_one "$n"
done
for p in $(jobs -rp); do wait "$p" || true; done
python3 tools/eval/ablation_table.py "$OUT" --steps "$STEPS" --json "$OUT/ablation.json" >"$OUT/ablation.md"
cat "$OUT/ablation.md"
log "done in $(( $(date +%s) - t0 )) s: $OUT/ablation.md"
exit $failed
