#!/usr/bin/env python3
"""Python peer of agate's forward benchmark: time full-sequence forwards of the reference.

    .venv/bin/python tools/bench_forward.py --model DIR [--seq 256] [--batch 1] [--threads N]
        [--dtype float32|bfloat16] [--iters K] [--seed S]
  -> one JSON line:
    {"impl": "python-ref", "dtype": ..., "threads": ..., "seq": ..., "batch": ..., "iters": ...,
     "tokens_per_s_median": ..., "median_s": ..., "times": [seconds per forward, ...]}

    .venv/bin/python tools/bench_forward.py --model DIR --load-only [--dtype ...] [--iters K]
  -> {"impl": "python-ref", "mode": "load-only", "bytes": ..., "read_s": ..., "load_s": ...,
      "read_GBps": ..., "load_GBps": ..., ...}
     read_s: median time to read the checkpoint files' bytes into memory (page cache warmed by an
             untimed read first); load_s: median time of the reference's full load (read + header
             parse + dtype conversion + model construction), from the same warm cache.

The model is the one from tools/llama_reference.py: weights converted to the compute dtype once
at load, inv_freq cached, and, like HF eager, cos/sin and the attention mask recomputed in every
forward. Forwards run under torch.inference_mode() on random token ids (fixed seed). One untimed
warm-up forward precedes the K timed ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import List, Optional

import torch

sys.dont_write_bytecode = True  # keep tools/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as ref  # noqa: E402


def bench_forward(args: argparse.Namespace) -> dict:
    dtype = ref.DTYPES[args.dtype]
    model = ref.load_model(args.model, dtype)
    g = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, model.cfg.vocab_size, (args.batch, args.seq), generator=g)  # [B, T]

    model.forward(tokens)  # warm-up (allocator, kernel selection, thread pool)
    times: List[float] = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        model.forward(tokens)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {
        "impl": "python-ref",
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "seq": args.seq,
        "batch": args.batch,
        "iters": args.iters,
        "tokens_per_s_median": args.batch * args.seq / med,
        "median_s": med,
        "times": times,
    }


def bench_load(args: argparse.Namespace) -> dict:
    dtype = ref.DTYPES[args.dtype]
    files = ref.checkpoint_files(args.model)
    nbytes = sum(os.path.getsize(f) for f in files)

    def read_all() -> None:
        for f in files:
            ref.read_file_bytes(f)

    read_all()  # warm the page cache so both measurements see the same (cached) files
    read_times, load_times = [], []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        read_all()
        read_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        model = ref.load_model(args.model, dtype)
        load_times.append(time.perf_counter() - t0)
        del model
    read_s, load_s = statistics.median(read_times), statistics.median(load_times)
    return {
        "impl": "python-ref",
        "mode": "load-only",
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "files": len(files),
        "bytes": nbytes,
        "iters": args.iters,
        "read_s": read_s,
        "load_s": load_s,
        "read_GBps": nbytes / read_s / 1e9,
        "load_GBps": nbytes / load_s / 1e9,
        "read_times": read_times,
        "load_times": load_times,
    }


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Forward / load benchmark of the Python reference.")
    ap.add_argument("--model", required=True, help="HF-layout model directory")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch default)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="seed of the random token ids")
    ap.add_argument("--load-only", action="store_true",
                    help="time loading the weights vs reading the files' bytes, then exit")
    args = ap.parse_args(argv)
    if args.iters < 1 or args.seq < 1 or args.batch < 1:
        ap.error("--iters, --seq and --batch must be >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    result = bench_load(args) if args.load_only else bench_forward(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
