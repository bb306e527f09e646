#!/usr/bin/env python3
"""One compact table per `agate eval --json` file: a row per policy, a column per budget (the
metric, and for the gate rows the difference to the best training-free policy at that budget
with its paired bootstrap 95% interval, * when it excludes 0). Stdlib only.

    python3 tools/eval/curves_table.py runs/curves-smollm2/*.json > runs/curves-smollm2/summary.md
"""
import json
import sys

GATES = ("gate", "gate-post", "gate-rank", "ada-gate")


def fmt_metric(v, higher):
    return f"{100 * v:.1f}%" if higher else f"{v:.2f}"


def table(path):
    d = json.load(open(path))
    higher = d["higher_is_better"]
    rows = d["rows"]
    full = rows[0]
    budgets = [b for b in dict.fromkeys(r["budget"] for r in rows) if b not in ("-", "learned")]
    out = [f"**{path}**: {d['task']}, {d['metric']}, {d['samples']} samples; full cache "
           f"{fmt_metric(full['metric'], higher)}", ""]
    out.append("| policy | " + " | ".join(budgets) + " |")
    out.append("|---|" + "---|" * len(budgets))
    for p in dict.fromkeys(r["policy"] for r in rows if r["budget"] not in ("-", "learned")):
        cells = []
        for b in budgets:
            r = next((r for r in rows if r["policy"] == p and r["budget"] == b), None)
            if r is None:
                cells.append("")
                continue
            c = fmt_metric(r["metric"], higher)
            if "vs_best_ci95" in r:
                lo, hi = r["vs_best_ci95"]
                star = "*" if lo > 0 or hi < 0 else ""
                scale = 100 if higher else 1
                c += f" ({r['vs_best'] * scale:+.1f} [{lo * scale:+.1f}, {hi * scale:+.1f}]{star})"
            cells.append(c)
        out.append(f"| {p} | " + " | ".join(cells) + " |")
    for r in rows:
        if r["budget"] == "learned":
            out.append(f"| {r['policy']} (its own flags, keep {r['keep']:.3f}) | "
                       + fmt_metric(r["metric"], higher) + " |" + " |" * (len(budgets) - 1))
    out.append("")
    return "\n".join(out)


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: curves_table.py EVAL.json...")
    print("Gate rows: the metric (difference to the best training-free policy at the same budget "
          "[paired bootstrap 95% interval], * when it excludes 0; points for accuracies).\n")
    for p in sys.argv[1:]:
        print(table(p))


if __name__ == "__main__":
    main()
