"""Loading and validating an agate gate export (`agate export RUN --out DIR`).

An export folder holds `kvgate_config.json` and `gates.safetensors` (float32 tensors
`model.layers.{l}.self_attn.kv_gate.*`; docs/formats.md and the README's "Export and inference").
Everything wrong is refused with a GateExportError: one line naming the file and the problem,
then a hint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional

import torch

from .fingerprint import weights_fingerprint

CONFIG_FILE = "kvgate_config.json"
RULE_FEATURES = ("none", "attention")
GATES_FILE = "gates.safetensors"
LORA_FILE = "lora.safetensors"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
LORA_REFUSAL = "LoRA exports are not supported by AgatePress yet"


class GateExportError(ValueError):
    """An export (or a model next to it) that agate_gates refuses; str() is one line with a hint."""

    def __init__(self, where: str, problem: str, hint: str = ""):
        self.where, self.problem, self.hint = where, problem, hint
        super().__init__(f"{where}: {problem}" + (f" (hint: {hint})" if hint else ""))


@dataclasses.dataclass
class GateConfig:
    type: str              # "attention" or "mlp"
    heads: int             # attention gate: heads
    head_dim: int          # attention gate: width per head (RoPE at this width)
    mlp_hidden: int        # mlp gate: hidden width
    threshold: float       # keep iff p > threshold
    sink_tokens: int       # the first sink_tokens positions are always kept
    recent_window: int     # an evicted entry stays visible to the next recent_window - 1 queries (gated prefill only)
    estimator: str = "ste"
    rule_feature: str = "none"  # "attention": the logit also weighs the attention each key receives (gates.rule_features)


@dataclasses.dataclass
class GateExport:
    """A validated export: its folder, parsed config and float32 gate tensors (on the CPU)."""

    path: str
    config: Dict[str, Any]
    gate: GateConfig
    base_model: Dict[str, Any]
    tensors: Dict[str, torch.Tensor]

    @property
    def num_layers(self) -> int:
        return int(self.base_model["num_hidden_layers"])

    @property
    def num_kv_heads(self) -> int:
        return int(self.base_model["num_key_value_heads"])

    def tensor(self, layer: int, part: str) -> torch.Tensor:
        return self.tensors[f"model.layers.{layer}.self_attn.kv_gate.{part}"]


def expected_shapes(gate: GateConfig, base: Dict[str, Any]) -> Dict[str, tuple]:
    """Per-layer tensor suffix -> shape, for a gate config and base model shape."""
    D, Hkv = int(base["hidden_size"]), int(base["num_key_value_heads"])
    if gate.type == "attention":
        w = gate.heads * gate.head_dim
        shapes = {"q_proj.weight": (w, D), "k_proj.weight": (w, D), "v_proj.weight": (w, D),
                  "score.weight": (Hkv, w), "score.bias": (Hkv,)}
    else:
        shapes = {"fc1.weight": (gate.mlp_hidden, D), "fc1.bias": (gate.mlp_hidden,),
                  "fc2.weight": (Hkv, gate.mlp_hidden), "fc2.bias": (Hkv,)}
    if gate.rule_feature == "attention":
        shapes["rule.weight"] = (Hkv, 2)
    return shapes


def _int(cfg_path: str, section: Dict[str, Any], name: str, key: str, minimum: int) -> int:
    v = section.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise GateExportError(cfg_path, f"{name}.{key} must be an integer >= {minimum}, found {v!r}",
                              "re-export the run with agate export")
    return v


def load_export(export_dir: str) -> GateExport:
    """Reads and validates an agate export folder; raises GateExportError on anything wrong."""
    export_dir = os.fspath(export_dir)
    if not os.path.isdir(export_dir):
        raise GateExportError(export_dir, "is not a folder", "pass the folder written by `agate export RUN --out DIR`")
    cfg_path = os.path.join(export_dir, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise GateExportError(export_dir, f"has no {CONFIG_FILE}", "pass the folder written by `agate export RUN --out DIR`")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GateExportError(cfg_path, f"is not valid JSON ({e})", "re-export the run with agate export") from None
    if not isinstance(cfg, dict) or cfg.get("format") != "agate-kvgate" or cfg.get("version") != 1:
        fmt = (cfg.get("format"), cfg.get("version")) if isinstance(cfg, dict) else None
        raise GateExportError(cfg_path, f"is not an agate-kvgate version 1 export (format, version = {fmt})",
                              "this package reads version 1; re-export with a matching agate")
    g, base = cfg.get("gate"), cfg.get("base_model")
    if not isinstance(g, dict) or not isinstance(base, dict):
        raise GateExportError(cfg_path, "lacks the \"gate\" or \"base_model\" section", "re-export the run with agate export")

    # LoRA: the gates were trained next to adapters; the gates alone would be half the model.
    if os.path.exists(os.path.join(export_dir, LORA_FILE)) or cfg.get("lora"):
        raise GateExportError(export_dir, f"{LORA_REFUSAL}: this export carries LoRA adapters ({LORA_FILE}) "
                              "that the gates were trained with", "use agate generate/eval, or export a run trained without LoRA")

    gtype = g.get("type")
    if gtype not in ("attention", "mlp"):
        raise GateExportError(cfg_path, f"gate.type {gtype!r} is not supported", "agate exports attention or mlp gates")
    rule = g.get("rule_feature", "none")
    if rule not in RULE_FEATURES:
        raise GateExportError(cfg_path, f"gate.rule_feature {rule!r} is not supported",
                              f"agate exports {' or '.join(RULE_FEATURES)}; re-export with a matching agate")
    thr = g.get("threshold")
    if isinstance(thr, bool) or not isinstance(thr, (int, float)) or not 0 < thr < 1:
        raise GateExportError(cfg_path, f"gate.threshold must be in (0, 1), found {thr!r}", "re-export the run with agate export")
    gate = GateConfig(type=gtype,
                      heads=_int(cfg_path, g, "gate", "heads", 1 if gtype == "attention" else 0),
                      head_dim=_int(cfg_path, g, "gate", "head_dim", 2 if gtype == "attention" else 0),
                      mlp_hidden=_int(cfg_path, g, "gate", "mlp_hidden", 1 if gtype == "mlp" else 0),
                      threshold=float(thr),
                      sink_tokens=_int(cfg_path, g, "gate", "sink_tokens", 0),
                      recent_window=_int(cfg_path, g, "gate", "recent_window", 0),
                      estimator=str(g.get("estimator", "ste")), rule_feature=rule)
    if gtype == "attention" and gate.head_dim % 2:
        raise GateExportError(cfg_path, f"gate.head_dim must be even (RoPE rotates pairs), found {gate.head_dim}",
                              "re-export the run with agate export")
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim"):
        _int(cfg_path, base, "base_model", key, 1)
    if base.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise GateExportError(cfg_path, f"base_model.model_type {base.get('model_type')!r} is not supported",
                              f"agate trains gates for {', '.join(SUPPORTED_MODEL_TYPES)}")
    fp = base.get("weights_fingerprint")
    if not isinstance(fp, str) or not fp.startswith("0x"):
        raise GateExportError(cfg_path, f"base_model.weights_fingerprint is missing or malformed ({fp!r})",
                              "re-export the run with agate export")

    st_path = os.path.join(export_dir, GATES_FILE)
    if not os.path.isfile(st_path):
        raise GateExportError(export_dir, f"has no {GATES_FILE}", "pass the folder written by `agate export RUN --out DIR`")
    try:
        from safetensors.torch import load_file
        tensors = load_file(st_path, device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError, OSError, ...
        msg = " ".join(str(e).split()) or type(e).__name__
        raise GateExportError(st_path, f"is not a readable safetensors file ({msg})",
                              "the file is damaged or truncated; re-export the run with agate export") from None
    want = expected_shapes(gate, base)
    L = int(base["num_hidden_layers"])
    names = {f"model.layers.{l}.self_attn.kv_gate.{part}": shape for l in range(L) for part, shape in want.items()}
    for name, shape in names.items():
        t = tensors.get(name)
        if t is None:
            raise GateExportError(st_path, f"lacks tensor {name} (an {gtype} gate for {L} layers needs {len(names)})",
                                  "the export does not match its kvgate_config.json; re-export the run")
        if tuple(t.shape) != shape:
            raise GateExportError(st_path, f"tensor {name} has shape {list(t.shape)}, expected {list(shape)}",
                                  "the export does not match its kvgate_config.json; re-export the run")
        if t.dtype != torch.float32:
            raise GateExportError(st_path, f"tensor {name} is {t.dtype}, agate exports float32",
                                  "re-export the run with agate export")
    extra = sorted(set(tensors) - set(names))
    if extra:
        raise GateExportError(st_path, f"holds {len(extra)} tensor(s) that an {gtype} gate for {L} layers does not have, "
                              f"e.g. {extra[0]}", "the export does not match its kvgate_config.json (layer count?); re-export")
    return GateExport(path=export_dir, config=cfg, gate=gate, base_model=base, tensors=tensors)


def _model_head_dim(config) -> int:
    hd = getattr(config, "head_dim", None)
    return int(hd) if hd else config.hidden_size // config.num_attention_heads


def check_model(export: GateExport, hf_model, model_dir: Optional[str] = None) -> None:
    """Refuses (GateExportError) a transformers model the gates were not trained for: architecture,
    layer count, hidden size, attention / KV heads, head_dim; and, when the model's weights folder
    is given, agate's weights fingerprint of it against the export's."""
    config = getattr(hf_model, "config", hf_model)
    config = getattr(config, "text_config", None) or config
    mt = getattr(config, "model_type", None)
    if mt != export.base_model["model_type"]:
        raise GateExportError(export.path, f"the gates are for a {export.base_model['model_type']} model, this one is {mt}",
                              "use the base model the gates were trained on")
    have = {"num_hidden_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
            "num_attention_heads": config.num_attention_heads,
            "num_key_value_heads": getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
            "head_dim": _model_head_dim(config)}
    for key, value in have.items():
        if int(export.base_model[key]) != int(value):
            raise GateExportError(export.path, f"the gates were trained for a base model with {key} = "
                                  f"{export.base_model[key]}, this one has {value}",
                                  f"use the base model the gates were trained on ({export.base_model.get('path', '?')})")
    if model_dir is not None:
        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise GateExportError(os.fspath(model_dir), "has no config.json", "pass the base model's weights folder")
        fp = weights_fingerprint(model_dir)
        want = export.base_model["weights_fingerprint"]
        if fp != want:
            raise GateExportError(export.path, f"the gates were trained on base weights {want}, '{model_dir}' has {fp}",
                                  "same shape but other weights: use the base model the gates were trained on")
