#!/usr/bin/env bash
# Trains the SmolLM2-135M gates of issue 19 from a fresh clone and leaves their export at
# exports/smollm2-gates/ (git-ignored; scripts/demo.sh and scripts/curves_smollm2.sh use it):
#   1. SmolLM2-135M-Instruct (scripts/get_model.sh) and the default corpus (data/fetch_corpus.sh);
#   2. retrieval-shaped training text: 4,000 documents of Austen filler (train-split paragraphs
#      only) with a fact in one of six phrasings, asked for and answered at the end
#      (tools/make_passkey.py --format text);
#   3. the corpus + that text in SmolLM2's tokenizer.json -> data/corpus/smollm2-mix/;
#   4. agate train recipes/smollm2/gates.yaml (resumes if interrupted) and agate export.
# Overrides: any recipe key as an argument (e.g. train.steps=200). RUN_DIR (default
# runs/smollm2-gates). Wall time on the 2-core machine: see the README ("Gates against the
# training-free policies on SmolLM2").
set -euo pipefail
cd "$(dirname "$0")/.."
AGATE=${AGATE:-build/agate}
RUN=${RUN_DIR:-runs/smollm2-gates}
MODEL=models/smollm2-135m-instruct
MIX=data/corpus/smollm2-mix
t0=$(date +%s)
[[ -x $AGATE ]] || { echo "error: $AGATE not found (hint: build first: scripts/test.sh, or cmake --build build)" >&2; exit 2; }
bash scripts/get_model.sh smollm2
bash data/fetch_corpus.sh
if [[ -f $MIX/train/manifest.json && -f $MIX/val/manifest.json ]]; then echo "$MIX exists, skipping"
else
  mkdir -p data/corpus/retrieval
  python3 tools/make_passkey.py --format text --kinds passkey,kv,code --split train \
    --filler data/corpus/raw/austen.txt --n 4000 --min-words 80 --max-words 320 --seed 7 \
    --out data/corpus/retrieval/train.txt
  "$AGATE" tokenize --tokenizer "$MODEL/tokenizer.json" --val-fraction 0.03 \
    --input data/corpus/raw/austen.txt,data/corpus/raw/kjv.txt,data/corpus/raw/shakespeare.txt,data/corpus/retrieval/train.txt \
    --out "$MIX"
fi
# Re-running resumes from the newest complete checkpoint.
if [[ -f $RUN/summary.json ]]; then echo "$RUN finished, skipping training"
else "$AGATE" train recipes/smollm2/gates.yaml run.dir="$RUN" "$@"; fi
mkdir -p exports
rm -rf exports/smollm2-gates.tmp
"$AGATE" export "$RUN" --out exports/smollm2-gates.tmp
rm -rf exports/smollm2-gates && mv exports/smollm2-gates.tmp exports/smollm2-gates
echo "trained and exported in $(( $(date +%s) - t0 )) s: exports/smollm2-gates/"
