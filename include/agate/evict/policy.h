// KV-cache eviction policies: the learned gates and the training-free baselines behind one
// interface. A policy compresses a context's prefill into a RaggedKVCache that holds, per
// layer and KV head, only the entries it keeps; the continuation then runs over that cache.
//
// Budgets are entries per layer, summed over the layer's KV heads (a per-head budget C is
// C x Hkv). Uniform policies give each head budget / Hkv (the remainder to the first heads);
// Ada-KV's policies split the layer's budget across heads; PyramidKV's split the total across
// layers. Every budget includes the policy's always-kept tokens (window, sinks, recent).
//
// Training-free policies (methods.md section 3; defaults in PolicyOptions):
//   full          every entry
//   streamingllm  the first `sinks` tokens + the most recent
//   h2o           heavy hitters by causal accumulated attention (sum over every query of the
//                 prompt that can see the key) + an equal share of recent tokens
//   snapkv        the last `window` queries' attention, summed, GQA-reduced, pooled; top
//                 (C - window) + the window
//   pyramidkv     snapkv with a per-layer budget decreasing from bottom to top (beta)
//   ada-snapkv    snapkv scores; the layer's budget split across heads (Ada-KV, floor alpha)
//   ada-pyramid   pyramidkv's layer budgets, Ada-KV's split within each layer
// The learned policy (gate) evicts during the prefill itself, as it was trained to; gate-post
// asks the same gates on a full prefill and applies their flags afterwards, as the baselines do.
// The gates as a ranking (any budget, one set of gates; selection after a full prefill):
//   gate-rank     the gates' keep probabilities as scores: the first sink_tokens and the last
//                 `window` tokens protected (counted in the budget), the rest by top
//                 probability, the layer's budget split evenly across KV heads
//   ada-gate      the same scores, the layer's budget split across heads by Ada-KV (alpha)
//
// PolicyOptions::kvpress switches to NVIDIA kvpress 0.5.5's definitions where they differ
// (README "kvpress agreement"; tests/oracles/kvpress_oracle.py checks the kept sets):
//   budgets      keep R is kvpress's compute_n_kept with compression_ratio 1 - R: every KV
//                head keeps max(1, floor(T x (1 - (1 - R)))) entries (default: round(R T Hkv)
//                per layer, split evenly over the heads)
//   snapkv       mean over the window's queries, avg-pooled per query head, then the GQA mean
//                (default: summed, GQA-reduced, then pooled; the same up to float rounding
//                for avg/mean, and kvpress has no max pooling or max GQA reduction)
//   pyramidkv    kvpress's schedule (kvpress_pyramid): the arithmetic series runs over each
//                head's whole count, window included, from C = T x (1 - compression_ratio)
//                (min C / beta, max 2C - min), rounded per layer by Python's round, and falls
//                back to SnapKV's uniform round(C) when min < window (default: the series runs
//                over the layers' selectable entries, window excluded, rounded to keep the
//                total exactly, and never falls back; see pyramid_budgets)
//   ada-snapkv   AdaKVPress: each head's top max(1, floor(n alpha)) entries (the window
//                first) are protected, then the layer's top Hkv x n scores across heads kept
//                (default: ada_allocate's count_i (1 - alpha) + alpha mean per-head budgets)
//   ada-pyramid  the kvpress pyramid schedule with AdaKVPress's split (kvpress has no such press)
//   streamingllm, h2o: only the budgets change.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "agate/model/ragged_kv_cache.h"
#include "agate/util/choices.h"

namespace agate {

class LlamaModel;
class Gates;
class ProjectionAdapter;
class KeyVisibility;

namespace evict {

enum class Pooling { Max, Avg };  // 1-D pooling of the SnapKV-family scores over positions
inline constexpr Choices<Pooling, 2> kPoolings{{"max", "avg"}};
enum class GqaReduce { Mean, Max };  // a KV head's score from its query group
inline constexpr Choices<GqaReduce, 2> kGqaReduces{{"mean", "max"}};

struct PolicyOptions {
  int64_t window = 32;         // SnapKV-family observation window (always kept)
  int64_t kernel = 7;          // 1-D pooling kernel over the scores (odd)
  Pooling pooling = Pooling::Max;
  GqaReduce gqa = GqaReduce::Mean;
  int64_t sinks = 4;           // StreamingLLM's attention sinks
  double alpha = 0.2;          // Ada-KV's safeguard: every head gets at least alpha x the mean
  int64_t beta = 20;           // PyramidKV: the top layer gets about mean / beta
  bool kvpress = false;        // kvpress 0.5.5's definitions (see the top of this file)
};

// Refuses out-of-range options with a usage error naming the CLI flag (the SnapKV scorer calls
// it; the CLI calls it before loading a model).
void check_policy_options(const PolicyOptions& o);

// A context's full-attention prefill, per layer (post-RoPE, batch 1).
struct PrefillRecord {
  std::vector<at::Tensor> q;       // [H, T, hd] float32
  std::vector<at::Tensor> k, v;    // [Hkv, T, hd] in the model's dtype
  std::vector<at::Tensor> keep_p;  // gate-rank, ada-gate: the gates' keep probabilities [T, Hkv] float32
  int64_t length() const { return k.empty() ? 0 : k[0].size(1); }
};

// A compressed context, ready for its continuation.
struct Compressed {
  std::unique_ptr<RaggedKVCache> cache;
  at::Tensor last_logits;              // [V] float32: the prediction after the context
  std::vector<int64_t> layer_entries;  // entries stored per layer right after the prefill
  // What the policy kept of the context, per layer [T, Hkv] bool (an entry that the gates'
  // recent window still shows for a while after evicting it counts as evicted).
  std::vector<at::Tensor> kept;
  double prefill_seconds = 0;          // the context's forward
  double select_seconds = 0;           // scoring and selection (0 for full and gate)
};

class Policy {
 public:
  virtual ~Policy() = default;
  virtual std::string name() const = 0;
  // True for the learned gates: they choose during the prefill and take no budget.
  virtual bool learned() const { return false; }
  // context: token ids (>= 1). layer_budgets: one per layer (ignored by full and gate).
  virtual Compressed compress(const LlamaModel& model, ProjectionAdapter* adapter, const std::vector<int64_t>& context,
                              const std::vector<int64_t>& layer_budgets) const = 0;
  // What decoded tokens must pass (the gates with decode-time gating), or null: all kept.
  virtual KeyVisibility* decode_visibility() const { return nullptr; }
};

// Training-free policies select from a full prefill.
class ScoredPolicy : public Policy {
 public:
  explicit ScoredPolicy(PolicyOptions options) : o_(std::move(options)) {}
  const PolicyOptions& options() const { return o_; }
  // Per-layer budgets for a context of T tokens: `value` is a keep ratio in (0, 1], or with
  // `tokens` whole tokens per KV head. Default: round(R T Hkv) or N Hkv per layer; with
  // options().kvpress, kvpress's per-head count (and PyramidKV's schedule) times Hkv.
  virtual std::vector<int64_t> layer_budgets(double value, bool tokens, int64_t T, int64_t layers, int64_t Hkv) const;
  Compressed compress(const LlamaModel& model, ProjectionAdapter* adapter, const std::vector<int64_t>& context,
                      const std::vector<int64_t>& layer_budgets) const override;
  // The same from a context's recorded full prefill (shared by every policy and budget of an
  // evaluation; keep_p filled by record_prefill_with_gates for gate-rank and ada-gate).
  // prefill_seconds stays 0: the caller timed the prefill.
  Compressed compress_from(const PrefillRecord& record, const at::Tensor& last_logits,
                           const std::vector<int64_t>& layer_budgets) const;
  // Keep flags per layer, [T, Hkv] bool, with exactly the budgeted number of kept entries per
  // layer (all of them when the budget reaches the context).
  virtual std::vector<at::Tensor> select(const PrefillRecord& record, const std::vector<int64_t>& layer_budgets) const = 0;

 protected:
  // The full prefill that compress() selects from (record_prefill; the gate rankings also
  // record the gates' probabilities). Returns the last logits.
  virtual at::Tensor record(const LlamaModel& model, ProjectionAdapter* adapter, const std::vector<int64_t>& context,
                            PrefillRecord& record) const;
  PolicyOptions o_;
};

// One of the training-free names above, or gate-rank / ada-gate (they need `gates`, not
// owned); throws a usage error listing them otherwise.
std::unique_ptr<ScoredPolicy> make_policy(const std::string& name, const PolicyOptions& options, Gates* gates = nullptr);
// True for the policies that rank by the gates and take a budget (gate-rank, ada-gate).
bool ranks_by_gates(const std::string& name);
// The gates (not owned) as a policy: "gate", or "gate-post" with after_prefill. With
// decode_gating the gates keep their own cache through the prefill and also flag decoded
// tokens (decode_visibility()).
std::unique_ptr<Policy> gate_policy(Gates* gates, bool after_prefill = false, bool decode_gating = false);
const std::vector<std::string>& baseline_names();  // full, streamingllm, ..., ada-pyramid

// Logits after a compressed context for each token of `continuation`, teacher-forced over a
// copy of its cache (the compressed cache stays untouched): [n, V] float32, row i predicts
// continuation[i] (row 0 is c.last_logits).
at::Tensor continuation_logits(const LlamaModel& model, ProjectionAdapter* adapter, const Compressed& c,
                               const std::vector<int64_t>& continuation);

// ---- the pieces, exposed for tests ----------------------------------------------------------

// Runs the context with full attention, recording q, k, v per layer; returns the last logits.
// `observer` (optional) sees each layer's input; its keep flags are ignored.
at::Tensor record_prefill(const LlamaModel& model, ProjectionAdapter* adapter, const std::vector<int64_t>& context,
                          PrefillRecord& record, KeyVisibility* observer = nullptr);

// record_prefill that also records the gates' keep probabilities (record.keep_p).
at::Tensor record_prefill_with_gates(const LlamaModel& model, ProjectionAdapter* adapter, const std::vector<int64_t>& context,
                                     PrefillRecord& record, Gates* gates);

// SnapKV's score of every key before the window: [Hkv, T - window] (window < T).
at::Tensor snapkv_scores(const at::Tensor& q, const at::Tensor& k, const PolicyOptions& o);
// H2O's causal accumulated attention of every key: [Hkv, T].
at::Tensor h2o_scores(const at::Tensor& q, const at::Tensor& k, const PolicyOptions& o);

// Splits `total` entries over `heads` as evenly as possible (the first heads get the remainder).
std::vector<int64_t> split_even(int64_t total, int64_t heads);
// Ada-KV: scores [Hkv, n]; `selectable` entries to place in the layer (sum over heads).
// count_i = head i's share of the layer's top `selectable` scores; B_i = count_i (1 - alpha)
// + alpha x selectable / Hkv, rounded by largest remainder so that sum B_i == selectable, and
// capped at n (the overflow goes to the heads with the most room).
std::vector<int64_t> ada_allocate(const at::Tensor& scores, int64_t selectable, double alpha);
// PyramidKV's schedule: `total` entries over `layers`, decreasing arithmetically from the
// bottom (max) to the top (min = mean / beta, max = 2 mean - min; when max exceeds `cap`,
// max = cap and min = 2 mean - max), rounded by largest remainder so the sum equals `total`.
std::vector<int64_t> pyramid_budgets(int64_t layers, int64_t total, int64_t cap, int64_t beta);

// kvpress 0.5.5's definitions (PolicyOptions::kvpress; src/evict/kvpress.cpp).
// compute_n_kept(T, compression_ratio = 1 - keep): max(1, floor(T (1 - (1 - keep)))).
int64_t kvpress_n_kept(int64_t T, double keep);
// PyramidKVPress.get_layer_budget for every layer: entries per KV head, window included, from
// `capacity` = T x (1 - compression_ratio) (unrounded).
std::vector<int64_t> kvpress_pyramid(int64_t T, int64_t layers, double capacity, int64_t window, int64_t beta);
// ScorerPress's selection over SnapKV scores [Hkv, T - window] (the window padded with the
// layer's max + 1): the top head_budgets[g] entries of head g -> flags [T, Hkv] bool.
at::Tensor kvpress_top_flags(const at::Tensor& scores, int64_t window, const std::vector<int64_t>& head_budgets);
// AdaKVPress over SnapKV scores [Hkv, T - window] (the window padded with the layer's max + 1):
// per head the top max(1, floor(n alpha)) protected (n = layer_budget / Hkv), then the layer's
// top layer_budget entries across heads kept. -> flags [T, Hkv] bool.
at::Tensor kvpress_ada_flags(const at::Tensor& scores, int64_t window, int64_t layer_budget, double alpha);

}  // namespace evict
}  // namespace agate
