#!/usr/bin/env python3
"""Oracle test: `agate tokenizer encode/decode` against Hugging Face `tokenizers`.

For each tokenizer.json below, every string of a varied corpus is encoded by agate (one process,
--jsonl) and by tokenizers' Tokenizer.encode(text, add_special_tokens=False); the ids must be
identical. The ids are then decoded by both (tokenizers: skip_special_tokens=False); the texts
must be identical, and equal to the (normalized) input wherever the tokenizer round-trips. Finally
`agate tokenize` turns the corpus into shards with one of them: the manifest must carry the
file's CRC-32, its vocabulary size, its EOS id and the token count tokenizers implies. The ids a
prompt starts with (`encode --special`) must equal tokenizers' encode(text, add_special_tokens=True)
for every post-processor type, and transformers' tokenizer(text) on the SmolLM2 folder.

Tokenizers:
  smollm2  models/smollm2-135m-instruct/tokenizer.json (GPT-2 ByteLevel regex, ByteFallback/Fuse/
           Replace decoder chain; skipped with a message when the model folder is absent)
  llama3   built here: Split(Llama-3 regex) + ByteLevel, ignore_merges, vocab entries that no merge
           reaches, "a b" string merges, special tokens after the vocabulary
  qwen2    built here: NFC + Split(Qwen2 regex) + ByteLevel, [a, b] merges, special and non-special
           added tokens, a normalized added token
  digits   built here: Digits(individual) + ByteLevel(add_prefix_space, GPT-2 regex), added
           tokens with lstrip/rstrip and single_word

usage: tokenizer_oracle.py AGATE_BINARY SOURCE_DIR    (exit 0 pass, 1 fail, 77 skipped)
"""
import json
import os
import random
import subprocess
import sys
import tempfile
import unicodedata
import zlib

SKIP = 77

try:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
except ImportError as e:  # the project venv has it (scripts/setup.sh)
    print(f"skip: the Python package 'tokenizers' is not importable ({e}); run scripts/setup.sh")
    sys.exit(SKIP)

LLAMA3_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>"]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_CHAR = bytes_to_unicode()


def byte_level(text):
    return "".join(BYTE_CHAR[b] for b in text.encode("utf-8"))


# ------------------------------------------------------------------------------------------------
# The corpus: fixed cases for every rule, then seeded random mixtures.

PROSE = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be on "
    "his first entering a neighbourhood, this truth is so well fixed in the minds of the surrounding "
    "families, that he is considered the rightful property of some one or other of their daughters."
)
CODE = '''def encode(self, text: str) -> list[int]:
    """Encode `text`."""
    ids = []\tnested = {"a": [1, 2.5e-3, None], 'b': (x ** 2 for x in range(10))}
    if not text:   # empty
        return ids  ;; x != y && z <= 0x1F || w >= -42
    for i in range(len(text)):\r\n        ids.append(ord(text[i]) & 0xFF)
    return ids
int main(int argc, char** argv) { std::vector<int32_t> v{1,2,3}; return v[0] >> 1; }
'''
FIXED = [
    "", " ", "  ", "\n", "\t", "Hello world", " Hello world", "Hello  world", "Hello world ", "Hello world  ",
    PROSE, CODE,
    "don't can't won't I'm you're we've they'll she'd it's", "DON'T I'M YOU'RE WE'VE THEY'LL SHE'D IT'S",
    "X'S x'Ll 'ſ 'ſt o'clock rock'n'roll '' ''' 's", "ſ ſs Kelvin: K k",
    "123 4567 89012 3.14159 -0.5e10 1,000,000 2024-01-31 0x1F 007 ½ ² ³ ٣٤٥ ⅷ 10⁹",
    "tabs\tand\t\ttabs\n\nnewlines\r\n\r\nCRLF  \n  mixed \t \n\t end",
    " " * 300, "\n" * 50, "\t" * 40 + "x", "a" + " " * 7 + "b" + "\n" * 3 + "   c",
    "café naïve résumé Zürich Ångström façade coöperate Ελληνικά русский текст",
    "e\u0301 cafe\u0301 A\u030a n\u0303 \u1100\u1161\u11a8 \u0915\u094d\u0937 o\u0308\u0304 Cafe\u0301!",  # combining: NFC composes
    "東京都は日本の首都です。中文测试，标点符号！한국어 텍스트 ひらがな カタカナ",
    "emoji 🎉🚀👍🏽 👨‍👩‍👧‍👦 🇩🇪 ❤️ ☃ ✓ ©®™ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙",
    "العربية من اليمين إلى اليسار עברית ภาษาไทย देवनागरी हिन्दी",
    "nbsp\u00a0here, nel\u0085there, mvs\u180ehere, zwsp\u200bthere, ideographic\u3000space, ls\u2028ps\u2029end",
    "bom\ufeffstart \u00ad soft hyphen \u2060 word joiner \u200d zwj",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>",
    "x<|endoftext|>y <|endoftext|> z<|endoftext|><|endoftext|>", "<|endoftext|>", "<|im_sta <|im_end <|  |>",
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>",
    "  <mask>  and <mask>x and x<mask> and\t<mask>\n", "hello_sw hello_swx xhello_sw (hello_sw) hello_sw.",
    "call <tool_call>{\"name\": \"f\"}</tool_call> now", "café! cafe\u0301! Café!",
    " supercalifragilistic antidisestablishment 東京都 supercalifragilisticexpialidocious",
    "a" * 400, "ab" * 300 + " " + "x" * 260, "." * 100, "!!!???...,,,;;;", "____init____", "-->>> <<<-- ===",
    "http://example.com/path?q=1&r=two#frag user@example.org", "C:\\Windows\\System32\\drivers\\etc\\hosts",
    "🙂" * 20, "\u0300\u0301\u0302 leading combining marks", "\x00\x01\x02 control \x1b[0m chars \x7f",
    "▁<PRE> fill ▁<SUF> here ▁<MID>", "Ġ Ċ ĉ Ġhello (byte-level look-alikes)",
]

POOL = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 4
    + list("0123456789") * 3
    + list(" ") * 12 + ["\n", "\t", "\r\n", "  ", "\u00a0", "\u3000", "\u0085"]
    + list(".,;:!?'\"()[]{}<>-_=+*/\\|&^%$#@~`")
    + list("éèêëàâäôöüûçñßøåæœÉÀÖÜ") + ["e\u0301", "a\u0308", "\u0301", "n\u0303"]
    + list("東京日本語中文한국어ひらがなカタ") + ["🎉", "👍🏽", "👨‍👩‍👧", "❤️", "𝔘"]
    + list("αβγδεζηθλμπσωабвгдежзийк") + list("٠١٢٣٤٥") + ["ſ", "K", "½", "²"]
    + ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "don't", "I'M"]
    + SPECIALS + ["<mask>", "hello_sw", "<tool_call>", "</tool_call>", "café!", "<|", "|>"]
)


def corpus():
    rng = random.Random(17)
    out = list(FIXED)
    for _ in range(400):
        out.append("".join(rng.choice(POOL) for _ in range(rng.randint(1, 60))))
    words = PROSE.split() + CODE.split()
    for _ in range(100):
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))))
    return out


# ------------------------------------------------------------------------------------------------
# Tokenizers built here.

def training_text(src):
    texts = [PROSE, CODE] + FIXED
    for rel in ["README.md", "docs/formats.md", "src/data/tokenize.cpp", "src/data/bpe/model.cpp"]:
        p = os.path.join(src, rel)
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                texts.extend(f.read().split("\n\n"))
    return texts


def trained_bpe(texts, pre, normalizer=None, vocab_size=3000):
    """vocab and merges of a byte-level BPE trained on `texts` with the pre-tokenizer `pre`."""
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre
    if normalizer is not None:
        t.normalizer = normalizer
    t.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    m = json.loads(t.to_str())["model"]
    return m["vocab"], [tuple(x) for x in m["merges"]]


def build_llama3(texts, path):
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    vocab, merges = trained_bpe(texts, pre)
    # Whole words that no merge reaches: only ignore_merges emits them as one token.
    for w in [" supercalifragilistic", " antidisestablishment", " 東京都", "supercalifragilisticexpialidocious"]:
        vocab.setdefault(byte_level(w), len(vocab))
    t = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    t.pre_tokenizer = pre
    t.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    t.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    j = json.loads(t.to_str())
    j["model"]["merges"] = [f"{a} {b}" for a, b in j["model"]["merges"]]  # the older "a b" form
    with open(path, "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)


def build_qwen2(texts, path):
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    vocab, merges = trained_bpe(texts, pre, normalizers.NFC())
    # As transformers' Qwen2Tokenizer builds it.
    t = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                             end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    t.decoder = decoders.ByteLevel()
    t.normalizer = normalizers.NFC()
    t.pre_tokenizer = pre
    t.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]])
    t.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                  AddedToken("</tool_call>", special=False, normalized=False),
                  AddedToken("Cafe\u0301!", special=False, normalized=True)])  # matched after NFC
    t.save(path)


def build_digits(texts, path):
    pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                   pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)])
    vocab, merges = trained_bpe(texts, pre)
    t = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    t.pre_tokenizer = pre
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens(["<|endoftext|>", AddedToken("<mask>", lstrip=True, rstrip=True, special=True, normalized=False)])
    t.add_tokens([AddedToken("hello_sw", single_word=True, special=False, normalized=False)])
    t.save(path)


# ------------------------------------------------------------------------------------------------

def run_agate(agate, action, tok_path, lines, tmp, extra=()):
    inp = os.path.join(tmp, f"{action}.jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for x in lines:
            f.write(json.dumps(x, ensure_ascii=False) + "\n")
    r = subprocess.run([agate, "tokenizer", action, "--tokenizer", tok_path, "--jsonl", inp, *extra], capture_output=True)
    if r.returncode != 0:
        raise RuntimeError(f"agate tokenizer {action} failed ({r.returncode}): {r.stderr.decode(errors='replace').strip()}")
    out = [json.loads(line) for line in r.stdout.decode("utf-8").split("\n") if line]  # not splitlines: U+2028
    if len(out) != len(lines):
        raise RuntimeError(f"agate tokenizer {action} printed {len(out)} lines for {len(lines)} inputs")
    return out


def check(name, tok_path, agate, texts, tmp, round_trip=lambda s: s):
    """round_trip(text): what decode(encode(text)) must give, None where the tokenizer does not round-trip."""
    hf = Tokenizer.from_file(tok_path)
    want = [hf.encode(s, add_special_tokens=False).ids for s in texts]
    got = run_agate(agate, "encode", tok_path, texts, tmp)
    bad = [i for i, (w, g) in enumerate(zip(want, got)) if w != g]
    for i in bad[:5]:
        w, g = want[i], got[i]
        k = next((k for k in range(min(len(w), len(g))) if w[k] != g[k]), min(len(w), len(g)))
        print(f"  {name}: encode mismatch on {texts[i][:80]!r}: first difference at token {k}: "
              f"tokenizers {w[k:k + 6]} {[hf.id_to_token(x) for x in w[k:k + 6]]} agate {g[k:k + 6]}")
    hf_text = [hf.decode(ids, skip_special_tokens=False) for ids in want]
    got_text = run_agate(agate, "decode", tok_path, want, tmp)
    bad_dec = [i for i, (w, g) in enumerate(zip(hf_text, got_text)) if w != g]
    for i in bad_dec[:5]:
        print(f"  {name}: decode mismatch on {want[i][:12]}...: tokenizers {hf_text[i][:60]!r} agate {got_text[i][:60]!r}")
    expect = [round_trip(s) if round_trip else None for s in texts]
    lost = [i for i, e in enumerate(expect) if e is not None and got_text[i] != e]
    for i in lost[:5]:
        print(f"  {name}: round trip lost {expect[i][:60]!r} -> {got_text[i][:60]!r}")
    trips = sum(1 for i, e in enumerate(expect) if e is not None and got_text[i] == e)
    ok = not bad and not bad_dec and not lost
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {len(texts)} strings, {sum(len(w) for w in want)} tokens: "
          f"{len(texts) - len(bad)} encodings identical, {len(texts) - len(bad_dec)} decodings identical, "
          f"{trips} of {sum(e is not None for e in expect)} round trips checked exact")
    return ok


def check_specials(name, tok_path, agate, texts, tmp):
    """`encode --special` (what prompts start with) against tokenizers' encode(text, add_special_tokens=True)
    for every post-processor type: none, ByteLevel, TemplateProcessing (BOS first, EOS last), Bert,
    Roberta and Sequence([ByteLevel, TemplateProcessing]) as Llama 3 ships it."""
    base = json.load(open(tok_path, encoding="utf-8"))
    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    hf0 = Tokenizer.from_file(tok_path)
    ids = {t: hf0.token_to_id(t) for t in (bos, eos)}
    template = processors.TemplateProcessing(single=f"{bos} $A {eos}", pair=f"{bos} $A {bos} $B",
                                             special_tokens=[(t, i) for t, i in ids.items()])
    byte = processors.ByteLevel(trim_offsets=False)
    variants = {
        "none": None,
        "ByteLevel": byte,
        "TemplateProcessing": template,
        "BertProcessing": processors.BertProcessing(sep=(eos, ids[eos]), cls=(bos, ids[bos])),
        "RobertaProcessing": processors.RobertaProcessing(sep=(eos, ids[eos]), cls=(bos, ids[bos])),
        "Sequence": processors.Sequence([byte, template]),
    }
    ok = True
    for kind, proc in variants.items():
        j = dict(base)
        j["post_processor"] = None if proc is None else json.loads(proc.__getstate__())
        path = os.path.join(tmp, f"specials-{kind}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False)
        hf = Tokenizer.from_file(path)
        want = [hf.encode(t, add_special_tokens=True).ids for t in texts]
        got = run_agate(agate, "encode", path, texts, tmp, ["--special"])
        bad = [i for i, (w, g) in enumerate(zip(want, got)) if w != g]
        for i in bad[:3]:
            print(f"  {name} {kind}: tokenizers {want[i][:4]}...{want[i][-3:]} agate {got[i][:4]}...{got[i][-3:]}")
        ok &= not bad
        print(f"{'ok  ' if not bad else 'FAIL'} {name} specials, post_processor {kind}: {len(texts) - len(bad)} of {len(texts)} identical")
    return ok


def check_transformers_prompt(model_dir, agate, texts, tmp):
    """transformers' AutoTokenizer(text).input_ids against `encode --special` on the SmolLM2 folder, and on a
    copy whose post_processor is ByteLevel (as the original hub files have it): no BOS there, although its
    tokenizer_config.json names bos_token <|im_start|>."""
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        print(f"skip transformers prompt check: transformers is not importable ({e})")
        return True
    plain = os.path.join(tmp, "smollm2-bytelevel")
    os.makedirs(plain, exist_ok=True)
    j = json.load(open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8"))
    j["post_processor"] = json.loads(processors.ByteLevel(trim_offsets=False).__getstate__())
    with open(os.path.join(plain, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    with open(os.path.join(model_dir, "tokenizer_config.json"), "rb") as f:
        cfg = f.read()
    with open(os.path.join(plain, "tokenizer_config.json"), "wb") as f:
        f.write(cfg)
    ok = True
    for name, d in [("smollm2", model_dir), ("smollm2 ByteLevel", plain)]:
        tok = AutoTokenizer.from_pretrained(d)
        want = [tok(t)["input_ids"] for t in texts]
        got = run_agate(agate, "encode", os.path.join(d, "tokenizer.json"), texts, tmp, ["--special"])
        bad = [i for i, (w, g) in enumerate(zip(want, got)) if w != g]
        for i in bad[:3]:
            print(f"  {name}: transformers {want[i][:4]} agate {got[i][:4]}")
        ok &= not bad
        print(f"{'ok  ' if not bad else 'FAIL'} {name}: prompt ids as transformers' tokenizer(text): "
              f"{len(texts) - len(bad)} of {len(texts)} identical (first ids {want[0][:2]})")
    return ok


def check_shards(name, tok_path, agate, texts, tmp):
    """`agate tokenize` with a tokenizer.json: the manifest's fingerprint, vocabulary and token count."""
    hf = Tokenizer.from_file(tok_path)
    docs = [t for t in texts if t.strip(" \t\n")]
    inp = os.path.join(tmp, "docs.jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for t in docs:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    out = os.path.join(tmp, "shards-" + name)
    r = subprocess.run([agate, "tokenize", "--tokenizer", tok_path, "--input", inp, "--out", out], capture_output=True)
    if r.returncode != 0:
        print(f"FAIL {name} shards: agate tokenize failed: {r.stderr.decode(errors='replace').strip()}")
        return False
    man = [json.load(open(os.path.join(out, split, "manifest.json"))) for split in ("train", "val")]
    with open(tok_path, "rb") as f:
        crc = f"0x{zlib.crc32(f.read()):08x}"
    eos = hf.token_to_id("<|endoftext|>")
    want_tokens = sum(len(hf.encode(t, add_special_tokens=False).ids) + 1 for t in docs)  # + EOS
    got = {"hash": man[0]["tokenizer_hash"], "vocab": man[0]["vocab_size"], "eos": man[0]["eos_id"],
           "tokens": man[0]["num_tokens"] + man[1]["num_tokens"]}
    want = {"hash": crc, "vocab": max(hf.get_vocab(with_added_tokens=True).values()) + 1, "eos": eos, "tokens": want_tokens}
    ok = got == want and man[1]["tokenizer_hash"] == crc
    print(f"{'ok  ' if ok else 'FAIL'} {name} shards: agate tokenize: {got}" + ("" if ok else f", expected {want}"))
    return ok


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    agate, src = sys.argv[1], sys.argv[2]
    texts = corpus()
    ok = True
    with tempfile.TemporaryDirectory(prefix="agate-tok-oracle-") as tmp:
        train = training_text(src)
        built = {}
        for name, build in [("llama3", build_llama3), ("qwen2", build_qwen2), ("digits", build_digits)]:
            path = os.path.join(tmp, name, "tokenizer.json")
            os.makedirs(os.path.dirname(path))
            build(train, path)
            built[name] = path
        smol = os.path.join(src, "models", "smollm2-135m-instruct", "tokenizer.json")
        if os.path.exists(smol):
            # Its decoder turns the ▁ of its ▁<PRE>-style FIM tokens into spaces: no round trip there.
            ok &= check("smollm2", smol, agate, texts, tmp, lambda s: None if "▁<" in s else s)
            ok &= check_transformers_prompt(os.path.dirname(smol), agate, texts[:40], tmp)
        else:
            print(f"skip smollm2: {smol} is absent (scripts/get_model.sh smollm2 fetches it)")
        ok &= check("llama3", built["llama3"], agate, texts, tmp)
        ok &= check_specials("llama3", built["llama3"], agate, texts[:60], tmp)
        # The normalized added token "Cafe\u0301!" matches "Café!" and decodes to its own content.
        nfc = lambda s: unicodedata.normalize("NFC", s)  # noqa: E731
        ok &= check("qwen2", built["qwen2"], agate, texts, tmp, lambda s: None if "Café!" in nfc(s) else nfc(s))
        ok &= check_shards("qwen2", built["qwen2"], agate, texts, tmp)
        # add_prefix_space puts a space before each text piece: decodings match, no round trip.
        ok &= check("digits", built["digits"], agate, texts, tmp, None)
    print("all tokenizer oracle checks passed" if ok else "tokenizer oracle: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
