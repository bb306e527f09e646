"""Held-out natural text for the evaluation: the documents of an agate token dataset's `val` split.

`agate tokenize --val-fraction F` puts a document (a blank-line separated paragraph block of the
raw text) into val iff CRC-32(document) mod 10^6 < F x 10^6 (src/data/tokenize.cpp), so val
documents never reach the gate trainer, which reads `train`. Reading the val shards themselves
(rather than re-deriving the split from data/corpus/raw/*.txt) needs no knowledge of the F that
was used (data/corpus/smollm2 was written with 0.01: 19 documents, 27,575 tokens) and is exact
by construction. Shard layout: docs/formats.md section 2 (stdlib + numpy only here).
"""

from __future__ import annotations

import json
import os
import struct
from typing import List

import numpy as np

HEADER = 256
HAS_MASK, HAS_DOCS = 1, 2


def read_shard(path: str) -> List[np.ndarray]:
    """The documents of one agate token shard, as uint32 arrays (the whole shard as one
    document when it has no document offsets)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:8] != b"AGATETOK":
        raise ValueError(f"{path}: not an agate token shard (bad magic)")
    flags, = struct.unpack_from("<I", raw, 12)
    n, d = struct.unpack_from("<QQ", raw, 16)
    tokens = np.frombuffer(raw, dtype="<u4", count=n, offset=HEADER)
    if not flags & HAS_DOCS:
        return [tokens]
    at = HEADER + 4 * n + (n if flags & HAS_MASK else 0)
    at = (at + 7) // 8 * 8
    off = np.frombuffer(raw, dtype="<u8", count=d + 1, offset=at)
    return [tokens[int(off[i]):int(off[i + 1])] for i in range(d)]


def read_documents(dataset_dir: str) -> List[np.ndarray]:
    """Every document of an agate token dataset folder (manifest.json + shards), in order."""
    with open(os.path.join(dataset_dir, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    docs: List[np.ndarray] = []
    for shard in manifest["shards"]:
        docs.extend(read_shard(os.path.join(dataset_dir, shard["file"])))
    return docs


def strip_special(doc: np.ndarray, special_ids) -> List[int]:
    """Token ids of a document without the BOS/EOS ids agate's writer adds at its ends."""
    ids = doc.tolist()
    while ids and ids[0] in special_ids:
        ids.pop(0)
    while ids and ids[-1] in special_ids:
        ids.pop()
    return ids


class HeldOut:
    """The held-out documents as token ids (in the model tokenizer's vocabulary) and text."""

    def __init__(self, dataset_dir: str, tokenizer):
        self.dataset_dir = dataset_dir
        special = {t for t in (tokenizer.bos_token_id, tokenizer.eos_token_id) if t is not None}
        with open(os.path.join(dataset_dir, "manifest.json"), encoding="utf-8") as f:
            m = json.load(f)
        special |= {t for t in (m.get("bos_id"), m.get("eos_id")) if isinstance(t, int) and t >= 0}
        self.docs = [d for d in (strip_special(doc, special) for doc in read_documents(dataset_dir)) if d]
        self.tokenizer = tokenizer

    @property
    def num_tokens(self) -> int:
        return sum(len(d) for d in self.docs)

    def stream(self) -> List[int]:
        """Every held-out document's ids, in order, joined by the ids of a blank line ("\n\n",
        the separator of documents in the raw text)."""
        sep = self.tokenizer.encode("\n\n", add_special_tokens=False)
        out: List[int] = []
        for i, d in enumerate(self.docs):
            out.extend((sep if i else []) + d)
        return out

    def windows(self, length: int, count: int) -> List[dict]:
        """Up to `count` non-overlapping windows of `length` ids of the stream, evenly spaced
        over it (fewer when the stream is too short). Returns dicts {doc, start, ids}: doc is the
        document the window starts in, start its offset in the stream."""
        ids = self.stream()
        gap = len(self.tokenizer.encode("\n\n", add_special_tokens=False))
        n = min(count, len(ids) // length)
        if n <= 0:
            return []
        stride = (len(ids) - length) // (n - 1) if n > 1 else 0
        bounds, at = [], 0
        for d in self.docs:
            bounds.append(at)
            at += len(d) + gap
        out = []
        for j in range(n):
            s = j * stride
            doc = max(i for i, b in enumerate(bounds) if b <= s)
            out.append({"doc": doc, "start": s, "ids": ids[s:s + length]})
        return out

