#!/usr/bin/env bash
# Retrieval-shaped data for the gates (tools/make_passkey.py): --split takes filler only from the
# paragraphs agate tokenize puts in that split (the same crc32 rule, checked against agate's own
# split), --format text writes training documents whose answer is the fact they hold, and the
# JSONL's "question" is the ending of its prompt (what eval --question-after moves).
set -uo pipefail
AGATE=$1; SRC=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
MP="python3 $SRC/tools/make_passkey.py"

for i in $(seq 1 120); do
  echo "Paragraph $i opens here with some words about the weather in town number $i. It closes with another sentence of plain words, and the count $((i * 37))."
  echo
done >"$tmp/corpus.txt"
"$AGATE" tokenizer train --input "$tmp/corpus.txt" --vocab 400 --out "$tmp/tok.model" >/dev/null 2>&1
"$AGATE" tokenize --tokenizer "$tmp/tok.model" --input "$tmp/corpus.txt" --out "$tmp/tok" --val-fraction 0.2 >"$tmp/o" 2>&1
agate_val=$(python3 -c "import json; print(json.load(open('$tmp/tok/val/manifest.json'))['num_documents'])")
py_val=$(python3 -c "
import sys; sys.path.insert(0, '$SRC/tools'); import make_passkey as m
paras = [p for p in open('$tmp/corpus.txt').read().split('\n\n') if p.strip()]
print(sum(m.is_val(p.strip('\n'), 0.2) for p in paras))")
check "make_passkey's split rule is agate tokenize's ($agate_val val paragraphs)" "[[ $agate_val -gt 0 && $agate_val == $py_val ]]"

$MP --split val --val-fraction 0.2 --filler "$tmp/corpus.txt" --n 20 --min-words 30 --max-words 40 --out "$tmp/val.jsonl"
$MP --split train --val-fraction 0.2 --format text --kinds passkey,kv,code --filler "$tmp/corpus.txt" --n 30 \
  --min-words 30 --max-words 60 --out "$tmp/train.txt"
check "val haystacks use val paragraphs only, training text train paragraphs only" "python3 -c \"
import json, re, sys; sys.path.insert(0, '$SRC/tools'); import make_passkey as m
paras = [p.strip('\n') for p in open('$tmp/corpus.txt').read().split('\n\n') if p.strip()]
val = {re.search(r'town number (\d+)', p).group(1) for p in paras if m.is_val(p, 0.2)}
seen = lambda text: set(re.findall(r'town number (\d+)', text))
hay = ' '.join(json.loads(l)['prompt'] for l in open('$tmp/val.jsonl'))
train = open('$tmp/train.txt').read()
assert seen(hay) and seen(hay) <= val, (seen(hay) - val)
assert seen(train) and not (seen(train) & val), seen(train) & val
\""
check "each training document ends with the value its fact holds" "python3 -c \"
import re
docs = [d for d in open('$tmp/train.txt').read().split('\n\n') if d.strip()]
assert len(docs) == 30
for d in docs:
    v = re.search(r'(\d{5})\.$', d.strip()).group(1)
    assert d.count(v) >= 2, d
\""
check "every JSONL line's question ends its prompt" "python3 -c \"
import json
for l in open('$tmp/val.jsonl'):
    j = json.loads(l); assert j['prompt'].endswith(' ' + j['question']), j
\""
# The multiple-choice task of the held-out evaluation: passages, answers and distractors all from
# val documents (documents need 8+ sentences, so a second file of long val documents is added).
for i in $(seq 1 40); do
  for k in $(seq 1 9); do printf 'Sentence %d of the long document number %d goes on for a while here. ' "$k" "$i"; done
  echo; echo
done >"$tmp/long.txt"
python3 "$SRC/tools/make_cloze.py" --text "$tmp/corpus.txt,$tmp/long.txt" --split val --val-fraction 0.2 --words 20 \
  --n 12 --out "$tmp/cloze.jsonl"
check "cloze questions use val documents only" "python3 -c \"
import json, re, sys; sys.path.insert(0, '$SRC/tools'); import make_passkey as m
val = {re.search(r'document number (\\d+)', p).group(1) for p in m.paragraphs('$tmp/long.txt', 'val', 0.2)}
lines = [json.loads(l) for l in open('$tmp/cloze.jsonl')]
assert len(lines) == 12 and val
for j in lines:
    used = set(re.findall(r'document number (\\d+)', j['context'] + ' '.join(j['choices'])))
    assert used and used <= val, (used - val)
\""
python3 "$SRC/tools/make_cloze.py" --text "$tmp/corpus.txt" --split val --val-fraction 0.2 --out "$tmp/x.jsonl" >"$tmp/o" 2>&1
check "cloze with too few long documents in the split is refused with a hint" "[[ $? == 1 ]] && grep -q 'in the val split (hint' $tmp/o"
$MP --split val --out "$tmp/x.jsonl" >"$tmp/o" 2>&1
check "--split without --filler is refused" "[[ $? == 2 ]] && grep -q 'needs --filler' $tmp/o"
$MP --format text --kinds passkey,nope --out "$tmp/x.txt" >"$tmp/o" 2>&1
check "an unknown --kinds is refused with the list" "[[ $? == 2 ]] && grep -q 'choose from passkey,kv,code' $tmp/o"
exit $fail
