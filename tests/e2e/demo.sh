#!/usr/bin/env bash
# The demo's pipeline end to end (scripts/demo.sh), shortened by its own knobs so CI stays fast:
# the built binary instead of install + build, a small synthetic corpus instead of the default
# one, a few steps of each stage. Every artifact it lists must exist and parse.
set -uo pipefail
AGATE=$1; SRC=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
source "$SRC/tests/e2e/lib/common.bash"
cd "$SRC"
make_tiny_setup "$AGATE" "$tmp"
mkdir -p "$tmp/corpus" && cp "$tmp/tok.model" "$tmp/corpus/tokenizer.model" && ln -s "$tmp/data" "$tmp/corpus/tokens"

run_demo() {
  DEMO_MODEL=tiny DEMO_AGATE="$AGATE" DEMO_CORPUS="$tmp/corpus" DEMO_DIR="$tmp/demo" DEMO_PRETRAIN_STEPS=30 DEMO_GATE_STEPS=20 \
    DEMO_EVAL_SAMPLES=4 bash scripts/demo.sh >"$tmp/out" 2>&1
}
run_demo
check "demo runs end to end" "[[ $? == 0 ]] && grep -q 'demo finished in' $tmp/out"
d=$tmp/demo
check "base model in HF layout, with its tokenizer" "[[ -f $d/base/model/config.json && -f $d/base/model/model.safetensors && -f $d/base/model/tokenizer.model ]]"
"$AGATE" inspect "$d/base/model" >/dev/null 2>&1;                check "base model loads (agate inspect)" "[[ $? == 0 ]]"
check "gates, summary and metrics parse" "python3 -c 'import json; json.load(open(\"$d/gates/summary.json\")); [json.loads(l) for l in open(\"$d/gates/metrics.jsonl\")]'"
check "export: gates.safetensors + kvgate_config.json" "[[ -f $d/gates/export/gates.safetensors ]] && python3 -c 'import json; json.load(open(\"$d/gates/export/kvgate_config.json\"))'"
check "eval: table, JSON with every policy, SVG" "grep -q '| ada-pyramid | = gate |' $d/eval/eval.md && \
  python3 -c 'import json; d=json.load(open(\"$d/eval/eval.json\")); assert {r[\"policy\"] for r in d[\"rows\"]} >= {\"full\",\"gate\",\"gate-post\",\"streamingllm\",\"h2o\",\"snapkv\",\"pyramidkv\",\"ada-snapkv\",\"ada-pyramid\"}' && \
  python3 -c 'import xml.dom.minidom; xml.dom.minidom.parse(\"$d/eval/eval.svg\")'"
check "generation prints the KV line and the eviction picture" "grep -q '^\[kv\]' $tmp/out && grep -q 'L01 H1' $tmp/out"
check "results table and artifact list" "grep -q '| base + Attention-Gates |' $tmp/out && grep -q 'eval.{md,json,svg}' $tmp/out"

run_demo
check "a second run skips the finished steps" "[[ $? == 0 ]] && [[ \$(grep -c 'exists, skipping' $tmp/out) -ge 3 ]]"
finish demo
