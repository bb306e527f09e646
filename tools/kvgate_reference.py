#!/usr/bin/env python3
"""Reference loader for an agate KV-gate export: which KV entries each layer keeps.

The portability recipe for `agate export RUN_DIR --out DIR` (files gates.safetensors and
kvgate_config.json), in plain PyTorch on top of the independent model in
tools/llama_reference.py (safetensors reader, config.json parsing, RoPE and the layers are
reused from there). For a prompt it computes, per layer l, KV head g and token t, the keep
flag that `agate generate --gates DIR` uses for the prefill:

  x_l      = input_layernorm_l(h_l)              what feeds q/k/v of layer l, as float32
  p_l      = gate_l(x_l)                          [T, Hkv] keep probabilities
  kept_l   = p_l > threshold, and t < sink_tokens always kept
  h_{l+1}  = layer l of the model with its attention restricted by kept_l:
             query i sees key j at KV head g iff j <= i (and i - j < sliding_window, if the
             model has one) and (j == i or i - j < recent_window or kept_l[j, g])

so the hidden states of layer l already carry the evictions of layers < l (the gated forward).

Gates (tensors model.layers.{l}.self_attn.kv_gate.*, float32):
  attention  q/k/v_proj.weight [heads*head_dim, D], score.weight [Hkv, heads*head_dim],
             score.bias [Hkv]: q, k, v = x W^T viewed [T, heads, head_dim]; RoPE of the model
             (same theta and scaling) at the gate's head_dim on q and k; causal softmax
             attention with scale 1/sqrt(head_dim); z = heads concatenated [T, heads*head_dim];
             p = sigmoid(z Ws^T + bs)
  mlp        fc1.weight [mlp_hidden, D], fc1.bias, fc2.weight [Hkv, mlp_hidden], fc2.bias:
             p = sigmoid(fc2(gelu(fc1(x))))   (exact, erf-based GELU)
  rule feature (gate.rule_feature attention; rule.weight [Hkv, 2]): the logit before the
             sigmoid gets + f0 * w[g, 0] + f1 * w[g, 1], per key j and KV head g, with
             f0 = log(1e-6 + r), r the attention key j receives in layer l's own causal softmax
             over the prompt (the base model's q and k after RoPE, scale 1/sqrt(head_dim)),
             summed over the queries and averaged over g's query heads, and f1 = log(max(1, T - j))

CLI:
  .venv/bin/python tools/kvgate_reference.py --model MODEL_DIR --gates EXPORT_DIR \\
      --tokens 1,5,9 [--dtype float32] [--out flags.json]
  -> {"tokens": [...], "kept": [[[0/1 per token] per KV head] per layer], "keep_ratio": mean}
  (the "tokens" and "kept" members have the layout of `agate generate --flags-out FILE`.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

sys.dont_write_bytecode = True  # keep tools/ free of __pycache__
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_reference as ref  # noqa: E402

# agate's base-weights fingerprint is defined once, in the agate_gates package (python/).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
from agate_gates.fingerprint import weights_fingerprint  # noqa: E402,F401


class KVGates:
    """The gates of one export: `probabilities(l, x)` maps x [T, D] to p [T, Hkv] float32."""

    PARTS = {"attention": ("q_proj.weight", "k_proj.weight", "v_proj.weight", "score.weight", "score.bias"),
             "mlp": ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")}

    def __init__(self, export_dir: str, cfg: ref.ModelConfig):
        with open(os.path.join(export_dir, "kvgate_config.json")) as f:
            meta = json.load(f)
        if meta.get("format") != "agate-kvgate" or meta.get("version") != 1:
            raise ValueError(f"{export_dir}: not an agate-kvgate version 1 export")
        for key in ("num_hidden_layers", "hidden_size", "num_key_value_heads", "head_dim"):
            if meta["base_model"][key] != getattr(cfg, key):
                raise ValueError(f"{export_dir}: gates are for a base model with {key} = "
                                 f"{meta['base_model'][key]}, this one has {getattr(cfg, key)}")
        self.meta = meta
        g = meta["gate"]
        self.type: str = g["type"]
        if self.type not in self.PARTS:
            raise ValueError(f"gate.type {self.type!r} not supported (attention or mlp)")
        self.rule = g.get("rule_feature", "none")
        if self.rule not in ("none", "attention"):
            raise ValueError(f"{export_dir}: gate.rule_feature {self.rule!r} not supported (none or attention)")
        self.heads, self.head_dim = int(g["heads"]), int(g["head_dim"])
        self.threshold = float(g["threshold"])
        self.sink_tokens, self.recent_window = int(g["sink_tokens"]), int(g["recent_window"])
        tensors, _ = ref.read_safetensors(os.path.join(export_dir, "gates.safetensors"))
        self.w: Dict[str, torch.Tensor] = {}
        for l in range(cfg.num_hidden_layers):
            for part in self.PARTS[self.type] + (("rule.weight",) if self.rule == "attention" else ()):
                name = f"model.layers.{l}.self_attn.kv_gate.{part}"
                if name not in tensors:
                    raise KeyError(f"gates.safetensors lacks {name!r} (gate type {self.type})")
                self.w[name] = tensors[name].float()
        if len(tensors) != len(self.w):
            raise ValueError(f"gates.safetensors holds {len(tensors)} tensors, a {self.type} gate needs {len(self.w)}")
        # The model's RoPE (theta, scaling) at the gate's head width.
        self.inv_freq = ref.compute_inv_freq(dataclasses.replace(cfg, head_dim=self.head_dim))

    def _w(self, layer: int, part: str) -> torch.Tensor:
        return self.w[f"model.layers.{layer}.self_attn.kv_gate.{part}"]

    def probabilities(self, layer: int, x: torch.Tensor, rule: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: [T, D] (the normed hidden state feeding q/k/v), rule: rule_features(q, k) [T, Hkv, 2]
        (gates with a rule feature only) -> keep probabilities [T, Hkv]."""
        z = self._logits(layer, x.float())
        if self.rule == "attention":
            if rule is None:
                raise ValueError("these gates read a rule feature: pass rule=rule_features(q, k)")
            z = z + (rule.float() * self._w(layer, "rule.weight")).sum(-1)
        return torch.sigmoid(z)

    def _logits(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        w = lambda part: self._w(layer, part)  # noqa: E731
        if self.type == "mlp":
            return F.linear(F.gelu(F.linear(x, w("fc1.weight"), w("fc1.bias"))), w("fc2.weight"), w("fc2.bias"))
        T, H, d = x.shape[0], self.heads, self.head_dim
        freqs = torch.arange(T).float()[:, None] * self.inv_freq[None, :]  # [T, d/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None, :]  # [T, 1, d]
        cos, sin = emb.cos(), emb.sin()
        q = F.linear(x, w("q_proj.weight")).view(T, H, d)
        k = F.linear(x, w("k_proj.weight")).view(T, H, d)
        v = F.linear(x, w("v_proj.weight")).view(T, H, d).transpose(0, 1)  # [H, T, d]
        q = (q * cos + ref.rotate_half(q) * sin).transpose(0, 1)  # [H, T, d]
        k = (k * cos + ref.rotate_half(k) * sin).transpose(0, 1)
        scores = torch.matmul(q, k.transpose(1, 2)) * d ** -0.5  # [H, T, T]
        future = torch.ones(T, T, dtype=torch.bool).triu(1)
        attn = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        z = torch.matmul(attn, v).transpose(0, 1).reshape(T, H * d)  # [T, H*d]
        return F.linear(z, w("score.weight"), w("score.bias"))  # [T, Hkv]

    def keep(self, layer: int, x: torch.Tensor, rule: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: [T, D] -> keep flags [T, Hkv] bool (p > threshold; sink tokens always kept)."""
        kept = self.probabilities(layer, x, rule) > self.threshold
        kept[: self.sink_tokens] = True
        return kept


def rule_features(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q [H, T, hd], k [Hkv, T, hd] (a layer's queries and keys after RoPE) -> [T, Hkv, 2]: per
    key j, log(1e-6 + the attention j receives from every query in the causal softmax, averaged
    over the KV head's query heads) and log(max(1, T - j)). Written out with the whole [H, T, T]
    map (agate and agate_gates compute it in query blocks)."""
    H, T, hd = q.shape
    G = k.shape[0]
    kk = k.float().repeat_interleave(H // G, dim=0)  # [H, T, hd]: query head h reads KV head h // (H/G)
    scores = torch.matmul(q.float(), kk.transpose(1, 2)) / hd ** 0.5  # [H, T, T]
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    received = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1).sum(1)  # [H, T]
    f0 = torch.log(received.view(G, H // G, T).mean(1) + 1e-6).t()  # [T, G]
    f1 = torch.log((T - torch.arange(T)).clamp(min=1).float())[:, None].expand(T, G)
    return torch.stack((f0, f1), dim=-1)


def layer_qk(model: ref.CausalLM, x: torch.Tensor, layer: int, cos: torch.Tensor, sin: torch.Tensor):
    """x [1, T, D] (normed) -> the base layer's q [H, T, hd] and k [Hkv, T, hd] after RoPE."""
    T, hd = x.shape[1], model.cfg.head_dim
    p = f"model.layers.{layer}.self_attn."
    q = model._linear(x, p + "q_proj").view(1, T, -1, hd).transpose(1, 2)[0]
    k = model._linear(x, p + "k_proj").view(1, T, -1, hd).transpose(1, 2)[0]
    return q * cos + ref.rotate_half(q) * sin, k * cos + ref.rotate_half(k) * sin


def visibility_mask(kept: torch.Tensor, n_rep: int, recent_window: int, window: Optional[int],
                    dtype: torch.dtype) -> torch.Tensor:
    """kept [T, Hkv] -> additive mask [1, H, T, T] (0 visible, finfo.min hidden); query head h
    reads KV head h // n_rep."""
    T = kept.shape[0]
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    allowed = j <= i
    if window is not None:
        allowed = allowed & (i - j < window)
    always = j == i
    if recent_window > 0:
        always = always | (i - j < recent_window)
    visible = allowed & (always | kept.t()[:, None, :])  # [Hkv, T, T]
    visible = visible.repeat_interleave(n_rep, dim=0)  # [H, T, T]
    mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, torch.finfo(dtype).min)
    return mask[None]


@torch.inference_mode()
def gated_keep_flags(model: ref.CausalLM, gates: KVGates, tokens: List[int]) -> torch.Tensor:
    """The gated prefill forward, layer by layer -> kept [L, Hkv, T] bool."""
    cfg = model.cfg
    T = len(tokens)
    h = F.embedding(torch.tensor([tokens], dtype=torch.int64), model.embed)  # [1, T, D]
    cos, sin = model.rope_cos_sin(T)
    flags = []
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        x = ref.rms_norm(h, model.w[p + "input_layernorm.weight"], cfg.rms_norm_eps, model.acc)
        rule = rule_features(*layer_qk(model, x, l, cos, sin)) if gates.rule == "attention" else None
        kept = gates.keep(l, x[0], rule)  # [T, Hkv]
        flags.append(kept.t())
        mask = visibility_mask(kept, model.n_rep, gates.recent_window, cfg.layer_windows[l], model.dtype)
        h = h + model.attention(x, l, cos, sin, mask)
        y = ref.rms_norm(h, model.w[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps, model.acc)
        h = h + model.mlp(y, l)
    return torch.stack(flags)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF-layout base model folder")
    ap.add_argument("--gates", required=True, help="agate export folder (kvgate_config.json, gates.safetensors)")
    ap.add_argument("--tokens", required=True, help="comma-separated prompt token ids, e.g. 1,5,9")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="model compute dtype (agate generate --dtype); the gates run in float32")
    ap.add_argument("--out", help="write the JSON here instead of printing it")
    ap.add_argument("--no-fingerprint", action="store_true",
                    help="skip the check that MODEL is the base the gates were trained on")
    args = ap.parse_args(argv)

    ids = [int(t) for t in args.tokens.split(",") if t.strip()]
    if not ids:
        ap.error("--tokens is empty")
    model = ref.load_model(args.model, ref.DTYPES[args.dtype])
    if any(not 0 <= t < model.cfg.vocab_size for t in ids):
        ap.error(f"token ids must lie in [0, {model.cfg.vocab_size})")
    gates = KVGates(args.gates, model.cfg)
    if not args.no_fingerprint:
        want, have = gates.meta["base_model"].get("weights_fingerprint"), weights_fingerprint(args.model)
        if want != have:
            sys.exit(f"{args.gates}: gates were trained on base weights {want}, {args.model} has {have}")
    if os.path.exists(os.path.join(args.gates, "lora.safetensors")):
        print("[kvgate_reference] ignoring lora.safetensors (as agate generate does)", file=sys.stderr)

    kept = gated_keep_flags(model, gates, ids).to(torch.int64)  # [L, Hkv, T]
    out = json.dumps({"tokens": ids, "kept": kept.tolist(), "keep_ratio": kept.double().mean().item()},
                     separators=(",", ":"))
    if args.out:
        with open(args.out, "w") as f:
            f.write(out + "\n")
    else:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
