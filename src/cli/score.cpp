#include <iostream>
#include <nlohmann/json.hpp>

#include "agate/data/tokenizer.h"
#include "agate/model/llama.h"
#include "agate/model/score.h"
#include "agate/util/error.h"
#include "agate/util/threads.h"
#include "args.h"
#include "commands.h"

namespace agate::cli {

int cmd_score(const Argv& argv) {
  Args args("score", "--model DIR (--tokens 1,2,3 | --text TEXT [--tokenizer FILE]) [--dtype float32|bfloat16]",
            "Runs the model over the tokens and prints, as JSON, log p(token[t+1] | token[..t]) for each t\n"
            "and their sum. --text is encoded with --tokenizer, BOS first when the tokenizer has one.",
            {{"model", "DIR", "Hugging Face model folder (config.json + *.safetensors)", ""},
             {"tokens", "LIST", "comma-separated token ids (at least 2)", ""},
             {"text", "TEXT", "text to score instead of --tokens", ""},
             {"tokenizer", "FILE", "tokenizer.json or SentencePiece model for --text (default: DIR/tokenizer.json when supported, else DIR/tokenizer.model)", ""},
             {"dtype", "NAME", "compute dtype: float32 or bfloat16", "float32"},
             {"threads", "N", "intra-op threads (0 = all cores)", "0"},
             device_option()});
  if (!args.parse(argv)) return 0;
  args.expect_positionals(0);
  configure_threads(static_cast<int>(args.get_int("threads")));
  LlamaModel model = LlamaModel::load(args.get("model"), parse_compute_dtype(args.get("dtype")), device_from(args));
  std::vector<int64_t> tokens;
  if (args.has("text") == args.has("tokens")) throw_usage("pass exactly one of --tokens and --text\n" + args.usage());
  if (args.has("text")) {
    const std::string tok_path = args.get_or("tokenizer", default_tokenizer_path(args.get("model")));
    auto tok = Tokenizer::load(tok_path);
    if (tok->bos_id() >= 0) tokens.push_back(tok->bos_id());
    for (int32_t id : tok->encode(args.get("text"))) tokens.push_back(id);
  } else {
    for (long long t : parse_int_list(args.get("tokens"), "--tokens")) tokens.push_back(t);
  }
  TokenScores s = score_tokens(model, tokens);
  nlohmann::json j = {{"tokens", s.tokens}, {"logprobs", s.logprobs}, {"total", s.total}};
  std::cout << j.dump() << "\n";
  return 0;
}

}  // namespace agate::cli
