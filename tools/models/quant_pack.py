#!/usr/bin/env python3
"""Carries a converted GGUF model to a machine that has torch but no `gguf`/`transformers` and
too small a transfer limit for float32 weights (the GPU machines of the device tool: 64 MiB per
call, torch only): the GGUF's quantised blocks travel as they are, and are dequantised there
with torch alone into the same model folder that tools/models/convert_gguf.py writes here.

    quant_pack.py pack   --gguf FILE --model DIR --out PACK [--parts N]   (here: needs gguf)
    quant_pack.py unpack --pack PACK --out DIR                            (there: needs torch)
    quant_pack.py verify --model DIR --against DIR                        (bitwise comparison)

PACK is a folder: index.json (per tensor: Hugging Face name, GGUF type, shape, byte range, the
q/k head count to un-permute), blocks.bin.NN (the raw blocks, split in N parts so that each
part can travel in its own call) and the model folder's small files (config.json,
tokenizer.json, ...). Dequantisation follows gguf-py's float32 arithmetic (Q8_0: d * q;
Q4_1: d * q + m; d and m float16) and transformers' un-permutation of llama.cpp's q/k rows, so
`verify` against convert_gguf.py's folder is bitwise (scripts/gpu_issue19.sh checks it there
against each tensor's SHA-256 recorded at pack time). Only F32, Q8_0 and Q4_1 are handled (SmolLM2-135M's
types); anything else is refused with a hint.
"""
import argparse
import ctypes
import hashlib
import json
import os
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from convert_gguf import sha256 as sha256_file  # noqa: E402  (stdlib-only at import: safe without gguf)

GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
BLOCK_TO_HF = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
TYPES = {"F32", "Q8_0", "Q4_1"}
SMALL_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja", "README.md", "agate_provenance.json", ".agate-model"]


def fail(msg, hint):
    print(f"quant_pack: {msg} (hint: {hint})", file=sys.stderr)
    sys.exit(2)


def hf_name(name):
    if name in GGUF_TO_HF:
        return GGUF_TO_HF[name]
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in BLOCK_TO_HF:
        return f"model.layers.{parts[1]}.{BLOCK_TO_HF[parts[2]]}"
    fail(f"GGUF tensor '{name}' has no Hugging Face name here", "only llama-architecture GGUFs are handled")


def pack(args):
    import gguf
    reader = gguf.GGUFReader(args.gguf)
    heads = int(reader.fields["llama.attention.head_count"].contents())
    kv_heads = int(reader.fields["llama.attention.head_count_kv"].contents())
    tmp = args.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    entries, blob = [], bytearray()
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in TYPES:
            fail(f"{t.name} is {kind}", f"pack handles {', '.join(sorted(TYPES))}; convert with tools/models/convert_gguf.py")
        raw = bytes(t.data.tobytes())
        if len(raw) != t.n_bytes:
            fail(f"{t.name}: {len(raw)} bytes read, {t.n_bytes} expected", "the GGUF file is truncated")
        name = hf_name(t.name)
        permute = heads if t.name.endswith("attn_q.weight") else kv_heads if t.name.endswith("attn_k.weight") else 0
        entries.append({"name": name, "type": kind, "shape": [int(d) for d in reversed(t.shape)],
                        "offset": len(blob), "bytes": len(raw), "permute_heads": permute})
        blob += raw
    n = max(1, args.parts)
    size = (len(blob) + n - 1) // n
    for i in range(n):
        with open(os.path.join(tmp, f"blocks.bin.{i:02d}"), "wb") as f:
            f.write(blob[i * size:(i + 1) * size])
    for small in SMALL_FILES:
        src = os.path.join(args.model, small)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(tmp, small))
    values, header, file_sha = {}, None, None
    weights = os.path.join(args.model, "model.safetensors")
    if os.path.exists(weights):  # each tensor's float32 values and the file's own header, checked by unpack
        from safetensors import safe_open
        with safe_open(weights, "pt") as f:
            values = {k: tensor_sha256(f.get_tensor(k).float()) for k in f.keys()}
        with open(weights, "rb") as f:
            header = f.read(struct.unpack("<Q", f.read(8))[0]).decode()
        file_sha = sha256_file(weights)
    index = {"format": "agate-quant-pack-1", "parts": n, "total_bytes": len(blob),
             "blocks_sha256": hashlib.sha256(blob).hexdigest(), "tensors": entries,
             "values_sha256": values, "safetensors_header": header, "safetensors_sha256": file_sha}
    with open(os.path.join(tmp, "index.json"), "w") as f:
        json.dump(index, f, indent=1)
    shutil.rmtree(args.out, ignore_errors=True)
    os.rename(tmp, args.out)
    print(f"quant_pack: {len(entries)} tensors, {len(blob) / 1e6:.1f} MB of blocks in {n} part(s) -> {args.out}")


def tensor_sha256(t):
    c = t.contiguous()
    return hashlib.sha256(ctypes.string_at(c.data_ptr(), c.numel() * c.element_size())).hexdigest()


def dequantize(torch, raw, kind, shape):
    """raw: uint8 tensor of the GGUF blocks -> float32 tensor of `shape` (gguf-py's arithmetic)."""
    numel = 1
    for d in shape:
        numel *= d
    if kind == "F32":
        return raw.view(torch.float32).reshape(shape).clone()
    if kind == "Q8_0":  # 34-byte blocks: float16 d, 32 x int8
        b = raw.reshape(-1, 34)
        d = b[:, :2].contiguous().view(torch.float16).to(torch.float32)
        q = b[:, 2:].contiguous().view(torch.int8).to(torch.float32)
        return (d * q).reshape(shape)
    if kind == "Q4_1":  # 20-byte blocks: float16 d, float16 m, 16 bytes of nibbles (low: 0-15, high: 16-31)
        b = raw.reshape(-1, 20)
        d = b[:, :2].contiguous().view(torch.float16).to(torch.float32)
        m = b[:, 2:4].contiguous().view(torch.float16).to(torch.float32)
        qs = b[:, 4:]
        q = torch.cat([qs & 0x0F, qs >> 4], dim=1).to(torch.float32)
        return ((d * q) + m).reshape(shape)
    fail(f"type {kind}", "unpack handles F32, Q8_0, Q4_1")
    return None


def unpermute(w, heads):
    """transformers' reverse of llama.cpp's q/k row permutation."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_safetensors(path, tensors, header_text=None):
    """tensors: list of (name, float32 contiguous tensor) -> a safetensors file (F32). With
    header_text (the packed file's own header), that header is written byte for byte and each
    tensor goes to its offsets there, so the file is identical to the packed one (agate's
    weights fingerprint hashes the header too)."""
    if header_text is None:
        header, offset = {}, 0
        for name, t in tensors:
            n = t.numel() * 4
            header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + n]}
            offset += n
        header["__metadata__"] = {"format": "pt"}
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * ((8 - len(text) % 8) % 8)
    else:
        header, text = json.loads(header_text), header_text.encode()
        by_name = dict(tensors)
        if set(by_name) != set(k for k in header if k != "__metadata__"):
            fail("the packed header names other tensors than the GGUF holds", "re-pack from the matching folder")
        for name, t in tensors:
            e = header[name]
            if e["dtype"] != "F32" or list(e["shape"]) != list(t.shape):
                fail(f"{name}: the packed header says {e['dtype']} {e['shape']}", "re-pack from a float32 conversion")
        tensors = sorted(tensors, key=lambda nt: header[nt[0]]["data_offsets"][0])
        end = 0
        for name, t in tensors:
            b, e = header[name]["data_offsets"]
            if b != end or e - b != t.numel() * 4:
                fail(f"{name}: the packed header's offsets leave gaps", "re-pack from a safetensors file without padding")
            end = e
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, t in tensors:
            c = t.contiguous()
            f.write(ctypes.string_at(c.data_ptr(), c.numel() * 4))  # no numpy needed


def unpack(args):
    import torch
    index_path = os.path.join(args.pack, "index.json")
    if not os.path.exists(index_path):
        fail(f"{args.pack} has no index.json", "pass the folder written by 'quant_pack.py pack'")
    with open(index_path) as f:
        index = json.load(f)
    if index.get("format") != "agate-quant-pack-1":
        fail(f"{index_path}: unknown format {index.get('format')!r}", "re-pack with this version of quant_pack.py")
    blob = bytearray()
    for i in range(index["parts"]):
        part = os.path.join(args.pack, f"blocks.bin.{i:02d}")
        if not os.path.exists(part):
            fail(f"{part} is missing", f"all {index['parts']} parts must be in {args.pack}")
        with open(part, "rb") as f:
            blob += f.read()
    if len(blob) != index["total_bytes"] or hashlib.sha256(blob).hexdigest() != index["blocks_sha256"]:
        fail(f"{args.pack}: the blocks do not match their SHA-256", "a part is truncated or corrupt; carry it again")
    raw_all = torch.frombuffer(blob, dtype=torch.uint8)
    tensors = []
    for e in index["tensors"]:
        raw = raw_all[e["offset"]:e["offset"] + e["bytes"]]
        w = dequantize(torch, raw, e["type"], e["shape"])
        if e["permute_heads"]:
            w = unpermute(w, e["permute_heads"])
        tensors.append((e["name"], w.contiguous()))
    tensors.sort(key=lambda nt: nt[0])
    tmp = args.out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    write_safetensors(os.path.join(tmp, "model.safetensors"), tensors, index.get("safetensors_header"))
    for small in SMALL_FILES:
        src = os.path.join(args.pack, small)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(tmp, small))
    want = index.get("values_sha256") or {}
    bad = [name for name, t in tensors if name in want and tensor_sha256(t) != want[name]]
    if bad:
        fail(f"{len(bad)} dequantised tensors differ from the folder that was packed (first: {bad[0]})",
             "the pack was made from another conversion; compare with 'quant_pack.py verify'")
    file_sha = index.get("safetensors_sha256")
    if file_sha and sha256_file(os.path.join(tmp, "model.safetensors")) != file_sha:
        fail("model.safetensors is not byte-identical to the packed folder's", "re-pack with this version of quant_pack.py")
    shutil.rmtree(args.out, ignore_errors=True)
    os.rename(tmp, args.out)
    print(f"quant_pack: {len(tensors)} tensors dequantised -> {args.out}/model.safetensors"
          + (" (byte-identical to the packed folder's file)" if file_sha else
             f" (bitwise equal to the packed folder's, {len(want)} tensors checked)" if want else ""))


def verify(args):
    from safetensors import safe_open
    a = safe_open(os.path.join(args.model, "model.safetensors"), "pt")
    b = safe_open(os.path.join(args.against, "model.safetensors"), "pt")
    if set(a.keys()) != set(b.keys()):
        fail("the tensor names differ", f"only in {args.model}: {sorted(set(a.keys()) - set(b.keys()))[:3]}")
    worst = 0.0
    for k in a.keys():
        x, y = a.get_tensor(k), b.get_tensor(k).to(a.get_tensor(k).dtype)
        if x.shape != y.shape:
            fail(f"{k}: shape {tuple(x.shape)} against {tuple(y.shape)}", "the conversions disagree")
        worst = max(worst, float((x - y).abs().max()))
    print(f"quant_pack: {len(list(a.keys()))} tensors, largest difference {worst}")
    sys.exit(0 if worst == 0 else 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("--gguf", required=True)
    a.add_argument("--model", required=True, help="the folder convert_gguf.py made from the same GGUF")
    a.add_argument("--out", required=True)
    a.add_argument("--parts", type=int, default=1)
    a = sub.add_parser("unpack")
    a.add_argument("--pack", required=True)
    a.add_argument("--out", required=True)
    a = sub.add_parser("verify")
    a.add_argument("--model", required=True)
    a.add_argument("--against", required=True)
    args = p.parse_args()
    {"pack": pack, "unpack": unpack, "verify": verify}[args.cmd](args)


if __name__ == "__main__":
    main()
