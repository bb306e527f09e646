#!/usr/bin/env python3
"""Synthetic passkey-retrieval data (stdlib only): a number hidden at a random depth in filler
text, asked for at the end. The SFT form the tiny recipes train on, and a retrieval probe.

    python3 tools/make_passkey.py --out data/corpus/passkey/train.jsonl --n 2000 --seed 0
    python3 tools/make_passkey.py --out data/corpus/passkey/val.jsonl --n 200 --seed 1

Each line: {"prompt": "<filler> The pass key is 48213. Remember it. 48213 is the pass key.
<filler> What is the pass key?", "response": "The pass key is 48213.", "passkey": "48213",
"depth": 0.37}. Filler is the classic repetitive passkey filler, so only the key carries
information; --filler FILE uses sentences from a text file instead.
"""
import argparse
import json
import random
import sys

FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again.").split(". ")


def sentences_from(path):
    text = open(path, encoding="utf-8").read().replace("\n", " ")
    out = [s.strip() for s in text.split(". ") if 20 <= len(s.strip()) <= 200]
    if not out:
        sys.exit("error: %s: no usable sentences" % path)
    return out


def make(rng, pool, min_words, max_words, digits, answer="sentence"):
    words_total = rng.randint(min_words, max_words)
    filler = []
    n = 0
    while n < words_total:
        s = rng.choice(pool).rstrip(".") + "."
        filler.append(s)
        n += len(s.split())
    key = str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
    depth = rng.random()
    cut = int(round(depth * len(filler)))
    needle = "The pass key is %s. Remember it. %s is the pass key." % (key, key)
    prompt = " ".join(filler[:cut] + [needle] + filler[cut:]) + " What is the pass key?"
    response = "The pass key is %s." % key if answer == "sentence" else " %s." % key
    return {"prompt": prompt, "response": response, "passkey": key,
            "depth": round(cut / max(1, len(filler)), 3)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output JSONL ('-' = stdout)")
    ap.add_argument("--n", type=int, default=1000, help="number of samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-words", type=int, default=40, help="filler words, at least")
    ap.add_argument("--max-words", type=int, default=120, help="filler words, at most")
    ap.add_argument("--digits", type=int, default=5, help="digits of the pass key")
    ap.add_argument("--filler", help="take filler sentences from this text file")
    ap.add_argument("--answer", choices=["sentence", "key"], default="sentence",
                    help="response: 'The pass key is K.' (sentence), or ' K.' for a template whose assistant "
                         "prefix already says 'The pass key is' (plain completion, e.g. recipes/smollm2/passkey_template.json)")
    a = ap.parse_args()
    if a.n < 1 or a.min_words < 0 or a.max_words < a.min_words or not 1 <= a.digits <= 18:
        ap.error("need --n >= 1, 0 <= --min-words <= --max-words, 1 <= --digits <= 18")
    rng = random.Random(a.seed)
    pool = sentences_from(a.filler) if a.filler else FILLER
    out = sys.stdout if a.out == "-" else open(a.out, "w", encoding="utf-8")
    for _ in range(a.n):
        out.write(json.dumps(make(rng, pool, a.min_words, a.max_words, a.digits, a.answer)) + "\n")
    if out is not sys.stdout:
        out.close()


if __name__ == "__main__":
    main()
