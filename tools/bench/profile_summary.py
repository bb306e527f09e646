#!/usr/bin/env python3
"""Self time per op of a trace written by `agate bench train --profile FILE` (chrome tracing
JSON of LibTorch's profiler): which ops a training step spends its time in.

    .venv/bin/python tools/bench/profile_summary.py FILE [--top 25]
"""
import argparse
import collections
import json


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    events = [e for e in json.load(open(a.trace)) if e.get("ph") == "X"]
    by_tid = collections.defaultdict(list)
    for e in events:
        by_tid[e.get("tid")].append(e)
    self_us, calls = collections.Counter(), collections.Counter()
    total = 0.0
    for evs in by_tid.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # [end, name, child time]
        def close(until):
            while stack and stack[-1][0] <= until:
                end, name, child, dur = stack.pop()
                self_us[name] += dur - child
                if stack:
                    stack[-1][2] += dur
        for e in evs:
            close(e["ts"])
            if not stack:
                total += e["dur"]
            stack.append([e["ts"] + e["dur"], e["name"], 0.0, e["dur"]])
            calls[e["name"]] += 1
        close(float("inf"))
    print(f"total top-level time {total / 1e3:.1f} ms")
    print("| op | self ms | share | calls |\n|---|---|---|---|")
    for name, us in self_us.most_common(a.top):
        print(f"| {name} | {us / 1e3:.1f} | {100 * us / total:.1f}% | {calls[name]} |")


if __name__ == "__main__":
    main()
