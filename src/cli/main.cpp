// The `agate` binary: picks a subcommand and turns errors into one line and an exit status.
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <iostream>
#include <new>
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

// Levenshtein distance, for "did you mean" on a mistyped command.
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// Every refusal is one line: a message that spans lines (a library's) is joined.
std::string one_line(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  for (char& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  return text;
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
      // Internal errors name the command too: the report needs it.
      std::cerr << "error: " << (e.kind() == agate::Error::Kind::Internal ? "'agate " + name + "': " : "")
                << one_line(e.what()) << "\n";
      return e.exit_code();
    } catch (const c10::Error& e) {
      const std::string what = one_line(e.what_without_backtrace());
      if (what.find("can't allocate memory") != std::string::npos || what.find("out of memory") != std::string::npos) {
        std::cerr << "error: 'agate " << name << "' ran out of memory (" << what.substr(0, 200)
                  << ") (hint: a smaller model, batch, sequence or budget, or more memory)\n";
        return 1;
      }
      std::cerr << "error: internal (torch) in 'agate " << name << "': " << what
                << " (hint: an input agate did not check, or a bug: please report the command)\n";
      return 1;
    } catch (const std::bad_alloc&) {
      std::cerr << "error: 'agate " << name << "' ran out of memory (hint: a smaller model, batch, sequence or budget, or more memory)\n";
      return 1;
    } catch (const std::exception& e) {
      std::cerr << "error: 'agate " << name << "': " << one_line(e.what())
                << " (hint: an input agate did not check, or a bug: please report the command)\n";
      return 1;
    }
  }
  std::string best;
  size_t best_d = 3;  // suggest only close names
  for (const auto& c : kCommands) {
    const size_t d = edit_distance(name, c.name);
    if (d < best_d) best_d = d, best = c.name;
  }
  std::cerr << "error: unknown command '" << name << "'"
            << (best.empty() ? std::string(" (hint: 'agate --help' lists the commands)")
                             : " (hint: did you mean '" + best + "'? 'agate --help' lists the commands)")
            << "\n";
  return 2;
}
