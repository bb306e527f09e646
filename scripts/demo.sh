#!/usr/bin/env bash
# The newcomer's first command: from a fresh Debian 12 machine (no GPU, no downloaded weights)
# to agate's pipeline, showing progress throughout. Re-runnable: finished steps are skipped.
#
# Today it runs what exists: install, build, the default corpus + tokenizer + token datasets,
# a tiny Llama-style base model in Hugging Face layout, and scoring text with it.
# Coming (see the open issues): pretraining that base model, training Attention-Gates on it,
# evaluating them against StreamingLLM/H2O/SnapKV/PyramidKV/Ada-KV at matched KV budgets,
# exporting the gates and generating with a ragged KV cache.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo; echo "==> [$(date +%H:%M:%S)] $*"; }
t0=$(date +%s)

step "1/5 installing dependencies (Debian packages; skipped when present)"
bash scripts/setup.sh

step "2/5 building agate (Release, $(nproc) jobs; incremental after the first time)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" 2>&1 | grep -E "error|Built target agate$" || true
[[ -x build/agate ]] || { echo "build failed: run 'cmake --build build' to see why" >&2; exit 1; }

step "3/5 default corpus: Austen + King James Bible + Brown -> tokenizer -> token shards"
scripts/prepare_corpus.sh
build/agate data check data/corpus/tokens/train

step "4/5 a tiny Llama-style base model in HF layout (random init; pretraining is coming)"
base=runs/demo/base-random
if [[ -f $base/model.safetensors ]]; then echo "$base exists, skipping"
else build/agate init-model --config recipes/tiny/base/config.json --out "$base" --seed 0; fi
cp data/corpus/tokenizer.model "$base/tokenizer.model"
build/agate inspect "$base"

step "5/5 scoring a sentence with it (a random model: about log(1/4096) = -8.3 per token)"
build/agate score --model "$base" --text "It is a truth universally acknowledged, that a single man" \
  | /usr/bin/env python3 -c "import json,sys; d=json.load(sys.stdin); n=len(d['logprobs']); print(f'{n} tokens, mean log-prob {d[\"total\"]/n:.3f}')"

echo
echo "demo finished in $(( $(date +%s) - t0 )) s. Artifacts:"
echo "  data/corpus/raw/*.txt            raw public-domain text"
echo "  data/corpus/tokenizer.model      SentencePiece BPE tokenizer"
echo "  data/corpus/tokens/{train,val}   token datasets (agate data check / show)"
echo "  $base             tiny base model, HF layout"
echo
echo "Coming next: agate train (pretraining, Attention-Gate CPT/SFT), agate eval, agate export, agate generate."
