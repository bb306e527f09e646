"""AgatePress: agate's learned gates as an NVIDIA kvpress press.

The press hook of a transformers attention module receives the module's input `hidden_states`,
i.e. the decoder layer's input_layernorm output (LlamaDecoderLayer: hidden_states =
input_layernorm(h); self_attn(hidden_states=...)), which is exactly what agate's gates read.
kvpress runs the whole prefill with full attention and compresses each layer's cache after
it: this is agate's `gate-post` deployment (the gates' flags applied after a full prefill).

Modes:
  compression_ratio=None (flags)  keep exactly what the gates flag: p > threshold, the first
      sink_tokens positions always kept; a different number per KV head. kvpress stores one
      cache length per layer, so evicted entries stay in the cache and are masked through
      kvpress's head-wise mechanism (module.masked_key_indices, as AdaKVPress does: at decode
      time their keys are replaced by fake keys whose attention weight is exactly 0). The
      attention result equals dropping them; memory is not saved. Needs a non-eager attention
      implementation (sdpa, flash), as AdaKVPress does.
  compression_ratio=r (fixed)     a ScorerPress: per KV head the top max(1, int(T (1 - r)))
      tokens by keep probability (kvpress's compute_n_kept); sink tokens score above every
      probability (2.0) so they are kept first. Works inside AdaKVPress(AgatePress(E, r)).
      window=W protects the last W tokens the same way (counted in the budget), as agate's
      `gate-rank` does with `agate eval --window` (default 0: probabilities alone).

`press.kept[layer]` ([B, Hkv, T] bool) and `press.probabilities[layer]` ([B, Hkv, T] float32)
hold what the last prefill decided (for inspection and tests).
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, Optional

import torch
from torch import nn

from kvpress.presses.scorer_press import ScorerPress
from kvpress.utils import compute_n_kept, get_prerope_query_states
from transformers.models.llama.modeling_llama import rotate_half

from .export import GateExport, GateExportError, check_model, load_export
from .gates import Gates, rule_features

SINK_SCORE = 2.0  # above any keep probability


class AgatePress(ScorerPress):
    """kvpress press scoring each KV head's tokens by agate's gates (see the module docstring)."""

    def __init__(self, export_dir, compression_ratio: Optional[float] = None, model_dir: Optional[str] = None,
                 verify_weights: bool = True, window: int = 0):
        """export_dir: an `agate export` folder (or a loaded GateExport). compression_ratio: None for
        the gates' own flags, else the fraction to evict per KV head. model_dir: the base model's
        weights folder for the fingerprint check (default: the model's name_or_path when it is a
        local folder); verify_weights=False skips that check. window: with compression_ratio,
        the last `window` tokens are kept before any other (protected and counted)."""
        if compression_ratio is not None and not 0 <= compression_ratio < 1:
            raise ValueError(f"compression_ratio must be None (the gates' flags) or in [0, 1), found {compression_ratio}")
        if not isinstance(window, int) or window < 0:
            raise ValueError(f"window must be a token count >= 0, found {window!r}")
        self.export: GateExport = export_dir if isinstance(export_dir, GateExport) else load_export(export_dir)
        self.export_dir = self.export.path
        self.compression_ratio = compression_ratio
        self.model_dir = model_dir
        self.verify_weights = verify_weights
        self.window = window
        self.gates: Optional[Gates] = None
        self._model_id: Optional[int] = None
        self.kept: Dict[int, torch.Tensor] = {}
        self.probabilities: Dict[int, torch.Tensor] = {}

    __eq__ = object.__eq__  # ScorerPress's dataclass equality would compare compression_ratio only
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return (f"AgatePress(export_dir={self.export_dir!r}, compression_ratio={self.compression_ratio!r}"
                + (f", window={self.window}" if self.window else "") + ")")

    # -- kvpress hooks --------------------------------------------------------------------------

    def post_init_from_model(self, model):
        if self._model_id == id(model) and self.gates is not None:
            return
        model_dir = self.model_dir
        if model_dir is None and self.verify_weights:
            name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
            if name and os.path.isfile(os.path.join(name, "config.json")):
                model_dir = name
        if self.verify_weights and model_dir is None:
            warnings.warn(f"AgatePress: the base weights fingerprint ({self.export.base_model['weights_fingerprint']}) "
                          "is not checked: the model was not loaded from a local folder; pass model_dir=", stacklevel=2)
        check_model(self.export, model, model_dir if self.verify_weights else None)
        device = next(model.parameters()).device
        self.gates = Gates(self.export, model.config).to(device).eval()
        self._model_id = id(model)

    @torch.no_grad()
    def score(self, module: nn.Module, hidden_states: torch.Tensor, keys, values, attentions, kwargs) -> torch.Tensor:
        """Keep probabilities [B, Hkv, T] (sink tokens and the protected window at 2.0)."""
        p, positions = self._probabilities(module, hidden_states, kwargs, keys)
        protected = positions < self.export.gate.sink_tokens
        if self.window:
            protected = protected | (torch.arange(p.shape[-1], device=p.device) >= p.shape[-1] - self.window)
        return p.masked_fill(protected[None, None, :], SINK_SCORE)

    @torch.no_grad()
    def compress(self, module: nn.Module, hidden_states: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                 attentions, kwargs):
        layer = module.layer_idx
        k_len = keys.shape[2]
        if self.compression_ratio is None:  # the gates' flags, per head
            if module.config._attn_implementation == "eager":
                raise GateExportError("AgatePress", "the flags mode (compression_ratio=None) masks evicted keys per "
                                      "KV head, which kvpress does not support with eager attention",
                                      "load the model with attn_implementation='sdpa'")
            p, positions = self._probabilities(module, hidden_states, kwargs, keys)
            kept = self.gates.flags(p.transpose(1, 2), positions).transpose(1, 2)  # [B, Hkv, T]
            self.kept[layer] = kept
            evicted = (~kept).nonzero(as_tuple=True)
            module.masked_key_indices = evicted if evicted[0].numel() else None
            return keys, values
        if self.compression_ratio == 0:
            self.kept[layer] = torch.ones(keys.shape[:3], dtype=torch.bool, device=keys.device)
            return keys, values
        scores = self.score(module, hidden_states, keys, values, attentions, kwargs)
        n_kept = compute_n_kept(k_len, self.compression_ratio)
        indices = scores.topk(n_kept, dim=-1).indices
        kept = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        self.kept[layer] = kept.scatter_(-1, indices, True)
        # The kept entries in their original order (kvpress's ScorerPress keeps topk's order;
        # the attention result does not depend on it).
        indices = indices.sort(dim=-1).values.unsqueeze(-1).expand(-1, -1, -1, module.head_dim)
        return keys.gather(2, indices).contiguous(), values.gather(2, indices).contiguous()

    # -- helpers --------------------------------------------------------------------------------

    def _rule_features(self, module, hidden_states, kwargs, keys):
        """The gates' rule feature from the layer's own queries (recomputed from hidden_states with
        kvpress's helper and RoPE, as SnapKVPress does) and the cache's keys (after RoPE)."""
        if self.export.gate.rule_feature == "none":
            return None
        if keys is None or keys.shape[2] != hidden_states.shape[1]:
            raise GateExportError("AgatePress", "gates with a rule feature score a whole prefill at once",
                                  "compress the context in one prefill (no chunked prefill or decoding press)")
        cos, sin = kwargs["position_embeddings"]
        q = get_prerope_query_states(module, hidden_states)  # [B, H, T, hd]
        q = q * cos.unsqueeze(1) + rotate_half(q) * sin.unsqueeze(1)
        return rule_features(q, keys)

    def _probabilities(self, module, hidden_states, kwargs, keys=None):
        if self.gates is None:
            raise GateExportError("AgatePress", "used before post_init_from_model", "apply it with `with press(model):`")
        if next(self.gates.buffers()).device != hidden_states.device:  # the model moved since post_init
            self.gates.to(hidden_states.device)
        T = hidden_states.shape[1]
        positions = kwargs.get("cache_position")
        if positions is None or positions.numel() != T:
            positions = torch.arange(T, device=hidden_states.device)
        rule = self._rule_features(module, hidden_states, kwargs, keys)
        p = self.gates.probabilities(module.layer_idx, hidden_states, positions, rule).transpose(1, 2)  # [B, Hkv, T]
        self.probabilities[module.layer_idx] = p
        return p, positions
