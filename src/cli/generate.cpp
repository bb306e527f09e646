#include <cstdio>
#include <nlohmann/json.hpp>

#include "agate/data/tokenizer.h"
#include "agate/gate/gates.h"
#include "agate/infer/gate_export.h"
#include "agate/infer/generate.h"
#include "agate/model/llama.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"
#include "agate/util/threads.h"
#include "args.h"
#include "commands.h"

namespace agate::cli {

namespace {

// One row per (layer, KV head): a cell per prompt token, '#' kept and '.' evicted.
void show_evictions(const GenerateResult& r, const Tokenizer& tok, const std::vector<int64_t>& prompt) {
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
    const std::string piece = tok.decode({static_cast<int32_t>(prompt[p])});
    out += share >= 0.75 ? "[" + piece + "]" : share < 0.25 ? "(" + piece + ")" : piece;
  }
  std::printf("%s\n", out.c_str());
}

}  // namespace

int cmd_generate(const Argv& argv) {
  Args args("generate", "--model DIR [--gates EXPORT] (--prompt TEXT | --prompt-file F) [--max-new N]",
            "Generates text over the ragged KV cache. With --gates (an agate export), the prefill\n"
            "keeps only the entries each layer's gate flags, per KV head; decode tokens are appended.\n"
            "Prints the text, then KV entries and bytes against the full cache, prefill and decode\n"
            "tokens/s. --show-evictions draws which prompt tokens each layer/head kept.",
            {{"model", "DIR", "Hugging Face model folder", ""},
             {"gates", "DIR", "gate export (agate export) for this model", ""},
             {"prompt", "TEXT", "the prompt", ""},
             {"prompt-file", "FILE", "read the prompt from a file", ""},
             {"tokenizer", "FILE", "tokenizer.json or SentencePiece model (default: DIR/tokenizer.json when supported, else DIR/tokenizer.model)", ""},
             {"max-new", "N", "tokens to generate", "64"},
             {"temperature", "T", "sampling temperature (0 = greedy)", "0"},
             {"top-p", "P", "nucleus sampling mass", "1.0"},
             {"seed", "N", "sampling seed", "0"},
             {"dtype", "NAME", "compute dtype: float32 or bfloat16", "float32"},
             {"show-evictions", "", "draw which prompt tokens each layer/head kept", ""},
             {"gate-decode", "", "also gate generated tokens (default: every generated token is kept)", ""},
             {"flags-out", "FILE", "write the prompt's keep flags as JSON {tokens, kept[layer][kv_head][token]}", ""},
             {"threads", "N", "intra-op threads (0 = all cores)", "0"},
             device_option()});
  if (!args.parse(argv)) return 0;
  args.expect_positionals(0);
  configure_threads(static_cast<int>(args.get_int("threads")));
  if (args.has("prompt") == args.has("prompt-file")) throw_usage("pass exactly one of --prompt and --prompt-file\n" + args.usage());
  const std::string model_dir = args.get("model");
  const std::string text = args.has("prompt") ? args.get("prompt") : read_file(args.get("prompt-file"));
  auto tok = Tokenizer::load(args.get_or("tokenizer", default_tokenizer_path(model_dir)));
  LlamaModel model = LlamaModel::load(model_dir, parse_compute_dtype(args.get("dtype")), device_from(args));
  std::unique_ptr<Gates> gates;
  if (args.has("gates")) gates = load_gate_export(args.get("gates"), model, model_dir);
  std::vector<int64_t> prompt;
  if (tok->bos_id() >= 0) prompt.push_back(tok->bos_id());
  for (int32_t id : tok->encode(text)) prompt.push_back(id);
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
  if (tok->eos_id() >= 0) o.stop_ids.push_back(tok->eos_id());
  o.gate_decode = args.flag("gate-decode");
  GenerateResult r = generate(model, gates.get(), prompt, o);
  std::vector<int32_t> out(r.tokens.begin(), r.tokens.end());
  if (!out.empty() && out.back() == tok->eos_id()) out.pop_back();
  std::printf("%s%s\n", text.c_str(), tok->decode(out).c_str());
  std::printf("[kv] %lld of %lld entries kept (%.1f%%), %.2f MB of %.2f MB | prompt %lld tokens, prefill %.0f tok/s | "
              "%zu new tokens, decode %.1f tok/s\n",
              (long long)r.kv_entries, (long long)r.kv_entries_full, 100.0 * r.kv_entries / std::max<int64_t>(1, r.kv_entries_full),
              r.kv_bytes / 1e6, r.kv_bytes_full / 1e6, (long long)r.prompt_tokens, r.prefill_tokens_per_s,
              r.tokens.size(), r.decode_tokens_per_s);
  if (args.flag("show-evictions")) show_evictions(r, *tok, prompt);
  if (args.has("flags-out")) {
    nlohmann::json j = {{"tokens", prompt}, {"kept", nlohmann::json::array()}};
    for (const auto& l : r.kept) {
      nlohmann::json layer = nlohmann::json::array();
      for (const auto& h : l) {
        nlohmann::json row = nlohmann::json::array();
        for (bool k : h) row.push_back(k ? 1 : 0);
        layer.push_back(row);
      }
      j["kept"].push_back(layer);
    }
    write_file_atomic(args.get("flags-out"), j.dump() + "\n");
  }
  return 0;
}

}  // namespace agate::cli
