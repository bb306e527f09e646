#include "policy_args.h"

#include <cstdio>

#include "agate/eval/eval.h"
#include "agate/model/config.h"
#include "agate/util/error.h"

namespace agate::cli {

namespace {

bool is_gate(const std::string& name) { return name == "gate" || name == "gate-post"; }

}  // namespace

std::vector<Option> policy_tuning_options() {
  return {{"window", "N", "SnapKV-family observation window (always kept)", "32; kvpress 64"},
          {"kernel", "N", "SnapKV pooling kernel (odd)", "7; kvpress 5"},
          {"pooling", "NAME", "max | avg", "max; kvpress avg"},
          {"gqa", "NAME", "reduce a KV head's query group by mean | max", "mean"},
          {"sinks", "N", "StreamingLLM sink tokens", "4"},
          {"alpha", "A", "Ada-KV safeguard (each head gets >= alpha x the mean budget)", "0.2"},
          {"beta", "B", "PyramidKV: top layer budget = mean / beta", "20"},
          {"kvpress-compat", "", "kvpress 0.5.5's definitions of the budgets, SnapKV, PyramidKV and Ada-KV (README \"kvpress agreement\")", ""}};
}

evict::PolicyOptions policy_tuning(const Args& args) {
  evict::PolicyOptions o;
  o.kvpress = args.flag("kvpress-compat");
  // Defaults: PolicyOptions', or kvpress's with --kvpress-compat (SnapKVPress: window_size 64,
  // kernel_size 5, avg pooling).
  auto int_or = [&](const char* name, int64_t fallback) { return args.has(name) ? args.get_int(name) : fallback; };
  o.window = int_or("window", o.kvpress ? 64 : o.window);
  o.kernel = int_or("kernel", o.kvpress ? 5 : o.kernel);
  o.pooling = evict::kPoolings.parse(args.get_or("pooling", o.kvpress ? "avg" : evict::kPoolings.name(o.pooling)), "--pooling");
  o.gqa = evict::kGqaReduces.parse(args.get_or("gqa", evict::kGqaReduces.name(o.gqa)), "--gqa");
  o.sinks = int_or("sinks", o.sinks);
  o.alpha = args.has("alpha") ? args.get_double("alpha") : o.alpha;
  o.beta = int_or("beta", o.beta);
  evict::check_policy_options(o);
  return o;
}

std::vector<Option> policy_choice_options(const std::string& default_policy_help) {
  std::vector<Option> out = {
      {"policy", "NAME", "eviction policy: full, streamingllm, h2o, snapkv, pyramidkv, ada-snapkv, ada-pyramid, gate, gate-post, gate-rank, ada-gate (" +
                             default_policy_help + ")", ""},
      {"keep", "R", "the share of the context each layer keeps, in (0, 1] (training-free policies, gate-rank, ada-gate)", ""},
      {"budget", "N", "entries kept per KV head (training-free policies, gate-rank, ada-gate)", ""}};
  for (Option& o : policy_tuning_options()) out.push_back(std::move(o));
  return out;
}

PolicySpec parse_policy_spec(const Args& args, const std::string& fallback, bool have_gates) {
  PolicySpec s;
  s.name = args.get_or("policy", fallback);
  s.options = policy_tuning(args);
  const bool ranked = evict::ranks_by_gates(s.name);
  if (!is_gate(s.name) && !ranked) evict::make_policy(s.name, s.options);  // refuses unknown names with the list
  if ((is_gate(s.name) || ranked) && !have_gates) throw_usage("--policy " + s.name + " needs the gates", "pass --gates EXPORT (agate export)");
  if (args.has("keep") && args.has("budget")) throw_usage("pass at most one of --keep and --budget", "--keep 0.5 or --budget 128");
  s.has_budget = args.has("keep") || args.has("budget");
  if (s.has_budget && (s.name == "full" || is_gate(s.name))) {
    throw_usage("--policy " + s.name + " takes no --keep/--budget (" +
                    (s.name == "full" ? "it keeps every entry)" : "the gates choose what they keep)"),
                "drop --keep/--budget, or pick a training-free policy such as --policy snapkv");
  }
  if (!s.has_budget && !(s.name == "full" || is_gate(s.name))) {
    throw_usage("--policy " + s.name + " needs a budget", "add --keep R (e.g. 0.5) or --budget N (entries per KV head)");
  }
  if (s.has_budget) {
    s.tokens = args.has("budget");
    const eval::Budget b = eval::parse_budget(args.get(s.tokens ? "budget" : "keep"), s.tokens);
    if (b.kind == eval::Budget::MatchGate) {
      throw_usage(std::string("--") + (s.tokens ? "budget" : "keep") + " gate (the gates' own budget) is eval's",
                  "give a number here, e.g. --keep 0.5 or --budget 64");
    }
    s.value = b.value;
  }
  return s;
}

PolicyChoice make_policy_choice(const PolicySpec& spec, Gates* gates, const ModelConfig& c, int64_t context_tokens,
                                bool decode_gating) {
  PolicyChoice out;
  out.layer_budgets.assign(static_cast<size_t>(c.num_hidden_layers), 0);
  if (is_gate(spec.name)) {
    out.policy = evict::gate_policy(gates, spec.name == "gate-post", decode_gating);
    return out;
  }
  if (decode_gating) throw_usage("--gate-decode gates decoded tokens with the gates' own flags", "use it with --policy gate or gate-post");
  if (spec.tokens && spec.value > static_cast<double>(context_tokens)) {
    char budget[32];
    std::snprintf(budget, sizeof(budget), "%.0f", spec.value);  // may be beyond int64
    throw_usage("--budget " + std::string(budget) + " exceeds the context (" +
                    std::to_string(context_tokens) + " tokens)",
                "use a smaller --budget, or --keep R");
  }
  auto scored = evict::make_policy(spec.name, spec.options, gates);
  if (spec.has_budget) {
    out.layer_budgets = scored->layer_budgets(spec.value, spec.tokens, context_tokens, c.num_hidden_layers, c.num_key_value_heads);
  }
  out.policy = std::move(scored);
  return out;
}

}  // namespace agate::cli
