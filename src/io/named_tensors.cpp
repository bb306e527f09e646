#include "agate/io/named_tensors.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <map>

#include "agate/util/error.h"

namespace agate {

void load_named(const NamedTensors& params, const NamedTensors& values, const std::string& source,
                const std::string& what, const std::string& hint) {
  std::map<std::string, at::Tensor> by_name(values.begin(), values.end());
  if (by_name.size() != params.size()) {
    throw_input(source, "holds " + std::to_string(by_name.size()) + " " + what + " tensors, the " + what + " config needs " +
                            std::to_string(params.size()),
                hint);
  }
  c10::NoGradGuard no_grad;
  for (const auto& [name, t] : params) {
    auto it = by_name.find(name);
    if (it == by_name.end()) throw_input(source, "lacks " + what + " tensor '" + name + "'", hint);
    if (it->second.sizes() != t.sizes()) throw_input(source, what + " tensor '" + name + "' has the wrong shape", hint);
    t.detach().copy_(it->second);
  }
}

}  // namespace agate
