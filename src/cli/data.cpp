#include <cstdio>
#include <vector>

#include "agate/data/dataset.h"
#include "agate/data/loader.h"
#include "agate/data/tokenizer.h"
#include "agate/util/checksum.h"
#include "agate/util/error.h"
#include "args.h"
#include "commands.h"

namespace agate::cli {

namespace {

int data_check(const std::string& dir) {
  Dataset d = Dataset::open(dir);  // validates every shard completely
  const DatasetManifest& m = d.manifest();
  uint64_t bytes = 0;
  for (const auto& s : d.shards()) bytes += s.file_bytes();
  std::printf("dataset        %s (%s, split %s)\n", dir.c_str(), m.kind.c_str(), m.split.c_str());
  std::printf("vocabulary     %u (eos %d, bos %d, tokenizer %s)\n", m.space.vocab_size, m.space.eos_id, m.space.bos_id,
              hex32(static_cast<uint32_t>(m.space.tokenizer_hash)).c_str());
  std::printf("documents      %llu\n", (unsigned long long)m.num_documents);
  std::printf("tokens         %llu (%llu loss tokens)\n", (unsigned long long)m.num_tokens, (unsigned long long)m.num_loss_tokens);
  std::printf("shards         %zu, %.2f MB\n", d.shards().size(), bytes / 1e6);
  std::printf("check          OK: headers, sizes, checksums, token ids, masks and offsets all valid\n");
  return 0;
}

int data_show(const Args& args, const std::string& dir) {
  Dataset d = Dataset::open(dir);
  LoaderOptions o;
  o.seq_len = args.get_int("seq-len", 1, int64_t(1) << 27);
  o.global_batch = 1;
  o.sft_mode = kSftModes.parse(args.get("sft-mode"), "--sft-mode");
  o.prefetch = 0;
  DataLoader loader(d, o, {});
  const long long index = args.get_int("sample");
  if (index < 0 || index >= loader.num_samples()) {
    throw_usage("--sample " + std::to_string(index) + " is out of range: the dataset has " +
                std::to_string(loader.num_samples()) + " samples at seq-len " + std::to_string(o.seq_len));
  }
  std::vector<int64_t> tokens(static_cast<size_t>(o.seq_len + 1));
  std::vector<float> mask(tokens.size());
  loader.sample(index, tokens.data(), mask.data());
  std::printf("sample %lld of %lld (seq-len %lld, %s)\ntokens:", index, (long long)loader.num_samples(),
              (long long)o.seq_len, d.is_sft() ? (std::string("sft ") + kSftModes.name(o.sft_mode)).c_str() : "cpt");
  for (auto t : tokens) std::printf(" %lld", (long long)t);
  std::printf("\nmask:  ");
  for (auto m : mask) std::printf(" %d", m > 0 ? 1 : 0);
  std::printf("\n");
  if (args.has("tokenizer")) {
    auto tok = Tokenizer::load(args.get("tokenizer"));
    if (tok->hash() != d.manifest().space.tokenizer_hash) {
      throw_input(dir, "was not made with tokenizer " + args.get("tokenizer"), "pass the tokenizer the dataset was made with");
    }
    // Render runs of context and of targets; targets in [[...]].
    std::string text;
    size_t i = 0;
    while (i < tokens.size()) {
      const bool target = mask[i] > 0;
      std::vector<int32_t> run;
      while (i < tokens.size() && (mask[i] > 0) == target) run.push_back(static_cast<int32_t>(tokens[i++]));
      const std::string piece = tok->decode(run);
      text += target && d.is_sft() ? "[[" + piece + "]]" : piece;
    }
    std::printf("text%s:\n%s\n", d.is_sft() ? " (loss targets in [[ ]])" : "", text.c_str());
  }
  return 0;
}

}  // namespace

int cmd_data(const Argv& argv) {
  Args args("data", "check DIR | show DIR --sample N [--tokenizer FILE]",
            "check: validates every shard of a dataset completely (header, size, checksum, token ids,\n"
            "       masks, document offsets) and prints its summary.\n"
            "show:  prints one loader sample (before shuffling): tokens, loss mask and, with a\n"
            "       tokenizer, the text.",
            {{"sample", "N", "sample index (show)", "0"},
             {"seq-len", "T", "sample length as the trainer would use it (show)", "256"},
             {"sft-mode", "MODE", "pad or pack (show, sft datasets)", "pad"},
             {"tokenizer", "FILE", "tokenizer.json or SentencePiece model to decode with (show)", ""}});
  if (!args.parse(argv)) return 0;
  args.expect_positionals(2, "the action (check or show) and the dataset folder");
  const std::string action = args.positionals()[0], dir = args.positionals()[1];
  if (action == "check") return data_check(dir);
  if (action == "show") return data_show(args, dir);
  throw_usage("unknown data action '" + action + "' (" + args.usage() + ")", "use check or show");
}

}  // namespace agate::cli
