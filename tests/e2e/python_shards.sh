#!/usr/bin/env bash
# The token-shard format (docs/formats.md section 2) written by another program: the stdlib-only
# tools/write_shards.py turns JSONL token ids into a dataset that agate checks and loads exactly
# as expected (cpt and sft), and writes shards byte-identical to agate tokenize's own.
set -uo pipefail
AGATE=$1; SRC=$2
if ! command -v python3 >/dev/null 2>&1; then echo "skip: no python3"; exit 0; fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
WRITE="python3 $SRC/tools/write_shards.py"
VOCAB=1000; EOS=2; BOS=1; HASH=0x1234abcd

# Random documents (fixed seed). cpt lengths 37 23 | 41 29 | 50 pack into 3 shards of <= 100 tokens.
python3 - "$tmp" <<'EOF'
import json, random, sys
rng = random.Random(7)
def doc(n): return [1] + [rng.randrange(3, 1000) for _ in range(n - 2)] + [2]
with open(sys.argv[1] + "/cpt.jsonl", "w") as f:
    for n in (37, 23, 41, 29, 50):
        f.write(json.dumps({"tokens": doc(n)}) + "\n")
with open(sys.argv[1] + "/sft.jsonl", "w") as f:
    for n in (12, 50, 20, 9):   # 50 is longer than a 25-token sample: skipped by the pad loader
        prompt = rng.randrange(2, n - 1)
        f.write(json.dumps({"tokens": doc(n), "mask": [0] * prompt + [1] * (n - prompt)}) + "\n")
EOF

# expect FILE WHAT [ARGS]: the expected numbers and loader lines, computed from the JSONL alone.
# The greedy packing rule mirrors write_shards.py: a shard takes documents while it stays <= limit.
expect() {
  python3 - "$@" <<'EOF'
import json, sys
path, what = sys.argv[1], sys.argv[2]
docs = [json.loads(l) for l in open(path) if l.strip()]
if what == "counts":  # documents tokens loss-tokens
    print(len(docs), sum(len(d["tokens"]) for d in docs), sum(sum(d.get("mask", [1] * len(d["tokens"]))) for d in docs))
elif what == "cpt":   # shards LIMIT, or sample LIMIT K INDEX: the loader's window (formats.md 2.3)
    limit = int(sys.argv[3])
    shards, cur = [], []
    for d in docs:
        if cur and len(cur) + len(d["tokens"]) > limit:
            shards.append(cur); cur = []
        cur += d["tokens"]
    shards.append(cur)
    if len(sys.argv) == 4:
        print(len(shards)); sys.exit()
    k, index = int(sys.argv[4]), int(sys.argv[5])
    windows = [s[i * k:i * k + k + 1] for s in shards for i in range((len(s) - 1) // k) if len(s) > k]
    print("tokens: " + " ".join(map(str, windows[index])))
    print("mask:  " + " 1" * (k + 1))
elif what == "sft":   # K INDEX: pad mode, one document per sample, padded with EOS (mask 0)
    k, index, eos = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    fits = [d for d in docs if len(d["tokens"]) <= k + 1]
    d = fits[index]; pad = k + 1 - len(d["tokens"])
    print("tokens: " + " ".join(map(str, d["tokens"] + [eos] * pad)))
    print("mask:   " + " ".join(map(str, d["mask"] + [0] * pad)))
EOF
}

# ---- cpt --------------------------------------------------------------------------------------
$WRITE "$tmp/cpt.jsonl" --out "$tmp/cpt" --kind cpt --vocab-size $VOCAB --eos-id $EOS --bos-id $BOS \
  --tokenizer-hash $HASH --split train --shard-tokens 100 >"$tmp/o" 2>&1
check "write_shards.py cpt" "[[ $? == 0 && -f $tmp/cpt/manifest.json ]]"
read -r docs toks loss <<<"$(expect "$tmp/cpt.jsonl" counts)"
nshards=$(expect "$tmp/cpt.jsonl" cpt 100)
check "three shards of at most 100 tokens" "[[ $nshards == 3 && -f $tmp/cpt/shard_00002.bin && ! -f $tmp/cpt/shard_00003.bin ]]"
"$AGATE" data check "$tmp/cpt" >"$tmp/o" 2>&1
check "agate data check passes (cpt)" "[[ $? == 0 ]] && grep -q '^check *OK' $tmp/o"
check "data check counts: $docs documents, $toks tokens, $nshards shards" \
  "grep -q '^documents *$docs\$' $tmp/o && grep -q '^tokens *$toks ($toks loss tokens)' $tmp/o && grep -q '^shards *$nshards,' $tmp/o"
check "data check reads the header fields" "grep -q '^vocabulary *$VOCAB (eos $EOS, bos $BOS, tokenizer $HASH)' $tmp/o"
for s in 0 2 3; do  # 0, 2: shard 0 (windows share a token); 3: the first window of shard 1
  "$AGATE" data show "$tmp/cpt" --sample $s --seq-len 16 >"$tmp/o" 2>&1
  grep -E '^(tokens|mask):' "$tmp/o" >"$tmp/got"; expect "$tmp/cpt.jsonl" cpt 100 16 $s >"$tmp/want"
  check "data show cpt sample $s is the expected window" "cmp -s $tmp/got $tmp/want"
done

# ---- sft --------------------------------------------------------------------------------------
$WRITE --out "$tmp/sft" --kind sft --vocab-size $VOCAB --eos-id $EOS --bos-id $BOS \
  --tokenizer-hash $HASH <"$tmp/sft.jsonl" >"$tmp/o" 2>&1
check "write_shards.py sft from stdin" "[[ $? == 0 && -f $tmp/sft/manifest.json ]]"
read -r docs toks loss <<<"$(expect "$tmp/sft.jsonl" counts)"
"$AGATE" data check "$tmp/sft" >"$tmp/o" 2>&1
check "agate data check passes (sft)" "[[ $? == 0 ]] && grep -q '^check *OK' $tmp/o"
check "data check counts: $docs documents, $toks tokens, $loss loss tokens" \
  "grep -q '^documents *$docs\$' $tmp/o && grep -q '^tokens *$toks ($loss loss tokens)' $tmp/o"
for s in 0 1; do  # 1 is the third document: the second is too long for seq-len 24 and skipped
  "$AGATE" data show "$tmp/sft" --sample $s --seq-len 24 >"$tmp/o" 2>&1
  grep -E '^(tokens|mask):' "$tmp/o" >"$tmp/got"; expect "$tmp/sft.jsonl" sft 24 $s $EOS >"$tmp/want"
  check "data show sft (pad) sample $s: tokens and mask lines" "cmp -s $tmp/got $tmp/want"
done

# ---- corruption -------------------------------------------------------------------------------
cp -r "$tmp/cpt" "$tmp/bad"
python3 -c 'import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[300] ^= 0xff; open(p, "wb").write(b)' \
  "$tmp/bad/shard_00001.bin"
"$AGATE" data check "$tmp/bad" >"$tmp/o" 2>&1; rc=$?
check "flipped payload byte refused (exit 2)" "[[ $rc == 2 ]] && grep -q 'shard_00001.bin: checksum mismatch' $tmp/o"

# ---- the writer refuses bad input -------------------------------------------------------------
bad() {  # bad NAME LINE2 [KIND]: the second line is bad; exit 2, the message names file:2, no manifest
  local first='{"tokens": [1, 5, 2], "mask": [0, 1, 1]}'
  [[ ${3:-sft} == cpt ]] && first='{"tokens": [1, 5, 2]}'
  printf '%s\n%s\n' "$first" "$2" >"$tmp/in.jsonl"
  $WRITE "$tmp/in.jsonl" --out "$tmp/w" --kind "${3:-sft}" --vocab-size $VOCAB --eos-id $EOS --bos-id $BOS \
    --tokenizer-hash $HASH >"$tmp/o" 2>&1; rc=$?
  check "refused: $1" "[[ $rc == 2 ]] && grep -q 'in.jsonl:2' $tmp/o && [[ ! -e $tmp/w/manifest.json ]]"
}
bad "malformed JSON" '{"tokens": [1, 2'
bad "token id >= vocab" '{"tokens": [1, 1000], "mask": [1, 1]}'
bad "negative token id" '{"tokens": [-1], "mask": [1]}'
bad "mask length differs" '{"tokens": [1, 2, 3], "mask": [0, 1]}'
bad "mask value 2" '{"tokens": [1, 2], "mask": [0, 2]}'
bad "sft line without mask" '{"tokens": [1, 2]}'
bad "mask on a cpt line" '{"tokens": [1, 2], "mask": [1, 1]}' cpt
$WRITE "$tmp/cpt.jsonl" --out "$tmp/cpt" --kind cpt --vocab-size $VOCAB --eos-id $EOS --bos-id $BOS \
  --tokenizer-hash $HASH >"$tmp/o" 2>&1
check "refuses to overwrite a dataset without --force (exit 2)" "[[ $? == 2 ]]"
$WRITE "$tmp/sft.jsonl" --out "$tmp/cpt" --kind sft --vocab-size $VOCAB --eos-id $EOS --bos-id $BOS \
  --tokenizer-hash $HASH --force >"$tmp/o" 2>&1
check "--force rewrites it and removes the old shards" \
  "[[ $? == 0 && ! -e $tmp/cpt/shard_00001.bin ]] && $AGATE data check $tmp/cpt 2>&1 | grep -q '(sft, split train)'"

# ---- byte-identical to agate tokenize ---------------------------------------------------------
# Decode agate's own shards to JSONL, rewrite them with write_shards.py, compare the bytes.
for i in $(seq 1 40); do echo "The quick brown fox $i jumps over the lazy dog $((i * 31))."; echo; done >"$tmp/corpus.txt"
printf '{"prompt": "What is the number?", "response": "It is 42."}\n{"prompt": "Hi", "response": "Hello."}\n' >"$tmp/chat.jsonl"
"$AGATE" tokenizer train --input "$tmp/corpus.txt" --vocab 340 --out "$tmp/tok.model" >/dev/null 2>&1
"$AGATE" tokenize --tokenizer "$tmp/tok.model" --input "$tmp/corpus.txt" --out "$tmp/at" --val-fraction 0 >/dev/null 2>&1
"$AGATE" tokenize --kind sft --tokenizer "$tmp/tok.model" --input "$tmp/chat.jsonl" --out "$tmp/as" --val-fraction 0 >/dev/null 2>&1
for kind in cpt sft; do
  d=$tmp/at/train; [[ $kind == sft ]] && d=$tmp/as/train
  args=$(python3 - "$d" <<'EOF'
import json, struct, sys
d = sys.argv[1]
m = json.load(open(d + "/manifest.json"))
with open(d + "/docs.jsonl", "w") as out:
    for s in m["shards"]:
        b = open(d + "/" + s["file"], "rb").read()
        _, _, flags, n, nd = struct.unpack_from("<8sIIQQ", b)
        toks = struct.unpack_from("<%dI" % n, b, 256)
        mask = b[256 + 4 * n:256 + 5 * n] if flags & 1 else None
        at = (256 + 4 * n + (n if mask else 0) + 7) // 8 * 8
        off = struct.unpack_from("<%dQ" % (nd + 1), b, at)
        for i in range(nd):
            doc = {"tokens": list(toks[off[i]:off[i + 1]])}
            if mask: doc["mask"] = list(mask[off[i]:off[i + 1]])
            out.write(json.dumps(doc) + "\n")
print("--kind %s --vocab-size %d --eos-id %d --bos-id %d --tokenizer-hash %s" %
      (m["kind"], m["vocab_size"], m["eos_id"], m["bos_id"], m["tokenizer_hash"]))
EOF
)
  $WRITE "$d/docs.jsonl" --out "$tmp/re_$kind" $args >"$tmp/o" 2>&1
  check "agate tokenize $kind shard rewritten byte-identically" \
    "[[ -n '$args' ]] && cmp -s $d/shard_00000.bin $tmp/re_$kind/shard_00000.bin && [[ ! -e $tmp/re_$kind/shard_00001.bin ]]"
  check "agate tokenize $kind manifest has the same content" "python3 -c '
import json, sys; a, b = (json.load(open(p)) for p in sys.argv[1:]); sys.exit(a != b)' $d/manifest.json $tmp/re_$kind/manifest.json"
done

if [[ $fail == 0 ]]; then echo "all python shard writer checks passed"; fi
exit $fail
