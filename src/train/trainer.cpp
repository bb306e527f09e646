#include "agate/train/trainer.h"

#include <c10/core/GradMode.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <ATen/ATen.h>
#include <torch/csrc/autograd/anomaly_mode.h>
#include <torch/cuda.h>
#include "agate/util/device.h"
#include "agate/util/logging.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "agate/data/dataset.h"
#include "agate/data/loader.h"
#include "agate/dist/dist.h"
#include "agate/gate/gates.h"
#include "agate/gate/losses.h"
#include "agate/model/inspect.h"
#include "agate/model/llama.h"
#include "agate/model/lora.h"
#include "agate/train/adamw.h"
#include "agate/train/metrics_log.h"
#include "agate/train/resume_guard.h"
#include "agate/train/train_forward.h"
#include "agate/train/train_state.h"
#include "agate/train/train_step.h"
#include "agate/train/checkpoint.h"
#include "agate/train/recipe_gate.h"
#include "agate/train/recompute.h"
#include "agate/train/schedule.h"
#include "agate/util/checksum.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"
#include "agate/util/logging.h"
#include "agate/util/signals.h"
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
                "memory estimate   weights %.1f MB + grads/optimizer %.1f MB + activations %.1f MB = %.1f MB per rank on %s\n",
                parameters / 1e6, trainable / 1e6, gate_parameters / 1e6, (long long)tokens_per_step,
                (long long)train_samples, weights_mb, optimizer_mb, activations_mb,
                weights_mb + optimizer_mb + activations_mb, device.c_str());
  return buf;
}

struct Trainer::Impl {
  const Recipe r;  // a copy: callers may pass a temporary
  std::string run_dir;
  bool pretrain = false;
  std::optional<LlamaModel> model;      // absent in a plan of a config-only model folder
  std::optional<ModelConfig> config_only;
  c10::ScalarType dtype = at::kFloat;
  c10::Device device = c10::kCPU;  // run.device, resolved
  bool planned_only = false;       // a plan for a CUDA device this machine does not have
  std::unique_ptr<Gates> gates;
  std::unique_ptr<LoraAdapters> lora;
  std::optional<Dataset> train_data, val_data;
  NamedTensors trainable;
  int64_t seq_len = 0, global_batch = 0, micro_batch = 0;
  std::optional<TrainForward> train_forward;  // made on first use (a plan-only run has no model)
  LaunchEnv env;
  std::unique_ptr<ProcessGroup> pg;  // created by run(); a dry run needs no peers

  const ModelConfig& config() const { return model ? model->config() : *config_only; }

  Impl(const Recipe& recipe, bool plan_only) : r(recipe) {
    env = detect_launch_env();
    configure_threads(static_cast<int>(r.integer("run.threads")), env.local_world);
    pretrain = r.str("train.mode") == "pretrain";
    run_dir = r.str("run.dir");
    validate();
    const std::string model_dir = r.str("model.path");
    dtype = parse_compute_dtype(r.str("model.dtype"));
    const bool weightless = !fs::exists(fs::path(model_dir) / "model.safetensors") &&
                            !fs::exists(fs::path(model_dir) / "model.safetensors.index.json");
    const auto wanted = parse_device(r.str("run.device"), env.local_rank, "run.device");
    if (plan_only && weightless && wanted && wanted->is_cuda() && !torch::cuda::is_available()) {
      // Planning a GPU run from a machine without one (e.g. the 7B recipes' config-only
      // folders): nothing is allocated, the estimate is for that device.
      device = *wanted;
      planned_only = true;
    } else {
      device = resolve_device(r.str("run.device"), env.local_rank, "run.device");
    }
    if (device.is_cuda() && !planned_only) c10::impl::VirtualGuardImpl(device.type()).setDevice(device);  // NCCL and allocations follow it
    const c10::Device alloc = planned_only ? c10::Device(c10::kCPU) : device;  // where tensors are made
    // Model.
    if (!fs::exists(fs::path(model_dir) / "config.json")) r.fail("model.path", "model folder '" + model_dir + "' has no config.json", "point model.path at a Hugging Face model folder");
    if (r.integer("model.init_seed") >= 0) {
      if (!pretrain) r.fail("model.init_seed", "model.init_seed (random weights) only makes sense with train.mode: pretrain");
      model.emplace(LlamaModel::init_random(load_model_config((fs::path(model_dir) / "config.json").string()),
                                             static_cast<uint64_t>(r.integer("model.init_seed")), dtype, device));
    } else if (plan_only && weightless) {
      // A config-only folder (e.g. a real model's config.json without its weights): plan only.
      config_only = load_model_config((fs::path(model_dir) / "config.json").string());
      log::info("{} holds no weights: planning from its config.json alone", model_dir);
    } else {
      model.emplace(LlamaModel::load(model_dir, dtype, device));
    }
    const ModelConfig& mc = config();
    if (r.integer("data.seq_len") > mc.max_position_embeddings) {
      r.fail("data.seq_len", "data.seq_len " + r.str("data.seq_len") + " is above the model's max_position_embeddings (" +
                                 std::to_string(mc.max_position_embeddings) + ")",
             "the model has not seen positions that far: lower data.seq_len");
    }
    // Data: the model's vocabulary must cover the dataset's.
    const std::string train_dir = r.str("data.train");
    if (!fs::exists(fs::path(train_dir) / "manifest.json")) r.fail("data.train", "'" + train_dir + "' is not a dataset folder (no manifest.json)", "create it with agate tokenize (use DIR/train)");
    train_data.emplace(Dataset::open(train_dir));
    // The ids the data holds, not the tokenizer's size: a tokenizer.json may list added tokens
    // beyond the model's embeddings (SmolLM2's GGUF tokenizer has 5) that the text never uses.
    train_data->check_fits(mc.vocab_size, "data.train");
    check_dataset_tokenizer(train_data->manifest(), train_dir, model_dir, r.origin("data.train") + ": data.train");
    if (!r.str("data.val").empty()) {
      val_data.emplace(Dataset::open(r.str("data.val")));
      val_data->check_fits(mc.vocab_size, "data.val");
      if (val_data->manifest().space.tokenizer_hash != train_data->manifest().space.tokenizer_hash) {
        r.fail("data.val", "validation data was made with another tokenizer than data.train");
      }
    }
    // Trainable parts.
    const uint64_t seed = static_cast<uint64_t>(r.integer("run.seed"));
    if (pretrain) {
      if (model) model->set_requires_grad(true), trainable = model->parameters();
    } else {
      if (model) model->set_requires_grad(false);
      if (r.str("gate.type") != "none") {
        gates = Gates::create(gate_config_from(r), mc, seed, alloc);
        trainable.insert(trainable.end(), gates->parameters().begin(), gates->parameters().end());
      }
      if (r.integer("lora.rank") > 0) {
        LoraConfig lc;
        lc.rank = r.integer("lora.rank");
        lc.alpha = r.number("lora.alpha");
        lc.targets = r.list("lora.targets");
        lora = std::make_unique<LoraAdapters>(lc, mc, seed + 1, alloc);
        trainable.insert(trainable.end(), lora->parameters().begin(), lora->parameters().end());
      }
      if (trainable.empty()) r.fail("gate.type", "nothing to train: gate.type is none and lora.rank is 0", "enable gates or LoRA, or use train.mode: pretrain");
      for (const auto& [name, p] : model ? model->parameters() : NamedTensors{}) {
        if (p.requires_grad()) throw_runtime("base weight " + name + " is trainable in gates mode");
      }
    }
    seq_len = r.integer("data.seq_len");
    global_batch = r.integer("train.global_batch");
    micro_batch = r.integer("train.micro_batch");
    if (micro_batch == 0) micro_batch = global_batch;
  }

  // --fresh refuses a folder that already holds a run; --resume-from needs a complete checkpoint.
  void check_run_folder(const ResumeOptions& resume) const {
    // Step folders without DONE are an earlier run's interrupted checkpoints: starting over would
    // overwrite them, so that takes --force.
    bool has_steps = false;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(fs::path(run_dir) / "checkpoints", ec))
      has_steps |= e.path().filename().string().rfind("step_", 0) == 0;
    const bool has_run = fs::exists(fs::path(run_dir) / "metrics.jsonl") || has_steps;
    if (resume.fresh && has_run) {
      throw_usage("--fresh: '" + run_dir + "' already holds a run", "choose another run.dir, or drop --fresh to resume it");
    }
    if (!resume.fresh && !resume.force && resume.resume_from.empty() && has_steps && list_checkpoints(run_dir).empty()) {
      throw_input((fs::path(run_dir) / "checkpoints").string(), "holds step folders but no complete checkpoint (no DONE marker): a new run would overwrite them",
                  "pass --force to start this run over, or choose another run.dir");
    }
    if (!resume.resume_from.empty() && !fs::exists(fs::path(resume.resume_from) / "DONE")) {
      throw_input(resume.resume_from, "is not a complete checkpoint (no DONE marker)", "pick a folder under RUN_DIR/checkpoints/");
    }
  }

  // A resumed state's counters must be its step's: the data cursor and the tokens seen (an
  // edited cursor would silently replay or skip data).
  void check_counters(const TrainState& st, const std::string& where) const {
    LoaderOptions o;
    o.seq_len = seq_len;
    o.global_batch = global_batch;
    o.sft_mode = r.str("data.sft_mode");
    o.prefetch = 0;
    const LoaderCursor want = DataLoader(*train_data, o, {}).cursor_after(static_cast<uint64_t>(r.integer("run.seed")), st.step);
    if (!(st.cursor == want) || st.tokens != st.step * global_batch * seq_len) {
      throw_input(where, "at step " + std::to_string(st.step) + " holds data cursor (epoch " + std::to_string(st.cursor.epoch) +
                             ", sample " + std::to_string(st.cursor.sample) + ") and " + std::to_string(st.tokens) +
                             " tokens, expected (epoch " + std::to_string(want.epoch) + ", sample " + std::to_string(want.sample) +
                             ") and " + std::to_string(st.step * global_batch * seq_len),
                  "the checkpoint was edited or damaged: resume from an older one with --resume-from");
    }
  }

  // Checks that need no loading, so bad recipes fail before any work.
  void validate() const {
    // Single-key ranges are the schema's (checked when the recipe was loaded); here, what
    // relates keys to each other.
    if (r.integer("gate.head_dim") % 2 != 0 && r.str("gate.type") == "attention") {
      r.fail("gate.head_dim", "gate.head_dim must be even, found " + r.str("gate.head_dim"), "RoPE rotates pairs of dimensions");
    }
    if (r.integer("train.micro_batch") > 0 && r.integer("train.global_batch") % r.integer("train.micro_batch") != 0) {
      r.fail("train.micro_batch", "train.micro_batch must divide train.global_batch");
    }
    if (r.str("model.path").empty()) r.fail("model.path", "model.path is empty");
    if (!fs::is_directory(r.str("model.path"))) r.fail("model.path", "model folder '" + r.str("model.path") + "' does not exist", "check model.path");
    if (!fs::is_directory(r.str("data.train"))) r.fail("data.train", "dataset folder '" + r.str("data.train") + "' does not exist", "create it with agate tokenize");
    if (!r.str("data.val").empty() && !fs::is_directory(r.str("data.val"))) r.fail("data.val", "dataset folder '" + r.str("data.val") + "' does not exist");
    if (r.str("run.dir").empty()) r.fail("run.dir", "run.dir is empty");
    // The output folder: a folder (or creatable), and writable.
    fs::path out = r.str("run.dir");
    if (fs::exists(out) && !fs::is_directory(out)) r.fail("run.dir", "run.dir '" + out.string() + "' exists and is not a folder");
    fs::path probe = fs::absolute(out);
    while (!fs::exists(probe) && probe.has_parent_path() && probe != probe.parent_path()) probe = probe.parent_path();
    if (::access(probe.c_str(), W_OK) != 0) {
      r.fail("run.dir", "cannot write into '" + probe.string() + "' (for run.dir '" + out.string() + "')", "choose a writable run.dir");
    }
  }

  TrainPlan plan() const {
    TrainPlan p;
    const ModelConfig& c = config();
    p.parameters = c.parameter_count();
    p.trainable = pretrain && !model ? p.parameters : numel(trainable);
    p.gate_parameters = gates ? numel(gates->parameters()) : 0;
    p.tokens_per_step = global_batch * seq_len;
    LoaderOptions o;
    o.seq_len = seq_len;
    o.global_batch = global_batch;
    o.sft_mode = r.str("data.sft_mode");
    o.prefetch = 0;
    p.train_samples = DataLoader(*train_data, o, {}).num_samples();
    const double wb = dtype == at::kBFloat16 ? 2 : 4;
    p.weights_mb = p.parameters * wb / 1e6;
    p.optimizer_mb = p.trainable * 4.0 * 3 / 1e6;  // grad + Adam m, v (float32)
    // Saved activations per micro-batch: per layer and token, ~ (6D + 3I + 2(H + 2Hkv)hd)
    // values in the compute dtype; logits 3 x V float32. Attention runs on the blocked kernels
    // (flash_attention.h: CPU, and CUDA in CUDA builds), which keep no T x T map: per query row
    // they save the row max and sum (2 H float32 per token), and their backward holds, for
    // one layer at a time, float32 copies of q, k, v and dO, dq partials and dk, dv (below).
    const double B = static_cast<double>(micro_batch), T = static_cast<double>(seq_len);
    const double D = c.hidden_size, I = c.intermediate_size, hd = c.head_dim, H = c.num_attention_heads,
                 Hkv = c.num_key_value_heads;
    double per_layer = B * T * ((6 * D + 3 * I + 2 * (H + 2 * Hkv) * hd) * wb + 2 * H * 4 + Hkv * 4);
    double transient = B * T * (5 * H * hd + 6 * Hkv * hd) * 4;  // one layer's attention backward
    if (gates && r.str("gate.type") == "attention") {
      // The gate's own float32 attention (q, k, v, output, RoPE'd copies) on the same kernels.
      const double Wg = r.integer("gate.heads") * r.integer("gate.head_dim");
      per_layer += B * T * (6 * Wg * 4 + 2 * r.integer("gate.heads") * 4 + 2 * Hkv * 4);
      transient = std::max(transient, B * T * 9 * Wg * 4);
    }
    const double layers = r.boolean("train.recompute") ? (c.num_hidden_layers * B * T * D * wb + per_layer)
                                                       : c.num_hidden_layers * per_layer;
    p.activations_mb = (layers + transient + B * T * c.vocab_size * 4 * 3) / 1e6;
    p.device = device.str();
    return p;
  }

  // One forward of a micro-batch: logits [b, T, V], the per-layer keep surrogate [L] and the
  // mean hard keep flag (both undefined without gates).
  StepForward forward(const at::Tensor& inputs, Pass pass, bool recompute) {
    if (!train_forward) train_forward.emplace(*model, gates.get(), lora.get());
    return (*train_forward)(inputs, pass, recompute);
  }

  // Mean LM loss and keep ratio over eval.batches of the validation set (same batches each time).
  std::pair<double, double> validate_once(bool with_gates) {
    c10::NoGradGuard no_grad;
    LoaderOptions o;
    o.seq_len = seq_len;
    o.global_batch = micro_batch;
    o.sft_mode = r.str("data.sft_mode");
    o.prefetch = 0;
    DataLoader loader(*val_data, o, {12345, 0, 0});
    double loss_sum = 0, count_sum = 0, keep_sum = 0;
    const int64_t n = std::min<int64_t>(r.integer("eval.batches"), loader.batches_per_epoch());
    const int rank = pg ? pg->rank() : 0, world = pg ? pg->world() : 1;
    for (int64_t b = 0; b < n; ++b) {
      Batch batch = loader.next();
      if (b % world != rank) continue;  // ranks split the validation batches
      batch.tokens = batch.tokens.to(device), batch.mask = batch.mask.to(device);
      at::Tensor inputs = batch.tokens.slice(1, 0, seq_len), targets = batch.tokens.slice(1, 1);
      at::Tensor w = batch.mask.slice(1, 1);
      const StepForward f = forward(inputs, with_gates ? Pass::validate : Pass::base, false);
      double count = 0;
      const double l = lm_loss(f.logits, targets, w, &count).item<double>();
      loss_sum += l * count;
      count_sum += count;
      keep_sum += f.kept.defined() ? f.kept.item<double>() : 1.0;
    }
    if (pg) {
      at::Tensor sums = at::tensor({loss_sum, count_sum, keep_sum}, at::kDouble);
      pg->all_reduce_sum(sums);
      loss_sum = sums[0].item<double>(), count_sum = sums[1].item<double>(), keep_sum = sums[2].item<double>();
    }
    return {loss_sum / std::max(count_sum, 1.0), n > 0 ? keep_sum / n : 1.0};
  }

  // Fingerprints and the breaking keys of a resume (made on first use: a plan needs none).
  const ResumeGuard& guard() const {
    if (!guard_) guard_.emplace(r);
    return *guard_;
  }
  mutable std::optional<ResumeGuard> guard_;

  TrainSummary run(const ResumeOptions& resume) {
    make_dirs(run_dir);
    make_dirs((fs::path(run_dir) / "logs").string());
    char log_name[32];
    std::snprintf(log_name, sizeof(log_name), "rank_%05d.log", env.rank);
    init_logging(env.rank, (fs::path(run_dir) / "logs" / log_name).string());
    DistOptions dopt;
    dopt.backend = r.str("dist.backend");
    dopt.device = device;
    dopt.timeout = std::chrono::seconds(r.integer("dist.timeout_s"));
    if (r.str("dist.store") == "file") dopt.file_store = r.str("dist.store_path").empty() ? (fs::path(run_dir) / ".store").string() : r.str("dist.store_path");
    pg = ProcessGroup::create(env, dopt);
    const bool lead = pg->rank() == 0;  // rank 0 writes metrics, checkpoints and outputs
    // Every rank must hold the same base weights and the same resolved recipe.
    const std::string fp = guard().model_fingerprint(), yaml = r.to_yaml();
    pg->check_same("the base weights (model fingerprint " + fp + ")", crc32(fp.data(), fp.size()));
    pg->check_same("the resolved recipe", crc32(yaml.data(), yaml.size()));
    const std::string metrics_path = (fs::path(run_dir) / "metrics.jsonl").string();

    // Where to start: an explicit checkpoint, the newest complete one, or the beginning.
    std::optional<std::string> from;
    if (!resume.resume_from.empty()) from = resume.resume_from;
    else if (!resume.fresh) from = latest_checkpoint(run_dir);
    std::optional<CheckpointData> ckpt;
    TrainState st;
    if (from) {
      ckpt = load_checkpoint(*from);
      const std::string where = (fs::path(*from) / "trainer_state.json").string();
      st = TrainState::from_json(ckpt->state_json, where);
      // The state must belong to its folder and to this run's length (an edited step would
      // otherwise give a negative learning rate or overwrite a newer checkpoint).
      char folder[32];
      std::snprintf(folder, sizeof(folder), "step_%08lld", static_cast<long long>(st.step));
      if (fs::path(*from).filename().string() != folder) {
        throw_input(where, "says step " + std::to_string(st.step) + " but sits in " + fs::path(*from).filename().string(),
                    "the checkpoint was edited or moved: resume from an untouched one with --resume-from");
      }
      if (st.step > r.integer("train.steps")) {
        throw_input(where, "is at step " + std::to_string(st.step) + ", past train.steps (" + r.str("train.steps") + ")",
                    "raise train.steps to continue this run, or start a new one (another run.dir)");
      }
      guard().check(st, *from);
      check_counters(st, where);
    }
    if (lead) write_file_atomic((fs::path(run_dir) / "config.resolved.yaml").string(), r.to_yaml());
    log::info("run folder {}; {} rank(s), backend {}; plan:\n{}", run_dir, pg->world(), pg->backend(), plan().describe());

    // AGATE_DETECT_ANOMALY=1: autograd names the op that produced a NaN (slow; for debugging).
    if (const char* a = std::getenv("AGATE_DETECT_ANOMALY"); a && std::string(a) == "1") {
      torch::autograd::AnomalyMode::set_enabled(true);
    }
    const int64_t steps = r.integer("train.steps");
    const bool recompute = r.boolean("train.recompute");
    AdamW optimizer(trainable, AdamWOptions{r.number("optim.lr"), r.number("optim.beta1"), r.number("optim.beta2"),
                                            r.number("optim.eps"), r.number("optim.weight_decay")});
    Schedule sched{r.str("optim.schedule"), r.number("optim.lr"), r.integer("optim.warmup_steps"), steps,
                   r.number("optim.min_lr_ratio"), r.number("optim.decay_fraction")};
    LoaderOptions lo;
    lo.seq_len = seq_len;
    lo.global_batch = global_batch;
    lo.sft_mode = r.str("data.sft_mode");
    lo.rank = pg->rank();
    lo.world = pg->world();
    LoaderCursor cursor{static_cast<uint64_t>(r.integer("run.seed")), 0, 0};

    TrainSummary summary;
    int64_t start = 0, tokens_seen = 0, tokens_window = 0;
    StepWindow window(device);  // device-side sums of the step statistics since the last log line
    if (ckpt) {
      // Parameters, optimizer, data cursor, counters and the metric window: exactly as saved.
      {
        c10::NoGradGuard no_grad;
        std::map<std::string, at::Tensor> saved(ckpt->trainable.begin(), ckpt->trainable.end());
        for (auto& [name, p] : trainable) {
          auto it = saved.find(name);
          if (it == saved.end() || it->second.sizes() != p.sizes()) throw_input(*from, "has no matching tensor '" + name + "'");
          if (!at::isfinite(it->second).all().item<bool>()) {
            throw_input(*from, "trainable tensor '" + name + "' holds NaN/inf",
                        "the checkpoint is damaged: resume from an older one with --resume-from");
          }
          p.copy_(it->second);
        }
      }
      optimizer.load_state(ckpt->optimizer, st.optimizer_steps, *from);
      start = st.step;
      tokens_seen = st.tokens;
      cursor = st.cursor;
      tokens_window = st.window_tokens;
      window.restore(st.window);
      summary.skipped_steps = st.skipped_steps;
      summary.val_base_loss = st.val_base_loss;
      summary.val_loss = st.val_loss;
      summary.keep = st.keep;
      summary.steps = start;
      summary.resumed_from = start;
      log::info("resuming from {} (step {}, {} tokens seen, data epoch {} sample {})", *from, start, tokens_seen,
                   cursor.epoch, cursor.sample);
    }
    if (ckpt && start >= steps) return finished(summary, metrics_path, lead);
    MetricsLog metrics(metrics_path, lead, ckpt ? start : -1);  // a resumed run drops what came after its checkpoint
    auto record = [&](const json& j) { metrics.record(j); };
    // Identical starting parameters everywhere (they are seeded alike; this makes it certain).
    {
      c10::NoGradGuard no_grad;
      for (auto& kv : trainable) pg->broadcast(kv.second, 0);
    }
    DataLoader loader(*train_data, lo, cursor);

    const bool has_gates = gates != nullptr;
    if (!ckpt && val_data && has_gates) {
      summary.val_base_loss = validate_once(false).first;
      log::info("validation loss of the base model without gates: {:.4f}", summary.val_base_loss);
      record({{"step", 0}, {"val_base_loss", summary.val_base_loss}});
    }
    const double target = r.number("loss.target_keep");
    const double distill = r.number("loss.distill");
    const int64_t ckpt_every = r.integer("checkpoint.every_steps");
    const double t_start = now_seconds();
    double t_window = t_start;

    auto write_checkpoint = [&](int64_t step) {
      for (const auto& [name, p] : trainable) {
        if (!at::isfinite(p).all().item<bool>()) {
          throw_runtime("parameter " + name + " holds NaN/inf at step " + std::to_string(step) + "; no checkpoint written",
                        "the previous checkpoint is intact; lower optim.lr and resume from it with --resume-from");
        }
      }
      TrainState state;
      state.step = step;
      state.tokens = tokens_seen;
      state.optimizer_steps = optimizer.steps();
      state.cursor = loader.cursor();
      state.schedule = r.str("optim.schedule");
      state.next_lr = sched.at(step);
      state.recipe_fingerprint = hex32(crc32(yaml.data(), yaml.size()));
      state.world_size = pg->world();
      state.model_fingerprint = guard().model_fingerprint();
      state.data_fingerprint = guard().data_fingerprint();
      state.resume_keys = guard().resume_keys();
      state.recipe = guard().recipe_values();
      state.window = window.read(/*reset=*/false);
      state.window_tokens = tokens_window;
      state.skipped_steps = summary.skipped_steps + state.window.steps - state.window.good;
      state.val_base_loss = summary.val_base_loss, state.val_loss = summary.val_loss, state.keep = summary.keep;
      if (lead) {
        NamedTensors opt_state = optimizer.state();
        const std::string path = save_checkpoint(run_dir, step, {trainable, opt_state, state.to_json()},
                                                 r.integer("checkpoint.keep_last"));
        log::info("checkpoint {}", path);
      }
      pg->barrier();  // nobody moves on (or exits) before the checkpoint is complete
    };

    TrainStepOptions so;
    so.micro_batch = micro_batch;
    so.global_batch = global_batch;
    so.gates = has_gates;
    so.recompute = recompute;
    so.sparsity = r.str("loss.sparsity");
    so.target_keep = target;
    so.distill = distill;
    so.grad_clip = r.number("optim.grad_clip");
    TrainStep train_step([this](const at::Tensor& in, Pass pass, bool rc) { return forward(in, pass, rc); }, trainable,
                         optimizer, *pg, so, device);
    const int64_t log_every = r.integer("train.log_every"), max_bad = r.integer("train.max_bad_steps");

    for (int64_t step = start; step < steps; ++step) {
      const double lr = sched.at(step);
      const double lambda = sparsity_lambda(r.number("loss.lambda"), r.integer("loss.lambda_warmup_steps"), step);
      Batch batch = loader.next();
      pg->heartbeat(step);
      // The whole step runs on the device; its statistics are read at log steps (and every
      // train.max_bad_steps steps, to stop a run whose steps are all being skipped).
      window.add(train_step.run(batch.tokens, batch.mask, lr, lambda));
      tokens_seen += global_batch * seq_len;
      tokens_window += global_batch * seq_len;
      summary.steps = step + 1;
      const bool last = step + 1 == steps;
      const bool log_now = (step + 1) % log_every == 0 || last;
      if (log_now || (step + 1 - start) % max_bad == 0) {
        const StepWindow::Sums w = window.read(/*reset=*/log_now);
        if (w.bad_in_row >= max_bad) {
          record({{"step", step + 1}, {"skipped", w.steps - w.good}, {"bad_in_row", w.bad_in_row}});
          throw_runtime("the loss or gradient was NaN/infinite for " + std::to_string(w.bad_in_row) +
                            " steps in a row (last at step " + std::to_string(step + 1) + "); stopping",
                        "lower optim.lr, check the data, or use model.dtype: float32; no checkpoint holds non-finite values");
        }
        if (log_now && w.steps > w.good) {
          summary.skipped_steps += w.steps - w.good;
          log::warn("steps {}-{}: {} step(s) skipped for a non-finite loss or gradient ({} in a row now)",
                    step + 2 - w.steps, step + 1, w.steps - w.good, w.bad_in_row);
          record({{"step", step + 1}, {"skipped", w.steps - w.good}, {"bad_in_row", w.bad_in_row}});
        }
        if (log_now && w.good > 0) {
          const double n = static_cast<double>(w.good);
          const double now = now_seconds(), tps = tokens_window / std::max(now - t_window, 1e-9);
          const double eta = (now - t_start) / (step + 1 - start) * (steps - step - 1);
          log::info("step {}/{} | loss {:.4f} (lm {:.4f} + sparsity {:.4f}) | keep {:.3f} | lr {:.2e} | {:.0f} tok/s | ETA {}",
                    step + 1, steps, w.loss / n, w.lm / n, w.sparsity / n, w.keep / n, lr, tps, eta_text(eta));
          record({{"step", step + 1}, {"loss", w.loss / n}, {"lm_loss", w.lm / n}, {"sparsity", w.sparsity / n},
                  {"keep", w.keep / n}, {"lr", lr}, {"lambda", lambda}, {"grad_norm", w.grad_norm},
                  {"tokens_per_s", tps}, {"tokens", tokens_seen}});
          summary.train_loss = w.loss / n;
          summary.keep = w.keep / n;
          summary.tokens_per_s = tps;
        }
        if (log_now) t_window = now_seconds(), tokens_window = 0;
      }
      const int64_t every = r.integer("eval.every");
      if (val_data && ((every > 0 && (step + 1) % every == 0) || last)) {
        auto [vl, vk] = validate_once(true);
        summary.val_loss = vl;
        if (has_gates) summary.keep = vk;
        log::info("validation at step {}: loss {:.4f} (ppl {:.2f}), keep {:.3f}", step + 1, vl, std::exp(vl), vk);
        record({{"step", step + 1}, {"val_loss", vl}, {"val_ppl", std::exp(vl)}, {"val_keep", vk}});
      }
      at::Tensor stop_t = at::full({1}, StopSignals::requested() ? 1.0 : 0.0, at::kDouble);
      pg->all_reduce_max(stop_t);  // Slurm signals every rank, but not at the same instant
      const bool stop = stop_t.item<double>() > 0;
      if (last || stop || (ckpt_every > 0 && (step + 1) % ckpt_every == 0)) write_checkpoint(step + 1);
      if (stop && !last) {
        log::warn("stopped by signal {} after step {}; re-run the same command to resume",
                     StopSignals::signal_number() ? StopSignals::signal_number() : 15, step + 1);
        summary.preempted = true;
        return summary;
      }
    }
    if (lead) save_outputs(summary);
    pg->barrier();
    return summary;
  }

  // Re-running a finished run trains nothing and rewrites nothing: the summary is the one on
  // disk (rebuilt from the last metrics record only when the run died before writing it).
  TrainSummary finished(TrainSummary s, const std::string& metrics_path, bool lead) {
    const fs::path path = fs::path(run_dir) / "summary.json";
    json prev;
    try {
      prev = json::parse(read_file(path.string()));
    } catch (const std::exception&) {  // absent or damaged
      std::ifstream in(metrics_path);
      for (std::string line; std::getline(in, line);) {
        const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
        if (j.is_object() && j.contains("loss")) prev = {{"train_loss", j["loss"]}, {"tokens_per_s", j.value("tokens_per_s", 0.0)}};
      }
    }
    if (prev.is_object()) {
      s.train_loss = prev.value("train_loss", 0.0);
      s.tokens_per_s = prev.value("tokens_per_s", 0.0);
    }
    log::info("{} already finished at step {}: nothing to train", run_dir, s.steps);
    if (lead && !fs::exists(path)) save_outputs(s);
    pg->barrier();
    return s;
  }

  void save_outputs(const TrainSummary& s) {
    if (pretrain) {
      model->save((fs::path(run_dir) / "model").string());
      log::info("saved the trained model to {}/model", run_dir);
    } else {
      std::map<std::string, std::string> meta{{"gate_type", r.str("gate.type")}, {"lora_rank", r.str("lora.rank")}};
      save_safetensors((fs::path(run_dir) / "trainable.safetensors").string(), trainable, meta);
      log::info("saved {} trainable tensors to {}/trainable.safetensors", trainable.size(), run_dir);
    }
    json j = {{"steps", s.steps}, {"train_loss", s.train_loss}, {"val_loss", s.val_loss},
              {"val_base_loss", s.val_base_loss}, {"keep", s.keep}, {"tokens_per_s", s.tokens_per_s},
              {"skipped_steps", s.skipped_steps}};
    write_file_atomic((fs::path(run_dir) / "summary.json").string(), j.dump(2) + "\n");
  }
};

Trainer::Trainer(const Recipe& recipe, ResumeOptions resume, bool plan_only)
    : impl_(std::make_unique<Impl>(recipe, plan_only)), resume_(std::move(resume)) {
  impl_->check_run_folder(resume_);
}
Trainer::~Trainer() = default;
TrainPlan Trainer::plan() const { return impl_->plan(); }
TrainSummary Trainer::run() {
  if (!impl_->model) {
    throw_input(impl_->r.str("model.path"), "holds only config.json, no weights",
                "--dry-run plans with it; training needs the model's safetensors");
  }
  StopSignals signals;
  return impl_->run(resume_);
}

}  // namespace agate
