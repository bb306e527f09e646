#include "agate/gate/rule_feature.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include "agate/model/attention.h"
#include "agate/util/error.h"

namespace agate {

at::Tensor rule_features(const at::Tensor& q, const at::Tensor& k, int64_t context_end) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), hd = q.size(3), Hkv = k.size(1);
  if (k.size(2) != T || H % Hkv != 0 || context_end < 1 || context_end > T) {
    throw_internal("rule_features: bad shapes or context_end " + std::to_string(context_end));
  }
  c10::NoGradGuard no_grad;
  const at::Tensor qg = q.detach().to(at::kFloat).view({B, Hkv, H / Hkv, T, hd});
  const at::Tensor received = attention_received(qg, k.detach().to(at::kFloat), context_end).mean(2);  // [B, Hkv, T]
  const at::Tensor seen = (context_end - at::arange(T, received.options())).clamp_min(1.0).log();     // [T]
  return at::stack({(received + 1e-6).log(), seen.view({1, 1, T}).expand({B, Hkv, T})}, -1).transpose(1, 2);
}

}  // namespace agate
