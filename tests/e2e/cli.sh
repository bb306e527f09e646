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
"$AGATE" score --model "$tmp/nope" --tokens 1,2 >"$tmp/o" 2>&1; check "missing model folder exits 2" "[[ $? == 2 ]]"
printf 'garbage' >"$tmp/m/model.safetensors"
"$AGATE" score --model "$tmp/m" --tokens 1,2 >"$tmp/o" 2>&1; check "corrupt weights exit 2" "[[ $? == 2 ]]"
check "corrupt weights named" "grep -q 'model.safetensors' $tmp/o"

if [[ $fail == 0 ]]; then echo "all CLI checks passed"; fi
exit $fail
