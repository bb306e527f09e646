#!/usr/bin/env python3
"""Write an agate token dataset (shards + manifest.json) from JSONL token ids.

A stdlib-only reference writer for the format in docs/formats.md, section 2. Use it when
your tokenizer is not one agate runs itself (for example a Hugging Face `tokenizer.json` for
Llama 3 or Qwen2): tokenize with your own tool, emit one JSON object per document, and pipe
the ids through this script. The result is read by `agate data check`, `agate data show` and
the trainer exactly like a dataset written by `agate tokenize`.

Input, one document per line (blank lines are ignored):

    {"tokens": [128000, 791, 4062, 13, 128001]}                  --kind cpt
    {"tokens": [128000, 791, 4062, 13, 128001], "mask": [0, 0, 1, 1, 1]}   --kind sft

Ids are written exactly as given: add BOS/EOS yourself (agate's own writer ends every
document with EOS and, for SFT, puts mask 1 on the reply and the EOS after it). A mask value
of 1 marks a token that is a loss target. Other keys on a line are ignored; a "mask" on a cpt
line is refused. Empty documents cannot be represented (document offsets strictly increase)
and are skipped with a count.

Usage:

    my_tokenize.py corpus.txt | python3 tools/write_shards.py --out data/train \\
        --kind cpt --vocab-size 128256 --eos-id 128001 --bos-id 128000 \\
        --tokenizer-file tokenizer.json

    python3 tools/write_shards.py chat.jsonl --out data/sft --kind sft \\
        --vocab-size 151936 --eos-id 151645 --bos-id -1 --tokenizer-hash 0x1a2b3c4d

Inputs are files or "-" (stdin, the default). The output folder gets shard_00000.bin,
shard_00001.bin, ... each holding at most --shard-tokens tokens (documents never straddle
shards; a single document longer than that gets a shard of its own), and manifest.json
written last, through a temporary file and a rename, so a dataset without a manifest is an
unfinished one. An existing dataset in --out is refused unless --force; with --force its
manifest is removed first and leftover shards of the old dataset are deleted.

Exit status: 0 on success, 2 for bad arguments or input (a malformed line is reported as
FILE:LINE), 1 for I/O failures. On failure the shards written by this run are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import zlib
from array import array

# --- format constants (docs/formats.md 2.1) ------------------------------------------------
MAGIC = b"AGATETOK"
VERSION = 1
FLAG_MASK = 1 << 0  # bit 0: a u8 loss mask follows the tokens
FLAG_DOCS = 1 << 1  # bit 1: u64 document offsets follow (padded to a multiple of 8)
HEADER_SIZE = 256
# magic, version, flags, num_tokens, num_docs, vocab_size, eos_id, bos_id, payload_crc32,
# tokenizer_hash, 200 reserved zero bytes. '<' = little-endian, no alignment padding.
HEADER = struct.Struct("<8sIIQQIiiIQ200x")
assert HEADER.size == HEADER_SIZE

MANIFEST = "manifest.json"
DEFAULT_SHARD_TOKENS = 16777216  # the same default as `agate tokenize --shard-tokens`


class InputError(Exception):
    """Bad arguments or input data: reported as one line, exit status 2."""


def hex32(value: int) -> str:
    """A 32-bit value as agate writes it in JSON: "0x" + 8 lowercase hex digits."""
    return "0x%08x" % value


def shard_name(index: int) -> str:
    return "shard_%05d.bin" % index


def write_atomic(path: str, chunks) -> int:
    """Writes the byte chunks to `path` through a temporary file and a rename; returns the size."""
    tmp = "%s.tmp.%d" % (path, os.getpid())
    size = 0
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    return size


class DatasetWriter:
    """Collects documents into shards, writes each full shard, then the manifest."""

    def __init__(self, out: str, kind: str, split: str, vocab_size: int, eos_id: int, bos_id: int,
                 tokenizer_hash: int, shard_tokens: int):
        self.out = out
        self.kind = kind
        self.split = split
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.bos_id = bos_id
        self.tokenizer_hash = tokenizer_hash
        self.shard_tokens = shard_tokens
        self.shards = []  # manifest entries
        self.written = []  # paths of the shards this run wrote
        self.num_tokens = 0
        self.num_documents = 0
        self.num_loss_tokens = 0
        self._reset()

    def _reset(self):
        self.tokens = array("I")
        self.mask = bytearray()
        self.offsets = [0]

    def add(self, tokens: list, mask) -> None:
        """Appends one validated, non-empty document (mask is None for cpt)."""
        n = len(tokens)
        if len(self.tokens) > 0 and len(self.tokens) + n > self.shard_tokens:
            self.flush()
        self.tokens.extend(tokens)
        if mask is not None:
            self.mask.extend(mask)
            self.num_loss_tokens += sum(mask)
        else:
            self.num_loss_tokens += n
        self.offsets.append(len(self.tokens))
        self.num_tokens += n
        self.num_documents += 1
        if len(self.tokens) >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        """Writes the pending documents as the next shard (nothing if there are none)."""
        n = len(self.tokens)
        if n == 0:
            return
        d = len(self.offsets) - 1
        flags = FLAG_DOCS | (FLAG_MASK if self.kind == "sft" else 0)

        tokens = self.tokens
        if sys.byteorder != "little":
            tokens = array("I", tokens)
            tokens.byteswap()
        payload = [tokens.tobytes()]
        size = 4 * n
        if flags & FLAG_MASK:
            payload.append(bytes(self.mask))
            size += n
        payload.append(b"\0" * ((-(HEADER_SIZE + size)) % 8))  # pad the file to a multiple of 8
        payload.append(struct.pack("<%dQ" % (d + 1), *self.offsets))

        crc = 0
        for chunk in payload:
            crc = zlib.crc32(chunk, crc)
        header = HEADER.pack(MAGIC, VERSION, flags, n, d, self.vocab_size, self.eos_id, self.bos_id,
                             crc, self.tokenizer_hash)

        name = shard_name(len(self.shards))
        path = os.path.join(self.out, name)
        self.written.append(path)
        size = write_atomic(path, [header] + payload)
        self.shards.append({"file": name, "num_tokens": n, "num_documents": d,
                            "checksum": hex32(crc), "bytes": size})
        self._reset()

    def finish(self) -> None:
        """Writes the last shard, removes stale shards of an older dataset, writes the manifest."""
        self.flush()
        if not self.shards:
            raise InputError("no documents in the input: an empty dataset cannot be written")
        index = len(self.shards)
        while os.path.exists(os.path.join(self.out, shard_name(index))):
            os.remove(os.path.join(self.out, shard_name(index)))
            index += 1
        manifest = {
            "format": "agate-tokens", "version": 1,
            "kind": self.kind, "split": self.split,
            "vocab_size": self.vocab_size, "eos_id": self.eos_id, "bos_id": self.bos_id,
            "tokenizer_hash": hex32(self.tokenizer_hash),
            "num_tokens": self.num_tokens, "num_documents": self.num_documents,
            "num_loss_tokens": self.num_loss_tokens,
            "shards": self.shards,
        }
        text = json.dumps(manifest, indent=2) + "\n"
        write_atomic(os.path.join(self.out, MANIFEST), [text.encode("utf-8")])

    def discard(self) -> None:
        """Removes the shards this run wrote (after a failure)."""
        for path in self.written:
            try:
                os.remove(path)
            except OSError:
                pass


def parse_document(line: str, where: str, kind: str, vocab_size: int):
    """Parses and validates one JSONL line; returns (tokens, mask or None)."""
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise InputError("%s: malformed JSON: %s" % (where, e)) from None
    if not isinstance(obj, dict):
        raise InputError("%s: line is not a JSON object" % where)
    if "tokens" not in obj:
        raise InputError('%s: missing key "tokens"' % where)
    tokens = obj["tokens"]
    if not isinstance(tokens, list):
        raise InputError('%s: "tokens" must be a list of token ids' % where)
    for i, t in enumerate(tokens):
        if type(t) is not int or t < 0 or t >= vocab_size:  # `type is int` refuses true/false and 1.0
            raise InputError("%s: token %d is %s, not an id in [0, %d) (--vocab-size)"
                             % (where, i, json.dumps(t), vocab_size))
    mask = obj.get("mask")
    if kind == "cpt":
        if mask is not None:
            raise InputError('%s: "mask" given but --kind is cpt (every cpt token is a loss target; '
                             'use --kind sft for masked data)' % where)
        return tokens, None
    if mask is None:
        raise InputError('%s: missing key "mask" (--kind sft needs a 0/1 value per token)' % where)
    if not isinstance(mask, list):
        raise InputError('%s: "mask" must be a list of 0/1 values' % where)
    if len(mask) != len(tokens):
        raise InputError('%s: "mask" has %d values but "tokens" has %d' % (where, len(mask), len(tokens)))
    for i, m in enumerate(mask):
        if type(m) is not int or m not in (0, 1):
            raise InputError("%s: mask value %d is %s, must be 0 or 1" % (where, i, json.dumps(m)))
    return tokens, mask


def read_documents(paths, kind: str, vocab_size: int):
    """Yields (tokens, mask) for every non-blank line of the inputs, in order."""
    for path in paths:
        name = "<stdin>" if path == "-" else path
        f = sys.stdin.buffer if path == "-" else open(path, "rb")
        try:
            for lineno, raw in enumerate(f, 1):
                where = "%s:%d" % (name, lineno)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputError("%s: not UTF-8 (%s)" % (where, e)) from None
                if not line.strip():
                    continue
                yield parse_document(line, where, kind, vocab_size)
        finally:
            if f is not sys.stdin.buffer:
                f.close()


def parse_int(text: str, what: str) -> int:
    """An integer in decimal or with a 0x prefix."""
    try:
        return int(text, 0)
    except ValueError:
        raise InputError("%s expects an integer, got '%s'" % (what, text)) from None


def tokenizer_fingerprint(args) -> int:
    if args.tokenizer_file is not None:
        if not os.path.isfile(args.tokenizer_file):
            raise InputError("%s: no such tokenizer file" % args.tokenizer_file)
        with open(args.tokenizer_file, "rb") as f:
            crc = 0
            for chunk in iter(lambda: f.read(1 << 20), b""):
                crc = zlib.crc32(chunk, crc)
        return crc
    text = args.tokenizer_hash
    try:
        value = int(text, 16)
    except ValueError:
        raise InputError("--tokenizer-hash expects hex like 0x1a2b3c4d, got '%s'" % text) from None
    if not 0 <= value < 1 << 32:
        # The header field is u64, but manifest.json holds it as 8 hex digits and agate
        # compares the two, so only 32-bit values round-trip.
        raise InputError("--tokenizer-hash %s does not fit in 32 bits (manifest.json stores 8 hex digits)" % text)
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="write_shards.py",
        description="Write an agate token dataset (docs/formats.md section 2) from JSONL token ids: "
                    '{"tokens": [...]} per line (cpt) or {"tokens": [...], "mask": [0/1 ...]} (sft).',
        epilog="Example: my_tokenizer corpus.txt | python3 tools/write_shards.py --out data/train "
               "--kind cpt --vocab-size 128256 --eos-id 128001 --bos-id 128000 --tokenizer-file tokenizer.json")
    p.add_argument("inputs", nargs="*", default=["-"], metavar="INPUT",
                   help="JSONL files, one document per line; '-' or nothing reads stdin")
    p.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    p.add_argument("--kind", required=True, choices=["cpt", "sft"],
                   help="cpt: every token is a loss target; sft: a per-token 0/1 mask is required")
    p.add_argument("--vocab-size", required=True, metavar="N", help="every token id must be < N")
    p.add_argument("--eos-id", required=True, metavar="E", help="EOS id, -1 if none (SFT pads with it)")
    p.add_argument("--bos-id", required=True, metavar="B", help="BOS id, -1 if none")
    fp = p.add_mutually_exclusive_group(required=True)
    fp.add_argument("--tokenizer-hash", metavar="0xHEX",
                    help="the tokenizer's 32-bit fingerprint (agate uses the CRC-32 of the tokenizer file)")
    fp.add_argument("--tokenizer-file", metavar="FILE",
                    help="compute the fingerprint as the CRC-32 of FILE (e.g. tokenizer.json)")
    p.add_argument("--split", default="train", help="split name recorded in the manifest (default: train)")
    p.add_argument("--shard-tokens", default=str(DEFAULT_SHARD_TOKENS), metavar="N",
                   help="at most N tokens per shard (default: %d)" % DEFAULT_SHARD_TOKENS)
    p.add_argument("--force", action="store_true", help="overwrite a dataset already in --out")
    return p


def run(args) -> None:
    vocab_size = parse_int(args.vocab_size, "--vocab-size")
    eos_id = parse_int(args.eos_id, "--eos-id")
    bos_id = parse_int(args.bos_id, "--bos-id")
    shard_tokens = parse_int(args.shard_tokens, "--shard-tokens")
    if not 0 < vocab_size < 1 << 32:
        raise InputError("--vocab-size must be in [1, 2^32)")
    for name, value in (("--eos-id", eos_id), ("--bos-id", bos_id)):
        if not -1 <= value < vocab_size:
            raise InputError("%s %d must be -1 (none) or an id < --vocab-size %d" % (name, value, vocab_size))
    if shard_tokens < 1:
        raise InputError("--shard-tokens must be positive")
    tokenizer_hash = tokenizer_fingerprint(args)
    for path in args.inputs:
        if path != "-" and not os.path.isfile(path):
            raise InputError("%s: no such input file" % path)

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise InputError("%s: exists and is not a folder" % args.out)
    manifest = os.path.join(args.out, MANIFEST)
    if os.path.exists(manifest):
        if not args.force:
            raise InputError("'%s' already holds a dataset (hint: pass --force to overwrite it)" % args.out)
        os.remove(manifest)  # a stale manifest must never describe shards being rewritten
    os.makedirs(args.out, exist_ok=True)

    writer = DatasetWriter(args.out, args.kind, args.split, vocab_size, eos_id, bos_id, tokenizer_hash,
                           shard_tokens)
    empty = 0
    try:
        for tokens, mask in read_documents(args.inputs, args.kind, vocab_size):
            if not tokens:
                empty += 1
                continue
            writer.add(tokens, mask)
        writer.finish()
    except BaseException:
        writer.discard()
        raise
    print("wrote %s (%s, split %s): %d documents, %d tokens (%d loss tokens), %d shards%s"
          % (args.out, args.kind, args.split, writer.num_documents, writer.num_tokens,
             writer.num_loss_tokens, len(writer.shards),
             ", skipped %d empty documents" % empty if empty else ""))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)  # exits 2 on usage errors
    try:
        run(args)
    except InputError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    except OSError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
