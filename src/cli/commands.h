// One function per subcommand; each returns the process exit status (cli-internal header).
#pragma once

#include <string>
#include <vector>

namespace agate::cli {

using Argv = std::vector<std::string>;

int cmd_bench(const Argv& argv);
int cmd_data(const Argv& argv);
int cmd_eval(const Argv& argv);
int cmd_export(const Argv& argv);
int cmd_generate(const Argv& argv);
int cmd_score(const Argv& argv);
int cmd_tokenize(const Argv& argv);
int cmd_train(const Argv& argv);
int cmd_tokenizer(const Argv& argv);
int cmd_init_model(const Argv& argv);
int cmd_inspect(const Argv& argv);

}  // namespace agate::cli
