// Minimal, strict command-line parsing shared by the subcommands (cli-internal header).
#pragma once

#include <c10/core/Device.h>

#include <map>
#include <string>
#include <vector>

namespace agate::cli {

struct Option {
  std::string name;          // without dashes: "model" for --model
  std::string value_name;    // empty for a boolean switch
  std::string help;
  std::string default_value; // shown in help; empty = required or none
};

// Parsed arguments. Unknown options, missing values and (optionally) stray positionals throw
// agate::Error(Usage) whose text includes the command's usage line.
class Args {
 public:
  Args(std::string command, std::string synopsis, std::string description, std::vector<Option> options);

  // Returns false when --help was given (help already printed to stdout).
  bool parse(const std::vector<std::string>& argv);

  bool has(const std::string& name) const;
  std::string get(const std::string& name) const;             // value or default; throws if required and absent
  std::string get_or(const std::string& name, const std::string& fallback) const;
  // Every value of an option given several times (e.g. --input a --input b); throws if none.
  std::vector<std::string> get_all(const std::string& name) const;
  // get_all, with each value also split on commas ("--input a,b --input c" -> a, b, c).
  std::vector<std::string> get_list(const std::string& name) const;
  long long get_int(const std::string& name) const;
  // Refuses (usage error naming the option) a value outside [lo, hi].
  long long get_int(const std::string& name, long long lo, long long hi) const;
  // A finite number (NaN and infinity are refused).
  double get_double(const std::string& name) const;
  double get_double(const std::string& name, double lo, double hi) const;
  // --threads: 0 (all cores) or a count; the cap on what a machine allows is configure_threads'.
  int threads() const { return static_cast<int>(get_int("threads", 0, 1 << 20)); }
  // Refuses an output path (the value of `output`) that is one of the inputs (the values of
  // `inputs` that were given) or an existing file inside an input folder: a results file must
  // not replace a manifest, a config or a prompt.
  void refuse_output_over_inputs(const std::string& output, const std::vector<std::string>& inputs) const;
  bool flag(const std::string& name) const { return has(name); }
  const std::vector<std::string>& positionals() const { return positionals_; }
  // Throws a usage error unless exactly `n` positional arguments were given.
  void expect_positionals(size_t n, const std::string& what = "") const;

  std::string help() const;
  std::string usage() const;

 private:
  const Option* find(const std::string& name) const;
  std::string command_, synopsis_, description_;
  std::vector<Option> options_;
  std::map<std::string, std::string> values_;        // last value of each option
  std::map<std::string, std::vector<std::string>> all_values_;
  std::vector<std::string> positionals_;
};

// The --device option every compute command takes (default auto).
Option device_option();
// Resolves --device (auto = cuda:LOCAL_RANK when CUDA is available, else cpu).
c10::Device device_from(const Args& args);

// Splits "1,2,3" into integers; throws a usage error naming `what` on bad input.
std::vector<long long> parse_int_list(const std::string& text, const std::string& what);

}  // namespace agate::cli
