# Helpers shared by the e2e scripts (sourced; not a test itself).
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi; }
finish() { if [[ $fail == 0 ]]; then echo "all $1 checks passed"; fi; exit $fail; }

# make_tiny_setup AGATE DIR: a templated synthetic corpus with learnable structure, a 512-piece
# tokenizer, DIR/data/{train,val}, and DIR/base/config.json (2 layers, d 64, vocab 512).
make_tiny_setup() {
  local agate=$1 dir=$2
  python3 - "$dir/corpus.txt" <<'PY'
import random, sys
rng = random.Random(0)
names = ["Anne", "Elinor", "Marianne", "Edward", "Fanny", "Henry", "Emma", "Harriet", "Jane", "Frank"]
places = ["Barton", "Norland", "Mansfield", "Highbury", "Bath", "London", "Hartfield", "Kellynch"]
verbs = ["walked to", "wrote to", "dined at", "returned from", "spoke of", "dreamed of"]
with open(sys.argv[1], "w") as f:
    for d in range(1500):
        lines = []
        for s in range(rng.randint(3, 8)):
            a, b = rng.choice(names), rng.choice(names)
            lines.append(f"{a} {rng.choice(verbs)} {rng.choice(places)} with {b}, and {a} was glad.")
        f.write(" ".join(lines) + "\n\n")
PY
  "$agate" tokenizer train --input "$dir/corpus.txt" --vocab 512 --out "$dir/tok.model" >"$dir/tok.log" 2>&1 || { cat "$dir/tok.log"; return 1; }
  "$agate" tokenize --tokenizer "$dir/tok.model" --input "$dir/corpus.txt" --out "$dir/data" --val-fraction 0.05 >/dev/null || return 1
  mkdir -p "$dir/base"
  cat >"$dir/base/config.json" <<'JSON'
{"model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 176,
 "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
 "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2}
JSON
}
