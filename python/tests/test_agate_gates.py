"""Tests of the agate_gates package (python/): export loading and its refusals, the gates against
tools/kvgate_reference.py, AgatePress (flags mode) against `agate generate --policy gate-post`
and `agate score --policy gate-post`, the fixed-ratio mode, AdaKVPress, and the kvpress pipeline.

Runs under pytest or plainly: `.venv/bin/python python/tests/test_agate_gates.py [AGATE_BINARY]`
(AGATE_BINARY, or the AGATE_BIN environment variable, enables the comparisons with agate; without
it they are skipped). ctest runs it through tests/oracles/agate_gates_oracle.py.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(SRC, "python"))
sys.path.insert(0, os.path.join(SRC, "tools"))
sys.dont_write_bytecode = True
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from agate_gates import (LORA_REFUSAL, GateExportError, Gates, check_model, load_export,  # noqa: E402
                         weights_fingerprint)

AGATE = os.environ.get("AGATE_BIN", "")
PROMPT_LENGTHS = (41, 64)


try:  # under pytest a Skip is pytest's skip
    import pytest
    Skip = pytest.skip.Exception
except ImportError:
    class Skip(Exception):
        pass


# ---- fixtures: a random Llama written by transformers and gate exports written per docs ------

@functools.lru_cache(maxsize=None)
def tmpdir() -> str:
    d = tempfile.mkdtemp(prefix="agate_gates_test_")
    import atexit
    atexit.register(shutil.rmtree, d, True)
    return d


def make_model(path: str, seed: int) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=512, initializer_range=0.2,
                      tie_word_embeddings=False, rms_norm_eps=1e-5, rope_theta=10000.0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


@functools.lru_cache(maxsize=None)
def model_dir() -> str:
    return make_model(os.path.join(tmpdir(), "random-llama"), 0)


@functools.lru_cache(maxsize=None)
def other_model_dir() -> str:  # same shape, other weights
    return make_model(os.path.join(tmpdir(), "random-llama-2"), 1)


@functools.lru_cache(maxsize=None)
def hf_model(attn="sdpa"):
    from transformers import LlamaForCausalLM
    return LlamaForCausalLM.from_pretrained(model_dir(), attn_implementation=attn, dtype=torch.float32).eval()


def write_export(out: str, gate_type: str, seed: int, base_dir: str, sinks=2, recent=0, threshold=0.5,
                 rule="none") -> str:
    """A valid export with random gate weights, exactly as docs/formats.md and agate export lay it out."""
    with open(os.path.join(base_dir, "config.json")) as f:
        mc = json.load(f)
    L, D, Hkv = mc["num_hidden_layers"], mc["hidden_size"], mc["num_key_value_heads"]
    heads, hd, mlp_hidden = 2, 8, 16
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, s=1.0: (torch.randn(*shape, generator=g) * s).float()  # noqa: E731
    t = {}
    for l in range(L):
        p = f"model.layers.{l}.self_attn.kv_gate."
        if gate_type == "attention":
            for n in ("q_proj", "k_proj", "v_proj"):
                t[p + n + ".weight"] = rnd(heads * hd, D, s=0.5)
            t[p + "score.weight"] = rnd(Hkv, heads * hd, s=1.0)
            t[p + "score.bias"] = rnd(Hkv, s=0.3)
        else:
            t[p + "fc1.weight"] = rnd(mlp_hidden, D, s=0.5)
            t[p + "fc1.bias"] = rnd(mlp_hidden, s=0.1)
            t[p + "fc2.weight"] = rnd(Hkv, mlp_hidden, s=1.0)
            t[p + "fc2.bias"] = rnd(Hkv, s=0.3)
        if rule == "attention":
            t[p + "rule.weight"] = rnd(Hkv, 2, s=0.5)
    os.makedirs(out, exist_ok=True)
    fp = weights_fingerprint(base_dir)
    save_file(t, os.path.join(out, "gates.safetensors"),
              metadata={"format": "agate-kvgate", "gate_type": gate_type, "base_fingerprint": fp})
    cfg = {"format": "agate-kvgate", "version": 1,
           "gate": {"type": gate_type, "heads": heads, "head_dim": hd, "mlp_hidden": mlp_hidden, "threshold": threshold,
                    "estimator": "ste", "sink_tokens": sinks, "recent_window": recent, "rule_feature": rule},
           "base_model": {"model_type": mc["model_type"], "hidden_size": D, "num_hidden_layers": L,
                          "num_attention_heads": mc["num_attention_heads"], "num_key_value_heads": Hkv,
                          "head_dim": mc["head_dim"], "vocab_size": mc["vocab_size"], "weights_fingerprint": fp,
                          "path": base_dir},
           "training": {}, "lora": None, "keep_ratio": {"mean": 0.5}}
    with open(os.path.join(out, "kvgate_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    return out


@functools.lru_cache(maxsize=None)
def export_dir(gate_type: str) -> str:
    if gate_type == "attention":
        return write_export(os.path.join(tmpdir(), "export-attention"), "attention", 11, model_dir(), sinks=2)
    if gate_type == "attention-rule":  # the same gates reading the rule feature
        return write_export(os.path.join(tmpdir(), "export-attention-rule"), "attention", 11, model_dir(), sinks=2,
                            rule="attention")
    return write_export(os.path.join(tmpdir(), "export-mlp"), "mlp", 12, model_dir(), sinks=4, recent=4)


def prompts():
    g = torch.Generator().manual_seed(5)
    return [torch.randint(3, 128, (T + 6,), generator=g).tolist() for T in PROMPT_LENGTHS]


def mutated(name: str, gate_type="attention") -> str:
    """A fresh copy of an export to break."""
    d = os.path.join(tmpdir(), "bad-" + name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(export_dir(gate_type), d)
    return d


def edit_config(d: str, fn) -> None:
    p = os.path.join(d, "kvgate_config.json")
    with open(p) as f:
        cfg = json.load(f)
    fn(cfg)
    with open(p, "w") as f:
        json.dump(cfg, f)


def refused(fn, *phrases) -> str:
    try:
        fn()
    except GateExportError as e:
        msg = str(e)
        assert "\n" not in msg, f"not one line: {msg!r}"
        assert "hint:" in msg, f"no hint: {msg}"
        for p in phrases:
            assert p in msg, f"{p!r} not in {msg!r}"
        return msg
    raise AssertionError(f"not refused (wanted {phrases})")


def agate(*argv) -> str:
    if not AGATE:
        raise Skip("no agate binary (pass it as argv[1] or AGATE_BIN)")
    p = subprocess.run([AGATE, *map(str, argv), "--threads", "2"], capture_output=True, text=True)
    assert p.returncode == 0, f"agate {' '.join(map(str, argv))} failed: {p.stderr.strip()}"
    return p.stdout


def run_press(press, ids, model=None):
    """Prefill `ids` with the press; returns the compressed DynamicCache and the last logits."""
    from transformers import DynamicCache
    model = model or hf_model()
    cache = DynamicCache()
    with torch.no_grad(), press(model):
        out = model(torch.tensor([ids]), past_key_values=cache, use_cache=True)
    return cache, out.logits[0, -1]


# ---- export loading and refusals ------------------------------------------------------------

def test_load_export():
    for gt in ("attention", "mlp"):
        e = load_export(export_dir(gt))
        assert e.gate.type == gt and e.num_layers == 4 and e.num_kv_heads == 2
        check_model(e, hf_model(), model_dir())  # the right model and weights pass


def test_refusals():
    refused(lambda: load_export(os.path.join(tmpdir(), "nope")), "is not a folder")
    d = mutated("noconfig")
    os.remove(os.path.join(d, "kvgate_config.json"))
    refused(lambda: load_export(d), "has no kvgate_config.json")
    d = mutated("badjson")
    with open(os.path.join(d, "kvgate_config.json"), "w") as f:
        f.write("{not json")
    refused(lambda: load_export(d), "is not valid JSON")
    d = mutated("version")
    edit_config(d, lambda c: c.update(version=2))
    refused(lambda: load_export(d), "not an agate-kvgate version 1 export")
    d = mutated("type")
    edit_config(d, lambda c: c["gate"].update(type="linear"))
    refused(lambda: load_export(d), "gate.type 'linear' is not supported")
    d = mutated("rule")
    edit_config(d, lambda c: c["gate"].update(rule_feature="h2o"))
    refused(lambda: load_export(d), "gate.rule_feature 'h2o' is not supported")
    d = mutated("rule-weights")  # a rule feature without its weights
    edit_config(d, lambda c: c["gate"].update(rule_feature="attention"))
    refused(lambda: load_export(d), "lacks tensor model.layers.0.self_attn.kv_gate.rule.weight")
    d = mutated("threshold")
    edit_config(d, lambda c: c["gate"].update(threshold=1.5))
    refused(lambda: load_export(d), "gate.threshold must be in (0, 1)")
    # wrong layer count: the config says 5 layers, the tensors hold 4
    d = mutated("layers5")
    edit_config(d, lambda c: c["base_model"].update(num_hidden_layers=5))
    refused(lambda: load_export(d), "lacks tensor model.layers.4.self_attn.kv_gate.q_proj.weight")
    # ... the config says 3: a tensor too many
    d = mutated("layers3")
    edit_config(d, lambda c: c["base_model"].update(num_hidden_layers=3))
    refused(lambda: load_export(d), "does not have", "model.layers.3.")
    # a consistent export for a 3-layer model, next to the 4-layer one
    d = mutated("model3")
    edit_config(d, lambda c: c["base_model"].update(num_hidden_layers=3))
    from safetensors.torch import load_file
    t = load_file(os.path.join(d, "gates.safetensors"))
    save_file({k: v for k, v in t.items() if ".layers.3." not in k}, os.path.join(d, "gates.safetensors"))
    e = load_export(d)
    refused(lambda: check_model(e, hf_model()), "num_hidden_layers = 3, this one has 4")
    d = mutated("kvheads")
    edit_config(d, lambda c: c["base_model"].update(num_key_value_heads=4))
    refused(lambda: load_export(d), "has shape [2, 16], expected [4, 16]")
    # wrong shape and dtype
    d = mutated("shape")
    t = load_file(os.path.join(d, "gates.safetensors"))
    t["model.layers.1.self_attn.kv_gate.score.bias"] = torch.zeros(3)
    save_file(t, os.path.join(d, "gates.safetensors"))
    refused(lambda: load_export(d), "score.bias has shape [3], expected [2]")
    d = mutated("dtype")
    t = load_file(os.path.join(d, "gates.safetensors"))
    t["model.layers.0.self_attn.kv_gate.q_proj.weight"] = t["model.layers.0.self_attn.kv_gate.q_proj.weight"].half()
    save_file(t, os.path.join(d, "gates.safetensors"))
    refused(lambda: load_export(d), "is torch.float16, agate exports float32")
    # corrupt and truncated safetensors, missing file
    d = mutated("corrupt")
    p = os.path.join(d, "gates.safetensors")
    with open(p, "r+b") as f:
        f.write(b"\xff" * 16)
    refused(lambda: load_export(d), "is not a readable safetensors file")
    d = mutated("truncated")
    p = os.path.join(d, "gates.safetensors")
    os.truncate(p, os.path.getsize(p) - 100)
    refused(lambda: load_export(d), "is not a readable safetensors file")
    d = mutated("nogates")
    os.remove(os.path.join(d, "gates.safetensors"))
    refused(lambda: load_export(d), "has no gates.safetensors")
    # another base: same shape, other weights (fingerprint)
    e = load_export(export_dir("attention"))
    from transformers import LlamaForCausalLM
    other = LlamaForCausalLM.from_pretrained(other_model_dir(), dtype=torch.float32)
    refused(lambda: check_model(e, other, other_model_dir()), "trained on base weights", "same shape but other weights")
    # ... and AgatePress finds the folder by itself (config._name_or_path)
    from agate_gates import AgatePress
    refused(lambda: run_press(AgatePress(export_dir("attention")), prompts()[0], other), "trained on base weights")
    # LoRA: refused, never half-applied
    d = mutated("lora")
    save_file({"x": torch.zeros(1)}, os.path.join(d, "lora.safetensors"))
    refused(lambda: load_export(d), LORA_REFUSAL)
    d = mutated("lora-cfg")
    edit_config(d, lambda c: c.update(lora={"rank": 8, "alpha": 16, "targets": ["q_proj"]}))
    refused(lambda: load_export(d), LORA_REFUSAL)
    refused(lambda: AgatePress(d), LORA_REFUSAL)


# ---- the gates against the independent reference --------------------------------------------

def test_gates_match_reference():
    import kvgate_reference as kref
    import llama_reference as ref
    cfg = ref.load_model(model_dir(), torch.float32).cfg
    from agate_gates.gates import rule_features
    gen = torch.Generator().manual_seed(3)
    for gt in ("attention", "mlp", "attention-rule"):
        ours = Gates(load_export(export_dir(gt)), hf_model().config)
        theirs = kref.KVGates(export_dir(gt), cfg)
        x = torch.randn(1, 37, 64, generator=gen)
        rule_a = rule_b = None
        if gt == "attention-rule":  # the feature from a layer's queries [1, H, T, hd] and keys [1, Hkv, T, hd]
            q, k = torch.randn(1, 4, 37, 16, generator=gen), torch.randn(1, 2, 37, 16, generator=gen)
            rule_a, rule_b = rule_features(q, k), kref.rule_features(q[0], k[0])
            assert torch.allclose(rule_a[0], rule_b, atol=1e-5, rtol=0), f"rule features: {(rule_a[0] - rule_b).abs().max()}"
        for l in range(4):
            a, b = ours.probabilities(l, x, rule=rule_a)[0], theirs.probabilities(l, x[0], rule_b)
            assert torch.allclose(a, b, atol=1e-6, rtol=0), f"{gt} layer {l}: {(a - b).abs().max()}"
            assert torch.equal(ours.keep(l, x, rule=rule_a)[0], theirs.keep(l, x[0], rule_b)), f"{gt} layer {l}: flags differ"


# ---- AgatePress ------------------------------------------------------------------------------

def test_flags_mode_equals_agate_gate_post():
    from agate_gates import AgatePress
    summary = []
    for gt in ("attention", "mlp", "attention-rule"):
        for ids in prompts():
            ctx = ids[:-6]
            press = AgatePress(export_dir(gt))
            run_press(press, ctx)
            mine = torch.stack([press.kept[l][0] for l in range(4)]).to(torch.int64)  # [L, Hkv, T]
            with tempfile.TemporaryDirectory() as td:
                f = os.path.join(td, "flags.json")
                agate("generate", "--model", model_dir(), "--gates", export_dir(gt), "--policy", "gate-post",
                      "--tokens", ",".join(map(str, ctx)), "--max-new", "1", "--flags-out", f)
                with open(f) as fh:
                    theirs = torch.tensor(json.load(fh)["kept"])
            assert theirs.shape == mine.shape, (theirs.shape, mine.shape)
            differ = int((theirs != mine).sum())
            near = torch.stack([press.probabilities[l][0] for l in range(4)])
            near = int(((near - 0.5).abs() < 1e-5).sum())
            assert differ == 0, f"{gt}, T={len(ctx)}: {differ} of {mine.numel()} flags differ ({near} within 1e-5 of the threshold)"
            assert 0 < int(mine.sum()) < mine.numel(), "degenerate test: the gates keep all or nothing"
            summary.append(f"{gt} T={len(ctx)}: {mine.numel()} flags identical, keep {mine.float().mean():.3f}")
    print("   " + "; ".join(summary))


def test_flags_mode_continuation_equals_agate_score():
    """Masked keys (kvpress's head-wise mechanism) read like evicted ones: the continuation's
    log-likelihood over the compressed cache equals `agate score --context N --policy gate-post`."""
    from agate_gates import AgatePress
    worst = 0.0
    for gt in ("attention", "mlp"):
        for ids in prompts():
            ctx, cont = ids[:-6], ids[-6:]
            press = AgatePress(export_dir(gt))
            cache, last = run_press(press, ctx)
            with torch.no_grad():
                out = hf_model()(torch.tensor([cont]), past_key_values=cache,
                                 position_ids=torch.arange(len(ctx), len(ids))[None])
            logits = torch.cat([last[None], out.logits[0, :-1]])
            lp = torch.log_softmax(logits.double(), -1).gather(1, torch.tensor(cont)[:, None])[:, 0]
            got = json.loads(agate("score", "--model", model_dir(), "--gates", export_dir(gt), "--policy", "gate-post",
                                   "--tokens", ",".join(map(str, ids)), "--context", len(ctx)))["logprobs"]
            assert len(got) == len(cont), (len(got), len(cont))
            d = (lp - torch.tensor(got, dtype=torch.float64)).abs().max().item()
            worst = max(worst, d)
            assert d < 2e-3, f"{gt} T={len(ctx)}: continuation log-likelihoods differ by {d}"
            # and the masking matters: without it the continuation reads differently
            from transformers import DynamicCache
            with torch.no_grad():
                full = hf_model()(torch.tensor([ids])).logits[0, len(ctx) - 1:-1]
            lpf = torch.log_softmax(full.double(), -1).gather(1, torch.tensor(cont)[:, None])[:, 0]
            assert (lpf - lp).abs().max().item() > 1e-3, "eviction changed nothing: a weak test"
    print(f"   max |log p(press) - log p(agate score)| = {worst:.2e} nats")


def test_fixed_ratio_mode():
    from kvpress.utils import compute_n_kept
    from agate_gates import AgatePress
    for gt in ("attention", "mlp"):
        for r in (0.25, 0.5, 0.8):
            ctx = prompts()[0][:-6]
            T = len(ctx)
            press = AgatePress(export_dir(gt), compression_ratio=r)
            cache, _ = run_press(press, ctx)
            n = compute_n_kept(T, r)
            sinks = load_export(export_dir(gt)).gate.sink_tokens
            for l in range(4):
                kept, p = press.kept[l][0], press.probabilities[l][0]  # [Hkv, T]
                assert cache.layers[l].keys.shape[2] == n, (cache.layers[l].keys.shape, n)
                assert (kept.sum(-1) == n).all()
                assert kept[:, :sinks].all(), "sink tokens must be kept first"
                s = p.clone()
                s[:, :sinks] = 2.0
                for h in range(kept.shape[0]):
                    # the top-n of the same probabilities (ties aside)
                    assert s[h][kept[h]].min() >= s[h][~kept[h]].max(), (gt, r, l, h)
    # r = 0 keeps everything
    press = AgatePress(export_dir("attention"), compression_ratio=0.0)
    cache, _ = run_press(press, prompts()[0])
    assert cache.layers[0].keys.shape[2] == len(prompts()[0])


def test_fixed_ratio_mode_protected_window():
    """window=W: the last W tokens are kept first and counted in the budget (agate's gate-rank)."""
    from kvpress.utils import compute_n_kept
    from agate_gates import AgatePress
    ctx = prompts()[0][:-6]
    T, W = len(ctx), 5
    for r in (0.5, 0.8):
        press = AgatePress(export_dir("attention"), compression_ratio=r, window=W)
        cache, _ = run_press(press, ctx)
        n = compute_n_kept(T, r)
        assert n > W + 2, (n, W)
        for l in range(4):
            kept, p = press.kept[l][0], press.probabilities[l][0]
            assert cache.layers[l].keys.shape[2] == n
            assert kept[:, T - W:].all(), "the window must be kept"
            s = p.clone()
            s[:, T - W:] = 2.0
            s[:, :load_export(export_dir("attention")).gate.sink_tokens] = 2.0
            for h in range(kept.shape[0]):
                assert s[h][kept[h]].min() >= s[h][~kept[h]].max(), (r, l, h)
    try:
        AgatePress(export_dir("attention"), compression_ratio=0.5, window=-1)
        raise AssertionError("window=-1 was accepted")
    except ValueError as e:
        assert "window must be" in str(e), e


def test_adakv_wrapper():
    from kvpress import AdaKVPress
    from kvpress.utils import compute_n_kept
    from agate_gates import AgatePress
    ctx = prompts()[1][:-6]
    T = len(ctx)
    inner = AgatePress(export_dir("attention"), compression_ratio=0.5)
    press = AdaKVPress(inner)
    model = hf_model()
    run_press(press, ctx)
    n = compute_n_kept(T, 0.5)
    for layer in model.model.layers:
        b, h, t = layer.self_attn.masked_key_indices
        assert b.numel() == 2 * (T - n)  # the layer keeps Hkv x n entries in all, split by the gates' scores
        p = inner.probabilities[layer.self_attn.layer_idx][0]
        assert not ((t < 2)).any(), "AdaKV evicted a sink token"
        assert p.shape == (2, T)


def test_eager_refused_in_flags_mode():
    from agate_gates import AgatePress
    from transformers import LlamaForCausalLM
    eager = LlamaForCausalLM.from_pretrained(model_dir(), attn_implementation="eager", dtype=torch.float32).eval()
    refused(lambda: run_press(AgatePress(export_dir("mlp")), prompts()[0], eager), "eager attention")


def test_pipeline():
    """AgatePress inside kvpress's kv-press-text-generation pipeline (context compressed, then
    the question): runs, compresses exactly the context, and answers as a manual run does."""
    import kvpress  # noqa: F401  (registers the pipeline)
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast, pipeline
    from agate_gates import AgatePress
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, 128)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    model = hf_model()
    pipe = pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer, device="cpu")
    ids = prompts()[1]
    context = " ".join(f"w{i}" for i in ids[:-6]) + " "
    question = " ".join(f"w{i}" for i in ids[-6:])
    for r in (None, 0.5):
        press = AgatePress(export_dir("attention"), compression_ratio=r)
        answer = pipe(context, question=question, press=press, max_new_tokens=5)["answer"]
        assert isinstance(answer, str) and answer, answer
        T = len(ids) - 6 + 1  # + BOS (no chat template)
        assert press.kept[0].shape == (1, 2, T), press.kept[0].shape
        # the same greedy answer by hand: prefill the context with the press, then the question
        ctx_ids = [1] + ids[:-6]
        press2 = AgatePress(export_dir("attention"), compression_ratio=r)
        cache, _ = run_press(press2, ctx_ids)
        q = tokenizer.encode(question + "\n", add_special_tokens=False)
        pos = len(ctx_ids)
        out_ids = []
        x = torch.tensor([q])
        with torch.no_grad():
            for _ in range(5):
                logits = model(x, past_key_values=cache, position_ids=torch.arange(pos, pos + x.shape[1])[None]).logits
                pos += x.shape[1]
                nxt = int(logits[0, -1].argmax())
                out_ids.append(nxt)
                if nxt == 2:
                    break
                x = torch.tensor([[nxt]])
        assert tokenizer.decode(out_ids, skip_special_tokens=True) == answer, (out_ids, answer)
        print(f"   pipeline (compression_ratio={r}): answer {answer!r}, context {T} tokens, "
              f"kept {float(torch.stack([press.kept[l].float().mean() for l in range(4)]).mean()):.3f}")


def test_smollm2_flags_mode():
    """The same agreement on a real model (SmolLM2-135M-Instruct: 30 layers, 9 / 3 heads, RoPE
    theta 1e5), with random attention gates for it; skipped without models/smollm2-135m-instruct."""
    mdir = os.path.join(SRC, "models", "smollm2-135m-instruct")
    if not os.path.isfile(os.path.join(mdir, "model.safetensors")):
        raise Skip("no models/smollm2-135m-instruct (scripts/get_model.sh smollm2)")
    if not AGATE:
        raise Skip("no agate binary (pass it as argv[1] or AGATE_BIN)")
    from transformers import LlamaForCausalLM
    from agate_gates import AgatePress
    e = write_export(os.path.join(tmpdir(), "export-smollm2"), "attention", 21, mdir, sinks=4)
    model = LlamaForCausalLM.from_pretrained(mdir, attn_implementation="sdpa", dtype=torch.float32).eval()
    ids = torch.randint(10, 49000, (96,), generator=torch.Generator().manual_seed(7)).tolist()
    press = AgatePress(e)
    run_press(press, ids, model)
    L = model.config.num_hidden_layers
    mine = torch.stack([press.kept[l][0] for l in range(L)]).to(torch.int64)
    with tempfile.TemporaryDirectory() as td:
        f = os.path.join(td, "flags.json")
        agate("generate", "--model", mdir, "--gates", e, "--policy", "gate-post", "--tokens", ",".join(map(str, ids)),
              "--max-new", "1", "--flags-out", f)
        with open(f) as fh:
            theirs = torch.tensor(json.load(fh)["kept"])
    p = torch.stack([press.probabilities[l][0] for l in range(L)])
    differ = theirs != mine
    # float32 forwards of two implementations may flip an entry sitting on the threshold
    margin = (p - 0.5).abs()
    assert int(differ.sum()) == 0 or margin[differ].max() < 1e-4, \
        f"{int(differ.sum())} flags differ, max margin {margin[differ].max():.2e}"
    print(f"   SmolLM2 T=96: {int((~differ).sum())} of {mine.numel()} flags identical "
          f"({int(differ.sum())} differ at the threshold), keep {mine.float().mean():.3f}")


def test_generate_equals_agate_generate():
    """transformers' model.generate inside `with press(model)` (flags mode): the press compresses
    the prompt at the prefill, the decoded tokens are appended; the greedy ids equal
    `agate generate --policy gate-post`'s."""
    from agate_gates import AgatePress
    model = hf_model()
    for gt in ("attention", "mlp"):
        ctx = prompts()[0][:-6]
        press = AgatePress(export_dir(gt))
        with torch.no_grad(), press(model):
            out = model.generate(torch.tensor([ctx]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)
        mine = out[0, len(ctx):].tolist()
        text = agate("generate", "--model", model_dir(), "--gates", export_dir(gt), "--policy", "gate-post",
                     "--tokens", ",".join(map(str, ctx)), "--max-new", 8)
        line = [x for x in text.splitlines() if x.startswith("[ids]")]
        assert line, text
        theirs = [int(v) for v in line[0].split()[1].split(",")]
        assert mine == theirs, (gt, mine, theirs)
        # and it is not the full cache's answer (the eviction took effect)
        full = model.generate(torch.tensor([ctx]), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
        print(f"   {gt}: generate {mine} (full cache {full[0, len(ctx):].tolist()})")


TESTS = [test_load_export, test_refusals, test_gates_match_reference, test_flags_mode_equals_agate_gate_post,
         test_flags_mode_continuation_equals_agate_score, test_fixed_ratio_mode,
         test_fixed_ratio_mode_protected_window, test_adakv_wrapper,
         test_eager_refused_in_flags_mode, test_pipeline,
         test_generate_equals_agate_generate, test_smollm2_flags_mode]


def main(argv) -> int:
    global AGATE
    if len(argv) > 1:
        AGATE = argv[1]
    torch.set_num_threads(2)
    failed, skipped = [], []
    for t in TESTS:
        try:
            t()
            print(f"[ok] {t.__name__}", flush=True)
        except Skip as e:
            skipped.append(t.__name__)
            print(f"[skip] {t.__name__}: {e}", flush=True)
        except Exception as e:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            failed.append(t.__name__)
            print(f"[FAIL] {t.__name__}: {type(e).__name__}: {e}", flush=True)
    print(f"{len(TESTS) - len(failed) - len(skipped)} passed, {len(skipped)} skipped, {len(failed)} failed"
          + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
