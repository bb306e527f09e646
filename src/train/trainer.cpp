#include "agate/train/trainer.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/optim/adamw.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "agate/data/dataset.h"
#include "agate/data/loader.h"
#include "agate/gate/gates.h"
#include "agate/gate/losses.h"
#include "agate/model/llama.h"
#include "agate/model/lora.h"
#include "agate/train/recompute.h"
#include "agate/train/schedule.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"
#include "agate/util/logging.h"
#include "agate/util/threads.h"
#include "agate/util/timer.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace agate {

namespace {

std::string eta_text(double seconds) {
  char buf[32];
  const int s = static_cast<int>(seconds + 0.5);
  if (s >= 3600) std::snprintf(buf, sizeof(buf), "%dh%02dm", s / 3600, (s % 3600) / 60);
  else std::snprintf(buf, sizeof(buf), "%dm%02ds", s / 60, s % 60);
  return buf;
}

// Global L2 norm of the gradients; scales them down to `max_norm` when above it (max_norm > 0).
double clip_gradients(const std::vector<at::Tensor>& params, double max_norm) {
  std::vector<at::Tensor> norms;
  for (const auto& p : params)
    if (p.grad().defined()) norms.push_back(p.grad().detach().to(at::kFloat).norm());
  if (norms.empty()) return 0.0;
  const double total = at::stack(norms).norm().item<double>();
  if (max_norm > 0 && std::isfinite(total) && total > max_norm) {
    const double scale = max_norm / (total + 1e-6);
    for (const auto& p : params)
      if (p.grad().defined()) p.grad().mul_(scale);
  }
  return total;
}

int64_t numel(const NamedTensors& ts) {
  int64_t n = 0;
  for (const auto& kv : ts) n += kv.second.numel();
  return n;
}

}  // namespace

std::string TrainPlan::describe() const {
  char buf[1024];
  std::snprintf(buf, sizeof(buf),
                "parameters        %.2f M (base)\n"
                "trainable         %.3f M (gates %.3f M)\n"
                "tokens per step   %lld\n"
                "train samples     %lld\n"
                "memory estimate   weights %.1f MB + grads/optimizer %.1f MB + activations %.1f MB = %.1f MB\n",
                parameters / 1e6, trainable / 1e6, gate_parameters / 1e6, (long long)tokens_per_step,
                (long long)train_samples, weights_mb, optimizer_mb, activations_mb,
                weights_mb + optimizer_mb + activations_mb);
  return buf;
}

struct Trainer::Impl {
  const Recipe r;  // a copy: callers may pass a temporary
  std::string run_dir;
  bool pretrain = false;
  std::optional<LlamaModel> model;
  std::unique_ptr<Gates> gates;
  std::unique_ptr<LoraAdapters> lora;
  std::optional<Dataset> train_data, val_data;
  NamedTensors trainable;
  int64_t seq_len = 0, global_batch = 0, micro_batch = 0;
  Positions positions;  // RoPE tables of the current sequence length

  explicit Impl(const Recipe& recipe) : r(recipe) {
    configure_threads(static_cast<int>(r.integer("run.threads")));
    pretrain = r.str("train.mode") == "pretrain";
    run_dir = r.str("run.dir");
    validate();
    const std::string model_dir = r.str("model.path");
    const auto dtype = parse_compute_dtype(r.str("model.dtype"));
    // Model.
    if (!fs::exists(fs::path(model_dir) / "config.json")) r.fail("model.path", "model folder '" + model_dir + "' has no config.json", "point model.path at a Hugging Face model folder");
    if (r.integer("model.init_seed") >= 0) {
      if (!pretrain) r.fail("model.init_seed", "model.init_seed (random weights) only makes sense with train.mode: pretrain");
      model.emplace(LlamaModel::init_random(load_model_config((fs::path(model_dir) / "config.json").string()),
                                             static_cast<uint64_t>(r.integer("model.init_seed")), dtype));
    } else {
      model.emplace(LlamaModel::load(model_dir, dtype));
    }
    const ModelConfig& mc = model->config();
    // Data: the model's vocabulary must cover the dataset's.
    const std::string train_dir = r.str("data.train");
    if (!fs::exists(fs::path(train_dir) / "manifest.json")) r.fail("data.train", "'" + train_dir + "' is not a dataset folder (no manifest.json)", "create it with agate tokenize (use DIR/train)");
    train_data.emplace(Dataset::open(train_dir));
    if (train_data->manifest().space.vocab_size > mc.vocab_size) {
      r.fail("data.train", "dataset vocabulary (" + std::to_string(train_data->manifest().space.vocab_size) +
                               ") is larger than the model's (" + std::to_string(mc.vocab_size) + ")",
             "the data was tokenized for another model");
    }
    if (!r.str("data.val").empty()) {
      val_data.emplace(Dataset::open(r.str("data.val")));
      if (val_data->manifest().space.tokenizer_hash != train_data->manifest().space.tokenizer_hash) {
        r.fail("data.val", "validation data was made with another tokenizer than data.train");
      }
    }
    // Trainable parts.
    const uint64_t seed = static_cast<uint64_t>(r.integer("run.seed"));
    if (pretrain) {
      model->set_requires_grad(true);
      trainable = model->parameters();
    } else {
      model->set_requires_grad(false);
      if (r.str("gate.type") != "none") {
        gates = Gates::create(gate_config(), mc, seed);
        trainable.insert(trainable.end(), gates->parameters().begin(), gates->parameters().end());
      }
      if (r.integer("lora.rank") > 0) {
        LoraConfig lc;
        lc.rank = r.integer("lora.rank");
        lc.alpha = r.number("lora.alpha");
        lc.targets = r.list("lora.targets");
        lora = std::make_unique<LoraAdapters>(lc, mc, seed + 1);
        trainable.insert(trainable.end(), lora->parameters().begin(), lora->parameters().end());
      }
      if (trainable.empty()) r.fail("gate.type", "nothing to train: gate.type is none and lora.rank is 0", "enable gates or LoRA, or use train.mode: pretrain");
      for (const auto& [name, p] : model->parameters()) {
        if (p.requires_grad()) throw_runtime("base weight " + name + " is trainable in gates mode");
      }
    }
    seq_len = r.integer("data.seq_len");
    global_batch = r.integer("train.global_batch");
    micro_batch = r.integer("train.micro_batch");
    if (micro_batch == 0) micro_batch = global_batch;
  }

  GateConfig gate_config() const {
    GateConfig g;
    g.type = r.str("gate.type");
    g.heads = r.integer("gate.heads");
    g.head_dim = r.integer("gate.head_dim");
    g.mlp_hidden = r.integer("gate.mlp_hidden");
    g.threshold = r.number("gate.threshold");
    g.estimator = r.str("gate.estimator");
    g.sink_tokens = r.integer("gate.sink_tokens");
    g.recent_window = r.integer("gate.recent_window");
    g.init_bias = r.number("gate.init_bias");
    return g;
  }

  // Checks that need no loading, so bad recipes fail before any work.
  void validate() const {
    auto positive = [&](const char* key) {
      if (r.integer(key) <= 0) r.fail(key, std::string(key) + " must be positive, found " + std::to_string(r.integer(key)));
    };
    for (const char* k : {"train.steps", "train.global_batch", "data.seq_len", "train.log_every", "eval.batches",
                          "train.max_bad_steps"})
      positive(k);
    const double tk = r.number("loss.target_keep");
    if (!(tk > 0 && tk <= 1)) r.fail("loss.target_keep", "loss.target_keep must be in (0, 1], found " + r.str("loss.target_keep"), "it is the share of KV entries to keep");
    const double th = r.number("gate.threshold");
    if (!(th > 0 && th < 1)) r.fail("gate.threshold", "gate.threshold must be in (0, 1)");
    if (r.number("optim.lr") <= 0) r.fail("optim.lr", "optim.lr must be positive");
    if (r.number("loss.lambda") < 0) r.fail("loss.lambda", "loss.lambda must be >= 0");
    if (r.integer("train.micro_batch") < 0 || (r.integer("train.micro_batch") > 0 && r.integer("train.global_batch") % r.integer("train.micro_batch") != 0)) {
      r.fail("train.micro_batch", "train.micro_batch must divide train.global_batch");
    }
    if (r.str("model.path").empty()) r.fail("model.path", "model.path is empty");
    if (!fs::is_directory(r.str("model.path"))) r.fail("model.path", "model folder '" + r.str("model.path") + "' does not exist", "check model.path");
    if (!fs::is_directory(r.str("data.train"))) r.fail("data.train", "dataset folder '" + r.str("data.train") + "' does not exist", "create it with agate tokenize");
    if (!r.str("data.val").empty() && !fs::is_directory(r.str("data.val"))) r.fail("data.val", "dataset folder '" + r.str("data.val") + "' does not exist");
    if (r.str("run.dir").empty()) r.fail("run.dir", "run.dir is empty");
  }

  TrainPlan plan() const {
    TrainPlan p;
    const ModelConfig& c = model->config();
    p.parameters = c.parameter_count();
    p.trainable = numel(trainable);
    p.gate_parameters = gates ? numel(gates->parameters()) : 0;
    p.tokens_per_step = global_batch * seq_len;
    LoaderOptions o;
    o.seq_len = seq_len;
    o.global_batch = global_batch;
    o.sft_mode = r.str("data.sft_mode");
    o.prefetch = 0;
    p.train_samples = DataLoader(*train_data, o, {}).num_samples();
    const double wb = model->dtype() == at::kBFloat16 ? 2 : 4;
    p.weights_mb = p.parameters * wb / 1e6;
    p.optimizer_mb = p.trainable * 4.0 * 3 / 1e6;  // grad + Adam m, v (float32)
    // Saved activations per micro-batch: per layer and token, ~ (6D + 3I + 2(H + 2Hkv)hd)
    // values in the compute dtype + 2 T H float32 attention maps; logits 3 x V float32.
    const double B = static_cast<double>(micro_batch), T = static_cast<double>(seq_len);
    const double D = c.hidden_size, I = c.intermediate_size, hd = c.head_dim, H = c.num_attention_heads,
                 Hkv = c.num_key_value_heads;
    double per_layer = B * T * ((6 * D + 3 * I + 2 * (H + 2 * Hkv) * hd) * wb + 2 * T * H * 4);
    if (gates && r.str("gate.type") == "attention") {
      const double W = r.integer("gate.heads") * r.integer("gate.head_dim");
      per_layer += B * T * (4 * W * 4 + 2 * T * r.integer("gate.heads") * 4 + 3 * T * Hkv * 4);
    }
    const double layers = r.boolean("train.recompute") ? (c.num_hidden_layers * B * T * D * wb + per_layer)
                                                       : c.num_hidden_layers * per_layer;
    p.activations_mb = (layers + B * T * c.vocab_size * 4 * 3) / 1e6;
    return p;
  }

  // One forward of a micro-batch: logits [b, T, V] and the per-layer keep surrogate [L].
  std::pair<at::Tensor, at::Tensor> forward(const at::Tensor& inputs, bool with_gates, bool recompute) {
    ForwardOptions opts;
    opts.visibility = with_gates ? gates.get() : nullptr;
    opts.adapter = lora.get();
    if (gates) gates->reset_stats();
    // Kept in a member: recomputation's backward reads the positions after forward() returned.
    if (!positions.ids.defined() || positions.ids.size(0) != inputs.size(1)) positions = model->positions(0, inputs.size(1));
    const Positions& pos = positions;
    at::Tensor h = model->embed(inputs);
    std::vector<at::Tensor> surrogates;
    for (int64_t i = 0; i < model->config().num_hidden_layers; ++i) {
      if (recompute) {
        auto [out, s] = recomputed_layer(*model, i, h, pos, opts, with_gates ? gates.get() : nullptr);
        h = out;
        if (s.defined()) surrogates.push_back(s);
      } else {
        h = model->layer_forward(i, h, pos, opts);
      }
    }
    at::Tensor keep;
    if (with_gates && gates) keep = recompute ? at::stack(surrogates) : gates->stats().surrogate;
    return {model->head(h), keep};
  }

  // Mean LM loss and keep ratio over eval.batches of the validation set (same batches each time).
  std::pair<double, double> validate_once(bool with_gates) {
    at::NoGradGuard no_grad;
    LoaderOptions o;
    o.seq_len = seq_len;
    o.global_batch = micro_batch;
    o.sft_mode = r.str("data.sft_mode");
    o.prefetch = 0;
    DataLoader loader(*val_data, o, {12345, 0, 0});
    double loss_sum = 0, count_sum = 0, keep_sum = 0;
    const int64_t n = std::min<int64_t>(r.integer("eval.batches"), loader.batches_per_epoch());
    for (int64_t b = 0; b < n; ++b) {
      Batch batch = loader.next();
      at::Tensor inputs = batch.tokens.slice(1, 0, seq_len), targets = batch.tokens.slice(1, 1);
      at::Tensor w = batch.mask.slice(1, 1);
      auto [logits, keep] = forward(inputs, with_gates, false);
      double count = 0;
      const double l = lm_loss(logits, targets, w, &count).item<double>();
      loss_sum += l * count;
      count_sum += count;
      keep_sum += (with_gates && gates) ? gates->stats().flags.mean().item<double>() : 1.0;
    }
    return {loss_sum / std::max(count_sum, 1.0), n > 0 ? keep_sum / n : 1.0};
  }

  TrainSummary run() {
    make_dirs(run_dir);
    make_dirs((fs::path(run_dir) / "logs").string());
    init_logging(0, (fs::path(run_dir) / "logs" / "rank_00000.log").string());
    write_file_atomic((fs::path(run_dir) / "config.resolved.yaml").string(), r.to_yaml());
    std::ofstream metrics((fs::path(run_dir) / "metrics.jsonl").string(), std::ios::trunc);
    auto record = [&](const json& j) {
      metrics << j.dump() << "\n";
      metrics.flush();
    };
    spdlog::info("run folder {}; plan:\n{}", run_dir, plan().describe());

    const int64_t steps = r.integer("train.steps");
    const bool recompute = r.boolean("train.recompute");
    std::vector<at::Tensor> params;
    for (const auto& kv : trainable) params.push_back(kv.second);
    torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(r.number("optim.lr"))
                                              .betas({r.number("optim.beta1"), r.number("optim.beta2")})
                                              .eps(r.number("optim.eps"))
                                              .weight_decay(r.number("optim.weight_decay")));
    Schedule sched{r.str("optim.schedule"), r.number("optim.lr"), r.integer("optim.warmup_steps"), steps,
                   r.number("optim.min_lr_ratio"), r.number("optim.decay_fraction")};
    LoaderOptions lo;
    lo.seq_len = seq_len;
    lo.global_batch = global_batch;
    lo.sft_mode = r.str("data.sft_mode");
    DataLoader loader(*train_data, lo, {static_cast<uint64_t>(r.integer("run.seed")), 0, 0});

    TrainSummary summary;
    const bool has_gates = gates != nullptr;
    if (val_data && has_gates) {
      summary.val_base_loss = validate_once(false).first;
      spdlog::info("validation loss of the base model without gates: {:.4f}", summary.val_base_loss);
      record({{"step", 0}, {"val_base_loss", summary.val_base_loss}});
    }
    const double target = r.number("loss.target_keep");
    const double distill = r.number("loss.distill");
    const double t_start = now_seconds();
    double t_window = t_start;
    int64_t tokens_window = 0, bad_in_row = 0;
    double loss_window = 0, lm_window = 0, sp_window = 0, keep_window = 0;
    int64_t n_window = 0;
    for (int64_t step = 0; step < steps; ++step) {
      const double lr = sched.at(step);
      for (auto& g : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
      const double lambda = sparsity_lambda(r.number("loss.lambda"), r.integer("loss.lambda_warmup_steps"), step);
      Batch batch = loader.next();
      const at::Tensor w_all = batch.mask.slice(1, 1);
      const double total_targets = std::max(w_all.sum().item<double>(), 1.0);
      optimizer.zero_grad();
      double step_loss = 0, step_lm = 0, step_sp = 0, step_keep = 0;
      bool bad = false;
      const int64_t local = batch.tokens.size(0);
      for (int64_t m0 = 0; m0 < local && !bad; m0 += micro_batch) {
        at::Tensor tok = batch.tokens.slice(0, m0, m0 + micro_batch);
        at::Tensor inputs = tok.slice(1, 0, seq_len), targets = tok.slice(1, 1);
        at::Tensor w = batch.mask.slice(0, m0, m0 + micro_batch).slice(1, 1);
        auto [logits, keep] = forward(inputs, has_gates, recompute);
        double count = 0;
        at::Tensor lm = lm_loss(logits, targets, w, &count);
        const double share = static_cast<double>(tok.size(0)) / static_cast<double>(local);
        at::Tensor loss = lm * (count / total_targets);
        double sp_value = 0;
        if (has_gates) {
          at::Tensor sp = sparsity_loss(keep, r.str("loss.sparsity"), target);
          loss = loss + lambda * share * sp;
          sp_value = sp.item<double>();
          step_keep += gates->stats().flags.mean().item<double>() * share;
        }
        if (distill > 0 && has_gates) {
          at::Tensor teacher;
          {
            at::NoGradGuard ng;
            teacher = forward(inputs, false, false).first;
          }
          loss = loss + distill * share * distill_loss(logits, teacher, w);
        }
        const double lv = loss.item<double>();
        if (!std::isfinite(lv)) {
          bad = true;
          break;
        }
        loss.backward();
        step_loss += lv;
        step_lm += lm.item<double>() * (count / total_targets);
        step_sp += sp_value * share;
      }
      double gnorm = 0;
      if (!bad) {
        gnorm = clip_gradients(params, r.number("optim.grad_clip"));
        if (!std::isfinite(gnorm)) bad = true;
      }
      if (bad) {
        optimizer.zero_grad();
        summary.skipped_steps += 1;
        bad_in_row += 1;
        spdlog::warn("step {}: non-finite loss or gradient, step skipped ({} in a row)", step + 1, bad_in_row);
        record({{"step", step + 1}, {"skipped", true}, {"bad_in_row", bad_in_row}});
        if (bad_in_row >= r.integer("train.max_bad_steps")) {
          throw_runtime("the loss or gradient was NaN/infinite for " + std::to_string(bad_in_row) +
                            " steps in a row (last at step " + std::to_string(step + 1) + "); stopping",
                        "lower optim.lr, check the data, or use model.dtype: float32");
        }
        continue;
      }
      bad_in_row = 0;
      optimizer.step();
      summary.steps = step + 1;
      summary.train_loss = step_loss;
      tokens_window += global_batch * seq_len;
      loss_window += step_loss, lm_window += step_lm, sp_window += step_sp, keep_window += has_gates ? step_keep : 1.0;
      n_window += 1;
      const bool last = step + 1 == steps;
      if ((step + 1) % r.integer("train.log_every") == 0 || last) {
        const double now = now_seconds(), tps = tokens_window / std::max(now - t_window, 1e-9);
        const double eta = (now - t_start) / (step + 1) * (steps - step - 1);
        spdlog::info("step {}/{} | loss {:.4f} (lm {:.4f} + sparsity {:.4f}) | keep {:.3f} | lr {:.2e} | {:.0f} tok/s | ETA {}",
                     step + 1, steps, loss_window / n_window, lm_window / n_window, sp_window / n_window,
                     keep_window / n_window, lr, tps, eta_text(eta));
        record({{"step", step + 1}, {"loss", loss_window / n_window}, {"lm_loss", lm_window / n_window},
                {"sparsity", sp_window / n_window}, {"keep", keep_window / n_window}, {"lr", lr},
                {"lambda", lambda}, {"grad_norm", gnorm}, {"tokens_per_s", tps},
                {"tokens", (step + 1) * global_batch * seq_len}});
        summary.keep = keep_window / n_window;
        summary.tokens_per_s = tps;
        t_window = now;
        tokens_window = 0;
        loss_window = lm_window = sp_window = keep_window = 0;
        n_window = 0;
      }
      const int64_t every = r.integer("eval.every");
      if (val_data && ((every > 0 && (step + 1) % every == 0) || last)) {
        auto [vl, vk] = validate_once(has_gates);
        summary.val_loss = vl;
        if (has_gates) summary.keep = vk;
        spdlog::info("validation at step {}: loss {:.4f} (ppl {:.2f}), keep {:.3f}", step + 1, vl, std::exp(vl), vk);
        record({{"step", step + 1}, {"val_loss", vl}, {"val_ppl", std::exp(vl)}, {"val_keep", vk}});
      }
    }
    save_outputs(summary);
    return summary;
  }

  void save_outputs(const TrainSummary& s) {
    if (pretrain) {
      model->save((fs::path(run_dir) / "model").string());
      spdlog::info("saved the trained model to {}/model", run_dir);
    } else {
      std::map<std::string, std::string> meta{{"gate_type", r.str("gate.type")}, {"lora_rank", r.str("lora.rank")}};
      save_safetensors((fs::path(run_dir) / "trainable.safetensors").string(), trainable, meta);
      spdlog::info("saved {} trainable tensors to {}/trainable.safetensors", trainable.size(), run_dir);
    }
    json j = {{"steps", s.steps}, {"train_loss", s.train_loss}, {"val_loss", s.val_loss},
              {"val_base_loss", s.val_base_loss}, {"keep", s.keep}, {"tokens_per_s", s.tokens_per_s},
              {"skipped_steps", s.skipped_steps}};
    write_file_atomic((fs::path(run_dir) / "summary.json").string(), j.dump(2) + "\n");
  }
};

Trainer::Trainer(const Recipe& recipe) : impl_(std::make_unique<Impl>(recipe)) {}
Trainer::~Trainer() = default;
TrainPlan Trainer::plan() const { return impl_->plan(); }
TrainSummary Trainer::run() { return impl_->run(); }

}  // namespace agate
