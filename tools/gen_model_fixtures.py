#!/usr/bin/env python3
"""Generate tiny random HF-layout Llama/Mistral/Qwen2 models plus expected logits.

Writes, for every case, tests/fixtures/models/<case>/:
  config.json            HF config (model_type llama | mistral | qwen2)
  model.safetensors      weights in the case's dtype (or, for the sharded case,
                         model-0000{1,2}-of-00002.safetensors + model.safetensors.index.json)
  expected.safetensors   tokens  I64 [2, 12]     random ids (fixed seed)
                         logits  F32 [2, 12, V]  from tools/llama_reference.py (HF eager
                                                 semantics) computed in the case's dtype

Run from the repository root:
    .venv/bin/python tools/gen_model_fixtures.py [--out tests/fixtures/models] [--only CASE ...]

Output is deterministic for a given torch build and CPU (fixed seeds, 1 thread).
Before writing, the generator self-checks the reference: safetensors round trip, causality,
float64 agreement, the sliding-window receptive field, and sharded == unsharded logits.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
from typing import Dict, List, Optional

import torch

sys.dont_write_bytecode = True  # keep tools/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as ref  # noqa: E402

BATCH, SEQ = 2, 12
GENERATOR = "tools/gen_model_fixtures.py"

# Shared tiny dimensions. vocab is deliberately odd (not a multiple of 8/16).
BASE = {
    "vocab_size": 97,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 64,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "use_cache": True,
}


def llama(**kw) -> Dict[str, object]:
    c = dict(BASE, model_type="llama", architectures=["LlamaForCausalLM"],
             attention_bias=False, mlp_bias=False, pretraining_tp=1)
    c.update(kw)
    return c


def qwen2(**kw) -> Dict[str, object]:
    c = dict(BASE, model_type="qwen2", architectures=["Qwen2ForCausalLM"],
             # Present but disabled, like every released Qwen2 config: a loader that honours
             # sliding_window without checking use_sliding_window gets these logits wrong.
             use_sliding_window=False, sliding_window=4, max_window_layers=1)
    c.update(kw)
    return c


def mistral(**kw) -> Dict[str, object]:
    c = dict(BASE, model_type="mistral", architectures=["MistralForCausalLM"])
    c.update(kw)
    return c


# name -> (config without torch_dtype, storage/compute dtype, seed)
CASES: Dict[str, tuple] = {
    "llama_mha_tied_f32": (llama(tie_word_embeddings=True), "float32", 1001),
    "llama_gqa_untied_f32": (llama(num_key_value_heads=2), "float32", 1002),
    "llama_linear_rope_f32": (
        llama(num_key_value_heads=2, tie_word_embeddings=True, rope_theta=500.0,
              rope_scaling={"type": "linear", "factor": 2.0}),
        "float32", 1003),
    # transformers-v5 style: rope_parameters carries rope_theta; no top-level rope_theta.
    # head_dim 16 -> 8 frequency bands. original_max_position_embeddings is 1024 (not 8) so that
    # bands land in all three llama3 regimes: 3 high-freq (kept), 1 medium (smoothed),
    # 4 low-freq (divided by factor). See llama_reference.llama3_band_regimes.
    "llama3_rope_f32": (
        {k: v for k, v in llama(
            num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=8192,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 1024},
        ).items() if k != "rope_theta"},
        "float32", 1004),
    "llama_attnbias_mqa_f32": (llama(attention_bias=True, num_key_value_heads=1, tie_word_embeddings=True),
                               "float32", 1005),
    "qwen2_bias_f32": (qwen2(tie_word_embeddings=True, num_key_value_heads=2, rms_norm_eps=1e-6,
                             rope_theta=1000000.0), "float32", 1006),
    "mistral_headdim_window_f32": (
        mistral(num_attention_heads=4, head_dim=16, num_key_value_heads=2, sliding_window=5,
                eos_token_id=[2, 3], tie_word_embeddings=True),
        "float32", 1007),
    "llama_gqa_bf16": (llama(num_key_value_heads=2), "bfloat16", 1008),
    "qwen2_bias_bf16": (qwen2(tie_word_embeddings=True, num_key_value_heads=2, rms_norm_eps=1e-6),
                        "bfloat16", 1009),
}
SHARDED = "llama_sharded_f32"
SHARDED_TWIN = "llama_gqa_untied_f32"
ALL_CASES = list(CASES) + [SHARDED]


def random_weights(cfg: ref.ModelConfig, seed: int) -> Dict[str, torch.Tensor]:
    """fp32 weights: matrices N(0, 0.2^2), norm weights 1 + 0.1 N(0,1), biases 0.1 N(0,1).
    Drawn in the (sorted) order of the expected tensor names, from one seeded generator."""
    g = torch.Generator().manual_seed(seed)
    out: Dict[str, torch.Tensor] = {}
    for name, shape in sorted(cfg.expected_shapes().items()):
        r = torch.randn(shape, generator=g, dtype=torch.float32)
        if name.endswith("norm.weight"):
            out[name] = 1.0 + 0.1 * r
        elif name.endswith(".bias"):
            out[name] = 0.1 * r
        else:
            out[name] = 0.2 * r
    return out


def random_tokens(vocab: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 7919)
    return torch.randint(0, vocab, (BATCH, SEQ), generator=g, dtype=torch.int64)  # [B, T]


def write_config(case_dir: str, cfg: Dict[str, object], dtype: str) -> None:
    c = dict(cfg, torch_dtype=dtype)
    with open(os.path.join(case_dir, "config.json"), "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")


def write_sharded(case_dir: str, weights: Dict[str, torch.Tensor], n_layers: int) -> None:
    """Split: embeddings + first half of the layers | remaining layers + final norm + lm_head."""
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    cut = (n_layers + 1) // 2

    def shard_of(name: str) -> int:
        if name.startswith("model.embed_tokens."):
            return 0
        if name.startswith("model.layers."):
            return 0 if int(name.split(".")[2]) < cut else 1
        return 1

    parts: List[Dict[str, torch.Tensor]] = [{}, {}]
    for n, t in weights.items():
        parts[shard_of(n)][n] = t
    for fn, part in zip(files, parts):
        ref.write_safetensors(os.path.join(case_dir, fn), part, {"format": "pt"})
    index = {
        "metadata": {"total_size": sum(t.numel() * t.element_size() for t in weights.values())},
        "weight_map": {n: files[shard_of(n)] for n in sorted(weights)},
    }
    with open(os.path.join(case_dir, ref.INDEX_NAME), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")


# --------------------------------------------------------------------------------------
# self-checks of the reference (cheap; run on every generation)
# --------------------------------------------------------------------------------------


def check_safetensors_roundtrip(tmp: str) -> None:
    g = torch.Generator().manual_seed(0)
    ts = {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, 3, generator=g).bfloat16(),
        "i64": torch.randint(-2**40, 2**40, (5,), generator=g),
        "i32": torch.randint(-2**30, 2**30, (1, 3), generator=g, dtype=torch.int32),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }
    path = os.path.join(tmp, "roundtrip.safetensors")
    ref.write_safetensors(path, ts, {"k": "v"})
    with open(path, "rb") as f:
        hlen = int.from_bytes(f.read(8), "little")
    assert hlen % 8 == 0, "header not padded to 8"
    back, meta = ref.read_safetensors(path)
    assert meta == {"k": "v"}, meta
    assert set(back) == set(ts)
    for n, t in ts.items():
        assert back[n].dtype == t.dtype and torch.equal(back[n], t), n
    os.remove(path)


def naive_inv_freq(cfg: ref.ModelConfig) -> List[float]:
    """Scalar float64 re-derivation of the RoPE inverse frequencies (no shared code)."""
    import math
    d = cfg.head_dim
    p = cfg.rope_params
    out = []
    for m in range(d // 2):
        f = cfg.rope_theta ** (-2.0 * m / d)
        if cfg.rope_type == "linear":
            f /= p["factor"]
        elif cfg.rope_type == "llama3":
            wavelen = 2 * math.pi / f
            orig = p["original_max_position_embeddings"]
            if wavelen < orig / p["high_freq_factor"]:  # high frequency: untouched
                pass
            elif wavelen > orig / p["low_freq_factor"]:  # low frequency: interpolated by factor
                f /= p["factor"]
            else:  # in between: blend of f/factor and f
                s = (orig / wavelen - p["low_freq_factor"]) / (p["high_freq_factor"] - p["low_freq_factor"])
                f = (1 - s) * f / p["factor"] + s * f
        out.append(f)
    return out


def naive_forward64(cfg: ref.ModelConfig, w: Dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """Slow float64 forward written independently of CausalLM: explicit loops over query heads
    and positions, RoPE as pairwise rotations of (x[m], x[m + Hd/2]), the kv head of query head
    h is h // n_rep, and visibility spelled out as `j <= i and (no window or i - j < window)`.
    tokens: [B, T] -> logits [B, T, V] float64."""
    w = {n: t.double() for n, t in w.items()}
    B, T = tokens.shape
    H, G, Hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    half = Hd // 2
    inv = torch.tensor(naive_inv_freq(cfg), dtype=torch.float64)  # [Hd/2]
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]  # [T, Hd/2]
    c, s = ang.cos(), ang.sin()

    def rot(x):  # x: [T, Hd] -> rotated [T, Hd]
        a, b = x[:, :half], x[:, half:]
        return torch.cat([a * c - b * s, b * c + a * s], dim=1)

    def norm(x, wt):  # x: [T, D]
        return wt * x / torch.sqrt((x * x).mean(-1, keepdim=True) + cfg.rms_norm_eps)

    def lin(x, name):
        y = x @ w[name + ".weight"].T
        return y + w[name + ".bias"] if name + ".bias" in w else y

    lm_head = w["model.embed_tokens.weight"] if cfg.tie_word_embeddings else w["lm_head.weight"]
    out = torch.empty(B, T, cfg.vocab_size, dtype=torch.float64)
    for b in range(B):
        x = w["model.embed_tokens.weight"][tokens[b]]  # [T, D]
        for li in range(cfg.num_hidden_layers):
            p = f"model.layers.{li}."
            win = cfg.layer_windows[li]
            h = norm(x, w[p + "input_layernorm.weight"])
            q = lin(h, p + "self_attn.q_proj").view(T, H, Hd)
            k = lin(h, p + "self_attn.k_proj").view(T, G, Hd)
            v = lin(h, p + "self_attn.v_proj").view(T, G, Hd)
            att = torch.zeros(T, H, Hd, dtype=torch.float64)
            for hh in range(H):
                g = hh // (H // G)
                qh, kh = rot(q[:, hh]), rot(k[:, g])  # [T, Hd]
                for i in range(T):
                    js = [j for j in range(T) if j <= i and (win is None or i - j < win)]
                    sc = torch.stack([qh[i] @ kh[j] for j in js]) / Hd ** 0.5
                    pr = torch.softmax(sc, 0)
                    att[i, hh] = sum(pr[n] * v[j, g] for n, j in enumerate(js))
            x = x + lin(att.reshape(T, H * Hd), p + "self_attn.o_proj")
            h = norm(x, w[p + "post_attention_layernorm.weight"])
            gate = lin(h, p + "mlp.gate_proj")
            x = x + lin(gate * torch.sigmoid(gate) * lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
        out[b] = norm(x, w["model.norm.weight"]) @ lm_head.T
    return out


def check_model(name: str, model: ref.CausalLM, model64: ref.CausalLM, tokens: torch.Tensor,
                logits: torch.Tensor) -> Dict[str, float]:
    """Causality, fp64 agreement, sliding-window receptive field. Returns diagnostics."""
    f32 = model.dtype == torch.float32
    info: Dict[str, float] = {}
    # 1. causality, checked in float64: a prefix's logits equal the full run's on that prefix.
    #    (In bf16 torch's CPU bmm rounding depends on the matrix shape, so there the prefix
    #    run legitimately differs by a few bf16 ulps; recorded, not asserted.)
    l64 = model64.forward(tokens)
    d = (model64.forward(tokens[:, :7]) - l64[:, :7]).abs().max().item()
    assert d <= 1e-12, f"{name}: float64 prefix logits differ by {d}"
    info["prefix_vs_full_max_abs_diff"] = (model.forward(tokens[:, :7]) - logits[:, :7]).abs().max().item()
    if f32:
        assert info["prefix_vs_full_max_abs_diff"] <= 1e-5, info
    # 2. same weights in float64: measures the case dtype's rounding error
    d64 = (l64 - logits.double()).abs().max().item()
    info["max_abs_diff_vs_f64"] = d64
    assert d64 <= (1e-4 if f32 else 0.5), f"{name}: differs from float64 by {d64}"
    # 2b. an independently written slow float64 forward agrees with the oracle mode
    dn = (naive_forward64(model64.cfg, model64.w, tokens) - l64).abs().max().item()
    assert dn <= 1e-10, f"{name}: naive float64 forward differs by {dn}"
    info["naive_vs_f64"] = dn
    # 2c. RoPE scaling, if any, actually changes the result
    if model.cfg.rope_type != "default":
        plain = copy.copy(model64)
        plain.cfg = copy.copy(model64.cfg)
        plain.cfg.rope_type = "default"
        plain.inv_freq = ref.compute_inv_freq(plain.cfg, torch.float64)
        drope = (plain.forward(tokens) - l64).abs().max().item()
        assert drope > 1e-2, f"{name}: rope scaling has no effect ({drope})"
        info["rope_scaling_effect"] = drope
    # 3. sliding window: with L layers of window W, position i only sees tokens > i - L*(W-1)
    windows = model.cfg.layer_windows
    if any(w is not None for w in windows):
        assert all(w == windows[0] for w in windows)
        reach = model.cfg.num_hidden_layers * (windows[0] - 1)  # 2 * 4 = 8
        last = tokens.shape[1] - 1
        first_visible = last - reach
        pert = tokens.clone()
        pert[:, :first_visible] = (pert[:, :first_visible] + 1) % model.cfg.vocab_size
        lp = model64.forward(pert)
        assert torch.equal(lp[:, last], l64[:, last]), f"{name}: tokens outside the window leak in"
        pert = tokens.clone()
        pert[:, first_visible] = (pert[:, first_visible] + 1) % model.cfg.vocab_size
        lp = model64.forward(pert)
        assert not torch.allclose(lp[:, last], l64[:, last]), f"{name}: window narrower than expected"
        # and the window really is narrower than the sequence: a full-causal model differs
        full = copy.copy(model64)
        full.cfg = copy.copy(model64.cfg)
        full.cfg.layer_windows = [None] * len(windows)
        dfull = (full.forward(tokens) - l64).abs().max().item()
        assert dfull > 1e-3, f"{name}: sliding window has no effect ({dfull})"
        info["window_vs_full_max_abs_diff"] = dfull
    return info


# --------------------------------------------------------------------------------------


def generate_case(out_root: str, name: str, verbose: bool = True) -> None:
    config, dtype_name, seed = CASES[name]
    dtype = ref.DTYPES[dtype_name]
    case_dir = os.path.join(out_root, name)
    if os.path.isdir(case_dir):
        shutil.rmtree(case_dir)
    os.makedirs(case_dir)
    cfg = ref.ModelConfig.from_dict(config)
    weights32 = random_weights(cfg, seed)
    stored = {n: t.to(dtype) for n, t in weights32.items()}
    write_config(case_dir, config, dtype_name)
    ref.write_safetensors(os.path.join(case_dir, ref.SINGLE_NAME), stored, {"format": "pt"})

    # Expected values come from a model re-loaded from disk (exercises config + reader).
    model = ref.load_model(case_dir, dtype)
    model64 = ref.load_model(case_dir, torch.float64)
    tokens = random_tokens(cfg.vocab_size, seed)
    logits = model.forward(tokens)  # fp32 [B, T, V]
    info = check_model(name, model, model64, tokens, logits)
    meta = {
        "generator": GENERATOR,
        "reference": "tools/llama_reference.py (HF transformers eager-attention semantics)",
        "case": name,
        "compute_dtype": dtype_name,
        "seed": str(seed),
        "torch_version": torch.__version__,
        "max_abs_diff_vs_float64": f"{info['max_abs_diff_vs_f64']:.3g}",
    }
    ref.write_safetensors(os.path.join(case_dir, "expected.safetensors"),
                          {"tokens": tokens, "logits": logits}, meta)
    if verbose:
        extra = ""
        if cfg.rope_type == "llama3":
            extra = f" llama3-bands={ref.llama3_band_regimes(cfg)}"
        diag = " ".join(f"{k}={v:.2g}" for k, v in info.items())
        print(f"[gen] {name:27s} {dtype_name:8s} max|logit|={logits.abs().max().item():.2f} {diag}{extra}")


def generate_sharded(out_root: str, verbose: bool = True) -> None:
    config, dtype_name, seed = CASES[SHARDED_TWIN]
    twin_dir = os.path.join(out_root, SHARDED_TWIN)
    if not os.path.exists(os.path.join(twin_dir, "expected.safetensors")):
        generate_case(out_root, SHARDED_TWIN, verbose)
    case_dir = os.path.join(out_root, SHARDED)
    if os.path.isdir(case_dir):
        shutil.rmtree(case_dir)
    os.makedirs(case_dir)
    cfg = ref.ModelConfig.from_dict(config)
    weights = {n: t.to(ref.DTYPES[dtype_name]) for n, t in random_weights(cfg, seed).items()}
    write_config(case_dir, config, dtype_name)
    write_sharded(case_dir, weights, cfg.num_hidden_layers)

    # The sharded checkpoint must reproduce the twin's weights and logits bit for bit.
    twin_w = ref.load_checkpoint(twin_dir)
    shard_w = ref.load_checkpoint(case_dir)
    assert set(twin_w) == set(shard_w) and all(torch.equal(twin_w[n], shard_w[n]) for n in twin_w)
    expected, _ = ref.read_safetensors(os.path.join(twin_dir, "expected.safetensors"))
    logits = ref.load_model(case_dir, ref.DTYPES[dtype_name]).forward(expected["tokens"])
    assert torch.equal(logits, expected["logits"]), "sharded logits differ from the unsharded twin"
    shutil.copyfile(os.path.join(twin_dir, "expected.safetensors"),
                    os.path.join(case_dir, "expected.safetensors"))
    if verbose:
        print(f"[gen] {SHARDED:28s} {dtype_name:8s} logits identical to {SHARDED_TWIN}")


def main(argv: Optional[List[str]] = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.join(os.path.dirname(here), "tests", "fixtures", "models")
    ap = argparse.ArgumentParser(description="Generate tiny HF-layout model fixtures.")
    ap.add_argument("--out", default=default_out, help=f"output root (default {default_out})")
    ap.add_argument("--only", nargs="*", choices=ALL_CASES, help="generate only these cases")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic reductions
    os.makedirs(args.out, exist_ok=True)
    check_safetensors_roundtrip(args.out)
    for name in args.only or ALL_CASES:
        if name == SHARDED:
            generate_sharded(args.out)
        else:
            generate_case(args.out, name)

    total = 0
    for root, _, files in os.walk(args.out):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print(f"[gen] wrote {args.out}: {total / 1024:.1f} KiB in total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
