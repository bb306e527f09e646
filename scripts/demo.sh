#!/usr/bin/env bash
# The newcomer's first command: from a fresh Debian 12 machine (no GPU, no downloaded weights)
# to Attention-Gates trained on a model agate pretrains itself, showing progress throughout.
# Re-runnable: finished steps are skipped (and interrupted training resumes from its checkpoint).
#
# Steps: install, build, the default corpus + tokenizer + token datasets, a tiny Llama-style
# base model pretrained on it (HF layout), Attention-Gates trained on the frozen base (CPT),
# their export, an evaluation against StreamingLLM, H2O, SnapKV, PyramidKV, Ada-SnapKV and
# Ada-Pyramid at matched KV budgets, generation over the ragged KV cache with the eviction
# picture, the results table and a list of every artifact.
#
# DEMO_PRETRAIN_STEPS (default 300), DEMO_GATE_STEPS (default 100) and DEMO_EVAL_SAMPLES
# (default 48) shorten or lengthen it; DEMO_DIR (default runs/demo) moves its outputs.
# DEMO_AGATE=path skips install and build; DEMO_CORPUS=dir (tokenizer.model, tokens/{train,val})
# skips the corpus (the end-to-end test uses both).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo; echo "==> [$(date +%H:%M:%S)] $*"; }
t0=$(date +%s)

AGATE=${DEMO_AGATE:-build/agate}
CORPUS=${DEMO_CORPUS:-data/corpus}
if [[ -z ${DEMO_AGATE:-} ]]; then
  step "1/8 installing dependencies (Debian packages; skipped when present)"
  bash scripts/setup.sh

  step "2/8 building agate (Release, $(nproc) jobs; incremental after the first time)"
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build build -j "$(nproc)" 2>&1 | grep -E "error|Built target agate$" || true
  [[ -x "$AGATE" ]] || { echo "build failed: run 'cmake --build build' to see why" >&2; exit 1; }
else
  step "1-2/8 using $AGATE (DEMO_AGATE): no install, no build"
fi

# The real model by default; DEMO_MODEL=tiny is the self-pretrained 6.8 M model (fast, no download).
if [[ ${DEMO_MODEL:-smollm2} == smollm2 ]]; then
  AGATE=$AGATE DEMO_T0=$t0 exec bash scripts/demo_smollm2.sh
fi
[[ ${DEMO_MODEL} == tiny ]] || { echo "demo: unknown DEMO_MODEL '${DEMO_MODEL}' (hint: smollm2 or tiny)" >&2; exit 2; }

if [[ -z ${DEMO_CORPUS:-} ]]; then
  step "3/8 default corpus: Austen + King James Bible + Shakespeare -> tokenizer -> token shards"
  AGATE=$AGATE scripts/prepare_corpus.sh
else
  step "3/8 using the corpus in $CORPUS (DEMO_CORPUS)"
fi
"$AGATE" data check "$CORPUS/tokens/train"

PRE_STEPS=${DEMO_PRETRAIN_STEPS:-300}
GATE_STEPS=${DEMO_GATE_STEPS:-100}
EVAL_SAMPLES=${DEMO_EVAL_SAMPLES:-48}
DIR=${DEMO_DIR:-runs/demo}

step "4/8 pretraining a tiny Llama-style base model (6.8 M parameters, $PRE_STEPS steps; reused when done)"
base=$DIR/base
if [[ -f $base/summary.json ]]; then echo "$base exists, skipping"
else "$AGATE" train recipes/tiny/pretrain.yaml run.dir="$base" data.train="$CORPUS/tokens/train" data.val="$CORPUS/tokens/val" train.steps="$PRE_STEPS" eval.every="$PRE_STEPS"; fi
cp "$CORPUS/tokenizer.model" "$base/model/tokenizer.model"
"$AGATE" inspect "$base/model" | head -4

step "5/8 training Attention-Gates on the frozen base (CPT, target keep 0.5, $GATE_STEPS steps)"
gates=$DIR/gates
if [[ -f $gates/summary.json ]]; then echo "$gates exists, skipping"
else "$AGATE" train recipes/tiny/cpt.yaml model.path="$base/model" run.dir="$gates" data.train="$CORPUS/tokens/train" data.val="$CORPUS/tokens/val" train.steps="$GATE_STEPS" \
       eval.every="$GATE_STEPS" loss.lambda_warmup_steps=10; fi

step "6/8 exporting the gates; evaluating them against every baseline at the same KV budgets"
if [[ -f $gates/export/gates.safetensors && $gates/export/gates.safetensors -nt $gates/trainable.safetensors ]]; then
  echo "$gates/export exists, skipping"
else "$AGATE" export "$gates" --out "$gates/export"; fi
ev=$DIR/eval
mkdir -p "$ev"
if [[ -f $ev/eval.json && $ev/eval.json -nt $gates/export/gates.safetensors ]]; then echo "$ev exists, skipping"
else "$AGATE" eval --model "$base/model" --gates "$gates/export" --task ppl --data "$CORPUS/tokens/val" \
       --samples "$EVAL_SAMPLES" --context 96 --continuation 32 --window 8 --keep 0.25 --match-gate \
       --json "$ev/eval.json" --plot "$ev/eval.svg" >"$ev/eval.md.tmp" && mv "$ev/eval.md.tmp" "$ev/eval.md"; fi

step "7/8 generating over the ragged KV cache, with the eviction picture"
"$AGATE" generate --model "$base/model" --gates "$gates/export" --max-new 24 --show-evictions \
  --prompt "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife."
if .venv/bin/python -c "import matplotlib" 2>/dev/null; then .venv/bin/python tools/plot_metrics "$gates" >/dev/null
else echo "(training curves: run scripts/setup.sh, then .venv/bin/python tools/plot_metrics $gates)"; fi

step "8/8 results"
python3 - "$gates/summary.json" <<'PY'
import json, math, sys
s = json.load(open(sys.argv[1]))
print("Training (validation windows of the training length):")
print(f"| model | KV entries kept | val loss | val perplexity |")
print(f"|---|---|---|---|")
print(f"| base (full cache) | 100.0% | {s['val_base_loss']:.3f} | {math.exp(s['val_base_loss']):.1f} |")
print(f"| base + Attention-Gates | {100 * s['keep']:.1f}% | {s['val_loss']:.3f} | {math.exp(s['val_loss']):.1f} |")
PY
echo
echo "Evaluation: $EVAL_SAMPLES held-out windows, 96 context tokens compressed by each policy, perplexity of the"
echo "next 32 tokens over the compressed cache ('= gate': exactly the entries the gates kept, per sample and layer):"
cat "$ev/eval.md"

echo
echo "demo finished in $(( $(date +%s) - t0 )) s. Artifacts:"
[[ -z ${DEMO_CORPUS:-} ]] && echo "  data/corpus/raw/*.txt                raw public-domain text"
echo "  $CORPUS/tokenizer.model          SentencePiece BPE tokenizer"
echo "  $CORPUS/tokens/{train,val}       token datasets (agate data check / show)"
echo "  $base/model             pretrained base model, HF layout (+ tokenizer.model)"
echo "  $gates/trainable.safetensors  the trained gates; metrics.jsonl, checkpoints/, logs/ beside it"
[[ -f $gates/metrics.png ]] && echo "  $gates/metrics.png     loss, keep-ratio and learning-rate curves"
echo "  $gates/export/          the gates on their own (gates.safetensors, kvgate_config.json, keep ratios)"
echo "  $ev/eval.{md,json,svg}   every policy at matched budgets: table, JSON, plot"
