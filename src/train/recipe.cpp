#include "agate/train/recipe.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

#include "agate/util/error.h"
#include "agate/util/fs.h"

namespace fs = std::filesystem;

namespace agate {

namespace {

const RecipeKey* find_key(const std::string& path) {
  for (const auto& k : recipe_schema())
    if (k.path == path) return &k;
  return nullptr;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string suggestion(const std::string& path) {
  const RecipeKey* best = nullptr;
  size_t best_d = 4;
  for (const auto& k : recipe_schema()) {
    size_t d = edit_distance(path, k.path);
    if (d < best_d) best_d = d, best = &k;
  }
  return best ? "did you mean '" + best->path + "'?" : "see the recipe reference in the README (agate train --print-schema)";
}

// Flattens a YAML mapping into "a.b" -> node.
// A section of the schema ("model" for model.path, ...).
bool is_section(const std::string& key) {
  for (const auto& k : recipe_schema())
    if (k.path.rfind(key + ".", 0) == 0) return true;
  return false;
}

void flatten(const YAML::Node& node, const std::string& prefix, const std::string& source,
             std::vector<std::pair<std::string, YAML::Node>>& out) {
  for (auto it = node.begin(); it != node.end(); ++it) {
    const std::string key = prefix.empty() ? it->first.as<std::string>() : prefix + "." + it->first.as<std::string>();
    if (it->second.IsMap()) flatten(it->second, key, source, out);
    else if (it->second.IsNull() && is_section(key)) continue;  // "model:" with nothing under it: an empty section
    else out.push_back({key, it->second});
  }
}

// x in an interval written "[a, b]", "(a, b)", "[a, )", ... (see RecipeKey::range).
bool in_range(double x, const std::string& range) {
  const size_t comma = range.find(',');
  if (range.size() < 4 || comma == std::string::npos) throw_internal("bad schema range '" + range + "'");
  const bool lo_open = range.front() == '(', hi_open = range.back() == ')';
  const std::string lo = range.substr(1, comma - 1), hi = range.substr(comma + 1, range.size() - comma - 2);
  auto blank = [](const std::string& t) { return t.find_first_not_of(' ') == std::string::npos; };
  if (!std::isfinite(x)) return false;
  if (!blank(lo) && (lo_open ? x <= std::stod(lo) : x < std::stod(lo))) return false;
  if (!blank(hi) && (hi_open ? x >= std::stod(hi) : x > std::stod(hi))) return false;
  return true;
}

std::string line_of(const YAML::Node& n, const std::string& source) {
  return source + ":" + std::to_string(n.Mark().line + 1);
}

}  // namespace

Recipe Recipe::load(const std::string& path, const std::vector<std::string>& overrides) {
  if (fs::is_directory(path)) throw_input(path, "is a folder, not a recipe file", "pass a YAML recipe, e.g. recipes/tiny/cpt.yaml");
  return parse(read_file(path), path, overrides);
}

Recipe Recipe::parse(const std::string& yaml, const std::string& source, const std::vector<std::string>& overrides) {
  Recipe r;
  r.source_ = source;
  auto take = [&](const std::string& key, const YAML::Node& node, const std::string& origin) {
    const RecipeKey* spec = find_key(key);
    if (!spec) throw_input(origin, "unknown key '" + key + "'", suggestion(key));
    Value v;
    v.origin = origin;
    if (node.IsSequence()) {
      if (spec->type != "list") throw_input(origin, "key '" + key + "' expects a " + spec->type + ", found a list");
      v.is_list = true;
      for (const auto& item : node) {
        if (!item.IsScalar()) throw_input(origin, "key '" + key + "' must be a list of plain values");
        v.items.push_back(item.as<std::string>());
      }
    } else if (node.IsScalar()) {
      if (spec->type == "list") throw_input(origin, "key '" + key + "' expects a list like [a, b]");
      v.text = node.as<std::string>();
    } else if (node.IsNull()) {
      v.text = "";
    } else {
      throw_input(origin, "key '" + key + "' has an unsupported value");
    }
    r.values_[key] = v;
  };

  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::Exception& e) {
    throw_input(source + ":" + std::to_string(e.mark.line + 1), "invalid YAML: " + e.msg);
  }
  if (!root.IsNull()) {
    if (!root.IsMap()) throw_input(source, "a recipe must be a mapping of sections (model:, data:, ...)");
    std::vector<std::pair<std::string, YAML::Node>> flat;
    flatten(root, "", source, flat);
    for (const auto& [key, node] : flat) take(key, node, line_of(node, source));
  }
  for (const auto& o : overrides) {
    const auto eq = o.find('=');
    if (eq == std::string::npos || eq == 0) throw_usage("override '" + o + "' is not of the form key=value", "e.g. train.steps=200");
    YAML::Node node;
    try {
      node = YAML::Load(o.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      throw_usage("override '" + o + "': invalid value: " + e.msg);
    }
    take(o.substr(0, eq), node, "override '" + o + "'");
  }
  // Defaults and required keys.
  for (const auto& k : recipe_schema()) {
    if (r.values_.count(k.path)) continue;
    if (k.required) throw_input(source, "missing required key '" + k.path + "'", k.help);
    YAML::Node node = YAML::Load(k.default_value);
    Value v;
    v.origin = "default";
    if (node.IsSequence()) {
      v.is_list = true;
      for (const auto& item : node) v.items.push_back(item.as<std::string>());
    } else {
      v.text = k.default_value;
    }
    r.values_[k.path] = v;
  }
  // ${a.b} interpolation (resolved repeatedly, so references may chain).
  for (int round = 0; round < 10; ++round) {
    bool changed = false;
    for (auto& [key, v] : r.values_) {
      size_t at;
      while ((at = v.text.find("${")) != std::string::npos) {
        const size_t end = v.text.find('}', at);
        if (end == std::string::npos) throw_input(v.origin, "unterminated ${ in '" + key + "'");
        const std::string ref = v.text.substr(at + 2, end - at - 2);
        auto it = r.values_.find(ref);
        if (it == r.values_.end() || it->second.is_list) throw_input(v.origin, "'" + key + "' refers to unknown key '" + ref + "'", suggestion(ref));
        if (ref == key) throw_input(v.origin, "'" + key + "' refers to itself");
        v.text.replace(at, end - at + 1, it->second.text);
        changed = true;
      }
    }
    if (!changed) break;
    if (round == 9) throw_input(source, "${...} references form a cycle");
  }
  // Types and choices.
  for (const auto& k : recipe_schema()) {
    const Value& v = r.values_.at(k.path);
    YAML::Node n = YAML::Load(v.text.empty() ? "\"\"" : v.text);
    double number = 0;  // the value of an int or float key
    try {
      if (k.type == "int") number = static_cast<double>(n.as<int64_t>());
      if (k.type == "float") number = n.as<double>();
      if (k.type == "bool") (void)n.as<bool>();
    } catch (const YAML::Exception&) {
      throw_input(v.origin, "key '" + k.path + "' expects " + (k.type == "int" ? "an integer" : k.type == "float" ? "a number" : "true or false") +
                                ", found '" + v.text + "'", k.help);
    }
    if (k.type == "float" && !std::isfinite(number)) {
      throw_input(v.origin, "key '" + k.path + "' is " + v.text + ", expected a finite number", k.help);
    }
    if (!k.range.empty() && !in_range(number, k.range)) {
      throw_input(v.origin, "key '" + k.path + "' is " + v.text + ", expected a value in " + k.range, k.help);
    }
    if (!k.choices.empty() && std::find(k.choices.begin(), k.choices.end(), v.text) == k.choices.end()) {
      std::string all;
      for (const auto& c : k.choices) all += (all.empty() ? "" : ", ") + c;
      throw_input(v.origin, "key '" + k.path + "' is '" + v.text + "', expected one of: " + all);
    }
  }
  return r;
}

const Recipe::Value& Recipe::value(const std::string& key) const {
  auto it = values_.find(key);
  if (it == values_.end()) throw_runtime("recipe key '" + key + "' is not in the schema");
  return it->second;
}

std::string Recipe::str(const std::string& key) const { return value(key).text; }
int64_t Recipe::integer(const std::string& key) const { return YAML::Load(value(key).text).as<int64_t>(); }
double Recipe::number(const std::string& key) const { return YAML::Load(value(key).text).as<double>(); }
bool Recipe::boolean(const std::string& key) const { return YAML::Load(value(key).text).as<bool>(); }
std::vector<std::string> Recipe::list(const std::string& key) const { return value(key).items; }
std::string Recipe::origin(const std::string& key) const { return value(key).origin; }

void Recipe::fail(const std::string& key, const std::string& message, const std::string& hint) const {
  const std::string o = origin(key);
  throw_input(o == "default" ? source_ + " (default of " + key + ")" : o, message, hint);
}

std::string Recipe::to_yaml() const {
  YAML::Emitter out;
  out << YAML::BeginMap;
  std::string section;
  bool open = false;
  for (const auto& k : recipe_schema()) {
    const std::string sec = k.path.substr(0, k.path.find('.'));
    if (sec != section) {
      if (open) out << YAML::EndMap;
      out << YAML::Key << sec << YAML::Value << YAML::BeginMap;
      section = sec;
      open = true;
    }
    const Value& v = values_.at(k.path);
    out << YAML::Key << k.path.substr(k.path.find('.') + 1) << YAML::Value;
    if (v.is_list) {
      out << YAML::Flow << YAML::BeginSeq;
      for (const auto& i : v.items) out << i;
      out << YAML::EndSeq;
    } else {
      out << v.text;
    }
  }
  if (open) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace agate
