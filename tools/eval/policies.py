"""The policies under evaluation (kvpress presses and AgatePress) and how they are applied.

Every press is applied by kvpress's own code: its `forward_hook` (BasePress.forward_hook ->
press.compress, the function `with press(model):` registers on each attention module), called
on the inputs that hook receives during a full-attention prefill. kvpress compresses a layer's
cache *after* that layer's attention has run, so the prefill's activations never depend on the
press: one prefill per sample is captured (`Prefill`) and every press x budget is replayed on a
fresh copy of its cache (`Prefill.compressed`). This equals running `with press(model):
model.model(ctx)` per press (checked per run: `verify_*` in tasks.py, and in the test), at one
prefill per sample instead of one per press and budget.

KVzipPress is the exception (it runs its own reconstruction forward passes after the prefill):
it runs through its own context manager once per sample, its scores are kept, and each budget's
eviction is kvpress's own `KVzipPress.compress_post` on those scores (`KVzipScores`).

Budgets (kvpress's definitions; compression_ratio = 1 - keep): every ScorerPress keeps
max(1, int(T x keep)) entries per KV head in every layer (`compute_n_kept`; StreamingLLM:
int(T x keep)); PyramidKV moves budget between layers (more at the bottom, beta 20, window 64)
at the same total; AdaKVPress keeps the layer's total Hkv x n_kept but splits it across KV
heads by the scores (alpha safeguard 0.2: each head keeps >= 20% of n_kept), masking evicted
entries instead of dropping them; KVzip ranks all layers and heads together (one global
budget). AgatePress fixed ratio: top n_kept per KV head by keep probability (sinks first);
AdaKVPress(AgatePress): Ada's per-head split of the same scores; AgatePress flags mode: the
gates' own variable budget (reported with its measured keep ratio).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Optional

import torch
from transformers import DynamicCache


@dataclasses.dataclass
class Policy:
    name: str                      # row label
    family: str                    # "full", "kvpress" (training-free), "agate"
    make: Callable[[float], object]  # keep ratio -> press (None: no press)
    keep_free: bool = False        # one run per sample, not per keep (full cache, gates' flags)
    kvzip: bool = False
    note: str = ""


GATE_WINDOW = 32  # the protected window of the AgatePress-w rows: agate eval --window's default


def build_policies(gates_dir: Optional[str], model_dir: Optional[str], names: Optional[List[str]] = None,
                   kvzip: bool = True, agate_verify_weights: bool = True) -> List[Policy]:
    from kvpress import (AdaKVPress, ExpectedAttentionPress, KnormPress, PyramidKVPress, SnapKVPress,
                         StreamingLLMPress, TOVAPress)
    cr = lambda keep: round(1.0 - keep, 10)  # noqa: E731
    pols = [
        Policy("full", "full", lambda keep: None, keep_free=True, note="no press: the full cache"),
        Policy("StreamingLLM", "kvpress", lambda k: StreamingLLMPress(compression_ratio=cr(k))),
        Policy("SnapKV", "kvpress", lambda k: SnapKVPress(compression_ratio=cr(k))),
        Policy("Ada-SnapKV", "kvpress", lambda k: AdaKVPress(SnapKVPress(compression_ratio=cr(k)))),
        Policy("PyramidKV", "kvpress", lambda k: PyramidKVPress(compression_ratio=cr(k))),
        Policy("TOVA", "kvpress", lambda k: TOVAPress(compression_ratio=cr(k))),
        Policy("Knorm", "kvpress", lambda k: KnormPress(compression_ratio=cr(k))),
        Policy("ExpectedAttention", "kvpress", lambda k: ExpectedAttentionPress(compression_ratio=cr(k))),
    ]
    if kvzip:
        pols.append(Policy("KVzip", "kvpress", lambda k: cr(k), kvzip=True,
                           note="global budget over layers and heads (layerwise=False)"))
    if gates_dir:
        from agate_gates import AgatePress, load_export
        export = load_export(gates_dir)
        mk = lambda r, w=0: AgatePress(export, compression_ratio=r, model_dir=model_dir,  # noqa: E731
                                       verify_weights=agate_verify_weights, window=w)
        w = GATE_WINDOW
        pols += [
            Policy("AgatePress", "agate", lambda k: mk(cr(k))),
            Policy("Ada-AgatePress", "agate", lambda k: AdaKVPress(mk(cr(k)))),
            Policy(f"AgatePress-w{w}", "agate", lambda k: mk(cr(k), w),
                   note=f"the last {w} tokens protected and counted, as agate eval's gate-rank (--window {w})"),
            Policy(f"Ada-AgatePress-w{w}", "agate", lambda k: AdaKVPress(mk(cr(k), w))),
            Policy("AgatePress-flags", "agate", lambda k: mk(None), keep_free=True,
                   note="the gates' own flags (compression_ratio=None): variable budget"),
        ]
    if names:
        keep = {n.lower() for n in names}
        pols = [p for p in pols if p.name.lower() in keep or p.family == "full"]
    return pols


def attention_modules(model):
    lm = model.model.language_model if hasattr(model.model, "language_model") else model.model
    return [layer.self_attn for layer in lm.layers], lm


class Prefill:
    """One full-attention prefill of `ids` ([1, T]) through model.model, with the inputs kvpress's
    forward hook receives captured per layer; `compressed(press)` replays the hook."""

    def __init__(self, model, ids: torch.Tensor):
        self.model = model
        self.ids = ids
        self.modules, lm = attention_modules(model)
        for m in self.modules:  # what BasePress.__call__ does before registering its hooks
            m.rotary_emb = lm.rotary_emb
            m.masked_key_indices = None
        self.calls = [None] * len(self.modules)

        def capture(module, args, kwargs, output):
            kw = dict(kwargs)
            kw.pop("past_key_values", None)
            self.calls[module.layer_idx] = (kw, output)
            return output

        hooks = [m.register_forward_hook(capture, with_kwargs=True) for m in self.modules]
        cache = DynamicCache()
        try:
            with torch.no_grad():
                out = model.model(input_ids=ids, past_key_values=cache)
        finally:
            for h in hooks:
                h.remove()
        self.last_hidden = out.last_hidden_state[:, -1:]
        self.kv = [(cache.layers[l].keys, cache.layers[l].values) for l in range(len(self.modules))]
        self.length = ids.shape[1]

    def fresh_cache(self) -> DynamicCache:
        cache = DynamicCache()
        for l, (k, v) in enumerate(self.kv):
            cache.update(k.clone(), v.clone(), l)
        for m in self.modules:
            m.masked_key_indices = None
        return cache

    @torch.no_grad()
    def compressed(self, press) -> DynamicCache:
        """A copy of the prefill's cache compressed by `press` exactly as `with press(model):`
        would have compressed it (None: the full cache)."""
        cache = self.fresh_cache()
        if press is None:
            return cache
        press.post_init_from_model(self.model)
        for m in self.modules:
            kw, output = self.calls[m.layer_idx]
            press.forward_hook(m, [], dict(kw, past_key_values=cache), output)
        return cache


class KVzipScores:
    """KVzipPress run once per sample through its own context manager (prefill + its context
    reconstruction), keeping its scores; `masks(cr)` then applies kvpress's own
    KVzipPress.compress_post at any compression ratio to a fresh copy of the prefill's cache.
    `prefix_length`: tokens before the context proper (KVzip reads the chat template's prefix
    from the tokenizer; 0 for raw text windows)."""

    def __init__(self, model, ids: torch.Tensor, prefix_length: Optional[int] = None):
        from kvpress import KVzipPress
        import logging
        logging.getLogger("kvpress.presses.kvzip_press").setLevel(logging.ERROR)

        holder = {}

        class _Capture(KVzipPress):
            def prepare(self, model, tokenizer, prev_postfix_size=8):
                if prefix_length is not None:
                    self.prefix_length = prefix_length
                return super().prepare(model, tokenizer, prev_postfix_size)

            def compress_post(self, model):
                holder["scores"] = self.score_val.clone()
                super().compress_post(model)

        press = _Capture(compression_ratio=0.5)
        cache = DynamicCache()
        with torch.no_grad(), press(model):
            model.model(input_ids=ids, past_key_values=cache)
        self.scores = holder["scores"]
        self.model = model
        self.KVzipPress = KVzipPress

    def apply(self, prefill: Prefill, compression_ratio: float) -> DynamicCache:
        cache = prefill.fresh_cache()
        if compression_ratio > 0:
            press = self.KVzipPress(compression_ratio=compression_ratio)
            press.score_val = self.scores.clone()
            press.compress_post(self.model)
        return cache


def kept_fraction(cache: DynamicCache, modules, context_length: int) -> float:
    """Entries of the context kept, over every layer and KV head / (layers x Hkv x T): entries
    dropped from the cache and entries masked (kvpress's masked_key_indices) both count as evicted."""
    kept = total = 0
    for l, m in enumerate(modules):
        k = cache.layers[l].keys
        B, H, n, _ = k.shape
        masked = getattr(m, "masked_key_indices", None)
        nm = int(masked[0].numel()) if masked is not None else 0
        kept += B * H * min(n, context_length) - nm
        total += B * H * context_length
    return kept / total


def snapshot(cache: DynamicCache, modules) -> dict:
    """A compressed cache and its head-wise masks (kvpress keeps those on the attention modules,
    where the next press would overwrite them), detached from the modules."""
    return {"kv": [(cache.layers[l].keys, cache.layers[l].values) for l in range(len(modules))],
            "masks": [getattr(m, "masked_key_indices", None) for m in modules]}


def batch_caches(snaps: List[dict], modules) -> DynamicCache:
    """Stacks several compressed caches (snapshot()) along the batch: every layer padded to the
    longest layer of any of them with zero entries, and padding plus each cache's own masked entries masked through
    kvpress's head-wise mechanism (module.masked_key_indices with the row as batch index; their
    attention weight is exactly 0). Row i then attends exactly to what cache i kept."""
    cache = DynamicCache()
    n = max(s["kv"][l][0].shape[2] for s in snaps for l in range(len(modules)))  # one length for all layers
    for l, m in enumerate(modules):
        ks, vs, bi, hi, si = [], [], [], [], []
        for row, s in enumerate(snaps):
            k, v = s["kv"][l]
            _, H, have, D = k.shape
            if have < n:
                k = torch.cat([k, k.new_zeros(1, H, n - have, D)], dim=2)
                v = torch.cat([v, v.new_zeros(1, H, n - have, D)], dim=2)
                bi.append(torch.full((H * (n - have),), row, dtype=torch.long))
                hi.append(torch.arange(H).repeat_interleave(n - have))
                si.append(torch.arange(have, n).repeat(H))
            old = s["masks"][l]
            if old is not None:
                bi.append(torch.full_like(old[0], row).long().cpu())
                hi.append(old[1].long().cpu())
                si.append(old[2].long().cpu())
            ks.append(k)
            vs.append(v)
        cache.update(torch.cat(ks), torch.cat(vs), l)
        m.masked_key_indices = (torch.cat(bi), torch.cat(hi), torch.cat(si)) if bi else None
    return cache


def equalize_lengths(cache: DynamicCache, modules) -> None:
    """Makes every layer's cache as long as the longest (PyramidKV keeps a different number per
    layer, and transformers 5.2 builds one attention mask for all layers, so a multi-token
    forward over such a cache fails): shorter layers are padded with zero entries that are
    masked through kvpress's head-wise mechanism (masked_key_indices: fake keys whose attention
    weight is exactly 0), so attention equals the unpadded cache's."""
    lengths = [cache.layers[l].keys.shape[2] for l in range(len(modules))]
    n = max(lengths)
    if min(lengths) == n:
        return
    for l, m in enumerate(modules):
        k, v = cache.layers[l].keys, cache.layers[l].values
        B, H, have, D = k.shape
        if have == n:
            continue
        pad = n - have
        cache.layers[l].keys = torch.cat([k, k.new_zeros(B, H, pad, D)], dim=2)
        cache.layers[l].values = torch.cat([v, v.new_zeros(B, H, pad, D)], dim=2)
        b = torch.arange(B).repeat_interleave(H * pad)
        h = torch.arange(H).repeat_interleave(pad).repeat(B)
        s = torch.arange(have, n).repeat(B * H)
        old = getattr(m, "masked_key_indices", None)
        if old is not None:
            b, h, s = (torch.cat([o.to(x.device), x]) for o, x in zip(old, (b, h, s)))
        m.masked_key_indices = (b, h, s)
