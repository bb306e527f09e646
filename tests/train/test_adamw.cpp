// agate's AdamW against torch.optim.AdamW (the oracle): the trajectory in
// tests/fixtures/adamw/adamw.safetensors was written by tools/gen_adamw_fixture.py on torch 2.11.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "agate/io/safetensors.h"
#include "agate/train/adamw.h"
#include "../test_util.h"

namespace agate {
namespace {

TEST(AdamW, FollowsTorchsAdamWIncludingAParameterWithoutAGradient) {
  const SafetensorsFile f = SafetensorsFile::open(test::source_path("tests/fixtures/adamw/adamw.safetensors"));
  const std::vector<double> lrs = {1e-2, 5e-3, 1e-2, 2e-3};
  NamedTensors params;
  for (int i = 0; i < 2; ++i) {
    params.push_back({"p" + std::to_string(i), f.tensor("init." + std::to_string(i)).clone().requires_grad_(true)});
  }
  AdamW opt(params, AdamWOptions{lrs[0], 0.9, 0.95, 1e-8, 0.1});
  for (size_t s = 0; s < lrs.size(); ++s) {
    for (int i = 0; i < 2; ++i) {
      const std::string g = "grad." + std::to_string(s) + "." + std::to_string(i);
      params[i].second.mutable_grad() = f.find(g) ? f.tensor(g).clone() : at::Tensor();
    }
    opt.step(lrs[s]);
    const NamedTensors state = opt.state();  // p0.exp_avg, p0.exp_avg_sq, p0.step, p1...
    for (int i = 0; i < 2; ++i) {
      const std::string at_ = std::to_string(s) + "." + std::to_string(i);
      EXPECT_TRUE(at::allclose(params[i].second.detach(), f.tensor("param." + at_), 1e-6, 1e-7)) << "param " << at_;
      EXPECT_TRUE(at::allclose(state[3 * i].second, f.tensor("exp_avg." + at_), 1e-6, 1e-8)) << "exp_avg " << at_;
      EXPECT_TRUE(at::allclose(state[3 * i + 1].second, f.tensor("exp_avg_sq." + at_), 1e-6, 1e-10)) << "exp_avg_sq " << at_;
    }
  }
  // The second parameter missed one step: its own count is 3, the first one's 4 (torch's
  // per-parameter state; one global counter would get its bias correction wrong).
  const NamedTensors state = opt.state();
  EXPECT_EQ(state[2].second.item<float>(), 4.0f);
  EXPECT_EQ(state[5].second.item<float>(), 3.0f);
}

}  // namespace
}  // namespace agate
