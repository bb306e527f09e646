#!/usr/bin/env bash
# kvpress's presses beside AgatePress on SmolLM2-135M-Instruct, through kvpress itself
# (tools/eval/press_eval.py): retrieval (question-aware and question-agnostic) and continuation
# perplexity on held-out text, keep 0.1/0.25/0.5/0.75, paired bootstrap intervals.
# Writes runs/eval-smollm2/{table.md,results.json,plot.png,plot.svg} (OUT=DIR to change).
# Gates: exports/smollm2-gates when present, else GATES=DIR (e.g. runs/demo-smollm2/gates/export),
# else no gate rows. Extra arguments go to press_eval.py, e.g. --samples 12 --ppl-samples 8.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${AGATE_VENV:-.venv}/bin/python
MODEL=models/smollm2-135m-instruct
[[ -f $MODEL/model.safetensors ]] || bash scripts/get_model.sh smollm2
gates=${GATES:-}
if [[ -z $gates && -f exports/smollm2-gates/gates.safetensors ]]; then gates=exports/smollm2-gates; fi
args=(--model "$MODEL" --out "${OUT:-runs/eval-smollm2}" --threads "${THREADS:-2}")
if [[ -n $gates ]]; then args+=(--gates "$gates"); else echo "[eval] no gates (exports/smollm2-gates or GATES=DIR): kvpress rows only" >&2; fi
start=$(date +%s)
"$PY" tools/eval/press_eval.py "${args[@]}" "$@"
echo "[eval] done in $(( $(date +%s) - start )) s" >&2
