#!/usr/bin/env python3
"""kvpress as the oracle of agate's training-free eviction policies.

For each pair (agate policy <-> kvpress 0.5.5 press), prompt and keep ratio R, this compares
  * the KV entries each keeps, per layer and KV head: agate's from
    `agate generate --tokens CTX --policy P --keep R --kvpress-compat --max-new 1 --flags-out F`,
    kvpress's recovered from the press itself (the pruned keys it returns are matched against
    the full keys; AdaKVPress's masked_key_indices), with compression_ratio = 1 - R;
  * the log-likelihood of a continuation after compression: agate's from
    `agate score --tokens CTX+CONT --context T --policy P --keep R --kvpress-compat`,
    kvpress's from the compressed DynamicCache, the continuation fed token by token at positions
    T, T+1, ... (PyramidKV's layers hold different lengths, which a multi-token forward refuses).

Ties: kvpress ranks by its own scores (captured from the press's `score`). Where agate's kept set
differs from kvpress's at a (layer, head), every differing entry must score within TIE_TOL of the
selection boundary (the n-th largest score; per head for SnapKV/PyramidKV/StreamingLLM, across
the layer's heads for AdaKV): the two programs compute the same scores in float32 along
different kernels (HF recomputes the window's queries from the hidden states), so a near-tie may
fall either way. Such a (layer, head) counts as a tie, not a disagreement. The continuation
log-likelihoods must agree within LL_TOL nats where every kept set agrees exactly.

  kvpress_oracle.py AGATE_BINARY SOURCE_DIR --model random|smollm2 [--json FILE]

random: a small random Llama (transformers LlamaConfig, save_pretrained into a temp folder);
smollm2: models/smollm2-135m-instruct (prompts tokenized with its HF tokenizer). Exit 77 (ctest's
SKIP) with a message when torch/transformers/kvpress or the model folder are absent.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

SKIP = 77
TIE_TOL = 1e-4   # relative to the boundary score (plus 1e-7 absolute)
LL_TOL = 2e-3    # nats, summed over the continuation

# Public-domain text (Jane Austen) for SmolLM2's prompts.
TEXTS = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want "
    "of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
    "the rightful property of some one or other of their daughters. My dear Mr. Bennet, said his lady to him one "
    "day, have you heard that Netherfield Park is let at last? Mr. Bennet replied that he had not. But it is, "
    "returned she; for Mrs. Long has just been here, and she told me all about it. Mr. Bennet made no answer. "
    "Do you not want to know who has taken it? cried his wife impatiently.",
    "The family of Dashwood had long been settled in Sussex. Their estate was large, and their residence was at "
    "Norland Park, in the centre of their property, where, for many generations, they had lived in so respectable "
    "a manner as to engage the general good opinion of their surrounding acquaintance. The late owner of this "
    "estate was a single man, who lived to a very advanced age, and who for many years of his life, had a constant "
    "companion and housekeeper in his sister. But her death, which happened ten years before his own, produced a "
    "great alteration in his home; for to supply her loss, he invited and received into his house the family of "
    "his nephew Mr. Henry Dashwood.",
]


def skip(msg):
    print("SKIP: " + msg)
    sys.exit(SKIP)


try:
    import torch
    import transformers
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging
    import kvpress
    from kvpress import AdaKVPress, PyramidKVPress, SnapKVPress, StreamingLLMPress
except ImportError as e:  # the venv of scripts/setup.sh has them all
    skip(f"kvpress oracle needs torch, transformers and kvpress ({e}); run scripts/setup.sh")

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()


# ---- the pairs ------------------------------------------------------------------------------

def press_for(policy, cr, s):
    if policy == "streamingllm":
        return StreamingLLMPress(compression_ratio=cr, n_sink=s["sinks"])
    if policy == "snapkv":
        return SnapKVPress(compression_ratio=cr, window_size=s["window"], kernel_size=s["kernel"])
    if policy == "ada-snapkv":
        return AdaKVPress(SnapKVPress(compression_ratio=cr, window_size=s["window"], kernel_size=s["kernel"]),
                          alpha_safeguard=s["alpha"])
    if policy == "pyramidkv":
        return PyramidKVPress(compression_ratio=cr, window_size=s["window"], kernel_size=s["kernel"], beta=s["beta"])
    raise ValueError(policy)


def agate_flags(s, compat=True):
    return (["--kvpress-compat"] if compat else ["--pooling", "avg"]) + ["--window", str(s["window"]), "--kernel", str(s["kernel"]), "--beta", str(s["beta"]),
            "--sinks", str(s["sinks"]), "--alpha", str(s["alpha"])]


# ---- kvpress's side -------------------------------------------------------------------------

def kvpress_run(model, press, ctx, cont):
    """Kept positions per layer and KV head, the scores kvpress ranked, and the continuation's LL."""
    kept, scores = {}, {}
    scorer = press.press if isinstance(press, AdaKVPress) else press
    orig_score, orig_compress = scorer.score, press.compress

    def score(module, *a, **k):
        s = orig_score(module, *a, **k)
        scores[module.layer_idx] = s  # AdaKV's safeguard later edits it in place: what it ranks
        return s

    def compress(module, hidden_states, keys, values, attentions, kwargs):
        k2, v2 = orig_compress(module, hidden_states, keys, values, attentions, kwargs)
        H, T = keys.shape[1], keys.shape[2]
        if isinstance(press, AdaKVPress):
            masked = module.masked_key_indices
            sets = [set(range(T)) for _ in range(H)]
            for h, p in zip(masked[1].tolist(), masked[2].tolist()):
                sets[h].discard(p)
        else:  # the pruned keys are rows of the full keys: find each one
            sets = []
            for h in range(H):
                match = (k2[0, h][:, None, :] == keys[0, h][None, :, :]).all(-1)  # [n, T]
                assert bool((match.sum(1) == 1).all()), "a kept key matches no (or several) positions"
                sets.append(set(match.float().argmax(1).tolist()))
        kept[module.layer_idx] = sets
        return k2, v2

    scorer.score, press.compress = score, compress
    cache = DynamicCache()
    T = ctx.shape[1]
    with torch.no_grad():
        with press(model):
            logits = [model(input_ids=ctx, past_key_values=cache).logits[0, -1]]
        for i in range(cont.shape[1] - 1):  # token by token: PyramidKV's layers differ in length
            out = model(input_ids=cont[:, i:i + 1], past_key_values=cache, position_ids=torch.tensor([[T + i]]))
            logits.append(out.logits[0, -1])
    lp = torch.log_softmax(torch.stack(logits).float(), -1).gather(1, cont[0].unsqueeze(1))
    for layer in list(model.model.layers):
        layer.self_attn.masked_key_indices = None
    return kept, {l: s[0].float() for l, s in scores.items()}, float(lp.sum())


# ---- agate's side ---------------------------------------------------------------------------

def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed ({p.returncode}): {p.stderr.strip()}")
    return p.stdout


def agate_run(agate, model_dir, policy, keep, s, ctx, cont, tmp, compat):
    ids = ",".join(map(str, ctx))
    flags_file = os.path.join(tmp, "flags.json")
    common = ["--model", model_dir, "--policy", policy, "--keep", repr(keep), "--threads", "2"] + agate_flags(s, compat)
    run([agate, "generate", "--tokens", ids, "--max-new", "1", "--flags-out", flags_file] + common)
    with open(flags_file) as f:
        kept = json.load(f)["kept"]
    sets = {l: [set(i for i, k in enumerate(row) if k) for row in layer] for l, layer in enumerate(kept)}
    scored = json.loads(run([agate, "score", "--tokens", ",".join(map(str, ctx + cont)), "--context", str(len(ctx))] + common))
    return sets, scored["total"]


def agate_full_ll(agate, model_dir, ctx, cont):
    out = run([agate, "score", "--model", model_dir, "--tokens", ",".join(map(str, ctx + cont)), "--context", str(len(ctx)),
               "--threads", "2"])
    return json.loads(out)["total"]


# ---- comparison -----------------------------------------------------------------------------

def near(x, thr):
    return abs(x - thr) <= TIE_TOL * abs(thr) + 1e-7


def compare(policy, a, k, scores):
    """Per (layer, head): 'exact', 'tie' or 'differ'; and the entries both keep / either keeps."""
    verdicts, common, total = [], 0, 0
    for l in sorted(k):
        H = len(k[l])
        s = scores.get(l)
        if policy == "ada-snapkv" and s is not None:
            n_layer = sum(len(x) for x in k[l])
            flat = s.reshape(-1)
            thr = float(flat.sort(descending=True).values[n_layer - 1]) if n_layer > 0 else float("inf")
        for h in range(H):
            A, K = a[l][h], k[l][h]
            common += len(A & K)
            total += len(A | K)
            if A == K:
                verdicts.append("exact")
                continue
            if s is None or len(A) != len(K):
                verdicts.append("differ")
                continue
            if policy != "ada-snapkv":
                thr = float(s[h].sort(descending=True).values[len(K) - 1])
            ok = all(near(float(s[h][p]), thr) for p in A ^ K)
            verdicts.append("tie" if ok else "differ")
    return verdicts, common, total


# ---- models and prompts ---------------------------------------------------------------------

def random_model(tmp):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=512, initializer_range=0.2,
                      tie_word_embeddings=False, rms_norm_eps=1e-5)
    path = os.path.join(tmp, "random-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    g = torch.Generator().manual_seed(1)
    prompts = []
    for T in (48, 64, 77):
        ids = torch.randint(1, cfg.vocab_size, (T + 8,), generator=g).tolist()
        prompts.append((ids[:T], ids[T:]))
    settings = {"window": 4, "kernel": 5, "beta": 20, "sinks": 4, "alpha": 0.2}
    return path, prompts, settings


def smollm2(src):
    path = os.path.join(src, "models", "smollm2-135m-instruct")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        skip(f"{path} is absent (scripts/get_model.sh smollm2 fetches it); the random-model part does not need it")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    prompts = []
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        T = len(ids) - 16
        prompts.append((ids[:T], ids[T:]))
    settings = {"window": 8, "kernel": 5, "beta": 20, "sinks": 4, "alpha": 0.2}
    return path, prompts, settings


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("agate")
    ap.add_argument("src")
    ap.add_argument("--model", choices=["random", "smollm2"], required=True)
    ap.add_argument("--keeps", default="0.25,0.5,0.75")
    ap.add_argument("--json", help="also write every case's numbers here")
    ap.add_argument("--agate-definitions", action="store_true",
                    help="measure agate's own definitions against kvpress (no --kvpress-compat, avg pooling): "
                         "reports the differences, never fails on them")
    args = ap.parse_args()
    keeps = [float(x) for x in args.keeps.split(",")]
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir, prompts, base = random_model(tmp) if args.model == "random" else smollm2(args.src)
        model = LlamaForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", dtype=torch.float32).eval()
        # PyramidKV twice: beta 20 (kvpress's default; at these lengths min < window, so kvpress
        # falls back to SnapKV's uniform budget) and beta 2 (the schedule itself).
        pairs = [("streamingllm", base), ("snapkv", base), ("ada-snapkv", base), ("pyramidkv", base),
                 ("pyramidkv", dict(base, beta=2))]
        cases, failures = [], []
        for pi, (ctx, cont) in enumerate(prompts):
            full_a = agate_full_ll(args.agate, model_dir, ctx, cont)
            with torch.no_grad():
                full_k = float(torch.log_softmax(model(input_ids=torch.tensor([ctx + cont])).logits[0].float(), -1)
                               [len(ctx) - 1:-1].gather(1, torch.tensor(cont).unsqueeze(1)).sum())
            if abs(full_a - full_k) > LL_TOL:
                failures.append(f"prompt {pi}: full-cache LL agate {full_a:.5f} vs HF {full_k:.5f}")
            for policy, s in pairs:
                for keep in keeps:
                    cr = 1.0 - keep
                    a_sets, a_ll = agate_run(args.agate, model_dir, policy, keep, s, ctx, cont, tmp, not args.agate_definitions)
                    k_sets, k_scores, k_ll = kvpress_run(model, press_for(policy, cr, s), torch.tensor([ctx]), torch.tensor([cont]))
                    verdicts, common, total = compare(policy, a_sets, k_sets, k_scores)
                    label = policy + ("" if s["beta"] == base["beta"] else f" (beta {s['beta']})")
                    case = {"policy": label, "prompt": pi, "T": len(ctx), "keep": keep, "exact": verdicts.count("exact"),
                            "tie": verdicts.count("tie"), "differ": verdicts.count("differ"), "heads": len(verdicts),
                            "common": common, "kept": total, "ll_agate": a_ll, "ll_kvpress": k_ll, "ll_full": full_a}
                    cases.append(case)
                    if case["differ"]:
                        failures.append(f"{label} prompt {pi} keep {keep}: {case['differ']} layer-heads keep different sets")
                    if case["exact"] == case["heads"] and abs(a_ll - k_ll) > LL_TOL:
                        failures.append(f"{label} prompt {pi} keep {keep}: continuation LL agate {a_ll:.5f} vs kvpress {k_ll:.5f}")
        # The table (README "kvpress agreement").
        print(f"agate's {'own' if args.agate_definitions else '--kvpress-compat'} definitions; model: {args.model} ({len(prompts)} prompts of {', '.join(str(len(c)) for c, _ in prompts)} tokens, "
              f"keep {args.keeps}, window {base['window']}, kernel {base['kernel']})")
        print("| policy <-> press | identical kept entries (both / either) | exact (layer, head) sets | ties | differ | max abs LL diff (nats) |")
        print("|---|---|---|---|---|---|")
        for label in dict.fromkeys(c["policy"] for c in cases):
            cs = [c for c in cases if c["policy"] == label]
            heads = sum(c["heads"] for c in cs)
            lls = [abs(c["ll_agate"] - c["ll_kvpress"]) for c in cs]
            print(f"| {label} | {sum(c['common'] for c in cs) / sum(c['kept'] for c in cs):.4f} | "
                  f"{sum(c['exact'] for c in cs)}/{heads} | {sum(c['tie'] for c in cs)} | {sum(c['differ'] for c in cs)} | "
                  f"{max(lls):.2e} |")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(cases, f, indent=1)
    if args.agate_definitions:
        return 0
    if failures:
        print("FAIL:\n  " + "\n  ".join(failures))
        return 1
    print(f"PASS: every kept set equals kvpress's or differs only at ties (within {TIE_TOL:g} of the boundary score); "
          f"continuation log-likelihoods within {LL_TOL:g} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
