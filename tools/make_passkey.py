#!/usr/bin/env python3
"""Synthetic passkey-retrieval data (stdlib only): a number hidden at a random depth in filler
text, asked for at the end. The SFT form the tiny recipes train on, and a retrieval probe.

    python3 tools/make_passkey.py --out data/corpus/passkey/train.jsonl --n 2000 --seed 0
    python3 tools/make_passkey.py --out data/corpus/passkey/val.jsonl --n 200 --seed 1

Each line: {"prompt": "<filler> The pass key is 48213. Remember it. 48213 is the pass key.
<filler> What is the pass key?", "question": "What is the pass key?" (the prompt's ending, for
agate eval --question-after), "response": "The pass key is 48213.", "passkey": "48213",
"depth": 0.37}. Filler is the classic repetitive passkey filler, so only the key carries
information; --filler FILE uses sentences from a text file instead.

Retrieval-shaped training text for the gates (plain text, one document per blank-line block,
the fact in one of several phrasings, asked for and answered at the end, so the LM loss on the
answer rewards keeping the fact), with filler only from the paragraphs that `agate tokenize
--val-fraction 0.03` puts in the train split (held-out text stays unseen):

    python3 tools/make_passkey.py --format text --kinds passkey,kv,code --split train \
      --filler data/corpus/raw/austen.txt --n 3000 --min-words 150 --max-words 600 --out retrieval.txt

For other generators (tools/eval/press_eval.py's retrieval task) the facts come in several
phrasings, a pass key and a key-value pair (NEEDLES, needle()), and insert_at_depth() places
one between the sentences of any haystack text. The training phrasings (TRAIN_KINDS) and the
evaluation's (NEEDLES) are kept apart on purpose, so that the evaluation asks in phrasings
the gates were not trained on (only the classic pass-key sentence is in both).
"""
import argparse
import json
import random
import sys
import zlib

FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again.").split(". ")


# phrasing -> (needle, question, answer prefix); {v} is the value, {name} the key of a key-value pair.
NEEDLES = {
    "passkey": ("The pass key is {v}. Remember it. {v} is the pass key.",
                "What is the pass key (a number)?", "The pass key is the number"),
    "passkey-note": ("Important note: the pass key for the vault is {v}. Keep the number {v} in mind.",
                     "What is the pass key for the vault?", "The pass key for the vault is"),
    "kv-number": ("The secret number of {name} is {v}.",
                  "What is the secret number of {name}?", "The secret number of {name} is"),
    "kv-code": ("{name} has the locker code {v}. Write it down: {name}'s locker code is {v}.",
                "What is {name}'s locker code?", "{name}'s locker code is"),
}
NAMES = ["Oliver Brandt", "Mira Castell", "Tobias Wren", "Elena Marsh", "Jonah Pike", "Clara Voss",
         "Felix Harrow", "Nadia Quill", "Simon Ashby", "Lena Frost", "Victor Hale", "Ruth Calder"]


def needle(rng, phrasing, digits=5):
    """A fact in one of NEEDLES' phrasings with a fresh value (and name for key-value pairs):
    {"phrasing", "kind" (passkey or kv), "needle", "question", "answer_prefix", "value", "key"}."""
    text, question, prefix = NEEDLES[phrasing]
    value = str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
    name = rng.choice(NAMES) if "{name}" in text else ""
    fmt = lambda t: t.format(v=value, name=name)  # noqa: E731
    return {"phrasing": phrasing, "kind": "kv" if name else "passkey", "needle": fmt(text),
            "question": fmt(question), "answer_prefix": fmt(prefix), "value": value, "key": name}


def split_sentences(text):
    """Cut points of a text after each sentence end ('. ', '! ', '? ', a newline): a list of
    (start, end) spans that together cover the text."""
    spans, start = [], 0
    for i, ch in enumerate(text):
        if ch == "\n" or (ch in ".!?;" and i + 1 < len(text) and text[i + 1] in " \n"):
            spans.append((start, i + 1))
            start = i + 1
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def insert_at_depth(text, fact, depth):
    """The text with `fact` inserted at the sentence boundary nearest to depth x len(text)
    (depth in [0, 1]); returns (new text, the realised depth as a fraction of characters)."""
    cuts = [0] + [e for _, e in split_sentences(text)]
    at = min(cuts, key=lambda c: abs(c - depth * len(text)))
    before, after = text[:at].rstrip(" "), text[at:].lstrip(" ")
    sep_b = "" if not before or before.endswith("\n") else " "
    sep_a = "" if not after or after.startswith("\n") else " "
    return before + sep_b + fact + sep_a + after, round(at / max(1, len(text)), 3)


def is_val(paragraph, fraction):
    """agate tokenize's split: a plain-text document (a blank-line block, lines joined by \\n)
    is validation iff crc32(text) % 1e6 < fraction * 1e6 (src/data/tokenize.cpp)."""
    return zlib.crc32(paragraph.encode("utf-8")) % 1000000 < int(fraction * 1000000.0)


def paragraphs(path, split="all", val_fraction=0.03):
    """The documents of a plain-text file as agate tokenize reads them (blank-line blocks, lines
    joined by \\n), only those of one split unless split == "all"."""
    out, cur = [], []
    for line in open(path, encoding="utf-8").read().split("\n"):
        line = line.rstrip("\r")
        if line.strip(" \t"):
            cur.append(line)
        elif cur:
            out.append("\n".join(cur))
            cur = []
    if cur:
        out.append("\n".join(cur))
    if split != "all":
        out = [p for p in out if is_val(p, val_fraction) == (split == "val")]
    return out


def sentences_from(path, split="all", val_fraction=0.03):
    text = " ".join(p.replace("\n", " ") for p in paragraphs(path, split, val_fraction))
    out = [s.strip() for s in text.split(". ") if 20 <= len(s.strip()) <= 200]
    if not out:
        sys.exit("error: %s: no usable sentences" % path)
    return out


# Phrasings of the fact for --format text (training): (needle, question, answer prefix); {k} is the value,
# {n} a name. The answer is the prefix followed by " {k}.".
TRAIN_KINDS = {
    "passkey": [("The pass key is {k}. Remember it. {k} is the pass key.", "What is the pass key?", "The pass key is"),
                ("Remember this pass key: {k}.", "What was the pass key?", "The pass key was")],
    "kv": [("The value of the key '{n}' is {k}.", "What is the value of the key '{n}'?", "The value of the key '{n}' is"),
           ("Note: {n} = {k}.", "What does {n} equal?", "{n} equals")],
    "code": [("The secret code of {n} is {k}; keep it safe.", "What is the secret code of {n}?",
              "The secret code of {n} is"),
             ("{n}'s locker number is {k}.", "What is {n}'s locker number?", "{n}'s locker number is")],
}
TRAIN_NAMES = ["Alice", "Bertram", "Clara", "Dorian", "Elinor", "Frederick", "Gwen", "Horace", "Isolde", "Jasper",
         "amber-fox", "blue-owl", "cedar-7", "delta-9", "ember-3", "falcon", "granite", "harbor-2"]


def make_text(rng, pool, min_words, max_words, digits, kinds):
    """One plain-text document: filler with a fact at a random depth, then its question and answer."""
    words_total = rng.randint(min_words, max_words)
    filler, n = [], 0
    while n < words_total:
        s = rng.choice(pool).rstrip(".") + "."
        filler.append(s)
        n += len(s.split())
    needle, question, prefix = rng.choice(TRAIN_KINDS[rng.choice(kinds)])
    key = str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
    name = rng.choice(TRAIN_NAMES)
    cut = int(round(rng.random() * len(filler)))
    fill = lambda t: t.format(k=key, n=name)
    return " ".join(filler[:cut] + [fill(needle)] + filler[cut:]) + " " + fill(question) + " " + fill(prefix) + " " + key + "."


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
    return {"prompt": prompt, "question": "What is the pass key?", "response": response, "passkey": key,
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
    ap.add_argument("--format", choices=["jsonl", "text"], default="jsonl",
                    help="jsonl: prompt/response lines (SFT, eval); text: plain-text training documents "
                         "separated by blank lines")
    ap.add_argument("--kinds", default="passkey", help="text format: comma list of " + ",".join(TRAIN_KINDS))
    ap.add_argument("--split", choices=["all", "train", "val"], default="all",
                    help="take filler only from the paragraphs that agate tokenize --val-fraction puts in this split "
                         "(train: for training text; val: held-out haystacks for evaluation)")
    ap.add_argument("--val-fraction", type=float, default=0.03, help="the --val-fraction the corpus was tokenized with")
    a = ap.parse_args()
    kinds = a.kinds.split(",")
    if any(k not in TRAIN_KINDS for k in kinds):
        ap.error("--kinds: choose from " + ",".join(TRAIN_KINDS))
    if not 0 < a.val_fraction < 1:
        ap.error("--val-fraction must be in (0, 1)")
    if a.n < 1 or a.min_words < 0 or a.max_words < a.min_words or not 1 <= a.digits <= 18:
        ap.error("need --n >= 1, 0 <= --min-words <= --max-words, 1 <= --digits <= 18")
    rng = random.Random(a.seed)
    if a.split != "all" and not a.filler:
        ap.error("--split needs --filler FILE")
    pool = sentences_from(a.filler, a.split, a.val_fraction) if a.filler else FILLER
    out = sys.stdout if a.out == "-" else open(a.out, "w", encoding="utf-8")
    for _ in range(a.n):
        if a.format == "text":
            out.write(make_text(rng, pool, a.min_words, a.max_words, a.digits, kinds) + "\n\n")
        else:
            out.write(json.dumps(make(rng, pool, a.min_words, a.max_words, a.digits, a.answer)) + "\n")
    if out is not sys.stdout:
        out.close()


if __name__ == "__main__":
    main()
