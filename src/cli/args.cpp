#include "args.h"

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "agate/util/device.h"

#include <iostream>
#include <sstream>

#include "agate/util/error.h"

namespace agate::cli {

Args::Args(std::string command, std::string synopsis, std::string description, std::vector<Option> options)
    : command_(std::move(command)), synopsis_(std::move(synopsis)), description_(std::move(description)),
      options_(std::move(options)) {}

const Option* Args::find(const std::string& name) const {
  for (const auto& o : options_)
    if (o.name == name) return &o;
  return nullptr;
}

std::string Args::usage() const { return "usage: agate " + command_ + " " + synopsis_; }

std::string Args::help() const {
  std::ostringstream s;
  s << usage() << "\n\n" << description_ << "\n\noptions:\n";
  for (const auto& o : options_) {
    std::string left = "  --" + o.name + (o.value_name.empty() ? "" : " " + o.value_name);
    s << left << std::string(left.size() < 28 ? 28 - left.size() : 1, ' ') << o.help;
    if (!o.default_value.empty()) s << " (default: " << o.default_value << ")";
    s << "\n";
  }
  s << "  --help                    show this help\n";
  return s.str();
}

bool Args::parse(const std::vector<std::string>& argv) {
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& a = argv[i];
    if (a == "--help" || a == "-h") {
      std::cout << help();
      return false;
    }
    if (a.rfind("--", 0) == 0 && a.size() > 2) {
      std::string name = a.substr(2), value;
      bool inline_value = false;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        inline_value = true;
      }
      const Option* o = find(name);
      if (!o) throw_usage("unknown option '--" + name + "' for 'agate " + command_ + "'", usage() + "; 'agate " + command_ + " --help' lists the options");
      if (o->value_name.empty()) {
        if (inline_value) throw_usage("option '--" + name + "' takes no value", usage());
        values_[name] = "1";
      } else {
        if (!inline_value) {
          if (i + 1 >= argv.size()) throw_usage("option '--" + name + "' needs a value " + o->value_name, usage());
          // "--model --prompt hi": the next word is an option, not this option's value.
          if (argv[i + 1].rfind("--", 0) == 0 && argv[i + 1].size() > 2) {
            throw_usage("option '--" + name + "' needs a value " + o->value_name + ", found the option '" + argv[i + 1] + "'",
                        "give --" + name + " its value, or write --" + name + "=VALUE when the value starts with --");
          }
          value = argv[++i];
        }
        values_[name] = value;
        all_values_[name].push_back(value);
      }
    } else {
      positionals_.push_back(a);
    }
  }
  return true;
}

void Args::expect_positionals(size_t n, const std::string& what) const {
  if (positionals_.size() == n) return;
  if (positionals_.size() > n) {
    throw_usage("unexpected argument '" + positionals_[n] + "'",
                usage() + "; an option takes one value: repeat the option for several (--input a --input b)");
  }
  throw_usage("missing " + what, usage() + "; 'agate " + command_ + " --help' lists the options");
}

bool Args::has(const std::string& name) const { return values_.count(name) > 0; }

std::string Args::get(const std::string& name) const {
  auto it = values_.find(name);
  if (it != values_.end()) return it->second;
  const Option* o = find(name);
  if (o && !o->default_value.empty()) return o->default_value;
  throw_usage("'agate " + command_ + "' needs --" + name, usage() + "; 'agate " + command_ + " --help' lists the options");
}

std::vector<std::string> Args::get_all(const std::string& name) const {
  auto it = all_values_.find(name);
  if (it == all_values_.end()) get(name);  // throws the "needs --name" usage error
  return it == all_values_.end() ? std::vector<std::string>{get(name)} : it->second;
}

std::vector<std::string> Args::get_list(const std::string& name) const {
  std::vector<std::string> out;
  for (const auto& v : get_all(name)) {
    auto empty_item = [&] { throw_usage("--" + name + " holds an empty item: '" + v + "'", "separate the values with single commas, e.g. a,b"); };
    if (v.empty() || v.back() == ',') empty_item();
    std::stringstream ss(v);
    std::string item;
    while (std::getline(ss, item, ',')) {
      if (item.empty()) empty_item();
      out.push_back(item);
    }
  }
  return out;
}

std::string Args::get_or(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it != values_.end() ? it->second : fallback;
}

long long Args::get_int(const std::string& name) const {
  const std::string v = get(name);
  try {
    size_t used = 0;
    long long x = std::stoll(v, &used);
    if (used == v.size()) return x;
  } catch (const std::exception&) {
  }
  throw_usage("--" + name + " expects an integer, got '" + v + "'");
}

namespace {
// "e.g. --iters 5" from an option's default; "" when it has none.
std::string example_of(const Option* o) {
  return o && !o->default_value.empty() ? "e.g. --" + o->name + " " + o->default_value : "";
}
}  // namespace

long long Args::get_int(const std::string& name, long long lo, long long hi) const {
  const long long x = get_int(name);
  if (x < lo || x > hi) {
    throw_usage("--" + name + " must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got " + get(name),
                example_of(find(name)));
  }
  return x;
}

double Args::get_double(const std::string& name) const {
  const std::string v = get(name);
  try {
    size_t used = 0;
    double x = std::stod(v, &used);
    if (used == v.size() && std::isfinite(x)) return x;
  } catch (const std::exception&) {
  }
  throw_usage("--" + name + " expects a finite number, got '" + v + "'", example_of(find(name)));
}

double Args::get_double(const std::string& name, double lo, double hi) const {
  const double x = get_double(name);
  if (x < lo || x > hi) {
    std::ostringstream m;
    m << "--" << name << " must be between " << lo << " and " << hi << ", got " << get(name);
    throw_usage(m.str(), example_of(find(name)));
  }
  return x;
}

void Args::refuse_output_over_inputs(const std::string& output, const std::vector<std::string>& inputs) const {
  if (!has(output)) return;
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path out = fs::weakly_canonical(get(output), ec);
  if (ec) return;  // writing reports what is wrong with the path
  for (const std::string& in_name : inputs) {
    if (!has(in_name)) continue;
    const fs::path in = fs::weakly_canonical(get(in_name), ec);
    if (ec) continue;
    const bool same = out == in;
    const auto rel = out.lexically_relative(in);
    const bool inside = fs::is_directory(in) && !rel.empty() && *rel.begin() != ".." && fs::exists(out);
    if (same || inside) {
      throw_usage("--" + output + " " + get(output) + " would overwrite " + (same ? "the input" : "a file in the input") +
                      " --" + in_name + " " + get(in_name),
                  "write the output outside the inputs");
    }
  }
}

std::vector<long long> parse_int_list(const std::string& text, const std::string& what) {
  std::vector<long long> out;
  std::stringstream ss(text);
  std::string item;
  if (!text.empty() && text.back() == ',') throw_usage(what + " must be comma-separated integers, got '" + text + "'", "e.g. 1,2,3");
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      long long x = std::stoll(item, &used);
      if (used != item.size()) throw std::invalid_argument(item);
      out.push_back(x);
    } catch (const std::exception&) {
      throw_usage(what + " must be comma-separated integers, got '" + item + "'", "e.g. 1,2,3");
    }
  }
  return out;
}

Option device_option() {
  return {"device", "D", "auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda or cuda:N", "auto"};
}

c10::Device device_from(const Args& args) {
  const char* lr = std::getenv("LOCAL_RANK");
  return resolve_device(args.get("device"), lr ? std::atoi(lr) : 0, "--device");
}

}  // namespace agate::cli
