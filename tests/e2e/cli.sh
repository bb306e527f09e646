#!/usr/bin/env bash
# The agate binary as a user meets it: help, exit codes, init-model -> inspect -> score.
set -uo pipefail
AGATE=$1; SRC=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

"$AGATE" --help >"$tmp/help" 2>&1;             check "--help exits 0" "[[ $? == 0 ]]"
check "--help lists score" "grep -q '^  score' $tmp/help"
"$AGATE" frobnicate >"$tmp/o" 2>&1;            check "unknown command exits 2" "[[ $? == 2 ]]"
"$AGATE" score --frob >"$tmp/o" 2>&1;          check "unknown flag exits 2" "[[ $? == 2 ]]"
check "unknown flag prints usage" "grep -q 'usage: agate score' $tmp/o"
"$AGATE" inspect --help >"$tmp/o" 2>&1;        check "subcommand --help exits 0" "[[ $? == 0 ]]"

cfg=$SRC/tests/fixtures/models/llama_gqa_untied_f32/config.json
"$AGATE" init-model --config "$cfg" --out "$tmp/m" --seed 3 2>"$tmp/log"; check "init-model" "[[ $? == 0 ]]"
check "init-model writes HF layout" "[[ -f $tmp/m/config.json && -f $tmp/m/model.safetensors ]]"
before=$(md5sum "$tmp/m/model.safetensors")
"$AGATE" init-model --config "$cfg" --out "$tmp/m" --seed 4 >"$tmp/o" 2>&1; check "init-model refuses to overwrite" "[[ $? == 2 ]]"
check "refused overwrite left the model intact" "[[ \"$before\" == \"\$(md5sum $tmp/m/model.safetensors)\" ]]"

"$AGATE" inspect "$tmp/m" >"$tmp/o";            check "inspect" "[[ $? == 0 ]]"
check "inspect counts parameters" "grep -q 'parameters' $tmp/o"
"$AGATE" inspect "$tmp/m" --json >"$tmp/o";     check "inspect --json parses" "/usr/bin/env python3 -c 'import json,sys; json.load(open(\"$tmp/o\"))'"

"$AGATE" score --model "$tmp/m" --tokens 1,2,3,4 >"$tmp/o"; check "score" "[[ $? == 0 ]]"
check "score prints 3 logprobs" "python3 -c 'import json; d=json.load(open(\"$tmp/o\")); assert len(d[\"logprobs\"])==3 and abs(sum(d[\"logprobs\"])-d[\"total\"])<1e-9'"
"$AGATE" score --model "$tmp/m" --tokens 1,2,999 >"$tmp/o" 2>&1; check "score refuses out-of-vocab ids (exit 2)" "[[ $? == 2 ]]"
check "error is one line" "[[ \$(wc -l <$tmp/o) == 1 ]] && grep -q 'outside the vocabulary' $tmp/o"
smol_tok=$SRC/models/smollm2-135m-instruct/tokenizer.json  # scripts/get_model.sh smollm2
if [[ -f $smol_tok ]]; then
  "$AGATE" score --model "$tmp/m" --text "hello" --tokenizer "$smol_tok" >"$tmp/o" 2>&1
  check "a tokenizer larger than the model is refused (exit 2, one line, hint)" "[[ $? == 2 && \$(wc -l <$tmp/o) == 1 ]] && grep -q 'has 49152 token ids but the model has only 97 embeddings.*hint' $tmp/o"
else
  echo "skip tokenizer/model mismatch check: no $smol_tok"
fi
# generate --policy over --tokens (no tokenizer in the folder): every policy, the flags JSON.
ids=3,14,15,9,26,5,35,8,7,3,23,84,62,64,33,83,27,9,50,28
for p in streamingllm h2o snapkv pyramidkv ada-snapkv ada-pyramid; do
  "$AGATE" generate --model "$tmp/m" --tokens $ids --policy $p --keep 0.5 --window 4 --max-new 3 --flags-out "$tmp/f.json" >"$tmp/o" 2>&1
  check "generate --policy $p --keep 0.5 over --tokens" "[[ $? == 0 ]] && grep -q '^\[ids\] ' $tmp/o && grep -q '^\[policy\] $p, keep 0.5' $tmp/o"
  check "$p: flags JSON is [layer][kv_head][token] with 20 kept per layer" "python3 -c '
import json; d=json.load(open(\"$tmp/f.json\")); k=d[\"kept\"]
assert d[\"policy\"]==\"$p\" and len(d[\"tokens\"])==20 and len(k)==2 and all(len(l)==2 and all(len(h)==20 for h in l) for l in k)
assert sum(map(sum, sum(k, []))) == 40, sum(map(sum, sum(k, [])))'"
done
"$AGATE" generate --model "$tmp/m" --tokens $ids --policy snapkv --budget 6 --window 4 --kvpress-compat --max-new 2 --show-evictions >"$tmp/o" 2>&1
check "generate --budget --kvpress-compat --show-evictions" "[[ $? == 0 ]] && grep -q 'L01 H1  30.0%' $tmp/o"
"$AGATE" generate --model "$tmp/m" --tokens $ids --max-new 2 >"$tmp/o" 2>&1
check "generate defaults to the full cache" "[[ $? == 0 ]] && grep -q '^\[policy\] full' $tmp/o && grep -q '(100.0%)' $tmp/o"
refused() {  # refused NAME WANT ARGS...: exit 2, one line naming WANT, with a hint
  local name=$1 want=$2; shift 2
  "$AGATE" "$@" --max-new 2 >"$tmp/o" 2>&1
  check "$name is refused with a hint" "[[ $? == 2 && \$(wc -l <$tmp/o) == 1 ]] && grep -q -- '$want' $tmp/o && grep -q 'hint:' $tmp/o"
}
refused "an unknown policy" "unknown policy" generate --model "$tmp/m" --tokens $ids --policy snapkv2 --keep 0.5
refused "--keep with --budget" "at most one of --keep and --budget" generate --model "$tmp/m" --tokens $ids --policy snapkv --keep 0.5 --budget 4
refused "a keep outside (0, 1]" "(0, 1]" generate --model "$tmp/m" --tokens $ids --policy snapkv --keep 1.5
refused "a keep of 0" "(0, 1]" generate --model "$tmp/m" --tokens $ids --policy h2o --keep 0
refused "a baseline without a budget" "needs a budget" generate --model "$tmp/m" --tokens $ids --policy snapkv
refused "a budget for the full cache" "takes no --keep/--budget" generate --model "$tmp/m" --tokens $ids --policy full --keep 0.5
refused "the gates without --gates" "needs the gates" generate --model "$tmp/m" --tokens $ids --policy gate
refused "a budget larger than the prompt" "exceeds the context (20 tokens)" generate --model "$tmp/m" --tokens $ids --policy snapkv --budget 21
refused "--kvpress-compat with max pooling" "pools by avg" generate --model "$tmp/m" --tokens $ids --policy snapkv --keep 0.5 --kvpress-compat --pooling max
"$AGATE" generate --model "$tmp/m" --tokens $ids --prompt hello >"$tmp/o" 2>&1
check "two prompts are refused with the usage" "[[ $? == 2 ]] && grep -q 'exactly one of --prompt, --prompt-file and --tokens' $tmp/o && grep -q 'usage: agate generate' $tmp/o"
# score --context: the continuation over a compressed context; keep 1 is the full cache.
"$AGATE" score --model "$tmp/m" --tokens $ids --context 14 >"$tmp/full.json" 2>&1
"$AGATE" score --model "$tmp/m" --tokens $ids --context 14 --policy snapkv --keep 1.0 --window 4 >"$tmp/k1.json" 2>&1
"$AGATE" score --model "$tmp/m" --tokens $ids --context 14 --policy snapkv --keep 0.25 --window 4 >"$tmp/k25.json" 2>&1
check "score --context --policy: 6 logprobs, keep 1 equals full, keep 0.25 stores round(0.25 x 14 x 2) per layer" "python3 -c '
import json; f, a, b = (json.load(open(\"$tmp/\" + n)) for n in (\"full.json\", \"k1.json\", \"k25.json\"))
assert len(f[\"logprobs\"]) == 6 and abs(f[\"total\"] - a[\"total\"]) < 1e-4, (f, a)
assert b[\"kv_entries\"] == 2 * 7 and a[\"kv_entries\"] == a[\"kv_entries_full\"] == 56, (a, b)'"
"$AGATE" score --model "$tmp/nope" --tokens 1,2 >"$tmp/o" 2>&1; check "missing model folder exits 2" "[[ $? == 2 ]]"
printf 'garbage' >"$tmp/m/model.safetensors"
"$AGATE" score --model "$tmp/m" --tokens 1,2 >"$tmp/o" 2>&1; check "corrupt weights exit 2" "[[ $? == 2 ]]"
check "corrupt weights named" "grep -q 'model.safetensors' $tmp/o"

# bench attention: one JSON line per kernel and mode; bad values refused in one line.
for k in flash rows reference; do
  "$AGATE" bench attention --kernel $k --mode train --seq 48 --heads 4 --kv-heads 2 --head-dim 8 --window 32 --recent 4 --iters 1 --threads 1 >"$tmp/o" 2>&1
  check "bench attention --kernel $k --mode train" "[[ $? == 0 ]] && python3 -c '
import json; j=json.loads(open(\"$tmp/o\").read()); assert j[\"kernel\"]==\"$k\" and j[\"T\"]==48 and j[\"status\"]==\"ok\" and j[\"peak_bytes\"] > 0, j'"
done
"$AGATE" bench attention --kernel fused >"$tmp/o" 2>&1
check "bench attention refuses an unknown kernel (exit 2, one line)" "[[ $? == 2 && \$(wc -l <$tmp/o) == 1 ]] && grep -q 'flash, rows or reference' $tmp/o"
"$AGATE" bench attention --heads 8 --kv-heads 3 >"$tmp/o" 2>&1
check "bench attention refuses H not a multiple of Hkv" "[[ $? == 2 && \$(wc -l <$tmp/o) == 1 ]] && grep -q 'multiple' $tmp/o"

if [[ $fail == 0 ]]; then echo "all CLI checks passed"; fi
exit $fail
