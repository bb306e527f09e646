#include <cstdio>
#include <filesystem>

#include "agate/data/tokenize.h"
#include "agate/data/tokenizer.h"
#include "agate/util/error.h"
#include "agate/util/threads.h"
#include "args.h"
#include "commands.h"

namespace agate::cli {

int cmd_tokenize(const Argv& argv) {
  Args args("tokenize", "--tokenizer FILE --input FILE [--input FILE ...] --out DIR [--kind cpt|sft]",
            "Tokenizes text into a train and a val dataset (DIR/train, DIR/val), each a folder of\n"
            "shards plus manifest.json (written last). Inputs: plain text (documents separated by\n"
            "blank lines) or JSONL: cpt reads the --text-field of each line; sft reads\n"
            "{\"prompt\", \"response\"} or {\"messages\": [{\"role\", \"content\"}, ...]}. The val split\n"
            "takes documents by a hash of their content, so it does not depend on input order.\n"
            "sft truncation (--max-len): the oldest context is cut on the left so the last reply fits;\n"
            "a reply longer than max-len alone keeps its start; documents left without target tokens\n"
            "are skipped. Every skip and truncation is counted in the summary.",
            {{"tokenizer", "FILE", "tokenizer.json or SentencePiece model", ""},
             {"input", "FILE", "input file(s); repeat or separate with commas", ""},
             {"out", "DIR", "output folder (refused if it holds a dataset, unless --force)", ""},
             {"kind", "KIND", "cpt or sft", "cpt"},
             {"format", "FMT", "auto, text or jsonl (auto: .jsonl/.json are JSONL)", "auto"},
             {"text-field", "NAME", "JSONL field holding the text (cpt)", "text"},
             {"bos", "", "prepend BOS to every document", ""},
             {"val-fraction", "F", "share of documents in the val split", "0.01"},
             {"shard-tokens", "N", "tokens per shard", "16777216"},
             {"template", "NAME", "sft template: default, chatml or a JSON file", "default"},
             {"max-len", "N", "sft: truncate documents to N tokens (0 = off)", "0"},
             {"threads", "N", "tokenizer threads", "2"},
             {"force", "", "replace the dataset in --out (once the new one is complete)", ""}});
  if (!args.parse(argv)) return 0;
  args.expect_positionals(0);
  TokenizeOptions o;
  o.inputs = args.get_list("input");
  o.out = args.get("out");
  namespace fs = std::filesystem;
  for (const char* split : {"train", "val"}) {  // what the swap would replace
    const fs::path p = fs::path(o.out) / split;
    if (args.flag("force") || !fs::exists(p)) continue;
    if (fs::exists(p / "manifest.json")) {
      throw_usage("'" + o.out + "' already holds a dataset", "pass --force to replace it (only once the new one is complete), or choose another --out");
    }
    throw_usage("'" + p.string() + "' exists and is not a dataset (no manifest.json)", "pass --force to replace it, or choose another --out");
  }
  o.kind = args.get("kind");
  o.format = args.get("format");
  o.text_field = args.get("text-field");
  o.add_bos = args.flag("bos");
  o.val_fraction = args.get_double("val-fraction");
  const long long shard_tokens = args.get_int("shard-tokens");
  if (shard_tokens < 1) throw_usage("--shard-tokens must be positive");
  o.shard_tokens = static_cast<uint64_t>(shard_tokens);
  o.sft_template = SftTemplate::named(args.get("template"));
  o.max_len = args.get_int("max-len");
  o.threads = static_cast<int>(args.get_int("threads", 1, 1 << 20));
  check_thread_count(o.threads, "--threads");  // before any work
  auto tok = Tokenizer::load(args.get("tokenizer"));
  TokenizeSummary s = tokenize_corpus(*tok, o);

  std::printf("tokenized %.2f MB of text in %.2f s (%.2f MB/s, %d threads)\n", s.input_bytes / 1e6, s.seconds,
              s.input_bytes / 1e6 / std::max(s.seconds, 1e-9), o.threads);
  for (auto [name, sp] : {std::pair<const char*, SplitSummary>{"train", s.train}, {"val", s.val}}) {
    std::printf("  %-5s %8llu documents %11llu tokens %11llu loss tokens %4llu shards -> %s/%s\n", name,
                (unsigned long long)sp.documents, (unsigned long long)sp.tokens, (unsigned long long)sp.loss_tokens,
                (unsigned long long)sp.shards, o.out.c_str(), name);
  }
  for (const auto& [why, n] : s.skipped) std::printf("  skipped %llu documents: %s\n", (unsigned long long)n, why.c_str());
  for (const auto& [why, n] : s.truncated) std::printf("  truncated %llu documents: %s\n", (unsigned long long)n, why.c_str());
  if (s.invalid_utf8 > 0) {
    std::printf("  replaced invalid UTF-8 in %llu documents: each bad byte was read as U+FFFD\n", (unsigned long long)s.invalid_utf8);
  }
  if (s.skipped.empty() && s.truncated.empty() && s.invalid_utf8 == 0) std::printf("  nothing skipped, truncated or replaced\n");
  return 0;
}

}  // namespace agate::cli
