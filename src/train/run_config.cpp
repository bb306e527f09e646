#include "agate/train/run_config.h"

#include "agate/train/recipe.h"

namespace agate {

RunConfig RunConfig::from(const Recipe& r) {
  RunConfig c;
  c.run = {r.str("run.name"), r.str("run.dir"), r.integer("run.seed"), r.integer("run.threads"), r.str("run.device")};
  c.model = {r.str("model.path"), r.str("model.dtype"), r.integer("model.init_seed")};

  c.gate = {kGateTypes.parse(r.str("gate.type"), "gate.type"), r.integer("gate.heads"), r.integer("gate.head_dim"),
            r.integer("gate.mlp_hidden"), r.number("gate.threshold"), kEstimators.parse(r.str("gate.estimator"), "gate.estimator"),
            r.integer("gate.sink_tokens"), r.integer("gate.recent_window"), r.number("gate.init_bias")};
  c.gate.rule_feature = kRuleFeatures.parse(r.str("gate.rule_feature"), "gate.rule_feature");

  c.lora = {r.integer("lora.rank"), r.number("lora.alpha"), r.list("lora.targets")};
  c.data = {r.str("data.train"), r.str("data.val"), r.integer("data.seq_len"),
            kSftModes.parse(r.str("data.sft_mode"), "data.sft_mode")};

  TrainSection& t = c.train;
  t.mode = kTrainModes.parse(r.str("train.mode"), "train.mode");
  t.steps = r.integer("train.steps");
  t.global_batch = r.integer("train.global_batch");
  t.micro_batch = r.integer("train.micro_batch") > 0 ? r.integer("train.micro_batch") : t.global_batch;
  t.recompute = r.boolean("train.recompute");
  t.log_every = r.integer("train.log_every");
  t.max_bad_steps = r.integer("train.max_bad_steps");
  t.context_min = r.number("train.context_min");
  t.context_max = r.number("train.context_max");

  c.optim = {r.number("optim.lr"), r.number("optim.weight_decay"), r.number("optim.beta1"), r.number("optim.beta2"),
             r.number("optim.eps"), r.number("optim.grad_clip"), kScheduleKinds.parse(r.str("optim.schedule"), "optim.schedule"),
             r.integer("optim.warmup_steps"), r.number("optim.min_lr_ratio"), r.number("optim.decay_fraction")};

  LossSection& l = c.loss;
  l.sparsity = kSparsityForms.parse(r.str("loss.sparsity"), "loss.sparsity");
  l.objective = kObjectives.parse(r.str("loss.objective"), "loss.objective");
  l.count_window = r.boolean("loss.count_window");
  l.target_keep = r.number("loss.target_keep");
  l.lambda = r.number("loss.lambda");
  l.target_keep_max = r.number("loss.target_keep_max");
  l.lambda_warmup_steps = r.integer("loss.lambda_warmup_steps");
  l.target_ramp_steps = r.integer("loss.target_ramp_steps");
  l.distill = r.number("loss.distill");

  c.checkpoint = {r.integer("checkpoint.every_steps"), r.integer("checkpoint.keep_last")};
  c.dist = {kDistBackends.parse(r.str("dist.backend"), "dist.backend"), r.integer("dist.timeout_s"),
            kStoreKinds.parse(r.str("dist.store"), "dist.store"), r.str("dist.store_path")};
  c.eval = {r.integer("eval.every"), r.integer("eval.batches")};
  return c;
}

StepTargets RunConfig::targets_at(int64_t step) const {
  StepTargets t;
  const auto seed = static_cast<uint64_t>(run.seed);
  t.lambda = sparsity_lambda(loss.lambda, loss.lambda_warmup_steps, step);
  t.context = context_at(train.context_min, train.context_max, data.seq_len, seed, step);
  t.target = random_target_at(target_keep_at(loss.target_keep, loss.target_ramp_steps, step), loss.target_keep_max, seed, step);
  if (loss.count_window) t.target = window_counted_target(t.target, t.context > 0 ? t.context : data.seq_len, gate.recent_window);
  return t;
}

}  // namespace agate
