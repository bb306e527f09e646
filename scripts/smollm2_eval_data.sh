#!/usr/bin/env bash
# The held-out evaluation data of issue 19, shared by scripts/curves_smollm2.sh and
# scripts/ablate_smollm2.sh (idempotent; nothing here was seen in gate training):
#   data/corpus/smollm2-heldout/val   the corpus's val split (--val-fraction 0.03) in SmolLM2's
#                                     tokenizer: perplexity windows
#   DIR/passkey.jsonl                 N passkey samples in held-out Austen haystacks: (N+1)/2 of
#                                     250-350 words (seed 11), N/2 of 550-650 words (seed 12)
#   DIR/passkey-long.jsonl            N passkey samples in held-out Austen haystacks of 1,300-1,500
#                                     words (seed 14; about 1,900 tokens, 3-6x the above)
#   DIR/cloze.jsonl                   N multiple-choice questions (tools/make_cloze.py): which of 4
#                                     sentences follows a 300-word passage of held-out Austen, KJV
#                                     or Shakespeare (seed 13; distractors from other held-out docs)
#   scripts/smollm2_eval_data.sh DIR N
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# == 2 ]] || { echo "usage: scripts/smollm2_eval_data.sh DIR SAMPLES" >&2; exit 2; }
DIR=$1 N=$2
[[ $N =~ ^[1-9][0-9]*$ ]] || { echo "error: SAMPLES must be a positive integer, got '$N' (hint: SAMPLES=16)" >&2; exit 2; }
AGATE=${AGATE:-build/agate}
MODEL=models/smollm2-135m-instruct
HELD=data/corpus/smollm2-heldout
mkdir -p "$DIR"
if [[ ! -f $HELD/val/manifest.json ]]; then
  "$AGATE" tokenize --tokenizer "$MODEL/tokenizer.json" --val-fraction 0.03 \
    --input data/corpus/raw/austen.txt,data/corpus/raw/kjv.txt,data/corpus/raw/shakespeare.txt --out "$HELD" >/dev/null
fi
if [[ ! -f $DIR/passkey.jsonl ]]; then
  { python3 tools/make_passkey.py --out - --n $(( (N + 1) / 2 )) --seed 11 --split val --filler data/corpus/raw/austen.txt \
      --min-words 250 --max-words 350 --answer key
    (( N / 2 == 0 )) || python3 tools/make_passkey.py --out - --n $(( N / 2 )) --seed 12 --split val --filler data/corpus/raw/austen.txt \
      --min-words 550 --max-words 650 --answer key; } >"$DIR/passkey.jsonl.tmp"
  mv "$DIR/passkey.jsonl.tmp" "$DIR/passkey.jsonl"
fi
if [[ ! -f $DIR/passkey-long.jsonl ]]; then
  python3 tools/make_passkey.py --out "$DIR/passkey-long.jsonl.tmp" --n "$N" --seed 14 --split val \
    --filler data/corpus/raw/austen.txt --min-words 1300 --max-words 1500 --answer key
  mv "$DIR/passkey-long.jsonl.tmp" "$DIR/passkey-long.jsonl"
fi
if [[ ! -f $DIR/cloze.jsonl ]]; then
  python3 tools/make_cloze.py --text data/corpus/raw/austen.txt,data/corpus/raw/kjv.txt,data/corpus/raw/shakespeare.txt \
    --split val --words 300 --n "$N" --seed 13 --out "$DIR/cloze.jsonl.tmp"
  mv "$DIR/cloze.jsonl.tmp" "$DIR/cloze.jsonl"
fi
