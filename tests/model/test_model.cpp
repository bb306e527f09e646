// The Llama-family decoder against an independent reference (HF equations, tools/), plus the
// properties users rely on: causality, exact save/load, the visibility and KV-cache hooks, and
// clear refusal of bad configs and weights.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "../test_util.h"
#include "../tiny_model.h"
#include "agate/io/safetensors.h"
#include "agate/model/attention.h"
#include "agate/model/config.h"
#include "agate/model/kv_cache.h"
#include "agate/model/llama.h"
#include "agate/model/rms_norm.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"

using namespace agate;
using agate::test::error_of;
using agate::test::TempDir;
namespace fs = std::filesystem;

namespace {

std::string fixture(const std::string& name) { return test::source_path("tests/fixtures/models/" + name); }

using agate::test::tiny_config;

at::Tensor random_tokens(int64_t B, int64_t T, int64_t V, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(0, V, {B, T}, gen, at::kLong);
}

// A visibility hook that returns fixed flags.
class FixedKeep : public KeyVisibility {
 public:
  explicit FixedKeep(at::Tensor keep) : keep_(std::move(keep)) {}
  LayerKeep key_keep(int64_t, const at::Tensor& x, const at::Tensor&, bool, const KeyInputs&) override {
    return LayerKeep::hard(keep_.to(x.scalar_type()));
  }

 private:
  at::Tensor keep_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// Reference agreement: every fixture case (MHA/GQA/MQA, tied/untied, rope none/linear/llama3,
// q/k/v(/o) biases, explicit head_dim, sliding window, float32 and bfloat16, sharded).
class ReferenceLogits : public ::testing::TestWithParam<std::string> {};

TEST_P(ReferenceLogits, MatchTheIndependentReference) {
  c10::NoGradGuard no_grad;
  const std::string dir = fixture(GetParam());
  const bool bf16 = GetParam().find("bf16") != std::string::npos;
  LlamaModel model = LlamaModel::load(dir, bf16 ? at::kBFloat16 : at::kFloat);
  SafetensorsFile expected = SafetensorsFile::open(dir + "/expected.safetensors");
  at::Tensor tokens = expected.tensor("tokens");
  at::Tensor want = expected.tensor("logits");
  at::Tensor got = model.forward(tokens).to(at::kFloat);
  ASSERT_EQ(got.sizes(), want.sizes());
  const double atol = bf16 ? 0.25 : 1e-4;
  const double max_err = (got - want).abs().max().item<double>();
  EXPECT_LT(max_err, atol) << GetParam();
  if (bf16) {  // bf16 rounding differs by kernel; the distribution must still agree closely
    at::Tensor pg = at::softmax(got, -1), pw = at::softmax(want, -1);
    EXPECT_LT((pg - pw).abs().max().item<double>(), 0.05) << GetParam();
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ReferenceLogits,
                         ::testing::Values("llama_mha_tied_f32", "llama_gqa_untied_f32", "llama_linear_rope_f32",
                                           "llama3_rope_f32", "llama_attnbias_mqa_f32", "qwen2_bias_f32",
                                           "mistral_headdim_window_f32", "llama_gqa_bf16", "qwen2_bias_bf16",
                                           "llama_sharded_f32"));

// The fused CPU RMSNorm equals HF's formula (rms_norm_reference): the value (bit for bit up to
// one rounding of the row's scale), and the input gradient; widths with a vector tail.
TEST(RmsNorm, FusedKernelEqualsTheReferenceFormulaAndItsGradient) {
  for (const auto dtype : {at::kFloat, at::kBFloat16}) {
    for (const int64_t D : {64, 37}) {
      auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
      const at::Tensor x0 = (at::randn({3, 5, D}, gen) * 3).to(dtype), w = (at::rand({D}, gen) + 0.5).to(dtype);
      const at::Tensor gout = at::randn({3, 5, D}, gen).to(dtype);
      at::Tensor x1 = x0.clone().requires_grad_(true), x2 = x0.clone().requires_grad_(true);
      const at::Tensor want = rms_norm_reference(x1, w, 1e-5), got = rms_norm(x2, w, 1e-5);
      want.backward(gout);
      got.backward(gout);
      const double tol = dtype == at::kFloat ? 1e-5 : 1e-2;
      EXPECT_TRUE(at::allclose(got.to(at::kFloat), want.to(at::kFloat), tol, tol)) << D;
      EXPECT_TRUE(at::allclose(x2.grad().to(at::kFloat), x1.grad().to(at::kFloat), tol, tol)) << D;
      c10::NoGradGuard no_grad;  // the inference path: the kernel without autograd
      EXPECT_TRUE(at::allclose(rms_norm(x0, w, 1e-5).to(at::kFloat), want.to(at::kFloat), tol, tol)) << D;
    }
  }
  // A weight that trains (pretraining) takes the formula, so it gets its gradient.
  at::Tensor w = at::ones({8}).requires_grad_(true);
  rms_norm(at::randn({2, 8}), w, 1e-5).sum().backward();
  EXPECT_TRUE(w.grad().defined());
}

TEST(Model, ShardedAndSingleFileCheckpointsLoadTheSame) {
  LlamaModel a = LlamaModel::load(fixture("llama_gqa_untied_f32"), at::kFloat);
  LlamaModel b = LlamaModel::load(fixture("llama_sharded_f32"), at::kFloat);
  ASSERT_EQ(a.parameters().size(), b.parameters().size());
  for (size_t i = 0; i < a.parameters().size(); ++i) {
    EXPECT_EQ(a.parameters()[i].first, b.parameters()[i].first);
    EXPECT_TRUE(at::equal(a.parameters()[i].second, b.parameters()[i].second)) << a.parameters()[i].first;
  }
}

// ---------------------------------------------------------------------------------------------
TEST(Model, IsCausal) {
  c10::NoGradGuard no_grad;
  for (int64_t kv : {4, 2, 1}) {
    LlamaModel m = LlamaModel::init_random(tiny_config(4, kv), 7, at::kFloat);
    at::Tensor tokens = random_tokens(1, 16, 61, 3);
    at::Tensor base = m.forward(tokens);
    for (int64_t t : {0, 5, 15}) {
      at::Tensor changed = tokens.clone();
      changed[0][t] = (changed[0][t].item<int64_t>() + 1) % 61;
      at::Tensor out = m.forward(changed);
      if (t > 0) EXPECT_TRUE(at::equal(out.slice(1, 0, t), base.slice(1, 0, t))) << "t=" << t << " kv=" << kv;
      EXPECT_FALSE(at::allclose(out.select(1, t), base.select(1, t))) << "t=" << t;
    }
  }
}

// Prefills ask for the last position's logits only (ForwardOptions::last_only): the same row as
// the full forward's, with a cache too (generate, eval and the policies prefill this way).
TEST(Model, LastOnlyLogitsAreTheFullForwardsLastRow) {
  c10::NoGradGuard no_grad;
  LlamaModel m = LlamaModel::init_random(tiny_config(4, 2), 11, at::kFloat);
  at::Tensor tokens = random_tokens(2, 12, 61, 5);
  at::Tensor full = m.forward(tokens);  // [2, 12, V]
  ForwardOptions last;
  last.last_only = true;
  at::Tensor out = m.forward(tokens, last);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{2, 1, full.size(2)}));
  EXPECT_TRUE(at::allclose(out.select(1, 0), full.select(1, 11), 1e-5, 1e-6));
  DenseKVCache cache(m.config().num_hidden_layers);
  last.cache = &cache;
  EXPECT_TRUE(at::allclose(m.forward(tokens.slice(0, 0, 1), last)[0][0], full[0][11], 1e-5, 1e-6));
  EXPECT_EQ(cache.length(), 12);
}

TEST(Model, SaveThenLoadIsBitIdentical) {
  TempDir dir;
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    for (bool tied : {false, true}) {
      LlamaModel m = LlamaModel::init_random(tiny_config(4, 2, tied), 11, dtype);
      const std::string out = dir.file(std::string(tied ? "tied_" : "untied_") + c10::toString(dtype));
      m.save(out);
      LlamaModel back = LlamaModel::load(out, dtype);
      ASSERT_EQ(m.parameters().size(), back.parameters().size());
      for (size_t i = 0; i < m.parameters().size(); ++i) {
        EXPECT_TRUE(at::equal(m.parameters()[i].second, back.parameters()[i].second)) << m.parameters()[i].first;
      }
      EXPECT_FALSE(fs::exists(out + "/model.safetensors") && tied &&
                   SafetensorsFile::open(out + "/model.safetensors").find("lm_head.weight"));
      // The same model saved sharded loads the same.
      m.save(out + "_sharded", /*max_shard_bytes=*/8000);
      EXPECT_TRUE(fs::exists(out + "_sharded/model.safetensors.index.json"));
      LlamaModel sharded = LlamaModel::load(out + "_sharded", dtype);
      for (size_t i = 0; i < m.parameters().size(); ++i) {
        EXPECT_TRUE(at::equal(m.parameters()[i].second, sharded.parameters()[i].second));
      }
    }
  }
}

TEST(Model, ConfigRoundTripsThroughJson) {
  ModelConfig c = tiny_config();
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8;
  c.rope_scaling.original_max_position_embeddings = 1024;
  c.eos_token_ids = {2, 3};
  ModelConfig back = parse_model_config(model_config_to_json(c), "mem");
  EXPECT_EQ(back.rope_scaling.type, "llama3");
  EXPECT_EQ(back.rope_scaling.original_max_position_embeddings, 1024);
  EXPECT_EQ(back.eos_token_ids, c.eos_token_ids);
  EXPECT_EQ(back.parameter_count(), c.parameter_count());
}

// A header that labels float data I32 (same byte size) used to load as huge integers (log-probs
// of -7e9, a training loss of 3e9, exit 0): every weight must carry a floating dtype (issue 16).
TEST(Model, WeightsWithANonFloatingDtypeAreRefusedNamingTheTensor) {
  c10::NoGradGuard no_grad;
  test::TempDir dir;
  const std::string out = dir.file("m");
  LlamaModel::init_random(tiny_config(4, 2), 3, at::kFloat).save(out);
  const std::string file = out + "/model.safetensors";
  std::string bytes = test::read_bytes(file);
  const size_t at = bytes.find("\"F32\"");
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 5, "\"I32\"");
  test::write_bytes(file, bytes);
  const std::string m = error_of([&] { LlamaModel::load(out, at::kFloat); });
  EXPECT_NE(m.find(file + ": tensor '"), std::string::npos) << m;
  EXPECT_NE(m.find("' is I32, expected a floating dtype"), std::string::npos) << m;
  EXPECT_NE(m.find("hint:"), std::string::npos) << m;
}

// Damaged weights (NaN or infinity) used to give NaN log-probabilities and exit 0.
TEST(Model, WeightsHoldingNanOrInfinityAreRefusedNamingTheTensor) {
  c10::NoGradGuard no_grad;
  test::TempDir dir;
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    const std::string out = dir.file(std::isnan(bad) ? "nan" : "inf");
    LlamaModel m = LlamaModel::init_random(tiny_config(4, 2), 3, at::kFloat);
    for (const auto& [name, t] : m.parameters()) {
      if (name == "model.layers.1.mlp.up_proj.weight") t.view(-1)[7] = bad;  // shares the model's storage
    }
    m.save(out);
    for (const auto dtype : {at::kFloat, at::kBFloat16}) {
      const std::string e = error_of([&] { LlamaModel::load(out, dtype); });
      EXPECT_NE(e.find("weight 'model.layers.1.mlp.up_proj.weight' holds NaN or infinite values"), std::string::npos) << e;
      EXPECT_NE(e.find("hint:"), std::string::npos) << e;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The hooks later issues build on.
TEST(Attention, AllKeptFlagsEqualTheBaseModel) {
  c10::NoGradGuard no_grad;
  LlamaModel m = LlamaModel::init_random(tiny_config(4, 2), 5, at::kFloat);
  at::Tensor tokens = random_tokens(2, 12, 61, 9);
  FixedKeep all(at::ones({2, 12, 2}));
  ForwardOptions opts;
  opts.visibility = &all;
  EXPECT_TRUE(at::allclose(m.forward(tokens, opts), m.forward(tokens), 1e-5, 1e-5));
}

TEST(Attention, ForcedFlagsEqualHandComputedMaskedAttention) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
  const int64_t B = 2, H = 4, Hkv = 2, T = 7, hd = 8;
  at::Tensor q = at::randn({B, H, T, hd}, gen), k = at::randn({B, Hkv, T, hd}, gen), v = at::randn({B, Hkv, T, hd}, gen);
  at::Tensor keep = (at::rand({B, T, Hkv}, gen) > 0.5).to(at::kFloat);
  at::Tensor pos = at::arange(0, T, at::kLong);
  at::Tensor got = masked_attention(q, k, v, pos, pos, keep, 0);
  // By hand: loops over batch, head, query; visible = self, or earlier and kept at the KV head.
  at::Tensor want = at::zeros_like(got);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / Hkv);
      for (int64_t i = 0; i < T; ++i) {
        std::vector<int64_t> vis;
        for (int64_t j = 0; j <= i; ++j)
          if (j == i || keep[b][j][g].item<float>() > 0.5f) vis.push_back(j);
        at::Tensor idx = at::tensor(vis, at::kLong);
        at::Tensor s = (k[b][g].index_select(0, idx).matmul(q[b][h][i])) / std::sqrt(double(hd));
        want[b][h][i] = at::softmax(s, 0).matmul(v[b][g].index_select(0, idx));
      }
    }
  EXPECT_TRUE(at::allclose(got, want, 1e-5, 1e-6));
  // An evicted key is invisible to every later query at its KV head, yet visible to itself:
  // changing its value changes its own output and nothing else at that head.
  const int64_t j = 2;
  at::Tensor keep2 = keep.clone();
  keep2.select(1, j).select(1, 0).fill_(0);  // evict token j at KV head 0 in both batches
  at::Tensor v2 = v.clone();
  v2.select(2, j).select(1, 0).add_(10.0);
  at::Tensor a = masked_attention(q, k, v, pos, pos, keep2, 0), b2 = masked_attention(q, k, v2, pos, pos, keep2, 0);
  at::Tensor diff = (a - b2).abs().sum(-1);  // [B, H, T]
  for (int64_t h = 0; h < 2; ++h) {          // query heads 0 and 1 read KV head 0
    EXPECT_GT(diff.select(1, h).select(1, j).min().item<float>(), 0.0f);
    EXPECT_EQ(diff.select(1, h).slice(1, j + 1).max().item<float>(), 0.0f);
  }
}

TEST(Attention, SoftProbabilitiesEqualLogBiasSoftmax) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(2);
  const int64_t T = 6, hd = 4;
  at::Tensor q = at::randn({1, 2, T, hd}, gen), k = at::randn({1, 1, T, hd}, gen), v = at::randn({1, 1, T, hd}, gen);
  at::Tensor p = at::rand({1, T, 1}, gen) * 0.9 + 0.05;
  at::Tensor pos = at::arange(0, T, at::kLong);
  at::Tensor got = masked_attention(q, k, v, pos, pos, p, 0);
  // softmax(score + log p_j) over j <= i, with p_i replaced by 1 for the query's own key.
  at::Tensor s = q.matmul(k.transpose(-1, -2)) / 2.0;                         // [1, 2, T, T]
  at::Tensor logp = p.view({1, 1, 1, T}).log().expand({1, 2, T, T}).clone();
  for (int64_t i = 0; i < T; ++i) logp.select(2, i).select(2, i).fill_(0);
  at::Tensor mask = at::ones({T, T}).tril().logical_not();
  at::Tensor want = at::softmax((s + logp).masked_fill(mask, -INFINITY), -1).matmul(v);
  EXPECT_TRUE(at::allclose(got, want, 1e-5, 1e-6));
}

TEST(KVCache, IncrementalDecodingEqualsOneFullForward) {
  c10::NoGradGuard no_grad;
  ModelConfig c = tiny_config(4, 2);
  c.sliding_window = 5;
  for (int64_t window : {0, 5}) {
    c.sliding_window = window;
    LlamaModel m = LlamaModel::init_random(c, 13, at::kFloat);
    at::Tensor tokens = random_tokens(1, 14, 61, 4);
    at::Tensor full = m.forward(tokens);
    DenseKVCache cache(c.num_hidden_layers);
    ForwardOptions opts;
    opts.cache = &cache;
    at::Tensor prefill = m.forward(tokens.slice(1, 0, 9), opts);
    std::vector<at::Tensor> outs{prefill};
    for (int64_t t = 9; t < 14; ++t) outs.push_back(m.forward(tokens.slice(1, t, t + 1), opts));
    EXPECT_EQ(cache.length(), 14);
    EXPECT_TRUE(at::allclose(at::cat(outs, 1), full, 1e-5, 1e-5)) << "window " << window;
    EXPECT_EQ(cache.bytes(), 2 * 2 * 14 * 2 * 8 * 4);  // layers x (k,v) x T x Hkv x hd x 4 bytes
  }
}

// ---------------------------------------------------------------------------------------------
// Bad input: one clear message naming the file and the problem.
TEST(ModelErrors, BadConfigsAreRefusedNamingTheKey) {
  const std::string good = read_file(fixture("llama_gqa_untied_f32/config.json"));
  auto with = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = nlohmann::json::parse(good);
    edit(j);
    return error_of([&] { parse_model_config(j.dump(), "cfg.json"); });
  };
  EXPECT_NE(with([](auto& j) { j.erase("hidden_size"); }).find("missing required key \"hidden_size\""), std::string::npos);
  EXPECT_NE(with([](auto& j) { j["num_hidden_layers"] = "two"; }).find("\"num_hidden_layers\" must be an integer"),
            std::string::npos);
  EXPECT_NE(with([](auto& j) { j["model_type"] = "gpt2"; }).find("model_type \"gpt2\" is not supported"), std::string::npos);
  EXPECT_NE(with([](auto& j) { j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4}}; }).find("\"yarn\" is not supported"),
            std::string::npos);
  EXPECT_NE(with([](auto& j) { j["num_key_value_heads"] = 3; }).find("not a multiple"), std::string::npos);
  EXPECT_NE(with([](auto& j) { j["tie_word_embeddings"] = 1; }).find("must be true or false"), std::string::npos);
  EXPECT_NE(with([](auto& j) { j["eos_token_id"] = "x"; }).find("eos_token_id"), std::string::npos);
  // Numbers outside their domain: zero or negative epsilons, thetas and context lengths.
  for (double eps : {0.0, -1e-6}) {
    EXPECT_NE(with([&](auto& j) { j["rms_norm_eps"] = eps; }).find("rms_norm_eps must be a positive number"), std::string::npos);
  }
  EXPECT_NE(with([](auto& j) { j["rope_theta"] = -10000.0; }).find("rope_theta must be a positive number"), std::string::npos);
  EXPECT_NE(with([](auto& j) { j["max_position_embeddings"] = -4; }).find("max_position_embeddings must be positive, found -4"),
            std::string::npos);
  EXPECT_NE(with([](auto& j) { j["max_position_embeddings"] = -4; }).find("hint:"), std::string::npos);
  // Sizes far beyond any model: refused before anything is allocated or multiplied.
  EXPECT_NE(with([](auto& j) { j["num_hidden_layers"] = 4294967295LL; }).find("\"num_hidden_layers\" is 4294967295, above agate's limit of 4096"),
            std::string::npos);
  EXPECT_NE(with([](auto& j) { j["hidden_size"] = 1099511627776LL; }).find("above agate's limit"), std::string::npos);
  EXPECT_NE(error_of([] { parse_model_config("{not json", "cfg.json"); }).find("cfg.json: is not valid JSON"),
            std::string::npos);
  // Every message starts with the file name.
  EXPECT_EQ(with([](auto& j) { j.erase("vocab_size"); }).rfind("cfg.json: ", 0), 0u);
}

TEST(ModelErrors, WeightsThatDoNotFitTheConfigAreRefusedWithAHint) {
  TempDir dir;
  LlamaModel m = LlamaModel::init_random(tiny_config(4, 2), 1, at::kFloat);
  m.save(dir.path());
  // Wrong shape: a config claiming more KV heads than the weights have.
  nlohmann::json cfg = nlohmann::json::parse(read_file(dir.file("config.json")));
  cfg["num_key_value_heads"] = 4;
  write_file_atomic(dir.file("config.json"), cfg.dump());
  std::string msg = error_of([&] { LlamaModel::load(dir.path(), at::kFloat); });
  EXPECT_NE(msg.find("k_proj.weight' has shape [16, 32] but config.json implies [32, 32]"), std::string::npos) << msg;
  EXPECT_NE(msg.find("wrong config.json"), std::string::npos) << msg;
  // Missing tensor.
  cfg["num_key_value_heads"] = 2;
  cfg["num_hidden_layers"] = 3;
  write_file_atomic(dir.file("config.json"), cfg.dump());
  msg = error_of([&] { LlamaModel::load(dir.path(), at::kFloat); });
  EXPECT_NE(msg.find("missing tensor 'model.layers.2."), std::string::npos) << msg;
  // Missing config.
  fs::remove(dir.file("config.json"));
  EXPECT_NE(error_of([&] { LlamaModel::load(dir.path(), at::kFloat); }).find("has no config.json"), std::string::npos);
  // Token ids outside the vocabulary.
  EXPECT_NE(error_of([&] { m.forward(at::full({1, 3}, 61, at::kLong)); }).find("outside the vocabulary"),
            std::string::npos);
}
