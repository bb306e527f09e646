// The blocked (flash) attention kernels against masked_attention_reference: values and the four
// gradients (q, k, v, keep) over a property sweep with fixed seeds.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "agate/model/attention.h"
#include "agate/util/alloc_tracker.h"

namespace agate {
namespace {

struct Case {
  int64_t B, Hkv, G, Tq, Tk, hd, window, recent, sinks;
  bool ste, soft, keep;  // keep=false: no key_keep (plain attention)
  at::ScalarType dtype;
  int64_t dense = 0;  // dense_until: queries at positions below it ignore the flags
  int64_t pos_base = 0, pos_step = 1;  // key j at position pos_base + j * pos_step (step 1: the
                                       // kernels' consecutive fast path; else the general one)
};

std::string describe(const Case& c) {
  return "B" + std::to_string(c.B) + " Hkv" + std::to_string(c.Hkv) + " G" + std::to_string(c.G) + " Tq" +
         std::to_string(c.Tq) + " Tk" + std::to_string(c.Tk) + " hd" + std::to_string(c.hd) + " win" +
         std::to_string(c.window) + " recent" + std::to_string(c.recent) + " sinks" + std::to_string(c.sinks) + " dense" + std::to_string(c.dense) +
         " pos" + std::to_string(c.pos_base) + "+" + std::to_string(c.pos_step) + "j" +
         (c.keep ? (c.soft ? " soft" : " ste") : " nokeep") + (c.dtype == at::kFloat ? " fp32" : " bf16");
}

struct Result {
  at::Tensor out;
  std::vector<at::Tensor> grads;  // dq, dk, dv, dp
};

Result run(const Case& c, AttentionKernel kernel, uint64_t seed) {
  at::manual_seed(static_cast<int64_t>(seed));
  const int64_t H = c.Hkv * c.G;
  at::Tensor q0 = at::randn({c.B, H, c.Tq, c.hd}), k0 = at::randn({c.B, c.Hkv, c.Tk, c.hd}) * 1.5,
             v0 = at::randn({c.B, c.Hkv, c.Tk, c.hd});
  at::Tensor p0 = at::rand({c.B, c.Tk, c.Hkv}) * 0.98 + 0.01;
  at::Tensor gout = at::randn({c.B, H, c.Tq, c.hd});
  at::Tensor q = q0.to(c.dtype).requires_grad_(true), k = k0.to(c.dtype).requires_grad_(true),
             v = v0.to(c.dtype).requires_grad_(true), p = p0.clone().requires_grad_(true);
  const at::Tensor k_pos = at::arange(0, c.Tk, at::kLong) * c.pos_step + c.pos_base;
  const at::Tensor q_pos = k_pos.slice(0, c.Tk - c.Tq);
  at::Tensor keep;
  if (c.keep) {
    keep = c.soft ? p : (p.detach() > 0.5).to(at::kFloat) + p - p.detach();
    if (c.sinks > 0) {  // sinks arrive as flags forced to 1 (as Gates builds them)
      at::Tensor sink = (at::arange(0, c.Tk, at::kLong) < c.sinks).view({1, c.Tk, 1});
      keep = at::where(sink, at::ones({}, keep.options()), keep);
    }
  }
  set_attention_kernel(kernel);
  at::Tensor out = masked_attention(q, k, v, q_pos, k_pos, keep, c.window, c.recent, c.dense);
  out.backward(gout.to(c.dtype));
  set_attention_kernel(AttentionKernel::Flash);
  Result r{out.detach().to(at::kFloat), {}};
  for (const auto& t : {q, k, v, p}) r.grads.push_back(t.grad().defined() ? t.grad().to(at::kFloat) : at::Tensor());
  return r;
}

void expect_close(const at::Tensor& got, const at::Tensor& want, double tol, const std::string& what) {
  ASSERT_EQ(got.defined(), want.defined()) << what;
  if (!got.defined()) return;
  const double scale = std::max(1.0, want.abs().max().item<double>());
  const double diff = (got - want).abs().max().item<double>();
  EXPECT_LE(diff, tol * scale) << what << ": max |diff| " << diff << " (scale " << scale << ")";
}

void check(const Case& c, uint64_t seed) {
  const Result f = run(c, AttentionKernel::Flash, seed), r = run(c, AttentionKernel::Reference, seed);
  const double tol = c.dtype == at::kFloat ? 2e-5 : 4e-2;
  const std::string what = describe(c);
  expect_close(f.out, r.out, tol, what + " out");
  const char* names[] = {"dq", "dk", "dv", "dkeep"};
  for (int i = 0; i < 4; ++i) expect_close(f.grads[i], r.grads[i], tol, what + " " + names[i]);
}

TEST(FlashAttention, EqualsTheReferenceInValueAndEveryGradient) {
  uint64_t seed = 1;
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    for (int64_t G : {1, 2, 4, 8}) {
      for (int variant = 0; variant < 7; ++variant) {
        Case c{1, 2, G, 37, 37, 16, 0, 0, 0, true, false, true, dtype};
        if (variant == 1) c.window = 13, c.recent = 4;           // sliding + recent windows
        if (variant == 2) c.Tq = 19, c.Tk = 150, c.sinks = 3;    // a query block behind a cache
        if (variant == 3) c.soft = true, c.ste = false;          // soft probabilities
        if (variant == 4) c.dense = 20, c.recent = 3;            // a context/continuation split
        if (variant == 5) c.pos_step = 3, c.window = 40, c.recent = 7, c.dense = 30;  // gapped positions
        if (variant == 6) c.pos_base = 9, c.window = 13, c.recent = 4, c.dense = 20;  // not from 0
        check(c, seed++);
      }
    }
  }
}

// Lengths around the tile sizes (64 queries, 128 keys), head dims 64 and 128, plain attention.
TEST(FlashAttention, LengthsThatAreNotTileMultiplesAndPlainAttention) {
  uint64_t seed = 100;
  for (int64_t T : {1, 7, 63, 65, 129, 257}) {
    check({2, 1, 3, T, T, 64, 0, 0, 0, true, false, true, at::kFloat}, seed++);
  }
  check({1, 2, 2, 130, 300, 128, 0, 0, 4, true, false, true, at::kFloat}, seed++);
  check({1, 3, 3, 200, 200, 64, 0, 0, 0, false, false, false, at::kFloat}, seed++);   // no key_keep
  check({1, 3, 3, 200, 200, 64, 50, 0, 0, false, false, false, at::kBFloat16}, seed++);
  check({1, 2, 4, 70, 270, 32, 100, 16, 2, false, true, true, at::kBFloat16}, seed++);
}

// A context/continuation split (dense_until = s): the queries before s see every earlier key,
// as without flags, and those from s on see the flagged keys, as without the split; the keep
// gradient comes from the continuation's queries only. Every kernel, values and gradients.
TEST(FlashAttention, DenseQueriesIgnoreTheFlagsAndTheRestUseThem) {
  at::manual_seed(11);
  const int64_t B = 2, Hkv = 2, G = 2, T = 70, hd = 16, s = 30;
  at::Tensor q0 = at::randn({B, Hkv * G, T, hd}), k0 = at::randn({B, Hkv, T, hd}), v0 = at::randn({B, Hkv, T, hd});
  at::Tensor p0 = at::rand({B, T, Hkv});
  const at::Tensor pos = at::arange(0, T, at::kLong), gout = at::randn({B, Hkv * G, T, hd});
  for (auto kernel : {AttentionKernel::Flash, AttentionKernel::Rows, AttentionKernel::Reference}) {
    set_attention_kernel(kernel);
    auto attend = [&](bool flags, int64_t dense) {
      at::Tensor q = q0.clone().requires_grad_(true), p = p0.clone().requires_grad_(true);
      at::Tensor keep = (p.detach() > 0.5).to(at::kFloat) + p - p.detach();  // STE flags
      at::Tensor out = masked_attention(q, k0, v0, pos, pos, flags ? keep : at::Tensor(), 0, 2, dense);
      out.backward(gout);
      return std::make_tuple(out.detach(), q.grad(), p.grad());
    };
    const auto [split, dq, dp] = attend(true, s);
    const auto [dense, dq_dense, dp_dense] = attend(false, 0);
    const auto [gated, dq_gated, dp_gated] = attend(true, 0);
    const std::string k = attention_kernel_name(kernel);
    EXPECT_TRUE(at::allclose(split.slice(2, 0, s), dense.slice(2, 0, s), 1e-5, 1e-5)) << k << ": context rows";
    EXPECT_TRUE(at::allclose(split.slice(2, s), gated.slice(2, s), 1e-5, 1e-5)) << k << ": continuation rows";
    EXPECT_FALSE(at::allclose(split, gated, 1e-3, 1e-3)) << k << ": the split changes the context rows";
    EXPECT_TRUE(at::allclose(dq.slice(2, 0, s), dq_dense.slice(2, 0, s), 1e-5, 1e-5)) << k;
    EXPECT_TRUE(at::allclose(dq.slice(2, s), dq_gated.slice(2, s), 1e-5, 1e-5)) << k;
    // Every keep gradient of the split run comes from continuation queries: dense_until = T
    // leaves none.
    EXPECT_GT(dp.abs().sum().item<double>(), 0) << k;
    const auto [all_dense, dq_all, dp_all] = attend(true, T);
    EXPECT_TRUE(at::allclose(all_dense, dense, 1e-5, 1e-5)) << k;
    EXPECT_EQ(dp_all.abs().sum().item<double>(), 0) << k;
  }
  set_attention_kernel(AttentionKernel::Flash);
}

// Without gradients (the gated prefill and decode) the forward equals the reference too.
TEST(FlashAttention, InferenceForwardEqualsTheReference) {
  torch::NoGradGuard no_grad;
  at::manual_seed(7);
  const int64_t B = 1, Hkv = 2, G = 3, T = 150, hd = 32;
  at::Tensor q = at::randn({B, Hkv * G, 1, hd}), k = at::randn({B, Hkv, T, hd}), v = at::randn({B, Hkv, T, hd});
  at::Tensor keep = (at::rand({B, T, Hkv}) > 0.4).to(at::kFloat);
  const at::Tensor k_pos = at::arange(0, T, at::kLong), q_pos = at::full({1}, T - 1, at::kLong);
  set_attention_kernel(AttentionKernel::Flash);
  at::Tensor got = masked_attention(q, k, v, q_pos, k_pos, keep, 0, 8);
  at::Tensor want = masked_attention_reference(q, k, v, q_pos, k_pos, keep, 0, 8);
  EXPECT_TRUE(at::allclose(got, want, 1e-5, 1e-5)) << (got - want).abs().max().item<double>();
}

}  // namespace
}  // namespace agate

namespace agate {
namespace {

// Peak CPU tensor memory of one gated forward + backward at length T (inputs excluded).
int64_t train_peak_bytes(AttentionKernel kernel, int64_t T) {
  const int64_t B = 1, Hkv = 2, H = 4, hd = 32;
  at::manual_seed(3);
  at::Tensor q = at::randn({B, H, T, hd}).requires_grad_(true), k = at::randn({B, Hkv, T, hd}).requires_grad_(true),
             v = at::randn({B, Hkv, T, hd}).requires_grad_(true), p = at::rand({B, T, Hkv}).requires_grad_(true);
  const at::Tensor pos = at::arange(0, T, at::kLong), gout = at::randn({B, H, T, hd});
  AllocTracker tracker;
  const int64_t before = AllocTracker::current_bytes();
  AllocTracker::reset_peak();
  set_attention_kernel(kernel);
  {
    at::Tensor keep = (p.detach() > 0.5).to(at::kFloat) + p - p.detach();
    masked_attention(q, k, v, pos, pos, keep).backward(gout);
  }
  set_attention_kernel(AttentionKernel::Flash);
  return AllocTracker::peak_bytes() - before;
}

// Memory linear in T: doubling T at most doubles the peak (plus slack), where a T x T buffer
// would quadruple it; the same measurement does see the row kernels' T x T maps.
TEST(FlashAttention, TrainingMemoryIsLinearInT) {
  const int64_t f2 = train_peak_bytes(AttentionKernel::Flash, 2048), f4 = train_peak_bytes(AttentionKernel::Flash, 4096);
  EXPECT_LT(static_cast<double>(f4), 2.3 * static_cast<double>(f2)) << f2 << " -> " << f4 << " bytes";
  // A [T, T] float32 map per head at 4096 would be 4 x 64 MiB: far above what flash holds.
  EXPECT_LT(f4, 64LL << 20) << f4;
  const int64_t r1 = train_peak_bytes(AttentionKernel::Rows, 1024), r2 = train_peak_bytes(AttentionKernel::Rows, 2048);
  EXPECT_GT(static_cast<double>(r2), 3.0 * static_cast<double>(r1)) << "the measurement must see T x T maps: " << r1
                                                                      << " -> " << r2;
}

}  // namespace
}  // namespace agate
