#include "agate/train/adamw.h"

#include <c10/core/GradMode.h>
#include <ATen/ATen.h>

#include <cmath>
#include <map>

#include "agate/util/error.h"

namespace agate {

AdamW::AdamW(NamedTensors params, AdamWOptions options) : params_(std::move(params)), opt_(options) {
  for (const auto& kv : params_) {
    m_.push_back(at::zeros_like(kv.second, at::MemoryFormat::Contiguous).detach());
    v_.push_back(at::zeros_like(kv.second, at::MemoryFormat::Contiguous).detach());
  }
}

void AdamW::step(double lr) {
  c10::NoGradGuard no_grad;
  steps_ += 1;
  const double bc1 = 1.0 - std::pow(opt_.beta1, static_cast<double>(steps_));
  const double bc2 = 1.0 - std::pow(opt_.beta2, static_cast<double>(steps_));
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor p = params_[i].second;
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    if (opt_.weight_decay != 0) p.mul_(1.0 - lr * opt_.weight_decay);
    m_[i].mul_(opt_.beta1).add_(g, 1.0 - opt_.beta1);
    v_[i].mul_(opt_.beta2).addcmul_(g, g, 1.0 - opt_.beta2);
    at::Tensor denom = (v_[i].sqrt() / std::sqrt(bc2)).add_(opt_.eps);
    p.addcdiv_(m_[i], denom, -lr / bc1);
  }
}

void AdamW::zero_grad() {
  for (auto& kv : params_) kv.second.mutable_grad() = at::Tensor();
}

NamedTensors AdamW::state() const {
  NamedTensors out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.push_back({params_[i].first + ".exp_avg", m_[i]});
    out.push_back({params_[i].first + ".exp_avg_sq", v_[i]});
  }
  return out;
}

void AdamW::load_state(const NamedTensors& state, int64_t steps, const std::string& source) {
  std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
  for (size_t i = 0; i < params_.size(); ++i) {
    for (auto [suffix, dst] : {std::pair<const char*, at::Tensor*>{".exp_avg", &m_[i]}, {".exp_avg_sq", &v_[i]}}) {
      auto it = by_name.find(params_[i].first + suffix);
      if (it == by_name.end() || it->second.sizes() != dst->sizes()) {
        throw_input(source, "optimizer state for '" + params_[i].first + "' is missing or has the wrong shape",
                    "the checkpoint belongs to another model or gate configuration");
      }
      dst->copy_(it->second);
    }
  }
  steps_ = steps;
}

}  // namespace agate
