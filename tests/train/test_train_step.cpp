// TrainStep and its device contract: the whole step runs where the model lives, never reads a
// device value back on the host, and skips a bad update on the device.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/library.h>
#ifdef AGATE_USE_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <memory>

#include "agate/dist/dist.h"
#include "agate/gate/gates.h"
#include "agate/model/llama.h"
#include "agate/model/lora.h"
#include "agate/train/adamw.h"
#include "agate/train/train_forward.h"
#include "agate/train/train_step.h"
#include "../tiny_model.h"

// Meta kernels that LibTorch's C++ build lacks (Python registers them in
// torch/_meta_registrations.py): output shapes only, which is all the meta device computes.
namespace {
at::Tensor index_select_meta(const at::Tensor& self, int64_t dim, const at::Tensor& index) {
  std::vector<int64_t> shape = self.sizes().vec();
  if (!shape.empty()) shape[static_cast<size_t>(at::maybe_wrap_dim(dim, self.dim()))] = index.numel();
  return at::empty(shape, self.options());
}
at::Tensor& unary_out_meta(const at::Tensor& self, at::Tensor& out) {
  out.resize_(self.sizes());
  return out;
}
at::Tensor& binary_out_meta(const at::Tensor& self, const at::Tensor& other, at::Tensor& out) {
  out.resize_(at::infer_size(self.sizes(), other.sizes()));
  return out;
}
at::Tensor where_meta(const at::Tensor& cond, const at::Tensor& self, const at::Tensor& other) {
  const auto shape = at::infer_size(at::infer_size(cond.sizes(), self.sizes()), other.sizes());
  return at::empty(shape, self.options().dtype(at::result_type(self, other)));
}
}  // namespace
TORCH_LIBRARY_IMPL(aten, Meta, m) {
  m.impl("where.self", where_meta);
  m.impl("index_select", index_select_meta);
  m.impl("logical_not.out", unary_out_meta);
  m.impl("abs.out", unary_out_meta);
  m.impl("logical_and.out", binary_out_meta);
  m.impl("logical_or.out", binary_out_meta);
}

namespace agate {
namespace {

// A gated model with LoRA on `device`, one TrainStep over it, and fixed host batches.
struct StepRig {
  c10::Device device;
  LlamaModel model;
  std::unique_ptr<Gates> gates;
  std::unique_ptr<LoraAdapters> lora;
  NamedTensors trainable;
  std::unique_ptr<AdamW> opt;
  std::unique_ptr<ProcessGroup> pg;
  std::unique_ptr<TrainForward> forward;
  std::unique_ptr<TrainStep> step;
  at::Tensor tokens, mask;  // host [4, 17]

  // `rule`: gates with gate.rule_feature attention; `objective`: the step's main term
  // (reconstruction trains the gates alone, without distillation, as the recipe check demands).
  StepRig(c10::Device d, const std::string& estimator, bool recompute, RuleFeature rule = RuleFeature::None,
          Objective objective = Objective::Lm)
      : device(d), model(LlamaModel::init_random(test::tiny_config(), 7, at::kFloat, d)) {
    model.set_requires_grad(false);
    GateConfig g;
    g.heads = 2;
    g.head_dim = 8;
    g.init_bias = 0.0;  // about half the tokens evicted: the masked path
    g.estimator = kEstimators.parse(estimator, "gate.estimator");
    g.sink_tokens = 1;
    g.rule_feature = rule;
    gates = Gates::create(g, model.config(), 3, d);
    if (rule != RuleFeature::None) {
      c10::NoGradGuard no_grad;
      gates->parameters().back().second.fill_(0.5);  // a non-zero rule weight: the flags read the feature
    }
    LoraConfig lc;
    lc.rank = 2;
    lc.alpha = 4;
    lc.targets = {"q_proj", "v_proj"};
    if (objective == Objective::Lm) lora = std::make_unique<LoraAdapters>(lc, model.config(), 4, d);  // gates only else
    trainable = gates->parameters();
    if (lora) trainable.insert(trainable.end(), lora->parameters().begin(), lora->parameters().end());
    opt = std::make_unique<AdamW>(trainable, AdamWOptions{});
    pg = ProcessGroup::create(LaunchEnv{}, DistOptions{});
    forward = std::make_unique<TrainForward>(model, gates.get(), lora.get());
    TrainStepOptions so;
    so.micro_batch = 2;
    so.global_batch = 4;
    so.gates = true;
    so.recompute = recompute;
    so.objective = objective;
    so.distill = objective == Objective::Lm ? 0.5 : 0.0;
    so.grad_clip = 1.0;
    step = std::make_unique<TrainStep>([this](const ForwardCall& call) { return (*forward)(call); },
                                       trainable, *opt, *pg, so, d);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
    tokens = at::randint(0, model.config().vocab_size, {4, 17}, gen, at::kLong);
    mask = at::ones({4, 17});
    mask[3].slice(0, 10).zero_();  // padding in one sequence
  }
};

// A context/continuation split: the step's LM loss is the gated model's, with the context's
// queries attending fully (dense_until), over the continuation's targets only.
TEST(TrainStep, ContextSplitLossCountsOnlyTheContinuation) {
  StepRig rig(c10::Device(c10::kCPU), "ste", false);
  const int64_t T = rig.tokens.size(1) - 1, context = 9;
  at::Tensor want, no_split;
  {
    c10::NoGradGuard no_grad;
    auto lm_with = [&](int64_t dense, int64_t from) {
      ForwardOptions fo;
      fo.visibility = rig.gates.get();
      fo.adapter = rig.lora.get();
      fo.train = true;
      fo.dense_until = dense;
      const at::Tensor logits = rig.model.forward(rig.tokens.slice(1, 0, T), fo);
      at::Tensor w = rig.mask.slice(1, 1).clone();
      w.slice(1, 0, from).zero_();
      return lm_loss(logits, rig.tokens.slice(1, 1), w);
    };
    want = lm_with(context, context);
    no_split = lm_with(0, context);
  }
  const StepStats s = rig.step->run(rig.tokens, rig.mask, 1e-3, 0.1, 0.5, {}, context);
  EXPECT_NEAR(s.lm.item<double>(), want.item<double>(), 1e-5);
  EXPECT_GT(std::abs(no_split.item<double>() - want.item<double>()), 1e-4)
      << "the continuation's loss depends on whether the context attended fully";
}

// The meta device has shapes but no data: any .item(), accessor or copy to the host inside the
// step throws, and so does any tensor created on the CPU that meets the model's (a 0-dim CPU
// scalar aside, which CUDA accepts too). So a step that completes on meta is free of host
// reads and device mixing, on every path it took: forward, gates (STE and soft), LoRA,
// recomputation, distillation, sparsity, clipping, the masked AdamW update, the context split
// with rule-feature gates and with the reconstruction objective.
TEST(TrainStepDevice, RunsOnTheMetaDeviceWithoutHostReadsOrDeviceMixing) {
  for (const char* estimator : {"ste", "soft"}) {
    for (bool recompute : {false, true}) {
      SCOPED_TRACE(std::string(estimator) + (recompute ? " + recompute" : ""));
      StepRig rig(c10::Device(c10::kMeta), estimator, recompute);
      StepStats s;
      try {
        // A real-token mask (SFT padding) as the loader gives it: host float, moved by the step.
        s = rig.step->run(rig.tokens, rig.mask, 1e-3, 0.1, 0.5, at::ones_like(rig.mask));
      } catch (const std::exception& e) {
        FAIL() << "the step read a device value on the host or mixed devices: " << e.what();
      }
      for (const at::Tensor& t : {s.loss, s.lm, s.sparsity, s.keep, s.grad_norm, s.ok}) {
        EXPECT_TRUE(t.is_meta());
        EXPECT_EQ(t.dim(), 0);
      }
      for (const auto& [name, p] : rig.trainable) EXPECT_TRUE(p.is_meta()) << name;
      StepWindow w(c10::Device(c10::kMeta));
      ASSERT_NO_THROW(w.add(s));
    }
  }
  // The context/continuation split with rule-feature gates (the attention each key receives,
  // computed in the step) and with the reconstruction objective: the same contract.
  for (const auto& [rule, objective] : {std::pair{RuleFeature::Attention, Objective::Lm},
                                        std::pair{RuleFeature::None, Objective::Reconstruction}}) {
    SCOPED_TRACE(rule == RuleFeature::Attention ? "rule feature + split" : "reconstruction + split");
    StepRig rig(c10::Device(c10::kMeta), "ste", false, rule, objective);
    StepStats s;
    try {
      s = rig.step->run(rig.tokens, rig.mask, 1e-3, 0.1, 0.5, rig.mask, 9);
    } catch (const std::exception& e) {
      FAIL() << "the step read a device value on the host or mixed devices: " << e.what();
    }
    EXPECT_TRUE(s.loss.is_meta() && s.keep.is_meta());
  }
}

TEST(TrainStepDevice, AStepOnTheCpuMovesTheParametersAndReportsFiniteStatistics) {
  StepRig rig(c10::kCPU, "ste", false);
  const at::Tensor before = rig.trainable[0].second.detach().clone();
  const StepStats s = rig.step->run(rig.tokens, rig.mask, 1e-2, 0.1, 0.5);
  EXPECT_TRUE(s.ok.item<bool>());
  EXPECT_TRUE(std::isfinite(s.loss.item<double>()));
  EXPECT_GT(s.grad_norm.item<double>(), 0.0);
  EXPECT_FALSE(at::equal(before, rig.trainable[0].second.detach()));
  StepWindow w(c10::kCPU);
  w.add(s);
  w.add(s);
  const StepWindow::Sums r = w.read(true);
  EXPECT_EQ(r.steps, 2);
  EXPECT_EQ(r.good, 2);
  EXPECT_DOUBLE_EQ(r.loss, 2 * s.loss.item<double>());
}

// A skipped update changes nothing: parameters, both moments and the step counts.
TEST(AdamWMasked, AFalseFlagLeavesTheWholeStateUntouchedAndATrueFlagEqualsAPlainStep) {
  auto make = [] {
    at::Tensor p = at::linspace(-1, 1, 12).view({3, 4}).requires_grad_(true);
    p.mutable_grad() = at::linspace(0.5, -0.5, 12).view({3, 4});
    return p;
  };
  at::Tensor a = make(), b = make(), c = make();
  AdamW oa({{"w", a}}, AdamWOptions{1e-2, 0.9, 0.95, 1e-8, 0.1});
  AdamW ob({{"w", b}}, AdamWOptions{1e-2, 0.9, 0.95, 1e-8, 0.1});
  AdamW oc({{"w", c}}, AdamWOptions{1e-2, 0.9, 0.95, 1e-8, 0.1});
  oa.step(1e-2, at::zeros({}, at::kBool));
  EXPECT_TRUE(at::equal(a.detach(), make().detach()));
  for (const auto& [name, t] : oa.state()) EXPECT_EQ(t.abs().sum().item<double>(), 0.0) << name;
  EXPECT_EQ(oa.steps(), 0);
  ob.step(1e-2, at::ones({}, at::kBool));
  oc.step(1e-2);
  EXPECT_TRUE(at::equal(b.detach(), c.detach()));
  EXPECT_EQ(ob.steps(), 1);
  // The update itself: p - lr * (m / bc1) / (sqrt(v / bc2) + eps) - lr * wd * p, first step.
  const at::Tensor p0 = make().detach(), g = p0.grad().defined() ? p0.grad() : at::linspace(0.5, -0.5, 12).view({3, 4});
  const at::Tensor expect = p0 * (1 - 1e-2 * 0.1) - 1e-2 * g / (g.abs() + 1e-8);
  EXPECT_TRUE(at::allclose(c.detach(), expect, 1e-6, 1e-6));
}

// Defect fixed: the recomputed forward runs without gradients, and the gates used to choose
// hard vs soft by grad mode, so soft gates trained on hard flags forward and soft
// probabilities backward. The training state is now explicit: recomputation changes nothing.
// Also with SFT padding (the keep statistic's real tokens) and a context/continuation split:
// the recomputed layer must read both, as the stored forward did (it used to drop them).
TEST(TrainStepDefects, RecomputationTrainsExactlyLikeTheStoredForwardForSoftAndSteGates) {
  for (const char* estimator : {"soft", "ste"}) {
   for (bool split : {false, true}) {
    SCOPED_TRACE(std::string(estimator) + (split ? " + padding + split" : ""));
    StepRig plain(c10::kCPU, estimator, false), recomputed(c10::kCPU, estimator, true);
    const double lr = 1e-3;
    const at::Tensor real = split ? plain.mask : at::Tensor();
    const int64_t context = split ? 7 : 0;
    for (int i = 0; i < 3; ++i) {
      const StepStats a = plain.step->run(plain.tokens, plain.mask, lr, 0.5, 0.5, real, context);
      const StepStats b = recomputed.step->run(recomputed.tokens, recomputed.mask, lr, 0.5, 0.5, real, context);
      EXPECT_NEAR(a.loss.item<double>(), b.loss.item<double>(), 1e-5) << "step " << i;
      EXPECT_NEAR(a.keep.item<double>(), b.keep.item<double>(), 1e-9) << "step " << i;
      EXPECT_NEAR(a.grad_norm.item<double>(), b.grad_norm.item<double>(), 1e-4 * a.grad_norm.item<double>()) << "step " << i;
    }
    // Adam normalises each coordinate, so a gradient that is ~0 up to rounding can move a
    // parameter by up to 2 lr either way: the bound is that, not rounding.
    for (size_t i = 0; i < plain.trainable.size(); ++i) {
      EXPECT_LE((plain.trainable[i].second - recomputed.trainable[i].second).abs().max().item<double>(), 2 * 3 * lr)
          << plain.trainable[i].first;
    }
   }
  }
}

// Defect fixed: the distillation teacher applied the LoRA adapters being trained; it must be
// the frozen base (no gates, no adapters), while the validation pass keeps them.
TEST(TrainStepDefects, TheDistillationTeacherIsTheFrozenBaseWithoutLoRA) {
  StepRig rig(c10::kCPU, "ste", false);
  {
    c10::NoGradGuard no_grad;
    for (const auto& [name, p] : rig.lora->parameters()) p.normal_(0.0, 0.5);  // B != 0: LoRA changes the output
  }
  c10::NoGradGuard no_grad;
  const at::Tensor inputs = rig.tokens.slice(1, 0, 16);
  const at::Tensor base = rig.model.forward(inputs);
  EXPECT_TRUE(at::equal((*rig.forward)({inputs, {}, Pass::base}).logits, base));
  EXPECT_FALSE(at::allclose((*rig.forward)({inputs, {}, Pass::validate}).logits, base, 1e-3, 1e-3));
}

// The same step on the GPU gives the CPU's numbers (float32; TF32 off for the comparison): the
// plain step, the context/continuation split with rule-feature gates (the attention each key
// receives, computed on the device) and the per-layer reconstruction objective with the split.
// Without a GPU the second rig lives on the CPU too, so the test's own logic still runs here.
TEST(TrainStepDevice, CudaStepMatchesTheCpuStep) {
  const c10::Device dev = torch::cuda::is_available() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  at::globalContext().setAllowTF32CuBLAS(false);
  struct Case {
    const char* what;
    RuleFeature rule;
    Objective objective;
    int64_t context;
  };
  for (const Case& c : {Case{"plain", RuleFeature::None, Objective::Lm, 0},
                        Case{"rule feature + split", RuleFeature::Attention, Objective::Lm, 9},
                        Case{"reconstruction + split", RuleFeature::None, Objective::Reconstruction, 9}}) {
    SCOPED_TRACE(c.what);
    StepRig cpu(c10::kCPU, "ste", false, c.rule, c.objective),
        gpu(dev, "ste", false, c.rule, c.objective);
    const at::Tensor real = c.context > 0 ? cpu.mask : at::Tensor();
    for (int i = 0; i < 3; ++i) {
      const StepStats a = cpu.step->run(cpu.tokens, cpu.mask, 1e-2, 0.1, 0.5, real, c.context);
      StepStats b;
#ifdef AGATE_USE_CUDA
      // CUDA's own check: any synchronising call inside the step (a device-to-host copy, an
      // .item(), a stream or device synchronize) throws while the mode is L_ERROR.
      c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
      try {
        b = gpu.step->run(gpu.tokens, gpu.mask, 1e-2, 0.1, 0.5, real, c.context);
      } catch (const std::exception& e) {
        c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
        FAIL() << "the CUDA step synchronised with the host: " << e.what();
      }
      c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
#else
      b = gpu.step->run(gpu.tokens, gpu.mask, 1e-2, 0.1, 0.5, real, c.context);
#endif
      EXPECT_NEAR(a.loss.item<double>(), b.loss.item<double>(), 1e-4) << "step " << i;
      EXPECT_NEAR(a.keep.item<double>(), b.keep.item<double>(), 1e-6) << "step " << i;
    }
    for (size_t i = 0; i < cpu.trainable.size(); ++i) {
      EXPECT_TRUE(at::allclose(cpu.trainable[i].second.detach(), gpu.trainable[i].second.detach().cpu(), 1e-4, 1e-4))
          << cpu.trainable[i].first;
    }
  }
}

}  // namespace
}  // namespace agate
