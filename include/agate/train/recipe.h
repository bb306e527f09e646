// YAML recipes: a schema of every key (type, default, meaning), strict validation with
// file:line, ${a.b} interpolation and a.b=value command-line overrides.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace agate {

struct RecipeKey {
  std::string path;           // "train.steps"
  std::string type;           // string | int | float | bool | list
  std::string default_value;  // YAML text; "" with required = true means no default
  std::string help;
  std::vector<std::string> choices;  // allowed values (strings), empty = any
  bool required = false;
  // Allowed numbers (int and float keys), in interval notation: "[1, 256]", "(0, 1]",
  // "[0, )" (no upper bound); empty = any. Checked once, when the recipe is loaded.
  std::string range;
};

// Every key a recipe may hold, in documentation order.
const std::vector<RecipeKey>& recipe_schema();

class Recipe {
 public:
  // Reads `path`, applies `overrides` ("a.b=value", value in YAML syntax), fills defaults,
  // resolves ${a.b} references and validates every value against the schema. Throws
  // agate::Error naming file:line (or the override) and a hint for: unknown keys, wrong
  // types, values outside their choices, missing required keys, cyclic references.
  static Recipe load(const std::string& path, const std::vector<std::string>& overrides = {});
  // The same from YAML text (`source` names it in errors).
  static Recipe parse(const std::string& yaml, const std::string& source,
                      const std::vector<std::string>& overrides = {});

  std::string str(const std::string& key) const;
  int64_t integer(const std::string& key) const;
  double number(const std::string& key) const;
  bool boolean(const std::string& key) const;
  std::vector<std::string> list(const std::string& key) const;
  // Where a value came from: "file:line", "override", or "default".
  std::string origin(const std::string& key) const;
  // Throws an Input error pointing at `key`'s origin (for checks beyond the schema).
  [[noreturn]] void fail(const std::string& key, const std::string& message, const std::string& hint = "") const;

  // The fully resolved recipe as YAML (every key, defaults included), for the run folder.
  std::string to_yaml() const;

 private:
  struct Value {
    std::string text;                // scalar text, or "" for lists
    std::vector<std::string> items;  // list items
    bool is_list = false;
    std::string origin;
  };
  const Value& value(const std::string& key) const;
  std::string source_;
  std::map<std::string, Value> values_;
};

}  // namespace agate
