#include <climits>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "agate/data/tokenizer.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"
#include "agate/util/logging.h"
#include "agate/util/timer.h"
#include "args.h"
#include "commands.h"

namespace agate::cli {

namespace {

int train(const Args& args) {
  TokenizerTrainOptions o;
  o.inputs = args.get_list("input");
  o.out = args.get("out");
  o.vocab_size = args.get_int("vocab", 16, 1 << 24);
  o.model_type = args.get("model-type");
  o.byte_fallback = !args.flag("no-byte-fallback");
  o.max_sentences = args.get_int("max-sentences", 1, int64_t(1) << 40);
  o.threads = static_cast<int>(args.get_int("threads", 1, 1 << 20));
  args.refuse_output_over_inputs("out", {"input"});
  const double t0 = now_seconds();
  train_tokenizer(o);
  auto tok = Tokenizer::load(o.out);
  log::info("wrote {} (vocab {}, {}) in {:.1f} s", o.out, tok->vocab_size(), o.model_type, now_seconds() - t0);
  return 0;
}

// The lines of a JSON-lines file, each parsed (blank lines skipped).
std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_input(path, "cannot be read", "pass an existing JSON-lines file");
  std::vector<nlohmann::json> out;
  std::string line;
  for (size_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      out.push_back(nlohmann::json::parse(line));
    } catch (const nlohmann::json::exception& e) {
      throw_input(path + ":" + std::to_string(n), std::string("is not JSON: ") + e.what(), "one JSON value per line");
    }
  }
  return out;
}

int encode(const Args& args) {
  if (args.has("text") + args.has("file") + args.has("jsonl") != 1) {
    throw_usage("encode takes exactly one of --text, --file and --jsonl (" + args.usage() + ")");
  }
  const double t0 = now_seconds();
  auto tok = Tokenizer::load(args.get("tokenizer"));
  const double load_s = now_seconds() - t0;
  std::vector<std::string> texts;
  if (args.has("text")) texts.push_back(args.get("text"));
  if (args.has("file")) texts.push_back(read_file(args.get("file")));
  if (args.has("jsonl")) {
    for (const auto& j : read_jsonl(args.get("jsonl"))) {
      if (!j.is_string()) throw_input(args.get("jsonl"), "holds a line that is not a JSON string", "one JSON string per line");
      texts.push_back(j.get<std::string>());
    }
  }
  std::vector<std::vector<int32_t>> ids(texts.size());
  const double t1 = now_seconds();
  for (size_t i = 0; i < texts.size(); ++i) ids[i] = tok->encode(texts[i]);
  if (args.flag("special")) {
    const Tokenizer::Specials sp = tok->specials();
    for (auto& v : ids) {
      v.insert(v.begin(), sp.prefix.begin(), sp.prefix.end());
      v.insert(v.end(), sp.suffix.begin(), sp.suffix.end());
    }
  }
  const double encode_s = now_seconds() - t1;
  if (args.flag("stats")) {
    size_t bytes = 0, tokens = 0;
    for (size_t i = 0; i < texts.size(); ++i) bytes += texts[i].size(), tokens += ids[i].size();
    const nlohmann::json s = {{"bytes", bytes}, {"tokens", tokens}, {"load_s", load_s}, {"encode_s", encode_s},
                              {"mb_per_s", bytes / 1e6 / std::max(encode_s, 1e-9)}};
    std::cout << s.dump() << "\n";
    return 0;
  }
  for (const auto& v : ids) std::cout << nlohmann::json(v).dump() << "\n";
  return 0;
}

std::vector<int32_t> ids_of(const nlohmann::json& j, const std::string& where) {
  if (!j.is_array()) throw_input(where, "is not a JSON list of token ids", "e.g. [1, 2, 3]");
  std::vector<int32_t> ids;
  for (const auto& v : j) {
    if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX) {
      throw_input(where, "holds a token id that is not a 32-bit integer", "token ids are small non-negative integers");
    }
    ids.push_back(static_cast<int32_t>(v.get<int64_t>()));
  }
  return ids;
}

int decode(const Args& args) {
  if (args.has("ids") == args.has("jsonl")) throw_usage("decode takes exactly one of --ids and --jsonl (" + args.usage() + ")");
  auto tok = Tokenizer::load(args.get("tokenizer"));
  if (args.has("ids")) {
    const std::string text = args.get("ids");
    std::vector<int32_t> ids;
    if (text.find('[') != std::string::npos) {
      try {
        ids = ids_of(nlohmann::json::parse(text), "--ids");
      } catch (const nlohmann::json::exception&) {
        throw_usage("--ids is not a JSON list of integers", "e.g. --ids 1,2,3 or --ids '[1, 2, 3]'");
      }
    } else {
      for (long long x : parse_int_list(text, "--ids")) {
        if (x < 0 || x > INT32_MAX) throw_usage("--ids holds " + std::to_string(x) + ", not a token id", "token ids are small non-negative integers");
        ids.push_back(static_cast<int32_t>(x));
      }
    }
    std::cout << tok->decode(ids) << "\n";
    return 0;
  }
  // One JSON string per line: newlines and invalid bytes in the text stay unambiguous.
  for (const auto& j : read_jsonl(args.get("jsonl"))) {
    std::cout << nlohmann::json(tok->decode(ids_of(j, args.get("jsonl")))).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
              << "\n";
  }
  return 0;
}

}  // namespace

int cmd_tokenizer(const Argv& argv) {
  Args args("tokenizer", "train|encode|decode ...",
            "train  --input FILE [--input FILE ...] --vocab N --out tok.model\n"
            "       Trains a SentencePiece tokenizer (BPE with byte fallback by default, so any text\n"
            "       round-trips; unk=0, bos=1, eos=2). Several inputs: repeat --input or separate with commas.\n"
            "encode --tokenizer FILE (--text TEXT | --file F | --jsonl F) [--special] [--stats]\n"
            "       Prints the token ids as a JSON list (no BOS/EOS added; for a tokenizer.json exactly\n"
            "       tokenizers' encode(text, add_special_tokens=False).ids). --special: with the ids the\n"
            "       tokenizer adds around a text (transformers' tokenizer(text); a tokenizer.json's\n"
            "       post_processor, a SentencePiece model's BOS). --jsonl: one JSON string per line in,\n"
            "       one list per line out. --stats: print sizes and timings instead.\n"
            "decode --tokenizer FILE (--ids 1,2,3 | --ids '[1,2,3]' | --jsonl F)\n"
            "       Prints the text; --jsonl: one JSON list per line in, one JSON string per line out.\n"
            "FILE is a tokenizer.json (byte-level BPE) or a SentencePiece .model.",
            {{"input", "FILE", "train: text file(s), one sentence or paragraph per line", ""},
             {"vocab", "N", "train: vocabulary size", "8192"},
             {"out", "FILE", "train: output model path, must end in .model", ""},
             {"model-type", "TYPE", "train: bpe or unigram", "bpe"},
             {"no-byte-fallback", "", "train: map unseen characters to <unk> instead of bytes", ""},
             {"max-sentences", "N", "train: lines sampled for training when inputs hold more", "2000000"},
             {"threads", "N", "train: trainer threads", "2"},
             {"tokenizer", "FILE", "encode/decode: tokenizer.json or SentencePiece model", ""},
             {"text", "TEXT", "encode: the text", ""},
             {"file", "F", "encode: a file holding the text (all of it, as one string)", ""},
             {"jsonl", "F", "encode/decode: a JSON-lines file, one input per line", ""},
             {"special", "", "encode: add the special ids the tokenizer puts around a text (BOS, ...)", ""},
             {"stats", "", "encode: print bytes, tokens, load and encode seconds as JSON", ""},
             {"ids", "LIST", "decode: token ids", ""}});
  if (!args.parse(argv)) return 0;
  args.expect_positionals(1, "the action (train, encode or decode)");
  const std::string action = args.positionals()[0];
  if (action == "train") return train(args);
  if (action == "encode") return encode(args);
  if (action == "decode") return decode(args);
  throw_usage("unknown tokenizer action '" + action + "' (" + args.usage() + ")", "use train, encode or decode");
}

}  // namespace agate::cli
