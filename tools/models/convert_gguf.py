#!/usr/bin/env python3
"""Converts a llama-architecture GGUF file into a Hugging Face model folder.

Uses transformers' own GGUF loader (which dequantises through llama.cpp's `gguf` package and
undoes llama.cpp's q/k row permutation) and `save_pretrained`; nothing here dequantises by hand.

    convert_gguf.py --gguf FILE --out DIR [--name NAME] [--source TEXT]

Writes DIR atomically (a sibling temp folder renamed at the end): config.json,
model.safetensors (float32), generation_config.json, tokenizer.json, tokenizer_config.json
and README.md (provenance: source, quantisation, the GGUF's SHA-256).
"""
import argparse
import hashlib
import json
import os
import shutil
import sys

SUPPORTED_ARCHS = {"llama"}
SUPPORTED_QUANTS = {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"}


def fail(msg, hint):
    print(f"convert_gguf: {msg} (hint: {hint})", file=sys.stderr)
    sys.exit(2)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def inspect_gguf(path):
    """Returns (architecture, sorted tensor quantisation names); refuses what we cannot convert."""
    import gguf
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        fail(f"{path} is not a readable GGUF file ({type(e).__name__}: {e})",
             "pass the .gguf from the model's release")
    field = reader.fields.get("general.architecture")
    if field is None:
        fail(f"{path} has no general.architecture", "the file is not a model GGUF")
    arch = bytes(field.parts[field.data[0]]).decode()
    if arch not in SUPPORTED_ARCHS:
        fail(f"{path}: architecture '{arch}' is not supported (supported: {', '.join(sorted(SUPPORTED_ARCHS))})",
             "agate runs llama-architecture models")
    quants = sorted({t.tensor_type.name for t in reader.tensors})
    bad = [q for q in quants if q not in SUPPORTED_QUANTS]
    if bad:
        fail(f"{path}: quantisation {', '.join(bad)} is not supported (supported: {', '.join(sorted(SUPPORTED_QUANTS))})",
             "convert from an F16/Q8_0/Q4_x/Q5_x/Q6_K file")
    return arch, quants


def gguf_tokenizer_facts(path):
    """The GGUF's own tokenizer metadata: vocabulary size and special token ids."""
    import gguf
    r = gguf.GGUFReader(path)

    def field(name, default=None):
        f = r.fields.get(name)
        return default if f is None else f.contents()

    return {"n_tokens": len(r.fields["tokenizer.ggml.tokens"].data),
            "bos": field("tokenizer.ggml.bos_token_id"), "eos": field("tokenizer.ggml.eos_token_id"),
            "unk": field("tokenizer.ggml.unknown_token_id"), "pad": field("tokenizer.ggml.padding_token_id")}


def repair_tokenizer(folder, facts):
    """transformers 5.2 turns a llama-architecture GGUF's gpt2 tokenizer into a CodeLlama
    tokenizer: it appends 5 fill-in-the-middle tokens past the GGUF's vocabulary (ids the model
    has no embedding for) and names BOS as EOS. Put the GGUF's own facts back: drop added tokens
    beyond its vocabulary, and take bos/eos/unk/pad from its metadata. Returns what changed."""
    changed = []
    tj_path = os.path.join(folder, "tokenizer.json")
    tj = json.load(open(tj_path))
    keep = [t for t in tj.get("added_tokens", []) if t["id"] < facts["n_tokens"]]
    dropped = [t["content"] for t in tj.get("added_tokens", []) if t["id"] >= facts["n_tokens"]]
    if dropped:
        tj["added_tokens"] = keep
        vocab = tj["model"]["vocab"]
        for c in dropped:
            if vocab.get(c, -1) >= facts["n_tokens"]:
                del vocab[c]
        with open(tj_path, "w") as f:
            json.dump(tj, f, ensure_ascii=False, indent=1)
        changed.append(f"dropped {len(dropped)} added tokens past the GGUF's {facts['n_tokens']}: {', '.join(dropped)}")
    id_to_tok = {t["id"]: t["content"] for t in keep}
    tc_path = os.path.join(folder, "tokenizer_config.json")
    tc = json.load(open(tc_path))
    for key in ("bos", "eos", "unk", "pad"):
        i = facts[key]
        if i is not None and i in id_to_tok and tc.get(f"{key}_token") != id_to_tok[i]:
            changed.append(f"{key}_token {tc.get(key + '_token')!r} -> {id_to_tok[i]!r}")
            tc[f"{key}_token"] = id_to_tok[i]
            tc[f"{key}_token_id"] = i
    for k in ("extra_special_tokens", "prefix_token", "middle_token", "suffix_token", "eot_token", "fill_token"):
        tc.pop(k, None)
    if tc.get("tokenizer_class") == "CodeLlamaTokenizer":
        tc["tokenizer_class"] = "PreTrainedTokenizerFast"
        changed.append("tokenizer_class CodeLlamaTokenizer -> PreTrainedTokenizerFast")
    with open(tc_path, "w") as f:
        json.dump(tc, f, ensure_ascii=False, indent=2)
    return changed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="model")
    ap.add_argument("--source", default="")
    a = ap.parse_args()
    if not os.path.isfile(a.gguf):
        fail(f"no such file {a.gguf}", "check the path")
    arch, quants = inspect_gguf(a.gguf)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src_dir, src_file = os.path.split(os.path.abspath(a.gguf))
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=src_file)
    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=src_file, dtype=torch.float32)

    out = os.path.abspath(a.out)
    tmp = out + ".tmp.convert"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    repairs = repair_tokenizer(tmp, gguf_tokenizer_facts(a.gguf))
    digest = sha256(a.gguf)
    with open(os.path.join(tmp, "README.md"), "w") as f:
        f.write(f"""# {a.name}

Converted by agate's `tools/models/convert_gguf.py` (transformers' GGUF loader + `save_pretrained`).

- Source: {a.source or a.gguf}
- GGUF file: `{src_file}` (SHA-256 `{digest}`)
- Architecture: {arch}; tensor types in the GGUF: {', '.join(quants)}
- **The weights are dequantised** from those types to float32: they are not the original
  full-precision checkpoint, and quality is that of the quantised model.
- Tokenizer: transformers' GGUF conversion, repaired from the GGUF's own metadata
  ({'; '.join(repairs) if repairs else 'nothing to repair'}).
- Licence: as stated by the source (SmolLM2: Apache-2.0).
""")
    with open(os.path.join(tmp, "agate_provenance.json"), "w") as f:
        json.dump({"gguf": src_file, "gguf_sha256": digest, "source": a.source, "quantisations": quants, "tokenizer_repairs": repairs,
                   "converter": "transformers.from_pretrained(gguf_file=...) + save_pretrained"}, f, indent=1)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
