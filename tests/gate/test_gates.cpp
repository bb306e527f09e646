// Attention-Gates: exactness at init, the visibility rule through real gates, the estimators'
// gradients, sinks, GQA, and activation recomputation.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <vector>

#include "../test_util.h"
#include "../tiny_model.h"
#include "agate/evict/policy.h"
#include "agate/gate/gates.h"
#include "agate/gate/losses.h"
#include "agate/gate/rule_feature.h"
#include "agate/model/attention.h"
#include "agate/model/llama.h"

using namespace agate;

namespace {

ModelConfig tiny() { return agate::test::tiny_config(4, 2, false, 53); }

at::Tensor tokens(int64_t B, int64_t T, uint64_t seed = 1) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(0, 53, {B, T}, gen, at::kLong);
}

GateConfig gate_config(const std::string& type) {
  GateConfig g;
  g.type = kGateTypes.parse(type, "gate.type");
  g.heads = 2;
  g.head_dim = 8;
  return g;
}

}  // namespace

TEST(Gates, FreshGatesKeepEverythingAndEqualTheBaseModel) {
  c10::NoGradGuard no_grad;
  for (const char* type : {"attention", "mlp"}) {
    for (auto dtype : {at::kFloat, at::kBFloat16}) {
      LlamaModel m = LlamaModel::init_random(tiny(), 3, dtype);
      auto gates = Gates::create(gate_config(type), m.config(), 7);
      ForwardOptions o;
      o.visibility = gates.get();
      at::Tensor t = tokens(2, 16);
      const ModelOutput out = m.run(t, o);
      at::Tensor gated = out.logits, base = m.forward(t);
      EXPECT_EQ(out.flag_means().min().item<float>(), 1.0f) << type;
      EXPECT_EQ(out.flag_means().sizes(), (at::IntArrayRef{2, 2})) << "[layers, KV heads]";
      if (dtype == at::kFloat) EXPECT_TRUE(at::allclose(gated, base, 1e-5, 1e-5)) << type;
      else EXPECT_LT((gated - base).abs().max().item<float>(), 0.05f) << type;
      // Forcing every flag to keep gives the same.
      gates->force_flags(1);
      EXPECT_TRUE(at::allclose(m.forward(t, o), base, 1e-5, 1e-5)) << type;
    }
  }
}

TEST(Gates, ForcedEvictionChangesLaterTokensOnly) {
  c10::NoGradGuard no_grad;
  LlamaModel m = LlamaModel::init_random(tiny(), 3, at::kFloat);
  auto gates = Gates::create(gate_config("attention"), m.config(), 7);
  gates->force_flags(0);  // every token evicted: each query sees only itself
  ForwardOptions o;
  o.visibility = gates.get();
  at::Tensor t = tokens(1, 10);
  const ModelOutput run = m.run(t, o);
  at::Tensor out = run.logits;
  // Position 0 sees only itself in both; later positions differ from the base.
  at::Tensor base = m.forward(t);
  EXPECT_TRUE(at::allclose(out.select(1, 0), base.select(1, 0), 1e-5, 1e-5));
  EXPECT_FALSE(at::allclose(out.select(1, 5), base.select(1, 5), 1e-3, 1e-3));
  // With no context at all, changing an earlier token leaves a later logit unchanged.
  at::Tensor t2 = t.clone();
  t2[0][2] = (t2[0][2].item<int64_t>() + 1) % 53;
  EXPECT_TRUE(at::allclose(m.forward(t2, o).select(1, 7), out.select(1, 7), 1e-5, 1e-5));
  EXPECT_EQ(run.flag_means().max().item<float>(), 0.0f);
}

TEST(Gates, SinkTokensAreAlwaysKept) {
  c10::NoGradGuard no_grad;
  LlamaModel m = LlamaModel::init_random(tiny(), 3, at::kFloat);
  GateConfig g = gate_config("mlp");
  g.sink_tokens = 2;
  g.init_bias = -5;  // p ~ 0.007: every non-sink token evicted
  auto gates = Gates::create(g, m.config(), 7);
  at::Tensor x = at::randn({1, 8, 32});
  for (bool train : {false, true}) {
    const LayerKeep k = gates->key_keep(0, x, at::arange(0, 8, at::kLong), train, {});
    EXPECT_EQ(k.keep.sizes(), (at::IntArrayRef{1, 8, 2}));
    EXPECT_TRUE(at::equal(k.keep.slice(1, 0, 2), at::ones({1, 2, 2}))) << train;
    EXPECT_TRUE(at::equal(k.flags.slice(1, 2), at::zeros({1, 6, 2}))) << train;
    EXPECT_TRUE(at::allclose(k.flag_mean, at::full({2}, 2.0 / 8.0), 0, 1e-6)) << train;
    if (!train) EXPECT_TRUE(at::equal(k.keep, k.flags)) << "outside training attention uses the hard flags";
  }
}

// The STE's gradient w.r.t. the keep probability p is, by definition, dL/dM at M = hard flags.
TEST(Gates, SteGradientIsTheDocumentedSurrogate) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const int64_t T = 7;
  at::Tensor q = at::randn({1, 4, T, 8}, gen), k = at::randn({1, 2, T, 8}, gen), v = at::randn({1, 2, T, 8}, gen);
  at::Tensor R = at::randn({1, 4, T, 8}, gen), pos = at::arange(0, T, at::kLong);
  at::Tensor p = (at::rand({1, T, 2}, gen) * 0.98 + 0.01).requires_grad_(true);
  at::Tensor flags = (p.detach() > 0.5).to(at::kFloat);
  at::Tensor keep = flags + p - p.detach();
  (masked_attention(q, k, v, pos, pos, keep) * R).sum().backward();
  at::Tensor M = flags.clone().requires_grad_(true);
  (masked_attention(q, k, v, pos, pos, M) * R).sum().backward();
  EXPECT_TRUE(at::allclose(p.grad(), M.grad(), 1e-5, 1e-6));
  EXPECT_GT(p.grad().abs().sum().item<float>(), 0.0f) << "evicted keys still get gradient";
}

TEST(Gates, SoftGradientMatchesFiniteDifferences) {
  auto opts = at::TensorOptions().dtype(at::kDouble);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(6);
  const int64_t T = 6;
  at::Tensor q = at::randn({1, 2, T, 4}, gen).to(at::kDouble), k = at::randn({1, 1, T, 4}, gen).to(at::kDouble);
  at::Tensor v = at::randn({1, 1, T, 4}, gen).to(at::kDouble), R = at::randn({1, 2, T, 4}, gen).to(at::kDouble);
  at::Tensor pos = at::arange(0, T, at::kLong);
  at::Tensor p = (at::rand({1, T, 1}, gen).to(at::kDouble) * 0.8 + 0.1).requires_grad_(true);
  auto loss = [&](const at::Tensor& keep) { return (masked_attention(q, k, v, pos, pos, keep) * R).sum(); };
  loss(p).backward();
  const double eps = 1e-6;
  for (int64_t j = 0; j < T - 1; ++j) {  // the last key is seen only by itself: zero gradient
    at::Tensor plus = p.detach().clone(), minus = p.detach().clone();
    plus[0][j][0] += eps;
    minus[0][j][0] -= eps;
    const double fd = (loss(plus).item<double>() - loss(minus).item<double>()) / (2 * eps);
    EXPECT_NEAR(p.grad()[0][j][0].item<double>(), fd, 1e-6 * std::max(1.0, std::abs(fd))) << "key " << j;
  }
  (void)opts;
}

TEST(Gates, GradientsReachOnlyGateParameters) {
  LlamaModel m = LlamaModel::init_random(tiny(), 3, at::kFloat);
  auto gates = Gates::create(gate_config("attention"), m.config(), 7);
  ForwardOptions o;
  o.visibility = gates.get();
  o.train = true;
  const ModelOutput out = m.run(tokens(2, 12), o);
  (lm_loss(out.logits.slice(1, 0, 11), tokens(2, 12).slice(1, 1), at::ones({2, 11})) +
   sparsity_loss(out.keep_means(), SparsityForm::L2Target, 0.3))
      .backward();
  for (const auto& [name, p] : m.parameters()) EXPECT_FALSE(p.grad().defined()) << name;
  for (const auto& [name, p] : gates->parameters()) {
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_GT(p.grad().abs().sum().item<float>(), 0.0f) << name;
  }
}

// The per-layer reconstruction objective: the residual stream stays the base model's (the
// logits are the base model's), each gated layer records its attention error against full
// attention (0 when every flag keeps, or every query is dense), and a layer's error moves only
// that layer's gate.
TEST(Gates, ReconstructionKeepsTheBaseStreamAndMeasuresEachLayersAttentionError) {
  LlamaModel m = LlamaModel::init_random(tiny(), 3, at::kFloat);
  GateConfig g = gate_config("attention");
  g.init_bias = 0.0, g.init_std = 0.5;  // kept and evicted tokens
  auto gates = Gates::create(g, m.config(), 7);
  const at::Tensor t = tokens(2, 14);
  ForwardOptions o;
  o.visibility = gates.get();
  o.train = true;
  o.reconstruct = true;
  const ModelOutput out = m.run(t, o);
  EXPECT_TRUE(at::allclose(out.logits, m.forward(t), 1e-5, 1e-5)) << "the stream is the base model's";
  const at::Tensor err = out.recon_errors();
  ASSERT_EQ(err.sizes(), (at::IntArrayRef{2}));
  EXPECT_GT(err.min().item<float>(), 0.0f);
  err[0].backward();
  for (const auto& [name, p] : m.parameters()) EXPECT_FALSE(p.grad().defined()) << name;
  for (const auto& [name, p] : gates->parameters()) {
    const bool layer0 = name.find("layers.0.") != std::string::npos;
    const double moved = p.grad().defined() ? p.grad().abs().sum().item<double>() : 0.0;
    if (layer0) EXPECT_GT(moved, 0.0) << name;
    else EXPECT_EQ(moved, 0.0) << name << ": layer 0's error reached another layer's gate";
  }
  c10::NoGradGuard no_grad;
  o.dense_until = 14;  // every query attends fully
  EXPECT_LT(m.run(t, o).recon_errors().max().item<float>(), 1e-10f);
  o.dense_until = 0;
  gates->force_flags(1);
  EXPECT_LT(m.run(t, o).recon_errors().max().item<float>(), 1e-10f);
  gates->force_flags(-1);
}

TEST(Losses, TheProtectedWindowCountsInTheTarget) {
  EXPECT_DOUBLE_EQ(window_counted_target(0.25, 512, 0), 0.25);
  EXPECT_DOUBLE_EQ(window_counted_target(0.25, 512, 32), (128.0 - 32.0) / 480.0);
  EXPECT_DOUBLE_EQ(window_counted_target(0.05, 512, 32), 0.0) << "the window alone is over budget";
  EXPECT_DOUBLE_EQ(window_counted_target(0.25, 16, 32), 0.25) << "no context beyond the window";
}

// Issue 15's defect: an SFT batch pads its samples (with EOS, loss weight 0), and the padding
// used to count in the keep surrogate (so in the sparsity term) and the kept ratio. With the
// real-token weight, a padded sample gives exactly the unpadded sample's statistics (the gates
// are causal: the real positions never see the padding), with and without recomputation.
TEST(Gates, PaddingIsNotCountedInTheKeepSurrogateOrTheKeptRatio) {
  LlamaModel m = LlamaModel::init_random(tiny(), 3, at::kFloat);
  GateConfig g = gate_config("attention");
  g.init_bias = 0.0, g.init_std = 0.5;  // keep probabilities spread around 0.5: kept and evicted tokens
  auto gates = Gates::create(g, m.config(), 7);
  const at::Tensor doc = tokens(1, 8);
  const at::Tensor padded = at::cat({doc, at::full({1, 5}, 2, at::kLong)}, 1);  // EOS padding
  const at::Tensor real = at::cat({at::ones({1, 8}), at::zeros({1, 5})}, 1);
  for (bool recompute : {false, true}) {
    ForwardOptions o;
    o.visibility = gates.get();
    o.train = true;
    o.recompute = recompute;
    const ModelOutput a = m.run(doc, o);
    const ModelOutput unweighted = m.run(padded, o);
    o.token_weight = real;
    const ModelOutput b = m.run(padded, o);
    EXPECT_TRUE(at::allclose(a.keep_means(), b.keep_means(), 1e-5, 1e-6)) << recompute;
    EXPECT_TRUE(at::allclose(a.flag_means(), b.flag_means(real), 1e-5, 1e-6)) << recompute;
    EXPECT_TRUE(b.keep_means().requires_grad()) << recompute;
    EXPECT_FALSE(at::allclose(a.keep_means(), unweighted.keep_means(), 1e-5, 1e-6)) << "padding must matter here";
  }
}

TEST(Gates, RecomputationGivesTheSameGradients) {
  LlamaModel m = LlamaModel::init_random(tiny(), 3, at::kFloat);
  GateConfig g = gate_config("attention");
  g.init_bias = 0.1;  // a mix of kept and evicted tokens
  auto run = [&](bool recompute) {
    auto gates = Gates::create(g, m.config(), 7);
    ForwardOptions o;
    o.visibility = gates.get();
    o.train = true;
    o.recompute = recompute;
    const ModelOutput out = m.run(tokens(2, 12), o);
    EXPECT_TRUE(out.keep_means().requires_grad()) << recompute;
    (out.logits.pow(2).mean() + sparsity_loss(out.keep_means(), SparsityForm::L2Target, 0.2)).backward();
    std::vector<at::Tensor> grads;
    for (const auto& kv : gates->parameters()) grads.push_back(kv.second.grad().clone());
    return grads;
  };
  auto a = run(false), b = run(true);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::allclose(a[i], b[i], 1e-5, 1e-7)) << i;
}

TEST(Losses, SparsityFormsAndLambdaWarmup) {
  at::Tensor keep = at::tensor({0.8, 0.4});
  EXPECT_NEAR(sparsity_loss(keep, SparsityForm::L2Target, 0.5).item<double>(), (0.09 + 0.01) / 2, 1e-6);
  EXPECT_NEAR(sparsity_loss(keep, SparsityForm::Hinge, 0.5).item<double>(), 0.09 / 2, 1e-6);
  EXPECT_NEAR(sparsity_loss(keep, SparsityForm::L1, 0.5).item<double>(), 0.6, 1e-6);
  EXPECT_DOUBLE_EQ(sparsity_lambda(2.0, 10, 5), 1.0);
  EXPECT_DOUBLE_EQ(sparsity_lambda(2.0, 10, 50), 2.0);
  EXPECT_DOUBLE_EQ(sparsity_lambda(2.0, 0, 0), 2.0);
  EXPECT_DOUBLE_EQ(target_keep_at(0.25, 0, 0), 0.25);
  EXPECT_DOUBLE_EQ(target_keep_at(0.25, 10, 0), 1.0);
  EXPECT_DOUBLE_EQ(target_keep_at(0.25, 10, 5), 0.625);
  EXPECT_DOUBLE_EQ(target_keep_at(0.25, 10, 40), 0.25);
  // Masked LM loss ignores weight-0 positions.
  at::Tensor logits = at::randn({1, 3, 5}), targets = at::tensor({1, 2, 3}, at::kLong).view({1, 3});
  at::Tensor w = at::tensor({1.0f, 0.0f, 1.0f}).view({1, 3});
  at::Tensor logits2 = logits.clone();
  logits2[0][1] += 100.0;
  EXPECT_NEAR(lm_loss(logits, targets, w).item<double>(), lm_loss(logits2, targets, w).item<double>(), 1e-6);
}

// The fused LM loss (LM head + cross-entropy one chunk of rows at a time, gradient made in
// the forward) equals the unfused one, value and gradients w.r.t. hidden and head, for chunks
// that do not divide the rows, weight-0 rows, an upstream scale, and in bfloat16 (float32 and
// bfloat16 run the CPU row kernel; float64 the ATen path that CUDA takes).
TEST(Losses, FusedHeadLossEqualsTheUnfusedLoss) {
  for (const auto dtype : {at::kFloat, at::kBFloat16, at::kDouble}) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
    const int64_t B = 2, T = 7, D = 16, V = 37;
    const at::Tensor h0 = at::randn({B, T, D}, gen).to(dtype), w0 = (at::randn({V, D}, gen) * 0.5).to(dtype);
    const at::Tensor targets = at::randint(0, V, {B, T}, gen, at::kLong);
    at::Tensor weights = at::ones({B, T});
    weights[0][2] = 0, weights[1][6] = 0;
    for (const int64_t chunk : {int64_t{1} << 21, 3 * V, V}) {  // one chunk, 3 rows, 1 row
      at::Tensor h1 = h0.clone().requires_grad_(true), w1 = w0.clone().requires_grad_(true);
      at::Tensor h2 = h0.clone().requires_grad_(true), w2 = w0.clone().requires_grad_(true);
      at::Tensor ref = lm_loss(at::linear(h1, w1), targets, weights);
      at::Tensor fused = lm_loss_from_hidden(h2, w2, targets, weights, chunk);
      (ref * 2.5).backward();
      (fused * 2.5).backward();
      const double tol = dtype == at::kBFloat16 ? 2e-2 : 1e-5;
      EXPECT_NEAR(fused.item<double>(), ref.item<double>(), 1e-5) << chunk;
      EXPECT_TRUE(at::allclose(h2.grad().to(at::kFloat), h1.grad().to(at::kFloat), tol, tol)) << chunk;
      EXPECT_TRUE(at::allclose(w2.grad().to(at::kFloat), w1.grad().to(at::kFloat), tol, tol)) << chunk;
    }
    // Only what requires grad gets one (the frozen head of gate training).
    at::Tensor h3 = h0.clone().requires_grad_(true);
    lm_loss_from_hidden(h3, w0, targets, weights).backward();
    EXPECT_TRUE(h3.grad().defined());
  }
}

// A hidden key that would dominate attention (score far above every visible key) must not
// blow the STE gradient up: it is bounded as if the key were as strong as the strongest
// visible one (a real run went NaN before this cap).
TEST(Gates, SteGradientStaysBoundedWhenAHiddenKeyDominates) {
  const int64_t T = 5;
  at::Tensor q = at::zeros({1, 1, T, 4}), k = at::zeros({1, 1, T, 4}), v = at::randn({1, 1, T, 4});
  q.select(3, 0).fill_(10.0);
  k[0][0][0][0] = 100.0;  // key 0 scores 500 against every query
  at::Tensor pos = at::arange(0, T, at::kLong);
  at::Tensor p = at::full({1, T, 1}, 0.3).requires_grad_(true);
  at::Tensor keep = (p.detach() > 0.5).to(at::kFloat) + p - p.detach();  // everything evicted
  masked_attention(q, k, v, pos, pos, keep).sum().backward();
  EXPECT_TRUE(at::isfinite(p.grad()).all().item<bool>());
  EXPECT_LT(p.grad().abs().max().item<float>(), 100.0f);
  EXPECT_GT(p.grad()[0][0][0].abs().item<float>(), 0.0f) << "the dominant key still asks to be kept";
}

// The fused gated attention (one autograd node, closed-form backward) equals the composed
// reference path in value and in every gradient: GQA, sliding and recent windows, hard STE
// flags and soft probabilities, float32 and bfloat16, a query block behind a cache.
TEST(Gates, FusedMaskedAttentionEqualsTheReferencePath) {
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    for (int64_t Hkv : {1, 2, 4}) {
      for (int variant = 0; variant < 3; ++variant) {
        const int64_t B = 2, H = 4, Tq = 7, Tk = variant == 2 ? 11 : 7, hd = 8;
        const int64_t window = variant == 1 ? 5 : 0, recent = variant == 1 ? 2 : 0;
        at::manual_seed(Hkv * 10 + variant);
        at::Tensor q0 = at::randn({B, H, Tq, hd}).to(dtype), k0 = at::randn({B, Hkv, Tk, hd}).to(dtype) * 2,
                   v0 = at::randn({B, Hkv, Tk, hd}).to(dtype);
        at::Tensor p0 = at::rand({B, Tk, Hkv}) * 0.98 + 0.01;
        at::Tensor q_pos = at::arange(Tk - Tq, Tk, at::kLong), k_pos = at::arange(0, Tk, at::kLong);
        at::Tensor gout = at::randn({B, H, Tq, hd}).to(dtype);
        for (bool ste : {true, false}) {
          std::vector<at::Tensor> outs, grads;
          for (bool fused : {true, false}) {
            set_attention_kernel(fused ? AttentionKernel::Rows : AttentionKernel::Reference);
            at::Tensor q = q0.clone().requires_grad_(true), k = k0.clone().requires_grad_(true),
                       v = v0.clone().requires_grad_(true), p = p0.clone().requires_grad_(true);
            at::Tensor keep = ste ? (p.detach() > 0.5).to(at::kFloat) + p - p.detach() : p;
            at::Tensor out = masked_attention(q, k, v, q_pos, k_pos, keep, window, recent);
            out.backward(gout);
            outs.push_back(out.to(at::kFloat));
            for (const auto& t : {q, k, v, p}) grads.push_back(t.grad().to(at::kFloat));
          }
          set_attention_kernel(AttentionKernel::Flash);
          const double tol = dtype == at::kFloat ? 1e-5 : 3e-2;
          const std::string what = std::string(dtype == at::kFloat ? "fp32" : "bf16") + " Hkv " + std::to_string(Hkv) +
                                   " variant " + std::to_string(variant) + (ste ? " ste" : " soft");
          EXPECT_TRUE(at::allclose(outs[0], outs[1], tol, tol)) << what;
          const char* names[] = {"dq", "dk", "dv", "dkeep"};
          for (int i = 0; i < 4; ++i) {
            EXPECT_TRUE(at::allclose(grads[i], grads[4 + i], tol, tol))
                << what << " " << names[i] << " max diff " << (grads[i] - grads[4 + i]).abs().max().item<double>();
          }
        }
      }
    }
  }
}

// One JSON mapping for the export's "gate" object, and the enums' names as the recipe's.
TEST(GateConfigJson, RoundTripsAndRefusesUnknownNames) {
  GateConfig g;
  g.type = GateType::Mlp;
  g.heads = 3, g.head_dim = 12, g.mlp_hidden = 17, g.threshold = 0.25;
  g.estimator = Estimator::Soft;
  g.sink_tokens = 4, g.recent_window = 9;
  const nlohmann::json j = g;
  EXPECT_EQ(j.at("type"), "mlp");
  EXPECT_EQ(j.at("estimator"), "soft");
  const GateConfig back = j.get<GateConfig>();
  EXPECT_EQ(back.type, g.type);
  EXPECT_EQ(back.estimator, g.estimator);
  EXPECT_EQ(back.heads, 3);
  EXPECT_EQ(back.head_dim, 12);
  EXPECT_EQ(back.mlp_hidden, 17);
  EXPECT_EQ(back.threshold, 0.25);
  EXPECT_EQ(back.sink_tokens, 4);
  EXPECT_EQ(back.recent_window, 9);
  for (GateType t : {GateType::Attention, GateType::Mlp, GateType::None}) EXPECT_EQ(kGateTypes.parse(kGateTypes.name(t), "t"), t);
  const std::string bad = agate::test::error_of([] { kGateTypes.parse("lstm", "gate.type"); });
  EXPECT_NE(bad.find("gate.type 'lstm' is not one of attention, mlp, none"), std::string::npos) << bad;
  EXPECT_NE(bad.find("use attention, mlp or none"), std::string::npos) << bad;
  nlohmann::json broken = j;
  broken["estimator"] = "hard";
  EXPECT_NE(agate::test::error_of([&] { (void)broken.get<GateConfig>(); }).find("gate.estimator 'hard' is not one of ste, soft"), std::string::npos);
  broken.erase("estimator");
  EXPECT_THROW((void)broken.get<GateConfig>(), nlohmann::json::exception);
}

// ---- the rule feature (gate.rule_feature: attention) ---------------------------------------

TEST(RuleFeature, IsTheAttentionReceivedFromTheContextAsANaiveLoopComputesIt) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  const int64_t B = 2, H = 4, Hkv = 2, T = 7, hd = 8, ce = 5;
  const at::Tensor q = at::randn({B, H, T, hd}, gen), k = at::randn({B, Hkv, T, hd}, gen);
  const at::Tensor f = rule_features(q, k, ce);
  ASSERT_EQ(f.sizes(), (at::IntArrayRef{B, T, Hkv, 2}));
  auto qa = q.accessor<float, 4>();
  auto ka = k.accessor<float, 4>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t g = 0; g < Hkv; ++g) {
      std::vector<double> received(T, 0.0);
      for (int64_t h = g * (H / Hkv); h < (g + 1) * (H / Hkv); ++h) {
        for (int64_t i = 0; i < ce; ++i) {
          std::vector<double> e(static_cast<size_t>(i + 1));
          double z = 0;
          for (int64_t j = 0; j <= i; ++j) {
            double s = 0;
            for (int64_t d = 0; d < hd; ++d) s += qa[b][h][i][d] * ka[b][g][j][d];
            e[static_cast<size_t>(j)] = std::exp(s / std::sqrt(static_cast<double>(hd)));
            z += e[static_cast<size_t>(j)];
          }
          for (int64_t j = 0; j <= i; ++j) received[static_cast<size_t>(j)] += e[static_cast<size_t>(j)] / z / (H / Hkv);
        }
      }
      for (int64_t j = 0; j < T; ++j) {
        EXPECT_NEAR(f[b][j][g][0].item<double>(), std::log(1e-6 + received[static_cast<size_t>(j)]), 1e-4) << b << g << j;
        EXPECT_NEAR(f[b][j][g][1].item<double>(), std::log(std::max<double>(1.0, static_cast<double>(ce - j))), 1e-6);
      }
    }
  }
}

TEST(RuleFeature, FreshWeightsAreZeroSoTheGatesStartAsWithoutTheFeature) {
  c10::NoGradGuard no_grad;
  LlamaModel m = LlamaModel::init_random(tiny(), 3, at::kFloat);
  GateConfig plain = gate_config("attention"), rule = plain;
  rule.rule_feature = RuleFeature::Attention;
  plain.init_bias = rule.init_bias = 0.0;  // p near 0.5: some flags 0, some 1
  auto a = Gates::create(plain, m.config(), 7), b = Gates::create(rule, m.config(), 7);
  const NamedTensors &pa = a->parameters(), &pb = b->parameters();
  ASSERT_EQ(pb.size(), pa.size() + static_cast<size_t>(m.config().num_hidden_layers)) << "one rule.weight per layer";
  for (size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(at::equal(pa[i].second, pb[i].second)) << pa[i].first;
  EXPECT_EQ(pb.back().first, "model.layers.1.self_attn.kv_gate.rule.weight");
  EXPECT_TRUE(at::equal(pb.back().second, at::zeros({2, 2})));
  const at::Tensor t = tokens(2, 16);
  ForwardOptions oa, ob;
  oa.visibility = a.get();
  ob.visibility = b.get();
  const ModelOutput ra = m.run(t, oa), rb = m.run(t, ob);
  EXPECT_TRUE(at::equal(ra.logits, rb.logits));
  EXPECT_TRUE(at::equal(ra.flag_means(), rb.flag_means()));
  EXPECT_LT(ra.flag_means().min().item<float>(), 1.0f) << "the test needs some evicted entries";
  // The config round-trips through the export's JSON; an export without the field reads as none.
  nlohmann::json j = rule;
  EXPECT_EQ(j.at("rule_feature"), "attention");
  GateConfig back = j.get<GateConfig>();
  EXPECT_EQ(back.rule_feature, RuleFeature::Attention);
  j.erase("rule_feature");
  EXPECT_EQ(j.get<GateConfig>().rule_feature, RuleFeature::None);
}

// Rule-feature gates on a CUDA device (the feature's softmax and sums on the device): the
// prefill's flags and logits equal the CPU's, for both gate types. Without a GPU the second
// model lives on the CPU too (the test's logic runs here; scripts/test_gpu.sh runs it on a GPU).
// The training step's device check is TrainStepDevice's.
TEST(RuleFeature, CudaPrefillMatchesTheCpu) {
  at::globalContext().setAllowTF32CuBLAS(false);
  const c10::Device cuda = torch::cuda::is_available() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  c10::NoGradGuard no_grad;
  const LlamaModel mc = LlamaModel::init_random(tiny(), 3, at::kFloat), mg = LlamaModel::init_random(tiny(), 3, at::kFloat, cuda);
  for (const char* type : {"attention", "mlp"}) {
    GateConfig g = gate_config(type);
    g.rule_feature = RuleFeature::Attention;
    g.sink_tokens = 1;
    g.init_bias = -0.5;
    auto gc = Gates::create(g, mc.config(), 7), gg = Gates::create(g, mg.config(), 7, cuda);
    gc->parameters().back().second.fill_(0.5);
    gg->parameters().back().second.fill_(0.5);
    ForwardOptions oc, og;
    oc.visibility = gc.get();
    og.visibility = gg.get();
    const at::Tensor t = tokens(2, 24);
    const ModelOutput a = mc.run(t, oc), b = mg.run(t.to(cuda), og);
    EXPECT_TRUE(at::allclose(a.logits, b.logits.cpu(), 1e-4, 1e-4)) << type;
    for (size_t l = 0; l < a.layers.size(); ++l) {
      EXPECT_TRUE(at::equal(a.layers[l].flags, b.layers[l].flags.cpu())) << type << " layer " << l;
    }
    EXPECT_LT(a.flag_means().min().item<float>(), 1.0f) << "the test needs some evicted entries";
  }
}

TEST(RuleFeature, TrainsItsWeightsKeepsTheContinuationAndRefusesDecodeGating) {
  LlamaModel m = LlamaModel::init_random(tiny(), 3, at::kFloat);
  GateConfig g = gate_config("mlp");
  g.rule_feature = RuleFeature::Attention;
  g.sink_tokens = 1;
  g.init_bias = -0.5;
  auto gates = Gates::create(g, m.config(), 7);
  at::Tensor w = gates->parameters().back().second;  // the same tensor as the parameter
  {
    c10::NoGradGuard no_grad;
    w.fill_(0.5);  // a non-zero weight: the flags now depend on the feature
  }
  ForwardOptions o;
  o.visibility = gates.get();
  o.train = true;
  o.dense_until = 6;
  const at::Tensor t = tokens(2, 10);
  const ModelOutput out = m.run(t, o);
  for (const auto& layer : out.layers) {
    EXPECT_TRUE(at::equal(layer.flags.slice(1, 6), at::ones({2, 4, 2}))) << "the continuation's keys are kept";
    EXPECT_LT(layer.flags.slice(1, 1, 6).min().item<float>(), 1.0f);
    // ... and left out of the keep statistics the sparsity target sees: they are the context's.
    EXPECT_EQ(layer.decided_end, 6);
    EXPECT_TRUE(at::allclose(layer.flag_mean, layer.flags.slice(1, 0, 6).mean(at::IntArrayRef{0, 1})));
    EXPECT_NEAR(layer.keep_mean.item<float>(), layer.flags.slice(1, 0, 6).mean().item<float>(), 1e-6);
  }
  EXPECT_TRUE(at::allclose(out.flag_means(at::ones({2, 10})), out.flag_means()));
  lm_loss(out.logits.slice(1, 6, 9), t.slice(1, 7, 10), at::ones({2, 3})).backward();
  ASSERT_TRUE(w.grad().defined());
  EXPECT_GT(w.grad().abs().sum().item<float>(), 0.0f) << "the rule weights get a gradient";
  // A forward that starts after earlier tokens (a decode step) cannot see the context's attention.
  c10::NoGradGuard no_grad;
  const at::Tensor x = at::randn({1, 3, 32}), q = at::randn({1, 4, 3, 8}), k = at::randn({1, 2, 3, 8});
  const std::string msg = test::error_of([&] { gates->key_keep(0, x, at::arange(5, 8, at::kLong), false, {q, k, 3, 5}); });
  EXPECT_NE(msg.find("decide over a whole prefill"), std::string::npos) << msg;
  // ... and asking for decode-time gating is refused before any work.
  const std::string early = test::error_of([&] { evict::gate_policy(gates.get(), true, true); });
  EXPECT_NE(early.find("--gate-decode: gates with gate.rule_feature attention"), std::string::npos) << early;
  EXPECT_NO_THROW(evict::gate_policy(gates.get(), true, false));
}
