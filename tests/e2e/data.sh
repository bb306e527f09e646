#!/usr/bin/env bash
# The data pipeline through the CLI: tokenizer train -> tokenize (cpt, sft) -> data check/show,
# and refusals of bad data with exit status 2 and a one-line message.
set -uo pipefail
AGATE=$1; SRC=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }

for i in $(seq 1 60); do
  echo "It is a truth universally acknowledged, that a single man in possession of a good fortune $i."
  echo "In the beginning God created the heaven and the earth, and the number was $((i * 7919))."
  echo
done >"$tmp/corpus.txt"
printf '{"prompt": "What is the number?", "response": "It is 42."}\n{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}\n' >"$tmp/sft.jsonl"

"$AGATE" tokenizer train --input "$tmp/corpus.txt" --vocab 400 --out "$tmp/tok.model" >"$tmp/o" 2>&1
check "tokenizer train" "[[ $? == 0 && -f $tmp/tok.model ]]"
"$AGATE" tokenize --tokenizer "$tmp/tok.model" --input "$tmp/corpus.txt" --out "$tmp/cpt" --val-fraction 0.1 >"$tmp/o" 2>&1
check "tokenize cpt" "[[ $? == 0 ]]"
check "summary names both splits" "grep -q 'train' $tmp/o && grep -q 'val' $tmp/o && grep -q 'MB/s' $tmp/o"
check "manifests written" "[[ -f $tmp/cpt/train/manifest.json && -f $tmp/cpt/val/manifest.json ]]"
"$AGATE" tokenize --tokenizer "$tmp/tok.model" --input "$tmp/corpus.txt" --out "$tmp/cpt" >"$tmp/o" 2>&1
check "tokenize refuses to overwrite without --force" "[[ $? == 2 ]]"
"$AGATE" data check "$tmp/cpt/train" >"$tmp/o" 2>&1;        check "data check" "[[ $? == 0 ]] && grep -q OK $tmp/o"
"$AGATE" data show "$tmp/cpt/train" --sample 1 --seq-len 16 --tokenizer "$tmp/tok.model" >"$tmp/o" 2>&1
check "data show decodes text" "[[ $? == 0 ]] && grep -q '^tokens:' $tmp/o && grep -q '^text' $tmp/o"

"$AGATE" tokenize --kind sft --tokenizer "$tmp/tok.model" --input "$tmp/sft.jsonl" --out "$tmp/sft" --val-fraction 0 >"$tmp/o" 2>&1
check "tokenize sft" "[[ $? == 0 ]]"
"$AGATE" data show "$tmp/sft/train" --sample 0 --seq-len 64 --tokenizer "$tmp/tok.model" >"$tmp/o" 2>&1
check "sft targets are the response" "grep -q '\[\[It is 42.' $tmp/o"

# Corruption: flip one payload byte of a shard.
shard=$(ls "$tmp/cpt/train"/shard_*.bin | head -1)
printf '\xff' | dd of="$shard" bs=1 seek=300 conv=notrunc status=none
"$AGATE" data check "$tmp/cpt/train" >"$tmp/o" 2>&1; rc=$?
check "corrupt shard refused (exit 2)" "[[ $rc == 2 ]]"
check "one line naming the shard and the checksum" "[[ \$(wc -l <$tmp/o) == 1 ]] && grep -q 'shard_00000.bin: checksum mismatch' $tmp/o"
printf '{"prompt": "a", "response": "b"}\n{"prompt": "a" "response": "b"}\n' >"$tmp/bad.jsonl"
"$AGATE" tokenize --kind sft --tokenizer "$tmp/tok.model" --input "$tmp/bad.jsonl" --out "$tmp/bad" >"$tmp/o" 2>&1; rc=$?
check "malformed JSONL refused with its line (exit 2)" "[[ $rc == 2 ]] && grep -q 'bad.jsonl:2' $tmp/o"
"$AGATE" data show "$tmp/sft/train" --sample 0 --seq-len 2 >"$tmp/o" 2>&1; rc=$?
check "seq-len no SFT document fits is refused" "[[ $rc == 2 ]] && grep -q 'no SFT document fits' $tmp/o"

if [[ $fail == 0 ]]; then echo "all data CLI checks passed"; fi
exit $fail
