// The `agate` binary: picks a subcommand and turns errors into one line and an exit status.
#include <c10/util/Exception.h>

#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "agate/util/device.h"
#include "agate/util/error.h"
#include "agate/util/logging.h"
#include "agate/util/memory.h"
#include "commands.h"

namespace {

struct Command {
  const char* name;
  int (*run)(const agate::cli::Argv&);
  const char* summary;
};

const Command kCommands[] = {
    {"bench", agate::cli::cmd_bench, "micro-benchmarks (forward, load, loader, train, decode, matmul), one JSON line each"},
    {"data", agate::cli::cmd_data, "check a token dataset, or show one of its samples"},
    {"eval", agate::cli::cmd_eval, "every eviction policy side by side at matched KV budgets (perplexity, choice, passkey)"},
    {"export", agate::cli::cmd_export, "write a run's trained gates on their own, for any inference backend"},
    {"generate", agate::cli::cmd_generate, "generate text over the ragged KV cache, with or without gates"},
    {"init-model", agate::cli::cmd_init_model, "write a randomly initialised model in Hugging Face layout"},
    {"inspect", agate::cli::cmd_inspect, "print a model folder's config, parameter count and bytes by dtype"},
    {"score", agate::cli::cmd_score, "print the log-probability of each next token, as JSON"},
    {"tokenize", agate::cli::cmd_tokenize, "turn text (cpt) or prompt/response JSONL (sft) into token shards"},
    {"tokenizer", agate::cli::cmd_tokenizer, "train a SentencePiece tokenizer; encode or decode text"},
    {"train", agate::cli::cmd_train, "train gates (+LoRA) on a frozen model, or pretrain one, from a YAML recipe"},
};

void print_usage(std::ostream& out) {
  out << "usage: agate <command> [options]    (agate <command> --help for details)\n\n"
         "agate trains KV-cache eviction gates for frozen Llama-family models.\n\ncommands:\n";
  for (const auto& c : kCommands) {
    std::string name = c.name;
    out << "  " << name << std::string(name.size() < 14 ? 14 - name.size() : 1, ' ') << c.summary << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    print_usage(std::cerr);
    return 2;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    print_usage(std::cout);
    return 0;
  }
  if (name == "--version") {
    std::cout << agate::build_info() << "\n";
    return 0;
  }
  for (const auto& c : kCommands) {
    if (name != c.name) continue;
    try {
      agate::init_logging();
      agate::tune_allocator();
      return c.run(agate::cli::Argv(argv + 2, argv + argc));
    } catch (const agate::Error& e) {
      std::cerr << "error: " << e.what() << "\n";
      return e.exit_code();
    } catch (const c10::Error& e) {
      std::cerr << "error: internal (torch): " << e.what_without_backtrace() << "\n";
      return 1;
    } catch (const std::exception& e) {
      std::cerr << "error: " << e.what() << "\n";
      return 1;
    }
  }
  std::cerr << "error: unknown command '" << name << "'\n";
  print_usage(std::cerr);
  return 2;
}
