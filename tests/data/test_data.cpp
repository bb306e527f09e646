// Data pipeline: tokenizer, shard format, datasets, tokenize (cpt/sft), streaming loader.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "../test_util.h"
#include "agate/data/dataset.h"
#include "agate/data/loader.h"
#include "agate/data/shard.h"
#include "agate/data/tokenize.h"
#include "agate/data/tokenizer.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"

using namespace agate;
using agate::test::error_of;
using agate::test::TempDir;
namespace fs = std::filesystem;

namespace {

// A small SentencePiece model trained once for the whole suite (about a second).
class TokenizerEnv {
 public:
  static const Tokenizer& get() {
    static TokenizerEnv env;
    return *env.tok_;
  }
  static std::string path() {
    get();
    return instance_path();
  }

 private:
  static std::string& instance_path() {
    static std::string p;
    return p;
  }
  TokenizerEnv() {
    const std::string text = dir_.file("corpus.txt");
    std::ofstream out(text);
    const char* lines[] = {"It is a truth universally acknowledged, that a single man in possession of a good fortune,",
                           "must be in want of a wife.", "In the beginning God created the heaven and the earth.",
                           "The quick brown fox jumps over the lazy dog.", "What is the number? The number is 42917."};
    for (int r = 0; r < 40; ++r)
      for (const char* l : lines) out << l << " " << r << "\n";
    out.close();
    TokenizerTrainOptions o;
    o.inputs = {text};
    o.out = dir_.file("tok.model");
    o.vocab_size = 400;
    train_tokenizer(o);
    instance_path() = o.out;
    tok_ = Tokenizer::load(o.out);
  }
  TempDir dir_;
  std::unique_ptr<Tokenizer> tok_;
};

const TokenSpace kSpace{1000, 2, 1, 0xabcdef};

// Writes a cpt dataset of `docs` documents with distinct, recognisable tokens.
DatasetManifest write_synthetic(const std::string& dir, int docs, int doc_len, uint64_t shard_tokens) {
  DatasetWriter w(dir, "cpt", "train", kSpace, shard_tokens);
  for (int d = 0; d < docs; ++d) {
    std::vector<uint32_t> t;
    for (int i = 0; i < doc_len; ++i) t.push_back(static_cast<uint32_t>((d * 37 + i * 11) % 997 + 3));
    w.add(t);
  }
  return w.finish();
}

std::vector<std::vector<int64_t>> drain(DataLoader& l, int batches) {
  std::vector<std::vector<int64_t>> out;
  for (int b = 0; b < batches; ++b) {
    Batch batch = l.next();
    auto t = batch.tokens.contiguous();
    for (int64_t i = 0; i < t.size(0); ++i) out.emplace_back(t[i].data_ptr<int64_t>(), t[i].data_ptr<int64_t>() + t.size(1));
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
TEST(Tokenizer, RoundTripsAnyTextThroughByteFallback) {
  const Tokenizer& tok = TokenizerEnv::get();
  EXPECT_EQ(tok.vocab_size(), 400);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.specials().prefix, std::vector<int32_t>{1});  // a prompt starts with BOS (the Llama convention)
  EXPECT_TRUE(tok.specials().suffix.empty());
  for (std::string s : {"The quick brown fox.", "naïve café — 東京 ✓", "  spaces\tand\nnewlines "}) {
    auto ids = tok.encode(s);
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(tok.decode(ids), s);
  }
  EXPECT_NE(tok.hash(), 0u);
  EXPECT_NE(error_of([] { Tokenizer::load("/nonexistent/tok.model"); }).find("does not exist"), std::string::npos);
  TempDir d;
  test::write_bytes(d.file("bad.model"), "not a model");
  EXPECT_NE(error_of([&] { Tokenizer::load(d.file("bad.model")); }).find("not a SentencePiece model"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
TEST(Shard, RoundTripsTokensMaskAndOffsets) {
  TempDir d;
  ShardContents c;
  c.tokens = {5, 6, 7, 8, 9, 10, 11};
  c.mask = {0, 0, 1, 1, 0, 1, 1};
  c.doc_offsets = {0, 4, 7};
  write_shard(d.file("s.bin"), kSpace, c);
  Shard s = Shard::open(d.file("s.bin"));
  EXPECT_EQ(s.num_tokens(), 7u);
  EXPECT_EQ(s.num_docs(), 2u);
  EXPECT_EQ(std::vector<uint32_t>(s.tokens(), s.tokens() + 7), c.tokens);
  EXPECT_EQ(std::vector<uint8_t>(s.mask(), s.mask() + 7), c.mask);
  EXPECT_EQ(std::vector<uint64_t>(s.doc_offsets(), s.doc_offsets() + 3), c.doc_offsets);
  EXPECT_EQ(s.space().tokenizer_hash, kSpace.tokenizer_hash);
  // The documented layout: 256-byte header, 4N tokens, N mask bytes, pad to 8, 8(D+1) offsets.
  EXPECT_EQ(fs::file_size(d.file("s.bin")), 256u + 28 + 7 + 5 + 24);
}

TEST(Shard, CorruptShardsAreRefusedWithFileAndReason) {
  TempDir d;
  ShardContents c;
  c.tokens = {5, 6, 7, 8};
  write_shard(d.file("good.bin"), kSpace, c);
  const std::string good = test::read_bytes(d.file("good.bin"));
  auto refuse = [&](std::string bytes, const std::string& expect) {
    test::write_bytes(d.file("bad.bin"), bytes);
    const std::string msg = error_of([&] { Shard::open(d.file("bad.bin")); });
    EXPECT_NE(msg.find(d.file("bad.bin")), std::string::npos) << msg;
    EXPECT_NE(msg.find(expect), std::string::npos) << "want '" << expect << "' in: " << msg;
  };
  std::string b = good;
  b[0] = 'X';
  refuse(b, "bad magic");
  b = good;
  b[8] = 2;
  refuse(b, "unsupported shard version 2");
  refuse(good.substr(0, good.size() - 3), "truncated");
  refuse(good.substr(0, 100), "truncated");
  b = good;
  b[256] ^= 1;
  refuse(b, "checksum mismatch");
  refuse(good + "xx", "trailing bytes");
  // Token ids beyond the vocabulary (written with a consistent checksum).
  write_shard(d.file("bad.bin"), TokenSpace{7, 2, 1, 1}, c);
  EXPECT_NE(error_of([&] { Shard::open(d.file("bad.bin")); }).find("has id 7 >= vocab size 7"), std::string::npos);
}

TEST(Dataset, ManifestAndShardsAreCrossChecked) {
  TempDir d;
  write_synthetic(d.file("ds"), 10, 50, 120);
  Dataset ds = Dataset::open(d.file("ds"));
  EXPECT_EQ(ds.manifest().num_documents, 10u);
  EXPECT_EQ(ds.manifest().num_tokens, 500u);
  EXPECT_GT(ds.shards().size(), 1u);
  // Tokenizer mismatch.
  TokenSpace other = kSpace;
  other.tokenizer_hash = 0x1234;
  EXPECT_NE(error_of([&] { Dataset::open(d.file("ds"), other); }).find("was tokenized with tokenizer 0x00abcdef but this run uses 0x00001234"),
            std::string::npos);
  // A damaged manifest: ids outside the vocabulary, counts that do not fit their type, a missing
  // key; each refused naming the file (nothing passes `data check` to fail at step 1).
  const std::string manifest = d.file("ds/manifest.json");
  const std::string good = read_file(manifest);
  const std::vector<std::pair<std::function<void(nlohmann::json&)>, std::string>> damage = {
      {[](nlohmann::json& j) { j["eos_id"] = 100000; }, "eos_id 100000 is outside the vocabulary"},
      {[](nlohmann::json& j) { j["bos_id"] = 2147483647; }, "bos_id 2147483647 is outside the vocabulary"},
      {[](nlohmann::json& j) { j["bos_id"] = -2; }, "bos_id -2 is outside the vocabulary"},
      {[](nlohmann::json& j) { j["num_loss_tokens"] = -97271; }, "key \"num_loss_tokens\" is not an integer in [0, "},
      {[](nlohmann::json& j) { j["vocab_size"] = 4294967296LL; }, "key \"vocab_size\" is not an integer in [0, 4294967295]"},
      {[](nlohmann::json& j) { j.erase("tokenizer_hash"); }, "missing key \"tokenizer_hash\""},
      {[](nlohmann::json& j) { j["shards"][0].erase("checksum"); }, "a shard lacks its \"checksum\""}};
  for (const auto& [edit, want] : damage) {
    nlohmann::json j = nlohmann::json::parse(good);
    edit(j);
    test::write_bytes(manifest, j.dump());
    const std::string e = error_of([&] { Dataset::open(d.file("ds")); });
    EXPECT_NE(e.find(want), std::string::npos) << "got: " << e;
    EXPECT_NE(e.find("manifest.json"), std::string::npos) << e;
  }
  test::write_bytes(manifest, good);
  EXPECT_NO_THROW(Dataset::open(d.file("ds")));
  // A missing shard.
  fs::remove(d.file("ds/shard_00001.bin"));
  EXPECT_NE(error_of([&] { Dataset::open(d.file("ds")); }).find("lists shard 'shard_00001.bin', which does not exist"),
            std::string::npos);
  // Empty dataset, and no manifest at all.
  DatasetWriter(d.file("empty"), "cpt", "train", kSpace, 100).finish();
  EXPECT_NE(error_of([&] { Dataset::open(d.file("empty")); }).find("empty"), std::string::npos);
  EXPECT_NE(error_of([&] { Dataset::open(d.path()); }).find("has no manifest.json"), std::string::npos);
}

// A tokenizer may be larger than the model (SmolLM2's GGUF tokenizer.json lists 5 added tokens
// past its 49,152 embeddings): what must fit the model is the ids the data holds.
TEST(Dataset, FitsAModelByTheIdsItHoldsNotTheTokenizerSize) {
  TempDir d;
  write_synthetic(d.file("ds"), 4, 50, 1000);  // ids 3..999 under a 1000-id tokenizer
  Dataset ds = Dataset::open(d.file("ds"));
  const uint32_t top = ds.max_token_id();
  EXPECT_LT(top, 1000u);
  EXPECT_NO_THROW(ds.check_fits(top + 1, "data.train"));  // a model smaller than the tokenizer
  const std::string e = error_of([&] { ds.check_fits(top, "data.train"); });
  EXPECT_NE(e.find("data.train: dataset '" + d.file("ds") + "' holds token id " + std::to_string(top) +
                   ", outside the model's vocabulary (" + std::to_string(top) + " ids; the tokenizer has 1000)"),
            std::string::npos) << e;
  EXPECT_NE(e.find("hint:"), std::string::npos) << e;
}

// ---------------------------------------------------------------------------------------------
TEST(Loader, ReturnsExactlyTheWrittenWindowsInPermutationOrder) {
  TempDir d;
  write_synthetic(d.file("ds"), 12, 40, 100);  // shards of 120 tokens (3 docs each)
  Dataset ds = Dataset::open(d.file("ds"));
  // Expected windows, shard by shard.
  const int64_t T = 16;
  std::vector<std::vector<int64_t>> windows;
  for (const auto& s : ds.shards())
    for (uint64_t k = 0; k < (s.num_tokens() - 1) / T; ++k)
      windows.emplace_back(s.tokens() + k * T, s.tokens() + k * T + T + 1);
  LoaderOptions o;
  o.seq_len = T;
  o.global_batch = 4;
  DataLoader l(ds, o, {7, 0, 0});
  ASSERT_EQ(l.num_samples(), static_cast<int64_t>(windows.size()));
  auto perm = DataLoader::permutation(l.num_samples(), 7, 0);
  auto got = drain(l, static_cast<int>(l.batches_per_epoch()));
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], windows[perm[i]]) << i;
}

TEST(Loader, EverySampleOnceEpochAcrossRanksAndSameGlobalBatchesForAnyWorld) {
  TempDir d;
  write_synthetic(d.file("ds"), 20, 64, 1 << 20);
  Dataset ds = Dataset::open(d.file("ds"));
  LoaderOptions o;
  o.seq_len = 8;
  o.global_batch = 6;
  std::vector<std::vector<int64_t>> reference;  // W = 1 global batches, as sample ids
  for (int world : {1, 2, 3}) {
    std::vector<std::unique_ptr<DataLoader>> ranks;
    for (int r = 0; r < world; ++r) {
      LoaderOptions ro = o;
      ro.rank = r;
      ro.world = world;
      ranks.push_back(std::make_unique<DataLoader>(ds, ro, LoaderCursor{3, 0, 0}));
    }
    const int64_t steps = ranks[0]->batches_per_epoch();
    std::multiset<int64_t> seen;
    std::vector<std::vector<int64_t>> global;
    for (int64_t s = 0; s < steps; ++s) {
      std::vector<int64_t> g;
      for (auto& l : ranks) {
        Batch b = l->next();
        g.insert(g.end(), b.sample_ids.begin(), b.sample_ids.end());
      }
      seen.insert(g.begin(), g.end());
      global.push_back(g);
    }
    EXPECT_EQ(seen.size(), static_cast<size_t>(steps * 6));
    EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), seen.size()) << "a sample repeated, W=" << world;
    if (world == 1) reference = global;
    else EXPECT_EQ(global, reference) << "W=" << world;
  }
}

TEST(Loader, ResumingFromAnyCursorGivesTheSameRemainingStream) {
  TempDir d;
  write_synthetic(d.file("ds"), 9, 50, 1 << 20);
  Dataset ds = Dataset::open(d.file("ds"));
  LoaderOptions o;
  o.seq_len = 10;
  o.global_batch = 4;
  DataLoader full(ds, o, {11, 0, 0});
  const int total = static_cast<int>(full.batches_per_epoch()) * 2 + 3;  // crosses epochs
  std::vector<Batch> stream;
  for (int i = 0; i < total; ++i) stream.push_back(full.next());
  for (int stop : {0, 1, 5, static_cast<int>(full.batches_per_epoch()), total - 1}) {
    LoaderCursor c = stop == 0 ? LoaderCursor{11, 0, 0} : stream[stop - 1].cursor;
    DataLoader resumed(ds, o, c);
    for (int i = stop; i < total; ++i) {
      Batch b = resumed.next();
      EXPECT_TRUE(at::equal(b.tokens, stream[i].tokens)) << "stop " << stop << " batch " << i;
      EXPECT_TRUE(b.cursor == stream[i].cursor);
    }
  }
  // Different seeds give different orders; an epoch visits everything.
  EXPECT_NE(DataLoader::permutation(50, 1, 0), DataLoader::permutation(50, 2, 0));
  EXPECT_NE(DataLoader::permutation(50, 1, 0), DataLoader::permutation(50, 1, 1));
}

TEST(Loader, RefusesDatasetsWithNoCompleteSample) {
  TempDir d;
  write_synthetic(d.file("ds"), 2, 5, 100);
  Dataset ds = Dataset::open(d.file("ds"));
  LoaderOptions o;
  o.seq_len = 64;
  EXPECT_NE(error_of([&] { DataLoader(ds, o, {}); }).find("no complete sample"), std::string::npos);
  o.seq_len = 2;
  o.global_batch = 3;
  o.world = 2;
  EXPECT_NE(error_of([&] { DataLoader(ds, o, {}); }).find("not a multiple of the world size"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
TEST(Tokenize, CptTextBecomesDocumentsWithEos) {
  TempDir d;
  const Tokenizer& tok = TokenizerEnv::get();
  test::write_bytes(d.file("a.txt"), "The quick brown fox.\nJumps over.\n\n\nIn the beginning.\n");
  test::write_bytes(d.file("b.jsonl"), "{\"text\": \"What is the number?\"}\n\n{\"text\": \"a wife\"}\n");
  TokenizeOptions o;
  o.inputs = {d.file("a.txt"), d.file("b.jsonl")};
  o.out = d.file("out");
  o.val_fraction = 0.0;
  TokenizeSummary s = tokenize_corpus(tok, o);
  EXPECT_EQ(s.train.documents, 4u);
  Dataset ds = Dataset::open(d.file("out/train"));
  const Shard& sh = ds.shards()[0];
  auto doc = [&](int i) {
    return std::vector<int32_t>(sh.tokens() + sh.doc_offsets()[i], sh.tokens() + sh.doc_offsets()[i + 1]);
  };
  auto want = tok.encode("The quick brown fox.\nJumps over.");
  want.push_back(2);
  EXPECT_EQ(doc(0), want);
  auto last = doc(3);
  EXPECT_EQ(last.back(), 2);
  last.pop_back();
  EXPECT_EQ(tok.decode(last), "a wife");
}

// A plain-completion probe (recipes/smollm2/passkey_template.json) scores the answer alone: a
// template with "eos": false puts no EOS after the reply.
TEST(Tokenize, TemplateWithoutEosScoresTheReplyAlone) {
  TempDir d;
  const Tokenizer& tok = TokenizerEnv::get();
  test::write_bytes(d.file("t.json"), "{\"user\": \"{content}\", \"assistant_prefix\": \" The key is\", \"eos\": false}");
  const SftTemplate plain = SftTemplate::named(d.file("t.json"));
  EXPECT_FALSE(plain.end_with_eos);
  const SftPair p = encode_sft_pair(tok, "Remember 42917.", " 42917.", plain, false);
  EXPECT_EQ(tok.decode(std::vector<int32_t>(p.target.begin(), p.target.end())), " 42917.");
  EXPECT_NE(p.target.back(), tok.eos_id());
  const SftPair with_eos = encode_sft_pair(tok, "Remember 42917.", " 42917.", SftTemplate::named("default"), false);
  EXPECT_EQ(with_eos.target.back(), tok.eos_id());
  test::write_bytes(d.file("bad.json"), "{\"eos\": \"no\"}");
  EXPECT_NE(error_of([&] { SftTemplate::named(d.file("bad.json")); }).find("\"eos\" must be true or false"), std::string::npos);
  for (const char* not_object : {"[1]", "5", "\"x\"", "null"}) {
    test::write_bytes(d.file("bad.json"), not_object);
    EXPECT_NE(error_of([&] { SftTemplate::named(d.file("bad.json")); }).find("an SFT template must be a JSON object"), std::string::npos)
        << not_object;
  }
}

TEST(Tokenize, SftMasksCoverExactlyTheResponse) {
  TempDir d;
  const Tokenizer& tok = TokenizerEnv::get();
  test::write_bytes(d.file("sft.jsonl"),
                    "{\"prompt\": \"What is the number?\", \"response\": \"The number is 42917.\"}\n"
                    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Hi\"},"
                    " {\"role\": \"assistant\", \"content\": \"a wife\"}, {\"role\": \"user\", \"content\": \"more\"},"
                    " {\"role\": \"assistant\", \"content\": \"the earth\"}]}\n");
  TokenizeOptions o;
  o.kind = "sft";
  o.inputs = {d.file("sft.jsonl")};
  o.out = d.file("out");
  o.val_fraction = 0.0;
  tokenize_corpus(tok, o);
  Dataset ds = Dataset::open(d.file("out/train"));
  ASSERT_TRUE(ds.is_sft());
  const Shard& sh = ds.shards()[0];
  auto targets = [&](int doc) {  // decode each maximal run of mask-1 tokens
    std::vector<std::string> runs;
    std::vector<int32_t> run;
    for (uint64_t i = sh.doc_offsets()[doc]; i <= sh.doc_offsets()[doc + 1]; ++i) {
      const bool on = i < sh.doc_offsets()[doc + 1] && sh.mask()[i];
      if (on) run.push_back(static_cast<int32_t>(sh.tokens()[i]));
      else if (!run.empty()) {
        EXPECT_EQ(run.back(), 2) << "each reply ends with EOS as a target";
        run.pop_back();
        runs.push_back(tok.decode(run));
        run.clear();
      }
    }
    return runs;
  };
  EXPECT_EQ(targets(0), std::vector<std::string>{"The number is 42917."});
  EXPECT_EQ(targets(1), (std::vector<std::string>{"a wife", "the earth"}));
  // The context is the template with the prompt.
  std::vector<int32_t> ctx;
  for (uint64_t i = 0; i < sh.doc_offsets()[1] && !sh.mask()[i]; ++i) ctx.push_back(static_cast<int32_t>(sh.tokens()[i]));
  EXPECT_EQ(tok.decode(ctx), "### Instruction:\nWhat is the number?\n\n### Response:\n");
}

TEST(Tokenize, SftTruncationFollowsTheDocumentedRules) {
  TempDir d;
  const Tokenizer& tok = TokenizerEnv::get();
  std::string long_prompt;
  for (int i = 0; i < 30; ++i) long_prompt += "the quick brown fox ";
  test::write_bytes(d.file("sft.jsonl"), "{\"prompt\": \"" + long_prompt + "\", \"response\": \"a wife\"}\n" +
                                             "{\"prompt\": \"Hi\", \"response\": \"" + long_prompt + "\"}\n" +
                                             "{\"prompt\": \"Hi\", \"response\": \"a wife\"}\n");
  TokenizeOptions o;
  o.kind = "sft";
  o.inputs = {d.file("sft.jsonl")};
  o.out = d.file("out");
  o.val_fraction = 0.0;
  o.max_len = 40;
  TokenizeSummary s = tokenize_corpus(tok, o);
  EXPECT_EQ(s.truncated["context cut on the left"], 1u);
  EXPECT_EQ(s.truncated["response cut on the right"], 1u);
  EXPECT_EQ(s.train.documents, 3u);
  Dataset ds = Dataset::open(d.file("out/train"));
  const Shard& sh = ds.shards()[0];
  for (int doc = 0; doc < 3; ++doc) EXPECT_LE(sh.doc_offsets()[doc + 1] - sh.doc_offsets()[doc], 40u);
  // Doc 0 keeps its whole reply (the end); doc 1 keeps the start of its reply.
  EXPECT_EQ(sh.tokens()[sh.doc_offsets()[1] - 1], 2u);
  // Padding-mode loading refuses a seq_len no document fits.
  LoaderOptions lo;
  lo.seq_len = 4;
  lo.global_batch = 1;
  EXPECT_NE(error_of([&] { DataLoader(ds, lo, {}); }).find("no SFT document fits seq_len 4"), std::string::npos);
  lo.seq_len = 48;
  DataLoader l(ds, lo, {});
  EXPECT_EQ(l.num_samples(), 3);
  Batch b = l.next();
  const float* m = b.mask.data_ptr<float>();
  float after_end = 0;
  const int64_t len = static_cast<int64_t>(sh.doc_offsets()[b.sample_ids[0] + 1] - sh.doc_offsets()[b.sample_ids[0]]);
  for (int64_t i = len; i < 49; ++i) after_end += m[i];
  EXPECT_EQ(after_end, 0.0f) << "padding is never a loss target";
  // `real` marks the document's own tokens, the prompt (no loss target) included, and not the padding.
  const float* r = b.real.data_ptr<float>();
  int64_t prompt = 0;
  for (int64_t i = 0; i < 49; ++i) {
    EXPECT_EQ(r[i], i < len ? 1.0f : 0.0f) << i;
    prompt += (i < len && m[i] == 0.0f);
  }
  EXPECT_GT(prompt, 0) << "the prompt is real but not a target";
  EXPECT_LT(len, 49) << "the sample is padded";
}

// Write policy (issue 16): re-tokenizing into a folder that holds a dataset replaces it only once
// the new one is complete; a bad input (JSONL line 6) used to delete the old manifest first and
// leave the old dataset orphaned. Nothing of the attempt stays behind.
TEST(Tokenize, AFailedRunLeavesTheExistingDatasetIntactAndNoPartialOutput) {
  TempDir d;
  const Tokenizer& tok = TokenizerEnv::get();
  test::write_bytes(d.file("good.txt"), "The quick brown fox.\n\nIn the beginning.\n");
  TokenizeOptions o;
  o.inputs = {d.file("good.txt")};
  o.out = d.file("out");
  o.val_fraction = 0.0;
  tokenize_corpus(tok, o);
  const std::string manifest = test::read_bytes(d.file("out/train/manifest.json"));
  test::write_bytes(d.file("bad.jsonl"), "{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": \"c\"}\n{\"text\": \"d\"}\n"
                                         "{\"text\": \"e\"}\n{\"text\": broken}\n");
  o.inputs = {d.file("bad.jsonl")};
  EXPECT_NE(error_of([&] { tokenize_corpus(tok, o); }).find("bad.jsonl:6: malformed JSON"), std::string::npos);
  EXPECT_EQ(test::read_bytes(d.file("out/train/manifest.json")), manifest);
  EXPECT_NO_THROW(Dataset::open(d.file("out/train")));
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(d.file("out"))) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"train", "val"})) << "no staging folder left behind";
  // Into a new folder: nothing at all is left.
  o.out = d.file("new");
  EXPECT_THROW(tokenize_corpus(tok, o), std::exception);
  EXPECT_FALSE(fs::exists(d.file("new")));
  // A good input replaces the dataset whole.
  test::write_bytes(d.file("more.txt"), "What is the number?\n\nA wife.\n\nThe earth.\n");
  o.inputs = {d.file("more.txt")};
  o.out = d.file("out");
  EXPECT_EQ(tokenize_corpus(tok, o).train.documents, 3u);
  EXPECT_EQ(Dataset::open(d.file("out/train")).manifest().num_documents, 3u);
}

// Text that is not UTF-8 is tokenized as U+FFFD per bad byte; the summary says how many
// documents that touched instead of "nothing skipped or truncated" (issue 16).
TEST(Tokenize, InvalidUtf8IsCountedInTheSummary) {
  TempDir d;
  const Tokenizer& tok = TokenizerEnv::get();
  test::write_bytes(d.file("a.txt"), "fine text\n\nbad \xff\xfe bytes\n\nmore \xc3 here\n\ncaf\xc3\xa9 is fine\n");
  TokenizeOptions o;
  o.inputs = {d.file("a.txt")};
  o.out = d.file("out");
  o.val_fraction = 0.0;
  const TokenizeSummary s = tokenize_corpus(tok, o);
  EXPECT_EQ(s.train.documents, 4u);
  EXPECT_EQ(s.invalid_utf8, 2u);
}

TEST(Tokenize, MalformedJsonlIsRefusedWithItsLineNumber) {
  TempDir d;
  const Tokenizer& tok = TokenizerEnv::get();
  test::write_bytes(d.file("x.jsonl"), "{\"text\": \"ok\"}\n{\"text\": \"ok\"}\n{\"text\": broken}\n");
  TokenizeOptions o;
  o.inputs = {d.file("x.jsonl")};
  o.out = d.file("out");
  std::string msg = error_of([&] { tokenize_corpus(tok, o); });
  EXPECT_NE(msg.find(d.file("x.jsonl") + ":3"), std::string::npos) << msg;
  test::write_bytes(d.file("y.jsonl"), "{\"prompt\": \"a\"}\n");
  o.kind = "sft";
  o.inputs = {d.file("y.jsonl")};
  msg = error_of([&] { tokenize_corpus(tok, o); });
  EXPECT_NE(msg.find(":1: missing field \"response\""), std::string::npos) << msg;
}
