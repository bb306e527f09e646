// Eviction policies select what their algorithms select, keep their budgets exactly, and
// equal the full cache at keep ratio 1.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "../test_util.h"
#include "../tiny_model.h"
#include "agate/data/tokenize.h"
#include "agate/data/tokenizer.h"
#include "agate/eval/eval.h"
#include "agate/evict/policy.h"
#include "agate/gate/gates.h"
#include "agate/model/llama.h"

using namespace agate;
using namespace agate::evict;

namespace {

std::vector<int64_t> kept_positions(const at::Tensor& flags, int64_t head) {
  at::Tensor idx = flags.select(1, head).nonzero().view({-1});
  return std::vector<int64_t>(idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + idx.numel());
}

// A one-layer record with the given queries and keys (values unused by selection).
PrefillRecord record_of(const at::Tensor& q, const at::Tensor& k) {
  PrefillRecord r;
  r.q = {q};
  r.k = {k};
  r.v = {at::zeros_like(k)};
  return r;
}

}  // namespace

TEST(Evict, StreamingLLMKeepsSinksAndTheMostRecent) {
  PolicyOptions o;
  o.sinks = 2;
  const auto r = record_of(at::randn({2, 10, 4}), at::randn({1, 10, 4}));
  const auto f = make_policy("streamingllm", o)->select(r, {6});
  EXPECT_EQ(kept_positions(f[0], 0), (std::vector<int64_t>{0, 1, 6, 7, 8, 9}));
}

TEST(Evict, H2OAccumulatesCausalAttentionAndKeepsHalfRecent) {
  // Zero queries attend uniformly: query i gives 1/(i+1) to each key j <= i, so key j's
  // accumulated score is the harmonic tail sum_{i>=j} 1/(i+1), decreasing in j.
  const int64_t T = 8;
  const auto r = record_of(at::zeros({2, T, 4}), at::randn({1, T, 4}));
  PolicyOptions o;
  at::Tensor s = h2o_scores(r.q[0], r.k[0], o);
  for (int64_t j = 0; j < T; ++j) {
    double want = 0;
    for (int64_t i = j; i < T; ++i) want += 1.0 / static_cast<double>(i + 1);
    EXPECT_NEAR(s[0][j].item<double>(), want, 1e-5) << "key " << j;
  }
  // Budget 5: 3 recent (rounded up) + 2 heavy hitters among the older tokens.
  const auto f = make_policy("h2o", o)->select(r, {5});
  EXPECT_EQ(kept_positions(f[0], 0), (std::vector<int64_t>{0, 1, 5, 6, 7}));
}

TEST(Evict, SnapKVKeepsTheWindowAndWhatTheWindowAttends) {
  // Two KV heads (one query each). The window's queries point at key 2 (head 0) and key 4
  // (head 1); every other key is orthogonal to them.
  const int64_t T = 8, hd = 4;
  at::Tensor k = at::zeros({2, T, hd});
  k[0][2][0] = 1;
  k[1][4][1] = 1;
  at::Tensor q = at::zeros({2, T, hd});
  q[0].slice(0, T - 2, T).select(1, 0).fill_(10);
  q[1].slice(0, T - 2, T).select(1, 1).fill_(10);
  PolicyOptions o;
  o.window = 2;
  o.kernel = 1;
  const auto f = make_policy("snapkv", o)->select(record_of(q, k), {2 * 3});  // 3 per head
  EXPECT_EQ(kept_positions(f[0], 0), (std::vector<int64_t>{2, 6, 7}));
  EXPECT_EQ(kept_positions(f[0], 1), (std::vector<int64_t>{4, 6, 7}));
}

TEST(Evict, SnapKVScoresMatchAReferenceLoop) {
  // GQA (4 query heads over 2 KV heads), window 3, max pooling with kernel 3, mean over the group.
  const int64_t H = 4, Hkv = 2, T = 11, hd = 8, w = 3;
  at::Tensor q = at::randn({H, T, hd}), k = at::randn({Hkv, T, hd});
  PolicyOptions o;
  o.window = w;
  o.kernel = 3;
  at::Tensor got = snapkv_scores(q, k, o);
  ASSERT_EQ(got.sizes(), (std::vector<int64_t>{Hkv, T - w}));
  for (int64_t g = 0; g < Hkv; ++g) {
    std::vector<double> raw(static_cast<size_t>(T - w), 0.0);
    for (int64_t h = g * 2; h < g * 2 + 2; ++h) {
      for (int64_t i = T - w; i < T; ++i) {
        std::vector<double> e(static_cast<size_t>(i + 1));
        double z = 0;
        for (int64_t j = 0; j <= i; ++j) z += e[j] = std::exp((q[h][i] * k[g][j]).sum().item<double>() / std::sqrt(8.0));
        for (int64_t j = 0; j < T - w; ++j) raw[j] += e[j] / z / 2.0;  // mean over the 2 query heads
      }
    }
    for (int64_t j = 0; j < T - w; ++j) {
      double m = raw[j];
      if (j > 0) m = std::max(m, raw[j - 1]);
      if (j + 1 < T - w) m = std::max(m, raw[j + 1]);
      EXPECT_NEAR(got[g][j].item<double>(), m, 1e-5) << "head " << g << " key " << j;
    }
  }
}

TEST(Evict, PyramidScheduleFollowsTheFormulaAndKeepsTheTotal) {
  // mean 100, beta 20: min 5, max 195, step 63.3 -> 195, 131.7, 68.3, 5.
  EXPECT_EQ(pyramid_budgets(4, 400, 1000, 20), (std::vector<int64_t>{195, 132, 68, 5}));
  // max capped at 150: min = 2 x 100 - 150 = 50 -> 150, 116.7, 83.3, 50.
  EXPECT_EQ(pyramid_budgets(4, 400, 150, 20), (std::vector<int64_t>{150, 117, 83, 50}));
  for (int64_t total : {0, 1, 37, 999}) {
    const auto b = pyramid_budgets(6, total, 200, 20);
    EXPECT_EQ(std::accumulate(b.begin(), b.end(), int64_t{0}), total);
    EXPECT_TRUE(std::is_sorted(b.rbegin(), b.rend()));
  }
}

TEST(Evict, AdaAllocationKeepsTheLayerBudgetAndTheAlphaFloor) {
  // Head 0 holds every top score: counts {4, 0}; mean 2; B = count (1 - a) + a mean.
  at::Tensor s = at::tensor({9.0f, 8.0f, 7.0f, 6.0f, 1.0f, 0.5f, 0.2f, 0.1f}).view({2, 4});
  EXPECT_EQ(ada_allocate(s, 4, 0.5), (std::vector<int64_t>{3, 1}));
  EXPECT_EQ(ada_allocate(s, 4, 0.0), (std::vector<int64_t>{4, 0}));
  EXPECT_EQ(ada_allocate(s, 6, 0.0), (std::vector<int64_t>{4, 2}));  // head 0 capped at its 4 entries
  for (double alpha : {0.0, 0.2, 0.5, 1.0}) {
    for (int64_t sel : {1, 7, 40, 95}) {
      at::Tensor r = at::rand({5, 20}).pow(4);
      const auto b = ada_allocate(r, sel, alpha);
      EXPECT_EQ(std::accumulate(b.begin(), b.end(), int64_t{0}), sel);
      for (int64_t x : b) {
        EXPECT_GE(x, static_cast<int64_t>(std::floor(alpha * sel / 5.0)));
        EXPECT_LE(x, 20);
      }
    }
  }
}

TEST(Evict, EveryBaselineKeepsExactlyItsBudget) {
  c10::NoGradGuard no_grad;
  const ModelConfig c = test::tiny_config(4, 2);
  const LlamaModel m = LlamaModel::init_random(c, 3, at::kFloat);
  const auto ctx = test::random_context(40, c.vocab_size, 1);
  PolicyOptions o;
  o.window = 4;
  for (const auto& name : baseline_names()) {
    if (name == "full") continue;
    for (int64_t per_layer : {2 * 8, 2 * 20 + 1, 2 * 33}) {
      const std::vector<int64_t> budgets = {per_layer, per_layer};
      const Compressed cmp = make_policy(name, o)->compress(m, nullptr, ctx, budgets);
      const int64_t total = std::accumulate(cmp.layer_entries.begin(), cmp.layer_entries.end(), int64_t{0});
      EXPECT_EQ(total, 2 * per_layer) << name;
      EXPECT_EQ(cmp.cache->total_entries(), total) << name;
      if (name.find("pyramid") == std::string::npos) EXPECT_EQ(cmp.layer_entries, budgets) << name;
    }
  }
}

// The budget invariant (issue 16): every baseline keeps exactly its budget at every budget,
// including budgets smaller than the observation window (the window then shrinks to the budget)
// and budgets that are no multiple of the KV heads; with kvpress's definitions too. PyramidKV's
// schedule moves entries between layers, so for it the total is exact; every other policy keeps
// each layer's budget. A budget that reaches the context keeps the whole context.
TEST(Evict, EveryBaselineKeepsItsBudgetAtEveryBudgetEvenBelowTheWindow) {
  c10::NoGradGuard no_grad;
  const ModelConfig c = test::tiny_config(4, 2);
  const LlamaModel m = LlamaModel::init_random(c, 3, at::kFloat);
  const int64_t T = 40, L = c.num_hidden_layers, Hkv = c.num_key_value_heads;
  const auto ctx = test::random_context(T, c.vocab_size, 1);
  PrefillRecord rec;
  record_prefill(m, nullptr, ctx, rec);
  for (bool kvpress : {false, true}) {
    PolicyOptions o;
    o.window = 8;
    o.kvpress = kvpress;
    if (kvpress) o.pooling = evict::Pooling::Avg;
    for (const auto& name : baseline_names()) {
      const auto p = make_policy(name, o);
      std::vector<std::vector<int64_t>> cases;
      for (int64_t per_layer = 1; per_layer <= Hkv * T + 3; per_layer += per_layer < 20 ? 1 : 9) cases.push_back(std::vector<int64_t>(L, per_layer));
      for (int64_t tokens : {1, 2, 5, 10, 31, 40}) cases.push_back(p->layer_budgets(static_cast<double>(tokens), true, T, L, Hkv));
      for (double keep : {0.025, 0.1, 0.2, 0.25, 0.5, 0.9, 1.0}) cases.push_back(p->layer_budgets(keep, false, T, L, Hkv));
      for (size_t i = 0; i < cases.size(); ++i) {
        const std::vector<int64_t>& budgets = cases[i];
        const std::vector<at::Tensor> flags = p->select(rec, budgets);  // what compress() stores
        int64_t want = 0, kept = 0;
        for (int64_t l = 0; l < L; ++l) {
          const int64_t b = name == "full" ? Hkv * T : std::min(budgets[l], Hkv * T);
          const int64_t n = flags[l].sum().item<int64_t>();
          want += b;
          kept += n;
          if (name.find("pyramid") == std::string::npos || kvpress) {
            EXPECT_EQ(n, b) << name << (kvpress ? " (kvpress)" : "") << " layer " << l << " budget " << budgets[l];
          }
        }
        EXPECT_EQ(kept, want) << name << (kvpress ? " (kvpress)" : "") << " budget " << budgets[0];
        if (i % 8 == 0) {  // and the cache compress() builds holds exactly those entries
          const Compressed cmp = p->compress(m, nullptr, ctx, budgets);
          EXPECT_EQ(cmp.cache->total_entries(), want) << name << " budget " << budgets[0];
        }
      }
    }
  }
}

TEST(Evict, EveryPolicyAtKeepOneEqualsTheFullCache) {
  c10::NoGradGuard no_grad;
  const ModelConfig c = test::tiny_config(4, 2);
  const LlamaModel m = LlamaModel::init_random(c, 5, at::kFloat);
  const auto ctx = test::random_context(24, c.vocab_size, 2), cont = test::random_context(6, c.vocab_size, 3);
  std::vector<int64_t> all = ctx;
  all.insert(all.end(), cont.begin(), cont.end());
  const at::Tensor want = m.forward(at::tensor(all, at::kLong).unsqueeze(0))[0].slice(0, 23);  // [7, V]: after the context, then after each continuation token
  PolicyOptions o;
  o.window = 4;
  for (const auto& name : baseline_names()) {
    const Compressed cmp = make_policy(name, o)->compress(m, nullptr, ctx, {2 * 24, 2 * 24});
    EXPECT_EQ(cmp.cache->total_entries(), 2 * 2 * 24) << name;
    RaggedKVCache cache = *cmp.cache;
    ForwardOptions fo;
    fo.cache = &cache;
    at::Tensor got = m.forward(at::tensor(cont, at::kLong).unsqueeze(0), fo)[0];
    EXPECT_TRUE(at::allclose(got, want.slice(0, 1, 7), 1e-4, 1e-5)) << name;
    EXPECT_TRUE(at::allclose(cmp.last_logits, want[0], 1e-4, 1e-5)) << name;
  }
}

// ---- kvpress 0.5.5's definitions (PolicyOptions::kvpress); tests/oracles/kvpress_oracle.py
// checks them against kvpress itself. Expected values below are what kvpress 0.5.5 computes
// (PyramidKVPress.get_layer_budget, compute_n_kept, AdaKVPress.compress).

TEST(Kvpress, BudgetsAreComputeNKept) {
  EXPECT_EQ(kvpress_n_kept(20, 0.5), 10);
  EXPECT_EQ(kvpress_n_kept(10, 0.3), 3);   // 10 x (1 - 0.7) = 3.0000000000000004
  EXPECT_EQ(kvpress_n_kept(7, 0.25), 1);   // floor(1.75)
  EXPECT_EQ(kvpress_n_kept(3, 0.1), 1);    // never 0
  PolicyOptions o;
  o.kvpress = true;
  EXPECT_EQ(make_policy("snapkv", o)->layer_budgets(0.5, false, 21, 3, 2), (std::vector<int64_t>{20, 20, 20}));
  EXPECT_EQ(make_policy("h2o", o)->layer_budgets(8, true, 21, 2, 3), (std::vector<int64_t>{24, 24}));
  o.kvpress = false;  // agate's own: round(R T Hkv) per layer
  EXPECT_EQ(make_policy("snapkv", o)->layer_budgets(0.5, false, 21, 3, 2), (std::vector<int64_t>{21, 21, 21}));
}

TEST(Kvpress, PyramidScheduleIsGetLayerBudget) {
  // T 40, compression 0.5, window 4, beta 2: min 10, max 30, step 6.67 (kvpress: 30, 23, 17, 10).
  EXPECT_EQ(kvpress_pyramid(40, 4, 20.0, 4, 2), (std::vector<int64_t>{30, 23, 17, 10}));
  // beta 20: max 39 capped at T - window = 36, so min = 2 x 20 - 36 = 4 (not below the window).
  EXPECT_EQ(kvpress_pyramid(40, 4, 20.0, 4, 20), (std::vector<int64_t>{36, 25, 15, 4}));
  // min = 25 / 20 < window 8 -> SnapKV's uniform round(T (1 - cr)), halves to even.
  EXPECT_EQ(kvpress_pyramid(100, 4, 25.0, 8, 20), (std::vector<int64_t>{25, 25, 25, 25}));
  EXPECT_EQ(kvpress_pyramid(50, 2, 12.5, 8, 20), (std::vector<int64_t>{12, 12}));
  EXPECT_EQ(kvpress_pyramid(54, 2, 13.5, 8, 20), (std::vector<int64_t>{14, 14}));
  // max capped at T - window: 36; min = 2 x 30 - 36 = 24.
  EXPECT_EQ(kvpress_pyramid(40, 3, 30.0, 4, 2), (std::vector<int64_t>{36, 30, 24}));
  PolicyOptions o;
  o.kvpress = true;
  o.window = 4;
  o.beta = 2;
  EXPECT_EQ(make_policy("pyramidkv", o)->layer_budgets(0.5, false, 40, 4, 2), (std::vector<int64_t>{60, 46, 34, 20}));
}

TEST(Kvpress, AdaProtectsTheSafeguardThenRanksAcrossHeads) {
  // Window 2 (padded to max + 1), 4 per head: head 0 holds the layer's top scores.
  const at::Tensor s = at::tensor({0.9f, 0.8f, 0.7f, 0.6f, 0.15f, 0.14f, 0.05f, 0.04f, 0.03f, 0.02f, 0.01f, 0.0f}).view({2, 6});
  // alpha 0.5: 2 protected per head = the window; the other 4 go to head 0's top scores.
  at::Tensor f = kvpress_ada_flags(s, 2, 8, 0.5);
  EXPECT_EQ(kept_positions(f, 0), (std::vector<int64_t>{0, 1, 2, 3, 6, 7}));
  EXPECT_EQ(kept_positions(f, 1), (std::vector<int64_t>{6, 7}));
  // alpha 1: each head's top 4 protected, which is the whole budget.
  f = kvpress_ada_flags(s, 2, 8, 1.0);
  EXPECT_EQ(kept_positions(f, 0), (std::vector<int64_t>{0, 1, 6, 7}));
  EXPECT_EQ(kept_positions(f, 1), (std::vector<int64_t>{0, 1, 6, 7}));
}

TEST(Kvpress, SnapKVScoresAreTheWindowMeanPooledPerQueryHead) {
  // avg pooling and the GQA mean are linear: kvpress's order (mean over the window, pool per
  // query head, then the group mean) is agate's (sum, group mean, pool) divided by the window.
  const int64_t w = 3;
  at::Tensor q = at::randn({4, 13, 8}), k = at::randn({2, 13, 8});
  PolicyOptions o;
  o.window = w;
  o.kernel = 5;
  o.pooling = evict::Pooling::Avg;
  const at::Tensor ours = snapkv_scores(q, k, o);
  o.kvpress = true;
  EXPECT_TRUE(at::allclose(snapkv_scores(q, k, o) * w, ours, 1e-5, 1e-7));
  o.pooling = evict::Pooling::Max;
  EXPECT_NE(test::error_of([&] { snapkv_scores(q, k, o); }).find("kvpress's SnapKV pools by avg"), std::string::npos);
}

TEST(Kvpress, EveryBaselineKeepsExactlyItsBudget) {
  c10::NoGradGuard no_grad;
  const ModelConfig c = test::tiny_config(4, 2);
  const LlamaModel m = LlamaModel::init_random(c, 3, at::kFloat);
  const auto ctx = test::random_context(40, c.vocab_size, 1);
  PolicyOptions o;
  o.window = 4;
  o.kvpress = true;
  o.pooling = evict::Pooling::Avg;
  o.beta = 2;
  for (const auto& name : baseline_names()) {
    for (double keep : {0.25, 0.5, 0.75, 1.0}) {
      const auto p = make_policy(name, o);
      const std::vector<int64_t> budgets = p->layer_budgets(keep, false, 40, 2, 2);
      const Compressed cmp = p->compress(m, nullptr, ctx, budgets);
      if (name == "full") continue;
      EXPECT_EQ(cmp.layer_entries, budgets) << name << " keep " << keep;
      for (size_t l = 0; l < 2; ++l) EXPECT_EQ(cmp.kept[l].sum().item<int64_t>(), budgets[l]) << name;
    }
  }
}

TEST(Evict, UnknownPolicyIsRefusedWithTheList) {
  const std::string e = test::error_of([] { make_policy("snapkv2", PolicyOptions()); });
  EXPECT_NE(e.find("unknown policy 'snapkv2'"), std::string::npos) << e;
  EXPECT_NE(e.find("ada-pyramid"), std::string::npos) << e;
}

TEST(GateRank, ProtectsSinksAndWindowThenTakesTheMostProbable) {
  const ModelConfig c = test::tiny_config(4, 2);
  GateConfig gc;
  gc.sink_tokens = 1;
  auto gates = Gates::create(gc, c, 1);
  PolicyOptions o;
  o.window = 2;
  PrefillRecord r = record_of(at::zeros({4, 8, 4}), at::zeros({2, 8, 4}));
  // Head 0 prefers positions 3 and 5, head 1 positions 2 and 4 (window = 6, 7; sink = 0).
  r.keep_p = {at::tensor({0.9f, 0.1f, 0.2f, 0.8f, 0.3f, 0.7f, 0.f, 0.f, 0.1f, 0.2f, 0.9f, 0.3f, 0.8f, 0.1f, 0.f, 0.f})
                  .view({2, 8}).t().contiguous()};
  const auto f = make_policy("gate-rank", o, gates.get())->select(r, {2 * 5});  // 5 per head
  EXPECT_EQ(kept_positions(f[0], 0), (std::vector<int64_t>{0, 3, 5, 6, 7}));
  EXPECT_EQ(kept_positions(f[0], 1), (std::vector<int64_t>{0, 2, 4, 6, 7}));
  // Below the window: the most recent tokens only, still exactly the budget.
  EXPECT_EQ(make_policy("gate-rank", o, gates.get())->select(r, {2})[0].sum().item<int64_t>(), 2);
  EXPECT_NE(test::error_of([&] { make_policy("gate-rank", o); }).find("--gates"), std::string::npos);
}

TEST(GateRank, KeepsExactlyItsBudgetAndEqualsTheFullCacheAtKeepOne) {
  c10::NoGradGuard no_grad;
  const ModelConfig c = test::tiny_config(4, 2);
  const LlamaModel m = LlamaModel::init_random(c, 3, at::kFloat);
  GateConfig gc;
  gc.sink_tokens = 2;
  gc.init_std = 0.5;  // spread the probabilities
  auto gates = Gates::create(gc, c, 7);
  const auto ctx = test::random_context(40, c.vocab_size, 1);
  PolicyOptions o;
  o.window = 4;
  for (const std::string name : {"gate-rank", "ada-gate"}) {
    for (int64_t per_layer : {2 * 3, 2 * 8, 2 * 20 + 1, 2 * 40}) {
      const std::vector<int64_t> budgets = {per_layer, per_layer};
      const Compressed cmp = make_policy(name, o, gates.get())->compress(m, nullptr, ctx, budgets);
      EXPECT_EQ(cmp.layer_entries, budgets) << name << " " << per_layer;
      EXPECT_EQ(cmp.cache->total_entries(), 2 * per_layer) << name;
    }
  }
  // At the full budget the continuation equals the full cache's.
  const auto full = make_policy("full", o)->compress(m, nullptr, ctx, {0, 0});
  const auto ranked = make_policy("gate-rank", o, gates.get())->compress(m, nullptr, ctx, {80, 80});
  const auto cont = test::random_context(5, c.vocab_size, 9);
  EXPECT_TRUE(at::allclose(continuation_logits(m, nullptr, ranked, cont), continuation_logits(m, nullptr, full, cont), 1e-4, 1e-5));
}

TEST(GateRank, AtTheGatesOwnCountItKeepsWhatGatePostFlags) {
  // With no window and the gates' own per-head counts, ranking by probability keeps exactly
  // the entries above the threshold: gate-rank generalises gate-post to any budget.
  c10::NoGradGuard no_grad;
  const ModelConfig c = test::tiny_config(4, 2);
  const LlamaModel m = LlamaModel::init_random(c, 3, at::kFloat);
  GateConfig gc;
  gc.init_bias = 0.0;
  gc.init_std = 0.5;
  auto gates = Gates::create(gc, c, 11);
  const auto ctx = test::random_context(32, c.vocab_size, 4);
  const Compressed post = gate_policy(gates.get(), true)->compress(m, nullptr, ctx, {0, 0});
  PolicyOptions o;
  o.window = 0;
  o.alpha = 0.0;
  // ada-gate with alpha 0 splits the layer's count by the heads' shares of the top scores, which
  // are exactly the gates' per-head flag counts when the budget is the flags' total.
  const Compressed ranked = make_policy("ada-gate", o, gates.get())->compress(m, nullptr, ctx, post.layer_entries);
  for (size_t l = 0; l < 2; ++l) {
    ASSERT_GT(post.layer_entries[l], 0);
    ASSERT_LT(post.layer_entries[l], 64);
    EXPECT_TRUE(at::equal(ranked.kept[l], post.kept[l])) << "layer " << l;
  }
}
