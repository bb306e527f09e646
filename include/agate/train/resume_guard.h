// What makes a checkpoint resumable by a recipe: the base weights, the training data and the
// recipe keys that change shapes, the data order or what is trained must be the same; every
// other key may change (logged).
#pragma once

#include <map>
#include <string>
#include <vector>

namespace agate {

class Recipe;
struct TrainState;

class ResumeGuard {
 public:
  explicit ResumeGuard(const Recipe& recipe);  // the recipe must outlive the guard

  // Keys whose change makes a checkpoint unusable.
  static const std::vector<std::string>& breaking_keys();
  // The base model's fingerprint (weights_fingerprint; random init: config.json), computed
  // once (it reads the weights); the training data's (its manifest).
  std::string model_fingerprint() const;
  std::string data_fingerprint() const;
  // What a checkpoint records: the breaking keys' values, and every key's.
  std::map<std::string, std::string> resume_keys() const;
  std::map<std::string, std::string> recipe_values() const;
  // Refuses a checkpoint state whose run differs in a breaking way, naming every change
  // (`where`: the checkpoint, for the message); logs harmless changes.
  void check(const TrainState& state, const std::string& where) const;

 private:
  std::string key_value(const std::string& key) const;
  const Recipe& r_;
  mutable std::string model_fp_;
};

}  // namespace agate
