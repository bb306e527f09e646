#!/usr/bin/env python3
"""Summarises tools/bench/attention.sh's results.jsonl (one JSON line per run of `agate bench
attention` or tools/bench/attention_peers.py) as markdown tables.

    python3 tools/bench/attention_table.py runs/bench-attention/results.jsonl > table.md

Per (mode, dtype): a time table (ms; the median across rounds of each run's median) and a peak
memory table (MiB; the median across rounds of each run's peak_bytes: the tensor bytes a step
allocates above what was live before it). Columns: agate's kernels, then the PyTorch peers.
  best peer   the fastest gated PyTorch peer that ran (train: only peers whose gradient
              reaches the keep probabilities, i.e. grad_to_keep);
  flash/best  best peer ms / agate flash ms (> 1: agate flash is faster);
  flash/causal  SDPA plain causal ms / agate flash ms (the price of gating: < 1 means the gated
              kernel is slower than ungated attention).
Cells: "skip" (over the memory cap, or not applicable), "fail" (the run failed: the errors are
listed under the tables), "-" (not run). Under the tables: how far the gated implementations'
out_checksum strays from agate's (the same inputs, flags and semantics on every side; tolerance
1e-4 relative in float32, 2e-2 in bfloat16). Standard library only.
"""
import json
import statistics
import sys
from collections import defaultdict

AGATE = ["flash", "rows", "reference"]
PEERS = ["eager", "compile", "sdpa-mask", "sdpa-bool", "flex", "sdpa-causal"]
GATED_PEERS = [p for p in PEERS if p != "sdpa-causal"]


def column(j):
    return ("agate " if j["impl"] == "agate" else "") + j["kernel"]


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "runs/bench-attention/results.jsonl"
    runs = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                runs.append(json.loads(line))
    if not runs:
        print("no results in %s" % path)
        return
    cols = ["agate " + k for k in AGATE] + PEERS
    ms = defaultdict(list)      # (mode, dtype, T, col) -> [median_ms]
    peak = defaultdict(list)
    compile_s = defaultdict(list)
    grad = {}
    status = {}                 # worst status seen: ok < skipped < failed
    errors = defaultdict(set)   # error -> {(mode, dtype, T, col)}
    rank = {"ok": 0, "skipped": 1, "failed": 2}
    for j in runs:
        key = (j["mode"], j["dtype"], j["T"], column(j))
        st = j.get("status", "ok")
        if rank.get(st, 2) >= rank.get(status.get(key, "ok"), 0):
            status[key] = st
        if st == "ok":
            ms[key].append(j["median_ms"])
            if j.get("peak_bytes") is not None:
                peak[key].append(j["peak_bytes"])
            if j.get("compile_s") is not None:
                compile_s[key].append(j["compile_s"])
            grad[key] = j.get("grad_to_keep", False)
        else:
            errors[(st, j.get("error", "?"))].add(key)
    # A configuration that ran in some rounds shows its median; "fail" only when no round ran.
    for key in ms:
        status[key] = "ok"

    def cell(key, table, fmt):
        if table.get(key):
            return fmt % statistics.median(table[key])
        return {"skipped": "skip", "failed": "fail"}.get(status.get(key), "-")

    first = runs[0]
    print("Gated attention, one layer: B=%s, H=%s, Hkv=%s, hd=%s, keep %s, window %s, recent %s; %s; "
          "torch %s" % (first["batch"], first["heads"], first["kv_heads"], first["head_dim"], first["keep"],
                        first["window"], first["recent"],
                        "%s threads" % first.get("threads") if first.get("device", "cpu") == "cpu"
                        else "device %s" % first["device"],
                        next((j["torch"] for j in runs if "torch" in j), "?")))
    print()
    configs = sorted({(j["mode"], j["dtype"]) for j in runs})
    for mode, dtype in configs:
        Ts = sorted({j["T"] for j in runs if j["mode"] == mode and j["dtype"] == dtype})
        print("### %s, %s: median ms" % (mode, dtype))
        print()
        print("| T | " + " | ".join(cols) + " | best peer | flash/best | flash/causal |")
        print("|---:|" + "---:|" * len(cols) + "---|---:|---:|")
        for T in Ts:
            row = [cell((mode, dtype, T, c), ms, "%.2f") for c in cols]
            flash = ms.get((mode, dtype, T, "agate flash"))
            cands = [(statistics.median(ms[(mode, dtype, T, p)]), p) for p in GATED_PEERS
                     if ms.get((mode, dtype, T, p)) and (mode != "train" or grad.get((mode, dtype, T, p)))]
            best = min(cands) if cands else None
            causal = ms.get((mode, dtype, T, "sdpa-causal"))
            fm = statistics.median(flash) if flash else None
            vs_best = "%.2fx" % (best[0] / fm) if best and fm else "-"
            vs_causal = "%.2fx" % (statistics.median(causal) / fm) if causal and fm else "-"
            print("| %d | %s | %s | %s | %s |" % (T, " | ".join(row), best[1] if best else "-", vs_best, vs_causal))
        print()
        print("### %s, %s: peak MiB allocated by one step" % (mode, dtype))
        print()
        print("| T | " + " | ".join(cols) + " |")
        print("|---:|" + "---:|" * len(cols))
        for T in Ts:
            row = [cell((mode, dtype, T, c), {k: [b / 2**20 for b in v] for k, v in peak.items()}, "%.1f")
                   for c in cols]
            print("| %d | %s |" % (T, " | ".join(row)))
        comp = [(T, c, statistics.median(compile_s[(mode, dtype, T, c)]), max(compile_s[(mode, dtype, T, c)]))
                for T in Ts for c in cols if compile_s.get((mode, dtype, T, c))]
        if comp:
            print()
            print("compile time (s, median / max across rounds; excluded from the timings): " +
                  "; ".join("%s T=%d %.1f / %.1f" % (c, T, m, x) for T, c, m, x in comp))
        print()
    # Same problem on every side: out_checksum of the gated implementations against agate's.
    sums = defaultdict(list)
    for j in runs:
        if j.get("status") == "ok" and j.get("gated", True) and j.get("out_checksum") is not None:
            sums[(j["mode"], j["dtype"], j["T"])].append((column(j), j["out_checksum"]))
    worst, odd = defaultdict(float), []
    for key, vals in sorted(sums.items()):
        ref = [c for n, c in vals if n.startswith("agate")]
        if not ref:
            continue
        tol = 2e-2 if key[1] == "bfloat16" else 1e-4
        for n, c in vals:
            rel = abs(c - ref[0]) / max(abs(ref[0]), 1e-12)
            worst[key[1]] = max(worst[key[1]], rel)
            if rel > tol:
                odd.append("%s %s %s T=%d: %.3g" % (n, key[0], key[1], key[2], rel))
    if sums:
        print("out_checksum (mean(out * dout)), gated implementations against agate: largest relative "
              "difference %s%s" % (", ".join("%.2g in %s" % (w, d) for d, w in sorted(worst.items())),
                                   "; over tolerance: " + ", ".join(sorted(set(odd))) if odd else ""))
        print()
    if errors:
        print("Not run:")
        print()
        for (st, err), keys in sorted(errors.items()):
            where = sorted(keys)
            shown = ", ".join("%s %s %s T=%d" % (k[3], k[0], k[1], k[2]) for k in where[:6])
            more = " and %d more" % (len(where) - 6) if len(where) > 6 else ""
            print("- %s: %s (%s%s)" % (st, err, shown, more))


if __name__ == "__main__":
    main()
