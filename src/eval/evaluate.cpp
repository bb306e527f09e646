// Runs every policy over a task at each budget and scores the continuations.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <set>

#include "agate/eval/eval.h"
#include "agate/model/llama.h"
#include "agate/util/error.h"
#include "agate/util/logging.h"
#include "agate/util/timer.h"

namespace agate::eval {

namespace {

struct CandidateScore {
  double logprob = 0;  // summed over the candidate's tokens
  bool greedy = true;  // every token is the argmax
  int64_t hits = 0;    // tokens that are the argmax
};

// Scores `cand` after a compressed context, over a copy of its cache (the compressed cache
// itself stays untouched for the next candidate).
// `lead` (unscored) then `cand` (scored), teacher-forced over a copy of the compressed cache.
CandidateScore score(const LlamaModel& model, ProjectionAdapter* adapter, const evict::Compressed& c,
                     const std::vector<int64_t>& cand, const std::vector<int64_t>& lead = {}) {
  std::vector<int64_t> all = lead;
  all.insert(all.end(), cand.begin(), cand.end());
  const at::Tensor logits =
      evict::continuation_logits(model, adapter, c, all).slice(0, static_cast<int64_t>(lead.size()));  // [n, V]
  at::Tensor target = at::tensor(cand, at::kLong).to(logits.device());
  at::Tensor lp = at::log_softmax(logits, -1).gather(1, target.unsqueeze(1));
  CandidateScore s;
  s.logprob = lp.sum().item<double>();
  s.hits = logits.argmax(-1).eq(target).sum().item<int64_t>();
  s.greedy = s.hits == static_cast<int64_t>(cand.size());
  return s;
}

}  // namespace

std::string Budget::label() const {
  char buf[48];
  if (kind == MatchGate) return "= gate";
  if (kind == Tokens) std::snprintf(buf, sizeof(buf), "%lld tok", (long long)value);
  else std::snprintf(buf, sizeof(buf), "keep %.2f", value);
  return buf;
}

Budget parse_budget(const std::string& text, bool tokens) {
  if (text == "gate") return {Budget::MatchGate, 0};
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !std::isfinite(v)) throw_usage("bad budget '" + text + "' (a number, or gate)");
  if (tokens) {
    if (v < 1 || v != std::floor(v)) throw_usage("--budget takes whole tokens per KV head >= 1, got '" + text + "'", "e.g. --budget 64");
    return {Budget::Tokens, v};
  }
  if (v <= 0 || v > 1) throw_usage("--keep takes ratios in (0, 1], got '" + text + "'", "the share of the context kept, e.g. --keep 0.5");
  return {Budget::Keep, v};
}

namespace {

bool uses_gates(const std::string& policy) {
  return policy == "gate" || policy == "gate-post" || evict::ranks_by_gates(policy);
}

// Paired bootstrap intervals: every row against the full cache; every gate row against the
// best training-free row of its budget ("learned" rows against the "= gate" budget's).
void add_intervals(Report& rep) {
  const Row& full = rep.rows.front();
  for (Row& w : rep.rows) {
    if (&w != &full) w.ci_full = paired_bootstrap(w.parts, full.parts);
    if (!uses_gates(w.policy)) continue;
    const std::string budget = w.budget == "learned" ? "= gate" : w.budget;
    const Row* best = nullptr;
    for (const Row& b : rep.rows) {
      if (uses_gates(b.policy) || b.policy == "full" || b.budget != budget) continue;
      if (!best || (rep.higher_is_better ? b.metric > best->metric : b.metric < best->metric)) best = &b;
    }
    if (!best) continue;
    w.best_baseline = best->policy;
    w.vs_best = w.metric - best->metric;
    w.ci_best = paired_bootstrap(w.parts, best->parts);
  }
}

}  // namespace

Report evaluate(const LlamaModel& model, const Task& task, const EvalOptions& o) {
  c10::InferenceMode guard;
  const ModelConfig& mc = model.config();
  const int64_t L = mc.num_hidden_layers, Hkv = mc.num_key_value_heads;
  if (task.samples.empty()) throw_usage("the task has no samples");
  for (size_t i = 0; i < task.samples.size(); ++i) {  // positions past the model's are not what it was trained on
    const Sample& x = task.samples[i];
    size_t longest = 0;
    for (const auto& c : x.candidates) longest = std::max(longest, c.size());
    const int64_t n = static_cast<int64_t>(x.context.size() + x.lead.size() + longest);
    if (n > mc.max_position_embeddings) {
      throw_usage("sample " + std::to_string(i) + " of " + task.name + " needs " + std::to_string(n) +
                      " positions, more than the model's max_position_embeddings (" + std::to_string(mc.max_position_embeddings) + ")",
                  "use a shorter --context/--continuation, or shorter samples");
    }
  }
  std::set<std::string> named;
  for (const auto& p : o.policies) {
    if (!named.insert(p).second) throw_usage("--policies lists " + p + " twice", "name each policy once");
  }
  auto wants = [&](const char* name) { return std::find(o.policies.begin(), o.policies.end(), name) != o.policies.end(); };
  const bool want_gate = wants("gate"), want_post = wants("gate-post");
  bool match = false;
  for (const Budget& b : o.budgets) match |= b.kind == Budget::MatchGate;
  if ((want_gate || want_post || match) && !o.gates) throw_usage("the gate policies and --match-gate need --gates EXPORT");
  if (match && o.policy.kvpress) {
    throw_usage("--match-gate has no kvpress counterpart (kvpress's budgets, PyramidKV's schedule included, follow a keep ratio)",
                "use --keep or --budget with --kvpress-compat");
  }
  int64_t shortest = INT64_MAX;
  size_t shortest_i = 0;
  for (size_t i = 0; i < task.samples.size(); ++i) {
    if (static_cast<int64_t>(task.samples[i].context.size()) < shortest) shortest = task.samples[i].context.size(), shortest_i = i;
  }
  for (const Budget& b : o.budgets) {
    if (b.kind == Budget::Tokens && b.value > static_cast<double>(shortest)) {
      throw_usage("a budget of " + std::to_string(static_cast<int64_t>(b.value)) + " tokens per KV head exceeds the context of sample " +
                      std::to_string(shortest_i) + " (" + std::to_string(shortest) + " tokens)",
                  "use a smaller --budget, or a keep ratio with --keep");
    }
  }
  std::vector<std::unique_ptr<evict::ScoredPolicy>> baselines;
  for (const auto& name : o.policies) {
    if (name != "gate" && name != "gate-post" && name != "full") baselines.push_back(evict::make_policy(name, o.policy, o.gates));
  }

  Report rep;
  rep.task = task.name;
  rep.samples = static_cast<int64_t>(task.samples.size());
  rep.metric_name = task.metric == Metric::Perplexity ? "perplexity" : task.metric == Metric::Accuracy ? "accuracy" : "passkey accuracy";
  rep.higher_is_better = task.metric != Metric::Perplexity;
  std::vector<std::vector<int64_t>> gate_entries(task.samples.size());
  const std::vector<int64_t> none(static_cast<size_t>(L), 0);

  // One row's sums; add() scores one sample's compressed context, finish() appends the row.
  struct Acc {
    Row row;
    double nll = 0, tokens = 0, hits = 0, correct = 0, keep = 0, bytes = 0, prefill = 0, plain = 0, seconds = 0;
  };
  const size_t n = task.samples.size();
  auto start = [&](const std::string& policy, const std::string& label) {
    Acc a;
    a.row.policy = policy;
    a.row.budget = label;
    a.row.parts.exp = task.metric == Metric::Perplexity;
    return a;
  };
  // c: sample i compressed; plain: a plain full prefill's seconds; spent: seconds so far
  // (prefill and selection), the scoring's are added here.
  auto add = [&](Acc& a, size_t i, const evict::Compressed& c, double plain, double spent) {
    const Sample& s = task.samples[i];
    const double t0 = now_seconds();
    int64_t stored = 0;
    for (int64_t e : c.layer_entries) stored += e;
    a.keep += static_cast<double>(stored) / static_cast<double>(L * Hkv * static_cast<int64_t>(s.context.size()));
    a.bytes += static_cast<double>(c.cache->bytes());
    a.prefill += c.prefill_seconds + c.select_seconds;
    a.plain += plain;
    bool ok = false;
    if (task.metric == Metric::Perplexity) {
      const double lp = score(model, o.adapter, c, s.candidates[0], s.lead).logprob;
      a.nll -= lp;
      a.tokens += static_cast<double>(s.candidates[0].size());
      a.row.parts.num.push_back(-lp);
      a.row.parts.den.push_back(static_cast<double>(s.candidates[0].size()));
    } else if (task.metric == Metric::ExactMatch) {
      const CandidateScore cs = score(model, o.adapter, c, s.candidates[0], s.lead);
      ok = cs.greedy;
      a.hits += static_cast<double>(cs.hits);
      a.tokens += static_cast<double>(s.candidates[0].size());
    } else {
      size_t best = 0;
      double best_lp = -INFINITY;
      for (size_t k = 0; k < s.candidates.size(); ++k) {
        const double lp = score(model, o.adapter, c, s.candidates[k], s.lead).logprob;
        if (lp > best_lp) best_lp = lp, best = k;
      }
      ok = static_cast<int64_t>(best) == s.answer;
    }
    a.correct += ok;
    if (task.metric != Metric::Perplexity) a.row.parts.num.push_back(ok ? 1.0 : 0.0), a.row.parts.den.push_back(1.0);
    if (!s.group.empty()) {
      auto& g = a.row.groups[s.group];
      g.first += ok, g.second += 1;
    }
    a.seconds += spent + now_seconds() - t0;
  };
  auto finish = [&](Acc& a) {
    Row& row = a.row;
    const double dn = static_cast<double>(n);
    row.keep = a.keep / dn;
    row.kv_bytes = a.bytes / dn;
    row.metric = task.metric == Metric::Perplexity ? std::exp(a.nll / a.tokens) : a.correct / dn;
    row.samples_per_s = dn / std::max(a.seconds, 1e-9);
    if (task.metric == Metric::ExactMatch) row.token_accuracy = a.hits / a.tokens;
    row.overhead = a.prefill / std::max(a.plain, 1e-12);
    row.delta = rep.rows.empty() ? 0 : row.metric - rep.rows.front().metric;
    rep.rows.push_back(row);
  };
  // A plain full prefill of a context (interleaved with the policies, so machine noise hits both alike).
  auto plain_prefill = [&](const Sample& s) {
    ForwardOptions fo;
    fo.adapter = o.adapter;
    fo.last_only = true;  // as the policies' prefills
    const double t0 = now_seconds();
    model.forward(at::tensor(s.context, at::kLong).unsqueeze(0), fo);
    return now_seconds() - t0;
  };

  // The policies without a budget (full, the gates in the prefill, gate-post): each its own prefill.
  auto run = [&](const evict::Policy& p, const std::string& label) {
    Acc a = start(p.name(), label);
    for (size_t i = 0; i < n; ++i) {
      const double plain = plain_prefill(task.samples[i]);
      const double t0 = now_seconds();
      const evict::Compressed c = p.compress(model, o.adapter, task.samples[i].context, none);
      if (p.name() == "gate") gate_entries[i] = c.layer_entries;
      add(a, i, c, plain, now_seconds() - t0);
    }
    log::info("eval {}: {} samples", p.name(), n);
    finish(a);
  };

  // Warm-up (allocator, thread pool, oneDNN primitives) so the first timed policy is not charged for it.
  for (int i = 0; i < 2; ++i) evict::make_policy("full", o.policy)->compress(model, o.adapter, task.samples[0].context, none);
  run(*evict::make_policy("full", o.policy), "-");
  std::unique_ptr<evict::Policy> gate = o.gates ? evict::gate_policy(o.gates) : nullptr;
  if (want_gate || match) run(*gate, "learned");
  if (want_post) run(*evict::gate_policy(o.gates, true), "learned");

  // Every budgeted policy at every budget from ONE recorded full prefill per sample (their
  // selections differ, the prefill does not); each row is charged the shared prefill's time.
  bool need_p = false;
  for (const auto& p : baselines) need_p |= evict::ranks_by_gates(p->name());
  std::vector<Acc> accs;
  for (const Budget& b : o.budgets)
    for (const auto& p : baselines) accs.push_back(start(p->name(), b.label()));
  const double t_all = now_seconds();
  for (size_t i = 0; i < n && !baselines.empty(); ++i) {
    const Sample& s = task.samples[i];
    const double plain = plain_prefill(s);
    evict::PrefillRecord rec;
    const double t0 = now_seconds();
    const at::Tensor last = need_p ? evict::record_prefill_with_gates(model, o.adapter, s.context, rec, o.gates)
                                   : evict::record_prefill(model, o.adapter, s.context, rec);
    const double prefill = now_seconds() - t0;
    size_t k = 0;
    for (const Budget& b : o.budgets) {
      for (const auto& p : baselines) {
        const std::vector<int64_t> budgets =
            b.kind == Budget::MatchGate ? gate_entries[i]
                                        : p->layer_budgets(b.value, b.kind == Budget::Tokens, static_cast<int64_t>(s.context.size()), L, Hkv);
        const double t1 = now_seconds();
        evict::Compressed c = p->compress_from(rec, last, budgets);
        c.prefill_seconds = prefill;
        add(accs[k++], i, c, plain, prefill + now_seconds() - t1);
      }
    }
    if ((i + 1) % std::max<size_t>(1, n / 8) == 0 || i + 1 == n) {
      const double el = now_seconds() - t_all;
      log::info("eval {} policies x {} budgets: {}/{} samples ({:.0f} s, about {:.0f} s left)", baselines.size(),
                o.budgets.size(), i + 1, n, el, el / static_cast<double>(i + 1) * static_cast<double>(n - i - 1));
    }
  }
  for (Acc& a : accs) finish(a);
  if (!want_gate && match) rep.rows.erase(rep.rows.begin() + 1);  // the gate ran only to set the budgets
  add_intervals(rep);
  return rep;
}

}  // namespace agate::eval
