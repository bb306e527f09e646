"""Tests of tools/eval/press_eval.py (the kvpress evaluation harness), on a tiny random Llama
written by transformers (4 layers, 4 / 2 heads, SmolLM2's tokenizer when models/ has it, else a
byte-level stand-in is not attempted and the end-to-end part skips):
  - every press (kvpress's and AgatePress with a random attention-gate export) replayed on a shared
    prefill (policies.Prefill) gives exactly the continuation NLL that `with press(model):` gives,
    at compression 0.5 and, at compression 0, exactly the full cache's;
  - batch_caches: caches stacked along the batch decode as each alone (greedy ids);
  - paired_bootstrap on known cases (a constant shift, identical samples, a 50/50 difference);
  - the harness end to end on 2 samples per task (the presses that drop entries) writes a table.md and a results.json whose rows
    and per-sample scores are complete, and whose kvpress-pipeline checks agree.
Run by ctest as oracle.press_eval (`python press_eval_oracle.py AGATE_BINARY SOURCE_DIR`; the
binary is not used). Skips (77) without torch, transformers, kvpress, safetensors or matplotlib.
"""
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import oracle_lib  # noqa: E402

oracle_lib.require("torch", "transformers", "kvpress", "safetensors", "numpy", "matplotlib")
_, SRC = oracle_lib.args()
for p in ("tools/eval", "tools", "python", "python/tests"):
    sys.path.insert(0, os.path.join(SRC, p))

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)
import kvpress  # noqa: E402,F401  (patches attention for head-wise masks)
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM  # noqa: E402

import test_agate_gates as tag  # noqa: E402  (write_export: a random gate export, as agate lays it out)
from policies import Prefill, batch_caches, build_policies, snapshot  # noqa: E402
from stats import excludes_zero, paired_bootstrap  # noqa: E402
from tasks import continuation_nll, generate_batched  # noqa: E402

c = oracle_lib.Checks()
t0 = time.time()
tmp = tempfile.mkdtemp(prefix="press_eval_test_")
smol = oracle_lib.smollm2_dir(SRC)


def tiny_model(path, vocab):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048,
                      initializer_range=0.2, tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=10000.0,
                      bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(path)
    if smol:
        for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
            if os.path.isfile(os.path.join(smol, f)):
                shutil.copy(os.path.join(smol, f), path)
    return path


try:
    vocab = 49152 if smol else 128
    mdir = tiny_model(os.path.join(tmp, "tiny-llama"), vocab)
    export = tag.write_export(os.path.join(tmp, "export"), "attention", 11, mdir, sinks=2)
    model = LlamaForCausalLM.from_pretrained(mdir, attn_implementation="sdpa", dtype=torch.float32).eval()
    policies = [p for p in build_policies(export, mdir, kvzip=False)]
    g = torch.Generator().manual_seed(3)
    T = 96
    ids = torch.randint(3, min(vocab, 5000), (1, T + 5), generator=g)  # few continuation queries: kvpress's fake-key
    # search needs all of a group's queries in one half-space, which random queries of a random model rarely are
    ctx, cont = ids[:, :T], ids[:, T:]
    pre = Prefill(model, ctx)
    full = continuation_nll(model, pre.compressed(None), pre.modules, cont, T)

    # 1. replay == with press(model):, and compression 0 == the full cache
    for p in policies:
        if p.family == "full":
            continue
        k = None if p.keep_free else 0.5
        cache = DynamicCache()
        press = p.make(k)
        with torch.no_grad(), press(model):
            model.model(input_ids=ctx, past_key_values=cache)
        direct = continuation_nll(model, cache, pre.modules, cont, T)
        replay = continuation_nll(model, pre.compressed(p.make(k)), pre.modules, cont, T)
        d = max(abs(a - b) for a, b in zip(direct, replay))
        c.check(d == 0.0, f"{p.name} keep {k}: replayed on the shared prefill == with press(model):", f"max |dNLL| {d:.1e}")
        changed = max(abs(a - b) for a, b in zip(direct, full))
        if not p.keep_free:
            c.check(changed > 0, f"{p.name} keep 0.5 changes the continuation", f"max |dNLL| vs full {changed:.2e}")
            z = continuation_nll(model, pre.compressed(p.make(1.0)), pre.modules, cont, T)
            d0 = max(abs(a - b) for a, b in zip(z, full))
            c.check(d0 == 0.0, f"{p.name} at compression 0 == the full cache", f"max |dNLL| {d0:.1e}")

    # 2. caches stacked along the batch decode as each alone
    class _Pipe:  # what generate_batched uses of the kvpress pipeline
        def __init__(self, model):
            self.model = model
            self.tokenizer = type("T", (), {"decode": staticmethod(lambda ids, skip_special_tokens=True: ",".join(map(str, ids.tolist())))})()
    pipe = _Pipe(model)
    q = cont[:, :3]
    snaps, alone = [], []
    for p in policies:
        k = None if p.keep_free else 0.25
        snaps.append(snapshot(pre.compressed(p.make(k)), pre.modules))
        alone.append(generate_batched(pipe, q, batch_caches([snaps[-1]], pre.modules), T, 3, 1)[0])
    together = generate_batched(pipe, q, batch_caches(snaps, pre.modules), T, 3, len(snaps))
    c.check(together == alone, f"{len(snaps)} compressed caches decoded in one batch == each alone",
            f"{sum(a == b for a, b in zip(together, alone))}/{len(alone)} equal")
    for m in pre.modules:
        m.masked_key_indices = None

    # 3. the paired bootstrap
    b = np.linspace(0, 1, 20)
    d, lo, hi = paired_bootstrap(b + 1.0, b, "mean", 500, 0)
    c.check(abs(d - 1) < 1e-12 and abs(lo - 1) < 1e-12 and abs(hi - 1) < 1e-12 and excludes_zero(lo, hi),
            "bootstrap: a constant shift of 1 gives 1 [1, 1], excluding zero", f"{d} [{lo}, {hi}]")
    d, lo, hi = paired_bootstrap(b, b, "mean", 500, 0)
    c.check(d == lo == hi == 0 and not excludes_zero(lo, hi), "bootstrap: identical samples give 0 [0, 0]")
    a1 = np.array([1.0] * 10 + [0.0] * 10)
    d, lo, hi = paired_bootstrap(a1, np.zeros(20), "mean", 2000, 0)
    c.check(d == 0.5 and 0.25 <= lo < 0.5 < hi <= 0.75 and excludes_zero(lo, hi),
            "bootstrap: 10 of 20 pairs differing by 1 give 0.5 with a ~[0.3, 0.7] interval", f"[{lo:.3f}, {hi:.3f}]")
    c.check(paired_bootstrap(a1, np.zeros(20), "mean", 2000, 0) == (d, lo, hi), "bootstrap: a fixed seed repeats")
    d, lo, hi = paired_bootstrap(np.log([4.0, 4.0]), np.log([2.0, 2.0]), "ppl", 100, 0)
    c.check(abs(d - 2) < 1e-12, "bootstrap ppl statistic: exp(mean NLL) difference", f"{d}")

    # 4. end to end on 2 samples
    if not smol:
        print("SKIP (part): end to end needs SmolLM2's tokenizer (scripts/get_model.sh smollm2)")
    else:
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(mdir)
        text = open(os.path.join(SRC, "README.md"), encoding="utf-8").read()[:20000]
        docs = [d for d in text.split("\n\n") if len(d) > 200][:40]
        data = os.path.join(tmp, "val")
        lines = "\n".join(json.dumps({"tokens": tok.encode(d, add_special_tokens=False)}) for d in docs) + "\n"
        src = os.path.join(tmp, "docs.jsonl")
        open(src, "w").write(lines)
        import subprocess
        subprocess.run([sys.executable, os.path.join(SRC, "tools", "write_shards.py"), src, "--out", data, "--kind", "cpt",
                        "--vocab-size", str(len(tok)), "--eos-id", "-1", "--bos-id", "-1", "--tokenizer-hash", "0x00000001"],
                       check=True, capture_output=True)
        import press_eval
        out = os.path.join(tmp, "out")
        rc = press_eval.main(["--model", mdir, "--gates", export, "--data", data, "--out", out, "--samples", "2",
                              "--lengths", "80,120", "--ppl-samples", "2", "--ppl-contexts", "96", "--continuation", "4",
                              "--keep", "0.5", "--resamples", "200", "--threads", "2", "--verify", "1",
                              # presses that drop entries only: the head-wise masks (Ada, flags, KVzip, padded
                              # PyramidKV) need kvpress's fake keys, which the random model's multi-token
                              # questions defeat (tested above on short continuations)
                              "--no-kvzip", "--policies", "StreamingLLM,SnapKV,TOVA,Knorm,ExpectedAttention,AgatePress"])
        c.check(rc == 0, "press_eval.main on 2 samples returns 0")
        md = open(os.path.join(out, "table.md")).read()
        js = json.load(open(os.path.join(out, "results.json")))
        names = [p["name"] for p in js["config"]["policies"]]
        c.check(set(js["tasks"]) == {"retrieval-aware", "retrieval-agnostic", "ppl-96"}, "results.json: the three tasks",
                ", ".join(js["tasks"]))
        for tname, t in js["tasks"].items():
            rows = t["rows"]
            want = len(js["config"]["policies"])
            c.check(len(rows) == want and all(r["n"] == 2 for r in rows), f"{tname}: {want} rows of 2 samples")
            c.check(all(len(r["scores"]) == 2 and len(r["kept"]) == 2 for r in t["runs"]), f"{tname}: per-sample scores kept")
            c.check(all("vs_full" in r for r in rows if r["policy"] != "full"), f"{tname}: every row has its interval vs full")
            ks = [r for r in rows if r["policy"] == "StreamingLLM"]
            c.check(all(abs(r["kept"] - r["keep"]) < 0.02 for r in ks), f"{tname}: StreamingLLM keeps its budget",
                    ", ".join(f"{r['keep']}->{r['kept']:.3f}" for r in ks))
            
            for ch in t["checks"]:
                if "differ" in ch:
                    c.check(not ch["differ"], f"{tname}: replayed answers == kvpress pipeline's",
                            f"{len(ch['same'])} same, failed in the pipeline: {list(ch['failed'])}")
                else:
                    w = max(ch["press_vs_replay"].values())
                    w0 = max(ch["compression0_vs_full"].values())
                    c.check(w == 0 and w0 == 0, f"{tname}: with press(model): == replay, compression 0 == full")
        c.check(all(n in md for n in names) and "| policy |" in md, "table.md lists every policy")
        c.check(os.path.getsize(os.path.join(out, "plot.png")) > 1000, "plot.png written")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
print(f"({time.time() - t0:.1f} s)")
c.finish()
