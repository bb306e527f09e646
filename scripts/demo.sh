#!/usr/bin/env bash
# The newcomer's first command: from a fresh Debian 12 machine (no GPU, no downloaded weights)
# to Attention-Gates trained on a model agate pretrains itself, showing progress throughout.
# Re-runnable: finished steps are skipped (and interrupted training resumes from its checkpoint).
#
# Today: install, build, the default corpus + tokenizer + token datasets, a tiny Llama-style base
# model pretrained on it (HF layout), Attention-Gates trained on the frozen base (CPT), their
# export, generation over the ragged KV cache with the eviction picture, and the comparison
# of the gated model with the base. Coming (see the open issues): evaluation against
# StreamingLLM/H2O/SnapKV/PyramidKV/Ada-KV at matched KV budgets.
#
# DEMO_PRETRAIN_STEPS (default 300) and DEMO_GATE_STEPS (default 100) shorten or lengthen it.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo; echo "==> [$(date +%H:%M:%S)] $*"; }
t0=$(date +%s)

step "1/7 installing dependencies (Debian packages; skipped when present)"
bash scripts/setup.sh

step "2/7 building agate (Release, $(nproc) jobs; incremental after the first time)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)" 2>&1 | grep -E "error|Built target agate$" || true
[[ -x build/agate ]] || { echo "build failed: run 'cmake --build build' to see why" >&2; exit 1; }

step "3/7 default corpus: Austen + King James Bible + Brown -> tokenizer -> token shards"
scripts/prepare_corpus.sh
build/agate data check data/corpus/tokens/train

PRE_STEPS=${DEMO_PRETRAIN_STEPS:-300}
GATE_STEPS=${DEMO_GATE_STEPS:-100}

step "4/7 pretraining a tiny Llama-style base model (6.8 M parameters, $PRE_STEPS steps; reused when done)"
base=runs/demo/base
if [[ -f $base/summary.json ]]; then echo "$base exists, skipping"
else build/agate train recipes/tiny/pretrain.yaml run.dir="$base" train.steps="$PRE_STEPS" eval.every="$PRE_STEPS"; fi
cp data/corpus/tokenizer.model "$base/model/tokenizer.model"
build/agate inspect "$base/model" | head -4

step "5/7 training Attention-Gates on the frozen base (CPT, target keep 0.5, $GATE_STEPS steps)"
gates=runs/demo/gates
if [[ -f $gates/summary.json ]]; then echo "$gates exists, skipping"
else build/agate train recipes/tiny/cpt.yaml model.path="$base/model" run.dir="$gates" train.steps="$GATE_STEPS" \
       eval.every="$GATE_STEPS" loss.lambda_warmup_steps=10; fi

step "6/7 exporting the gates and generating over the ragged KV cache"
build/agate export "$gates" --out "$gates/export"
build/agate generate --model "$base/model" --gates "$gates/export" --max-new 24 --show-evictions \
  --prompt "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife."

step "7/7 results"
python3 - "$gates/summary.json" <<'PY'
import json, math, sys
s = json.load(open(sys.argv[1]))
print(f"| model | KV entries kept | val loss | val perplexity |")
print(f"|---|---|---|---|")
print(f"| base (full cache) | 100.0% | {s['val_base_loss']:.3f} | {math.exp(s['val_base_loss']):.1f} |")
print(f"| base + Attention-Gates | {100 * s['keep']:.1f}% | {s['val_loss']:.3f} | {math.exp(s['val_loss']):.1f} |")
PY

echo
echo "demo finished in $(( $(date +%s) - t0 )) s. Artifacts:"
echo "  data/corpus/raw/*.txt             raw public-domain text"
echo "  data/corpus/tokenizer.model       SentencePiece BPE tokenizer"
echo "  data/corpus/tokens/{train,val}    token datasets (agate data check / show)"
echo "  $base/model          pretrained base model, HF layout (+ tokenizer.model)"
echo "  $gates/trainable.safetensors   the trained gates; metrics.jsonl, checkpoints/ beside it"
echo "  $gates/export/            the gates on their own (gates.safetensors, kvgate_config.json, keep ratios)"
echo
echo "Coming next: agate eval (StreamingLLM, H2O, SnapKV, PyramidKV, Ada-KV against the gates at matched budgets)."
