#!/usr/bin/env python3
"""PyTorch peers of `agate bench attention`: the same gated attention problem written as a
competent PyTorch 2.x user would write it, one implementation per process (the venv's torch 2.11).

    .venv/bin/python tools/bench/attention_peers.py --impl IMPL [--mode forward|train]
        [--seq 256] [--batch 1] [--heads 9] [--kv-heads 3] [--head-dim 64] [--dtype float32|bfloat16]
        [--keep 0.5] [--window 0] [--recent 0] [--iters 5] [--threads 2] [--seed 0] [--check]
        [--device cpu|cuda]
  -> one JSON line in the schema of `agate bench attention` (impl "pytorch", kernel IMPL).
    .venv/bin/python tools/bench/attention_peers.py --list      (the implementations)

The problem (as agate's): q [B, H, T, hd], k/v [B, Hkv, T, hd] (GQA: query head h reads KV head
h // G), random 0/1 keep flags per (batch, KV head, key) with --keep of them kept, drawn from the
same seeded generator in the same order as agate (so both sides see the same flags: compare
keep_actual), causal, optional sliding window (--window) and recent window (--recent: keys that
recent stay visible), a token always sees itself. train = forward + backward to q, k, v and, where
the formulation allows, to the keep probabilities p through the straight-through keep
flags + p - p.detach(); forward = under torch.inference_mode().

Implementations (--impl):
  eager        the composed formula: float32 scores + a float log-bias mask (log(keep + 1e-20), 0 on
               the diagonal / recent window, -inf outside causal/window), softmax, @ v. The bias is
               built inside the step (the flags change every step). Gradient reaches p.
  compile      the same function under torch.compile (inductor); compilation (the first call) is
               excluded from the timings and reported as compile_s.
  sdpa-mask    F.scaled_dot_product_attention(enable_gqa=True) with that log-bias as an explicit
               float additive mask [B, H, T, T] in q's dtype (expanded over the G heads of each KV
               head). With a mask that requires grad, gradient reaches p.
  sdpa-bool    SDPA with a boolean visibility mask [B, H, T, T] (forward peer: a boolean mask
               carries no gradient, so it is not run in train mode).
  flex         FlexAttention (torch.nn.attention.flex_attention, compiled) with a mask_mod that
               reads the flags and the positions; the block mask is built inside the step by
               torch.compile(create_block_mask) (block_mask_ms reports that part). train: a
               score_mod adding the straight-through log-bias (gradient to p) on a causal/window
               block mask. torch 2.11's CPU
               FlexAttention has no backward: train is recorded as failed with its error.
  sdpa-causal  SDPA plain causal attention (is_causal=True, enable_gqa=True), no gating, windows
               ignored: the price-of-gating reference.

Device: --device cuda runs every implementation on the GPU (inputs drawn on the CPU as above, then
moved), float32 matmuls allowed to use TF32 as agate does on CUDA; timings wait for the GPU
(torch.cuda.synchronize) after each call; peak memory is the caching allocator's
max_memory_allocated above what was allocated before the call (peak_method "cuda_allocator").

Timing: one warm-up call (two for compile/flex, whose first call compiles), then --iters timed
calls; median_ms. Peak memory: one more call under torch.profiler(profile_memory=True): the maximum
over time of the running sum of the CPU allocator's allocation/free events during the call
(peak_method "profiler"): the bytes allocated above what was live before it, the quantity agate's
AllocTracker measures (both count tensor storage from LibTorch's CPU allocator; neither sees
BLAS/oneDNN scratch). rss_max_bytes is the process's ru_maxrss at the end (includes the Python,
torch and compiler footprint). out_checksum = mean(out * dout) in float64 of one forward, as
agate reports it: equal up to rounding when both sides solve the same problem. Failures are
reported as status "failed" with the error, exit 0.
"""
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
import traceback

IMPLS = ["eager", "compile", "sdpa-mask", "sdpa-bool", "flex", "sdpa-causal"]
EPS = 1e-20  # log(keep + EPS): finite everywhere, so the gradient to p never becomes inf * 0


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impl", choices=IMPLS)
    ap.add_argument("--list", action="store_true", help="print the implementations and exit")
    ap.add_argument("--mode", default="forward", choices=["forward", "train"])
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=9)
    ap.add_argument("--kv-heads", type=int, default=3)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--keep", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=0)
    ap.add_argument("--recent", type=int, default=0)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--check", action="store_true",
                    help="also compare the output (and gradients) with float64 composed attention; adds max_rel_err, the largest abs difference relative to the largest abs reference value, over the output (train: over each gradient)")
    a = ap.parse_args()
    if a.list:
        print("\n".join(IMPLS))
        sys.exit(0)
    if a.impl is None:
        ap.error("--impl is required (one of %s)" % ", ".join(IMPLS))
    for name in ("seq", "batch", "heads", "kv_heads", "head_dim", "iters", "threads"):
        if getattr(a, name) < 1:
            ap.error("--%s must be positive" % name.replace("_", "-"))
    if a.heads % a.kv_heads:
        ap.error("--heads %d is not a multiple of --kv-heads %d" % (a.heads, a.kv_heads))
    if not 0.0 <= a.keep <= 1.0:
        ap.error("--keep must lie in [0, 1]")
    if a.window < 0 or a.recent < 0:
        ap.error("--window and --recent must be >= 0 (0 = none)")
    return a


def record(a, **kw):
    j = {"impl": "pytorch", "kernel": a.impl, "mode": a.mode, "dtype": a.dtype, "T": a.seq, "batch": a.batch,
         "heads": a.heads, "kv_heads": a.kv_heads, "head_dim": a.head_dim, "keep": a.keep, "window": a.window,
         "recent": a.recent, "gated": a.impl != "sdpa-causal", "iters": a.iters, "threads": a.threads,
         "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "(unset)"), "device": a.device}
    j.update(kw)
    try:
        import torch
        j["torch"] = torch.__version__
    except Exception:  # noqa: BLE001
        pass
    print(json.dumps(j), flush=True)


def peak_bytes_of(fn, dev):
    """Bytes allocated by fn above what was live before it, and how that was measured: CPU
    allocator events (profiler), or the CUDA caching allocator's peak statistic."""
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        fn()
        torch.cuda.synchronize(dev)
        return torch.cuda.max_memory_allocated(dev) - base, "cuda_allocator"
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    run = peak = 0
    for e in events:
        if str(e.device_type()).endswith("CPU"):
            run += e.nbytes()
            peak = max(peak, run)
    return peak, "profiler"


def main():
    a = parse()
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            record(a, status="failed", error="--device cuda: torch sees no CUDA device")
            return
        torch.backends.cuda.matmul.allow_tf32 = True  # as agate's resolve_device
    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    B, H, Hkv, T, hd = a.batch, a.heads, a.kv_heads, a.seq, a.head_dim
    G = H // Hkv
    train = a.mode == "train"
    scale = hd ** -0.5

    # Inputs in agate's order from one seeded generator (src/cli/bench.cpp, bench_attention).
    gen = torch.Generator().manual_seed(a.seed)
    p = torch.rand(B, T, Hkv, generator=gen)
    flags = (p > 1.0 - a.keep).float()
    q = torch.randn(B, H, T, hd, generator=gen).to(dev, dt).requires_grad_(train)
    k = torch.randn(B, Hkv, T, hd, generator=gen).to(dev, dt).requires_grad_(train)
    v = torch.randn(B, Hkv, T, hd, generator=gen).to(dev, dt).requires_grad_(train)
    dout = torch.randn(B, H, T, hd, generator=gen).to(dev, dt)
    kept = flags.mean().item()
    p, flags = p.to(dev).requires_grad_(train), flags.to(dev)

    pos = torch.arange(T, device=dev)
    qp, kp = pos[:, None], pos[None, :]
    allowed = kp <= qp
    if a.window > 0:
        allowed &= qp - kp < a.window
    always = qp == kp
    if a.recent > 0:
        always |= qp - kp < a.recent
    neg_inf = torch.tensor(float("-inf"), device=dev)
    zero = torch.zeros((), device=dev)

    def log_bias(keep):
        """[B, Hkv, T, T] float32: -inf outside causal/window, 0 where always visible, log keep."""
        logk = (keep + EPS).log().permute(0, 2, 1)[:, :, None, :]  # [B, Hkv, 1, T]
        return torch.where(allowed, torch.where(always, zero, logk), neg_inf)

    def composed(q, k, v, keep):
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32  # softmax in float32 (float64 for --check)
        s = torch.matmul(q.reshape(B, Hkv, G * T, hd), k.transpose(-1, -2)).to(acc).view(B, Hkv, G, T, T) * scale
        a_ = torch.softmax(s + log_bias(keep)[:, :, None], dim=-1).to(v.dtype).view(B, Hkv, G * T, T)
        return torch.matmul(a_, v).view(B, H, T, hd)

    def sdpa_mask(q, k, v, keep):
        mask = log_bias(keep).repeat_interleave(G, dim=1).to(q.dtype)  # [B, H, T, T]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

    flags_b = flags.bool().permute(0, 2, 1).contiguous()  # [B, Hkv, T]

    def sdpa_bool(q, k, v, keep):
        vis = allowed & (always | flags_b[:, :, None, :])  # [B, Hkv, T, T]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=vis.repeat_interleave(G, dim=1), enable_gqa=True)

    def sdpa_causal(q, k, v, keep):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    extra = {}
    compile_s = None
    grad_to_keep = train
    note = None
    if a.impl == "eager":
        attn = composed
    elif a.impl == "compile":
        attn = torch.compile(composed)
    elif a.impl == "sdpa-mask":
        attn = sdpa_mask
    elif a.impl == "sdpa-bool":
        if train:
            record(a, status="skipped", keep_actual=kept,
                   error="forward peer only: a boolean mask carries no gradient to the keep probabilities")
            return
        attn = sdpa_bool
    elif a.impl == "sdpa-causal":
        attn = sdpa_causal
        grad_to_keep = False
        if a.window or a.recent:
            note = "plain causal: --window/--recent ignored"
    elif a.impl == "flex":
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention)
        make_block_mask = torch.compile(create_block_mask)  # as the docs advise (eager: ~10x slower at T=1024)
        W, R = a.window, a.recent

        def structure(qi, kj):
            ok = kj <= qi
            if W > 0:
                ok = ok & (qi - kj < W)
            return ok

        def alw(qi, kj):
            al = qi == kj
            if R > 0:
                al = al | (qi - kj < R)
            return al

        bm_times = []
        if not train:
            def mask_mod(b, h, qi, kj):
                return structure(qi, kj) & (alw(qi, kj) | flags_b[b, h // G, kj])

            def attn(q, k, v, keep):
                t0 = time.perf_counter()
                bm = make_block_mask(mask_mod, B, H, T, T, device=a.device)
                bm_times.append(time.perf_counter() - t0)
                return flex(q, k, v, block_mask=bm, enable_gqa=True)
        else:
            def attn(q, k, v, keep):
                logk = (keep + EPS).log().permute(0, 2, 1)  # [B, Hkv, T], carries the gradient to p

                def score_mod(s, b, h, qi, kj):
                    return s + torch.where(alw(qi, kj), 0.0, logk[b, h // G, kj])

                t0 = time.perf_counter()
                bm = make_block_mask(lambda b, h, qi, kj: structure(qi, kj), None, None, T, T, device=a.device)
                bm_times.append(time.perf_counter() - t0)
                return flex(q, k, v, score_mod=score_mod, block_mask=bm, enable_gqa=True)
        extra["bm_times"] = bm_times
    else:
        raise AssertionError(a.impl)

    def step():
        if train:
            keep = flags + p - p.detach()
            out = attn(q, k, v, keep)
            return torch.autograd.grad(out, [q, k, v, p] if grad_to_keep else [q, k, v], dout)
        with torch.inference_mode():
            return attn(q, k, v, flags)

    fields = dict(keep_actual=kept, grad_to_keep=grad_to_keep)
    if note:
        fields["note"] = note
    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    try:
        t0 = time.perf_counter()
        step()  # warm-up; compiles where torch.compile is involved
        sync()
        first_s = time.perf_counter() - t0
        if a.impl in ("compile", "flex"):
            compile_s = first_s
            step()  # a second warm-up after compilation
        times = []
        for _ in range(a.iters):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append((time.perf_counter() - t0) * 1e3)
        peak, peak_method = peak_bytes_of(step, dev)
        backend = sdpa_backend(step) if a.impl.startswith("sdpa") else None
        with torch.inference_mode():  # the same problem as agate's: compare out_checksum
            out = attn(q.detach(), k.detach(), v.detach(), flags)
            fields["out_checksum"] = (out.double() * dout.double()).mean().item()
        if a.check:
            fields["max_rel_err"] = check(a, step, composed, q, k, v, p, flags, dout, grad_to_keep)
    except Exception as e:  # noqa: BLE001
        msg = "%s: %s" % (type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else "")
        print(traceback.format_exc(), file=sys.stderr)
        record(a, status="failed", error=msg[:500], **fields)
        return
    fields.update(median_ms=statistics.median(times), times_ms=times, peak_bytes=peak, peak_method=peak_method,
                  rss_max_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, status="ok")
    if compile_s is not None:
        fields["compile_s"] = compile_s
    if backend:
        fields["backend"] = backend
    if "bm_times" in extra and extra["bm_times"]:
        fields["block_mask_ms"] = statistics.median(extra["bm_times"][-a.iters:]) * 1e3
    record(a, **fields)


def sdpa_backend(step):
    """Which ATen SDPA kernel the call dispatched to (flash_cpu, math, or a CUDA one), from the profiler."""
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    names = {e.name() for e in prof.profiler.kineto_results.events()}
    found = [n.replace("aten::_scaled_dot_product_", "") for n in sorted(names)
             if n.startswith("aten::_scaled_dot_product_")]
    return ",".join(found) or "unknown"


def check(a, step, composed, q, k, v, p, flags, dout, grad_to_keep):
    """Largest abs difference of the output (train: and gradients) from composed float64."""
    import torch
    train = a.mode == "train"
    got = step() if train else (step(),)
    qd, kd, vd, pd = (t.detach().double().requires_grad_(train) for t in (q, k, v, p))
    keep = flags.double() + pd - pd.detach()
    if a.impl == "sdpa-causal":
        keep = torch.ones_like(keep)  # no gating
    out = composed(qd, kd, vd, keep)
    if not train:
        return ((got[0].double() - out).abs().max() / out.abs().max()).item()
    ref = torch.autograd.grad(out, [qd, kd, vd, pd] if grad_to_keep else [qd, kd, vd], dout.double())
    return max(((g.double() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item() for g, r in zip(got, ref))


if __name__ == "__main__":
    main()
