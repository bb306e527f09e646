// The eviction policies: a recorded full prefill, each baseline's selection, and the gates.
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>

#include "agate/evict/policy.h"
#include "agate/gate/gates.h"
#include "agate/model/attention.h"
#include "agate/model/kv_cache.h"
#include "agate/model/llama.h"
#include "agate/util/error.h"
#include "agate/util/timer.h"

namespace agate::evict {

namespace {

// Full causal attention (the uncompressed prefill, as every baseline runs it) that records
// each layer's queries, keys and values.
class RecordingCache : public KVCache {
 public:
  explicit RecordingCache(PrefillRecord& r) : r_(r) {}
  int64_t length() const override { return 0; }
  at::Tensor attend(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor&,
                    int64_t sliding_window, int64_t) override {
    if (static_cast<size_t>(layer) != r_.k.size()) throw_internal("record_prefill: layers must arrive in order");
    r_.q.push_back(q[0].to(at::kFloat));
    r_.k.push_back(k[0]);
    r_.v.push_back(v[0]);
    at::Tensor pos = at::arange(0, q.size(2), q.options().dtype(at::kLong));
    return masked_attention(q, k, v, pos, pos, at::Tensor(), sliding_window, 0);
  }
  void advance(int64_t) override {}
  int64_t bytes() const override { return 0; }

 private:
  PrefillRecord& r_;
};

at::Tensor context_tensor(const std::vector<int64_t>& context) {
  if (context.empty()) throw_usage("a policy needs a context of at least one token");
  return at::tensor(context, at::kLong).unsqueeze(0);
}

// Flags [T, Hkv] with, for head g, positions `always` (a range at the end) plus the top
// `extra[g]` of scores[g] over positions [0, n).
at::Tensor top_plus_tail(int64_t T, const at::Tensor& scores, const std::vector<int64_t>& extra, int64_t tail) {
  const int64_t Hkv = static_cast<int64_t>(extra.size());
  at::Tensor f = at::zeros({T, Hkv}, scores.options().dtype(at::kBool));
  if (tail > 0) f.slice(0, T - tail, T).fill_(true);
  for (int64_t g = 0; g < Hkv; ++g) {
    const int64_t n = std::min(extra[static_cast<size_t>(g)], scores.size(1));
    if (n <= 0) continue;
    at::Tensor idx = std::get<1>(scores[g].topk(n, 0, true, true));
    f.select(1, g).index_fill_(0, idx, true);
  }
  return f;
}

// Per-head budgets of a layer, each clamped to [0, T].
std::vector<int64_t> head_budgets(int64_t layer_budget, int64_t Hkv, int64_t T) {
  return split_even(std::clamp<int64_t>(layer_budget, 0, Hkv * T), Hkv);
}

// Flags per layer for policies that fill each layer's [T, Hkv] flags from its per-head budgets:
// fill(layer, flags, head budgets).
template <typename Fill>
std::vector<at::Tensor> per_layer(const PrefillRecord& r, const std::vector<int64_t>& budgets, Fill fill) {
  std::vector<at::Tensor> out;
  for (size_t l = 0; l < r.k.size(); ++l) {
    const int64_t Hkv = r.k[l].size(0);
    at::Tensor f = at::zeros({r.length(), Hkv}, r.k[l].options().dtype(at::kBool));
    fill(l, f, head_budgets(budgets.at(l), Hkv, r.length()));
    out.push_back(f);
  }
  return out;
}

// The context run straight into a ragged cache, its entries flagged by `visibility` as they
// arrive (the gates), or all kept (null).
Compressed compress_forward(const LlamaModel& model, ProjectionAdapter* adapter, const std::vector<int64_t>& context,
                            KeyVisibility* visibility) {
  c10::InferenceMode guard;
  const int64_t L = model.config().num_hidden_layers, Hkv = model.config().num_key_value_heads;
  Compressed c;
  c.cache = std::make_unique<RaggedKVCache>(L);
  ForwardOptions fo;
  fo.cache = c.cache.get();
  fo.visibility = visibility;
  fo.adapter = adapter;
  fo.last_only = true;
  const double t0 = now_seconds();
  const ModelOutput out = model.run(context_tensor(context), fo);
  c.last_logits = out.logits[0][-1].to(at::kFloat);
  c.prefill_seconds = now_seconds() - t0;
  for (int64_t l = 0; l < L; ++l) {
    int64_t n = 0;
    for (int64_t g = 0; g < Hkv; ++g) n += c.cache->entries(l, g);
    c.layer_entries.push_back(n);
    const at::Tensor& f = out.layers[static_cast<size_t>(l)].flags;  // [1, T, Hkv] float 0/1, or undefined: all kept
    c.kept.push_back(f.defined() ? (f[0] > 0.5) : at::ones({c.cache->length(), Hkv}, at::kBool));
  }
  return c;
}

// Every entry: the context's forward straight into the ragged cache (nothing to record).
class FullPolicy : public ScoredPolicy {
 public:
  using ScoredPolicy::ScoredPolicy;
  std::string name() const override { return "full"; }
  Compressed compress(const LlamaModel& model, ProjectionAdapter* adapter, const std::vector<int64_t>& context,
                      const std::vector<int64_t>&) const override {
    return compress_forward(model, adapter, context, nullptr);
  }
  std::vector<at::Tensor> select(const PrefillRecord& r, const std::vector<int64_t>&) const override {
    std::vector<at::Tensor> out;
    for (const auto& k : r.k) out.push_back(at::ones({r.length(), k.size(0)}, k.options().dtype(at::kBool)));
    return out;
  }
};

class StreamingPolicy : public ScoredPolicy {
 public:
  using ScoredPolicy::ScoredPolicy;
  std::string name() const override { return "streamingllm"; }
  std::vector<at::Tensor> select(const PrefillRecord& r, const std::vector<int64_t>& budgets) const override {
    const int64_t T = r.length();
    return per_layer(r, budgets, [&](size_t, at::Tensor& f, const std::vector<int64_t>& b) {
      for (size_t g = 0; g < b.size(); ++g) {
        const int64_t c = b[g], s = std::min(o_.sinks, c);
        f.select(1, static_cast<int64_t>(g)).slice(0, 0, s).fill_(true);
        f.select(1, static_cast<int64_t>(g)).slice(0, T - (c - s), T).fill_(true);
      }
    });
  }
};

class H2OPolicy : public ScoredPolicy {
 public:
  using ScoredPolicy::ScoredPolicy;
  std::string name() const override { return "h2o"; }
  std::vector<at::Tensor> select(const PrefillRecord& r, const std::vector<int64_t>& budgets) const override {
    const int64_t T = r.length();
    return per_layer(r, budgets, [&](size_t l, at::Tensor& f, const std::vector<int64_t>& b) {
      const at::Tensor s = h2o_scores(r.q[l], r.k[l], o_);  // [Hkv, T]
      for (size_t g = 0; g < b.size(); ++g) {
        // Half recent (rounded up), half heavy hitters among the older tokens (H2O's 1:1 split).
        const int64_t c = b[g], recent = c - c / 2, heavy = c / 2;
        at::Tensor col = f.select(1, static_cast<int64_t>(g));
        col.slice(0, T - recent, T).fill_(true);
        if (heavy > 0) col.index_fill_(0, std::get<1>(s[g].slice(0, 0, T - recent).topk(heavy, 0, true, true)), true);
      }
    });
  }
};

// SnapKV and its relatives: SnapKV scores; layer budgets as given (or PyramidKV's schedule);
// heads split evenly (or by Ada-KV). With kvpress's definitions PyramidKV's schedule is part
// of the budgets (a function of the keep ratio, as kvpress computes it), not of the selection.
class SnapFamilyPolicy : public ScoredPolicy {
 public:
  SnapFamilyPolicy(std::string name, PolicyOptions o, bool pyramid, bool ada)
      : ScoredPolicy(std::move(o)), name_(std::move(name)), pyramid_(pyramid), ada_(ada) {}
  std::string name() const override { return name_; }

  std::vector<int64_t> layer_budgets(double value, bool tokens, int64_t T, int64_t layers, int64_t Hkv) const override {
    if (!(o_.kvpress && pyramid_)) return ScoredPolicy::layer_budgets(value, tokens, T, layers, Hkv);
    // PyramidKVPress: T x (1 - compression_ratio), unrounded; N tokens per head stand for N / T.
    const double capacity = tokens ? value : static_cast<double>(T) * (1.0 - (1.0 - value));
    std::vector<int64_t> out = kvpress_pyramid(T, layers, capacity, o_.window, o_.beta);
    for (int64_t& b : out) b *= Hkv;
    return out;
  }

  std::vector<at::Tensor> select(const PrefillRecord& r, const std::vector<int64_t>& budgets) const override {
    const int64_t T = r.length(), L = static_cast<int64_t>(r.k.size());
    std::vector<at::Tensor> out;
    if (T <= 1) return FullPolicy(o_).select(r, budgets);
    int64_t w = std::min(o_.window, T - 1);
    // PyramidKV moves the selectable entries between layers, so its window must fit every
    // layer's budget: below the window, the window shrinks to the budget (a layer budget below
    // one entry per head keeps the most recent tokens only, as SnapKV does).
    if (pyramid_ && !o_.kvpress) {
      for (int64_t l = 0; l < L; ++l) w = std::min(w, std::max<int64_t>(budgets.at(l), 0) / r.k[l].size(0));
    }
    PolicyOptions o = o_;
    o.window = w;
    // Selectable entries per layer (the window excluded).
    std::vector<int64_t> selectable(static_cast<size_t>(L));
    for (int64_t l = 0; l < L; ++l) selectable[l] = budgets.at(l) - r.k[l].size(0) * w;
    if (pyramid_ && !o_.kvpress && w > 0) {
      int64_t total = 0;
      for (int64_t s : selectable) total += std::max<int64_t>(s, 0);
      selectable = pyramid_budgets(L, total, r.k[0].size(0) * (T - w), o_.beta);
    }
    for (int64_t l = 0; l < L; ++l) {
      const int64_t Hkv = r.k[l].size(0);
      if (selectable[l] >= Hkv * (T - w)) {  // the budget covers the context
        out.push_back(at::ones({T, Hkv}, r.k[l].options().dtype(at::kBool)));
        continue;
      }
      if (selectable[l] < 0 || w < 1) {  // smaller than the window: the most recent tokens only
        at::Tensor f = at::zeros({T, Hkv}, r.k[l].options().dtype(at::kBool));
        const auto b = head_budgets(budgets.at(l), Hkv, T);
        for (int64_t g = 0; g < Hkv; ++g) f.select(1, g).slice(0, T - b[static_cast<size_t>(g)], T).fill_(true);
        out.push_back(f);
        continue;
      }
      const at::Tensor s = snapkv_scores(r.q[l], r.k[l], o);  // [Hkv, T-w]
      if (o_.kvpress) {
        out.push_back(ada_ ? kvpress_ada_flags(s, w, budgets.at(l), o_.alpha)
                           : kvpress_top_flags(s, w, head_budgets(budgets.at(l), Hkv, T)));
        continue;
      }
      const auto extra = ada_ ? ada_allocate(s, selectable[l], o_.alpha) : split_even(selectable[l], Hkv);
      out.push_back(top_plus_tail(T, s, extra, w));
    }
    return out;
  }

 private:
  std::string name_;
  bool pyramid_, ada_;
};

// A full prefill recorded (observer, if any, sees each layer's input), flags chosen from the
// record by select(record), the chosen entries stored in a fresh ragged cache.
template <typename Select>
Compressed select_recorded(const PrefillRecord& rec, const at::Tensor& last_logits, Select select) {
  c10::InferenceMode guard;
  const int64_t L = static_cast<int64_t>(rec.k.size());
  Compressed c;
  c.last_logits = last_logits;
  const double t0 = now_seconds();
  const std::vector<at::Tensor> flags = select(rec);
  c.select_seconds = now_seconds() - t0;
  c.cache = std::make_unique<RaggedKVCache>(L);
  for (int64_t l = 0; l < L; ++l) {
    c.cache->insert(l, rec.k[l], rec.v[l], flags[l]);
    c.layer_entries.push_back(flags[l].sum().item<int64_t>());
  }
  c.cache->advance(rec.length());
  c.kept = flags;
  return c;
}

// A full prefill recorded by record(rec) -> last logits, then selected from as above.
template <typename Record, typename Select>
Compressed compress_recorded(Record record, Select select) {
  c10::InferenceMode guard;
  PrefillRecord rec;
  const double t0 = now_seconds();
  const at::Tensor last = record(rec);
  const double prefill = now_seconds() - t0;
  Compressed c = select_recorded(rec, last, select);
  c.prefill_seconds = prefill;
  return c;
}

// Asks the gates for their flags on a full prefill's hidden states, but keeps every key visible
// (the gates' decisions applied after the prefill, as the baselines apply theirs).
class FlagRecorder : public KeyVisibility {
 public:
  explicit FlagRecorder(Gates* gates) : gates_(gates) {}
  LayerKeep key_keep(int64_t layer, const at::Tensor& x, const at::Tensor& positions, bool,
                     const KeyInputs& in) override {
    const at::Tensor f = gates_->key_keep(layer, x, positions, false, in).flags;  // [1, T, Hkv]
    flags.push_back(f.defined() ? (f[0] > 0.5) : at::Tensor());
    return {};
  }
  std::vector<at::Tensor> flags;  // per layer [T, Hkv] bool

 private:
  Gates* gates_;
};

// The gates' policies; with decode gating the gates keep their own cache from the prefill on and
// flag decoded tokens too.
class GatesPolicy : public Policy {
 public:
  GatesPolicy(Gates* gates, bool decode_gating) : gates_(gates), decode_gating_(decode_gating) {
    if (decode_gating && gates->config().rule_feature != RuleFeature::None) {  // refused before any work
      throw_usage("--gate-decode: gates with gate.rule_feature " + std::string(kRuleFeatures.name(gates->config().rule_feature)) +
                      " decide over a whole prefill and cannot gate decoded tokens",
                  "drop --gate-decode (decoded tokens are then kept)");
    }
  }
  bool learned() const override { return true; }
  KeyVisibility* decode_visibility() const override { return decode_gating_ ? gates_ : nullptr; }

 protected:
  Gates* gates_;
  bool decode_gating_;
};

class GatePostPolicy : public GatesPolicy {
 public:
  using GatesPolicy::GatesPolicy;
  std::string name() const override { return "gate-post"; }
  Compressed compress(const LlamaModel& model, ProjectionAdapter* adapter, const std::vector<int64_t>& context,
                      const std::vector<int64_t>&) const override {
    gates_->set_decode_cache(decode_gating_);
    FlagRecorder rec(gates_);
    return compress_recorded([&](PrefillRecord& r) { return record_prefill(model, adapter, context, r, &rec); },
                             [&](const PrefillRecord& r) {
      std::vector<at::Tensor> out;
      for (size_t l = 0; l < r.k.size(); ++l) {
        const at::Tensor& f = rec.flags.at(l);
        out.push_back(f.defined() ? f : at::ones({r.length(), r.k[l].size(0)}, r.k[l].options().dtype(at::kBool)));
      }
      return out;
    });
  }
};

class GatePolicy : public GatesPolicy {
 public:
  using GatesPolicy::GatesPolicy;
  std::string name() const override { return "gate"; }
  Compressed compress(const LlamaModel& model, ProjectionAdapter* adapter, const std::vector<int64_t>& context,
                      const std::vector<int64_t>&) const override {
    gates_->set_decode_cache(decode_gating_);
    return compress_forward(model, adapter, context, gates_);
  }
};

// Records the gates' keep probabilities on a full prefill (every key stays visible).
class ProbabilityRecorder : public KeyVisibility {
 public:
  explicit ProbabilityRecorder(Gates* gates) : gates_(gates) {}
  LayerKeep key_keep(int64_t layer, const at::Tensor& x, const at::Tensor& positions, bool,
                     const KeyInputs& in) override {
    p.push_back(gates_->probabilities(layer, x, positions, in)[0]);  // [T, Hkv]
    return {};
  }
  std::vector<at::Tensor> p;

 private:
  Gates* gates_;
};

// The gates as a ranking for any budget: sinks and the last `window` tokens protected and
// counted, the rest of each head's share by keep probability (shares even, or Ada-KV's).
class GateRankPolicy : public ScoredPolicy {
 public:
  GateRankPolicy(Gates* gates, PolicyOptions o, bool ada) : ScoredPolicy(std::move(o)), gates_(gates), ada_(ada) {}
  std::string name() const override { return ada_ ? "ada-gate" : "gate-rank"; }

  std::vector<at::Tensor> select(const PrefillRecord& r, const std::vector<int64_t>& budgets) const override {
    if (r.keep_p.size() != r.k.size()) throw_internal("gate-rank needs the gates' probabilities in the prefill record");
    const int64_t T = r.length(), w = std::min(o_.window, T);
    const int64_t sinks = std::min(gates_->config().sink_tokens, T - w);
    std::vector<at::Tensor> out;
    for (size_t l = 0; l < r.k.size(); ++l) {
      const int64_t Hkv = r.k[l].size(0), budget = std::clamp<int64_t>(budgets.at(l), 0, Hkv * T);
      const int64_t selectable = budget - Hkv * w;
      if (selectable < 0) {  // smaller than the window: the most recent tokens only
        at::Tensor f = at::zeros({T, Hkv}, r.k[l].options().dtype(at::kBool));
        const auto b = head_budgets(budget, Hkv, T);
        for (int64_t g = 0; g < Hkv; ++g) f.select(1, g).slice(0, T - b[static_cast<size_t>(g)], T).fill_(true);
        out.push_back(f);
        continue;
      }
      at::Tensor s = r.keep_p[l].slice(0, 0, T - w).t().contiguous();  // [Hkv, T - w]
      if (sinks > 0) s.slice(1, 0, sinks).fill_(2.0);                  // above any probability
      const auto extra = ada_ ? ada_allocate(s, selectable, o_.alpha) : split_even(selectable, Hkv);
      out.push_back(top_plus_tail(T, s, extra, w));
    }
    return out;
  }

 protected:
  at::Tensor record(const LlamaModel& model, ProjectionAdapter* adapter, const std::vector<int64_t>& context,
                    PrefillRecord& rec) const override {
    return record_prefill_with_gates(model, adapter, context, rec, gates_);
  }

 private:
  Gates* gates_;
  bool ada_;
};

}  // namespace

at::Tensor record_prefill_with_gates(const LlamaModel& model, ProjectionAdapter* adapter, const std::vector<int64_t>& context,
                                     PrefillRecord& record, Gates* gates) {
  ProbabilityRecorder observer(gates);
  const at::Tensor last = record_prefill(model, adapter, context, record, &observer);
  record.keep_p = observer.p;
  return last;
}

Compressed ScoredPolicy::compress_from(const PrefillRecord& record, const at::Tensor& last_logits,
                                       const std::vector<int64_t>& budgets) const {
  if (budgets.size() != record.k.size()) throw_internal("a policy needs one budget per layer");
  return select_recorded(record, last_logits, [&](const PrefillRecord& r) { return select(r, budgets); });
}

bool ranks_by_gates(const std::string& name) { return name == "gate-rank" || name == "ada-gate"; }

at::Tensor record_prefill(const LlamaModel& model, ProjectionAdapter* adapter, const std::vector<int64_t>& context,
                          PrefillRecord& record, KeyVisibility* observer) {
  c10::InferenceMode guard;
  record = PrefillRecord();
  RecordingCache cache(record);
  ForwardOptions fo;
  fo.cache = &cache;
  fo.adapter = adapter;
  fo.visibility = observer;
  fo.last_only = true;
  return model.forward(context_tensor(context), fo)[0][-1].to(at::kFloat);
}

std::vector<int64_t> ScoredPolicy::layer_budgets(double value, bool tokens, int64_t T, int64_t layers, int64_t Hkv) const {
  int64_t per_layer = 0;
  if (tokens) per_layer = static_cast<int64_t>(value) * Hkv;
  else if (o_.kvpress) per_layer = kvpress_n_kept(T, value) * Hkv;
  else per_layer = std::llround(value * static_cast<double>(T * Hkv));
  return std::vector<int64_t>(static_cast<size_t>(layers), per_layer);
}

Compressed ScoredPolicy::compress(const LlamaModel& model, ProjectionAdapter* adapter,
                                  const std::vector<int64_t>& context, const std::vector<int64_t>& budgets) const {
  if (static_cast<int64_t>(budgets.size()) != model.config().num_hidden_layers) {
    throw_internal("a policy needs one budget per layer");
  }
  return compress_recorded([&](PrefillRecord& r) { return record(model, adapter, context, r); },
                           [&](const PrefillRecord& r) { return select(r, budgets); });
}

at::Tensor ScoredPolicy::record(const LlamaModel& model, ProjectionAdapter* adapter, const std::vector<int64_t>& context,
                                PrefillRecord& rec) const {
  return record_prefill(model, adapter, context, rec);
}

const std::vector<std::string>& baseline_names() {
  static const std::vector<std::string> names = {"full", "streamingllm", "h2o", "snapkv", "pyramidkv", "ada-snapkv",
                                                 "ada-pyramid"};
  return names;
}

void check_policy_options(const PolicyOptions& o) {
  if (o.window < 1 || o.sinks < 0 || o.beta < 1) throw_usage("need --window >= 1, --sinks >= 0, --beta >= 1");
  if (o.kernel < 1 || o.kernel % 2 == 0) throw_usage("--kernel must be odd and >= 1, got " + std::to_string(o.kernel));
  if (!(o.alpha >= 0 && o.alpha <= 1)) throw_usage("--alpha must be in [0, 1], got " + std::to_string(o.alpha));
  if (o.kvpress && (o.pooling != Pooling::Avg || o.gqa != GqaReduce::Mean)) {
    throw_usage(std::string("--kvpress-compat: kvpress's SnapKV pools by avg and reduces GQA by mean (got pooling ") +
                    kPoolings.name(o.pooling) + ", gqa " + kGqaReduces.name(o.gqa) + ")",
                "drop --pooling/--gqa, or drop --kvpress-compat");
  }
}

std::unique_ptr<ScoredPolicy> make_policy(const std::string& name, const PolicyOptions& o, Gates* gates) {
  if (ranks_by_gates(name)) {
    if (!gates) throw_usage("policy " + name + " ranks by the gates", "pass --gates EXPORT (agate export)");
    return std::make_unique<GateRankPolicy>(gates, o, name == "ada-gate");
  }
  if (name == "full") return std::make_unique<FullPolicy>(o);
  if (name == "streamingllm") return std::make_unique<StreamingPolicy>(o);
  if (name == "h2o") return std::make_unique<H2OPolicy>(o);
  if (name == "snapkv") return std::make_unique<SnapFamilyPolicy>(name, o, false, false);
  if (name == "pyramidkv") return std::make_unique<SnapFamilyPolicy>(name, o, true, false);
  if (name == "ada-snapkv") return std::make_unique<SnapFamilyPolicy>(name, o, false, true);
  if (name == "ada-pyramid") return std::make_unique<SnapFamilyPolicy>(name, o, true, true);
  std::string list;
  for (const auto& n : baseline_names()) list += (list.empty() ? "" : ", ") + n;
  throw_usage("unknown policy '" + name + "'", "choose from " + list + ", gate, gate-post, gate-rank, ada-gate");
}

std::unique_ptr<Policy> gate_policy(Gates* gates, bool after_prefill, bool decode_gating) {
  if (after_prefill) return std::make_unique<GatePostPolicy>(gates, decode_gating);
  return std::make_unique<GatePolicy>(gates, decode_gating);
}

}  // namespace agate::evict
