#!/usr/bin/env python3
"""Independent reference forward pass for HF-layout Llama / Mistral / Qwen2 causal LMs.

This module re-implements, with plain PyTorch ops and no dependency on `transformers` or
`safetensors`, the forward of

    transformers.LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM
    (attn_implementation="eager", no KV cache, no padding, positions 0..T-1)

following HF's equations and HF's dtype choreography op for op, so that in float32 it
should agree with HF to float32 rounding, and in bfloat16 it performs the same sequence of
bf16-rounded ops as HF eager does on the same torch build.

It is the oracle that tests/fixtures/models/* were generated with (tools/gen_model_fixtures.py)
and the Python peer of the forward benchmark (tools/bench_forward.py).

Contents
  * safetensors reader/writer (by hand), sharded checkpoints via model.safetensors.index.json
  * ModelConfig: config.json parsing with HF's defaults (incl. transformers-v5 `rope_parameters`)
  * compute_inv_freq: RoPE inverse frequencies (default / linear / llama3)
  * CausalLM: the forward pass
  * CLI:  .venv/bin/python tools/llama_reference.py --model DIR --tokens 1,2,3 [--dtype bfloat16]
          -> {"tokens": [...], "logprobs": [log p(tok[t+1] | tok[:t+1]) for t in 0..n-2], "total": sum}

Shapes: B batch, T sequence, D hidden, H query heads, G key/value heads, Hd head_dim,
I intermediate, V vocab.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------

# safetensors dtype tag -> torch dtype. BF16 is read through int16 storage then re-viewed.
ST_TO_TORCH: Dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
TORCH_TO_ST: Dict[torch.dtype, str] = {v: k for k, v in ST_TO_TORCH.items()}

# dtypes torch.frombuffer cannot produce directly on old torch: read as same-width int.
_STORAGE_VIEW = {torch.bfloat16: torch.int16, torch.bool: torch.uint8}

if sys.byteorder != "little":  # safetensors is little-endian; so is every host we care about
    raise RuntimeError("llama_reference.py assumes a little-endian host")


def _itemsize(dt: torch.dtype) -> int:
    return torch.empty((), dtype=dt).element_size()


def read_file_bytes(path: str) -> bytearray:
    """Read a whole file into a fresh (writable) bytearray with a single readinto()."""
    size = os.path.getsize(path)
    buf = bytearray(size)
    with open(path, "rb") as f:
        got = f.readinto(buf)
    if got != size:
        raise IOError(f"{path}: short read ({got} of {size} bytes)")
    return buf


def parse_safetensors(
    raw: bytearray, name: str = "<buffer>"
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Parse a safetensors image held in `raw`.

    Returned tensors alias `raw` (zero-copy) unless their byte offset is misaligned for their
    dtype, in which case they are cloned. Returns (tensors, __metadata__)."""
    if len(raw) < 8:
        raise ValueError(f"{name}: too small to be a safetensors file")
    (hlen,) = struct.unpack_from("<Q", raw, 0)
    if 8 + hlen > len(raw):
        raise ValueError(f"{name}: header length {hlen} exceeds file size {len(raw)}")
    header = json.loads(bytes(raw[8 : 8 + hlen]).decode("utf-8"))
    metadata = header.pop("__metadata__", None) or {}
    base = 8 + hlen
    data_len = len(raw) - base
    out: Dict[str, torch.Tensor] = {}
    for tname, info in header.items():
        st_dtype = info["dtype"]
        if st_dtype not in ST_TO_TORCH:
            raise ValueError(f"{name}: tensor {tname!r} has unsupported dtype {st_dtype}")
        dtype = ST_TO_TORCH[st_dtype]
        shape = [int(s) for s in info["shape"]]
        begin, end = (int(x) for x in info["data_offsets"])
        numel = math.prod(shape)
        nbytes = numel * _itemsize(dtype)
        if not (0 <= begin <= end <= data_len) or end - begin != nbytes:
            raise ValueError(
                f"{name}: tensor {tname!r} offsets [{begin},{end}) inconsistent with "
                f"dtype {st_dtype} shape {shape} (data section {data_len} bytes)"
            )
        if numel == 0:
            out[tname] = torch.empty(shape, dtype=dtype)
            continue
        read_dtype = _STORAGE_VIEW.get(dtype, dtype)
        t = torch.frombuffer(raw, dtype=read_dtype, count=numel, offset=base + begin)
        if read_dtype != dtype:
            t = t.view(dtype)
        if t.data_ptr() % _itemsize(dtype) != 0:
            t = t.clone()  # misaligned in the file: take an aligned copy
        out[tname] = t.reshape(shape)
    return out, {str(k): str(v) for k, v in metadata.items()}


def read_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """Read one .safetensors file. Returns (name -> tensor, __metadata__)."""
    return parse_safetensors(read_file_bytes(path), path)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    if t.dtype in _STORAGE_VIEW:
        t = t.view(_STORAGE_VIEW[t.dtype])
    return t.numpy().tobytes()


def write_safetensors(
    path: str, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None
) -> int:
    """Write `tensors` to `path` in safetensors format. Returns the file size.

    Tensors are laid out by decreasing element size, then by name (as the reference
    `safetensors` library does), so every tensor's data is naturally aligned given the
    8-byte-aligned data section."""
    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs: List[bytes] = []
    offset = 0
    for n in order:
        t = tensors[n]
        if t.dtype not in TORCH_TO_ST:
            raise ValueError(f"tensor {n!r}: dtype {t.dtype} not supported by the writer")
        blob = _tensor_bytes(t)
        header[n] = {
            "dtype": TORCH_TO_ST[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    hjson = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hjson += b" " * ((-len(hjson)) % 8)  # pad with spaces to a multiple of 8
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for blob in blobs:
            f.write(blob)
    return 8 + len(hjson) + offset


INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def checkpoint_files(model_dir: str) -> List[str]:
    """The safetensors files that make up the checkpoint in `model_dir` (sharded or not)."""
    index = os.path.join(model_dir, INDEX_NAME)
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        return [os.path.join(model_dir, fn) for fn in sorted(set(weight_map.values()))]
    single = os.path.join(model_dir, SINGLE_NAME)
    if os.path.exists(single):
        return [single]
    raise FileNotFoundError(f"{model_dir}: neither {INDEX_NAME} nor {SINGLE_NAME} found")


def load_checkpoint(model_dir: str) -> Dict[str, torch.Tensor]:
    """All tensors of the checkpoint in `model_dir`; follows model.safetensors.index.json
    (`{"metadata": {...}, "weight_map": {tensor_name: file_name}}`) when present."""
    index = os.path.join(model_dir, INDEX_NAME)
    if not os.path.exists(index):
        return read_safetensors(checkpoint_files(model_dir)[0])[0]
    with open(index) as f:
        weight_map: Dict[str, str] = json.load(f)["weight_map"]
    by_file: Dict[str, List[str]] = {}
    for tname, fn in weight_map.items():
        by_file.setdefault(fn, []).append(tname)
    out: Dict[str, torch.Tensor] = {}
    for fn, names in sorted(by_file.items()):
        shard, _ = read_safetensors(os.path.join(model_dir, fn))
        for tname in names:
            if tname not in shard:
                raise KeyError(f"{fn}: index maps {tname!r} here but the shard lacks it")
            out[tname] = shard[tname]
    return out


# --------------------------------------------------------------------------------------
# config.json
# --------------------------------------------------------------------------------------

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclass
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_type: str  # "default" | "linear" | "llama3"
    rope_params: Dict[str, object]  # merged rope_scaling / rope_parameters dict
    tie_word_embeddings: bool
    qkv_bias: bool  # bias on q_proj, k_proj, v_proj
    o_bias: bool  # bias on o_proj
    mlp_bias: bool  # bias on gate/up/down (llama `mlp_bias`)
    layer_windows: List[Optional[int]] = field(default_factory=list)  # per-layer sliding window

    @staticmethod
    def from_dict(d: Dict[str, object]) -> "ModelConfig":
        mt = d.get("model_type")
        if mt not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"model_type {mt!r} not supported (want one of {SUPPORTED_MODEL_TYPES})")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} not supported (only silu)")

        hidden = int(d["hidden_size"])
        heads = int(d["num_attention_heads"])
        kv = d.get("num_key_value_heads")
        kv = heads if kv is None else int(kv)
        # HF: `getattr(config, "head_dim", None) or hidden_size // num_attention_heads`
        head_dim = d.get("head_dim") or hidden // heads
        if heads % kv != 0:
            raise ValueError(f"num_attention_heads {heads} not a multiple of num_key_value_heads {kv}")

        # RoPE: transformers v4 writes `rope_theta` + `rope_scaling`; v5 writes `rope_parameters`
        # (which carries rope_theta itself). Merge both, v5 keys winning.
        rope_params: Dict[str, object] = {}
        for key in ("rope_scaling", "rope_parameters"):
            v = d.get(key)
            if v:
                if not isinstance(v, dict) or any(isinstance(x, dict) for x in v.values()):
                    raise ValueError(f"{key}={v!r}: only a flat dict is supported")
                rope_params.update(v)
        rope_type = str(rope_params.get("rope_type", rope_params.get("type", "default")))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(f"rope_type {rope_type!r} not supported (want one of {SUPPORTED_ROPE_TYPES})")
        rope_theta = float(rope_params.get("rope_theta", d.get("rope_theta", 10000.0)))
        prf = rope_params.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
        if float(prf) != 1.0:
            raise ValueError("partial_rotary_factor != 1 not supported")

        n_layers = int(d["num_hidden_layers"])
        if mt == "llama":
            qkv_bias = o_bias = bool(d.get("attention_bias", False))
            mlp_bias = bool(d.get("mlp_bias", False))
            windows: List[Optional[int]] = [None] * n_layers
        elif mt == "mistral":
            qkv_bias = o_bias = mlp_bias = False
            sw = d.get("sliding_window")
            windows = [int(sw) if sw else None] * n_layers
        else:  # qwen2
            qkv_bias, o_bias, mlp_bias = True, False, False
            # Qwen2Config: sliding_window = sliding_window if use_sliding_window else None;
            # layer_types (if absent) = sliding for layers i >= max_window_layers.
            sw = d.get("sliding_window") if d.get("use_sliding_window", False) else None
            layer_types = d.get("layer_types")
            if layer_types is None:
                mwl = int(d.get("max_window_layers", 28))
                layer_types = [
                    "sliding_attention" if sw is not None and i >= mwl else "full_attention"
                    for i in range(n_layers)
                ]
            windows = [int(sw) if (sw and lt == "sliding_attention") else None for lt in layer_types]

        return ModelConfig(
            model_type=mt,
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=n_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            head_dim=int(head_dim),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_type=rope_type,
            rope_params=rope_params,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=mlp_bias,
            layer_windows=windows,
        )

    @staticmethod
    def from_file(path: str) -> "ModelConfig":
        with open(path) as f:
            return ModelConfig.from_dict(json.load(f))

    def expected_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Every tensor the checkpoint must contain, with its shape."""
        D, I, V = self.hidden_size, self.intermediate_size, self.vocab_size
        qd = self.num_attention_heads * self.head_dim
        kvd = self.num_key_value_heads * self.head_dim
        s: Dict[str, Tuple[int, ...]] = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
        if not self.tie_word_embeddings:
            s["lm_head.weight"] = (V, D)
        for i in range(self.num_hidden_layers):
            p = f"model.layers.{i}."
            s[p + "input_layernorm.weight"] = (D,)
            s[p + "post_attention_layernorm.weight"] = (D,)
            for n, (o, k) in {"q": (qd, D), "k": (kvd, D), "v": (kvd, D), "o": (D, qd)}.items():
                s[p + f"self_attn.{n}_proj.weight"] = (o, k)
                if (n != "o" and self.qkv_bias) or (n == "o" and self.o_bias):
                    s[p + f"self_attn.{n}_proj.bias"] = (o,)
            for n, (o, k) in {"gate": (I, D), "up": (I, D), "down": (D, I)}.items():
                s[p + f"mlp.{n}_proj.weight"] = (o, k)
                if self.mlp_bias:
                    s[p + f"mlp.{n}_proj.bias"] = (o,)
        return s


# --------------------------------------------------------------------------------------
# RoPE
# --------------------------------------------------------------------------------------


def compute_inv_freq(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """RoPE inverse frequencies [Hd/2] as HF's ROPE_INIT_FUNCTIONS compute them (HF: fp32)."""
    dim = cfg.head_dim
    base = cfg.rope_theta
    # default: 1 / base^(2i/dim), computed in fp32 exactly as HF does
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype) / dim))
    p = cfg.rope_params
    if cfg.rope_type == "linear":
        inv_freq = inv_freq / float(p["factor"])
    elif cfg.rope_type == "llama3":
        factor = float(p["factor"])
        low_freq_factor = float(p["low_freq_factor"])
        high_freq_factor = float(p["high_freq_factor"])
        old_context_len = p["original_max_position_embeddings"]
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq  # fp32 [Hd/2]
        # long wavelengths (low freq): divide by factor; short (high freq): unchanged
        inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        # in between (high_freq_wavelen <= wavelen <= low_freq_wavelen): interpolate
        smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
        is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        inv_freq = torch.where(is_medium, smoothed, inv_freq_llama)
    return inv_freq


def llama3_band_regimes(cfg: ModelConfig) -> Dict[str, int]:
    """How many RoPE frequency bands fall in each llama3 regime (diagnostics only)."""
    p = cfg.rope_params
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    wl = 2 * math.pi / inv
    lo = p["original_max_position_embeddings"] / p["low_freq_factor"]
    hi = p["original_max_position_embeddings"] / p["high_freq_factor"]
    return {
        "high_freq_kept": int((wl < hi).sum()),
        "medium_smoothed": int(((wl >= hi) & (wl <= lo)).sum()),
        "low_freq_scaled": int((wl > lo).sum()),
    }


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """[..., Hd] -> [..., Hd]: (x1, x2) -> (-x2, x1) with x1, x2 the two halves."""
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


# --------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float,
             acc: torch.dtype = torch.float32) -> torch.Tensor:
    """HF LlamaRMSNorm: normalise in fp32 (`acc`), cast back to the input dtype, then scale."""
    in_dtype = x.dtype
    xf = x.to(acc)  # [B, T, D]
    var = xf.pow(2).mean(-1, keepdim=True)  # [B, T, 1]
    xf = xf * torch.rsqrt(var + eps)
    return weight * xf.to(in_dtype)


class CausalLM:
    """Eager HF-semantics forward of a Llama/Mistral/Qwen2 causal LM.

    All weights are converted to `dtype` once, at construction (like
    `from_pretrained(torch_dtype=dtype)`); inv_freq is cached (an HF buffer). Per forward we
    recompute, as HF does, cos/sin and the additive attention mask.

    dtype float32 / bfloat16 / float16 reproduce HF eager exactly: RMSNorm, softmax and RoPE
    run in fp32. dtype float64 is NOT an HF mode: it is a high-precision oracle that runs
    those steps in float64 too (HF would silently drop them to fp32)."""

    def __init__(self, cfg: ModelConfig, weights: Dict[str, torch.Tensor], dtype: torch.dtype):
        self.cfg = cfg
        self.dtype = dtype
        expected = cfg.expected_shapes()
        missing = [n for n in expected if n not in weights]
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:5]}")
        for n, shp in expected.items():
            if tuple(weights[n].shape) != shp:
                raise ValueError(f"{n}: shape {tuple(weights[n].shape)}, config implies {shp}")
        # HF ignores (and warns about) unexpected keys; so do we.
        unexpected = sorted(set(weights) - set(expected))
        if unexpected:
            print(f"[llama_reference] ignoring {len(unexpected)} unexpected tensors, e.g. {unexpected[:3]}",
                  file=sys.stderr)

        def conv(t: torch.Tensor) -> torch.Tensor:
            # no copy when the stored dtype already matches (the tensor aliases the file image)
            return t.to(dtype).contiguous()

        self.w: Dict[str, torch.Tensor] = {n: conv(weights[n]) for n in expected}
        self.embed = self.w["model.embed_tokens.weight"]  # [V, D]
        self.lm_head = self.embed if cfg.tie_word_embeddings else self.w["lm_head.weight"]  # [V, D]
        # precision of HF's internal upcasts (fp32), or float64 throughout for the oracle mode
        self.acc = torch.float64 if dtype == torch.float64 else torch.float32
        self.inv_freq = compute_inv_freq(cfg, self.acc)  # fp32 [Hd/2]
        self.scaling = cfg.head_dim ** -0.5
        self.n_rep = cfg.num_attention_heads // cfg.num_key_value_heads

    # -- per-forward helpers ----------------------------------------------------------

    def rope_cos_sin(self, T: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: [T, Hd] in the activation dtype (computed in fp32, then cast)."""
        pos = torch.arange(T, dtype=torch.int64).to(self.acc)  # [T]
        freqs = pos[:, None] * self.inv_freq[None, :]  # [T, Hd/2] fp32
        emb = torch.cat((freqs, freqs), dim=-1)  # [T, Hd]
        return emb.cos().to(self.dtype), emb.sin().to(self.dtype)

    def additive_mask(self, T: int, window: Optional[int]) -> torch.Tensor:
        """[1, 1, T, T] in the activation dtype: 0 where key j is visible to query i
        (j <= i, and i - j < window if a sliding window is set), finfo.min elsewhere."""
        i = torch.arange(T)[:, None]
        j = torch.arange(T)[None, :]
        visible = j <= i
        if window is not None:
            visible = visible & (j > i - window)
        mask = torch.zeros((T, T), dtype=self.dtype)
        mask.masked_fill_(~visible, torch.finfo(self.dtype).min)
        return mask[None, None]

    # -- blocks -------------------------------------------------------------------------

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.w[name + ".weight"], self.w.get(name + ".bias"))

    def attention(self, x: torch.Tensor, li: int, cos: torch.Tensor, sin: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
        """x: [B, T, D] (already normed) -> [B, T, D]."""
        cfg = self.cfg
        B, T, _ = x.shape
        Hd = cfg.head_dim
        p = f"model.layers.{li}.self_attn."
        q = self._linear(x, p + "q_proj").view(B, T, -1, Hd).transpose(1, 2)  # [B, H, T, Hd]
        k = self._linear(x, p + "k_proj").view(B, T, -1, Hd).transpose(1, 2)  # [B, G, T, Hd]
        v = self._linear(x, p + "v_proj").view(B, T, -1, Hd).transpose(1, 2)  # [B, G, T, Hd]

        # RoPE (cos/sin: [T, Hd], broadcast over batch and heads)
        q = (q * cos) + (rotate_half(q) * sin)
        k = (k * cos) + (rotate_half(k) * sin)

        # repeat_kv: kv head g serves query heads g*n_rep .. g*n_rep + n_rep - 1
        if self.n_rep > 1:
            G = k.shape[1]
            k = k[:, :, None].expand(B, G, self.n_rep, T, Hd).reshape(B, G * self.n_rep, T, Hd)
            v = v[:, :, None].expand(B, G, self.n_rep, T, Hd).reshape(B, G * self.n_rep, T, Hd)

        scores = torch.matmul(q, k.transpose(2, 3)) * self.scaling  # [B, H, T, T]
        scores = scores + mask
        probs = F.softmax(scores, dim=-1, dtype=self.acc).to(q.dtype)  # [B, H, T, T]
        out = torch.matmul(probs, v)  # [B, H, T, Hd]
        out = out.transpose(1, 2).reshape(B, T, -1)  # [B, T, H*Hd]
        return self._linear(out, p + "o_proj")  # [B, T, D]

    def mlp(self, x: torch.Tensor, li: int) -> torch.Tensor:
        """SwiGLU: down(silu(gate(x)) * up(x)); x: [B, T, D] -> [B, T, D]."""
        p = f"model.layers.{li}.mlp."
        return self._linear(F.silu(self._linear(x, p + "gate_proj")) * self._linear(x, p + "up_proj"),
                            p + "down_proj")

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: int64 [B, T] -> logits fp32 [B, T, V] (float64 in oracle mode)."""
        cfg = self.cfg
        B, T = tokens.shape
        x = F.embedding(tokens, self.embed)  # [B, T, D]
        cos, sin = self.rope_cos_sin(T)  # [T, Hd] each
        masks: Dict[Optional[int], torch.Tensor] = {}
        for li in range(cfg.num_hidden_layers):
            window = cfg.layer_windows[li]
            if window not in masks:
                masks[window] = self.additive_mask(T, window)  # [1, 1, T, T]
            p = f"model.layers.{li}."
            h = rms_norm(x, self.w[p + "input_layernorm.weight"], cfg.rms_norm_eps, self.acc)
            x = x + self.attention(h, li, cos, sin, masks[window])
            h = rms_norm(x, self.w[p + "post_attention_layernorm.weight"], cfg.rms_norm_eps, self.acc)
            x = x + self.mlp(h, li)
        x = rms_norm(x, self.w["model.norm.weight"], cfg.rms_norm_eps, self.acc)  # [B, T, D]
        # fp32 logits (float64 in oracle mode)
        return F.linear(x, self.lm_head).to(self.acc)  # [B, T, V]

    __call__ = forward


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}  # float64: oracle mode, see CausalLM


def load_model(model_dir: str, dtype: torch.dtype = torch.float32) -> CausalLM:
    cfg = ModelConfig.from_file(os.path.join(model_dir, "config.json"))
    return CausalLM(cfg, load_checkpoint(model_dir), dtype)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """logits fp32 [T, V], tokens [T] -> [T-1]: log p(tokens[t+1] | tokens[:t+1])."""
    lp = torch.log_softmax(logits[:-1].float(), dim=-1)  # [T-1, V]
    return lp.gather(-1, tokens[1:, None]).squeeze(-1)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF-layout model directory")
    ap.add_argument("--tokens", required=True, help="comma-separated token ids, e.g. 1,2,3")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    args = ap.parse_args(argv)

    ids = [int(t) for t in args.tokens.split(",") if t.strip()]
    if not ids:
        ap.error("--tokens is empty")
    model = load_model(args.model, DTYPES[args.dtype])
    V = model.cfg.vocab_size
    if any(not 0 <= t < V for t in ids):
        ap.error(f"token ids must lie in [0, {V})")
    tokens = torch.tensor(ids, dtype=torch.int64)
    logits = model.forward(tokens[None])[0]  # [T, V]
    lps = token_logprobs(logits, tokens).tolist()
    print(json.dumps({"tokens": ids, "logprobs": lps, "total": float(sum(lps))}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
