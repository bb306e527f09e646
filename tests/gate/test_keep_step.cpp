// The gates' keep step (agate/gate/keep_step.h): the dispatcher against the plain composition
// Gates::key_keep used before it (values, flags, per-head sums, gradients), the CUDA kernel
// against its CPU twin, and device-generic gates.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <string>

#include "../tiny_model.h"
#include "agate/gate/gates.h"
#include "agate/gate/keep_step.h"

using namespace agate;

namespace {

const char* name(KeepMode m) {
  return m == KeepMode::kHard ? "hard" : m == KeepMode::kStraightThrough ? "ste" : "soft";
}

// The composition Gates::key_keep used before the fused step. p: [B, T, Hkv] (may require
// grad); positions: [T] -> {keep, flags}.
std::pair<at::Tensor, at::Tensor> reference(const at::Tensor& p, const at::Tensor& positions, double threshold,
                                            int64_t sink_tokens, KeepMode mode, int forced) {
  const int64_t B = p.size(0), T = p.size(1), Hkv = p.size(2);
  at::Tensor flags = forced >= 0 ? at::full({B, T, Hkv}, static_cast<float>(forced), p.options())
                                 : (p.detach() > threshold).to(at::kFloat);
  at::Tensor keep;
  if (mode == KeepMode::kHard) keep = flags;
  else if (mode == KeepMode::kStraightThrough) keep = flags + p - p.detach();
  else keep = p;
  if (sink_tokens > 0) {
    at::Tensor sink = (positions < sink_tokens).view({1, T, 1});
    keep = at::where(sink, at::ones({}, keep.options()), keep);
    flags = at::where(sink, at::ones({}, flags.options()), flags);
  }
  return {keep, flags};
}

// Keep probabilities [B, T, Hkv] in (0, 1) with about a tenth exactly at the threshold (ties
// must compare as "not above").
at::Tensor random_p(int64_t B, int64_t T, int64_t Hkv, double threshold, at::Generator& gen) {
  at::Tensor p = at::rand({B, T, Hkv}, gen) * 0.98 + 0.01;
  return p.masked_fill(at::rand({B, T, Hkv}, gen) < 0.1, static_cast<float>(threshold));
}

struct Case {
  int64_t B, T, Hkv, start, sinks;
  double threshold;
  int forced;
  std::string what() const {
    return "B " + std::to_string(B) + " T " + std::to_string(T) + " Hkv " + std::to_string(Hkv) + " start " +
           std::to_string(start) + " sinks " + std::to_string(sinks) + " thr " + std::to_string(threshold) +
           " forced " + std::to_string(forced);
  }
};

// Random shapes, position offsets (sinks follow positions, not indices), sink counts (none,
// some, all), thresholds and forcing, from a fixed seed.
std::vector<Case> random_cases(uint64_t seed, int n, int64_t max_T) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto pick = [&](int64_t lo, int64_t hi) { return at::randint(lo, hi + 1, {1}, gen).item<int64_t>(); };
  std::vector<Case> cases;
  const int64_t heads[] = {1, 2, 3, 5, 8};
  for (int i = 0; i < n; ++i) {
    Case c;
    c.B = pick(1, 3);
    c.T = pick(1, max_T);
    c.Hkv = heads[pick(0, 4)];
    c.start = pick(0, 1) * pick(0, 4);
    const int64_t s = pick(0, 3);
    c.sinks = s == 0 ? 0 : s == 1 ? 1 : s == 2 ? pick(1, c.T) : c.T + c.start + 2;
    c.threshold = pick(0, 1) ? 0.5 : 0.3;
    c.forced = i % 5 == 3 ? static_cast<int>(pick(0, 1)) : -1;
    cases.push_back(c);
  }
  return cases;
}

}  // namespace

// On the CPU the dispatcher equals the old composition: flags and hard/soft keep bit for bit,
// STE keep equal to its flags (the composition's flags + p - p may differ by an ulp), the
// per-head sums and their mean bit for bit, and every gradient bit for bit.
TEST(KeepStep, CpuDispatcherEqualsTheReferenceComposition) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  for (const Case& c : random_cases(1234, 40, 19)) {
    const at::Tensor positions = at::arange(c.start, c.start + c.T, at::kLong);
    const at::Tensor p0 = random_p(c.B, c.T, c.Hkv, c.threshold, gen);
    const at::Tensor g = at::randn({c.B, c.T, c.Hkv}, gen);
    for (KeepMode mode : {KeepMode::kHard, KeepMode::kStraightThrough, KeepMode::kSoft}) {
      const std::string what = c.what() + " " + name(mode);
      at::Tensor p = p0.clone().requires_grad_(true), pr = p0.clone().requires_grad_(true);
      KeepStepResult r = keep_step(p, positions, c.threshold, c.sinks, mode, c.forced);
      auto [keep, flags] = reference(pr, positions, c.threshold, c.sinks, mode, c.forced);

      ASSERT_EQ(r.keep.sizes(), p.sizes()) << what;
      EXPECT_EQ(r.keep.scalar_type(), at::kFloat) << what;
      EXPECT_TRUE(at::equal(r.flags, flags)) << what;
      EXPECT_FALSE(r.flags.requires_grad()) << what;
      EXPECT_TRUE(at::equal(r.flag_sum, flags.sum(at::IntArrayRef{0, 1}))) << what;
      EXPECT_TRUE(at::equal(r.flag_sum.div(c.B * c.T), flags.mean(at::IntArrayRef{0, 1})))
          << what << ": sum / count must be mean() bit for bit (the statistics)";
      if (mode == KeepMode::kStraightThrough) {
        EXPECT_TRUE(at::equal(r.keep, r.flags)) << what;
        EXPECT_TRUE(at::allclose(r.keep, keep, 0.0, 1e-6)) << what;
      } else {
        EXPECT_TRUE(at::equal(r.keep, keep)) << what;
      }
      // The same through the twin alone (on the CPU the dispatcher is the twin).
      KeepStepResult t = keep_step_reference(p0, positions, c.threshold, c.sinks, mode, c.forced);
      EXPECT_TRUE(at::equal(t.keep, r.keep) && at::equal(t.flags, r.flags)) << what;

      // Forcing replaces the flags only; Gates::key_keep asks for kHard when it forces.
      const bool differentiable = mode != KeepMode::kHard;
      EXPECT_EQ(r.keep.requires_grad(), differentiable) << what;
      EXPECT_EQ(keep.requires_grad(), differentiable) << what;
      if (!differentiable) continue;
      (r.keep * g).sum().backward();
      (keep * g).sum().backward();
      EXPECT_TRUE(at::equal(p.grad(), pr.grad())) << what;
      // And through a mean (an expanded, stride-0 gradient), as the sparsity surrogate does.
      p.grad().zero_();
      pr.grad().zero_();
      keep_step(p, positions, c.threshold, c.sinks, mode, c.forced).keep.mean().backward();
      reference(pr, positions, c.threshold, c.sinks, mode, c.forced).first.mean().backward();
      EXPECT_TRUE(at::equal(p.grad(), pr.grad())) << what;
    }
  }
}

// Without gradients every mode still gives its forward values, and nothing records a graph.
TEST(KeepStep, NoGradModeGivesValuesWithoutAGraph) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor p = random_p(2, 9, 2, 0.5, gen).requires_grad_(true);
  const at::Tensor positions = at::arange(0, 9, at::kLong);
  c10::NoGradGuard no_grad;
  for (KeepMode mode : {KeepMode::kHard, KeepMode::kStraightThrough, KeepMode::kSoft}) {
    KeepStepResult r = keep_step(p, positions, 0.5, 2, mode);
    auto [keep, flags] = reference(p, positions, 0.5, 2, mode, -1);
    EXPECT_FALSE(r.keep.requires_grad()) << name(mode);
    EXPECT_TRUE(at::equal(r.flags, flags)) << name(mode);
    EXPECT_TRUE(at::allclose(r.keep, keep, 0.0, 1e-6)) << name(mode);
  }
}

TEST(KeepStep, RejectsBadInputs) {
  const at::Tensor p = at::rand({1, 4, 2});
  EXPECT_THROW(keep_step(p.to(at::kDouble), at::arange(4, at::kLong), 0.5, 0, KeepMode::kHard), c10::Error);
  EXPECT_THROW(keep_step(p, at::arange(5, at::kLong), 0.5, 0, KeepMode::kHard), c10::Error);
  EXPECT_THROW(keep_step(p, at::arange(4, at::kLong), 0.5, 0, KeepMode::kHard, 2), c10::Error);
  // int32 positions are accepted (converted).
  EXPECT_TRUE(at::equal(keep_step(p, at::arange(4, at::kInt), 0.5, 1, KeepMode::kHard).flags,
                        keep_step(p, at::arange(4, at::kLong), 0.5, 1, KeepMode::kHard).flags));
}

// agate's CUDA kernel against the CPU twin: values, flags, per-head sums bit for bit (every
// output is a copy, a comparison or a count), gradients bit for bit (a masked copy), over
// shapes from a few elements to more than one grid-stride sweep (odd Hkv included).
TEST(KeepStep, CudaKernelEqualsTheCpuTwin) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device here: the CUDA keep-step kernel is not run";
  if (!keep_step_has_cuda_kernel()) GTEST_SKIP() << "this build has no CUDA kernels (configured without AGATE_USE_CUDA)";
  auto gen = at::make_generator<at::CPUGeneratorImpl>(21);
  std::vector<Case> cases = random_cases(77, 30, 40);
  // Larger than 8 blocks per SM * 256 threads on any current GPU: several sweeps per thread.
  cases.push_back({2, 40000, 8, 0, 4, 0.5, -1});
  cases.push_back({3, 30001, 3, 7, 10, 0.3, -1});
  cases.push_back({1, 50000, 7, 0, 0, 0.5, -1});
  cases.push_back({4, 4099, 5, 2, 4101, 0.5, 1});
  const at::Device cuda(at::kCUDA, 0);
  for (const Case& c : cases) {
    const at::Tensor positions = at::arange(c.start, c.start + c.T, at::kLong);
    const at::Tensor p0 = random_p(c.B, c.T, c.Hkv, c.threshold, gen);
    const at::Tensor g = at::randn({c.B, c.T, c.Hkv}, gen);
    for (KeepMode mode : {KeepMode::kHard, KeepMode::kStraightThrough, KeepMode::kSoft}) {
      const std::string what = c.what() + " " + name(mode);
      at::Tensor pc = p0.to(cuda).requires_grad_(true), p = p0.clone().requires_grad_(true);
      KeepStepResult rc = keep_step(pc, positions.to(cuda), c.threshold, c.sinks, mode, c.forced);
      KeepStepResult r = keep_step(p, positions, c.threshold, c.sinks, mode, c.forced);
      ASSERT_TRUE(rc.keep.is_cuda() && rc.flags.is_cuda() && rc.flag_sum.is_cuda()) << what;
      EXPECT_TRUE(at::equal(rc.keep.cpu(), r.keep)) << what;
      EXPECT_TRUE(at::equal(rc.flags.cpu(), r.flags)) << what;
      EXPECT_TRUE(at::equal(rc.flag_sum.cpu(), r.flag_sum)) << what;
      EXPECT_EQ(rc.keep.requires_grad(), r.keep.requires_grad()) << what;
      if (!r.keep.requires_grad()) continue;
      (rc.keep * g.to(cuda)).sum().backward();
      (r.keep * g).sum().backward();
      EXPECT_TRUE(at::equal(pc.grad().cpu(), p.grad())) << what;
      // A stride-0 upstream gradient (the mean of the surrogate).
      pc.grad().zero_();
      p.grad().zero_();
      keep_step(pc, positions.to(cuda), c.threshold, c.sinks, mode, c.forced).keep.mean().backward();
      keep_step(p, positions, c.threshold, c.sinks, mode, c.forced).keep.mean().backward();
      EXPECT_TRUE(at::allclose(pc.grad().cpu(), p.grad(), 0.0, 0.0)) << what;
    }
    // The twin on CUDA tensors agrees too (the dispatcher's fallback is device-generic), and
    // positions on the CPU are moved to p's device.
    KeepStepResult rt = keep_step_reference(p0.to(cuda), positions, c.threshold, c.sinks, KeepMode::kSoft, c.forced);
    KeepStepResult rk = keep_step(p0.to(cuda), positions, c.threshold, c.sinks, KeepMode::kSoft, c.forced);
    EXPECT_TRUE(at::equal(rt.keep, rk.keep) && at::equal(rt.flags, rk.flags)) << c.what();
  }
}

// Gates made on the CPU with the device named are the same numbers as without it.
TEST(Gates, ExplicitCpuDeviceGivesTheSameParameters) {
  const ModelConfig mc = agate::test::tiny_config(4, 2, false, 53);
  for (const char* type : {"attention", "mlp"}) {
    GateConfig g;
    g.type = kGateTypes.parse(type, "gate.type");
    auto a = Gates::create(g, mc, 9), b = Gates::create(g, mc, 9, c10::Device(c10::kCPU));
    ASSERT_EQ(a->parameters().size(), b->parameters().size());
    EXPECT_EQ(b->device(), c10::Device(c10::kCPU));
    for (size_t i = 0; i < a->parameters().size(); ++i) {
      EXPECT_TRUE(at::equal(a->parameters()[i].second, b->parameters()[i].second)) << a->parameters()[i].first;
      EXPECT_TRUE(b->parameters()[i].second.is_leaf() && b->parameters()[i].second.requires_grad());
    }
  }
}

// Gates on a CUDA device: the same initial values as on the CPU, and key_keep (every layer),
// its statistics and the gradients to every parameter match the CPU gates on the same inputs.
// Without a GPU the second set of gates lives on the CPU too: the comparison still runs (and
// checks that the CPU gates are deterministic), so the test's own logic is exercised here.
TEST(Gates, CudaGatesMatchCpuGates) {
  const bool cuda_here = torch::cuda::is_available();
  const at::Device dev = cuda_here ? at::Device(at::kCUDA, 0) : at::Device(at::kCPU);
  at::globalContext().setAllowTF32CuBLAS(false);
  const ModelConfig mc = agate::test::tiny_config(4, 2, false, 53);
  for (const char* type : {"attention", "mlp"}) {
    for (const char* estimator : {"ste", "soft"}) {
      GateConfig g;
      g.type = kGateTypes.parse(type, "gate.type");
      g.heads = 2;
      g.head_dim = 8;
      g.estimator = kEstimators.parse(estimator, "gate.estimator");
      g.sink_tokens = 2;
      g.init_bias = 0.3;  // p clear of the threshold (no flag flips from rounding); sinks stay 1
      const std::string what = std::string(type) + " " + estimator;
      auto cpu = Gates::create(g, mc, 7), gpu = Gates::create(g, mc, 7, dev);
      for (size_t i = 0; i < cpu->parameters().size(); ++i) {
        const at::Tensor& t = gpu->parameters()[i].second;
        ASSERT_TRUE(t.device() == dev && t.is_leaf() && t.requires_grad()) << what;
        EXPECT_TRUE(at::equal(t.cpu(), cpu->parameters()[i].second)) << what << " " << cpu->parameters()[i].first;
      }
      auto gen = at::make_generator<at::CPUGeneratorImpl>(4);
      const at::Tensor x = at::randn({2, 12, mc.hidden_size}, gen), pos = at::arange(0, 12, at::kLong);
      at::Tensor loss_c = at::zeros({}), loss_g = at::zeros({}, at::TensorOptions().device(dev));
      for (int64_t layer = 0; layer < mc.num_hidden_layers; ++layer) {
        const LayerKeep c = cpu->key_keep(layer, x, pos, true, {}), d = gpu->key_keep(layer, x.to(dev), pos.to(dev), true, {});
        const at::Tensor &kc = c.keep, &kg = d.keep;
        ASSERT_TRUE(kg.device() == dev) << what;
        EXPECT_TRUE(at::allclose(kg.cpu(), kc, 1e-5, 1e-5)) << what << " layer " << layer;
        EXPECT_TRUE(at::equal(d.flags.cpu(), c.flags)) << what << " layer " << layer;
        EXPECT_TRUE(at::allclose(d.flag_mean.cpu(), c.flag_mean, 1e-6, 1e-6)) << what << " layer " << layer;
        const at::Tensor w = at::arange(kc.numel()).view(kc.sizes()).to(at::kFloat) * static_cast<double>(layer + 1);
        loss_c = loss_c + (kc * w).sum(), loss_g = loss_g + (kg * w.to(dev)).sum();
      }
      loss_c.backward(), loss_g.backward();
      for (size_t i = 0; i < cpu->parameters().size(); ++i) {
        const at::Tensor gc = cpu->parameters()[i].second.grad(), gg = gpu->parameters()[i].second.grad();
        ASSERT_TRUE(gc.defined() && gg.defined()) << what << " " << cpu->parameters()[i].first;
        // Relative to the gradient's scale: elements near zero come from cancelling sums that
        // the two devices add in different orders.
        const double diff = (gg.cpu() - gc).abs().max().item<double>(), scale = gc.abs().max().item<double>();
        EXPECT_GT(scale, 0.0) << what << " " << cpu->parameters()[i].first;
        EXPECT_LE(diff, 1e-4 * scale + 1e-6) << what << " " << cpu->parameters()[i].first << ": max |gpu - cpu| "
                                             << diff << ", max |cpu| " << scale;
      }
    }
  }
}
