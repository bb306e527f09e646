// Generation with any eviction policy: the full policy is the full cache, a scored policy at
// keep 1 is the full cache, and the kept flags hold exactly the budgets.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <numeric>

#include "../tiny_model.h"
#include "agate/evict/policy.h"
#include "agate/gate/gates.h"
#include "agate/infer/generate.h"
#include "agate/model/ragged_kv_cache.h"
#include "agate/model/llama.h"
#include "agate/model/lora.h"

using namespace agate;

namespace {

const std::vector<int64_t> kPrompt = {1, 5, 9, 12, 33, 7, 2, 40, 17, 23, 8, 51, 3, 30, 11, 44, 6, 28, 19, 60};

// Greedy decoding over a plain full ragged cache, as generate ran before policies existed.
std::vector<int64_t> full_cache_greedy(const LlamaModel& m, const std::vector<int64_t>& prompt, int n,
                                       ProjectionAdapter* adapter = nullptr) {
  c10::NoGradGuard no_grad;
  RaggedKVCache cache(m.config().num_hidden_layers);
  ForwardOptions fo;
  fo.cache = &cache;
  fo.adapter = adapter;
  at::Tensor logits = m.forward(at::tensor(prompt, at::kLong).unsqueeze(0), fo);
  std::vector<int64_t> out;
  for (int i = 0; i < n; ++i) {
    out.push_back(logits[0][-1].argmax().item<int64_t>());
    logits = m.forward(at::full({1, 1}, out.back(), at::kLong), fo);
  }
  return out;
}

int64_t count(const std::vector<bool>& v) { return std::accumulate(v.begin(), v.end(), int64_t{0}); }

}  // namespace

TEST(Generate, PolicyFullIsTheFullCacheGeneration) {
  const ModelConfig c = test::tiny_config(4, 2);
  const LlamaModel m = LlamaModel::init_random(c, 8, at::kFloat);
  GenerateOptions o;
  o.max_new = 10;
  const GenerateResult r = generate(m, *evict::make_policy("full", evict::PolicyOptions()), {0, 0}, kPrompt, o);
  EXPECT_EQ(r.tokens, full_cache_greedy(m, kPrompt, 10));
  EXPECT_EQ(r.tokens, generate(m, static_cast<Gates*>(nullptr), kPrompt, o).tokens);
  EXPECT_EQ(r.kv_entries, r.kv_entries_full);
  ASSERT_EQ(r.kept.size(), 2u);
  for (const auto& layer : r.kept) {
    ASSERT_EQ(layer.size(), 2u);
    for (const auto& head : layer) EXPECT_EQ(count(head), static_cast<int64_t>(kPrompt.size()));
  }
}

TEST(Generate, SnapKVAtKeepOneIsFull) {
  const ModelConfig c = test::tiny_config(4, 2);
  const LlamaModel m = LlamaModel::init_random(c, 8, at::kFloat);
  GenerateOptions o;
  o.max_new = 10;
  const std::vector<int64_t> want = full_cache_greedy(m, kPrompt, 10);
  const int64_t T = static_cast<int64_t>(kPrompt.size());
  for (bool kvpress : {false, true}) {
    evict::PolicyOptions po;
    po.window = 4;
    po.kvpress = kvpress;
    po.pooling = kvpress ? evict::Pooling::Avg : evict::Pooling::Max;
    const auto snap = evict::make_policy("snapkv", po);
    const GenerateResult r = generate(m, *snap, snap->layer_budgets(1.0, false, T, 2, 2), kPrompt, o);
    EXPECT_EQ(r.tokens, want) << "kvpress " << kvpress;
    EXPECT_EQ(r.kv_entries, r.kv_entries_full) << "kvpress " << kvpress;
  }
}

TEST(Generate, KeptFlagsHoldEachScoredPolicysBudget) {
  const ModelConfig c = test::tiny_config(4, 2);
  const LlamaModel m = LlamaModel::init_random(c, 8, at::kFloat);
  GenerateOptions o;
  o.max_new = 3;
  const int64_t T = static_cast<int64_t>(kPrompt.size());
  for (bool kvpress : {false, true}) {
    evict::PolicyOptions po;
    po.window = 4;
    po.kvpress = kvpress;
    po.pooling = kvpress ? evict::Pooling::Avg : evict::Pooling::Max;
    for (const auto& name : evict::baseline_names()) {
      if (name == "full") continue;
      const auto p = evict::make_policy(name, po);
      const std::vector<int64_t> budgets = p->layer_budgets(0.5, false, T, 2, 2);
      const GenerateResult r = generate(m, *p, budgets, kPrompt, o);
      ASSERT_EQ(r.kept.size(), 2u) << name;
      int64_t kept = 0, want = 0;
      for (size_t l = 0; l < 2; ++l) {
        ASSERT_EQ(r.kept[l].size(), 2u) << name;
        int64_t layer = 0;
        for (const auto& head : r.kept[l]) {
          ASSERT_EQ(head.size(), kPrompt.size()) << name;
          layer += count(head);
        }
        if (name.find("pyramid") == std::string::npos || kvpress) EXPECT_EQ(layer, budgets[l]) << name << " layer " << l;
        kept += layer;
        want += budgets[l];
      }
      EXPECT_EQ(kept, want) << name << " kvpress " << kvpress;
      // The cache holds the kept prompt entries plus the decoded tokens (all kept).
      EXPECT_EQ(r.kv_entries, kept + 2 * 2 * (static_cast<int64_t>(r.tokens.size()) - 1)) << name;
      if (kvpress && name.rfind("ada", 0) != 0) {  // kvpress's budgets: the same count in every head of a layer
        for (size_t l = 0; l < 2; ++l)
          for (const auto& head : r.kept[l]) EXPECT_EQ(count(head), budgets[l] / 2) << name;
        if (name.find("pyramid") == std::string::npos) EXPECT_EQ(budgets[0], 2 * evict::kvpress_n_kept(T, 0.5)) << name;
      }
    }
  }
}

TEST(Generate, GatePolicyKeepsWhatTheGatesFlag) {
  const ModelConfig c = test::tiny_config(4, 2);
  const LlamaModel m = LlamaModel::init_random(c, 8, at::kFloat);
  GateConfig g;
  g.heads = 2;
  g.head_dim = 8;
  g.init_bias = 0.0;  // a mix of kept and evicted tokens
  g.init_std = 0.5;
  g.sink_tokens = 1;
  auto gates = Gates::create(g, c, 4);
  GenerateOptions o;
  o.max_new = 4;
  const GenerateResult via_policy = generate(m, *evict::gate_policy(gates.get()), {0, 0}, kPrompt, o);
  const GenerateResult via_gates = generate(m, gates.get(), kPrompt, o);
  EXPECT_EQ(via_policy.tokens, via_gates.tokens);
  EXPECT_EQ(via_policy.kept, via_gates.kept);
  EXPECT_EQ(via_policy.kv_entries, via_gates.kv_entries);
  // The flags are the gates' own: recompute them with a plain gated forward.
  ModelOutput plain;
  {
    c10::NoGradGuard no_grad;
    ForwardOptions fo;
    fo.visibility = gates.get();
    plain = m.run(at::tensor(kPrompt, at::kLong).unsqueeze(0), fo);
  }
  int64_t kept = 0;
  for (int64_t l = 0; l < 2; ++l) {
    const at::Tensor f = plain.layers[static_cast<size_t>(l)].flags[0];  // [T, Hkv]
    for (int64_t g2 = 0; g2 < 2; ++g2)
      for (int64_t p = 0; p < static_cast<int64_t>(kPrompt.size()); ++p) {
        EXPECT_EQ(via_policy.kept[l][g2][p], f[p][g2].item<float>() > 0.5f) << l << " " << g2 << " " << p;
        kept += via_policy.kept[l][g2][p];
      }
  }
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, 2 * 2 * static_cast<int64_t>(kPrompt.size()));
}

// An export's LoRA applies in generate as in eval (issue 16: generate used to drop it): the
// prefill and every decode step go through the adapter. Each id is also handed to on_token as
// soon as it is chosen (the CLI streams the text with it).
TEST(Generate, AppliesTheAdapterInPrefillAndDecodeAndStreamsEachToken) {
  c10::NoGradGuard no_grad;
  const ModelConfig c = test::tiny_config(4, 2);
  const LlamaModel m = LlamaModel::init_random(c, 8, at::kFloat);
  LoraConfig lc;
  lc.rank = 4;
  LoraAdapters lora(lc, c, 3);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  for (const auto& [name, t] : lora.parameters()) t.detach().copy_(at::randn(t.sizes(), gen));  // B no longer zero
  GenerateOptions o;
  o.max_new = 10;
  std::vector<int64_t> streamed;
  o.on_token = [&](int64_t id) { streamed.push_back(id); };
  o.adapter = &lora;
  const GenerateResult r = generate(m, *evict::make_policy("full", evict::PolicyOptions()), {0, 0}, kPrompt, o);
  EXPECT_EQ(r.tokens, full_cache_greedy(m, kPrompt, 10, &lora));
  EXPECT_NE(r.tokens, full_cache_greedy(m, kPrompt, 10)) << "the adapter changes the text";
  EXPECT_EQ(streamed, r.tokens);
}

