#!/usr/bin/env python3
"""transformers as agate's logits oracle.

1. Every committed model fixture (tests/fixtures/models/*): transformers' logits on the
   fixture's tokens equal the committed expected logits (which the C++ unit tests compare with),
   and agate's log-probabilities equal transformers'.
2. Fresh random models built with transformers' own config classes and initialisation, longer
   sequences than the fixtures: llama (GQA, llama3 rope scaling, tied and untied), mistral (a
   sliding window shorter than the sequence), qwen2 (q/k/v biases), in float32 and bfloat16.
3. SmolLM2-135M-Instruct (scripts/get_model.sh smollm2): log-probabilities on held-out English
   within 1e-4 in float32, and greedy generation identical for 64 tokens.

Tolerances: float32 log-probs 1e-4 absolute (fixtures and random models); bfloat16: both sides
round differently in every matmul, so bf16 compares the mean absolute log-prob difference
(< 0.05) and the worst position (< 0.5) - a wrong rope or mask moves both by far more.
"""
import glob
import json
import os
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle_lib as lib  # noqa: E402

BIN, SRC = lib.args()
lib.require("torch", "transformers", "safetensors")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
import torch  # noqa: E402
import transformers  # noqa: E402
transformers.utils.logging.disable_progress_bar()
from safetensors.torch import load_file  # noqa: E402

torch.set_num_threads(2)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
checks = lib.Checks()


def hf_model(folder, dtype):
    m = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype], attn_implementation="eager")
    return m.eval()


@torch.no_grad()
def hf_logprobs(model, tokens):
    logits = model(torch.tensor([tokens])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return lp[:-1].gather(1, torch.tensor(tokens[1:])[:, None])[:, 0]


def compare(name, model_dir, tokens, dtype, model=None):
    model = model or hf_model(model_dir, dtype)
    want = hf_logprobs(model, tokens)
    got = torch.tensor(lib.agate_logprobs(BIN, model_dir, tokens, dtype))
    d = (got - want).abs()
    if dtype == "float32":
        checks.check(d.max().item() <= 1e-4, f"{name} {dtype} logprobs", f"max |diff| {d.max().item():.2e} over {len(d)} positions")
    else:
        ok = d.mean().item() < 0.05 and d.max().item() < 0.5
        checks.check(ok, f"{name} {dtype} logprobs", f"mean |diff| {d.mean().item():.3f}, max {d.max().item():.3f} over {len(d)} positions")


# ---- 1. the committed fixtures ----------------------------------------------------------
for case in sorted(glob.glob(os.path.join(SRC, "tests/fixtures/models/*/"))):
    name = os.path.basename(case.rstrip("/"))
    cfg = json.load(open(os.path.join(case, "config.json")))
    dtype = "bfloat16" if cfg.get("torch_dtype", cfg.get("dtype")) == "bfloat16" else "float32"
    exp = load_file(os.path.join(case, "expected.safetensors"))
    model = hf_model(case, dtype)
    with torch.no_grad():
        logits = model(exp["tokens"]).logits.float()
    d = (logits - exp["logits"]).abs().max().item()
    tol = 1e-4 if dtype == "float32" else 0.25
    checks.check(d <= tol, f"fixture {name}: transformers == committed expected logits", f"max |diff| {d:.2e} (tol {tol})")
    compare(f"fixture {name}", case, exp["tokens"][0].tolist(), dtype, model)


# ---- 2. fresh random models from transformers' own classes ------------------------------
def random_model(seed, kind, tmp, **over):
    base = dict(vocab_size=211, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-6, initializer_range=0.2)
    base.update(over)
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config}[kind]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cls(**base), dtype=torch.float32)
    with torch.no_grad():  # norms away from 1 and biases away from 0, so a missing one shows
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.2 * torch.randn_like(p))
    rope = over.get("rope_parameters", {}).get("rope_type", "default")
    folder = os.path.join(tmp, f"{kind}_kv{base['num_key_value_heads']}_{'tied' if base.get('tie_word_embeddings') else 'untied'}"
                          f"_rope-{rope}" + (f"_window{base['sliding_window']}" if "sliding_window" in base else ""))
    model.save_pretrained(folder)
    return folder


CASES = [
    ("llama", dict(tie_word_embeddings=False)),
    ("llama", dict(tie_word_embeddings=True, num_key_value_heads=1)),
    ("llama", dict(tie_word_embeddings=False, num_key_value_heads=4,
                   rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0,
                                        high_freq_factor=4.0, original_max_position_embeddings=64))),
    ("llama", dict(tie_word_embeddings=True, rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0))),
    ("mistral", dict(tie_word_embeddings=False, sliding_window=16, head_dim=16)),
    ("qwen2", dict(tie_word_embeddings=True)),
]
g = torch.Generator().manual_seed(7)
with tempfile.TemporaryDirectory() as tmp:
    for seed, (kind, over) in enumerate(CASES):
        folder = random_model(seed, kind, tmp, **over)
        tokens = torch.randint(0, 211, (48,), generator=g).tolist()
        for dtype in ("float32", "bfloat16"):
            compare(f"random {os.path.basename(folder)}", folder, tokens, dtype)


# ---- 3. SmolLM2 ---------------------------------------------------------------------------
HELD_OUT = (
    "The lighthouse keeper climbed the spiral stairs each evening, counting the steps out of habit "
    "rather than need. There were one hundred and twelve of them, worn smooth in the middle by a "
    "century of boots. At the top he trimmed the wick, polished the great lens with a soft cloth, and "
    "looked out over the water. Ships rarely passed this way any more; the shipping lanes had moved "
    "north when the harbour silted up. Still, the light had to burn. It was written into the lease, "
    "and besides, he liked the ritual. Some nights a fishing boat would blink its lamp twice in reply, "
    "and he would raise his hand, although nobody could have seen him. In winter the storms came in "
    "from the west, and the whole tower hummed like a struck bell. He kept a logbook of every gale: "
    "the date, the wind, the height of the waves against the rocks below. His predecessor had done the "
    "same, and the shelves in the keeper's cottage held ninety years of weather, written in four "
    "different hands. On clear mornings he walked the cliff path to the village for bread and news."
)
smol = lib.smollm2_dir(SRC)
if smol is None:
    print("SKIP part 3: models/smollm2-135m-instruct is absent (run scripts/get_model.sh smollm2)")
else:
    tok = transformers.AutoTokenizer.from_pretrained(smol)
    ids = tok(HELD_OUT, add_special_tokens=False)["input_ids"]
    model = hf_model(smol, "float32")
    compare("SmolLM2-135M", smol, ids, "float32", model)
    prompt = tok("The history of the printing press begins in the fifteenth century, when", add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    with torch.no_grad():
        hf_out = model.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False, eos_token_id=eos,
                                pad_token_id=eos)[0, len(prompt):].tolist()
    out = lib.agate(BIN, "generate", "--model", smol, "--tokens", ",".join(map(str, prompt)), "--max-new", 64)
    line = next(l for l in out.splitlines() if l.startswith("[ids] "))
    got = [int(x) for x in line[len("[ids] "):].split(",") if x]
    same = next((i for i, (a, b) in enumerate(zip(got, hf_out)) if a != b), min(len(got), len(hf_out)))
    checks.check(got == hf_out and len(hf_out) == 64, "SmolLM2-135M greedy generation == transformers generate",
                 f"identical for {same} tokens; agate {len(got)}, transformers {len(hf_out)} (of 64)")

checks.finish()
