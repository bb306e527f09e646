#!/usr/bin/env python3
"""Python peer of agate's gate-training benchmark (`agate bench train`): the same training step
written as a competent PyTorch user would write it, on the venv's torch 2.11 (scripts/setup.sh).

    .venv/bin/python tools/bench_train.py --model DIR [--seq 128] [--batch 16] [--iters 5]
        [--threads 2] [--dtype float32|bfloat16] [--gate-heads 2] [--gate-head-dim 16] [--compile]
  -> one JSON line: {"impl": "pytorch-eager" or "pytorch-compile", "warmup_s": ..., "gate_tokens_per_s": ..., "gate_step_s": ..., "times": [...], ...}

The step, as agate's: the frozen base model (weights in --dtype, requires_grad False) with an
Attention-Gate per layer (float32: its own q/k/v projections at --gate-head-dim with the model's
RoPE, causal attention by SDPA, a linear map to one keep logit per KV head, sigmoid; score bias 0 so
about half the tokens are evicted), straight-through hard flags (p > 0.5 forward, dp backward),
the gated attention of agate's masked_attention (multiplicative visibility mask after a
max-subtracted exp, self and causal structure, GQA by grouping query heads without repeating
K/V, float32 softmax), LM cross-entropy in float32 plus the l2_target sparsity term on the
per-layer keep ratios, backward, and an AdamW step of the gate parameters. Random tokens with a
fixed seed; one untimed warm-up step, then the median of --iters timed steps.
"""
import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as ref  # noqa: E402


def rope(x, cos, sin):
    return x * cos + ref.rotate_half(x) * sin


def gated_attention(q, k, v, keep):
    """q [B, H, T, d], k/v [B, Hkv, T, d], keep [B, T, Hkv] (0/1 forward, STE backward)."""
    B, H, T, d = q.shape
    Hkv = k.shape[1]
    G = H // Hkv
    s = torch.matmul(q.reshape(B, Hkv, G * T, d), k.transpose(-1, -2)).float() * d ** -0.5
    s = s.view(B, Hkv, G, T, T)
    idx = torch.arange(T)
    causal = idx[None, :] <= idx[:, None]  # [T, T]
    self_ = idx[None, :] == idx[:, None]
    m = torch.where(self_, torch.ones((), dtype=torch.float32), keep.float().permute(0, 2, 1)[:, :, None, None, :])
    m = m * causal
    row_max = s.detach().masked_fill(m <= 0, float("-inf")).amax(-1, keepdim=True)
    e = (s - row_max).clamp_max(0).exp()
    em = e * m
    a = (em / em.sum(-1, keepdim=True)).to(v.dtype).view(B, Hkv, G * T, T)
    return torch.matmul(a, v).view(B, H, T, d)


class Gates(torch.nn.Module):
    def __init__(self, cfg, heads, head_dim, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        D, W, L = cfg.hidden_size, heads * head_dim, cfg.num_hidden_layers

        def p(*shape):
            return torch.nn.Parameter(torch.randn(*shape, generator=g) * 0.02)

        self.wq = torch.nn.ParameterList([p(W, D) for _ in range(L)])
        self.wk = torch.nn.ParameterList([p(W, D) for _ in range(L)])
        self.wv = torch.nn.ParameterList([p(W, D) for _ in range(L)])
        self.ws = torch.nn.ParameterList([p(cfg.num_key_value_heads, W) for _ in range(L)])
        self.bs = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(cfg.num_key_value_heads)) for _ in range(L)])
        self.heads, self.head_dim = heads, head_dim

    def probabilities(self, l, x, cos, sin):
        B, T, _ = x.shape
        H, d = self.heads, self.head_dim
        x = x.float()
        q = rope(F.linear(x, self.wq[l]).view(B, T, H, d).transpose(1, 2), cos, sin)
        k = rope(F.linear(x, self.wk[l]).view(B, T, H, d).transpose(1, 2), cos, sin)
        v = F.linear(x, self.wv[l]).view(B, T, H, d).transpose(1, 2)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # the gate's own causal attention: SDPA
        z = z.transpose(1, 2).reshape(B, T, H * d)
        return torch.sigmoid(F.linear(z, self.ws[l], self.bs[l]))  # [B, T, Hkv]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--gate-heads", type=int, default=2)
    ap.add_argument("--gate-head-dim", type=int, default=16)
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile (inductor) the forward + loss (AOTAutograd compiles its backward too); "
                         "AdamW stays eager")
    ap.add_argument("--compile-mode", default="default", choices=["default", "max-autotune", "max-autotune-no-cudagraphs"],
                    help="torch.compile mode; max-autotune also benchmarks inductor's C++ GEMM templates against "
                         "the library GEMMs (minutes of compilation on 2 cores)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = ref.DTYPES[a.dtype]
    model = ref.load_model(a.model, dtype)
    cfg = model.cfg
    for t in model.w.values():
        t.requires_grad_(False)
    gates = Gates(cfg, a.gate_heads, a.gate_head_dim, 0)
    opt = torch.optim.AdamW(gates.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.vocab_size, (a.batch, a.seq + 1), generator=g)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    cos, sin = model.rope_cos_sin(a.seq)  # [T, hd] in the model dtype
    gate_cfg = dataclasses.replace(cfg, head_dim=a.gate_head_dim)
    freqs = torch.arange(a.seq).float()[:, None] * ref.compute_inv_freq(gate_cfg)[None, :]
    emb = torch.cat((freqs, freqs), -1)
    gcos, gsin = emb.cos(), emb.sin()

    def forward_loss():
        w = model.w
        x = F.embedding(inputs, model.embed)
        B, T = inputs.shape
        hd = cfg.head_dim
        keeps = []
        for l in range(cfg.num_hidden_layers):
            p = f"model.layers.{l}."
            h = ref.rms_norm(x, w[p + "input_layernorm.weight"], cfg.rms_norm_eps, torch.float32)
            prob = gates.probabilities(l, h, gcos, gsin)
            keep = (prob.detach() > 0.5).float() + prob - prob.detach()  # straight-through
            keeps.append(keep.mean())
            q = rope(model._linear(h, p + "self_attn.q_proj").view(B, T, -1, hd).transpose(1, 2), cos, sin)
            k = rope(model._linear(h, p + "self_attn.k_proj").view(B, T, -1, hd).transpose(1, 2), cos, sin)
            v = model._linear(h, p + "self_attn.v_proj").view(B, T, -1, hd).transpose(1, 2)
            o = gated_attention(q.contiguous(), k.contiguous(), v.contiguous(), keep)
            x = x + model._linear(o.transpose(1, 2).reshape(B, T, -1), p + "self_attn.o_proj")
            h = ref.rms_norm(x, w[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps, torch.float32)
            x = x + model.mlp(h, l)
        x = ref.rms_norm(x, w["model.norm.weight"], cfg.rms_norm_eps, torch.float32)
        logits = F.linear(x, model.lm_head).float()
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
        return loss + ((torch.stack(keeps) - 0.5) ** 2).mean()

    f = torch.compile(forward_loss, mode=a.compile_mode) if a.compile else forward_loss

    def step():
        loss = f()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    step()  # warm-up (compilation, when asked)
    warmup_s = time.perf_counter() - t0
    step()
    times = []
    for _ in range(a.iters):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(json.dumps({"impl": "pytorch-compile" if a.compile else "pytorch-eager", "mode": "train", "warmup_s": warmup_s,
                      "compile_mode": a.compile_mode if a.compile else None, "dtype": a.dtype, "threads": a.threads, "seq": a.seq,
                      "batch": a.batch, "iters": a.iters, "gate_step_s": med,
                      "gate_tokens_per_s": a.seq * a.batch / med, "times": times,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
