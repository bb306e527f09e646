// The tokenizer.json (byte-level BPE) backend on a tiny hand-made tokenizer.json; the match with
// Hugging Face tokenizers on real and realistic files is tests/oracles/tokenizer_oracle.py's job.
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "../test_util.h"
#include "agate/data/dataset.h"
#include "agate/data/tokenize.h"
#include "agate/data/tokenizer.h"
#include "agate/util/checksum.h"

using namespace agate;
using agate::test::error_of;
using agate::test::TempDir;
using agate::test::write_bytes;
using nlohmann::json;

namespace {

// GPT-2's bytes_to_unicode, written out independently of agate's.
std::string byte_char(int b) {
  auto printable = [](int x) { return (x >= '!' && x <= '~') || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF); };
  int cp = b;
  if (!printable(b)) {
    int n = 0;
    for (int x = 0; x < b; ++x) n += !printable(x);
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Byte characters are ids 0..255 (id = byte); merged tokens follow in merge order.
json tiny_tokenizer(bool string_merges = false) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"b", "c"}, {"a", "b"}, {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {"Ġ", "w"}, {"o", "r"}, {"Ġw", "or"}};
  json m = json::array();
  int id = 256;
  for (const auto& [a, b] : merges) {
    vocab[a + b] = id++;
    if (string_merges) m.push_back(a + " " + b);
    else m.push_back({a, b});
  }
  json added = json::array();
  added.push_back({{"id", 265}, {"content", "<|endoftext|>"}, {"single_word", false}, {"lstrip", false},
                   {"rstrip", false}, {"normalized", false}, {"special", true}});
  added.push_back({{"id", 266}, {"content", "<sep>"}, {"single_word", false}, {"lstrip", false},
                   {"rstrip", false}, {"normalized", false}, {"special", true}});
  return {{"version", "1.0"},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
          {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                     {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                     {"ignore_merges", false}, {"vocab", vocab}, {"merges", m}}}};
}

std::string write_tokenizer(const TempDir& dir, const json& j, const std::string& name = "tokenizer.json") {
  const std::string path = dir.file(name);
  write_bytes(path, j.dump());
  return path;
}

std::vector<int32_t> bytes_of(const std::string& s) {
  std::vector<int32_t> out;
  for (unsigned char c : s) out.push_back(c);
  return out;
}

}  // namespace

TEST(BpeTokenizer, MergesApplyByRankNotByPosition) {
  TempDir dir;
  auto tok = Tokenizer::load(write_tokenizer(dir, tiny_tokenizer()));
  // "b c" (rank 0) beats "a b" (rank 1): abc -> a + bc.
  EXPECT_EQ(tok->encode("abc"), (std::vector<int32_t>{'a', 256}));
  EXPECT_EQ(tok->encode("ab"), (std::vector<int32_t>{257}));
  // hello: h e -> he, l l -> ll, he ll -> hell, hell o -> hello.
  EXPECT_EQ(tok->encode("hello"), (std::vector<int32_t>{261}));
  // " world": the GPT-2 regex keeps the space with the word; Ġ w -> Ġw, o r -> or, Ġw or -> Ġwor.
  EXPECT_EQ(tok->encode("hello world"), (std::vector<int32_t>{261, 264, 'l', 'd'}));
  EXPECT_EQ(tok->piece(264), "Ġwor");
}

TEST(BpeTokenizer, StringAndPairMergesAgree) {
  TempDir dir;
  auto pairs = Tokenizer::load(write_tokenizer(dir, tiny_tokenizer(false), "a.json"));
  auto strings = Tokenizer::load(write_tokenizer(dir, tiny_tokenizer(true), "b.json"));
  for (const std::string s : {"abc hello world", "the cab", "hellohello  worlds"}) EXPECT_EQ(pairs->encode(s), strings->encode(s)) << s;
}

TEST(BpeTokenizer, BytesMapToGpt2Characters) {
  TempDir dir;
  auto tok = Tokenizer::load(write_tokenizer(dir, tiny_tokenizer()));
  EXPECT_EQ(tok->piece(' '), "Ġ");
  EXPECT_EQ(tok->piece('\n'), "Ċ");
  EXPECT_EQ(tok->piece(0xC3), "Ã");
  // Unmerged text is its UTF-8 bytes; the regex splits "é!" into "é" and "!".
  EXPECT_EQ(tok->encode("é!"), bytes_of("é!"));
  EXPECT_EQ(tok->encode("東京 🎉\t\n"), bytes_of("東京 🎉\t\n"));
  // Ill-formed UTF-8 becomes U+FFFD (EF BF BD) first, as Python's errors="replace" would.
  EXPECT_EQ(tok->encode(std::string("a\xff") + "b"), bytes_of("a\xEF\xBF\xBD" "b"));
  EXPECT_EQ(tok->encode(std::string("\xE6\x9D")), bytes_of("\xEF\xBF\xBD"));  // truncated: one U+FFFD
}

TEST(BpeTokenizer, AddedTokensAreFoundInTheRawText) {
  TempDir dir;
  auto tok = Tokenizer::load(write_tokenizer(dir, tiny_tokenizer()));
  EXPECT_EQ(tok->vocab_size(), 267);  // model ids 0..264, added 265 and 266
  EXPECT_EQ(tok->encode("ab<|endoftext|>abc"), (std::vector<int32_t>{257, 265, 'a', 256}));
  EXPECT_EQ(tok->encode("<sep><|endoftext|><sep>"), (std::vector<int32_t>{266, 265, 266}));
  // A partial token is plain text.
  EXPECT_EQ(tok->encode("<sep"), bytes_of("<sep"));
  EXPECT_EQ(tok->piece(265), "<|endoftext|>");
  EXPECT_EQ(tok->decode({257, 265, 'a', 256}), "ab<|endoftext|>abc");
}

TEST(BpeTokenizer, AddedTokenFlags) {
  TempDir dir;
  json j = tiny_tokenizer();
  j["added_tokens"][1]["lstrip"] = true;
  j["added_tokens"][1]["rstrip"] = true;  // "<sep>" swallows the spaces around it
  j["added_tokens"].push_back({{"id", 267}, {"content", "ab"}, {"single_word", true}, {"lstrip", false},
                               {"rstrip", false}, {"normalized", false}, {"special", false}});
  auto tok = Tokenizer::load(write_tokenizer(dir, j));
  EXPECT_EQ(tok->encode("a  <sep>  b"), (std::vector<int32_t>{'a', 266, 'b'}));
  // "ab" is in the model vocabulary, so the added token takes its id 257; single_word: only as a
  // whole word.
  EXPECT_EQ(tok->vocab_size(), 267);
  EXPECT_EQ(tok->encode("ab"), (std::vector<int32_t>{257}));
  EXPECT_EQ(tok->encode("x ab."), (std::vector<int32_t>{'x', ' ', 257, '.'}));
  EXPECT_EQ(tok->encode("abc"), (std::vector<int32_t>{'a', 256}));  // not a word of its own: BPE as usual
}

TEST(BpeTokenizer, DecodeRoundTripsAndReplacesBrokenUtf8) {
  TempDir dir;
  auto tok = Tokenizer::load(write_tokenizer(dir, tiny_tokenizer()));
  for (const std::string s : {"hello world", "  leading and trailing  ", "tabs\tand\nnewlines\r\n", "naïve café 東京 🎉",
                              "<|endoftext|>x<sep>", ""}) {
    EXPECT_EQ(tok->decode(tok->encode(s)), s);
  }
  // A lone continuation byte and a truncated sequence: one U+FFFD each (maximal subparts).
  EXPECT_EQ(tok->decode({'a', 0x80, 'b'}), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(tok->decode({0xE6, 0x9D, 'x'}), "\xEF\xBF\xBD" "x");
  EXPECT_NE(error_of([&] { tok->decode({1, 99999}); }).find("outside the vocabulary"), std::string::npos);
  EXPECT_EQ(tok->piece(99999), "<out-of-vocab 99999>");
}

TEST(BpeTokenizer, SpecialIdsHashAndThreads) {
  TempDir dir;
  const std::string path = write_tokenizer(dir, tiny_tokenizer());
  {
    auto tok = Tokenizer::load(path);
    EXPECT_EQ(tok->bos_id(), -1);  // no tokenizer_config.json: no BOS, EOS <|endoftext|>
    EXPECT_EQ(tok->eos_id(), 265);
    EXPECT_EQ(tok->hash(), crc32_file(path));
    // Concurrent encoding (per-thread caches and regex state) gives the same ids.
    std::string text;
    for (int i = 0; i < 200; ++i) text += "hello world abc " + std::to_string(i) + "<sep>\n";
    const auto want = tok->encode(text);
    std::vector<std::vector<int32_t>> got(4);
    std::vector<std::thread> pool;
    for (size_t t = 0; t < got.size(); ++t) pool.emplace_back([&, t] { got[t] = tok->encode(text); });
    for (auto& th : pool) th.join();
    for (const auto& g : got) EXPECT_EQ(g, want);
  }
  write_bytes(dir.file("tokenizer_config.json"), R"({"bos_token": "<sep>", "eos_token": {"content": "ab", "__type": "AddedToken"}})");
  auto tok = Tokenizer::load(path);
  EXPECT_EQ(tok->bos_id(), 266);
  EXPECT_EQ(tok->eos_id(), 257);
  write_bytes(dir.file("tokenizer_config.json"), R"({"bos_token": "<nope>"})");
  EXPECT_NE(error_of([&] { Tokenizer::load(path); }).find("bos_token '<nope>' is not in the vocabulary"), std::string::npos);
}

// What a prompt starts with follows the file's post_processor, as transformers' tokenizer(text)
// does, not the bos_token that tokenizer_config.json names (the original SmolLM2 files name
// <|im_start|> there and add nothing). The match with tokenizers' encode(text,
// add_special_tokens=True) on every processor type is tokenizer_oracle.py's.
TEST(BpeTokenizer, PromptSpecialsFollowThePostProcessor) {
  TempDir dir;
  write_bytes(dir.file("tokenizer_config.json"), R"({"bos_token": "<sep>", "eos_token": "<|endoftext|>"})");
  json j = tiny_tokenizer();
  auto load = [&](const json& post) {
    j["post_processor"] = post;
    return Tokenizer::load(write_tokenizer(dir, j));
  };
  const json bytelevel = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  for (const json& none : {json(), bytelevel, json{{"type", "Sequence"}, {"processors", {bytelevel}}}}) {
    auto tok = load(none);
    EXPECT_EQ(tok->bos_id(), 266);
    EXPECT_TRUE(tok->specials().prefix.empty()) << none.dump();
    EXPECT_EQ(encode_prompt(*tok, "hello"), tok->encode("hello"));
  }
  const json special = {{"<sep>", {{"id", "<sep>"}, {"ids", {266}}, {"tokens", {"<sep>"}}}},
                        {"<|endoftext|>", {{"id", "<|endoftext|>"}, {"ids", {265}}, {"tokens", {"<|endoftext|>"}}}}};
  const json templ = {{"type", "TemplateProcessing"},
                      {"single", {{{"SpecialToken", {{"id", "<sep>"}, {"type_id", 0}}}},
                                  {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                                  {{"SpecialToken", {{"id", "<|endoftext|>"}, {"type_id", 0}}}}}},
                      {"pair", json::array()},
                      {"special_tokens", special}};
  for (const json& post : {templ, json{{"type", "Sequence"}, {"processors", {bytelevel, templ}}}}) {
    auto tok = load(post);
    EXPECT_EQ(tok->specials().prefix, std::vector<int32_t>{266}) << post.dump();
    EXPECT_EQ(tok->specials().suffix, std::vector<int32_t>{265});
    std::vector<int32_t> want{266};
    for (int32_t id : tok->encode("hello")) want.push_back(id);
    EXPECT_EQ(encode_prompt(*tok, "hello"), want);  // the suffix is not a prompt's
  }
  auto roberta = load({{"type", "RobertaProcessing"}, {"cls", {"<sep>", 266}}, {"sep", {"<|endoftext|>", 265}}});
  EXPECT_EQ(roberta->specials().prefix, std::vector<int32_t>{266});
  EXPECT_EQ(roberta->specials().suffix, std::vector<int32_t>{265});

  // Refused when read, naming the file and the fault.
  json missing = templ;
  missing["special_tokens"].erase("<sep>");
  json outside = templ;
  outside["special_tokens"]["<sep>"]["ids"] = {99999};
  json no_a = templ;
  no_a["single"].erase(1);
  const std::vector<std::pair<json, std::string>> bad = {
      {missing, "special token '<sep>' but its \"special_tokens\" do not list its ids"},
      {outside, "post_processor adds token id 99999, outside the vocabulary"},
      {no_a, "has no $A sequence"},
      {{{"type", "Sequence"}, {"processors", {templ, templ}}}, "more than one processor that adds tokens is not supported"},
      {{{"type", "Mystery"}}, "post_processor type 'Mystery' is not supported"},
      {{{"type", "BertProcessing"}, {"cls", "[CLS]"}}, "BertProcessing post_processor needs \"cls\": [token, id]"}};
  for (const auto& [post, want] : bad) {
    const std::string e = error_of([&] { load(post); });
    EXPECT_NE(e.find(want), std::string::npos) << "got: " << e;
    EXPECT_NE(e.find("tokenizer.json"), std::string::npos) << e;
  }
}

TEST(BpeTokenizer, DefaultPathPrefersASupportedTokenizerJson) {
  TempDir dir;
  EXPECT_EQ(default_tokenizer_path(dir.path()), dir.file("tokenizer.model"));  // neither: the SentencePiece name
  write_tokenizer(dir, tiny_tokenizer());
  EXPECT_EQ(default_tokenizer_path(dir.path()), dir.file("tokenizer.json"));
  json wp = tiny_tokenizer();
  wp["model"]["type"] = "WordPiece";
  write_tokenizer(dir, wp);
  EXPECT_EQ(default_tokenizer_path(dir.path()), dir.file("tokenizer.json"));  // unusable, but nothing else: say why
  write_bytes(dir.file("tokenizer.model"), "x");
  EXPECT_EQ(default_tokenizer_path(dir.path()), dir.file("tokenizer.model"));
}

TEST(BpeTokenizer, RefusesWhatItCannotEncodeExactly) {
  TempDir dir;
  auto refusal = [&](const json& j) {
    const std::string path = write_tokenizer(dir, j);
    const std::string e = error_of([&] { Tokenizer::load(path); });
    EXPECT_EQ(e.find('\n'), std::string::npos) << "one line: " << e;
    EXPECT_NE(e.find("hint:"), std::string::npos) << e;
    return e;
  };
  json j = tiny_tokenizer();
  j["model"]["type"] = "WordPiece";
  EXPECT_NE(refusal(j).find("model type 'WordPiece' is not supported"), std::string::npos);
  j = tiny_tokenizer();
  j["model"]["type"] = "Unigram";
  EXPECT_NE(refusal(j).find("model type 'Unigram' is not supported"), std::string::npos);
  j = tiny_tokenizer();
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "▁"}};
  EXPECT_NE(refusal(j).find("pre_tokenizer type 'Metaspace' is not supported"), std::string::npos);
  j = tiny_tokenizer();
  j["pre_tokenizer"] = nullptr;
  EXPECT_NE(refusal(j).find("not a byte-level BPE"), std::string::npos);
  j = tiny_tokenizer();
  j["normalizer"] = {{"type", "Lowercase"}};
  EXPECT_NE(refusal(j).find("normalizer type 'Lowercase' is not supported"), std::string::npos);
  j = tiny_tokenizer();
  j["decoder"] = {{"type", "WordPiece"}};
  EXPECT_NE(refusal(j).find("decoder type 'WordPiece' is not supported"), std::string::npos);
  j = tiny_tokenizer();
  j["model"]["merges"].push_back({"q", "zz"});
  EXPECT_NE(refusal(j).find("refers to 'zz', which is not in the vocabulary"), std::string::npos);
  j = tiny_tokenizer(true);
  j["model"]["merges"].push_back("a b c");
  EXPECT_NE(refusal(j).find("is not two tokens"), std::string::npos);
  j = tiny_tokenizer();
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}, {"invert", false}},
                                           {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  EXPECT_NE(refusal(j).find("does not compile"), std::string::npos);

  write_bytes(dir.file("bad.json"), "{\"model\": {\"type\": \"BPE\", ");
  const std::string e = error_of([&] { Tokenizer::load(dir.file("bad.json")); });
  EXPECT_NE(e.find("bad.json: is not valid JSON"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  EXPECT_NE(error_of([&] { Tokenizer::load(dir.file("missing.json")); }).find("does not exist"), std::string::npos);
}

TEST(BpeTokenizer, SplitDigitsAndNfc) {
  TempDir dir;
  json j = tiny_tokenizer();
  // Llama-3-style: a Split regex, then ByteLevel without its own regex; NFC as Qwen2 has it.
  j["normalizer"] = {{"type", "NFC"}};
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}},
                                           {{"type", "Split"}, {"pattern", {{"Regex", R"(\s+|[^\s]+)"}}}, {"behavior", "Isolated"}, {"invert", false}},
                                           {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}};
  auto tok = Tokenizer::load(write_tokenizer(dir, j));
  // "cafe" + combining acute -> NFC "café"; digits split one by one (no merges join them anyway).
  EXPECT_EQ(tok->encode("cafe\xCC\x81"), bytes_of("café"));
  EXPECT_EQ(tok->encode("ab12"), (std::vector<int32_t>{257, '1', '2'}));
  // Whitespace is its own piece here: " world" is not merged into "Ġwor".
  EXPECT_EQ(tok->encode("hello world"), (std::vector<int32_t>{261, ' ', 'w', 263, 'l', 'd'}));
}

TEST(BpeTokenizer, TokenizeCorpusRecordsTheFileHash) {
  TempDir dir;
  const std::string path = write_tokenizer(dir, tiny_tokenizer());
  auto tok = Tokenizer::load(path);
  write_bytes(dir.file("docs.txt"), "hello world\n\nabc abc<|endoftext|>\n\nhello\n");
  TokenizeOptions o;
  o.inputs = {dir.file("docs.txt")};
  o.out = dir.file("data");
  o.val_fraction = 0;
  const TokenizeSummary s = tokenize_corpus(*tok, o);
  EXPECT_EQ(s.train.documents, 3u);
  // hello world (4) + abc abc<|endoftext|> (2 + 3 + 1) + hello (1), each + EOS.
  EXPECT_EQ(s.train.tokens, 4u + 1 + 6 + 1 + 1 + 1);
  const Dataset d = Dataset::open(dir.file("data/train"));
  EXPECT_EQ(d.manifest().space.tokenizer_hash, crc32_file(path));
  EXPECT_EQ(d.manifest().space.vocab_size, 267u);
  EXPECT_EQ(d.manifest().space.eos_id, 265);
  EXPECT_EQ(d.manifest().space.bos_id, -1);
}
