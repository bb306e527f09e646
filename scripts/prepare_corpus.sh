#!/usr/bin/env bash
# Builds the default corpus: raw public-domain text (data/fetch_corpus.sh), a SentencePiece
# tokenizer trained on it, and train/val token datasets. Re-running skips finished steps.
#
#   scripts/prepare_corpus.sh [--force]        (AGATE=path/to/agate, VOCAB=4096)
#
# Writes (git-ignored):
#   data/corpus/raw/{austen,kjv,shakespeare}.txt
#   data/corpus/tokenizer.model
#   data/corpus/tokens/{train,val}/       (manifest.json + shards)
#   data/corpus/passkey/tokens/{train,val}/  synthetic passkey retrieval, SFT form
set -euo pipefail
cd "$(dirname "$0")/.."
AGATE=${AGATE:-build/agate}
VOCAB=${VOCAB:-4096}
FORCE=${1:-}
[[ -x $AGATE ]] || { echo "[corpus] error: $AGATE not found (build first: cmake --build build, or set AGATE=...)" >&2; exit 1; }

bash data/fetch_corpus.sh $FORCE
raw=(data/corpus/raw/austen.txt data/corpus/raw/kjv.txt data/corpus/raw/shakespeare.txt)
inputs=$(IFS=,; echo "${raw[*]}")

tok=data/corpus/tokenizer.model
raw_newer=0  # a raw file rebuilt since the tokenizer was trained (e.g. a new source)
for f in "${raw[@]}"; do [[ -f $tok && $f -nt $tok ]] && raw_newer=1; done
if [[ -f $tok && $FORCE != --force && $raw_newer == 0 ]]; then
  echo "[corpus] $tok exists, skipping"
else
  echo "[corpus] training a $VOCAB-piece BPE tokenizer"
  "$AGATE" tokenizer train --input "$inputs" --vocab "$VOCAB" --out "$tok" 2>&1 | grep -v "LOG(INFO)" || true
  [[ -f $tok ]] || { echo "[corpus] error: tokenizer training failed" >&2; exit 1; }
fi

out=data/corpus/tokens
if [[ -f $out/train/manifest.json && -f $out/val/manifest.json && $FORCE != --force && $out/train/manifest.json -nt $tok ]]; then
  echo "[corpus] $out exists, skipping"
else
  echo "[corpus] tokenizing"
  "$AGATE" tokenize --tokenizer "$tok" --input "$inputs" --out "$out" --val-fraction 0.02 --shard-tokens 1000000 --force
fi
# Synthetic passkey retrieval (SFT form) for recipes/tiny/sft.yaml and the evaluator.
pk=data/corpus/passkey
if [[ -f $pk/tokens/train/manifest.json && $FORCE != --force && $pk/tokens/train/manifest.json -nt $tok ]]; then
  echo "[corpus] $pk exists, skipping"
else
  echo "[corpus] generating passkey SFT data"
  mkdir -p "$pk"
  python3 tools/make_passkey.py --out "$pk/train.jsonl" --n 3000 --seed 0 --min-words 30 --max-words 90
  python3 tools/make_passkey.py --out "$pk/val.jsonl" --n 200 --seed 1 --min-words 30 --max-words 90
  "$AGATE" tokenize --kind sft --tokenizer "$tok" --input "$pk/train.jsonl" --out "$pk/tokens" --val-fraction 0 --force >/dev/null
  "$AGATE" tokenize --kind sft --tokenizer "$tok" --input "$pk/val.jsonl" --out "$pk/tokens-val" --val-fraction 0 --force >/dev/null
  rm -rf "$pk/tokens/val" && mv "$pk/tokens-val/train" "$pk/tokens/val" && rm -rf "$pk/tokens-val"
fi
echo "[corpus] ready: $tok, $out/train, $out/val, $pk/tokens/{train,val}"
