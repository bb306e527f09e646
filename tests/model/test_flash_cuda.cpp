// agate's CUDA flash kernels (src/model/cuda/flash_attention.cu, contract in
// src/model/flash_attention.h) against masked_attention_reference run on the CPU in float64 with
// autograd: the output, the saved row max m and row sum z, and dq, dk, dv, dkeep, over a seeded
// property sweep (GQA groups 1/2/4/8, sliding and recent windows, sinks, 0/1 flags and soft keep
// probabilities, no keep, float32 and bfloat16, lengths that are not tile multiples, a query
// block at the end of a longer key range, position gaps, unordered positions, non-contiguous
// inputs, head dims; bfloat16 runs the tensor-core kernels up to head dim 128, the FMA kernels
// above); row maxima growing along the keys (the tensor-core forward's lazy rescale);
// gradients reproducible bit for bit in both dtypes; and memory linear in T. Every case skips
// without a CUDA device (or in a build without the CUDA kernels).
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "../../src/model/flash_attention.h"
#include "agate/model/attention.h"

#ifdef AGATE_USE_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

using namespace agate;

#ifdef AGATE_USE_CUDA

namespace {

#define SKIP_WITHOUT_CUDA()                                                                     \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device here: the CUDA flash attention kernels are not run"

enum class KeepKind { None, Flags, Soft };

const char* keep_name(KeepKind k) { return k == KeepKind::None ? "none" : k == KeepKind::Flags ? "flags" : "soft"; }

struct Case {
  int64_t B = 1, Hkv = 1, G = 1, Tq = 1, Tk = 1, hd = 64;
  int64_t sw = 0, rw = 0, sinks = 0, start = 0;
  int64_t du = 0;  // dense_until (a context/continuation split), as an absolute position
  KeepKind keep = KeepKind::None;
  double keep_rate = 0.5;  // Flags: probability of a 1
  at::ScalarType dtype = at::kFloat;
  bool gaps = false;     // key positions advance by 1 to 3 instead of 1
  bool shuffled = false; // keys and queries in a random order of positions (the kernels assume no order)
  bool strided = false;  // q, k, v, dout handed over as non-contiguous views
  bool misaligned = false;  // q, k, v, dout contiguous but one element past a 16-byte boundary
  double q_gain = 1.0;   // larger scores: hidden keys that would dominate (the e <= 1 cap)
  double k_ramp = 0.0;   // key j scaled by 1 + k_ramp j / Tk: row maxima that keep growing along the keys
  std::string what() const {
    return "B " + std::to_string(B) + " Hkv " + std::to_string(Hkv) + " G " + std::to_string(G) + " Tq " +
           std::to_string(Tq) + " Tk " + std::to_string(Tk) + " hd " + std::to_string(hd) + " sw " +
           std::to_string(sw) + " rw " + std::to_string(rw) + " du " + std::to_string(du) + " sinks " + std::to_string(sinks) + " start " +
           std::to_string(start) + " keep " + keep_name(keep) + " " + std::string(c10::toString(dtype)) +
           (gaps ? " gaps" : "") + (shuffled ? " shuffled" : "") + (strided ? " strided" : "") + (misaligned ? " misaligned" : "") + " q_gain " + std::to_string(q_gain) +
           (k_ramp != 0.0 ? " k_ramp " + std::to_string(k_ramp) : "");
  }
};

// CPU inputs of a case (q, k, v, dout already rounded to the case's dtype, kept in it).
struct Inputs {
  at::Tensor q, k, v, dout, q_pos, k_pos, keep;  // keep: [B, Hkv, Tk] float32 or undefined
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  const int64_t H = c.Hkv * c.G;
  Inputs in;
  in.q = (at::randn({c.B, H, c.Tq, c.hd}, gen) * c.q_gain).to(c.dtype);
  in.k = at::randn({c.B, c.Hkv, c.Tk, c.hd}, gen);
  if (c.k_ramp != 0.0) in.k = in.k * (1.0 + c.k_ramp * at::arange(c.Tk, at::kDouble) / c.Tk).view({1, 1, c.Tk, 1});
  in.k = in.k.to(c.dtype);
  in.v = at::randn({c.B, c.Hkv, c.Tk, c.hd}, gen).to(c.dtype);
  in.dout = at::randn({c.B, H, c.Tq, c.hd}, gen).to(c.dtype);
  at::Tensor step = c.gaps ? at::randint(1, 4, {c.Tk}, gen, at::kLong) : at::ones({c.Tk}, at::kLong);
  in.k_pos = step.cumsum(0) - step[0] + c.start;  // first key at `start`
  in.q_pos = in.k_pos.slice(0, c.Tk - c.Tq).clone();  // the queries are the last Tq keys
  if (c.shuffled) {
    in.k_pos = in.k_pos.index_select(0, at::randperm(c.Tk, gen));
    in.q_pos = in.q_pos.index_select(0, at::randperm(c.Tq, gen));
  }
  if (c.keep != KeepKind::None) {
    at::Tensor u = at::rand({c.B, c.Hkv, c.Tk}, gen);
    in.keep = c.keep == KeepKind::Flags ? (u < c.keep_rate).to(at::kFloat) : u * 0.95 + 0.05;  // soft: (0.05, 1]
    if (c.sinks > 0) in.keep.masked_fill_((in.k_pos < c.sinks).view({1, 1, c.Tk}), 1.0f);
  }
  return in;
}

struct Expected {
  at::Tensor out, m, z, dq, dk, dv, dkeep;  // float64
};

// The ground truth: masked_attention_reference in float64 with autograd (key_keep is
// [B, Tk, Hkv]), and the saved statistics m, z of the contract computed directly.
Expected reference(const Case& c, const Inputs& in) {
  const int64_t H = c.Hkv * c.G;
  at::Tensor q = in.q.to(at::kDouble).requires_grad_(true);
  at::Tensor k = in.k.to(at::kDouble).requires_grad_(true);
  at::Tensor v = in.v.to(at::kDouble).requires_grad_(true);
  at::Tensor key_keep;
  if (in.keep.defined()) key_keep = in.keep.to(at::kDouble).permute({0, 2, 1}).contiguous().requires_grad_(true);
  at::Tensor out = masked_attention_reference(q, k, v, in.q_pos, in.k_pos, key_keep, c.sw, c.rw, c.du);
  out.backward(in.dout.to(at::kDouble));
  Expected e;
  e.out = out.detach();
  e.dq = q.grad();
  e.dk = k.grad();
  e.dv = v.grad();
  if (key_keep.defined()) e.dkeep = key_keep.grad().permute({0, 2, 1}).contiguous();

  c10::NoGradGuard no_grad;
  const double scale = 1.0 / std::sqrt(static_cast<double>(c.hd));
  at::Tensor s = at::matmul(q.detach().reshape({c.B, c.Hkv, c.G * c.Tq, c.hd}), k.detach().transpose(-1, -2))
                     .mul(scale)
                     .view({c.B, c.Hkv, c.G, c.Tq, c.Tk});
  at::Tensor d = in.q_pos.view({c.Tq, 1}) - in.k_pos.view({1, c.Tk});
  at::Tensor allowed = d >= 0;
  if (c.sw > 0) allowed = allowed.logical_and(d < c.sw);
  at::Tensor always = d == 0;
  if (c.rw > 0) always = always.logical_or(d < c.rw);
  if (c.du > 0) always = always.logical_or(in.q_pos.view({c.Tq, 1}) < c.du);
  at::Tensor keepv = in.keep.defined() ? in.keep.to(at::kDouble).view({c.B, c.Hkv, 1, 1, c.Tk})
                                       : at::ones({1, 1, 1, 1, c.Tk}, at::kDouble);
  at::Tensor M = at::where(allowed, at::where(always, at::ones({}, at::kDouble), keepv), at::zeros({}, at::kDouble));
  at::Tensor mx = s.masked_fill(M <= 0, -std::numeric_limits<double>::infinity()).amax(-1, true);
  mx = at::where(at::isinf(mx), at::zeros({}, at::kDouble), mx);
  at::Tensor ez = (s - mx).clamp_max(0.0).exp();
  e.m = mx.squeeze(-1).reshape({c.B, H, c.Tq});
  e.z = (ez * M).sum(-1).reshape({c.B, H, c.Tq});
  return e;
}

// max |got - want| <= tol * max(max |want|, 1), everything finite, same shape. The floor of 1
// (the inputs are O(1)) covers gradients that vanish exactly, e.g. dk with a single visible key,
// where the kernel's rounding of D = dout . out leaves a residue of the inputs' scale.
void expect_close(const at::Tensor& got, const at::Tensor& want, double tol, const std::string& what) {
  ASSERT_TRUE(got.defined() && want.defined()) << what;
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const at::Tensor g = got.to(at::kCPU).to(at::kDouble), w = want.to(at::kDouble);
  EXPECT_TRUE(g.isfinite().all().item<bool>()) << what << ": non-finite values";
  if (w.numel() == 0) return;
  const double ref = w.abs().max().item<double>();
  const double err = (g - w).abs().max().item<double>();
  EXPECT_LE(err, tol * std::max(ref, 1.0)) << what << ": max error " << err << " against max |ref| " << ref;
}

at::Tensor strided_copy(const at::Tensor& t) {
  // The same values behind transposed strides of the last two dimensions.
  return t.transpose(-1, -2).contiguous().transpose(-1, -2);
}

void run_case(const Case& c, uint64_t seed) {
  const std::string what = c.what();
  const Inputs in = make_inputs(c, seed);
  const Expected e = reference(c, in);
  const at::Device cuda(at::kCUDA, 0);
  auto dev = [&](const at::Tensor& t) {
    at::Tensor x = t.to(cuda);
    if (c.misaligned && x.dim() == 4) {
      at::Tensor buf = at::empty({x.numel() + 1}, x.options());
      buf.slice(0, 1).copy_(x.flatten());
      return buf.slice(0, 1).view(x.sizes());
    }
    return c.strided && x.dim() == 4 ? strided_copy(x) : x;
  };
  const at::Tensor keep = in.keep.defined() ? in.keep.to(cuda) : at::Tensor();
  kernels::FlashArgs a{dev(in.q), dev(in.k), dev(in.v), in.q_pos.to(cuda), in.k_pos.to(cuda), keep, c.sw, c.rw, c.du};
  if (c.strided && c.Tq > 1) {
    ASSERT_FALSE(a.q.is_contiguous()) << what;
  }
  const kernels::FlashForward f = kernels::flash_forward_cuda(a);
  const kernels::FlashGrads g = kernels::flash_backward_cuda(a, f, dev(in.dout));

  ASSERT_TRUE(f.out.is_cuda() && f.m.is_cuda() && f.z.is_cuda()) << what;
  EXPECT_EQ(f.out.scalar_type(), c.dtype) << what;
  EXPECT_EQ(f.m.scalar_type(), at::kFloat) << what;
  EXPECT_EQ(f.z.scalar_type(), at::kFloat) << what;
  EXPECT_EQ(g.dq.scalar_type(), c.dtype) << what;
  EXPECT_EQ(g.dk.scalar_type(), c.dtype) << what;
  EXPECT_EQ(g.dv.scalar_type(), c.dtype) << what;
  ASSERT_EQ(g.dkeep.defined(), in.keep.defined()) << what;

  const double tol = c.dtype == at::kFloat ? 1e-4 : 3e-2;
  expect_close(f.out, e.out, tol, what + ": out");
  // m and z are float32 statistics of the same (rounded) inputs in every dtype.
  expect_close(f.m, e.m, c.dtype == at::kFloat ? 1e-4 : 1e-3, what + ": m");
  expect_close(f.z, e.z, c.dtype == at::kFloat ? 1e-4 : 1e-3, what + ": z");
  expect_close(g.dq, e.dq, tol, what + ": dq");
  expect_close(g.dk, e.dk, tol, what + ": dk");
  expect_close(g.dv, e.dv, tol, what + ": dv");
  if (in.keep.defined()) {
    EXPECT_EQ(g.dkeep.scalar_type(), at::kFloat) << what;
    expect_close(g.dkeep, e.dkeep, tol, what + ": dkeep");
  }
}

// Lengths, keep kinds and dtypes cycle through every combination; the rest is drawn from a fixed seed.
std::vector<Case> sweep() {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(20250611);
  auto pick = [&](int64_t lo, int64_t hi) { return at::randint(lo, hi + 1, {1}, gen).item<int64_t>(); };
  const int64_t groups[] = {1, 2, 4, 8};
  const int64_t lengths[] = {1, 7, 63, 65, 130, 257};
  const int64_t dims[] = {64, 128};
  const KeepKind keeps[] = {KeepKind::None, KeepKind::Flags, KeepKind::Soft};
  std::vector<Case> cases;
  for (int i = 0; i < 72; ++i) {
    Case c;
    c.Tk = lengths[i % 6];
    c.keep = keeps[(i / 6) % 3];
    c.dtype = (i / 18) % 2 == 0 ? at::kFloat : at::kBFloat16;
    c.G = groups[i % 4 == 0 ? (i / 4) % 4 : pick(0, 3)];
    c.hd = dims[pick(0, 1)];
    c.B = pick(1, 2);
    c.Hkv = pick(1, 2);
    const int64_t tq = pick(0, 3);
    c.Tq = tq == 0 ? c.Tk : tq == 1 ? 1 : tq == 2 ? std::max<int64_t>(1, c.Tk / 2) : pick(1, c.Tk);
    const int64_t sw[] = {0, 0, 5, 40};
    const int64_t rw[] = {0, 0, 3, 17};
    c.sw = sw[pick(0, 3)];
    c.rw = rw[pick(0, 3)];
    const int64_t sinks[] = {0, 0, 1, 4};
    c.sinks = sinks[pick(0, 3)];
    const int64_t start[] = {0, 0, 3, 1000};
    c.start = start[pick(0, 3)];
    c.keep_rate = pick(0, 1) ? 0.5 : 0.15;
    c.gaps = pick(0, 3) == 0;
    c.shuffled = pick(0, 4) == 0;
    c.strided = pick(0, 4) == 0;
    c.q_gain = pick(0, 2) == 0 ? 3.0 : 1.0;
    if (i % 5 == 3) c.du = c.start + c.Tk / 2;  // every fifth case: a split inside the keys
    cases.push_back(c);
  }
  return cases;
}

}  // namespace

TEST(FlashCuda, MatchesTheReferenceOverASweep) {
  SKIP_WITHOUT_CUDA();
  uint64_t seed = 1;
  for (const Case& c : sweep()) {
    run_case(c, seed++);
    if (HasFatalFailure()) return;
  }
}

// Head dims other than 64 and 128: every template bucket (32, 64, 96, 128, 192, 256) with
// padding columns (hd below the bucket), both dtypes.
TEST(FlashCuda, MatchesTheReferenceAcrossHeadDims) {
  SKIP_WITHOUT_CUDA();
  uint64_t seed = 100;
  for (int64_t hd : {1, 8, 32, 80, 96, 100, 160, 192, 200, 256}) {
    for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
      Case c;
      c.hd = hd;
      c.dtype = dt;
      c.G = 2;
      c.Hkv = 2;
      c.Tk = 70;
      c.Tq = 45;
      c.keep = KeepKind::Soft;
      c.sw = 50;
      c.rw = 4;
      c.sinks = 2;
      run_case(c, seed++);
      if (HasFatalFailure()) return;
    }
  }
}

// Row maxima that grow by far more than the tensor-core forward's rescale slack (e^8) from one
// key tile to the next (scores up to ~50): its lazy rescaling of o and z runs, also for rows
// whose first tiles are all hidden.
TEST(FlashCuda, MatchesTheReferenceWithGrowingScores) {
  SKIP_WITHOUT_CUDA();
  uint64_t seed = 300;
  for (at::ScalarType dt : {at::kBFloat16, at::kFloat}) {
    for (int64_t hd : {64, 128}) {
      for (KeepKind keep : {KeepKind::Flags, KeepKind::Soft}) {
        Case c;
        c.dtype = dt;
        c.hd = hd;
        c.G = 2;
        c.Tk = 300;
        c.Tq = 200;
        c.keep = keep;
        c.keep_rate = 0.15;
        c.q_gain = 3.0;
        c.k_ramp = 5.0;
        c.rw = keep == KeepKind::Flags ? 0 : 2;
        run_case(c, seed++);
        if (HasFatalFailure()) return;
      }
    }
  }
}

// Contiguous inputs whose data does not start on a 16-byte boundary: the tensor-core kernels
// read them element by element instead of in 16-byte vectors.
TEST(FlashCuda, MatchesTheReferenceWithMisalignedInputs) {
  SKIP_WITHOUT_CUDA();
  uint64_t seed = 400;
  for (at::ScalarType dt : {at::kBFloat16, at::kFloat}) {
    Case c;
    c.dtype = dt;
    c.hd = 64;
    c.G = 4;
    c.Tk = 130;
    c.Tq = 100;
    c.keep = KeepKind::Flags;
    c.sw = 40;
    c.misaligned = true;
    run_case(c, seed++);
    if (HasFatalFailure()) return;
  }
}

// Every gradient is computed in a fixed order (no atomics): two runs agree bit for bit, in both
// dtypes (FMA and tensor-core kernels). And an all-ones keep gives the same values as no keep.
class FlashCudaDtype : public ::testing::TestWithParam<at::ScalarType> {};

TEST_P(FlashCudaDtype, GradientsAreReproducibleAndAllOnesKeepIsNoKeep) {
  SKIP_WITHOUT_CUDA();
  Case c;
  c.B = 2, c.Hkv = 2, c.G = 4, c.Tq = 150, c.Tk = 300, c.hd = 64, c.sw = 100, c.rw = 8;
  c.keep = KeepKind::Soft;
  c.dtype = GetParam();
  const Inputs in = make_inputs(c, 7);
  const at::Device cuda(at::kCUDA, 0);
  kernels::FlashArgs a{in.q.to(cuda), in.k.to(cuda), in.v.to(cuda), in.q_pos.to(cuda), in.k_pos.to(cuda),
                       in.keep.to(cuda), c.sw, c.rw};
  const at::Tensor dout = in.dout.to(cuda);
  const kernels::FlashForward f1 = kernels::flash_forward_cuda(a), f2 = kernels::flash_forward_cuda(a);
  const kernels::FlashGrads g1 = kernels::flash_backward_cuda(a, f1, dout), g2 = kernels::flash_backward_cuda(a, f2, dout);
  EXPECT_TRUE(at::equal(f1.out, f2.out) && at::equal(f1.m, f2.m) && at::equal(f1.z, f2.z));
  EXPECT_TRUE(at::equal(g1.dq, g2.dq) && at::equal(g1.dk, g2.dk) && at::equal(g1.dv, g2.dv) &&
              at::equal(g1.dkeep, g2.dkeep));

  kernels::FlashArgs ones = a, none = a;
  ones.keep = at::ones_like(a.keep);
  none.keep = at::Tensor();
  const kernels::FlashForward fo = kernels::flash_forward_cuda(ones), fn = kernels::flash_forward_cuda(none);
  const kernels::FlashGrads go = kernels::flash_backward_cuda(ones, fo, dout), gn = kernels::flash_backward_cuda(none, fn, dout);
  EXPECT_TRUE(at::equal(fo.out, fn.out) && at::equal(fo.m, fn.m) && at::equal(fo.z, fn.z));
  EXPECT_TRUE(at::equal(go.dq, gn.dq) && at::equal(go.dk, gn.dk) && at::equal(go.dv, gn.dv));
  EXPECT_TRUE(go.dkeep.defined() && !gn.dkeep.defined());
}

INSTANTIATE_TEST_SUITE_P(FlashCuda, FlashCudaDtype, ::testing::Values(at::kFloat, at::kBFloat16),
                         [](const ::testing::TestParamInfo<at::ScalarType>& i) {
                           return std::string(c10::toString(i.param));
                         });

TEST(FlashCuda, RejectsUnsupportedInputs) {
  SKIP_WITHOUT_CUDA();
  const at::Device cuda(at::kCUDA, 0);
  const auto f = at::TensorOptions().device(cuda);
  const at::Tensor pos = at::arange(5, f.dtype(at::kLong));
  auto args = [&](int64_t hd, at::ScalarType dt) {
    return kernels::FlashArgs{at::randn({1, 2, 5, hd}, f.dtype(dt)), at::randn({1, 1, 5, hd}, f.dtype(dt)),
                              at::randn({1, 1, 5, hd}, f.dtype(dt)), pos, pos, at::Tensor(), 0, 0};
  };
  EXPECT_THROW(kernels::flash_forward_cuda(args(320, at::kFloat)), c10::Error);  // head dim above 256
  EXPECT_THROW(kernels::flash_forward_cuda(args(64, at::kHalf)), c10::Error);    // float32 / bfloat16 only
  kernels::FlashArgs bad_heads = args(64, at::kFloat);
  bad_heads.q = at::randn({1, 3, 5, 64}, f);
  bad_heads.k = bad_heads.v = at::randn({1, 2, 5, 64}, f);
  EXPECT_THROW(kernels::flash_forward_cuda(bad_heads), c10::Error);  // 3 query heads over 2 KV heads
  kernels::FlashArgs bad_keep = args(64, at::kFloat);
  bad_keep.keep = at::ones({1, 1, 4}, f);
  EXPECT_THROW(kernels::flash_forward_cuda(bad_keep), c10::Error);  // keep must be [B, Hkv, Tk]
}

// Memory linear in T: the peak allocation of forward + backward (inputs included) at T = 4096
// stays below 2.5x the one at T = 2048 (a T x T buffer would make it about 4x).
TEST(FlashCuda, MemoryIsLinearInT) {
  SKIP_WITHOUT_CUDA();
  namespace alloc = c10::cuda::CUDACachingAllocator;
  const at::Device cuda(at::kCUDA, 0);
  const auto agg = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  auto peak = [&](int64_t T) {
    c10::cuda::device_synchronize();
    const int64_t before = alloc::getDeviceStats(cuda.index()).allocated_bytes[agg].current;
    alloc::resetPeakStats(cuda.index());
    {
      const auto f = at::TensorOptions().device(cuda);
      const at::Tensor pos = at::arange(T, f.dtype(at::kLong));
      kernels::FlashArgs a{at::randn({1, 8, T, 64}, f), at::randn({1, 2, T, 64}, f), at::randn({1, 2, T, 64}, f),
                           pos, pos, at::rand({1, 2, T}, f), 0, 0};
      const kernels::FlashForward fw = kernels::flash_forward_cuda(a);
      const kernels::FlashGrads g = kernels::flash_backward_cuda(a, fw, at::randn({1, 8, T, 64}, f));
      c10::cuda::device_synchronize();
    }
    return alloc::getDeviceStats(cuda.index()).allocated_bytes[agg].peak - before;
  };
  const int64_t p2 = peak(2048), p4 = peak(4096);
  EXPECT_GT(p2, 0);
  EXPECT_LT(static_cast<double>(p4), 2.5 * static_cast<double>(p2))
      << "peak bytes: " << p2 << " at T = 2048, " << p4 << " at T = 4096";
}

#else  // !AGATE_USE_CUDA

TEST(FlashCuda, NotBuilt) { GTEST_SKIP() << "this build has no CUDA kernels (configured without AGATE_USE_CUDA)"; }

#endif
