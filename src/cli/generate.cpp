#include <cstdio>
#include <nlohmann/json.hpp>

#include "agate/data/tokenizer.h"
#include "agate/evict/policy.h"
#include "agate/gate/gates.h"
#include "agate/infer/gate_export.h"
#include "agate/infer/generate.h"
#include "agate/model/llama.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"
#include "agate/util/threads.h"
#include "args.h"
#include "policy_args.h"
#include "commands.h"

namespace agate::cli {

namespace {

// One row per (layer, KV head): a cell per prompt token, '#' kept and '.' evicted. tok may be
// null (--tokens without a tokenizer): the prompt line then shows token ids.
void show_evictions(const GenerateResult& r, const Tokenizer* tok, const std::vector<int64_t>& prompt) {
  const size_t T = prompt.size(), width = 96;
  std::printf("\nKV entries kept per layer and KV head ('#' kept, '.' evicted), prompt tokens left to right:\n");
  for (size_t start = 0; start < T; start += width) {
    const size_t end = std::min(T, start + width);
    std::printf("tokens %zu-%zu\n", start, end - 1);
    for (size_t l = 0; l < r.kept.size(); ++l) {
      for (size_t g = 0; g < r.kept[l].size(); ++g) {
        size_t kept = 0;
        for (size_t p = 0; p < T; ++p) kept += r.kept[l][g][p];
        std::printf("  L%02zu H%zu %5.1f%% ", l, g, 100.0 * kept / T);
        for (size_t p = start; p < end; ++p) std::putchar(r.kept[l][g][p] ? '#' : '.');
        std::putchar('\n');
      }
    }
  }
  // The prompt with each token's share of heads keeping it: [text] kept by most, (text) by few.
  std::printf("\nprompt, each token marked by how many layer-heads keep it ([x] >= 75%%, x 25-75%%, (x) < 25%%):\n");
  std::string out;
  for (size_t p = 0; p < T; ++p) {
    size_t kept = 0, all = 0;
    for (const auto& l : r.kept)
      for (const auto& h : l) kept += h[p], ++all;
    const double share = static_cast<double>(kept) / static_cast<double>(all);
    const std::string piece = tok ? tok->decode({static_cast<int32_t>(prompt[p])}) : " " + std::to_string(prompt[p]);
    out += share >= 0.75 ? "[" + piece + "]" : share < 0.25 ? "(" + piece + ")" : piece;
  }
  std::printf("%s\n", out.c_str());
}

// --flags-out: {"policy", "tokens", "kept": [layer][kv_head][token] 0/1}.
std::string flags_json(const GenerateResult& r, const std::string& policy, const std::vector<int64_t>& prompt) {
  nlohmann::json j = {{"policy", policy}, {"tokens", prompt}, {"kept", nlohmann::json::array()}};
  for (const auto& l : r.kept) {
    nlohmann::json layer = nlohmann::json::array();
    for (const auto& h : l) {
      nlohmann::json row = nlohmann::json::array();
      for (bool k : h) row.push_back(k ? 1 : 0);
      layer.push_back(row);
    }
    j["kept"].push_back(layer);
  }
  return j.dump() + "\n";
}

std::string id_list(const std::vector<int64_t>& ids) {
  std::string s;
  for (int64_t id : ids) s += (s.empty() ? "" : ",") + std::to_string(id);
  return s;
}

}  // namespace

int cmd_generate(const Argv& argv) {
  std::vector<Option> options = {
      {"model", "DIR", "Hugging Face model folder", ""},
      {"gates", "DIR", "gate export (agate export) for this model", ""},
      {"prompt", "TEXT", "the prompt (after the ids its tokenizer puts first, e.g. BOS: tokenizer encode --special)", ""},
      {"prompt-file", "FILE", "read the prompt from a file", ""},
      {"tokens", "LIST", "the prompt as comma-separated token ids (no tokenizer needed)", ""},
      {"tokenizer", "FILE", "tokenizer.json or SentencePiece model (default: DIR/tokenizer.json when supported, else DIR/tokenizer.model)", ""},
      {"max-new", "N", "tokens to generate", "64"},
      {"temperature", "T", "sampling temperature (0 = greedy)", "0"},
      {"top-p", "P", "nucleus sampling mass", "1.0"},
      {"seed", "N", "sampling seed", "0"},
      {"dtype", "NAME", "compute dtype: float32 or bfloat16", "float32"}};
  for (Option& o : policy_choice_options("default: gate with --gates, else full")) options.push_back(std::move(o));
  options.insert(options.end(),
                 {{"show-evictions", "", "draw which prompt tokens each layer/head kept", ""},
                  {"gate-decode", "", "gate policies: also gate generated tokens (default: every generated token is kept)", ""},
                  {"flags-out", "FILE", "write the prompt's keep flags as JSON {policy, tokens, kept[layer][kv_head][token]}", ""},
                  {"threads", "N", "intra-op threads (0 = all cores)", "0"},
                  device_option()});
  Args args("generate", "--model DIR [--gates EXPORT] (--prompt TEXT | --prompt-file F | --tokens 1,2,3) [--policy NAME [--keep R | --budget N]] [--max-new N]",
            "Generates text over the ragged KV cache. An eviction policy compresses the prompt per layer\n"
            "and KV head: the gates (--gates; they keep what they flag during the prefill), or any\n"
            "training-free policy after a full prefill at --keep R of the prompt or --budget N entries\n"
            "per KV head (options as in eval); decode tokens are appended. Prints the text (with\n"
            "--tokens also the generated ids), then KV entries and bytes against the full cache,\n"
            "prefill and decode tokens/s. --show-evictions draws which prompt tokens each layer/head kept.",
            options);
  if (!args.parse(argv)) return 0;
  args.expect_positionals(0);
  configure_threads(args.threads());
  if (args.has("prompt") + args.has("prompt-file") + args.has("tokens") != 1) {
    throw_usage("pass exactly one of --prompt, --prompt-file and --tokens (" + args.usage() + ")");
  }
  const bool ids_given = args.has("tokens");
  const PolicySpec spec = parse_policy_spec(args, args.has("gates") ? "gate" : "full", args.has("gates"));
  const std::string model_dir = args.get("model");
  const std::string text = args.has("prompt") ? args.get("prompt") : args.has("prompt-file") ? read_file(args.get("prompt-file")) : "";
  std::unique_ptr<Tokenizer> tok;  // with --tokens only needed to show text: a default one that fails to load is skipped
  const std::string tok_path = args.get_or("tokenizer", default_tokenizer_path(model_dir));
  try {
    tok = Tokenizer::load(tok_path);
  } catch (const Error&) {
    if (!ids_given || args.has("tokenizer")) throw;
  }
  LlamaModel model = LlamaModel::load(model_dir, parse_compute_dtype(args.get("dtype")), device_from(args));
  if (tok) check_tokenizer_fits(*tok, tok_path, model.config().vocab_size);
  args.refuse_output_over_inputs("flags-out", {"model", "gates", "tokenizer", "prompt-file"});
  LoadedExport exported;  // gates and LoRA together: an export is used whole
  if (args.has("gates")) exported = load_export(args.get("gates"), model, model_dir);
  Gates* gates = exported.gates.get();
  std::vector<int64_t> prompt;
  if (ids_given) {
    const int64_t V = model.config().vocab_size;
    for (long long t : parse_int_list(args.get("tokens"), "--tokens")) {
      if (t < 0 || t >= V) {
        throw_usage("--tokens holds " + std::to_string(t) + ", outside the model's vocabulary [0, " + std::to_string(V) + ")",
                    "ids come from the model's tokenizer (agate tokenizer encode)");
      }
      prompt.push_back(t);
    }
    if (prompt.empty()) throw_usage("--tokens needs at least one id", "e.g. --tokens 1,2,3");
  } else {
    for (int32_t id : encode_prompt(*tok, text)) prompt.push_back(id);
  }
  GenerateOptions o;
  o.max_new = args.get_int("max-new");
  const int64_t max_pos = model.config().max_position_embeddings, room = max_pos - static_cast<int64_t>(prompt.size());
  if (o.max_new < 1 || o.max_new > room) {
    throw_usage("--max-new " + std::to_string(o.max_new) + ": the prompt (" + std::to_string(prompt.size()) +
                    " tokens) plus the new tokens must fit the model's max_position_embeddings (" + std::to_string(max_pos) + ")",
                room > 0 ? "use --max-new between 1 and " + std::to_string(room) : "shorten the prompt");
  }
  o.temperature = args.get_double("temperature");
  o.top_p = args.get_double("top-p");
  o.seed = static_cast<uint64_t>(args.get_int("seed"));
  if (tok && tok->eos_id() >= 0) o.stop_ids.push_back(tok->eos_id());
  if (!tok) o.stop_ids = model.config().eos_token_ids;  // --tokens without a tokenizer: the model's EOS
  const PolicyChoice choice = make_policy_choice(spec, gates, model.config(), static_cast<int64_t>(prompt.size()),
                                                 args.flag("gate-decode"));
  o.adapter = exported.lora.get();
  // The text streams: the prompt, then each new piece as soon as it decodes to whole characters.
  std::vector<int32_t> so_far;
  std::string printed;
  auto show = [&](const std::string& text) {
    if (text.compare(0, printed.size(), printed) != 0) return;  // decoding rewrote earlier text: wait
    std::fwrite(text.data() + printed.size(), 1, text.size() - printed.size(), stdout);
    std::fflush(stdout);
    printed = text;
  };
  if (tok) {
    const std::string shown = ids_given ? tok->decode(std::vector<int32_t>(prompt.begin(), prompt.end())) : text;
    std::fwrite(shown.data(), 1, shown.size(), stdout);
    std::fflush(stdout);
    o.on_token = [&](int64_t id) {
      if (id == tok->eos_id()) return;
      so_far.push_back(static_cast<int32_t>(id));
      const std::string t = tok->decode(so_far);
      if (t.size() >= 3 && t.compare(t.size() - 3, 3, "\xEF\xBF\xBD") == 0) return;  // a character still incomplete
      show(t);
    };
  }
  GenerateResult r = generate(model, *choice.policy, choice.layer_budgets, prompt, o);
  if (gates) gates->set_decode_cache(false);
  if (tok) {
    show(tok->decode(so_far));
    std::printf("\n");
  }
  if (ids_given) std::printf("[ids] %s\n", id_list(r.tokens).c_str());
  std::printf("[kv] %lld of %lld entries kept (%.1f%%), %.2f MB of %.2f MB | prompt %lld tokens, prefill %.0f tok/s | "
              "%zu new tokens, decode %.1f tok/s\n",
              (long long)r.kv_entries, (long long)r.kv_entries_full, 100.0 * r.kv_entries / std::max<int64_t>(1, r.kv_entries_full),
              r.kv_bytes / 1e6, r.kv_bytes_full / 1e6, (long long)r.prompt_tokens, r.prefill_tokens_per_s,
              r.tokens.size(), r.decode_tokens_per_s);
  std::string budget;
  if (spec.has_budget) budget = spec.tokens ? ", budget " + std::to_string(static_cast<int64_t>(spec.value)) + " per KV head" : ", keep " + args.get("keep");
  std::printf("[policy] %s%s%s\n", choice.policy->name().c_str(), budget.c_str(), spec.options.kvpress ? " (kvpress definitions)" : "");
  if (args.flag("show-evictions")) show_evictions(r, tok.get(), prompt);
  if (args.has("flags-out")) write_file_atomic(args.get("flags-out"), flags_json(r, choice.policy->name(), prompt));
  return 0;
}

}  // namespace agate::cli
