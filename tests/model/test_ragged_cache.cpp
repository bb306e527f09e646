// The ragged KV cache reproduces the training-time gated forward exactly, while storing only
// the kept entries.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include "../tiny_model.h"
#include "agate/gate/gates.h"
#include "agate/infer/generate.h"
#include "agate/model/ragged_kv_cache.h"
#include "agate/model/attention.h"
#include "agate/model/llama.h"

using namespace agate;

namespace {

// Flags by absolute position: the same decision whether a token arrives in prefill or decode.
class TableFlags : public KeyVisibility {
 public:
  TableFlags(at::Tensor table, int64_t recent) : table_(std::move(table)), recent_(recent) {}
  LayerKeep key_keep(int64_t layer, const at::Tensor& x, const at::Tensor& positions, bool, const KeyInputs&) override {
    return LayerKeep::hard(table_[layer].index_select(0, positions).unsqueeze(0).to(x.scalar_type()));  // [1, T, Hkv]
  }
  int64_t recent_window() const override { return recent_; }

 private:
  at::Tensor table_;  // [L, T_total, Hkv]
  int64_t recent_;
};

// Flags on the meta device: shapes only.
class MetaFlags : public KeyVisibility {
 public:
  MetaFlags(int64_t kv, int64_t recent) : kv_(kv), recent_(recent) {}
  LayerKeep key_keep(int64_t, const at::Tensor& x, const at::Tensor& positions, bool, const KeyInputs&) override {
    return LayerKeep::hard(at::empty({1, positions.size(0), kv_}, x.options()));
  }
  int64_t recent_window() const override { return recent_; }

 private:
  int64_t kv_, recent_;
};

}  // namespace

TEST(RaggedCache, TeacherForcedDecodingEqualsTheGatedForward) {
  c10::NoGradGuard no_grad;
  for (int64_t kv : {2, 1, 4}) {
    for (int64_t recent : {0, 3}) {
      for (bool decode_gating : {false, true}) {
        ModelConfig c = test::tiny_config(4, kv);
        LlamaModel m = LlamaModel::init_random(c, 21, at::kFloat);
        const int64_t T = 20, P = 12;
        auto gen = at::make_generator<at::CPUGeneratorImpl>(kv * 10 + recent);
        at::Tensor table = (at::rand({2, T, kv}, gen) > 0.5).to(at::kFloat);
        if (!decode_gating) table.slice(1, P).fill_(1.0);  // decode tokens are all kept
        TableFlags flags(table, recent);
        at::Tensor tokens = at::randint(0, c.vocab_size, {1, T}, gen, at::kLong);
        ForwardOptions full;
        full.visibility = &flags;
        at::Tensor want = m.forward(tokens, full);
        RaggedKVCache cache(c.num_hidden_layers);
        ForwardOptions inc = full;
        inc.cache = &cache;
        std::vector<at::Tensor> got{m.forward(tokens.slice(1, 0, P), inc)};
        for (int64_t t = P; t < T; ++t) got.push_back(m.forward(tokens.slice(1, t, t + 1), inc));
        EXPECT_TRUE(at::allclose(at::cat(got, 1), want, 1e-4, 1e-5))
            << "kv " << kv << " recent " << recent << " decode gating " << decode_gating;
        // Stored = kept entries, plus the evicted ones the next token still sees (an evicted
        // entry at p is visible up to query p + recent - 1); nothing else is held.
        int64_t kept = 0;
        for (int64_t l = 0; l < 2; ++l)
          for (int64_t g = 0; g < kv; ++g) {
            int64_t n = 0;
            for (int64_t p = 0; p < T; ++p) n += table[l][p][g].item<float>() > 0.5f || (recent > 1 && p + recent - 1 >= T);
            EXPECT_EQ(cache.entries(l, g), n) << "layer " << l << " head " << g;
            kept += n;
          }
        EXPECT_EQ(cache.bytes(), kept * c.head_dim * 2 * 4);
      }
    }
  }
}

TEST(RaggedCache, KeepAllIsTheFullCache) {
  c10::NoGradGuard no_grad;
  ModelConfig c = test::tiny_config(4, 2);
  LlamaModel m = LlamaModel::init_random(c, 5, at::kFloat);
  at::Tensor tokens = at::randint(0, c.vocab_size, {1, 10}, at::kLong);
  RaggedKVCache cache(2);
  ForwardOptions o;
  o.cache = &cache;
  at::Tensor a = m.forward(tokens.slice(1, 0, 6), o);
  at::Tensor b = m.forward(tokens.slice(1, 6, 10), o);
  EXPECT_TRUE(at::allclose(at::cat({a, b}, 1), m.forward(tokens), 1e-4, 1e-5));
  EXPECT_EQ(cache.total_entries(), 2 * 2 * 10);
  EXPECT_EQ(cache.bytes(), 2 * 2 * 10 * 8 * 2 * 4);
}

TEST(Generate, KeepAllGatesReproduceTheBaseModelsTokensAndCountBytes) {
  ModelConfig c = test::tiny_config(4, 2);
  LlamaModel m = LlamaModel::init_random(c, 8, at::kFloat);
  std::vector<int64_t> prompt = {1, 5, 9, 12, 33, 7, 2, 40};
  GenerateOptions o;
  o.max_new = 12;
  // Reference: greedy decoding by re-running the whole sequence each step.
  std::vector<int64_t> seq = prompt, want;
  {
    c10::NoGradGuard no_grad;
    for (int i = 0; i < 12; ++i) {
      const int64_t next = m.forward(at::tensor(seq, at::kLong).unsqueeze(0))[0][-1].argmax().item<int64_t>();
      want.push_back(next);
      seq.push_back(next);
    }
  }
  GenerateResult plain = generate(m, nullptr, prompt, o);
  EXPECT_EQ(plain.tokens, want);
  GateConfig g;
  g.heads = 2;
  g.head_dim = 8;
  auto gates = Gates::create(g, c, 3);
  gates->force_flags(1);
  GenerateResult kept = generate(m, gates.get(), prompt, o);
  EXPECT_EQ(kept.tokens, want);
  EXPECT_EQ(kept.kv_entries, kept.kv_entries_full);
  // Evicting everything but the current token changes the cache size, not the bookkeeping.
  gates->force_flags(0);
  GenerateResult evicted = generate(m, gates.get(), prompt, o);
  EXPECT_EQ(evicted.kv_entries, evicted.kv_entries_full - 2 * 2 * static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(evicted.kv_bytes, evicted.kv_entries * c.head_dim * 2 * 4);
  EXPECT_EQ(evicted.kv_bytes_full, evicted.kv_entries_full * c.head_dim * 2 * 4);
}

// Real gates, decode-time gating on: token-by-token decoding over the ragged cache (the gate
// using its own cache) equals the full gated forward of the training path.
TEST(RaggedCache, DecodeTimeGatingWithRealGatesEqualsTheGatedForward) {
  c10::NoGradGuard no_grad;
  for (const char* type : {"attention", "mlp"}) {
    ModelConfig c = test::tiny_config(4, 2);
    LlamaModel m = LlamaModel::init_random(c, 31, at::kFloat);
    GateConfig g;
    g.type = kGateTypes.parse(type, "gate.type");
    g.heads = 2;
    g.head_dim = 8;
    g.init_bias = 0.0;  // a mix of kept and evicted tokens
    g.init_std = 0.5;
    g.sink_tokens = 1;
    auto gates = Gates::create(g, c, 4);
    at::Tensor tokens = at::randint(0, c.vocab_size, {1, 18}, at::kLong);
    ForwardOptions full;
    full.visibility = gates.get();
    const ModelOutput out = m.run(tokens, full);
    at::Tensor want = out.logits;
    const double kept = out.flag_means().mean().item<double>();
    EXPECT_GT(kept, 0.05) << type;
    EXPECT_LT(kept, 0.95) << type;
    gates->set_decode_cache(true);
    RaggedKVCache cache(c.num_hidden_layers);
    ForwardOptions inc = full;
    inc.cache = &cache;
    std::vector<at::Tensor> got{m.forward(tokens.slice(1, 0, 7), inc)};
    for (int64_t t = 7; t < 18; ++t) got.push_back(m.forward(tokens.slice(1, t, t + 1), inc));
    EXPECT_TRUE(at::allclose(at::cat(got, 1), want, 1e-4, 1e-5)) << type;
    EXPECT_LT(cache.total_entries(), 2 * 2 * 18) << "decode tokens were evicted too";
  }
}

// The cache on its own, chunk by chunk (prefill chunks, single decode steps, chunks again),
// against masked_attention over the whole sequence: stored evicted entries expire inside later
// chunks, the sliding window cuts through them, and the many decode steps run the cache out of
// capacity (compaction, growth) several times.
TEST(RaggedCache, ChunksWhereStoredEntriesExpireEqualMaskedAttention) {
  c10::NoGradGuard no_grad;
  const int64_t H = 4, Hkv = 2, hd = 8, T = 120;
  const std::vector<int64_t> chunks = {6, 5, 1, 1, 1, 8, 1, 1, 12, 3};
  auto gen = at::make_generator<at::CPUGeneratorImpl>(17);
  for (int64_t window : {0, 7}) {
    for (int64_t recent : {0, 1, 3}) {
      SCOPED_TRACE("window " + std::to_string(window) + " recent " + std::to_string(recent));
      const at::Tensor q = at::randn({1, H, T, hd}, gen), k = at::randn({1, Hkv, T, hd}, gen),
                       v = at::randn({1, Hkv, T, hd}, gen);
      const at::Tensor keep = (at::rand({1, T, Hkv}, gen) > 0.6).to(at::kFloat);
      const at::Tensor pos = at::arange(T, at::kLong);
      const at::Tensor want = masked_attention(q, k, v, pos, pos, keep, window, recent);
      RaggedKVCache cache(1);
      int64_t a = 0;
      for (size_t i = 0; a < T; ++i) {
        const int64_t b = std::min(T, a + (i < chunks.size() ? chunks[i] : 1));
        const at::Tensor got = cache.attend(0, q.slice(2, a, b), k.slice(2, a, b), v.slice(2, a, b),
                                            keep.slice(1, a, b), window, recent);
        cache.advance(b - a);
        ASSERT_TRUE(at::allclose(got, want.slice(2, a, b), 1e-4, 1e-5)) << "tokens " << a << ".." << b;
        a = b;
      }
      // Stored: the kept entries and the evicted ones the next query still sees, inside the window.
      for (int64_t g = 0; g < Hkv; ++g) {
        std::vector<int64_t> live;
        for (int64_t p = 0; p < T; ++p)
          if ((keep[0][p][g].item<float>() > 0.5f || p + recent - 1 >= T) && (window <= 0 || T - p < window))
            live.push_back(p);
        EXPECT_EQ(cache.positions(0, g), live) << "head " << g;
        EXPECT_EQ(cache.entries(0, g), static_cast<int64_t>(live.size()));
      }
      // Without a window, compaction shrinks the buffers towards the live entries.
      EXPECT_LE(cache.capacity_bytes(), 2 * Hkv * hd * 2 * 4 * (2 * T)) << "capacity";
    }
  }
}

// A copy (construction or assignment) owns its buffers: decoding on it leaves the original as it
// was, and the original's decoding leaves the copy as it was.
TEST(RaggedCache, ACopiedCacheEvolvesIndependently) {
  c10::NoGradGuard no_grad;
  ModelConfig c = test::tiny_config(4, 2);
  LlamaModel m = LlamaModel::init_random(c, 41, at::kFloat);
  const int64_t T = 16, P = 10;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
  TableFlags flags((at::rand({2, T, 2}, gen) > 0.5).to(at::kFloat), 3);
  const at::Tensor tokens = at::randint(0, c.vocab_size, {1, T}, gen, at::kLong);
  ForwardOptions full;
  full.visibility = &flags;
  const at::Tensor want = m.forward(tokens, full).slice(1, P);
  RaggedKVCache original(c.num_hidden_layers);
  ForwardOptions o = full;
  o.cache = &original;
  m.forward(tokens.slice(1, 0, P), o);
  const int64_t entries = original.total_entries();
  const RaggedKVCache snapshot = original;
  RaggedKVCache other = original;
  ForwardOptions oo = full;
  oo.cache = &other;
  for (int64_t t = P; t < T - 2; ++t) m.forward(at::full({1, 1}, (t * 7) % c.vocab_size, at::kLong), oo);
  EXPECT_EQ(other.length(), T - 2);
  EXPECT_EQ(original.length(), P);
  EXPECT_EQ(original.total_entries(), entries);
  auto decode = [&](RaggedKVCache& cache) {
    ForwardOptions d = full;
    d.cache = &cache;
    std::vector<at::Tensor> got;
    for (int64_t t = P; t < T; ++t) got.push_back(m.forward(tokens.slice(1, t, t + 1), d));
    return at::cat(got, 1);
  };
  EXPECT_TRUE(at::allclose(decode(original), want, 1e-4, 1e-5));
  RaggedKVCache assigned(c.num_hidden_layers);
  assigned = snapshot;
  EXPECT_EQ(assigned.length(), P);
  EXPECT_EQ(assigned.total_entries(), entries);
  EXPECT_TRUE(at::allclose(decode(assigned), want, 1e-4, 1e-5));
  EXPECT_EQ(snapshot.length(), P);
  EXPECT_EQ(snapshot.total_entries(), entries);
}

// The meta device has shapes but no data: any .item(), accessor or copy to the host throws. A
// decode step over a cache on it completing (with decode-time flags or without, with a recent
// window or without) shows the step reads nothing back, on every layer. The capacity staying
// put shows the steps took the ordinary path (no compaction, which reads once by design).
// (The shape-only kernels LibTorch's C++ build lacks, index_select, where, ..., are registered
// for the whole test binary in tests/train/test_train_step.cpp.)
TEST(RaggedCache, ADecodeStepReadsNothingBackToTheHost) {
  c10::NoGradGuard no_grad;
  const c10::Device meta(c10::kMeta);
  for (int64_t recent : {0, 3}) {
    for (bool gating : {false, true}) {
      SCOPED_TRACE("recent " + std::to_string(recent) + (gating ? " decode gating" : ""));
      ModelConfig c = test::tiny_config(4, 2);
      LlamaModel m = LlamaModel::init_random(c, 3, at::kFloat, meta);
      MetaFlags flags(2, recent);
      RaggedKVCache cache(c.num_hidden_layers);
      ForwardOptions o;
      o.cache = &cache;
      o.visibility = &flags;
      ASSERT_NO_THROW(m.forward(at::zeros({1, 12}, at::TensorOptions().dtype(at::kLong).device(meta)), o));
      if (!gating) o.visibility = nullptr;
      const int64_t capacity = cache.capacity_bytes();
      for (int i = 0; i < 4; ++i) {
        at::Tensor out;
        try {
          out = m.forward(at::zeros({1, 1}, at::TensorOptions().dtype(at::kLong).device(meta)), o);
        } catch (const std::exception& e) {
          FAIL() << "the decode step read a device value on the host: " << e.what();
        }
        EXPECT_TRUE(out.is_meta());
      }
      EXPECT_EQ(cache.length(), 16);
      EXPECT_EQ(cache.capacity_bytes(), capacity);
      EXPECT_ANY_THROW(cache.total_entries()) << "a reporting call reads the device: meta must refuse it";
    }
  }
}
