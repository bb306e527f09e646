#include <cstdio>

#include "agate/data/tokenize.h"
#include "agate/data/dataset.h"
#include "agate/data/tokenizer.h"
#include "agate/eval/eval.h"
#include "agate/infer/gate_export.h"
#include "agate/model/llama.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"
#include "agate/util/threads.h"
#include "args.h"
#include "policy_args.h"
#include "commands.h"

namespace agate::cli {

int cmd_eval(const Argv& argv) {
  std::vector<Option> options = {
      {"model", "DIR", "Hugging Face model folder", ""},
      {"gates", "DIR", "gate export (agate export); its LoRA is applied to every policy", ""},
      {"task", "NAME", "ppl | choice | passkey", ""},
      {"data", "DIR", "token dataset (ppl)", ""},
      {"file", "FILE", "JSONL task file (choice, passkey)", ""},
      {"question-after", "", "passkey: compress the context before the question arrives (question-agnostic; needs \"question\" in each line)", ""},
      {"policies", "LIST", "policies to run (default: every baseline, and gate, gate-post, gate-rank, ada-gate with --gates)", ""},
      {"keep", "LIST", "keep ratios of the context, e.g. 0.5,0.25", ""},
      {"budget", "LIST", "absolute budgets in tokens per KV head, e.g. 32,64", ""},
      {"match-gate", "", "run every baseline at exactly the entries the gates kept, per sample and layer", ""},
      {"samples", "N", "samples to evaluate (ppl: windows; JSONL: the first N lines, 0 = all)", "64"},
      {"context", "N", "ppl: context tokens per window", "96"},
      {"continuation", "N", "ppl: continuation tokens per window", "32"}};
  for (Option& p : policy_tuning_options()) options.push_back(std::move(p));
  options.insert(options.end(),
                 {{"tokenizer", "FILE", "tokenizer.json or SentencePiece model (default: DIR/tokenizer.json when supported, else DIR/tokenizer.model)", ""},
                  {"template", "NAME", "SFT template for passkey: default, chatml or a JSON file", "default"},
                  {"add-bos", "", "prepend BOS to JSONL contexts (as tokenize --bos)", ""},
                  {"json", "FILE", "also write the results as JSON", ""},
                  {"plot", "FILE", "also write an SVG plot of the metric against keep ratio", ""},
                  {"dtype", "NAME", "compute dtype: float32 or bfloat16", "float32"},
                  {"threads", "N", "intra-op threads (0 = all cores)", "0"},
                  device_option()});
  Args args("eval", "--model DIR [--gates EXPORT] --task ppl|choice|passkey (--data DIR | --file F) [--keep R,.. | --budget N,.. | --match-gate]",
            "Compresses each sample's context with every policy at the same KV budgets, scores the\n"
            "continuation over the compressed (ragged) cache and prints a markdown table: policy,\n"
            "keep ratio, KV bytes, the metric and its change against the full cache, samples/s and\n"
            "the prefill + selection time against a full prefill. See README \"Evaluation\".\n"
            "  ppl      --data TOKENS: windows of --context + --continuation tokens, perplexity\n"
            "  choice   --file JSONL {\"context\", \"choices\", \"answer\"}: accuracy\n"
            "  passkey  --file JSONL {\"prompt\", \"response\", \"depth\"} (tools/make_passkey.py): exact match",
            options);
  if (!args.parse(argv)) return 0;
  args.expect_positionals(0);
  configure_threads(args.threads());
  const std::string model_dir = args.get("model"), task_name = args.get("task");
  for (const char* out : {"json", "plot"}) args.refuse_output_over_inputs(out, {"model", "gates", "data", "file", "tokenizer", "template"});
  if (task_name != "ppl" && task_name != "choice" && task_name != "passkey") {
    throw_usage("unknown task '" + task_name + "' (use ppl, choice or passkey)");
  }
  eval::EvalOptions o;
  for (const auto& v : args.has("keep") ? args.get_list("keep") : std::vector<std::string>{}) o.budgets.push_back(eval::parse_budget(v, false));
  for (const auto& v : args.has("budget") ? args.get_list("budget") : std::vector<std::string>{}) o.budgets.push_back(eval::parse_budget(v, true));
  if (args.flag("match-gate")) o.budgets.push_back(eval::parse_budget("gate", false));
  if (o.budgets.empty()) o.budgets.push_back(eval::parse_budget(args.has("gates") ? "gate" : "0.5", false));
  o.policy = policy_tuning(args);
  if (args.has("policies")) {
    o.policies = args.get_list("policies");
  } else {
    o.policies = evict::baseline_names();
    if (args.has("gates")) o.policies.insert(o.policies.begin(), {"gate", "gate-post", "gate-rank", "ada-gate"});
  }
  for (const auto& p : o.policies) {  // refuses unknown names before any work
    if (p != "gate" && p != "gate-post" && !evict::ranks_by_gates(p)) evict::make_policy(p, o.policy);
    if ((p == "gate" || p == "gate-post" || evict::ranks_by_gates(p)) && !args.has("gates")) {
      throw_usage("policy " + p + " needs the gates", "pass --gates EXPORT (agate export)");
    }
  }

  LlamaModel model = LlamaModel::load(model_dir, parse_compute_dtype(args.get("dtype")), device_from(args));
  LoadedExport exported;  // gates and LoRA together: an export is used whole
  if (args.has("gates")) exported = load_export(args.get("gates"), model, model_dir);
  o.gates = exported.gates.get();
  o.adapter = exported.lora.get();
  const int64_t samples = args.get_int("samples", 0, int64_t(1) << 40);
  eval::Task task;
  if (task_name == "ppl") {
    check_dataset_tokenizer(read_manifest(args.get("data")), args.get("data"), model_dir, "--data");
    task = eval::perplexity_task(args.get("data"), args.get_int("context", 1, int64_t(1) << 27),
                                 args.get_int("continuation", 1, int64_t(1) << 27), samples);
  } else {
    const std::string tok_path = args.get_or("tokenizer", default_tokenizer_path(model_dir));
    auto tok = Tokenizer::load(tok_path);
    check_tokenizer_fits(*tok, tok_path, model.config().vocab_size);
    task = task_name == "choice" ? eval::choice_task(args.get("file"), *tok, args.flag("add-bos"), samples)
                                 : eval::passkey_task(args.get("file"), *tok, SftTemplate::named(args.get("template")),
                                                      args.flag("add-bos"), samples, args.flag("question-after"));
  }
  const eval::Report rep = eval::evaluate(model, task, o);
  std::printf("%s", eval::markdown(rep).c_str());
  if (args.has("json")) write_file_atomic(args.get("json"), eval::json_text(rep));
  if (args.has("plot")) write_file_atomic(args.get("plot"), eval::svg_plot(rep));
  return 0;
}

}  // namespace agate::cli
