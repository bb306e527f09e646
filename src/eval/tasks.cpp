// Evaluation tasks: perplexity windows from a token dataset, multiple choice and passkey JSONL.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>

#include "agate/data/dataset.h"
#include "agate/data/tokenize.h"
#include "agate/data/tokenizer.h"
#include "agate/eval/eval.h"
#include "agate/util/error.h"

namespace agate::eval {

using json = nlohmann::json;

namespace {

// Calls `line_fn(json, where)` for each non-blank line; refuses unparsable lines with file:line.
void for_each_jsonl(const std::string& path, int64_t max_samples, const std::function<void(const json&, const std::string&)>& line_fn) {
  std::ifstream in(path);
  if (!in) throw_input(path, "cannot be opened", "check the path");
  std::string line;
  int64_t n = 0, taken = 0;
  while (std::getline(in, line) && (max_samples <= 0 || taken < max_samples)) {
    ++n;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(n);
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception&) {
      throw_input(where, "is not valid JSON", "one JSON object per line");
    }
    if (!j.is_object()) throw_input(where, "is not a JSON object");
    line_fn(j, where);
    ++taken;
  }
  if (taken == 0) throw_input(path, "holds no samples");
}

std::string need_string(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || !j[key].is_string()) throw_input(where, std::string("needs a string \"") + key + "\"");
  return j[key].get<std::string>();
}

std::vector<int64_t> encode(const Tokenizer& tok, const std::string& text) {
  std::vector<int64_t> out;
  for (int32_t id : tok.encode(text)) out.push_back(id);
  return out;
}

}  // namespace

Task perplexity_task(const std::string& dataset_dir, int64_t context, int64_t continuation, int64_t samples) {
  if (context < 1 || continuation < 1 || samples < 1) {
    throw_usage("perplexity needs --context >= 1, --continuation >= 1 and --samples >= 1");
  }
  const Dataset ds = Dataset::open(dataset_dir);
  const int64_t window = context + continuation;
  Task t{"perplexity", Metric::Perplexity, {}};
  std::vector<int64_t> buf;
  for (const Shard& s : ds.shards()) {
    for (uint64_t i = 0; i < s.num_tokens() && static_cast<int64_t>(t.samples.size()) < samples; ++i) {
      buf.push_back(s.tokens()[i]);
      if (static_cast<int64_t>(buf.size()) == window) {
        Sample x;
        x.context.assign(buf.begin(), buf.begin() + context);
        x.candidates.push_back(std::vector<int64_t>(buf.begin() + context, buf.end()));
        t.samples.push_back(std::move(x));
        buf.clear();
      }
    }
  }
  if (static_cast<int64_t>(t.samples.size()) < samples) {
    throw_input(dataset_dir, "holds " + std::to_string(ds.manifest().num_tokens) + " tokens, too few for " +
                                 std::to_string(samples) + " windows of " + std::to_string(window),
                "lower --samples, --context or --continuation");
  }
  return t;
}

Task choice_task(const std::string& jsonl, const Tokenizer& tok, bool add_bos, int64_t max_samples) {
  Task t{"choice", Metric::Accuracy, {}};
  for_each_jsonl(jsonl, max_samples, [&](const json& j, const std::string& where) {
    Sample x;
    if (add_bos && tok.bos_id() >= 0) x.context.push_back(tok.bos_id());
    for (int64_t id : encode(tok, need_string(j, "context", where))) x.context.push_back(id);
    if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].size() < 2) {
      throw_input(where, "needs \"choices\": an array of at least two strings");
    }
    for (const auto& c : j["choices"]) {
      if (!c.is_string() || c.get<std::string>().empty()) throw_input(where, "has a choice that is not a non-empty string");
      x.candidates.push_back(encode(tok, c.get<std::string>()));
    }
    if (!j.contains("answer") || !j["answer"].is_number_integer() || j["answer"].get<int64_t>() < 0 ||
        j["answer"].get<int64_t>() >= static_cast<int64_t>(x.candidates.size())) {
      throw_input(where, "needs \"answer\": the index of the correct choice (0-based)");
    }
    x.answer = j["answer"].get<int64_t>();
    if (x.context.empty()) throw_input(where, "has an empty context");
    t.samples.push_back(std::move(x));
  });
  return t;
}

Task passkey_task(const std::string& jsonl, const Tokenizer& tok, const SftTemplate& tmpl, bool add_bos,
                  int64_t max_samples, bool question_after) {
  Task t{question_after ? "passkey (question after compression)" : "passkey", Metric::ExactMatch, {}};
  for_each_jsonl(jsonl, max_samples, [&](const json& j, const std::string& where) {
    const std::string prompt = need_string(j, "prompt", where);
    const SftPair p = encode_sft_pair(tok, prompt, need_string(j, "response", where), tmpl, add_bos);
    if (p.context.empty() || p.target.empty()) throw_input(where, "encodes to an empty prompt or response");
    Sample x;
    x.context = p.context;
    if (question_after) {
      // The question's tokens, found last in the rendered prompt; from there on is the lead.
      const std::string q = need_string(j, "question", where);
      if (q.empty() || prompt.size() <= q.size() || prompt.compare(prompt.size() - q.size(), q.size(), q) != 0) {
        throw_input(where, "\"question\" must be a non-empty ending of \"prompt\"", "tools/make_passkey.py writes both");
      }
      const bool spaced = prompt[prompt.size() - q.size() - 1] == ' ';
      std::vector<int64_t> qt;
      for (int32_t id : tok.encode(spaced ? " " + q : q)) qt.push_back(id);
      auto at = std::find_end(x.context.begin(), x.context.end(), qt.begin(), qt.end());
      if (qt.empty() || at == x.context.end() || at == x.context.begin()) {
        throw_input(where, "the question's tokens do not appear as such in the rendered prompt",
                    "end the prompt's text before the question with a space or a full stop");
      }
      x.lead.assign(at, x.context.end());
      x.context.erase(at, x.context.end());
    }
    x.candidates.push_back(p.target);
    // Breakdown: context length in blocks of 64 tokens, depth in thirds.
    const int64_t T = static_cast<int64_t>(x.context.size()), lo = (T - 1) / 64 * 64 + 1;
    char buf[64];
    std::snprintf(buf, sizeof(buf), "ctx %lld-%lld", (long long)lo, (long long)(lo + 63));
    x.group = buf;
    if (j.contains("depth") && j["depth"].is_number()) {
      const int third = std::min(2, static_cast<int>(std::floor(j["depth"].get<double>() * 3)));
      const char* names[] = {"depth 0-1/3", "depth 1/3-2/3", "depth 2/3-1"};
      x.group += std::string(", ") + names[std::max(0, third)];
    }
    t.samples.push_back(std::move(x));
  });
  return t;
}

}  // namespace agate::eval
