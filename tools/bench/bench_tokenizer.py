#!/usr/bin/env python3
"""Tokenizer throughput on ONE core: agate's tokenizer.json backend vs Hugging Face tokenizers.

  tools/bench/bench_tokenizer.py [--agate build/agate] [--tokenizer FILE] [--text FILE] [--rounds 5] [--cpu 0]

Both are pinned to the same core (sched_setaffinity; tokenizers with RAYON_NUM_THREADS=1,
TOKENIZERS_PARALLELISM=false). Each round runs, one after the other on the same text:
  agate      `agate tokenizer encode --file TEXT --stats` (a process of its own; it reports its
             load and encode seconds separately, so process start-up is not counted)
  hf encode  Tokenizer.encode(text, add_special_tokens=False) on the whole text (as agate does)
  hf batch   Tokenizer.encode_batch(lines) on the text's lines (tokenizers' fast path; on one
             thread it saves offsets bookkeeping, not parallelism)
Rounds alternate agate and tokenizers so machine noise hits both alike; the table shows medians.
--check also verifies once that agate's ids equal tokenizers' for the whole text.
Defaults: SmolLM2's tokenizer.json and Shakespeare (data/fetch_corpus.sh).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agate", default=os.path.join(ROOT, "build", "agate"))
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "models", "smollm2-135m-instruct", "tokenizer.json"))
    ap.add_argument("--text", default=os.path.join(ROOT, "data", "corpus", "raw", "shakespeare.txt"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cpu", type=int, default=0, help="the core to pin both to")
    ap.add_argument("--check", action="store_true", help="also compare the ids once")
    a = ap.parse_args()
    for path, what in [(a.agate, "build agate"), (a.tokenizer, "scripts/get_model.sh smollm2"), (a.text, "data/fetch_corpus.sh")]:
        if not os.path.exists(path):
            sys.exit(f"error: {path} does not exist (hint: {what})")

    os.environ["RAYON_NUM_THREADS"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.sched_setaffinity(0, {a.cpu})  # this process and the agate children it starts
    from tokenizers import Tokenizer  # after RAYON_NUM_THREADS is set
    import tokenizers

    with open(a.text, encoding="utf-8", newline="") as f:  # the bytes agate reads: no newline translation
        text = f.read()
    mb = len(text.encode("utf-8")) / 1e6
    lines = text.split("\n")

    if a.check:
        r = subprocess.run([a.agate, "tokenizer", "encode", "--tokenizer", a.tokenizer, "--file", a.text],
                           capture_output=True, check=True)
        got = json.loads(r.stdout)
        want = Tokenizer.from_file(a.tokenizer).encode(text, add_special_tokens=False).ids
        print(f"check: {len(want)} tokens, ids {'identical' if got == want else 'DIFFERENT'}")
        if got != want:
            return 1

    rows = {k: [] for k in ["agate_load", "agate_encode", "hf_load", "hf_encode", "hf_batch"]}
    tokens = None
    for _ in range(a.rounds):
        r = subprocess.run([a.agate, "tokenizer", "encode", "--tokenizer", a.tokenizer, "--file", a.text, "--stats"],
                           capture_output=True, check=True, text=True)
        s = json.loads(r.stdout)
        rows["agate_load"].append(s["load_s"])
        rows["agate_encode"].append(s["encode_s"])
        tokens = s["tokens"]
        t0 = time.perf_counter()
        hf = Tokenizer.from_file(a.tokenizer)
        t1 = time.perf_counter()
        hf.encode(text, add_special_tokens=False)
        t2 = time.perf_counter()
        hf.encode_batch(lines, add_special_tokens=False)
        t3 = time.perf_counter()
        rows["hf_load"].append(t1 - t0)
        rows["hf_encode"].append(t2 - t1)
        rows["hf_batch"].append(t3 - t2)
    med = {k: statistics.median(v) for k, v in rows.items()}

    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    print(f"machine: {os.cpu_count()} cores ({cpu}), pinned to core {a.cpu}; tokenizers {tokenizers.__version__}")
    print(f"text: {os.path.relpath(a.text, ROOT)} ({mb:.2f} MB, {tokens} tokens); "
          f"tokenizer: {os.path.relpath(a.tokenizer, ROOT)}; medians of {a.rounds} interleaved rounds")
    print()
    print("| one core | load | encode | MB/s |")
    print("|---|---|---|---|")
    print(f"| agate `tokenizer encode --file` | {med['agate_load'] * 1e3:.0f} ms | {med['agate_encode']:.3f} s | {mb / med['agate_encode']:.1f} |")
    print(f"| tokenizers `encode(text)` | {med['hf_load'] * 1e3:.0f} ms | {med['hf_encode']:.3f} s | {mb / med['hf_encode']:.1f} |")
    print(f"| tokenizers `encode_batch(lines)` | | {med['hf_batch']:.3f} s | {mb / med['hf_batch']:.1f} |")
    print()
    print(f"agate / tokenizers: {med['hf_encode'] / med['agate_encode']:.1f}x encode(text), "
          f"{med['hf_batch'] / med['agate_encode']:.1f}x encode_batch(lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
