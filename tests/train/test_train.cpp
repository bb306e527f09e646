// Recipes (validation with file:line) and the trainer on tiny models and data.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "../test_util.h"
#include "tiny_run.h"
#include "agate/data/dataset.h"
#include "agate/io/safetensors.h"
#include "agate/model/llama.h"
#include "agate/train/checkpoint.h"
#include "agate/train/recipe.h"
#include "agate/train/run_config.h"
#include "agate/train/schedule.h"
#include "agate/train/trainer.h"
#include "agate/util/checksum.h"
#include "agate/util/fs.h"

using namespace agate;
using agate::test::error_of;
using agate::test::TempDir;
using agate::test::TinySetup;
namespace fs = std::filesystem;

namespace {

std::string read_all(const std::string& p) { return test::read_bytes(p); }

}  // namespace

// ---------------------------------------------------------------------------------------------
TEST(Recipe, DefaultsInterpolationAndOverrides) {
  Recipe r = Recipe::parse("run:\n  name: abc\nmodel:\n  path: m\ndata:\n  train: d\n", "r.yaml", {"train.steps=7", "lora.targets=[q_proj]"});
  EXPECT_EQ(r.str("run.dir"), "runs/abc");
  EXPECT_EQ(r.integer("train.steps"), 7);
  EXPECT_EQ(r.origin("train.steps"), "override 'train.steps=7'");
  EXPECT_EQ(r.origin("model.path"), "r.yaml:4");
  EXPECT_EQ(r.origin("optim.lr"), "default");
  EXPECT_DOUBLE_EQ(r.number("optim.lr"), 1e-3);
  EXPECT_EQ(r.list("lora.targets"), std::vector<std::string>{"q_proj"});
  // The resolved YAML re-parses to the same values.
  Recipe again = Recipe::parse(r.to_yaml(), "resolved.yaml");
  for (const auto& k : recipe_schema()) {
    if (k.type == "list") EXPECT_EQ(again.list(k.path), r.list(k.path)) << k.path;
    else EXPECT_EQ(again.str(k.path), r.str(k.path)) << k.path;
  }
}

TEST(Recipe, BadRecipesAreRefusedWithFileLineAndHint) {
  const std::string base = "model:\n  path: m\ndata:\n  train: d\n";
  auto msg = [&](const std::string& yaml, std::vector<std::string> ov = {}) {
    return error_of([&] { Recipe::parse(yaml, "r.yaml", ov); });
  };
  EXPECT_NE(msg(base + "train:\n  stepz: 3\n").find("r.yaml:6: unknown key 'train.stepz' (hint: did you mean 'train.steps'?)"),
            std::string::npos) << msg(base + "train:\n  stepz: 3\n");
  EXPECT_NE(msg(base + "train:\n  steps: many\n").find("r.yaml:6: key 'train.steps' expects an integer, found 'many'"),
            std::string::npos);
  EXPECT_NE(msg(base + "gate:\n  estimator: magic\n").find("expected one of: ste, soft"), std::string::npos);
  EXPECT_NE(msg("data:\n  train: d\n").find("missing required key 'model.path'"), std::string::npos);
  EXPECT_NE(msg(base, {"train.nope=1"}).find("override 'train.nope=1': unknown key"), std::string::npos);
  EXPECT_NE(msg(base + "run:\n  dir: ${run.nope}\n").find("refers to unknown key 'run.nope'"), std::string::npos);
  EXPECT_NE(msg("model: [1, 2\n").find("invalid YAML"), std::string::npos);
}

// The recipe as typed sections: fixed choices become enums from the same name tables the
// schema lists, and derived values (micro_batch 0 = the global batch) are resolved once.
TEST(Recipe, TypedSectionsHoldEnumsAndResolvedValues) {
  const std::string yaml =
      "model:\n  path: m\ndata:\n  train: d\n  sft_mode: pack\ntrain:\n  global_batch: 6\n  micro_batch: 0\n"
      "loss:\n  sparsity: hinge\n  target_keep: 0.25\noptim:\n  schedule: wsd\n  lr: 0.011\n  weight_decay: 0.012\n"
      "  beta1: 0.013\n  beta2: 0.014\n  eps: 0.015\n  grad_clip: 0.016\n  warmup_steps: 17\n  min_lr_ratio: 0.018\n"
      "  decay_fraction: 0.019\ngate:\n  type: mlp\n  estimator: soft\n  heads: 3\n  head_dim: 6\n  mlp_hidden: 7\n"
      "  threshold: 0.31\n  sink_tokens: 2\n  recent_window: 9\n  init_bias: 1.5\n"
      "dist:\n  backend: gloo\n  store: file\nlora:\n  rank: 4\n  targets: [k_proj]\n";
  const RunConfig c = RunConfig::from(Recipe::parse(yaml, "r.yaml"));
  EXPECT_EQ(c.data.sft_mode, SftMode::Pack);
  EXPECT_EQ(c.train.mode, TrainMode::Gates);
  EXPECT_EQ(c.train.micro_batch, 6);
  EXPECT_EQ(c.loss.sparsity, SparsityForm::Hinge);
  EXPECT_EQ(c.loss.target_keep, 0.25);
  EXPECT_EQ(c.optim.schedule, ScheduleKind::Wsd);
  EXPECT_EQ(c.optim.schedule_for(10).kind, ScheduleKind::Wsd);
  // Every field where the recipe put it (the sections are filled in declaration order).
  const OptimSection& o = c.optim;
  EXPECT_EQ(std::vector<double>({o.lr, o.weight_decay, o.beta1, o.beta2, o.eps, o.grad_clip, o.min_lr_ratio, o.decay_fraction}),
            std::vector<double>({0.011, 0.012, 0.013, 0.014, 0.015, 0.016, 0.018, 0.019}));
  EXPECT_EQ(o.warmup_steps, 17);
  const GateConfig& g = c.gate;
  EXPECT_EQ(std::vector<int64_t>({g.heads, g.head_dim, g.mlp_hidden, g.sink_tokens, g.recent_window}),
            std::vector<int64_t>({3, 6, 7, 2, 9}));
  EXPECT_EQ(g.threshold, 0.31);
  EXPECT_EQ(g.init_bias, 1.5);
  EXPECT_EQ(c.gate.type, GateType::Mlp);
  EXPECT_EQ(c.gate.estimator, Estimator::Soft);
  EXPECT_EQ(c.dist.backend, DistBackend::Gloo);
  EXPECT_EQ(c.dist.store, StoreKind::File);
  EXPECT_EQ(c.lora.rank, 4);
  EXPECT_EQ(c.lora.targets, std::vector<std::string>{"k_proj"});
  EXPECT_TRUE(c.has_gates());
  EXPECT_FALSE(RunConfig::from(Recipe::parse(yaml, "r.yaml", {"train.mode=pretrain"})).has_gates());
  // A step's targets: the lambda warm-up, and the protected window counted in the keep target.
  const RunConfig w = RunConfig::from(Recipe::parse(yaml, "r.yaml", {"loss.count_window=true", "loss.lambda_warmup_steps=10"}));
  EXPECT_DOUBLE_EQ(w.targets_at(5).lambda, 0.5);
  EXPECT_DOUBLE_EQ(w.targets_at(5).target, (0.25 * 256 - 9) / (256 - 9));
  EXPECT_EQ(w.targets_at(5).context, 0);
  EXPECT_DOUBLE_EQ(c.targets_at(5).target, 0.25);
  // Every choice the schema lists parses into its enum (the lists are the tables).
  for (const RecipeKey& k : recipe_schema()) {
    for (const std::string& choice : k.choices) {
      if (k.path == "model.dtype") continue;  // a torch dtype, not an enum
      EXPECT_NO_THROW(RunConfig::from(Recipe::parse(yaml, "r.yaml", {k.path + "=" + choice}))) << k.path << "=" << choice;
    }
  }
  // A name outside a table is refused with the choices and a hint.
  const std::string m = error_of([] { (void)kSparsityForms.parse("l3", "loss.sparsity"); });
  EXPECT_EQ(m, "loss.sparsity 'l3' is not one of l2_target, hinge, l1 (hint: use l2_target, hinge or l1)");
}

TEST(Recipe, TrainerRefusesBadValuesBeforeAnyWork) {
  TinySetup s;
  auto refuse = [&](const std::string& extra, const std::string& expect) {
    const std::string path = s.dir.file("r.yaml");
    test::write_bytes(path, s.recipe(extra));
    const std::string m = error_of([&] { Trainer t(Recipe::load(path)); });
    EXPECT_NE(m.find(expect), std::string::npos) << "want '" << expect << "' in: " << m;
    EXPECT_FALSE(fs::exists(s.dir.file("run"))) << "nothing written before validation";
  };
  refuse("loss:\n  target_keep: 1.5\n", "r.yaml:20: key 'loss.target_keep' is 1.5, expected a value in (0, 1]");
  refuse("loss:\n  target_keep: 0\n", "key 'loss.target_keep' is 0, expected a value in (0, 1]");
  refuse("loss:\n  objective: reconstruction\n  distill: 1.0\n", "loss.distill applies to the lm objective, not to reconstruction");
  refuse("loss:\n  objective: reconstruction\nlora:\n  rank: 2\n", "loss.objective reconstruction trains gates only, not LoRA adapters");
  refuse("loss:\n  target_keep: 0.5\n  target_keep_max: 0.3\n", "loss.target_keep_max (0.3) is below loss.target_keep (0.5)");
  // Sizes and ranges (the hostile-input probe's first class): refused from the schema when the
  // recipe is loaded, one line naming file:line, key and the allowed range. Each of these used
  // to pass --dry-run and crash (SIGFPE), fail inside torch, train a zero-width gate, or hang.
  auto refuse_override = [&](const std::string& kv, const std::string& expect) {
    const std::string path = s.dir.file("r.yaml");
    test::write_bytes(path, s.recipe());
    const std::string m = error_of([&] { Trainer t(Recipe::load(path, {kv})); });
    EXPECT_NE(m.find(expect), std::string::npos) << "want '" << expect << "' in: " << m;
    EXPECT_FALSE(fs::exists(s.dir.file("run"))) << "nothing written before validation";
  };
  {
    const std::string path = s.dir.file("r.yaml");
    test::write_bytes(path, s.recipe("loss:\n  objective: reconstruction\n"));
    EXPECT_NE(error_of([&] { Trainer t(Recipe::load(path, {"train.recompute=true"})); }).find("does not combine with loss.objective reconstruction"),
              std::string::npos);
    test::write_bytes(path, s.recipe());
    EXPECT_NE(error_of([&] { Trainer t(Recipe::load(path, {"train.context_min=0.6", "train.context_max=0.4"})); })
                  .find("train.context_min (0.6) is above train.context_max (0.4)"),
              std::string::npos);
    EXPECT_NE(error_of([&] { Trainer t(Recipe::load(path, {"gate.rule_feature=attention"})); })
                  .find("gate.rule_feature attention needs a context/continuation split"),
              std::string::npos);
    EXPECT_FALSE(fs::exists(s.dir.file("run")));
  }
  refuse_override("gate.heads=0", "override 'gate.heads=0': key 'gate.heads' is 0, expected a value in [1, 256]");
  refuse_override("gate.heads=-2", "key 'gate.heads' is -2, expected a value in [1, 256]");
  refuse_override("gate.head_dim=0", "key 'gate.head_dim' is 0, expected a value in [2, 1024]");
  refuse_override("gate.head_dim=7", "gate.head_dim must be even, found 7");
  refuse_override("gate.mlp_hidden=-4", "key 'gate.mlp_hidden' is -4, expected a value in [1, 65536]");
  refuse_override("lora.rank=-1", "key 'lora.rank' is -1, expected a value in [0, 4096]");
  refuse_override("run.threads=100000", "key 'run.threads' is 100000, expected a value in [0, 1024]");
  refuse("optim:\n  beta2: 1.0\n", "key 'optim.beta2' is 1.0, expected a value in [0, 1)");
  refuse("optim:\n  lr: .nan\n", "key 'optim.lr' is .nan, expected a finite number");
  const std::string path = s.dir.file("r.yaml");
  test::write_bytes(path, s.recipe());
  EXPECT_NE(error_of([&] { Trainer t(Recipe::load(path, {"model.path=/nonexistent"})); }).find("model folder '/nonexistent' does not exist"),
            std::string::npos);
  EXPECT_NE(error_of([&] { Trainer t(Recipe::load(path, {"data.train=/nonexistent"})); }).find("dataset folder '/nonexistent' does not exist"),
            std::string::npos);
  EXPECT_NE(error_of([&] { Trainer t(Recipe::load(path, {"gate.type=none"})); }).find("nothing to train"), std::string::npos);
  EXPECT_NE(error_of([&] { Trainer t(Recipe::load(path, {"data.seq_len=4096"})); })
                .find("data.seq_len 4096 is above the model's max_position_embeddings (2048)"),
            std::string::npos);
}

// A dataset tokenized with another tokenizer than the model folder's (same vocabulary size or
// not) used to train silently, its base validation loss worse than uniform (issue 16).
TEST(Recipe, DataFromAnotherTokenizerThanTheModelsIsRefused) {
  TinySetup s;  // its datasets record tokenizer hash 0x4d (77)
  const std::string path = s.dir.file("r.yaml");
  test::write_bytes(path, s.recipe());
  test::write_bytes(s.model + "/tokenizer.model", "not the tokenizer the data was made with");
  const std::string m = error_of([&] { Trainer t(Recipe::load(path)); });
  EXPECT_NE(m.find("data.train: dataset '" + s.train + "' was tokenized with tokenizer 0x0000004d, but the model folder"), std::string::npos) << m;
  EXPECT_NE(m.find("holds tokenizer.model 0x"), std::string::npos) << m;
  EXPECT_NE(m.find("hint: tokenize the data with the model's own tokenizer"), std::string::npos) << m;
  EXPECT_FALSE(fs::exists(s.dir.file("run")));
  // A folder without a tokenizer has nothing to compare with (the e2e runs train with the
  // tokenizer the data was made with copied into the model folder).
  fs::remove(s.model + "/tokenizer.model");
  EXPECT_EQ(error_of([&] { Trainer t(Recipe::load(path)); }), "");
}

TEST(Schedule, WarmupCosineConstantWsd) {
  Schedule s{ScheduleKind::Cosine, 1.0, 10, 110, 0.1, 0.2};
  EXPECT_DOUBLE_EQ(s.at(0), 0.1);
  EXPECT_DOUBLE_EQ(s.at(9), 1.0);
  EXPECT_NEAR(s.at(10), 1.0, 1e-12);
  EXPECT_NEAR(s.at(60), 0.55, 1e-12);
  EXPECT_NEAR(s.at(110), 0.1, 1e-12);
  s.kind = ScheduleKind::Wsd;
  EXPECT_DOUBLE_EQ(s.at(50), 1.0);
  EXPECT_NEAR(s.at(100), 0.55, 1e-12);
  s.kind = ScheduleKind::Constant;
  EXPECT_DOUBLE_EQ(s.at(100), 1.0);
}

// The per-step draws: functions of (seed, step) alone, inside their ranges, and spread over them.
TEST(Schedule, PerStepSplitsAndTargetsAreDeterministicAndInRange) {
  EXPECT_EQ(context_at(0.0, 0.0, 512, 1, 5), 0) << "off";
  int64_t lo = 512, hi = 0;
  double tlo = 1, thi = 0;
  for (int64_t step = 0; step < 400; ++step) {
    const int64_t c = context_at(0.25, 0.75, 512, 3, step);
    EXPECT_EQ(c, context_at(0.25, 0.75, 512, 3, step));
    lo = std::min(lo, c), hi = std::max(hi, c);
    const double t = random_target_at(0.2, 0.6, 3, step);
    EXPECT_DOUBLE_EQ(t, random_target_at(0.2, 0.6, 3, step));
    tlo = std::min(tlo, t), thi = std::max(thi, t);
  }
  EXPECT_GE(lo, 128);
  EXPECT_LE(hi, 384);
  EXPECT_LT(lo, 140);
  EXPECT_GT(hi, 372);
  EXPECT_GE(tlo, 0.2);
  EXPECT_LT(thi, 0.6);
  EXPECT_LT(tlo, 0.21);
  EXPECT_GT(thi, 0.59);
  EXPECT_NE(context_at(0.25, 0.75, 512, 3, 7), context_at(0.25, 0.75, 512, 4, 7)) << "the seed matters";
  EXPECT_EQ(context_at(0.0, 0.999, 2, 1, 0), 1) << "clamped to [1, T - 1]";
  EXPECT_DOUBLE_EQ(random_target_at(0.5, 0.0, 1, 1), 0.5) << "off";
}

// ---------------------------------------------------------------------------------------------
TEST(Trainer, GateTrainingLeavesBaseWeightsBitIdentical) {
  TinySetup s;
  const std::string before = read_all(s.model + "/model.safetensors");
  test::write_bytes(s.dir.file("r.yaml"), s.recipe("loss:\n  target_keep: 0.5\n  lambda: 5.0\n"));
  Trainer t(Recipe::load(s.dir.file("r.yaml")));
  TrainPlan plan = t.plan();
  EXPECT_GT(plan.trainable, 0);
  EXPECT_EQ(plan.tokens_per_step, 64);
  TrainSummary sum = t.run();
  EXPECT_EQ(sum.steps, 6);
  EXPECT_GT(sum.val_base_loss, 0);
  EXPECT_EQ(read_all(s.model + "/model.safetensors"), before);
  // The run folder.
  for (const char* f : {"config.resolved.yaml", "metrics.jsonl", "logs/rank_00000.log", "trainable.safetensors", "summary.json"})
    EXPECT_TRUE(fs::exists(s.dir.file(std::string("run/") + f))) << f;
  std::ifstream metrics(s.dir.file("run/metrics.jsonl"));
  std::string line;
  int train_lines = 0, val_lines = 0;
  while (std::getline(metrics, line)) {
    auto j = nlohmann::json::parse(line);
    train_lines += j.contains("loss");
    val_lines += j.contains("val_loss");
  }
  EXPECT_EQ(train_lines, 3);
  EXPECT_EQ(val_lines, 2);
  // The saved gates are what trained: different from a fresh initialisation.
  SafetensorsFile f = SafetensorsFile::open(s.dir.file("run/trainable.safetensors"));
  EXPECT_FALSE(at::allclose(f.tensor("model.layers.0.self_attn.kv_gate.score.bias"), at::full({2}, 3.0)));
}

TEST(Trainer, PretrainLowersTheLoss) {
  TinySetup s;
  test::write_bytes(s.dir.file("r.yaml"), s.recipe("train:\n  mode: pretrain\n  steps: 30\n  global_batch: 8\noptim:\n  lr: 1e-2\n"));
  // Duplicate 'train' sections are not valid YAML; use overrides instead.
  test::write_bytes(s.dir.file("r.yaml"), s.recipe());
  Trainer t(Recipe::load(s.dir.file("r.yaml"), {"train.mode=pretrain", "train.steps=40", "optim.lr=1e-2", "eval.every=40"}));
  TrainSummary sum = t.run();
  EXPECT_LT(sum.val_loss, std::log(64.0) - 0.5) << "val loss should fall well below uniform";
  LlamaModel trained = LlamaModel::load(s.dir.file("run/model"), at::kFloat);  // a real HF folder
  EXPECT_EQ(trained.config().vocab_size, 64);
}

TEST(Trainer, SftWithLoraAloneAndWithGatesAndRecompute) {
  TinySetup s(/*sft=*/true);
  test::write_bytes(s.dir.file("r.yaml"), s.recipe());
  for (std::vector<std::string> ov : {std::vector<std::string>{"gate.type=none", "lora.rank=4"},
                                      std::vector<std::string>{"lora.rank=4", "train.recompute=true", "train.micro_batch=2"},
                                      std::vector<std::string>{"gate.type=mlp", "gate.estimator=soft", "loss.distill=0.5"}}) {
    ov.push_back("data.seq_len=32");
    ov.push_back("run.dir=" + s.dir.file("run_" + ov[0] + ov[1]));
    Trainer t(Recipe::load(s.dir.file("r.yaml"), ov));
    TrainSummary sum = t.run();
    EXPECT_EQ(sum.steps, 6) << ov[0];
    EXPECT_TRUE(std::isfinite(sum.val_loss)) << ov[0];
  }
}

TEST(Trainer, NonFiniteLossStopsTheRunWithAClearMessage) {
  TinySetup s;
  {  // a finite weight so large that the forward overflows (a NaN weight is refused at load)
    LlamaModel m = LlamaModel::load(s.model, at::kFloat);
    m.parameters()[1].second.view(-1)[0] = 3e38f;
    m.save(s.model);
  }
  test::write_bytes(s.dir.file("r.yaml"), s.recipe());
  Trainer t(Recipe::load(s.dir.file("r.yaml"), {"train.max_bad_steps=2"}));
  const std::string msg = error_of([&] { t.run(); });
  EXPECT_NE(msg.find("NaN/infinite for 2 steps in a row"), std::string::npos) << msg;
  EXPECT_FALSE(fs::exists(s.dir.file("run/trainable.safetensors"))) << "nothing saved from a failed run";
}

// ---------------------------------------------------------------------------------------------
// Run lifecycle: checkpoints and exact resume.
namespace {

std::vector<std::string> metric_lines_without_timing(const std::string& path, int64_t after_step) {
  std::vector<std::string> out;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    if (j.value("step", int64_t{0}) <= after_step) continue;
    j.erase("tokens_per_s");
    out.push_back(j.dump());
  }
  return out;
}

}  // namespace

class ExactResume : public ::testing::TestWithParam<std::string> {};

TEST_P(ExactResume, KilledRunResumesToTheSameParametersAndMetrics) {
  const bool sft = GetParam() == "sft";
  TinySetup s(sft);
  test::write_bytes(s.dir.file("r.yaml"), s.recipe());
  std::vector<std::string> ov = {"run.threads=1", "train.steps=8", "checkpoint.every_steps=3", "eval.every=4",
                                 "train.log_every=1", "data.seq_len=" + std::string(sft ? "32" : "16")};
  if (GetParam() == "pretrain") ov.push_back("train.mode=pretrain");
  if (sft) ov.push_back("lora.rank=2");
  if (GetParam() == "recon") {  // the reconstruction objective, the window counted in the target
    ov.insert(ov.end(), {"loss.objective=reconstruction", "loss.count_window=true", "gate.recent_window=3",
                         "train.context_min=0.5", "train.context_max=0.7"});
  }
  if (GetParam() == "split") {  // per-step draws (context split, randomised targets) replay after a resume
    ov.insert(ov.end(), {"train.context_min=0.3", "train.context_max=0.8", "loss.target_keep_max=0.9"});
  }
  if (GetParam() == "rule") {  // the rule feature (trained weights, validation with a split)
    ov.insert(ov.end(), {"gate.rule_feature=attention", "train.context_min=0.4", "train.context_max=0.8"});
  }
  // Uninterrupted.
  auto a = ov;
  a.push_back("run.dir=" + s.dir.file("a"));
  Trainer(Recipe::load(s.dir.file("r.yaml"), a)).run();
  EXPECT_EQ(list_checkpoints(s.dir.file("a")).size(), 2u) << "keep_last 2 of steps 3, 6, 8";
  // "Killed" after the step-3 checkpoint: later checkpoints never happened, a half-written one
  // did (no DONE), and the metrics file has lines past step 3 and a torn last line.
  auto b = ov;
  b.push_back("run.dir=" + s.dir.file("b"));
  b.push_back("checkpoint.keep_last=5");
  Trainer(Recipe::load(s.dir.file("r.yaml"), b)).run();
  fs::remove_all(s.dir.file("b/checkpoints/step_00000008"));
  fs::remove(s.dir.file("b/checkpoints/step_00000006/DONE"));
  fs::create_directories(s.dir.file("b/checkpoints/.tmp_step_00000007"));
  { std::ofstream(s.dir.file("b/metrics.jsonl"), std::ios::app) << "{\"step\": 9, \"lo"; }
  ASSERT_EQ(latest_checkpoint(s.dir.file("b")).value(), s.dir.file("b/checkpoints/step_00000003"));
  TrainSummary resumed = Trainer(Recipe::load(s.dir.file("r.yaml"), b)).run();
  EXPECT_EQ(resumed.resumed_from, 3);
  EXPECT_EQ(resumed.steps, 8);
  // Bitwise-equal trainable parameters (one thread) and identical metrics after step 3.
  auto fa = SafetensorsFile::open(s.dir.file("a/checkpoints/step_00000008/trainable.safetensors"));
  auto fb = SafetensorsFile::open(s.dir.file("b/checkpoints/step_00000008/trainable.safetensors"));
  ASSERT_EQ(fa.entries().size(), fb.entries().size());
  for (const auto& e : fa.entries()) EXPECT_TRUE(at::equal(fa.tensor(e.name), fb.tensor(e.name))) << e.name;
  EXPECT_EQ(metric_lines_without_timing(s.dir.file("a/metrics.jsonl"), 3),
            metric_lines_without_timing(s.dir.file("b/metrics.jsonl"), 3));
}

INSTANTIATE_TEST_SUITE_P(Modes, ExactResume, ::testing::Values("gates", "sft", "pretrain", "split", "recon", "rule"));

TEST(Resume, BreakingChangesAreRefusedNamingThemAndHarmlessOnesAllowed) {
  TinySetup s;
  test::write_bytes(s.dir.file("r.yaml"), s.recipe());
  Trainer(Recipe::load(s.dir.file("r.yaml"), {"train.steps=3"})).run();
  std::string msg = error_of([&] { Trainer(Recipe::load(s.dir.file("r.yaml"), {"train.steps=6", "train.global_batch=8"})).run(); });
  EXPECT_NE(msg.find("cannot resume: the recipe changed train.global_batch (4 -> 8)"), std::string::npos) << msg;
  {  // another base model
    LlamaModel m = LlamaModel::load(s.model, at::kFloat);
    m.parameters()[0].second.view(-1)[0] = 0.5f;
    m.save(s.dir.file("model2"));
    fs::copy_file(s.dir.file("model2/model.safetensors"), s.model + "/model.safetensors", fs::copy_options::overwrite_existing);
  }
  msg = error_of([&] { Trainer(Recipe::load(s.dir.file("r.yaml"), {"train.steps=6"})).run(); });
  EXPECT_NE(msg.find("the base model"), std::string::npos) << msg;
  // --fresh refuses the existing run; a harmless change (more steps, other logging) resumes.
  EXPECT_NE(error_of([&] { Trainer(Recipe::load(s.dir.file("r.yaml")), ResumeOptions{true, ""}); }).find("already holds a run"),
            std::string::npos);
}

// A hand-edited or damaged trainer_state.json is refused before anything runs (issue 16's run
// state class: an edited step used to give a negative learning rate, a step_-0000002 folder,
// "trained 1000 steps: loss 0.0000", or overwrite a newer checkpoint, all with exit 0).
TEST(Resume, EditedOrDamagedTrainerStateIsRefused) {
  TinySetup s;
  test::write_bytes(s.dir.file("r.yaml"), s.recipe());
  Trainer(Recipe::load(s.dir.file("r.yaml"), {"train.steps=3"})).run();
  const std::string dir = s.dir.file("run/checkpoints/step_00000003"), file = dir + "/trainer_state.json";
  const std::string good = test::read_bytes(file);
  auto with = [&](const std::string& from, const std::string& to) {
    std::string t = good;
    const size_t at = t.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    t.replace(at, from.size(), to);
    test::write_bytes(file, t);
    return error_of([&] { Trainer(Recipe::load(s.dir.file("r.yaml"), {"train.steps=6"})).run(); });
  };
  std::string m = with("\"step\": 3", "\"step\": -4");
  EXPECT_NE(m.find("holds impossible values (step -4"), std::string::npos) << m;
  m = with("\"step\": 3", "\"step\": 1000");
  EXPECT_NE(m.find("says step 1000 but sits in step_00000003"), std::string::npos) << m;
  m = with("\"step\": 3", "\"step\": 2");  // fewer steps than the optimizer took
  EXPECT_NE(m.find("holds impossible values (step 2, optimizer steps 3"), std::string::npos) << m;
  // The data cursor and the token count must be those of the step (an edited cursor used to
  // replay or skip data silently).
  m = with("\"sample\": 12", "\"sample\": 20");
  EXPECT_NE(m.find("at step 3 holds data cursor (epoch 0, sample 20) and 192 tokens, expected (epoch 0, sample 12) and 192"),
            std::string::npos) << m;
  m = with("\"tokens\": 192", "\"tokens\": 3");
  EXPECT_NE(m.find("expected (epoch 0, sample 12) and 192"), std::string::npos) << m;
  m = with("\"seed\": 0", "\"seed\": 5");
  EXPECT_NE(m.find("holds data cursor"), std::string::npos) << m;
  m = with("\"format\": \"agate-trainer-state\"", "\"format\": \"other\"");
  EXPECT_NE(m.find("is not an agate trainer state"), std::string::npos) << m;
  m = with("\"val_loss\"", "\"val_los\"");
  EXPECT_NE(m.find("lacks a field"), std::string::npos) << m;
  test::write_bytes(file, good);
  {  // NaN moments used to resume "successfully" and poison every gate parameter
    const std::string opt = dir + "/optimizer.safetensors", saved = test::read_bytes(opt);
    const SafetensorsFile f = SafetensorsFile::open(opt);
    NamedTensors st;
    for (const auto& e : f.entries()) st.push_back({e.name, f.tensor(e.name).clone()});
    st[0].second.view(-1)[0] = std::nan("");
    save_safetensors(opt, st);
    m = error_of([&] { Trainer(Recipe::load(s.dir.file("r.yaml"), {"train.steps=6"})).run(); });
    EXPECT_NE(m.find("holds NaN/inf"), std::string::npos) << m;
    test::write_bytes(opt, saved);
    // A header that labels the float moments I32 is refused, not read as integers.
    std::string relabelled = saved;
    relabelled.replace(relabelled.find("\"F32\""), 5, "\"I32\"");
    test::write_bytes(opt, relabelled);
    m = error_of([&] { Trainer(Recipe::load(s.dir.file("r.yaml"), {"train.steps=6"})).run(); });
    EXPECT_NE(m.find("optimizer.safetensors: tensor '"), std::string::npos) << m;
    EXPECT_NE(m.find("' is I32, expected a floating dtype"), std::string::npos) << m;
    test::write_bytes(opt, saved);
  }
  m = error_of([&] { Trainer(Recipe::load(s.dir.file("r.yaml"), {"train.steps=2"})).run(); });
  EXPECT_NE(m.find("is at step 3, past train.steps (2)"), std::string::npos) << m;
  EXPECT_NO_THROW(Trainer(Recipe::load(s.dir.file("r.yaml"), {"train.steps=6"})).run());
}

// The write policy of a run folder (issue 16): re-running a finished run rewrites nothing (its
// summary.json used to become train_loss 0.0, tokens_per_s 0.0), and a new run does not
// overwrite an earlier run's step folders when none of them is complete, unless --force.
TEST(Resume, FinishedRunsAndIncompleteCheckpointsAreNotOverwritten) {
  TinySetup s;
  test::write_bytes(s.dir.file("r.yaml"), s.recipe());
  const TrainSummary first = Trainer(Recipe::load(s.dir.file("r.yaml"), {"train.steps=3"})).run();
  const std::string summary = test::read_bytes(s.dir.file("run/summary.json"));
  const TrainSummary again = Trainer(Recipe::load(s.dir.file("r.yaml"), {"train.steps=3"})).run();
  EXPECT_EQ(test::read_bytes(s.dir.file("run/summary.json")), summary);
  EXPECT_EQ(again.train_loss, first.train_loss);
  EXPECT_GT(again.train_loss, 0.0);
  EXPECT_EQ(again.steps, 3);
  // Without summary.json (the run died after its last checkpoint) it is rebuilt from the metrics.
  fs::remove(s.dir.file("run/summary.json"));
  EXPECT_EQ(Trainer(Recipe::load(s.dir.file("r.yaml"), {"train.steps=3"})).run().train_loss, first.train_loss);
  EXPECT_TRUE(fs::exists(s.dir.file("run/summary.json")));
  // Every checkpoint lacks DONE: refused without --force, started over with it.
  fs::remove(s.dir.file("run/checkpoints/step_00000003/DONE"));
  const std::string m = error_of([&] { Trainer(Recipe::load(s.dir.file("r.yaml"), {"train.steps=3"})).run(); });
  EXPECT_NE(m.find("checkpoints: holds step folders but no complete checkpoint (no DONE marker)"), std::string::npos) << m;
  EXPECT_NE(m.find("--force"), std::string::npos) << m;
  EXPECT_TRUE(fs::exists(s.dir.file("run/checkpoints/step_00000003/trainable.safetensors")));
  EXPECT_NE(error_of([&] { Trainer(Recipe::load(s.dir.file("r.yaml")), ResumeOptions{true, ""}); }).find("already holds a run"),
            std::string::npos);
  ResumeOptions force;
  force.force = true;
  EXPECT_NO_THROW(Trainer(Recipe::load(s.dir.file("r.yaml"), {"train.steps=3"}), force).run());
  EXPECT_TRUE(fs::exists(s.dir.file("run/checkpoints/step_00000003/DONE")));
}

TEST(Checkpoint, InterruptedWritesAreNeverLoadedAndPruningKeepsTheNewest) {
  TempDir d;
  CheckpointData data{{{"w", at::ones({2})}}, {{"w.exp_avg", at::zeros({2})}}, "{}"};
  for (int64_t step : {1, 2, 3}) save_checkpoint(d.path(), step, data, 2);
  auto all = list_checkpoints(d.path());
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(fs::path(all.back()).filename(), "step_00000003");
  // Crash before the rename, and crash between the rename and DONE.
  fs::create_directories(d.file("checkpoints/.tmp_step_00000004"));
  fs::create_directories(d.file("checkpoints/step_00000005"));
  test::write_bytes(d.file("checkpoints/step_00000005/trainable.safetensors"), "partial");
  EXPECT_EQ(fs::path(latest_checkpoint(d.path()).value()).filename(), "step_00000003");
  EXPECT_NE(error_of([&] { load_checkpoint(d.file("checkpoints/step_00000005")); }).find("no DONE marker"), std::string::npos);
  // A failing write (the run folder turned into a file) keeps the previous checkpoint valid.
  TempDir e;
  save_checkpoint(e.path(), 1, data, 2);
  fs::remove_all(e.file("checkpoints/step_00000001"));
  test::write_bytes(e.file("checkpoints/.tmp_step_00000002"), "a file in the way");
  fs::permissions(e.file("checkpoints"), fs::perms::owner_read | fs::perms::owner_exec);
  if (::geteuid() != 0) {  // root ignores permissions
    EXPECT_NE(error_of([&] { save_checkpoint(e.path(), 2, data, 2); }).find("cannot"), std::string::npos);
  }
  fs::permissions(e.file("checkpoints"), fs::perms::owner_all);
}
