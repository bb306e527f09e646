#!/usr/bin/env bash
# The gate export read by another program: tools/kvgate_reference.py (plain PyTorch on top of
# tools/llama_reference.py) recomputes, from the export folder and the base model alone, the
# keep flags per (layer, KV head, prompt token) that `agate generate --gates` uses, for both
# gate types (attention; mlp with a recent window; attention gates reading the rule feature); and python/agate_gates' AgatePress (kvpress)
# reads the same exports and flags what `agate generate --policy gate-post` flags (when kvpress
# is there). Needs the venv from scripts/setup.sh (torch 2.11).
set -uo pipefail
AGATE=$1; SRC=$2
PY=${AGATE_PYTHON:-$SRC/.venv/bin/python}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then echo "skip: no torch in $PY (run scripts/setup.sh)"; exit 0; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
source "$SRC/tests/e2e/lib/common.bash"
cd "$SRC"
make_tiny_setup "$AGATE" "$tmp"
check "tiny corpus, tokenizer and datasets" "[[ $? == 0 && -f $tmp/data/train/manifest.json ]]"
common="data.train=$tmp/data/train data.val=$tmp/data/val data.seq_len=64 train.log_every=50"

"$AGATE" train recipes/tiny/pretrain.yaml $common model.path="$tmp/base" run.dir="$tmp/pre" \
  train.steps=40 optim.lr=1e-2 eval.every=40 >"$tmp/o" 2>&1
check "pretrain runs" "[[ $? == 0 && -f $tmp/pre/model/model.safetensors ]]"
cp "$tmp/tok.model" "$tmp/pre/model/tokenizer.model"
prompt="Anne walked to Bath with Emma, and Anne was glad. Henry dined at Norland with Jane, and Henry was glad. Fanny wrote to London with Edward, and Fanny was glad. Harriet spoke of Kellynch with Frank, and Harriet was"

# same TYPE NAME [OVERRIDES]: train gates, export, and compare agate's flags with the tool's.
same() {
  local type=$1 name=$2; shift 2
  "$AGATE" train recipes/tiny/cpt.yaml $common model.path="$tmp/pre/model" run.dir="$tmp/$name" \
    gate.type="$type" gate.init_bias=0.5 train.steps=30 optim.lr=1e-2 loss.lambda_warmup_steps=0 loss.target_keep=0.3 \
    eval.every=30 eval.batches=2 "$@" >"$tmp/o" 2>&1
  check "$name: gates train" "[[ $? == 0 ]]"
  "$AGATE" export "$tmp/$name" --out "$tmp/$name-export" --batches 2 >"$tmp/o" 2>&1
  check "$name: export" "[[ $? == 0 && -f $tmp/$name-export/gates.safetensors ]]"
  "$AGATE" generate --model "$tmp/pre/model" --gates "$tmp/$name-export" --prompt "$prompt" --max-new 1 \
    --flags-out "$tmp/$name-a.json" >"$tmp/o" 2>&1
  check "$name: agate generate --flags-out" "[[ $? == 0 && -s $tmp/$name-a.json ]]"
  local ids
  ids=$("$PY" -c "import json, sys; print(','.join(map(str, json.load(open(sys.argv[1]))['tokens'])))" "$tmp/$name-a.json")
  "$PY" tools/kvgate_reference.py --model "$tmp/pre/model" --gates "$tmp/$name-export" --tokens "$ids" \
    --out "$tmp/$name-py.json" 2>"$tmp/o"
  check "$name: kvgate_reference.py runs" "[[ $? == 0 && -s $tmp/$name-py.json ]]"
  [[ -s $tmp/$name-py.json ]] || cat "$tmp/o"
  "$PY" - "$tmp/$name-a.json" "$tmp/$name-py.json" >"$tmp/cmp" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
ka, kb = a["kept"], b["kept"]
shape = lambda k: (len(k), len(k[0]), len(k[0][0]))
if a["tokens"] != b["tokens"] or shape(ka) != shape(kb):
    print("layout differs", shape(ka), shape(kb)); sys.exit(1)
flat_a = [v for l in ka for h in l for v in h]
flat_b = [v for l in kb for h in l for v in h]
bad = sum(x != y for x, y in zip(flat_a, flat_b))
n = len(flat_a)
print(f"{shape(ka)} (layers, kv heads, tokens): {bad} of {n} flags differ; "
      f"agate keeps {sum(flat_a)}, the reference {sum(flat_b)} (keep_ratio {b['keep_ratio']:.3f})")
sys.exit(0 if bad <= 0.01 * n and 0 < sum(flat_a) < n else 1)
PY
  local rc=$?
  echo "     $name: $(cat "$tmp/cmp")"
  check "$name: flags equal (<= 1% differ), some evicted" "[[ $rc == 0 ]]"

  # The agate_gates package (python/) on the real export: AgatePress's flags (kvpress, after a
  # full prefill) equal agate's gate-post flags.
  if "$PY" -c "import kvpress, safetensors" >/dev/null 2>&1; then
    "$AGATE" generate --model "$tmp/pre/model" --gates "$tmp/$name-export" --policy gate-post --tokens "$ids" \
      --max-new 1 --flags-out "$tmp/$name-post.json" >"$tmp/o" 2>&1
    PYTHONPATH="$SRC/python" PYTHONDONTWRITEBYTECODE=1 "$PY" - "$tmp/pre/model" "$tmp/$name-export" "$tmp/$name-post.json" >"$tmp/cmp" 2>&1 <<'PY'
import json, sys, torch
from transformers import AutoModelForCausalLM, DynamicCache
from agate_gates import AgatePress
model_dir, export, flags = sys.argv[1:4]
a = json.load(open(flags))
model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()
press = AgatePress(export)
with torch.no_grad(), press(model):
    model(torch.tensor([a["tokens"]]), past_key_values=DynamicCache())
mine = torch.stack([press.kept[l][0] for l in range(len(press.kept))]).to(torch.int64)
theirs = torch.tensor(a["kept"])
bad = int((mine != theirs).sum()) if mine.shape == theirs.shape else -1
print(f"{tuple(mine.shape)}: {bad} of {mine.numel()} flags differ from agate's gate-post")
sys.exit(0 if bad == 0 else 1)
PY
    rc=$?
    echo "     $name: $(tail -1 "$tmp/cmp")"
    check "$name: AgatePress (python/agate_gates) flags equal agate's gate-post" "[[ $rc == 0 ]]"
  fi
}

same attention gate-attn
same mlp gate-mlp gate.recent_window=4
# Rule-feature gates (the attention each key receives, from the base layer's q and k), with a
# larger learning rate so the 30 steps move the rule weights away from their zero start.
same attention gate-rule gate.rule_feature=attention train.context_min=0.5 train.context_max=0.9 optim.lr=5e-2

"$AGATE" init-model --config "$tmp/base/config.json" --out "$tmp/rand" >/dev/null 2>&1
"$PY" tools/kvgate_reference.py --model "$tmp/rand" --gates "$tmp/gate-attn-export" --tokens 1,5,9 >"$tmp/o" 2>&1; rc=$?
check "the tool refuses another base model (weights fingerprint)" "[[ $rc != 0 ]] && grep -q 'trained on base weights' $tmp/o"

finish kvgate-python
