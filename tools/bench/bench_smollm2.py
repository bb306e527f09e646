#!/usr/bin/env python3
"""SmolLM2-135M prefill and decode tokens/s: agate against transformers, same threads, same prompt.

    .venv/bin/python tools/bench/bench_smollm2.py [--agate build/agate] [--threads 2] [--rounds 3]
                                                  [--lengths 512,1024] [--new 32] [--dtype float32]

Rounds are interleaved (agate, transformers, agate, ...) and the medians reported. agate's
numbers are the ones `agate generate` prints (prefill of the prompt, then greedy decode over its
ragged KV cache, full-cache policy); transformers' are `model(prompt, logits_to_keep=1)` timed
for the prefill (the prefill `generate` runs: the last position's logits only, as agate's) and
`model.generate(max_new_tokens=N)` minus that prefill for the decode (DynamicCache, greedy,
eager and SDPA attention both measured). Decode tokens/s on both sides count the N - 1 forwards
after the prefill (the first new token comes from the prefill's logits).
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agate", default="build/agate")
    ap.add_argument("--model", default="models/smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lengths", default="512,1024")
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    a = ap.parse_args()
    import torch
    import transformers
    torch.set_num_threads(a.threads)
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    models = {impl: transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=dt, attn_implementation=impl).eval()
              for impl in ("eager", "sdpa")}
    g = torch.Generator().manual_seed(0)
    rows = []
    for T in map(int, a.lengths.split(",")):
        prompt = torch.randint(100, 49000, (1, T), generator=g)
        res = {k: ([], []) for k in ("agate", "eager", "sdpa")}
        for _ in range(a.rounds):
            out = subprocess.run([a.agate, "generate", "--model", a.model, "--tokens", ",".join(map(str, prompt[0].tolist())),
                                  "--max-new", str(a.new), "--threads", str(a.threads), "--dtype", a.dtype],
                                 capture_output=True, text=True, check=True).stdout
            m = re.search(r"prefill ([\d.]+) tok/s \| (\d+) new tokens, decode ([\d.]+) tok/s", out)
            res["agate"][0].append(float(m.group(1)))
            res["agate"][1].append(float(m.group(3)))
            for impl, model in models.items():
                with torch.no_grad():
                    t0 = time.perf_counter()
                    model(prompt, logits_to_keep=1)
                    pre = time.perf_counter() - t0
                    t0 = time.perf_counter()
                    model.generate(prompt, max_new_tokens=a.new, min_new_tokens=a.new, do_sample=False, pad_token_id=2)
                    total = time.perf_counter() - t0
                res[impl][0].append(T / pre)
                res[impl][1].append((a.new - 1) / max(total - pre, 1e-9))
        for k, (pre, dec) in res.items():
            rows.append((T, k, statistics.median(pre), statistics.median(dec)))
            print(f"T={T:5d} {k:6s} prefill {statistics.median(pre):8.0f} tok/s  decode {statistics.median(dec):6.1f} tok/s", flush=True)
    print(f"\n| prompt | implementation | prefill tok/s | decode tok/s |  ({a.dtype}, {a.threads} threads, medians of {a.rounds} interleaved rounds)")
    print("|---|---|---|---|")
    for T, k, p, d in rows:
        name = {"agate": "agate generate", "eager": "transformers (eager)", "sdpa": "transformers (SDPA)"}[k]
        print(f"| {T} | {name} | {p:.0f} | {d:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
