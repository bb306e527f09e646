// Devices: what --device / run.device accept and refuse, and the model on CUDA against the CPU.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "agate/model/llama.h"
#include "agate/util/device.h"
#include "agate/util/threads.h"

#include <algorithm>
#include <thread>
#include "../test_util.h"
#include "../tiny_model.h"

namespace agate {
namespace {

TEST(Device, SpecsResolveAndBadOnesAreRefusedWithAHint) {
  EXPECT_EQ(resolve_device("cpu"), c10::Device(c10::kCPU));
  EXPECT_EQ(resolve_device("auto").type(), torch::cuda::is_available() ? c10::kCUDA : c10::kCPU);
  const std::string bad = test::error_of([] { resolve_device("tpu:0"); });
  EXPECT_NE(bad.find("--device 'tpu:0' is not a device"), std::string::npos) << bad;
  EXPECT_NE(bad.find("auto, cpu, cuda or cuda:N"), std::string::npos) << bad;
  if (!torch::cuda::is_available()) {
    // One clear line on a machine without CUDA, not a crash deep inside torch.
    const std::string msg = test::error_of([] { resolve_device("cuda", 0, "run.device"); });
    EXPECT_NE(msg.find("run.device cuda: no CUDA device is available"), std::string::npos) << msg;
    EXPECT_NE(msg.find("use run.device cpu"), std::string::npos) << msg;
  } else {
    const std::string msg = test::error_of([] { resolve_device("cuda:99"); });
    EXPECT_NE(msg.find("CUDA device(s) are visible"), std::string::npos) << msg;
  }
  EXPECT_NE(build_info().find("torch 2.11"), std::string::npos) << build_info();
}

// The same weights on both devices give the same logits: float32 tightly (TF32 off);
// bfloat16 within its precision, i.e. the GPU's bfloat16 logits are no further from the float32
// logits than the CPU's bfloat16 logits are (both round the same float32 weights; the kernels
// round their intermediates differently, so a fixed absolute bound is the wrong test).
TEST(Device, CudaLogitsMatchTheCpuInFloat32AndBfloat16) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device on this machine (runs in scripts/test_gpu.sh)";
  at::globalContext().setAllowTF32CuBLAS(false);
  const c10::Device gpu(c10::kCUDA, 0);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const at::Tensor tokens = at::randint(0, 61, {2, 24}, gen, at::kLong);
  auto logits = [&](c10::ScalarType dtype, c10::Device device) {
    const LlamaModel m = LlamaModel::init_random(test::tiny_config(), 3, dtype, device);
    EXPECT_EQ(m.device(), device);
    return m.forward(tokens).to(at::kCPU, at::kFloat);
  };
  const at::Tensor ref = logits(at::kFloat, c10::kCPU);
  const double f32 = (logits(at::kFloat, gpu) - ref).abs().max().item<double>();
  EXPECT_LT(f32, 1e-4) << "float32";
  const double bf_cpu = (logits(at::kBFloat16, c10::kCPU) - ref).abs().max().item<double>();
  const double bf_gpu = (logits(at::kBFloat16, gpu) - ref).abs().max().item<double>();
  EXPECT_LT(bf_gpu, 2 * bf_cpu + 1e-3) << "bfloat16: GPU off float32 by " << bf_gpu << ", CPU by " << bf_cpu;
}

}  // namespace
}  // namespace agate

// --threads / run.threads: hundreds of threads on a few cores used to hang the machine (issue
// 16); above 4 x the cores (and above 1024) is refused with a hint.
TEST(Threads, AboveFourTimesTheCoresIsRefusedWithAHint) {
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  const std::string m = agate::test::error_of([&] { agate::configure_threads(4 * std::max(cores, 1) + 1); });
  EXPECT_NE(m.find("--threads / run.threads " + std::to_string(4 * std::max(cores, 1) + 1) + " is above"), std::string::npos) << m;
  EXPECT_NE(m.find("hint: use 0 (all cores"), std::string::npos) << m;
  EXPECT_NE(agate::test::error_of([] { agate::configure_threads(100000); }).find("is above"), std::string::npos);
  EXPECT_NE(agate::test::error_of([] { agate::check_thread_count(100000, "--threads"); }).find("--threads 100000 is above"), std::string::npos);
  EXPECT_EQ(agate::test::error_of([] { agate::check_thread_count(1, "--threads"); }), "");
}
