"""Summaries with paired bootstrap intervals, the markdown table, results.json and the plot."""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List

import numpy as np

from stats import excludes_zero, paired_bootstrap


def summarize(task: dict, policies, keeps, resamples: int, seed: int) -> List[dict]:
    """Rows for one task/setting: metric, measured keep ratio, and differences against the full
    cache and against the best training-free press at the same keep, with paired intervals."""
    runs = task["runs"]
    higher = task["higher_is_better"]
    stat = task["statistic"]

    def value(scores):
        return float(np.exp(np.mean(scores))) if stat == "ppl" else float(np.mean(scores)) * 100

    full = runs[("full", None)]["scores"]
    best = {}
    for k in keeps:
        cands = [(value(runs[(p.name, k)]["scores"]), p.name) for p in policies
                 if p.family == "kvpress" and (p.name, k) in runs]
        if cands:
            best[k] = (max if higher else min)(cands)[1]
    rows = []
    scale = 1.0 if stat == "ppl" else 100.0
    for p in policies:
        for k in ([None] if p.keep_free else keeps):
            r = runs.get((p.name, k))
            if r is None:
                continue
            kept = float(np.mean(r["kept"]))
            row = {"policy": p.name, "family": p.family, "keep": k, "kept": kept, "value": value(r["scores"]),
                   "full": value(full), "n": len(r["scores"])}
            if p.family != "full":
                d, lo, hi = paired_bootstrap(r["scores"], full, stat, resamples, seed)
                row["vs_full"] = [d * scale, lo * scale, hi * scale]
                kb = k if k is not None else min(keeps, key=lambda x: abs(x - kept))
                b = best.get(kb)
                if b is not None and b != p.name:
                    d, lo, hi = paired_bootstrap(r["scores"], runs[(b, kb)]["scores"], stat, resamples, seed)
                    row["vs_best"] = [d * scale, lo * scale, hi * scale]
                    row["best"] = f"{b}@{kb}"
                elif b == p.name:
                    row["best"] = "(this row)"
            rows.append(row)
    return rows


def _ci(x, unit):
    if x is None:
        return ""
    d, lo, hi = x
    star = "*" if excludes_zero(lo, hi) else ""
    return f"{d:+.{unit}f} [{lo:+.{unit}f}, {hi:+.{unit}f}]{star}"


def table(title: str, rows: List[dict], metric: str, unit: int) -> str:
    out = [f"### {title}", "",
           f"| policy | keep | kept (measured) | {metric} | full cache | vs full [95% CI] | vs best training-free at this keep [95% CI] |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        keep = "-" if r["keep"] is None else f"{r['keep']:g}"
        vb = _ci(r.get("vs_best"), unit)
        if r.get("best") == "(this row)":
            vb = "(best)"
        elif r.get("best") and vb:
            vb += f" vs {r['best'].split('@')[0]}" + (f"@{r['best'].split('@')[1]}" if r["keep"] is None else "")
        out.append(f"| {r['policy']} | {keep} | {r['kept']:.3f} | {r['value']:.{unit}f} | {r['full']:.{unit}f} | "
                   f"{_ci(r.get('vs_full'), unit)} | {vb} |")
    return "\n".join(out) + "\n"


def write_outputs(out_dir: str, tasks: Dict[str, dict], policies, keeps, config: dict, notes: List[str],
                  resamples: int, seed: int) -> str:
    os.makedirs(out_dir, exist_ok=True)
    md = ["# Press evaluation", ""] + [f"- {n}" for n in notes] + [
        "", "Intervals: paired bootstrap 95% (per-sample pairing, "
        f"{resamples} resamples, seed {seed}); `*` marks an interval that excludes zero. Retrieval: exact match "
        "(%), differences in points; perplexity: differences in perplexity (lower is better).", ""]
    js = {"config": config, "notes": notes, "tasks": {}}
    for name, t in tasks.items():
        rows = summarize(t, policies, keeps, resamples, seed)
        t["rows"] = rows
        unit = 2 if t["statistic"] == "ppl" else 1
        md.append(table(f"{t['title']} ({t['n']} samples)", rows, t["metric"], unit))
        js["tasks"][name] = {
            "title": t["title"], "metric": t["metric"], "statistic": t["statistic"],
            "higher_is_better": t["higher_is_better"], "samples": t["samples"], "rows": rows,
            "checks": t.get("checks", []), "seconds": t.get("seconds"),
            "runs": [{"policy": p, "keep": k, **v} for (p, k), v in t["runs"].items()],
        }
    text = "\n".join(md)
    with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as f:
        f.write(text)
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(js, f, indent=1)
    plot(out_dir, tasks, policies, keeps)
    return text


def plot(out_dir: str, tasks: Dict[str, dict], policies, keeps) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = len(tasks)
    if n == 0:
        return
    cols = min(n, 3)
    rows_n = math.ceil(n / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 4.0 * rows_n), squeeze=False)
    base = [p for p in policies if p.family == "kvpress"]
    cmap = plt.get_cmap("tab10")
    colors = {p.name: cmap(i % 10) for i, p in enumerate(base)}
    dark = ("black", "dimgray", "darkred", "darkgreen", "navy", "saddlebrown")
    for i, p in enumerate([p for p in policies if p.family == "agate"]):
        colors[p.name] = dark[i % len(dark)]
    for ax, (name, t) in zip(axes.flat, tasks.items()):
        rows = t["rows"]
        for p in policies:
            pr = [r for r in rows if r["policy"] == p.name]
            if not pr:
                continue
            if p.family == "full":
                ax.axhline(pr[0]["value"], color="black", ls="--", lw=1, label="full cache")
            elif p.keep_free:
                ax.plot([pr[0]["kept"]], [pr[0]["value"]], marker="*", ms=14, ls="", color=colors[p.name], label=p.name)
            else:
                agate = p.family == "agate"
                ax.plot([r["keep"] for r in pr], [r["value"] for r in pr], marker="s" if agate else "o", ms=5 if agate else 4,
                        lw=2.4 if agate else 1.2, color=colors[p.name], label=p.name)
        ax.set_title(f"{t['title']} (n={t['n']})", fontsize=9)
        ax.set_xlabel("keep ratio (kvpress: 1 - compression_ratio)")
        ax.set_ylabel(t["metric"])
        if t["statistic"] == "ppl":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.08 if rows_n == 1 else 0.05, 1, 1))
    for ext in ("png", "svg"):
        fig.savefig(os.path.join(out_dir, f"plot.{ext}"), dpi=110)
    plt.close(fig)


def replot(out_dir: str) -> None:
    """Redraws plot.png / plot.svg from an existing results.json (e.g. after a style change)."""
    with open(os.path.join(out_dir, "results.json"), encoding="utf-8") as f:
        js = json.load(f)

    class P:
        def __init__(self, d):
            self.name, self.family, self.keep_free = d["name"], d["family"], d["keep_free"]

    policies = [P(d) for d in js["config"]["policies"]]
    tasks = {k: {"rows": t["rows"], "title": t["title"], "metric": t["metric"], "statistic": t["statistic"],
                 "n": t["rows"][0]["n"] if t["rows"] else 0} for k, t in js["tasks"].items()}
    plot(out_dir, tasks, policies, js["config"]["keep"])
