// The evaluator: budgets, refusals of bad task files, paired bootstrap intervals, the
// question-agnostic passkey split.
#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <numeric>

#include "../test_util.h"
#include "../tiny_model.h"
#include "agate/data/tokenize.h"
#include "agate/data/tokenizer.h"
#include "agate/eval/eval.h"
#include "agate/evict/policy.h"
#include "agate/gate/gates.h"
#include "agate/model/llama.h"

using namespace agate;
using namespace agate::evict;

namespace {

// One token per byte.
struct ByteTok : Tokenizer {
  std::vector<int32_t> encode(const std::string& t) const override { return std::vector<int32_t>(t.begin(), t.end()); }
  std::string decode(const std::vector<int32_t>&) const override { return ""; }
  std::string piece(int32_t) const override { return ""; }
  int64_t vocab_size() const override { return 256; }
  int32_t bos_id() const override { return -1; }
  int32_t eos_id() const override { return -1; }
  Specials specials() const override { return {}; }
  uint64_t hash() const override { return 0; }
};

}  // namespace

TEST(Eval, ABudgetLargerThanTheContextIsRefused) {
  const ModelConfig c = test::tiny_config(4, 2);
  const LlamaModel m = LlamaModel::init_random(c, 5, at::kFloat);
  eval::Task t{"perplexity", eval::Metric::Perplexity, {}};
  t.samples.push_back({test::random_context(16, c.vocab_size, 4), {test::random_context(4, c.vocab_size, 5)}, 0, ""});
  eval::EvalOptions o;
  o.policies = {"snapkv"};
  o.budgets = {eval::parse_budget("32", true)};
  const std::string e = test::error_of([&] { eval::evaluate(m, t, o); });
  EXPECT_NE(e.find("32 tokens per KV head exceeds the context of sample 0 (16 tokens)"), std::string::npos) << e;
  EXPECT_NE(test::error_of([] { eval::parse_budget("1.5", false); }).find("(0, 1]"), std::string::npos);
  o.policies = {"gate"};
  o.budgets = {eval::parse_budget("0.5", false)};
  EXPECT_NE(test::error_of([&] { eval::evaluate(m, t, o); }).find("--gates"), std::string::npos);
}

TEST(Eval, KeepOneMatchesFullAndSmallerBudgetsAreReported) {
  c10::NoGradGuard no_grad;
  const ModelConfig c = test::tiny_config(4, 2);
  const LlamaModel m = LlamaModel::init_random(c, 5, at::kFloat);
  eval::Task t{"perplexity", eval::Metric::Perplexity, {}};
  for (uint64_t i = 0; i < 3; ++i) t.samples.push_back({test::random_context(20, c.vocab_size, 10 + i), {test::random_context(5, c.vocab_size, 20 + i)}, 0, ""});
  eval::EvalOptions o;
  o.policies = evict::baseline_names();
  o.policy.window = 4;
  o.budgets = {eval::parse_budget("1.0", false), eval::parse_budget("0.5", false)};
  const eval::Report r = eval::evaluate(m, t, o);
  ASSERT_EQ(r.rows.size(), 1 + 2 * 6u);
  for (const auto& row : r.rows) {
    if (row.budget == "keep 1.00" || row.policy == "full") {
      EXPECT_NEAR(row.metric, r.rows[0].metric, 1e-3 * r.rows[0].metric) << row.policy;
      EXPECT_DOUBLE_EQ(row.keep, 1.0);
    } else {
      EXPECT_DOUBLE_EQ(row.keep, 0.5) << row.policy;
      EXPECT_NEAR(row.kv_bytes, r.rows[0].kv_bytes / 2, 1e-9) << row.policy;
    }
  }
  for (const auto& row : r.rows) {
    ASSERT_EQ(row.parts.num.size(), 3u) << row.policy;
    EXPECT_NEAR(row.parts.metric(), row.metric, 1e-9 * row.metric) << row.policy;
    if (row.budget == "keep 1.00") EXPECT_NEAR(row.ci_full.hi - row.ci_full.lo, 0, 1e-3) << row.policy;
  }
  const std::string md = eval::markdown(r), svg = eval::svg_plot(r);
  EXPECT_NE(md.find("| ada-pyramid | keep 0.50 | 0.500 |"), std::string::npos) << md;
  EXPECT_NE(md.find("paired bootstrap"), std::string::npos) << md;
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
}

TEST(Eval, MalformedTaskFilesAreRefusedWithFileAndLine) {
  test::TempDir dir;
  struct Case {
    std::string text, want;
  };
  const std::vector<Case> cases = {
      {"{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"answer\": 0}\nnot json\n", ":2: is not valid JSON"},
      {"{\"context\": \"a\", \"choices\": [\"b\"], \"answer\": 0}\n", ":1: needs \"choices\": an array of at least two"},
      {"{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"answer\": 2}\n", ":1: needs \"answer\""},
      {"{\"choices\": [\"b\", \"c\"], \"answer\": 0}\n", ":1: needs a string \"context\""},
      {"\n\n", "holds no samples"},
  };
  // A tokenizer is needed to encode; it never gets called for refused lines, except the first
  // case's valid line 1.
  const ByteTok tok;
  for (const auto& c : cases) {
    const std::string path = dir.file("task.jsonl");
    test::write_bytes(path, c.text);
    const std::string e = test::error_of([&] { eval::choice_task(path, tok, false, 0); });
    EXPECT_NE(e.find(c.want), std::string::npos) << "got: " << e;
  }
  EXPECT_NE(test::error_of([&] { eval::choice_task(dir.file("missing.jsonl"), tok, false, 0); }).find("cannot be opened"),
            std::string::npos);
}

// ---- gate-rank and ada-gate: the gates' keep probabilities as a ranking for any budget ------

TEST(Eval, PairedBootstrapIntervals) {
  eval::SampleParts a, b;
  for (int i = 0; i < 40; ++i) {
    a.num.push_back(i % 3 == 0), a.den.push_back(1);  // accuracy 14/40
    b.num.push_back(i % 3 == 0), b.den.push_back(1);
  }
  const eval::Interval same = eval::paired_bootstrap(a, b);
  EXPECT_DOUBLE_EQ(same.lo, 0);  // paired: identical per-sample results differ by exactly 0
  EXPECT_DOUBLE_EQ(same.hi, 0);
  for (int i = 0; i < 40; i += 3) b.num[static_cast<size_t>(i)] = 0;  // b misses all of a's hits
  const eval::Interval better = eval::paired_bootstrap(a, b);
  EXPECT_TRUE(better.excludes_zero());
  EXPECT_LT(better.lo, 0.35);
  EXPECT_GT(better.hi, 0.35);
  // Perplexity parts: exp(sum nll / sum tokens), the interval brackets the observed difference.
  eval::SampleParts p, q;
  p.exp = q.exp = true;
  for (int i = 0; i < 30; ++i) {
    p.num.push_back(10.0 + (i % 5)), p.den.push_back(4);
    q.num.push_back(10.0 + ((i * 7) % 5)), q.den.push_back(4);
  }
  const eval::Interval pq = eval::paired_bootstrap(p, q);
  EXPECT_LE(pq.lo, p.metric() - q.metric());
  EXPECT_GE(pq.hi, p.metric() - q.metric());
  EXPECT_FALSE(pq.excludes_zero());
  EXPECT_NE(test::error_of([&] { eval::paired_bootstrap(p, a); }).find("same"), std::string::npos);
}

TEST(Eval, QuestionAfterMovesTheQuestionOutOfTheCompressedContext) {
  test::TempDir dir;
  const ByteTok tok;
  const std::string path = dir.file("pk.jsonl");
  test::write_bytes(path, "{\"prompt\": \"Key 42. Filler. What is the key?\", \"question\": \"What is the key?\", \"response\": \" 42.\"}\n");
  const SftTemplate t = SftTemplate::named("default");
  const eval::Task inside = eval::passkey_task(path, tok, t, false, 0);
  const eval::Task after = eval::passkey_task(path, tok, t, false, 0, true);
  ASSERT_EQ(after.samples.size(), 1u);
  const eval::Sample &a = after.samples[0], &b = inside.samples[0];
  EXPECT_TRUE(b.lead.empty());
  std::vector<int64_t> joined = a.context;
  joined.insert(joined.end(), a.lead.begin(), a.lead.end());
  EXPECT_EQ(joined, b.context);  // nothing lost or added: only where compression stops moves
  const std::string lead(a.lead.begin(), a.lead.begin() + 17);
  EXPECT_EQ(lead, " What is the key?");
  EXPECT_EQ(a.candidates, b.candidates);
  test::write_bytes(path, "{\"prompt\": \"Key 42. What is the key?\", \"question\": \"Which key?\", \"response\": \" 42.\"}\n");
  const std::string e = test::error_of([&] { eval::passkey_task(path, tok, t, false, 0, true); });
  EXPECT_NE(e.find(":1: \"question\" must be a non-empty ending of \"prompt\""), std::string::npos) << e;
}
