#!/usr/bin/env bash
# Issue 19's evaluation on SmolLM2-135M: every policy (the training-free baselines and the gates
# in each deployment: gate, gate-post, gate-rank, ada-gate) at keep 0.1, 0.25, 0.5 and 0.75 on
#   ppl-512, ppl-1024, ppl-2048
#                       continuation perplexity (64 tokens) of held-out natural text (the
#                       corpus's val split at --val-fraction 0.03: paragraphs the gates never saw)
#   passkey-inside      a 5-digit key in held-out Austen haystacks (~300 and ~600 words), the
#                       question inside the compressed prompt (question-aware)
#   passkey-after       the same samples, the question arriving after compression (agnostic)
#   passkey-long-inside, passkey-long-after
#                       the same in haystacks of 1,300-1,500 words (about 1,900 tokens)
#   choice              multiple choice: which of 4 sentences follows a 300-word held-out
#                       passage (tools/make_cloze.py); the passage is compressed before the choices
# Each writes OUT/<task>.{md,json,svg}: the table with paired bootstrap 95% intervals against
# the full cache and against the best training-free policy, every sample's score, the curves;
# OUT/summary.md has one compact policy x budget table per task (tools/eval/curves_table.py).
# GATES (default exports/smollm2-gates), OUT (default runs/curves-smollm2), SAMPLES (default 16),
# TASKS (default: every task above), KEEP (default 0.1,0.25,0.5,0.75),
# THREADS (default 0 = all cores; on a shared machine use 1: OpenMP threads that wait for a
# descheduled partner spin, and two threads on one free core run several times slower than one),
# POLICIES (default: every policy; a list for agate eval --policies, e.g. the baselines alone,
# which need no GATES: GATES=none), DEVICE (default auto).
set -euo pipefail
cd "$(dirname "$0")/.."
AGATE=${AGATE:-build/agate}
GATES=${GATES:-exports/smollm2-gates}
OUT=${OUT:-runs/curves-smollm2}
N=${SAMPLES:-16}
KEEP=${KEEP:-0.1,0.25,0.5,0.75}
TASKS=${TASKS:-ppl-512 ppl-1024 ppl-2048 passkey-inside passkey-after passkey-long-inside passkey-long-after choice}
MODEL=models/smollm2-135m-instruct
HELD=data/corpus/smollm2-heldout
POLICIES=${POLICIES:-}
gate_args=()
if [[ $GATES != none ]]; then
  [[ -f $GATES/gates.safetensors ]] || { echo "error: no gate export at $GATES (hint: scripts/train_smollm2_gates.sh, or GATES=DIR; GATES=none with baseline POLICIES)" >&2; exit 2; }
  gate_args=(--gates "$GATES")
fi
[[ -z $POLICIES ]] || gate_args+=(--policies "$POLICIES")
[[ -f $MODEL/model.safetensors ]] || bash scripts/get_model.sh smollm2 >/dev/null
[[ -s data/corpus/raw/austen.txt && -s data/corpus/raw/kjv.txt && -s data/corpus/raw/shakespeare.txt ]] || bash data/fetch_corpus.sh >/dev/null
mkdir -p "$OUT"
t0=$(date +%s)
AGATE=$AGATE scripts/smollm2_eval_data.sh "$OUT" "$N"
common=(--model "$MODEL" "${gate_args[@]}" --keep "$KEEP" --dtype bfloat16 --samples "$N" --threads "${THREADS:-0}"
        --device "${DEVICE:-auto}")
for task in $TASKS; do
  echo "==> [$(date +%H:%M:%S)] $task"
  case $task in
    ppl-*) args=(--task ppl --data "$HELD/val" --context "${task#ppl-}" --continuation 64) ;;
    passkey-inside|passkey-long-inside|passkey-after|passkey-long-after)
      args=(--task passkey --file "$OUT/${task%-*}.jsonl" --template recipes/smollm2/passkey_template.json)
      [[ $task == *-after ]] && args+=(--question-after) ;;
    choice) args=(--task choice --file "$OUT/cloze.jsonl") ;;
    *) echo "error: unknown task '$task' (hint: ppl-N, passkey-inside, passkey-after, passkey-long-inside, passkey-long-after, choice)" >&2; exit 2 ;;
  esac
  "$AGATE" eval "${common[@]}" "${args[@]}" --json "$OUT/$task.json" --plot "$OUT/$task.svg" >"$OUT/$task.md.tmp"
  mv "$OUT/$task.md.tmp" "$OUT/$task.md"
done
jsons=()
for task in $TASKS; do jsons+=("$OUT/$task.json"); done
python3 tools/eval/curves_table.py "${jsons[@]}" >"$OUT/summary.md"
cat "$OUT/summary.md"
echo "curves written to $OUT/ (summary.md, <task>.{md,json,svg}) in $(( $(date +%s) - t0 )) s"
