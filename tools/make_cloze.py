#!/usr/bin/env python3
"""A multiple-choice cloze task from plain text (stdlib only), in the JSONL form `agate eval
--task choice` reads: which sentence comes next after a passage?

    python3 tools/make_cloze.py --text data/corpus/raw/austen.txt --out data/corpus/cloze.jsonl --n 300

Held-out questions for gates trained on a corpus (every passage, answer and distractor from the
documents that `agate tokenize --val-fraction 0.03` puts in the val split; several files):

    python3 tools/make_cloze.py --text data/corpus/raw/austen.txt,data/corpus/raw/kjv.txt --split val \
      --words 300 --out cloze-val.jsonl --n 64

Each line: {"context": "<consecutive sentences, about --words words>", "choices": [" <the real
next sentence>", " <a sentence from another document>", ...], "answer": i}. Distractors have
about the same length as the answer; the answer's position is random (seeded). The context
must be read to pick the answer, so compressing its KV cache can cost accuracy. Documents are
agate tokenize's (blank-line blocks; tools/make_passkey.py's paragraphs()).
"""
import argparse
import json
import random
import re
import sys

from make_passkey import paragraphs


def documents(paths, split, val_fraction):
    for path in paths:
        for doc in paragraphs(path, split, val_fraction):
            sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", doc.replace("\n", " ")) if s.strip()]
            if len(sents) >= 8:
                yield sents


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", required=True, help="plain text, documents separated by blank lines (a comma list: several files)")
    ap.add_argument("--out", required=True, help="output JSONL ('-' = stdout)")
    ap.add_argument("--n", type=int, default=300, help="number of questions")
    ap.add_argument("--choices", type=int, default=4, help="choices per question (>= 2)")
    ap.add_argument("--words", type=int, default=60, help="context length in words, at least")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", choices=["all", "train", "val"], default="all",
                    help="only the documents that agate tokenize --val-fraction puts in this split")
    ap.add_argument("--val-fraction", type=float, default=0.03, help="as agate tokenize's (default 0.03)")
    a = ap.parse_args()
    if a.n < 1 or a.choices < 2 or a.words < 1:
        ap.error("need --n >= 1, --choices >= 2, --words >= 1")
    rng = random.Random(a.seed)
    docs = list(documents(a.text.split(","), a.split, a.val_fraction))
    if len(docs) < 2:
        sys.exit("error: %s: fewer than two documents of 8+ sentences%s (hint: more text, or another --split)"
                 % (a.text, "" if a.split == "all" else " in the %s split" % a.split))
    pool = [(d, s) for d, doc in enumerate(docs) for s in doc if 5 <= len(s.split()) <= 40]
    out = sys.stdout if a.out == "-" else open(a.out, "w", encoding="utf-8")
    made = 0
    while made < a.n:
        d = rng.randrange(len(docs))
        doc = docs[d]
        start = rng.randrange(len(doc) - 1)
        ctx, i = [], start
        while i < len(doc) - 1 and sum(len(s.split()) for s in ctx) < a.words:
            ctx.append(doc[i])
            i += 1
        answer = doc[i]
        if sum(len(s.split()) for s in ctx) < a.words or not 5 <= len(answer.split()) <= 40:
            continue
        n = len(answer.split())
        near = [s for (e, s) in pool if e != d and abs(len(s.split()) - n) <= 3]
        if len(near) < a.choices - 1:
            continue
        choices = [" " + answer] + [" " + s for s in rng.sample(near, a.choices - 1)]
        order = list(range(a.choices))
        rng.shuffle(order)
        out.write(json.dumps({"context": " ".join(ctx), "choices": [choices[k] for k in order],
                              "answer": order.index(0)}) + "\n")
        made += 1


if __name__ == "__main__":
    main()
