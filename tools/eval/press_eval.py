#!/usr/bin/env python3
"""Evaluates kvpress's presses next to AgatePress on the same held-out samples, through kvpress.

    .venv/bin/python tools/eval/press_eval.py --gates runs/demo-smollm2/gates/export --out runs/eval-smollm2

Policies: the full cache, kvpress's StreamingLLM, SnapKV, AdaKV(SnapKV), PyramidKV, TOVA, Knorm,
ExpectedAttention and KVzip presses, and with --gates an agate export's AgatePress (fixed ratio),
AdaKVPress(AgatePress) and AgatePress's flags mode (compression_ratio=None: the gates' own
variable budget, reported at its measured keep ratio). Budgets: --keep ratios, kvpress's
definitions (compression_ratio = 1 - keep; see tools/eval/policies.py for how each press splits
it over layers and heads).

Tasks (held-out text: the documents of the token dataset's val split, --data; never seen by the
gate trainer, which reads train; tools/eval/heldout.py):
  retrieval-aware / retrieval-agnostic  a fact (pass key or key-value pair, tools/make_passkey.py's
      NEEDLES phrasings) at --depths of haystacks of --lengths tokens; greedy answer through
      kvpress's `kv-press-text-generation` pipeline (its preprocess: chat template and
      tokenization; its generate_answer: greedy decoding over the compressed cache); exact match
      of the first number in the answer. aware: the question ends the compressed context;
      agnostic: the context is compressed first and the question is the pipeline's question=.
  ppl  windows of --ppl-contexts tokens compressed, then the next --continuation tokens scored
      teacher-forced over the compressed cache (perplexity).
Each press is applied by kvpress's own forward hook, replayed on one shared prefill per sample
(tools/eval/policies.py); --verify N re-runs the first N samples per task through kvpress's
pipeline call / `with press(model):` and records that the results agree (results.json "checks").

Outputs in --out: table.md, results.json (every per-sample score), plot.png / plot.svg.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "python"))
for k, v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_VERBOSITY", "error"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
             ("TQDM_DISABLE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(k, v)

PHRASINGS = ("passkey", "kv-number", "passkey-note", "kv-code")


def floats(s):
    return [float(x) for x in s.split(",") if x.strip()]


def ints(s):
    return [int(x) for x in s.split(",") if x.strip()]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "smollm2-135m-instruct"), help="HF model folder")
    ap.add_argument("--gates", help="an agate export folder (agate export RUN --out DIR); without it the gate rows are skipped")
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "corpus", "smollm2", "val"),
                    help="held-out agate token dataset in the model's tokenizer (default: the SmolLM2 corpus' val split)")
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "eval-smollm2"))
    ap.add_argument("--keep", type=floats, default=[0.1, 0.25, 0.5, 0.75], help="keep ratios (compression_ratio = 1 - keep)")
    ap.add_argument("--tasks", default="retrieval-aware,retrieval-agnostic,ppl")
    ap.add_argument("--samples", type=int, default=24, help="retrieval samples per setting")
    ap.add_argument("--lengths", type=ints, default=[400, 800], help="haystack lengths in tokens")
    ap.add_argument("--depths", type=floats, default=[0.1, 0.3, 0.5, 0.7, 0.9], help="fact depths")
    ap.add_argument("--phrasings", default=",".join(PHRASINGS), help="tools/make_passkey.py NEEDLES keys")
    ap.add_argument("--prompt", choices=["chat", "plain"], default="chat",
                    help="chat: the pipeline's chat template (the model's); plain: no template")
    ap.add_argument("--max-new-tokens", type=int, default=6, help="greedy tokens per answer (a space and 5 digits)")
    ap.add_argument("--decode-batch", type=int, default=1, help="compressed caches decoded together in one batch (retrieval; on CPU batching saves nothing, so 1)")
    ap.add_argument("--ppl-samples", type=int, default=16, help="perplexity windows per context length")
    ap.add_argument("--ppl-contexts", type=ints, default=[512, 1024])
    ap.add_argument("--long", action="store_true", help="add context 2048 to --ppl-contexts")
    ap.add_argument("--continuation", type=int, default=64)
    ap.add_argument("--policies", help="comma-separated subset of policy names (the full cache is always run)")
    ap.add_argument("--no-kvzip", action="store_true", help="skip KVzipPress (about 1.5 extra prefills per sample)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--verify", type=int, default=1,
                    help="samples per task re-run through kvpress's own pipeline call / with press(model): (0: none)")
    ap.add_argument("--no-verify-weights", action="store_true", help="AgatePress: skip the base weights fingerprint check")
    a = ap.parse_args(argv)
    if a.long:
        a.ppl_contexts = sorted(set(a.ppl_contexts) | {2048})
    if not a.keep or not all(0 < k <= 1 for k in a.keep):
        ap.error("--keep: ratios in (0, 1]")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    t_start = time.time()
    import torch
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    import kvpress  # noqa: F401  (registers kv-press-text-generation and patches attention)

    from heldout import HeldOut
    from policies import build_policies
    from report import write_outputs
    from tasks import make_retrieval_samples, run_ppl, run_retrieval

    notes = []
    dtype = getattr(torch, a.dtype)
    tok = AutoTokenizer.from_pretrained(a.model)
    if a.prompt == "plain":
        tok.chat_template = None
    model = AutoModelForCausalLM.from_pretrained(a.model, attn_implementation="sdpa", dtype=dtype).eval()
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tok)
    gates = a.gates
    if gates and not os.path.isfile(os.path.join(gates, "kvgate_config.json")):
        print(f"error: --gates {gates}: no kvgate_config.json (pass an `agate export` folder)", file=sys.stderr)
        return 2
    if not gates:
        notes.append("No --gates given: the AgatePress rows are skipped.")
        print("[press_eval] no --gates: skipping the AgatePress rows", file=sys.stderr)
    names = a.policies.split(",") if a.policies else None
    policies = build_policies(gates, a.model, names, kvzip=not a.no_kvzip, agate_verify_weights=not a.no_verify_weights)
    held = HeldOut(a.data, tok)
    notes.append(f"Model {a.model} ({a.dtype}, sdpa attention, {a.threads} threads); held-out text: {a.data} "
                 f"({len(held.docs)} documents, {held.num_tokens} tokens).")
    if gates:
        notes.append(f"Gates: {gates}.")
    tasks_wanted = [t for t in a.tasks.split(",") if t]
    tasks = {}
    config = {k: v for k, v in vars(a).items()}
    config["policies"] = [{"name": p.name, "family": p.family, "keep_free": p.keep_free, "note": p.note} for p in policies]
    print(f"[press_eval] {len(policies)} policies x {len(a.keep)} keeps; tasks {', '.join(tasks_wanted)}", file=sys.stderr)

    phrasings = a.phrasings.split(",")
    samples = None
    for setting in ("aware", "agnostic"):
        name = f"retrieval-{setting}"
        if name not in tasks_wanted:
            continue
        if samples is None:
            samples = make_retrieval_samples(held, tok, a.samples, a.lengths, a.depths, phrasings, a.seed,
                                             digits=5)
        t0 = time.time()
        res = run_retrieval(pipe, policies, a.keep, samples, setting, a.max_new_tokens, a.verify, batch=a.decode_batch)
        tasks[name] = dict(res, title=f"Retrieval, question-{setting}", metric="exact match (%)", statistic="mean",
                           higher_is_better=True, n=len(samples), seconds=round(time.time() - t0, 1),
                           samples=[{k: s[k] for k in ("phrasing", "kind", "value", "key", "length", "depth",
                                                       "real_depth", "tokens")} for s in samples])
    if "ppl" in tasks_wanted:
        for ctx in a.ppl_contexts:
            wins = held.windows(ctx + a.continuation + 1, a.ppl_samples)
            if len(wins) < a.ppl_samples:
                notes.append(f"Perplexity at context {ctx}: only {len(wins)} windows fit in the held-out documents "
                             f"(asked for {a.ppl_samples}).")
            if not wins:
                continue
            t0 = time.time()
            res = run_ppl(model, policies, a.keep, wins, ctx, a.continuation, a.verify)
            tasks[f"ppl-{ctx}"] = dict(res, title=f"Perplexity, context {ctx}, next {a.continuation} tokens",
                                       metric="perplexity", statistic="ppl", higher_is_better=False, n=len(wins),
                                       seconds=round(time.time() - t0, 1),
                                       samples=[{"doc": w["doc"], "start": w["start"]} for w in wins])
    config["wall_seconds"] = round(time.time() - t_start, 1)
    notes.append(f"Wall time {config['wall_seconds']:.0f} s.")
    text = write_outputs(a.out, tasks, policies, a.keep, config, notes, a.resamples, a.seed)
    print(text)
    print(f"[press_eval] wrote {a.out}/table.md, results.json, plot.png, plot.svg in {config['wall_seconds']:.0f} s",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
