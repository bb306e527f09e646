// export_gates (src/train/export_gates.cpp) and its loader (src/infer/gate_export.cpp): a
// trained run's gates written on their own and read back whole, or refused.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "../test_util.h"
#include "agate/infer/gate_export.h"
#include "agate/io/safetensors.h"
#include "agate/model/llama.h"
#include "agate/train/export_gates.h"
#include "agate/train/recipe.h"
#include "agate/train/trainer.h"
#include "tiny_run.h"

using namespace agate;
using agate::test::error_of;
using agate::test::TinySetup;
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// Gate export: round trip, and a mismatched base model refused.
TEST(Export, RoundTripsAndRefusesAnotherBaseModel) {
  TinySetup s;
  test::write_bytes(s.dir.file("r.yaml"), s.recipe());
  Trainer(Recipe::load(s.dir.file("r.yaml"))).run();
  ExportOptions o;
  o.run_dir = s.dir.file("run");
  o.out = s.dir.file("export");
  const double keep = export_gates(o);
  EXPECT_GT(keep, 0.0);
  EXPECT_LE(keep, 1.0);
  for (const char* f : {"gates.safetensors", "kvgate_config.json", "head_keep_ratio.tsv", "README.md"})
    EXPECT_TRUE(fs::exists(s.dir.file(std::string("export/") + f))) << f;
  LlamaModel base = LlamaModel::load(s.model, at::kFloat);
  auto gates = load_gate_export(s.dir.file("export"), base, s.model);
  SafetensorsFile trained = SafetensorsFile::open(s.dir.file("run/trainable.safetensors"));
  for (const auto& [name, t] : gates->parameters()) EXPECT_TRUE(at::equal(t, trained.tensor(name))) << name;
  // Same shape, other weights: refused by fingerprint. Other shape: refused naming the key.
  LlamaModel other = LlamaModel::init_random(base.config(), 99, at::kFloat);
  other.save(s.dir.file("other"));
  EXPECT_NE(error_of([&] { load_gate_export(s.dir.file("export"), other, s.dir.file("other")); }).find("other weights"),
            std::string::npos);
  ModelConfig c = base.config();
  c.num_key_value_heads = 4;
  LlamaModel wide = LlamaModel::init_random(c, 1, at::kFloat);
  wide.save(s.dir.file("wide"));
  EXPECT_NE(error_of([&] { load_gate_export(s.dir.file("export"), wide, s.dir.file("wide")); }).find("num_key_value_heads = 2, this one has 4"),
            std::string::npos);
}

// Issue 16's export class: the run's relative model.path and data paths are resolved against the
// folder it trained in, not the current one, and the base weights must be the checkpoint's; --out
// must be new, empty or an export (else --force) and is written whole or not at all; an export
// with LoRA is loaded whole (gates and LoRA) or refused.
TEST(Export, ResolvesTheRunsPathsChecksTheWeightsAndWritesOnlyWhatItOwns) {
  TinySetup s;
  const fs::path cwd = fs::current_path();
  fs::current_path(s.dir.path());  // train with relative paths, as a user in the project folder would
  test::write_bytes("r.yaml", "run:\n  dir: runs/a\nmodel:\n  path: model\ndata:\n  train: data/train\n  val: data/val\n"
                              "  seq_len: 16\ntrain:\n  steps: 3\n  global_batch: 4\n  log_every: 1\neval:\n  every: 3\n  batches: 1\n"
                              "gate:\n  heads: 2\n  head_dim: 8\nlora:\n  rank: 4\noptim:\n  lr: 0.05\n");
  Trainer(Recipe::load("r.yaml")).run();
  fs::create_directories("elsewhere");
  fs::current_path("elsewhere");
  ExportOptions o;
  o.run_dir = "../runs/a";
  o.out = s.dir.file("export");
  o.batches = 1;
  std::string m = error_of([&] { export_gates(o); });
  EXPECT_EQ(m, "") << "model.path and data.* are relative to where the run trained";
  // A model with other weights is refused, naming the checkpoint's fingerprint, writing nothing.
  LlamaModel::init_random(LlamaModel::load(s.model, at::kFloat).config(), 5, at::kFloat).save("model");
  o.model = "model";
  o.out = s.dir.file("export2");
  m = error_of([&] { export_gates(o); });
  EXPECT_NE(m.find("model: no base model with the weights the checkpoint"), std::string::npos) << m;
  EXPECT_NE(m.find("hint: pass the base model the run trained on with --model DIR"), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(s.dir.file("export2"))) << "nothing written";
  o.model = s.model;
  o.batches = 1;
  EXPECT_EQ(error_of([&] { export_gates(o); }), "");
  fs::current_path(cwd);
  const std::string cfg = test::read_bytes(s.dir.file("export/kvgate_config.json"));
  EXPECT_NE(cfg.find("\"path\": \"" + s.model + "\""), std::string::npos) << "the absolute base path is recorded";
  // --out: a model folder (not an export) is refused without --force and left untouched.
  o.run_dir = s.dir.file("runs/a");
  o.model = "";
  o.out = s.model;
  const std::string card = "# my model\n";
  test::write_bytes(s.model + "/README.md", card);
  m = error_of([&] { export_gates(o); });
  EXPECT_NE(m.find("is not empty and holds no gate export"), std::string::npos) << m;
  EXPECT_EQ(test::read_bytes(s.model + "/README.md"), card);
  EXPECT_FALSE(fs::exists(s.model + "/kvgate_config.json"));
  // An export is loaded whole: gates and LoRA; without its LoRA file it is refused.
  LlamaModel base = LlamaModel::load(s.model, at::kFloat);
  const LoadedExport e = load_export(s.dir.file("export"), base, s.model);
  EXPECT_TRUE(e.gates && e.lora);
  fs::remove(s.dir.file("export/lora.safetensors"));
  m = error_of([&] { load_export(s.dir.file("export"), base, s.model); });
  EXPECT_NE(m.find("has no lora.safetensors although kvgate_config.json lists a LoRA"), std::string::npos) << m;
}

