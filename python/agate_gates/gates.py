"""The gates as torch modules: keep probabilities [B, T, Hkv] from a layer's normalised input.

Same computation as tools/kvgate_reference.py and agate's src/gate/ (float32 throughout):
  attention  q, k, v = x W^T viewed [B, T, heads, head_dim]; the base model's RoPE (theta and
             scaling) at the gate's head_dim on q and k; causal softmax attention, scale
             1/sqrt(head_dim); p = sigmoid(concat(heads) Ws^T + bs)
  mlp        p = sigmoid(fc2(gelu(fc1(x))))   (exact erf GELU)
x is the layer's input_layernorm output, i.e. what feeds q/k/v (the `hidden_states` that a
transformers attention module, and so a kvpress press hook, receives).
With gate.rule_feature "attention" the logit gets + sum_f rule_features(q, k)[..., f] * rule.weight[h, f]
before the sigmoid (rule_features below; q, k the base layer's own, after RoPE).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .export import GateExport, GateExportError


def rope_inv_freq(hf_config: Any, head_dim: int) -> torch.Tensor:
    """The base model's RoPE inverse frequencies [head_dim/2] float32 at `head_dim` (default,
    linear and llama3 scaling, as transformers computes them)."""
    params: Dict[str, Any] = {}
    for key in ("rope_scaling", "rope_parameters"):  # transformers v4 / v5 (v5 keys win)
        v = getattr(hf_config, key, None) if not isinstance(hf_config, dict) else hf_config.get(key)
        if isinstance(v, dict):
            params.update(v)
    get = (lambda k, d=None: hf_config.get(k, d)) if isinstance(hf_config, dict) else (lambda k, d=None: getattr(hf_config, k, d))
    rope_type = str(params.get("rope_type", params.get("type", "default")))
    theta = float(params.get("rope_theta", get("rope_theta", 10000.0) or 10000.0))
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim))
    if rope_type == "default":
        return inv
    if rope_type == "linear":
        return inv / float(params["factor"])
    if rope_type == "llama3":
        factor, lo, hi = float(params["factor"]), float(params["low_freq_factor"]), float(params["high_freq_factor"])
        old = params["original_max_position_embeddings"]
        lo_wl, hi_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        inv_l = torch.where(wl > lo_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
        medium = ~(wl < hi_wl) * ~(wl > lo_wl)
        return torch.where(medium, smoothed, inv_l)
    raise GateExportError("model config", f"rope_type {rope_type!r} is not supported by agate's gates",
                          "agate supports default, linear and llama3 RoPE")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rule_features(q: torch.Tensor, k: torch.Tensor, block: int = 256) -> torch.Tensor:
    """The rule feature of agate's src/gate/rule_feature.cpp for a whole context: q [B, H, T, hd],
    k [B, Hkv, T, hd] (the base layer's queries and keys after RoPE) -> [B, T, Hkv, 2] float32:
    log(1e-6 + attention each key receives from the queries, summed over them in the layer's
    causal softmax (scale 1/sqrt(hd)), averaged over the KV head's query group) and
    log(max(1, T - j)). Query rows in blocks bound the memory."""
    B, H, T, hd = q.shape
    Hkv = k.shape[1]
    qg = q.float().reshape(B, Hkv, H // Hkv, T, hd)
    kf = k.float()[:, :, None]  # [B, Hkv, 1, T, hd]
    received = torch.zeros(B, Hkv, H // Hkv, T, device=q.device)
    kpos = torch.arange(T, device=q.device)
    for s in range(0, T, block):
        e = min(T, s + block)
        scores = torch.matmul(qg[..., s:e, :], kf.transpose(-1, -2)) / math.sqrt(hd)  # [B, Hkv, G, e-s, T]
        future = kpos[None, :] > torch.arange(s, e, device=q.device)[:, None]
        received += torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1).sum(-2)
    seen = (T - kpos).clamp(min=1).float().log()
    f = torch.stack((torch.log(received.mean(2) + 1e-6), seen.expand(B, Hkv, T)), dim=-1)  # [B, Hkv, T, 2]
    return f.transpose(1, 2)


class GateModule(nn.Module):
    """One layer's gate: forward(x [B, T, D], positions [T] or None) -> keep probabilities
    [B, T, Hkv] float32. positions are the tokens' absolute positions (RoPE; default 0..T-1)."""

    def __init__(self, export: GateExport, layer: int, inv_freq: Optional[torch.Tensor] = None):
        super().__init__()
        g = export.gate
        self.type, self.layer = g.type, layer
        self.heads, self.head_dim = g.heads, g.head_dim
        parts = {part: export.tensor(layer, part).clone() for part in
                 (("q_proj.weight", "k_proj.weight", "v_proj.weight", "score.weight", "score.bias")
                  if g.type == "attention" else ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"))}
        if g.rule_feature == "attention":
            parts["rule.weight"] = export.tensor(layer, "rule.weight").clone()
        self.rule_feature = g.rule_feature
        for name, t in parts.items():
            self.register_buffer(name.replace(".", "_"), t)
        if g.type == "attention":
            if inv_freq is None:
                raise ValueError("an attention gate needs the base model's RoPE (inv_freq)")
            self.register_buffer("inv_freq", inv_freq.to(torch.float32).clone())

    def forward(self, x: torch.Tensor, positions: Optional[torch.Tensor] = None,
                rule: Optional[torch.Tensor] = None) -> torch.Tensor:
        """rule: rule_features(...) [B, T, Hkv, 2], required with a rule feature."""
        z = self.logits(x.to(torch.float32), positions)
        if self.rule_feature != "none":
            if rule is None:
                raise ValueError("these gates read a rule feature: pass rule=rule_features(q, k) of the base layer")
            z = z + (rule.to(z.device) * self.rule_weight).sum(-1)
        return torch.sigmoid(z)

    def logits(self, x: torch.Tensor, positions: Optional[torch.Tensor]) -> torch.Tensor:
        if self.type == "mlp":
            return F.linear(F.gelu(F.linear(x, self.fc1_weight, self.fc1_bias)), self.fc2_weight, self.fc2_bias)
        B, T, _ = x.shape
        H, d = self.heads, self.head_dim
        if positions is None:
            positions = torch.arange(T, device=x.device)
        freqs = positions.to(device=x.device, dtype=torch.float32)[:, None] * self.inv_freq[None, :]  # [T, d/2]
        emb = torch.cat((freqs, freqs), dim=-1)[None, :, None, :]  # [1, T, 1, d]
        cos, sin = emb.cos(), emb.sin()
        q = F.linear(x, self.q_proj_weight).view(B, T, H, d)
        k = F.linear(x, self.k_proj_weight).view(B, T, H, d)
        v = F.linear(x, self.v_proj_weight).view(B, T, H, d).transpose(1, 2)  # [B, H, T, d]
        q = (q * cos + _rotate_half(q) * sin).transpose(1, 2)
        k = (k * cos + _rotate_half(k) * sin).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * d ** -0.5  # [B, H, T, T]
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        attn = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
        z = torch.matmul(attn, v).transpose(1, 2).reshape(B, T, H * d)
        return F.linear(z, self.score_weight, self.score_bias)  # [B, T, Hkv] logits


class Gates(nn.Module):
    """Every layer's GateModule of one export. `probabilities(l, x, positions)` -> [B, T, Hkv];
    `keep(l, x, positions)` -> bool flags [B, T, Hkv] (p > threshold; positions < sink_tokens kept)."""

    def __init__(self, export: GateExport, hf_config: Any = None):
        super().__init__()
        self.export = export
        self.threshold = export.gate.threshold
        self.sink_tokens = export.gate.sink_tokens
        self.recent_window = export.gate.recent_window
        inv = None
        if export.gate.type == "attention":
            if hf_config is None:
                raise ValueError("attention gates need the base model's config (for RoPE)")
            cfg = getattr(hf_config, "text_config", None) or hf_config
            inv = rope_inv_freq(cfg, export.gate.head_dim)
        self.layers = nn.ModuleList(GateModule(export, l, inv) for l in range(export.num_layers))

    def probabilities(self, layer: int, x: torch.Tensor, positions: Optional[torch.Tensor] = None,
                      rule: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.layers[layer](x, positions, rule)

    def flags(self, p: torch.Tensor, positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """p [B, T, Hkv] -> keep flags [B, T, Hkv] bool."""
        T = p.shape[1]
        if positions is None:
            positions = torch.arange(T, device=p.device)
        return (p > self.threshold) | (positions.to(p.device) < self.sink_tokens)[None, :, None]

    def keep(self, layer: int, x: torch.Tensor, positions: Optional[torch.Tensor] = None,
             rule: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.flags(self.probabilities(layer, x, positions, rule), positions)
