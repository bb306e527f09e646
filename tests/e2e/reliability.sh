#!/usr/bin/env bash
# Issue 16 through the binary: misleading messages fixed (each refusal one line, exit 2, naming
# the file or option, with a hint), a mistyped command gets a did-you-mean, thread counts are
# bounded, an HF model folder is not overwritten by export, and generate streams its text.
set -uo pipefail
AGATE=$1; SRC=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
source "$SRC/tests/e2e/lib/common.bash"
cd "$SRC"
# refused NAME WANT CMD...: exit 2, one line, the expected text and a hint.
refused() {
  local name=$1 want=$2; shift 2
  "$AGATE" "$@" >"$tmp/o" 2>&1; local rc=$?
  check "$name" "[[ $rc == 2 && \$(wc -l <$tmp/o) == 1 ]] && grep -q -- \"$want\" $tmp/o && grep -q 'hint:' $tmp/o" || cat "$tmp/o"
}
cfg=$SRC/tests/fixtures/models/llama_gqa_untied_f32/config.json
"$AGATE" init-model --config "$cfg" --out "$tmp/m" --seed 3 >/dev/null 2>&1
printf 'model:\n' >"$tmp/empty.yaml"

refused "generate --model /nope names the missing model folder (not a tokenizer)" "/nope: is not a folder" generate --model /nope --prompt hi
refused "--model --prompt hi: the option lacks its value" "option '--model' needs a value DIR, found the option '--prompt'" generate --model --prompt hi
refused "a mistyped command gets a did-you-mean" "did you mean 'generate'" genrate
refused "a recipe path that is a folder" "$tmp: is a folder, not a recipe file" train "$tmp"
refused "an empty model: section is a missing model.path, not an unknown key" "missing required key 'model.path'" train "$tmp/empty.yaml"
refused "a tokenizer path that is a folder (no basic_filebuf::underflow)" "$tmp: is a folder, not a tokenizer file" tokenize --tokenizer "$tmp" --input "$cfg" --out "$tmp/d"
refused "a prompt file that is a folder" "$tmp: is a folder, not a file" generate --model "$tmp/m" --prompt-file "$tmp"
refused "several files after one --input: repeat the option" "repeat the option for several" tokenize --tokenizer x.model --input a b --out "$tmp/d"
refused "--threads far above the cores" "is above" score --model "$tmp/m" --tokens 1,2,3 --threads 100000
refused "tokenize --threads far above the cores" "--threads 100000 is above" tokenize --tokenizer x.model --input "$cfg" --out "$tmp/d" --threads 100000
check "nothing was written by the refusals" "[[ ! -e $tmp/d ]]"

# The second probe's findings (README, Reliability): numbers that wrapped or were NaN, budgets
# that evicted everything, outputs that replaced inputs.
refused "--threads past int wraps no more" "--threads must be between 0 and 1048576" score --model "$tmp/m" --tokens 1,2,3 --threads 4294967297
refused "--temperature nan" "--temperature expects a finite number" generate --model "$tmp/m" --tokens 1,2 --max-new 2 --temperature nan
refused "--temperature too small for the softmax" "--temperature must be 0 (greedy) or in" generate --model "$tmp/m" --tokens 1,2 --max-new 2 --temperature 1e-300
refused "--keep gate outside eval" "--keep gate (the gates' own budget) is eval's" score --model "$tmp/m" --tokens 1,2,3,4,5,6 --context 3 --policy snapkv --keep gate
refused "--tokens outside the vocabulary, as given" "--tokens holds 9223372036854775807" generate --model "$tmp/m" --tokens 9223372036854775807
refused "bench --keeps that is not a ratio" "--keeps must hold ratios in (0, 1]" bench decode --model "$tmp/m" --keeps abc
refused "an empty list item" "--policies holds an empty item" eval --model "$tmp/m" --task ppl --data "$tmp" --policies ,
cp -r "$tmp/m" "$tmp/m2"
refused "--flags-out over the model's config.json" "would overwrite a file in the input --model" generate --model "$tmp/m2" --tokens 1,2 --max-new 1 --flags-out "$tmp/m2/config.json"
check "the model's config.json is intact" "cmp -s $tmp/m/config.json $tmp/m2/config.json"

# generate streams: the prompt is on stdout before the first token is chosen, each new token
# as it comes (a slow generation shows progress), and --max-new past the model's positions is
# refused at once.
"$AGATE" generate --model "$tmp/m" --tokens 1,2,3 --max-new 4 >"$tmp/o" 2>&1
check "generate --tokens without a tokenizer still prints the ids" "[[ $? == 0 ]] && grep -q '^\[ids\]' $tmp/o"
refused "generate --max-new past max_position_embeddings" "must fit the model.s max_position_embeddings" generate --model "$tmp/m" --tokens 1,2 --max-new 1000000000000
finish reliability
