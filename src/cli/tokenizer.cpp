#include "agate/util/logging.h"


#include "agate/data/tokenizer.h"
#include "agate/util/error.h"
#include "agate/util/timer.h"
#include "args.h"
#include "commands.h"

namespace agate::cli {

int cmd_tokenizer(const Argv& argv) {
  Args args("tokenizer", "train --input FILE [--input FILE ...] --vocab N --out tok.model",
            "Trains a SentencePiece tokenizer (BPE with byte fallback by default, so any text\n"
            "round-trips; unk=0, bos=1, eos=2). Several inputs: repeat --input or separate with commas.",
            {{"input", "FILE", "text file(s), one sentence or paragraph per line", ""},
             {"vocab", "N", "vocabulary size", "8192"},
             {"out", "FILE", "output model path, must end in .model", ""},
             {"model-type", "TYPE", "bpe or unigram", "bpe"},
             {"no-byte-fallback", "", "map unseen characters to <unk> instead of bytes", ""},
             {"max-sentences", "N", "lines sampled for training when inputs hold more", "2000000"},
             {"threads", "N", "trainer threads", "2"}});
  if (!args.parse(argv)) return 0;
  args.expect_positionals(1, "the action (train)");
  if (args.positionals()[0] != "train") throw_usage("unknown tokenizer action '" + args.positionals()[0] + "'\n" + args.usage());
  TokenizerTrainOptions o;
  o.inputs = args.get_list("input");
  o.out = args.get("out");
  o.vocab_size = args.get_int("vocab");
  o.model_type = args.get("model-type");
  o.byte_fallback = !args.flag("no-byte-fallback");
  o.max_sentences = args.get_int("max-sentences");
  o.threads = static_cast<int>(args.get_int("threads"));
  const double t0 = now_seconds();
  train_tokenizer(o);
  auto tok = Tokenizer::load(o.out);
  log::info("wrote {} (vocab {}, {}) in {:.1f} s", o.out, tok->vocab_size(), o.model_type, now_seconds() - t0);
  return 0;
}

}  // namespace agate::cli
