#!/usr/bin/env python3
"""Extract Jane Austen's six novels from the R package janeaustenr (stdlib only).

Usage: extract_austen.py PKG_DIR OUT_FILE

PKG_DIR is the unpacked package directory (the one holding data/Rdata.rdx and
data/Rdata.rdb, e.g. .../usr/lib/R/site-library/janeaustenr).

The package stores each novel as an R character vector (one element per
hard-wrapped line of the Project Gutenberg text, "" between paragraphs) in an
R lazy-load database:
  * Rdata.rdx: gzip-compressed R serialization of
      list(variables = list(<name> = c(offset, length), ...), ...)
  * Rdata.rdb: at each offset, a block of [u32 big-endian uncompressed size]
      followed by a zlib stream holding an R serialization of the object.
Both use R's XDR ("X\\n") serialization format, which is decoded below for the
few SEXP types these files use.

Output: one document per chapter, documents separated by one blank line,
paragraphs unwrapped to one line each (so a document has no blank lines).
"""

import gzip
import os
import re
import struct
import sys
import zlib

# Order used by janeaustenr::austen_books() (publication order, roughly).
NOVELS = [
    ("sensesensibility", "Sense and Sensibility"),
    ("prideprejudice", "Pride and Prejudice"),
    ("mansfieldpark", "Mansfield Park"),
    ("emma", "Emma"),
    ("northangerabbey", "Northanger Abbey"),
    ("persuasion", "Persuasion"),
]

# SEXP type codes (R internals) needed here.
NILSXP, SYMSXP, LISTSXP, CHARSXP = 0, 1, 2, 9
LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 10, 13, 14, 16, 19
REFSXP, NILVALUE_SXP = 255, 254
NA_INT = -(2 ** 31)


class RUnserializer:
    """Minimal reader for R's XDR serialization format (versions 2 and 3)."""

    def __init__(self, data):
        self.d = data
        self.p = 0
        self.refs = []

    def _int(self):
        (v,) = struct.unpack_from(">i", self.d, self.p)
        self.p += 4
        return v

    def _bytes(self, n):
        b = self.d[self.p:self.p + n]
        self.p += n
        return b

    def read(self):
        if self._bytes(2) != b"X\n":
            raise ValueError("not an XDR R serialization")
        version = self._int()
        self._int()  # writer R version
        self._int()  # minimal reader R version
        if version == 3:
            self._bytes(self._int())  # native encoding name, e.g. "UTF-8"
        elif version != 2:
            raise ValueError("unsupported serialization version %d" % version)
        return self._item()

    def _length(self):
        n = self._int()
        if n == -1:  # long vector: two more ints
            hi, lo = self._int(), self._int()
            n = (hi << 32) + lo
        return n

    def _item(self):
        flags = self._int()
        typ = flags & 0xFF
        has_attr = bool(flags & (1 << 9))
        has_tag = bool(flags & (1 << 10))

        if typ == NILVALUE_SXP:
            return None
        if typ == REFSXP:
            idx = flags >> 8 or self._int()
            return self.refs[idx - 1]
        if typ == SYMSXP:
            name = self._item()  # a CHARSXP
            self.refs.append(name)
            return name
        if typ == CHARSXP:
            n = self._int()
            return None if n == -1 else self._bytes(n).decode("utf-8", "replace")
        if typ == LISTSXP:  # pairlist node: [attr] [tag] car cdr
            if has_attr:
                self._item()  # attributes of a pairlist node: not needed
            tag = self._item() if has_tag else None
            car = self._item()
            cdr = self._item()  # rest of the pairlist, or None
            return [(tag, car)] + (cdr or [])
        if typ in (LGLSXP, INTSXP):
            n = self._length()
            val = list(struct.unpack_from(">%di" % n, self.d, self.p))
            self.p += 4 * n
        elif typ == REALSXP:
            n = self._length()
            val = list(struct.unpack_from(">%dd" % n, self.d, self.p))
            self.p += 8 * n
        elif typ == STRSXP:
            val = [self._item() for _ in range(self._length())]
        elif typ == VECSXP:
            val = [self._item() for _ in range(self._length())]
        else:
            raise ValueError("unsupported SEXP type %d at byte %d" % (typ, self.p - 4))

        if has_attr:  # a pairlist of attributes; only "names" is used
            names = dict(self._item()).get("names")
            if names is not None and typ == VECSXP:
                val = dict(zip(names, val))  # named list -> dict
        return val


def load_lazy_db(base):
    """Return {name: object} for every variable in an R lazy-load DB."""
    index = RUnserializer(gzip.open(base + ".rdx").read()).read()
    with open(base + ".rdb", "rb") as f:
        blob = f.read()
    out = {}
    for name, (offset, length) in index["variables"].items():
        block = blob[offset:offset + length]
        (size,) = struct.unpack(">I", block[:4])
        raw = zlib.decompress(block[4:])
        if len(raw) != size:
            raise ValueError("%s: size mismatch %d != %d" % (name, len(raw), size))
        out[name] = RUnserializer(raw).read()
    return out


CHAPTER_RE = re.compile(r"^(CHAPTER|Chapter)\s+[0-9IVXLC]+\.?$")
VOLUME_RE = re.compile(r"^VOLUME\s+[IVX]+$", re.IGNORECASE)
# A modern editor's note appended to Northanger Abbey: not Austen's, dropped.
EDITORIAL_RE = re.compile(r"^A NOTE ON THE TEXT$")


def paragraphs(lines):
    """Join hard-wrapped lines into paragraphs ("" separates paragraphs).

    Runs of spaces (e.g. two after a full stop) collapse to one space.
    """
    para = []
    for line in lines:
        line = (line or "").strip()
        if line:
            para.append(line)
        elif para:
            yield " ".join(" ".join(para).split())
            para = []
    if para:
        yield " ".join(" ".join(para).split())


def chapters(lines):
    """Split one novel into chapter documents (lists of paragraphs).

    Front matter (title, author) and volume headings are attached to the
    chapter that follows them, so no document is a bare heading.
    """
    docs, cur, pending = [], None, []
    for para in paragraphs(lines):
        if EDITORIAL_RE.match(para):
            break
        if CHAPTER_RE.match(para):
            if cur:
                docs.append(cur)
            cur, pending = pending + [para], []
        elif VOLUME_RE.match(para) or cur is None:
            pending.append(para)
        else:
            cur.append(para)
    if cur:
        docs.append(cur)
    if pending:  # trailing text after the last chapter ("THE END", ...)
        if docs:
            docs[-1].extend(pending)
        else:
            docs.append(pending)
    return docs


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    pkg_dir, out_path = sys.argv[1], sys.argv[2]
    objs = load_lazy_db(os.path.join(pkg_dir, "data", "Rdata"))

    n_lines = n_docs = 0
    with open(out_path, "w", encoding="utf-8") as out:
        first = True
        for name, title in NOVELS:
            lines = objs[name]
            n_lines += len(lines)
            docs = chapters(lines)
            for doc in docs:
                if not first:
                    out.write("\n")
                out.write("\n".join(doc) + "\n")
                first = False
            n_docs += len(docs)
            print("[corpus]   %-22s %6d lines -> %3d chapters"
                  % (title, len(lines), len(docs)), file=sys.stderr)
    print("[corpus]   austen: %d source lines, %d documents" % (n_lines, n_docs),
          file=sys.stderr)


if __name__ == "__main__":
    main()
