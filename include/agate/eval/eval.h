// `agate eval`: every eviction policy side by side at matched KV budgets.
//
// Protocol (README "Evaluation"): each sample is a context and one or more candidate
// continuations. The policy compresses the context's KV cache (baselines after a full prefill,
// the gates during it); every candidate is then scored teacher-forced over a copy of the
// compressed cache, its own tokens all kept.
//   perplexity  windows of a held-out token dataset split into context + continuation;
//               metric exp(mean NLL of the continuation tokens)
//   choice      JSONL {"context", "choices": [...], "answer": i}; the choice with the highest
//               summed log-likelihood wins; metric accuracy
//   passkey     JSONL {"prompt", "response", "depth"} (tools/make_passkey.py) rendered with
//               the SFT template; correct when greedy decoding reproduces the response
//               exactly (every target token is the argmax); accuracy, broken down by context
//               length and depth, and the share of target tokens that are the argmax
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "agate/eval/bootstrap.h"
#include "agate/evict/policy.h"

namespace agate {

class LlamaModel;
class Gates;
class ProjectionAdapter;
class Tokenizer;
struct SftTemplate;

namespace eval {

struct Sample {
  std::vector<int64_t> context;                  // >= 1 token
  std::vector<std::vector<int64_t>> candidates;  // >= 1, each >= 1 token
  int64_t answer = 0;                            // the correct candidate (choice)
  std::string group;                             // breakdown key, may be empty
  // Unscored tokens between the compressed context and every candidate (question-agnostic
  // passkey: the question arrives after the context was compressed); usually empty.
  std::vector<int64_t> lead;
};

enum class Metric { Perplexity, Accuracy, ExactMatch };

struct Task {
  std::string name;
  Metric metric = Metric::Perplexity;
  std::vector<Sample> samples;
};

// `samples` windows of context + continuation tokens from a token dataset (its manifest and
// checksums checked), consecutive and non-overlapping from the start.
Task perplexity_task(const std::string& dataset_dir, int64_t context, int64_t continuation, int64_t samples);
// Malformed lines are refused with file:line.
Task choice_task(const std::string& jsonl, const Tokenizer& tokenizer, bool add_bos, int64_t max_samples);
// question_after (question-agnostic): each line's "question" (the end of its prompt) and what
// the template renders after it are moved out of the compressed context into Sample::lead.
Task passkey_task(const std::string& jsonl, const Tokenizer& tokenizer, const SftTemplate& sft_template, bool add_bos,
                  int64_t max_samples, bool question_after = false);

// A budget: a keep ratio of the context, absolute tokens per KV head, or per sample and layer
// exactly what the gates kept ("match-gate").
struct Budget {
  enum Kind { Keep, Tokens, MatchGate } kind = Keep;
  double value = 1.0;
  std::string label() const;  // "keep 0.50", "128 tok", "= gate"
};
// "0.5" -> Keep, "128t" or "128" with tokens=true -> Tokens; "gate" -> MatchGate.
Budget parse_budget(const std::string& text, bool tokens);

struct EvalOptions {
  std::vector<std::string> policies;  // baseline names and/or "gate"; "full" is always run
  std::vector<Budget> budgets;
  evict::PolicyOptions policy;
  Gates* gates = nullptr;              // required for "gate" and match-gate budgets
  ProjectionAdapter* adapter = nullptr;
};

struct Row {
  std::string policy, budget;
  double keep = 1;            // stored / full entries after the context, mean over samples
  double kv_bytes = 0;        // mean bytes of K and V after the context
  double metric = 0;
  double delta = 0;           // metric - full cache's
  double samples_per_s = 0;   // compress + score
  double overhead = 1;        // (prefill + selection) / a plain full prefill of the same context (interleaved)
  double token_accuracy = -1; // passkey: share of target tokens that are the argmax (teacher-forced)
  std::map<std::string, std::pair<int64_t, int64_t>> groups;  // group -> (correct, total)
  SampleParts parts;          // per-sample parts of the metric (for paired intervals)
  Interval ci_full;           // paired bootstrap 95% interval of delta (not for full)
  // Policies that use the gates: the best training-free row at the same budget label (by its
  // metric), the difference to it and its paired 95% interval; empty when there is none.
  std::string best_baseline;
  double vs_best = 0;
  Interval ci_best;
};

struct Report {
  std::string task, metric_name;  // "perplexity" | "accuracy" | "passkey accuracy"
  bool higher_is_better = false;
  int64_t samples = 0;
  std::vector<Row> rows;  // full first
};

Report evaluate(const LlamaModel& model, const Task& task, const EvalOptions& options);

std::string markdown(const Report& report);     // the table (and the per-group breakdown)
std::string json_text(const Report& report);
std::string svg_plot(const Report& report);     // metric against keep ratio, a line per policy

}  // namespace eval
}  // namespace agate
