#include <iostream>
#include <nlohmann/json.hpp>

#include <ATen/ATen.h>

#include "agate/data/tokenizer.h"
#include "agate/evict/policy.h"
#include "agate/infer/gate_export.h"
#include "agate/model/llama.h"
#include "agate/model/score.h"
#include "agate/util/error.h"
#include "agate/util/threads.h"
#include "args.h"
#include "commands.h"
#include "policy_args.h"

namespace agate::cli {

namespace {

// --context N: the first N tokens compressed by the policy, the rest scored teacher-forced over
// the compressed cache. logprobs[i] = log p(tokens[N + i] | ...), as eval scores continuations.
nlohmann::json score_after_compression(const LlamaModel& model, Gates* gates, ProjectionAdapter* adapter, const PolicySpec& spec,
                                       const std::vector<int64_t>& tokens, int64_t context) {
  const std::vector<int64_t> ctx(tokens.begin(), tokens.begin() + context), cont(tokens.begin() + context, tokens.end());
  const PolicyChoice choice = make_policy_choice(spec, gates, model.config(), context);
  const evict::Compressed c = choice.policy->compress(model, adapter, ctx, choice.layer_budgets);
  const at::Tensor logits = evict::continuation_logits(model, adapter, c, cont);  // [n, V]
  const at::Tensor target = at::tensor(cont, at::kLong).to(logits.device()).unsqueeze(1);
  const at::Tensor lp = at::log_softmax(logits, -1).gather(1, target).squeeze(1).to(at::kCPU, at::kDouble).contiguous();
  std::vector<double> logprobs(lp.data_ptr<double>(), lp.data_ptr<double>() + lp.numel());
  double total = 0;
  for (double x : logprobs) total += x;
  int64_t kept = 0;
  for (int64_t e : c.layer_entries) kept += e;
  return {{"tokens", tokens}, {"context", context}, {"policy", choice.policy->name()},
          {"kv_entries", kept}, {"kv_entries_full", context * model.config().num_hidden_layers * model.config().num_key_value_heads},
          {"logprobs", logprobs}, {"total", total}};
}

}  // namespace

int cmd_score(const Argv& argv) {
  std::vector<Option> options = {
      {"model", "DIR", "Hugging Face model folder (config.json + *.safetensors)", ""},
      {"tokens", "LIST", "comma-separated token ids (at least 2)", ""},
      {"text", "TEXT", "text to score instead of --tokens", ""},
      {"tokenizer", "FILE", "tokenizer.json or SentencePiece model (default: DIR/tokenizer.json when supported, else DIR/tokenizer.model), for --text", ""},
      {"context", "N", "compress the first N tokens with --policy and score only the rest over the compressed cache", ""},
      {"gates", "DIR", "gate export (agate export), for --policy gate or gate-post", ""}};
  for (Option& o : policy_choice_options("with --context; default full")) options.push_back(std::move(o));
  options.insert(options.end(), {{"dtype", "NAME", "compute dtype: float32 or bfloat16", "float32"},
                                 {"threads", "N", "intra-op threads (0 = all cores)", "0"},
                                 device_option()});
  Args args("score", "--model DIR (--tokens 1,2,3 | --text TEXT [--tokenizer FILE]) [--context N --policy NAME [--keep R | --budget N]]",
            "Runs the model over the tokens and prints, as JSON, log p(token[t+1] | token[..t]) for each t\n"
            "and their sum. --text is encoded with --tokenizer after the ids that tokenizer puts first\n"
            "(BOS where transformers' tokenizer(text) adds one: agate tokenizer encode --special).\n"
            "With --context N the first N tokens are compressed by an eviction policy (as generate and\n"
            "eval do) and only the tokens after them are scored, teacher-forced over the compressed cache: logprobs[i] = log p(token[N+i] | ...).",
            options);
  if (!args.parse(argv)) return 0;
  args.expect_positionals(0);
  configure_threads(args.threads());
  const bool compress = args.has("context");
  if (!compress && (args.has("policy") || args.has("keep") || args.has("budget") || args.has("gates"))) {
    throw_usage("--policy, --keep, --budget and --gates apply to a compressed context", "add --context N (the tokens to compress)");
  }
  const PolicySpec spec = compress ? parse_policy_spec(args, "full", args.has("gates")) : PolicySpec();
  LlamaModel model = LlamaModel::load(args.get("model"), parse_compute_dtype(args.get("dtype")), device_from(args));
  std::vector<int64_t> tokens;
  if (args.has("text") == args.has("tokens")) throw_usage("pass exactly one of --tokens and --text (" + args.usage() + ")");
  if (args.has("text")) {
    const std::string tok_path = args.get_or("tokenizer", default_tokenizer_path(args.get("model")));
    auto tok = Tokenizer::load(tok_path);
    check_tokenizer_fits(*tok, tok_path, model.config().vocab_size);
    for (int32_t id : encode_prompt(*tok, args.get("text"))) tokens.push_back(id);
  } else {
    for (long long t : parse_int_list(args.get("tokens"), "--tokens")) tokens.push_back(t);
  }
  if (static_cast<int64_t>(tokens.size()) > model.config().max_position_embeddings) {
    throw_usage("the text is " + std::to_string(tokens.size()) + " tokens, more than the model's max_position_embeddings (" +
                    std::to_string(model.config().max_position_embeddings) + ")",
                "score a shorter text");
  }
  if (compress) {
    const int64_t context = args.get_int("context"), n = static_cast<int64_t>(tokens.size());
    if (context < 1 || context >= n) {
      throw_usage("--context " + std::to_string(context) + " must leave tokens on both sides (" + std::to_string(n) + " tokens)",
                  "use --context between 1 and " + std::to_string(n - 1));
    }
    LoadedExport exported;  // gates and LoRA together: an export is used whole
    if (args.has("gates")) exported = load_export(args.get("gates"), model, args.get("model"));
    std::cout << score_after_compression(model, exported.gates.get(), exported.lora.get(), spec, tokens, context).dump() << "\n";
    return 0;
  }
  TokenScores s = score_tokens(model, tokens);
  nlohmann::json j = {{"tokens", s.tokens}, {"logprobs", s.logprobs}, {"total", s.total}};
  std::cout << j.dump() << "\n";
  return 0;
}

}  // namespace agate::cli
