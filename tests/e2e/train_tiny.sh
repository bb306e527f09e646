#!/usr/bin/env bash
# The tiny recipes end to end on a small synthetic corpus (shortened by overrides so CI stays
# fast): pretrain a base model, then train Attention-Gates on it (CPT) and check the promise
# of issue 4: the keep ratio ends within 0.05 of loss.target_keep while the validation LM loss
# stays within 0.15 nats of the base model's. Also: --dry-run, SFT with LoRA, a bad recipe.
set -uo pipefail
AGATE=$1; SRC=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
source "$SRC/tests/e2e/lib/common.bash"
cd "$SRC"
make_tiny_setup "$AGATE" "$tmp"
check "tiny corpus, tokenizer and datasets" "[[ $? == 0 && -f $tmp/data/train/manifest.json ]]"
common="data.train=$tmp/data/train data.val=$tmp/data/val data.seq_len=64 train.log_every=50"

"$AGATE" train recipes/tiny/pretrain.yaml $common model.path="$tmp/base" run.dir="$tmp/pre" --dry-run >"$tmp/o" 2>&1
check "pretrain --dry-run prints the plan" "[[ $? == 0 ]] && grep -q 'memory estimate' $tmp/o && [[ ! -e $tmp/pre ]]"
"$AGATE" train recipes/tiny/pretrain.yaml $common model.path="$tmp/base" run.dir="$tmp/pre" \
  train.steps=300 optim.lr=1e-2 eval.every=300 >"$tmp/o" 2>&1
check "pretrain runs" "[[ $? == 0 && -f $tmp/pre/model/model.safetensors ]]"

"$AGATE" train recipes/tiny/cpt.yaml $common model.path="$tmp/pre/model" run.dir="$tmp/cpt" \
  train.steps=200 eval.every=200 eval.batches=16 loss.target_keep=0.5 >"$tmp/o" 2>&1
check "cpt runs" "[[ $? == 0 && -f $tmp/cpt/summary.json ]]"
read -r keep val base < <(python3 -c "import json; d=json.load(open('$tmp/cpt/summary.json')); print(d['keep'], d['val_loss'], d['val_base_loss'])")
echo "     cpt: keep $keep (target 0.5), val loss $val vs base $base"
check "keep ratio within 0.05 of target_keep" "python3 -c 'import sys; sys.exit(abs($keep - 0.5) > 0.05)'"
check "val loss within 0.15 nats of the base model" "python3 -c 'import sys; sys.exit($val - $base > 0.15)'"

"$AGATE" export "$tmp/cpt" --out "$tmp/export" >"$tmp/o" 2>&1
check "export" "[[ $? == 0 && -f $tmp/export/gates.safetensors && -f $tmp/export/kvgate_config.json && -f $tmp/export/head_keep_ratio.tsv ]]"
cp "$tmp/tok.model" "$tmp/pre/model/tokenizer.model"
"$AGATE" generate --model "$tmp/pre/model" --gates "$tmp/export" --prompt "Anne walked to Bath with Emma, and" --max-new 8 --show-evictions >"$tmp/o" 2>&1
check "generate with the exported gates" "[[ $? == 0 ]] && grep -q '^\[kv\]' $tmp/o && grep -q 'L01 H1' $tmp/o"
"$AGATE" generate --model "$tmp/pre/model" --gates "$tmp/export" --tokenizer "$tmp/tok.model" --prompt "x" --max-new 2 --dtype bfloat16 >/dev/null 2>&1
check "generate in bfloat16" "[[ $? == 0 ]]"
"$AGATE" generate --model "$tmp/pre/model" --tokenizer "$tmp/tok.model" --prompt "x" --max-new 1000000000000 >"$tmp/o" 2>&1
check "generate refuses --max-new past max_position_embeddings at once (exit 2, one line)" \
  "[[ $? == 2 && \$(wc -l <$tmp/o) == 1 ]] && grep -q 'must fit the model.s max_position_embeddings' $tmp/o"
"$AGATE" generate --model "$tmp/pre/model" --tokenizer "$tmp/tok.model" --prompt "x" --threads 100000 >"$tmp/o" 2>&1
check "--threads above 4 x the cores (and 1024) is refused (exit 2, one line)" "[[ $? == 2 && \$(wc -l <$tmp/o) == 1 ]] && grep -q 'is above' $tmp/o"
"$AGATE" generate --model "$tmp/pre/model" --tokenizer "$tmp/tok.model" --prompt "x" --device cuda >"$tmp/o" 2>&1
check "--device cuda without a GPU is one line with a hint (exit 2)" \
  "[[ $? == 2 && \$(wc -l <$tmp/o) == 1 ]] && grep -q 'no CUDA device is available' $tmp/o || [[ \$(nproc) -gt 0 && -e /dev/nvidia0 ]]"
"$AGATE" init-model --config "$tmp/base/config.json" --out "$tmp/base-random" >/dev/null 2>&1
cp "$tmp/tok.model" "$tmp/base-random/tokenizer.model"
"$AGATE" generate --model "$tmp/base-random" --gates "$tmp/export" --prompt x >"$tmp/o" 2>&1; rc=$?
check "gates refuse another base model (exit 2)" "[[ $rc == 2 ]] && grep -q 'other weights' $tmp/o"

printf '{"prompt": "Anne walked to Bath with", "response": "Emma, and Anne was glad."}\n%.0s' {1..40} >"$tmp/sft.jsonl"
"$AGATE" tokenize --kind sft --tokenizer "$tmp/tok.model" --input "$tmp/sft.jsonl" --out "$tmp/sft" --val-fraction 0 >/dev/null
"$AGATE" train recipes/tiny/sft.yaml model.path="$tmp/pre/model" run.dir="$tmp/sftrun" data.train="$tmp/sft/train" \
  data.val="$tmp/sft/train" data.seq_len=48 train.steps=10 eval.every=10 >"$tmp/o" 2>&1
check "sft with gates + LoRA runs" "[[ $? == 0 && -f $tmp/sftrun/trainable.safetensors ]]"

"$AGATE" eval --model "$tmp/pre/model" --gates "$tmp/export" --task ppl --data "$tmp/data/val" --samples 4 --context 48 \
  --continuation 16 --window 8 --keep 1.0,0.5 --match-gate --json "$tmp/eval.json" --plot "$tmp/eval.svg" >"$tmp/o" 2>"$tmp/log"
check "eval: every policy at matched budgets, JSON and SVG" "[[ $? == 0 ]] && grep -q '| ada-pyramid | = gate |' $tmp/o && \
  python3 -c 'import json; d=json.load(open(\"$tmp/eval.json\")); assert len(d[\"rows\"]) == 3 + 3 * 8' && grep -q '</svg>' $tmp/eval.svg"
"$AGATE" export "$tmp/sftrun" --out "$tmp/export-sft" >/dev/null 2>&1
printf '{"prompt": "Anne walked to Bath with", "response": "Emma.", "depth": 0.5}\n%.0s' {1..3} >"$tmp/pk.jsonl"
"$AGATE" eval --model "$tmp/pre/model" --gates "$tmp/export-sft" --task passkey --file "$tmp/pk.jsonl" --window 2 >"$tmp/o" 2>"$tmp/log"
check "eval passkey with the SFT export (gates + LoRA)" "[[ $? == 0 && -f $tmp/export-sft/lora.safetensors ]] && grep -q 'depth 1/3-2/3' $tmp/o"
"$AGATE" eval --model "$tmp/pre/model" --task ppl --data "$tmp/data/val" --samples 2 --context 16 --budget 64 >"$tmp/o" 2>&1; rc=$?
check "eval refuses a budget above the context (exit 2)" "[[ $rc == 2 ]] && grep -q 'exceeds the context' $tmp/o"
"$AGATE" eval --model "$tmp/pre/model" --task ppl --data "$tmp/data/val" --policies snapkv,h3o >"$tmp/o" 2>&1; rc=$?
check "eval refuses an unknown policy (exit 2)" "[[ $rc == 2 ]] && grep -q \"unknown policy 'h3o'\" $tmp/o"

printf 'model:\n  path: %s\ndata:\n  train: %s\nloss:\n  target_kep: 0.5\n' "$tmp/pre/model" "$tmp/data/train" >"$tmp/bad.yaml"
"$AGATE" train "$tmp/bad.yaml" >"$tmp/o" 2>&1; rc=$?
check "unknown recipe key: exit 2, file:line and a hint" "[[ $rc == 2 ]] && grep -q 'bad.yaml:6: unknown key .loss.target_kep. (hint: did you mean .loss.target_keep.?)' $tmp/o"

finish training
