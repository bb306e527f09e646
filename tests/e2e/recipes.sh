#!/usr/bin/env bash
# The real-model recipes plan against their committed config-only model folders (the models'
# config.json, no weights): --dry-run must accept each and print its parameter count and memory.
set -uo pipefail
source "$(dirname "$0")/lib/common.bash"
AGATE=$1; SRC=$2
cd "$SRC"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
make_tiny_setup "$AGATE" "$tmp"
check "tiny dataset for the plans" "[[ -f $tmp/data/train/manifest.json ]]"

# recipe | base parameters (M) | bf16 weights (MB)
while read -r recipe params weights; do
  recipe=${recipe#recipes/}
  dir=$(dirname "$recipe")
  "$AGATE" train "recipes/$recipe" model.path="recipes/$dir/base" data.train="$tmp/data/train" data.val= \
    run.dir="$tmp/run-${recipe//\//-}" --dry-run >"$tmp/o" 2>&1
  check "$recipe plans from a config-only folder" "[[ $? == 0 ]] && grep -q '^parameters *$params M' $tmp/o && \
    grep -q 'memory estimate   weights $weights MB' $tmp/o && [[ ! -e $tmp/run-${recipe//\//-} ]]"
done <<'LIST'
recipes/llama2-7b/cpt.yaml 6738.42 13476.8
recipes/llama2-7b/sft-rte.yaml 6738.42 13476.8
recipes/mistral-7b/cpt.yaml 7241.73 14483.5
recipes/llama3-8b/cpt.yaml 8030.26 16060.5
recipes/qwen2-7b/cpt.yaml 7615.62 15231.2
LIST

"$AGATE" train recipes/llama2-7b/cpt.yaml model.path=recipes/llama2-7b/base data.train="$tmp/data/train" data.val= \
  run.dir="$tmp/run" >"$tmp/o" 2>&1; rc=$?
check "training a config-only folder is refused (exit 2)" "[[ $rc == 2 ]] && grep -q 'holds only config.json, no weights' $tmp/o"
finish recipes
