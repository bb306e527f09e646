"""The two tasks: retrieval (greedy answers through kvpress's pipeline) and continuation perplexity.

Both run every (policy, keep) on the same samples and return per-sample scores:
  runs[(policy name, keep)] = {"scores": [...], "kept": [...]}   (keep None for keep-free rows)
"""

from __future__ import annotations

import math
import random
import re
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

from policies import KVzipScores, Policy, Prefill, batch_caches, equalize_lengths, kept_fraction, snapshot

sys.path.insert(0, __import__("os").path.join(__import__("os").path.dirname(__file__), ".."))
import make_passkey  # noqa: E402  (tools/make_passkey.py: needles, phrasings, insertion)


class Progress:
    """Progress lines on stderr: samples done, elapsed, ETA."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.t0, self.done = label, total, time.time(), 0

    def step(self, extra: str = ""):
        self.done += 1
        el = time.time() - self.t0
        eta = el / self.done * (self.total - self.done)
        print(f"[{self.label}] {self.done}/{self.total} samples, elapsed {fmt_s(el)}, ETA {fmt_s(eta)}"
              + (f"  {extra}" if extra else ""), file=sys.stderr, flush=True)


def fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def run_keys(policies: Sequence[Policy], keeps: Sequence[float]):
    for p in policies:
        for k in ([None] if p.keep_free else keeps):
            yield p, k


# ---------------------------------------------------------------------------------- retrieval

def make_retrieval_samples(heldout, tokenizer, n: int, lengths: Sequence[int], depths: Sequence[float],
                           phrasings: Sequence[str], seed: int, digits: int = 5) -> List[dict]:
    """n haystacks of held-out text (about `length` tokens each, cut at sentence ends) with a
    fact inserted at a depth; the grid (length, depth, phrasing) is walked so every cell is
    covered as evenly as n allows; texts and values from a seeded RNG."""
    rng = random.Random(seed)
    stream = []
    for d in heldout.docs:
        stream.extend(d)
    out = []
    for i in range(n):
        length = lengths[i % len(lengths)]
        depth = depths[(i // len(lengths)) % len(depths)]
        phrasing = phrasings[(i // (len(lengths) * len(depths)) + i) % len(phrasings)]
        start = rng.randrange(0, len(stream) - length - 64)
        text = tokenizer.decode(stream[start:start + length + 48])
        spans = make_passkey.split_sentences(text)
        if len(spans) > 2:  # start after the first sentence end, stop at the last one within length
            text = text[spans[0][1]:].lstrip()
        ids = tokenizer.encode(text, add_special_tokens=False)[:length]
        text = tokenizer.decode(ids)
        spans = make_passkey.split_sentences(text)
        if len(spans) > 2 and not text.rstrip().endswith((".", "!", "?", ";")):
            text = text[:spans[-2][1]]
        text = text.strip()
        fact = make_passkey.needle(rng, phrasing, digits)
        hay, real_depth = make_passkey.insert_at_depth(text, fact["needle"], depth)
        out.append(dict(fact, haystack=hay, length=length, depth=depth, real_depth=real_depth,
                        tokens=len(tokenizer.encode(hay, add_special_tokens=False))))
    return out


def prompt_parts(sample: dict, setting: str):
    """(context, question) for the pipeline. aware: the question is the end of the compressed
    context, the pipeline's question is empty; agnostic: the context is the haystack alone and
    the question goes through the pipeline's `question=` (tokenized and fed after compression)."""
    q = "\n\n" + sample["question"]
    if setting == "aware":
        return sample["haystack"] + q, ""
    return sample["haystack"], q


def exact_match(answer: str, value: str) -> float:
    m = re.search(r"\d+", answer)
    return float(m is not None and m.group(0) == value)


@torch.no_grad()
def generate_batched(pipe, question_ids: torch.Tensor, cache, context_length: int, max_new_tokens: int,
                     rows: int) -> List[str]:
    """kvpress's KVPressTextGenerationPipeline.generate_answer for `rows` caches stacked along the
    batch (batch_caches): the question at positions T, T+1, ..., then greedy decoding, a row
    ending at the first end-of-sequence token the loop produces (as generate_answer's loop
    breaks), each answer decoded with skip_special_tokens."""
    model = pipe.model
    q = question_ids.expand(rows, -1)
    pos = torch.arange(context_length, context_length + q.shape[1]).unsqueeze(0).expand(rows, -1)
    out = model(input_ids=q, past_key_values=cache, position_ids=pos, logits_to_keep=1)
    pos = pos[:, -1:] + 1
    ids = [out.logits[:, -1].argmax(-1)]
    stop = model.generation_config.eos_token_id
    stop = set(stop if isinstance(stop, list) else [stop])
    done = torch.zeros(rows, dtype=torch.bool)
    ends = [None] * rows
    for i in range(max_new_tokens - 1):
        out = model(input_ids=ids[-1].unsqueeze(1), past_key_values=cache, position_ids=pos + i)
        new = out.logits[:, -1].argmax(-1)
        ids.append(new)
        for r in range(rows):
            if not done[r] and int(new[r]) in stop:
                done[r], ends[r] = True, len(ids)
        if bool(done.all()):
            break
    seq = torch.stack(ids, dim=1)
    return [str(pipe.tokenizer.decode(seq[r, :ends[r] or seq.shape[1]], skip_special_tokens=True)) for r in range(rows)]


def run_retrieval(pipe, policies: Sequence[Policy], keeps: Sequence[float], samples: List[dict], setting: str,
                  max_new_tokens: int, verify: int = 1, verify_keep: Optional[float] = None,
                  label: str = "retrieval", batch: int = 16) -> dict:
    """Every (policy, keep) on every sample. Per sample: one prefill, each press replayed on it
    (policies.Prefill), the answers decoded `batch` caches at a time (generate_batched)."""
    model = pipe.model
    runs: Dict[tuple, dict] = {(p.name, k): {"scores": [], "kept": [], "answers": []} for p, k in run_keys(policies, keeps)}
    checks = []
    prog = Progress(f"{label}-{setting}", len(samples))
    keys = list(run_keys(policies, keeps))
    for si, s in enumerate(samples):
        context, question = prompt_parts(s, setting)
        inp = pipe.preprocess(context, questions=[question], answer_prefix=s["answer_prefix"],
                              max_context_length=10 ** 9)
        ctx_ids, q_ids = inp["context_ids"], inp["questions_ids"][0]
        T = ctx_ids.shape[1]
        pre = Prefill(model, ctx_ids)
        kvz = None
        for c0 in range(0, len(keys), batch):
            chunk, snaps = keys[c0:c0 + batch], []
            for p, k in chunk:
                if p.kvzip:
                    if kvz is None:
                        kvz = KVzipScores(model, ctx_ids)
                    cache = kvz.apply(pre, p.make(k))
                else:
                    cache = pre.compressed(p.make(k))
                runs[(p.name, k)]["kept"].append(kept_fraction(cache, pre.modules, T))
                snaps.append(snapshot(cache, pre.modules))
            cache = batch_caches(snaps, pre.modules)
            answers = generate_batched(pipe, q_ids, cache, T, max_new_tokens, len(snaps))
            for (p, k), ans in zip(chunk, answers):
                r = runs[(p.name, k)]
                r["scores"].append(exact_match(ans, s["value"]))
                r["answers"].append(ans)
        for m in pre.modules:
            m.masked_key_indices = None
        if si < verify:
            checks.append(verify_pipeline(pipe, policies, keeps, runs, si, s, setting, max_new_tokens, verify_keep))
        full = runs[("full", None)]["scores"]
        prog.step(f"full cache {int(sum(full))}/{len(full)}")
    return {"runs": runs, "checks": checks}


def verify_pipeline(pipe, policies, keeps, runs, si, s, setting, max_new_tokens, verify_keep):
    """Sample si again through kvpress's own pipeline call, pipe(context, question=, press=), for
    every policy at verify_keep; the answers must equal the replayed ones."""
    vk = verify_keep if verify_keep is not None else keeps[len(keeps) // 2]
    context, question = prompt_parts(s, setting)
    out = {"sample": si, "setting": setting, "keep": vk, "same": [], "differ": [], "failed": {}}
    for p in policies:
        k = None if p.keep_free else vk
        press = p.make(k)
        if p.kvzip:
            from kvpress import KVzipPress
            press = KVzipPress(compression_ratio=press)
        try:
            with torch.no_grad():
                ans = pipe(context, question=question or None, answer_prefix=s["answer_prefix"], press=press,
                           max_new_tokens=max_new_tokens)["answer"]
        except Exception as e:  # noqa: BLE001 (recorded, e.g. PyramidKV's multi-token forward)
            out["failed"][p.name] = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
            continue
        mine = runs[(p.name, k)]["answers"][si]
        (out["same"] if ans == mine else out["differ"]).append(p.name if ans == mine else
                                                                 {"policy": p.name, "pipeline": ans, "replay": mine})
    print(f"[verify {setting}] sample {si} keep {vk}: {len(out['same'])} policies answer as kvpress's pipeline, "
          f"{len(out['differ'])} differ, {len(out['failed'])} fail in the pipeline "
          f"({', '.join(out['failed']) or '-'})", file=sys.stderr, flush=True)
    return out


# ---------------------------------------------------------------------------------- perplexity

@torch.no_grad()
def continuation_nll(model, cache, modules, cont: torch.Tensor, T: int) -> List[float]:
    """Feeds cont[:, :-1] at positions T, T+1, ... over the (compressed) cache and returns the NLL
    of cont[:, 1:] (teacher forced), one float per scored token."""
    equalize_lengths(cache, modules)
    x = cont[:, :-1]
    pos = torch.arange(T, T + x.shape[1]).unsqueeze(0)
    logits = model(input_ids=x, past_key_values=cache, position_ids=pos).logits.float()
    lp = torch.log_softmax(logits, dim=-1).gather(-1, cont[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (-lp[0]).tolist()


def run_ppl(model, policies: Sequence[Policy], keeps: Sequence[float], windows: List[dict], context: int,
            continuation: int, verify: int = 1, verify_keep: Optional[float] = None, label: str = "ppl") -> dict:
    runs: Dict[tuple, dict] = {(p.name, k): {"scores": [], "kept": []} for p, k in run_keys(policies, keeps)}
    checks = []
    prog = Progress(f"{label}-{context}", len(windows))
    for wi, w in enumerate(windows):
        ids = torch.tensor(w["ids"], dtype=torch.long).unsqueeze(0)
        ctx, cont = ids[:, :context], ids[:, context:context + continuation + 1]
        pre = Prefill(model, ctx)
        kvz = None
        for p, k in run_keys(policies, keeps):
            if p.kvzip:
                if kvz is None:
                    kvz = KVzipScores(model, ctx, prefix_length=0)
                cache = kvz.apply(pre, p.make(k))
            else:
                cache = pre.compressed(p.make(k))
            kept = kept_fraction(cache, pre.modules, context)
            nll = continuation_nll(model, cache, pre.modules, cont, context)
            runs[(p.name, k)]["scores"].append(sum(nll) / len(nll))
            runs[(p.name, k)]["kept"].append(kept)
        if wi < verify:
            checks.append(verify_ppl(model, pre, policies, keeps, runs, wi, ctx, cont, context, verify_keep))
        prog.step(f"full-cache ppl so far {math.exp(sum(runs[('full', None)]['scores']) / (wi + 1)):.2f}")
    return {"runs": runs, "checks": checks}


def verify_ppl(model, pre, policies, keeps, runs, wi, ctx, cont, T, verify_keep):
    """Window wi again with each press applied by kvpress's own context manager (`with
    press(model): model.model(ctx)`, one prefill per press) at verify_keep, and each
    keep-dependent press at compression 0 (replayed): the NLL must equal the replay's and, at
    compression 0, the full cache's."""
    from transformers import DynamicCache
    vk = verify_keep if verify_keep is not None else keeps[len(keeps) // 2]
    full = runs[("full", None)]["scores"][wi]
    out = {"window": wi, "keep": vk, "press_vs_replay": {}, "compression0_vs_full": {}}
    for p in policies:
        if p.kvzip or p.family == "full":
            continue
        k = None if p.keep_free else vk
        press = p.make(k)
        cache = DynamicCache()
        with torch.no_grad(), press(model):
            model.model(input_ids=ctx, past_key_values=cache)
        nll = continuation_nll(model, cache, pre.modules, cont, T)
        out["press_vs_replay"][p.name] = abs(sum(nll) / len(nll) - runs[(p.name, k)]["scores"][wi])
        if not p.keep_free:
            nll0 = continuation_nll(model, pre.compressed(p.make(1.0)), pre.modules, cont, T)
            out["compression0_vs_full"][p.name] = abs(sum(nll0) / len(nll0) - full)
    worst = max(out["press_vs_replay"].values(), default=0.0)
    worst0 = max(out["compression0_vs_full"].values(), default=0.0)
    print(f"[verify ppl-{T}] window {wi}: |with press(model) - replay| <= {worst:.2e} nats at keep {vk} "
          f"({len(out['press_vs_replay'])} presses); |compression 0 - full| <= {worst0:.2e}", file=sys.stderr, flush=True)
    return out
