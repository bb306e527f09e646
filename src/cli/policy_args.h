// The eviction-policy options that eval, generate and score share (cli-internal header).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "agate/evict/policy.h"
#include "args.h"

namespace agate {
class Gates;
struct ModelConfig;
}  // namespace agate

namespace agate::cli {

// --window --kernel --pooling --gqa --sinks --alpha --beta --kvpress-compat
std::vector<Option> policy_tuning_options();
// Parsed and checked; with --kvpress-compat the options not given take kvpress's defaults
// (window 64, kernel 5, avg pooling, mean GQA) and conflicting ones are refused.
evict::PolicyOptions policy_tuning(const Args& args);

// generate and score: --policy NAME with --keep R or --budget N, plus the tuning options.
std::vector<Option> policy_choice_options(const std::string& default_policy_help);

// What --policy/--keep/--budget ask for, checked before any work.
struct PolicySpec {
  std::string name;            // a baseline name, gate or gate-post
  bool has_budget = false;     // --keep or --budget given
  bool tokens = false;         // --budget (tokens per KV head) rather than --keep
  double value = 1.0;
  evict::PolicyOptions options;
};
// `fallback`: the policy when --policy is absent. Refuses unknown names, --keep with --budget,
// a keep outside (0, 1], a budget for full or the gates, a baseline without one, and the
// gates without --gates (have_gates), each with a hint.
PolicySpec parse_policy_spec(const Args& args, const std::string& fallback, bool have_gates);

struct PolicyChoice {
  std::unique_ptr<evict::Policy> policy;
  std::vector<int64_t> layer_budgets;  // one per layer
};
// The policy and its per-layer budgets for a context of `context_tokens` (a --budget larger
// than the context is refused). gates: required for gate and gate-post.
PolicyChoice make_policy_choice(const PolicySpec& spec, Gates* gates, const ModelConfig& config, int64_t context_tokens,
                                bool decode_gating = false);

}  // namespace agate::cli
