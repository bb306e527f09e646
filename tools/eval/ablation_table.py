#!/usr/bin/env python3
"""The ablation table of scripts/ablate_smollm2.sh: for each task, the best training-free policy
at each budget (OUT/eval/baselines/TASK.json) against every variant's gate deployments
(OUT/eval/NAME/TASK.json, the same samples), with the paired bootstrap 95% interval of each
difference (2000 resamples, fixed seed; a sample's metric parts are summed as agate eval does:
perplexity = exp(sum NLL / sum tokens), accuracy = correct / total). Stdlib only.

    ablation_table.py OUT [--steps N] [--json FILE] [--against VARIANT] > OUT/ablation.md

--against VARIANT (default: base, when it was evaluated) adds, per task, every other variant's
ranked deployments against that variant's same deployment at the same budget, with the paired
interval: what the ablation's one changed factor did. Every variant and every budget is
printed, winners and losers alike. A variant whose
evaluation is missing a task is listed as missing, not dropped.
"""
import argparse
import json
import math
import os
import random
import sys

GATE_RANKED = ("gate-rank", "ada-gate")
LEARNED = ("gate", "gate-post")
TASK_ORDER = ("ppl-512", "ppl-1024", "ppl-2048", "passkey-inside", "passkey-after", "passkey-long-inside",
              "passkey-long-after", "choice")


def metric(parts, idx):
    n = sum(parts["num"][i] for i in idx)
    d = sum(parts["den"][i] for i in idx)
    r = n / d if d > 0 else 0.0
    return math.exp(r) if parts["exp"] else r


def paired_bootstrap(a, b, resamples=2000, seed=0):
    n = len(a["num"])
    if n == 0 or len(b["num"]) != n:
        raise SystemExit(f"ablation_table: paired rows need the same samples ({n} against {len(b['num'])}) "
                         "(hint: evaluate every variant with the same SAMPLES)")
    rng = random.Random(seed)
    diffs = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        diffs.append(metric(a, idx) - metric(b, idx))
    diffs.sort()

    def q(p):
        pos = p * (len(diffs) - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, len(diffs) - 1)
        return diffs[lo] + (pos - lo) * (diffs[hi] - diffs[lo])
    return q(0.025), q(0.975)


def load(path):
    with open(path) as f:
        return json.load(f)


def same_samples(d, full):
    """Whether an evaluation's full-cache row (its first) matches the baselines': the same samples."""
    return abs(d["rows"][0]["metric"] - full["metric"]) <= 1e-6 * max(1.0, abs(full["metric"]))


def fmt(v, higher):
    return f"{100 * v:.1f}%" if higher else f"{v:.2f}"


def fmt_diff(d, lo, hi, higher):
    s = 100 if higher else 1
    star = "*" if lo > 0 or hi < 0 else ""
    return f"{d * s:+.1f} [{lo * s:+.1f}, {hi * s:+.1f}]{star}"


def training_facts(out, name):
    path = os.path.join(out, "runs", name, "summary.json")
    if not os.path.exists(path):
        return None
    return load(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--json")
    ap.add_argument("--against", default="base")
    args = ap.parse_args()
    ev = os.path.join(args.out, "eval")
    if not os.path.isdir(os.path.join(ev, "baselines")):
        sys.exit(f"ablation_table: no baseline evaluation in {ev}/baselines (hint: run scripts/ablate_smollm2.sh)")
    variants = sorted(d for d in os.listdir(ev) if os.path.isdir(os.path.join(ev, d)) and d != "baselines")
    tasks = [t for t in TASK_ORDER if os.path.exists(os.path.join(ev, "baselines", t + ".json"))]
    tasks += sorted(f[:-5] for f in os.listdir(os.path.join(ev, "baselines"))
                    if f.endswith(".json") and f[:-5] not in tasks)
    records, lines = [], []
    lines.append(f"# Gate training ablation on SmolLM2-135M ({args.steps} steps per variant)\n")
    lines.append("Each variant: recipes/smollm2/gates.yaml + the `@base` and its own overrides (recipes/smollm2/ablations.txt), same data, "
                 "steps and batch. Cells: the metric, then its difference to the best training-free policy at that "
                 "budget [paired bootstrap 95% interval], * when the interval excludes 0 (points for accuracies; for "
                 "perplexity lower is better).\n")
    lines.append("| variant | train loss | val loss (in-prefill gates) | val keep | tokens/s |")
    lines.append("|---|---|---|---|---|")
    for v in variants:
        f = training_facts(args.out, v)
        if f is None:
            lines.append(f"| {v} | (no summary) | | | |")
            continue
        lines.append(f"| {v} | {f.get('train_loss', float('nan')):.4f} | {f.get('val_loss', float('nan')):.4f} "
                     f"(base {f.get('val_base_loss', float('nan')):.4f}) | {f.get('keep', float('nan')):.3f} | "
                     f"{f.get('tokens_per_s', float('nan')):.0f} |")
    lines.append("")
    for task in tasks:
        base = load(os.path.join(ev, "baselines", task + ".json"))
        higher = base["higher_is_better"]
        rows = base["rows"]
        full = rows[0]
        budgets = [b for b in dict.fromkeys(r["budget"] for r in rows) if b not in ("-", "learned")]
        best = {}
        for b in budgets:
            cands = [r for r in rows if r["budget"] == b and r["policy"] not in ("full",) + GATE_RANKED + LEARNED]
            best[b] = max(cands, key=lambda r: r["metric"] if higher else -r["metric"])
        lines.append(f"## {task}: {base['metric']}, {base['samples']} samples; full cache {fmt(full['metric'], higher)}\n")
        lines.append("| variant / policy | " + " | ".join(budgets) + " |")
        lines.append("|---|" + "---|" * len(budgets))
        lines.append("| best training-free | " + " | ".join(
            f"{fmt(best[b]['metric'], higher)} ({best[b]['policy']})" for b in budgets) + " |")
        for v in variants:
            path = os.path.join(ev, v, task + ".json")
            if not os.path.exists(path):
                lines.append(f"| {v} | (not evaluated) |" + " |" * (len(budgets) - 1))
                continue
            d = load(path)
            if not same_samples(d, full):
                lines.append(f"| {v} | (its full cache {fmt(d['rows'][0]['metric'], higher)} differs from the baselines' "
                             f"{fmt(full['metric'], higher)}: not the same samples) |" + " |" * (len(budgets) - 1))
                continue
            for pol in GATE_RANKED:
                cells = []
                for b in budgets:
                    r = next((r for r in d["rows"] if r["policy"] == pol and r["budget"] == b), None)
                    if r is None:
                        cells.append("")
                        continue
                    lo, hi = paired_bootstrap(r["per_sample"], best[b]["per_sample"])
                    diff = r["metric"] - best[b]["metric"]
                    cells.append(f"{fmt(r['metric'], higher)} ({fmt_diff(diff, lo, hi, higher)})")
                    records.append({"task": task, "variant": v, "policy": pol, "budget": b, "metric": r["metric"],
                                    "best_baseline": best[b]["policy"], "best_metric": best[b]["metric"],
                                    "diff": diff, "ci95": [lo, hi], "full": full["metric"],
                                    "higher_is_better": higher})
                lines.append(f"| {v} / {pol} | " + " | ".join(cells) + " |")
            learned = [r for r in d["rows"] if r["policy"] in LEARNED and r["budget"] == "learned"]
            if learned:
                lines.append(f"| {v} / own flags | " + "; ".join(
                    f"{r['policy']} {fmt(r['metric'], higher)} at keep {r['keep']:.3f}" for r in learned)
                    + " |" + " |" * (len(budgets) - 1))
                for r in learned:
                    records.append({"task": task, "variant": v, "policy": r["policy"], "budget": "learned",
                                    "keep": r["keep"], "metric": r["metric"], "full": full["metric"],
                                    "higher_is_better": higher})
        lines.append("")
        lines += against_reference(ev, task, variants, args.against, budgets, full, higher, records)
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": args.steps, "variants": variants, "tasks": tasks, "rows": records}, f, indent=1)


def against_reference(ev, task, variants, ref, budgets, full, higher, records):
    """Each variant's ranked deployments minus the reference variant's, paired per sample."""
    ref_path = os.path.join(ev, ref, task + ".json")
    if ref not in variants or not os.path.exists(ref_path):
        return []
    rd = load(ref_path)
    if not same_samples(rd, full):
        return []
    header = [f"{task} against `{ref}` (the same deployment and budget; paired bootstrap 95% interval):\n",
              "| variant / policy | " + " | ".join(budgets) + " |", "|---|" + "---|" * len(budgets)]
    lines = []
    for v in variants:
        path = os.path.join(ev, v, task + ".json")
        if v == ref or not os.path.exists(path):
            continue
        d = load(path)
        if not same_samples(d, full):
            continue
        for pol in GATE_RANKED:
            cells = []
            for b in budgets:
                r = next((r for r in d["rows"] if r["policy"] == pol and r["budget"] == b), None)
                q = next((r for r in rd["rows"] if r["policy"] == pol and r["budget"] == b), None)
                if r is None or q is None:
                    cells.append("")
                    continue
                lo, hi = paired_bootstrap(r["per_sample"], q["per_sample"])
                diff = r["metric"] - q["metric"]
                cells.append(fmt_diff(diff, lo, hi, higher))
                records.append({"task": task, "variant": v, "policy": pol, "budget": b, "metric": r["metric"],
                                "against": ref, "against_metric": q["metric"], "diff": diff, "ci95": [lo, hi],
                                "higher_is_better": higher})
            lines.append(f"| {v} / {pol} | " + " | ".join(cells) + " |")
    return header + lines + [""] if lines else []


if __name__ == "__main__":
    main()
