// A tiny training setup shared by the trainer and export tests: a random 2-layer model and
// synthetic datasets with learnable structure, in a temporary folder, and a recipe for them.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <utility>
#include <vector>

#include "../test_util.h"
#include "agate/data/dataset.h"
#include "agate/model/llama.h"

namespace agate::test {

// A tiny model and a synthetic dataset with learnable structure (repeating patterns).
struct TinySetup {
  TempDir dir;
  std::string model, train, val;
  explicit TinySetup(bool sft = false) {
    ModelConfig c;
    c.vocab_size = 64;
    c.hidden_size = 32;
    c.intermediate_size = 48;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 8;
    c.initializer_range = 0.1;
    model = dir.file("model");
    LlamaModel::init_random(c, 1, at::kFloat).save(model);
    train = dir.file("data/train");
    val = dir.file("data/val");
    for (const auto& [path, seed] : {std::pair<std::string, int>{train, 1}, {val, 2}}) {
      DatasetWriter w(path, sft ? "sft" : "cpt", "train", TokenSpace{64, 2, 1, 77}, 1 << 20);
      for (int d = 0; d < 40; ++d) {
        std::vector<uint32_t> t;
        std::vector<uint8_t> m;
        for (int i = 0; i < 30; ++i) {
          t.push_back(static_cast<uint32_t>(3 + (d * seed + i * 7) % 13));
          m.push_back(i >= 20);
        }
        w.add(t, sft ? m : std::vector<uint8_t>{});
      }
      w.finish();
    }
  }
  std::string recipe(const std::string& extra = "") const {
    return "run:\n  dir: " + dir.file("run") + "\nmodel:\n  path: " + model + "\ndata:\n  train: " + train +
           "\n  val: " + val + "\n  seq_len: 16\ntrain:\n  steps: 6\n  global_batch: 4\n  log_every: 2\n"
           "eval:\n  every: 3\n  batches: 2\ngate:\n  heads: 2\n  head_dim: 8\n" + extra;
  }
};

}  // namespace agate::test
