#include "agate/train/adamw.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <map>

#include "agate/util/error.h"

namespace agate {

AdamW::AdamW(NamedTensors params, AdamWOptions options) : params_(std::move(params)), opt_(options) {
  for (const auto& kv : params_) {
    m_.push_back(at::zeros_like(kv.second, at::MemoryFormat::Contiguous).detach());
    v_.push_back(at::zeros_like(kv.second, at::MemoryFormat::Contiguous).detach());
    t_.push_back(at::zeros({}, kv.second.options().dtype(at::kFloat)).detach());
  }
}

void AdamW::step(double lr, const at::Tensor& apply) {
  c10::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor p = params_[i].second;
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    // The candidate update, computed out of place; `apply` selects it or the old state.
    at::Tensor t = t_[i] + 1;                                          // [] float32
    at::Tensor td = t.to(at::kDouble);
    at::Tensor bc1 = 1.0 - at::pow(opt_.beta1, td), bc2 = 1.0 - at::pow(opt_.beta2, td);  // [] float64
    at::Tensor m = at::add(m_[i] * opt_.beta1, g, 1.0 - opt_.beta1);
    at::Tensor v = at::addcmul(v_[i] * opt_.beta2, g, g, 1.0 - opt_.beta2);
    at::Tensor denom = (v.sqrt() / bc2.sqrt().to(v.scalar_type())).add_(opt_.eps);
    at::Tensor q = opt_.weight_decay != 0 ? p * (1.0 - lr * opt_.weight_decay) : p.clone();
    q.sub_(m / denom * (lr / bc1).to(p.scalar_type()));
    if (apply.defined()) {
      p.copy_(at::where(apply, q, p));
      m_[i].copy_(at::where(apply, m, m_[i]));
      v_[i].copy_(at::where(apply, v, v_[i]));
      t_[i].copy_(at::where(apply, t, t_[i]));
    } else {
      p.copy_(q), m_[i].copy_(m), v_[i].copy_(v), t_[i].copy_(t);
    }
  }
}

void AdamW::zero_grad() {
  for (auto& kv : params_) kv.second.mutable_grad() = at::Tensor();
}

int64_t AdamW::steps() const {
  if (t_.empty()) return 0;
  return static_cast<int64_t>(at::stack(t_).max().item<float>());
}

NamedTensors AdamW::state() const {
  NamedTensors out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.push_back({params_[i].first + ".exp_avg", m_[i]});
    out.push_back({params_[i].first + ".exp_avg_sq", v_[i]});
    out.push_back({params_[i].first + ".step", t_[i]});
  }
  return out;
}

void AdamW::load_state(const NamedTensors& state, int64_t steps, const std::string& source) {
  c10::NoGradGuard no_grad;
  std::map<std::string, at::Tensor> by_name(state.begin(), state.end());
  for (size_t i = 0; i < params_.size(); ++i) {
    for (auto [suffix, dst] : {std::pair<const char*, at::Tensor*>{".exp_avg", &m_[i]}, {".exp_avg_sq", &v_[i]}}) {
      auto it = by_name.find(params_[i].first + suffix);
      if (it == by_name.end() || it->second.sizes() != dst->sizes()) {
        throw_input(source, "optimizer state for '" + params_[i].first + "' is missing or has the wrong shape",
                    "the checkpoint belongs to another model or gate configuration");
      }
      if (!at::isfinite(it->second).all().item<bool>()) {
        throw_input(source, "optimizer state '" + params_[i].first + suffix + "' holds NaN/inf",
                    "the checkpoint is damaged: resume from an older one with --resume-from");
      }
      dst->copy_(it->second);
    }
    auto st = by_name.find(params_[i].first + ".step");
    if (st != by_name.end()) t_[i].copy_(st->second.reshape({}));
    else t_[i].fill_(static_cast<double>(steps));
  }
}

}  // namespace agate
