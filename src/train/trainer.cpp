// The trainer's orchestration: set up the run (device, model, data, what is trained), then the
// loop (TrainStep, reports, validation, checkpoints, signals). The parts live beside it:
// run_checks (recipe, folder, data), plan, resume, held_out, step_report, run_outputs.
#include "agate/train/trainer.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/csrc/autograd/anomaly_mode.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "agate/data/loader.h"
#include "agate/dist/dist.h"
#include "agate/gate/losses.h"
#include "agate/io/safetensors.h"
#include "agate/model/llama.h"
#include "agate/train/adamw.h"
#include "agate/train/checkpoint.h"
#include "agate/train/held_out.h"
#include "agate/train/metrics_log.h"
#include "agate/train/resume.h"
#include "agate/train/resume_guard.h"
#include "agate/train/run_config.h"
#include "agate/train/run_outputs.h"
#include "agate/train/schedule.h"
#include "agate/train/step_report.h"
#include "agate/train/train_forward.h"
#include "agate/train/train_state.h"
#include "agate/train/train_step.h"
#include "agate/train/trainable.h"
#include "agate/util/checksum.h"
#include "agate/util/device.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"
#include "agate/util/logging.h"
#include "agate/util/signals.h"
#include "agate/util/threads.h"

namespace fs = std::filesystem;

namespace agate {

namespace {

// run.device resolved (after the recipe's checks and the thread count); CUDA: made current.
c10::Device run_device(const Recipe& r, const RunConfig& c, const LaunchEnv& env) {
  configure_threads(static_cast<int>(c.run.threads), env.local_world);
  check_recipe(r);
  const c10::Device device = resolve_device(c.run.device, env.local_rank, "run.device");
  if (device.is_cuda()) c10::impl::VirtualGuardImpl(device.type()).setDevice(device);  // NCCL and allocations follow it
  return device;
}

}  // namespace

struct Trainer::Impl {
  const Recipe r;     // a copy: callers may pass a temporary
  const RunConfig c;  // r's typed sections
  const LaunchEnv env;
  const std::string run_dir;
  const bool pretrain;
  const c10::Device device;
  LlamaModel model;
  RunData data;
  TrainableParts parts;  // gates mode; in pretrain mode only `trainable` (every weight)
  const int64_t seq_len, global_batch, micro_batch;
  TrainForward forward;
  std::unique_ptr<ProcessGroup> pg;  // created by run(); a plan needs no peers
  ResumeGuard guard;

  explicit Impl(const Recipe& recipe)
      : r(recipe),
        c(RunConfig::from(r)),
        env(detect_launch_env()),
        run_dir(c.run.dir),
        pretrain(c.train.mode == TrainMode::Pretrain),
        device(run_device(r, c, env)),
        model(load_run_model(c.model, device)),
        data(open_run_data(r, model.config())),
        parts(make_parts()),
        seq_len(c.data.seq_len),
        global_batch(c.train.global_batch),
        micro_batch(c.train.micro_batch),
        forward(model, parts.gates.get(), parts.lora.get()),
        guard(r) {}

  TrainableParts make_parts() {
    model.set_requires_grad(pretrain);
    if (pretrain) return {nullptr, nullptr, model.parameters()};
    TrainableParts p = make_trainable_parts(c, model.config(), static_cast<uint64_t>(c.run.seed), device);
    for (const auto& [name, w] : model.parameters()) {
      if (w.requires_grad()) throw_runtime("base weight " + name + " is trainable in gates mode");
    }
    return p;
  }

  TrainPlan plan() const {
    const PlanCounts counts{numel(parts.trainable), parts.gates ? numel(parts.gates->parameters()) : 0,
                            static_cast<int64_t>(DataLoader(data.train, train_loader_options(c), {}).num_samples())};
    return plan_run(c, model.config(), counts, device.str());
  }

  // Mean LM loss and keep ratio over eval.batches fixed validation batches. Gates with a rule
  // feature read the context's attention, so they are validated as compression after a prefill
  // of the first half (the second half's queries see the kept keys; the loss is over both).
  HeldOut validate(bool with_gates) const {
    ForwardOptions fo;
    fo.visibility = with_gates ? parts.gates.get() : nullptr;
    fo.adapter = with_gates ? parts.lora.get() : nullptr;
    if (with_gates && parts.gates && parts.gates->config().rule_feature != RuleFeature::None) fo.dense_until = seq_len / 2;
    return measure_held_out(model, fo, *data.val, {seq_len, micro_batch, c.eval.batches, c.data.sft_mode},
                            pg.get());
  }

  void join_group() {
    DistOptions dopt;
    dopt.backend = c.dist.backend;
    dopt.device = device;
    dopt.timeout = std::chrono::seconds(c.dist.timeout_s);
    if (c.dist.store == StoreKind::File) {
      dopt.file_store = c.dist.store_path.empty() ? (fs::path(run_dir) / ".store").string() : c.dist.store_path;
    }
    pg = ProcessGroup::create(env, dopt);
    // Every rank must hold the same base weights and the same resolved recipe.
    const std::string fp = guard.model_fingerprint(), yaml = r.to_yaml();
    pg->check_same("the base weights (model fingerprint " + fp + ")", crc32(fp.data(), fp.size()));
    pg->check_same("the resolved recipe", crc32(yaml.data(), yaml.size()));
  }

  TrainSummary run(const ResumeOptions& resume) {
    make_dirs((fs::path(run_dir) / "logs").string());
    char log_name[32];
    std::snprintf(log_name, sizeof(log_name), "rank_%05d.log", env.rank);
    init_logging(env.rank, (fs::path(run_dir) / "logs" / log_name).string());
    join_group();
    const bool lead = pg->rank() == 0;  // rank 0 writes metrics, checkpoints and outputs
    const std::optional<ResumePoint> from = find_resume_point(c, run_dir, resume, guard, data.train);
    if (lead) write_file_atomic((fs::path(run_dir) / "config.resolved.yaml").string(), r.to_yaml());
    log::info("run folder {}; {} rank(s), backend {}; plan:\n{}", run_dir, pg->world(), pg->backend(), plan().describe());
    // AGATE_DETECT_ANOMALY=1: autograd names the op that produced a NaN (slow; for debugging).
    if (const char* a = std::getenv("AGATE_DETECT_ANOMALY"); a && std::string(a) == "1") {
      torch::autograd::AnomalyMode::set_enabled(true);
    }
    const int64_t steps = c.train.steps, ckpt_every = c.checkpoint.every_steps;
    const OptimSection& oc = c.optim;
    AdamW optimizer(parts.trainable, AdamWOptions{oc.lr, oc.beta1, oc.beta2, oc.eps, oc.weight_decay});
    const Schedule sched = oc.schedule_for(steps);

    // Parameters, optimizer, data cursor, counters and the metric window: exactly as saved.
    TrainSummary summary;
    TrainState st;  // a fresh run's: step 0, the seed's cursor
    st.cursor = {static_cast<uint64_t>(c.run.seed), 0, 0};
    StepWindow window(device);  // device-side sums of the step statistics since the last log line
    if (from) {
      restore_trainable(parts.trainable, *from);
      optimizer.load_state(from->data.optimizer, from->state.optimizer_steps, from->from);
      st = from->state;
      window.restore(st.window);
      summary = resumed_summary(st);
      log::info("resuming from {} (step {}, {} tokens seen, data epoch {} sample {})", from->from, st.step, st.tokens,
                st.cursor.epoch, st.cursor.sample);
      if (st.step >= steps) return finished(summary, lead);
    }
    MetricsLog metrics((fs::path(run_dir) / "metrics.jsonl").string(), lead, from ? st.step : -1);
    {  // Identical starting parameters everywhere (they are seeded alike; this makes it certain).
      c10::NoGradGuard no_grad;
      for (auto& kv : parts.trainable) pg->broadcast(kv.second, 0);
    }
    LoaderOptions lo = train_loader_options(c, LoaderOptions{}.prefetch);
    lo.rank = pg->rank();
    lo.world = pg->world();
    DataLoader loader(data.train, lo, st.cursor);
    const bool has_gates = parts.gates != nullptr;
    if (!from && data.val && has_gates) {
      summary.val_base_loss = validate(false).loss;
      log::info("validation loss of the base model without gates: {:.4f}", summary.val_base_loss);
      metrics.record({{"step", 0}, {"val_base_loss", summary.val_base_loss}});
    }
    StepReporter report(c, metrics, st.step, from ? st.window_tokens : 0);

    auto write_checkpoint = [&](int64_t step) {
      for (const auto& [name, p] : parts.trainable) {
        if (!at::isfinite(p).all().item<bool>()) {
          throw_runtime("parameter " + name + " holds NaN/inf at step " + std::to_string(step) + "; no checkpoint written",
                        "the previous checkpoint is intact; lower optim.lr and resume from it with --resume-from");
        }
      }
      TrainState s = run_state(r, guard, pg->world());
      s.step = step, s.tokens = st.tokens, s.optimizer_steps = optimizer.steps(), s.cursor = loader.cursor();
      s.next_lr = sched.at(step);
      s.window = window.read(/*reset=*/false), s.window_tokens = report.window_tokens();
      s.skipped_steps = summary.skipped_steps + s.window.steps - s.window.good;
      s.val_base_loss = summary.val_base_loss, s.val_loss = summary.val_loss, s.keep = summary.keep;
      if (lead) {
        log::info("checkpoint {}", save_checkpoint(run_dir, step, {parts.trainable, optimizer.state(), s.to_json()},
                                                   c.checkpoint.keep_last));
      }
      pg->barrier();  // nobody moves on (or exits) before the checkpoint is complete
    };

    TrainStep train_step([this](const ForwardCall& call) { return forward(call); }, parts.trainable, optimizer, *pg,
                         train_step_options(c, has_gates), device);

    for (int64_t step = st.step; step < steps; ++step) {
      const double lr = sched.at(step);
      const StepTargets to = c.targets_at(step);
      Batch batch = loader.next();
      pg->heartbeat(step);
      // The whole step runs on the device; its statistics are read when a report is due.
      window.add(train_step.run(batch.tokens, batch.mask, lr, to.lambda, to.target, batch.real, to.context));
      st.tokens += global_batch * seq_len;
      report.after_step(step, lr, to.lambda, window, st.tokens, summary);
      const bool last = step + 1 == steps;
      const int64_t every = c.eval.every;
      if (data.val && ((every > 0 && (step + 1) % every == 0) || last)) {
        const HeldOut v = validate(true);
        summary.val_loss = v.loss;
        if (has_gates) summary.keep = v.keep;
        log::info("validation at step {}: loss {:.4f} (ppl {:.2f}), keep {:.3f}", step + 1, v.loss, std::exp(v.loss), v.keep);
        metrics.record({{"step", step + 1}, {"val_loss", v.loss}, {"val_ppl", std::exp(v.loss)}, {"val_keep", v.keep}});
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
    if (lead) save_run_outputs(run_dir, c, pretrain ? &model : nullptr, parts.trainable, summary);
    pg->barrier();
    return summary;
  }

  // Re-running a finished run trains nothing and rewrites nothing.
  TrainSummary finished(TrainSummary s, bool lead) {
    bool had_file = false;
    s = finished_summary(run_dir, s, &had_file);
    log::info("{} already finished at step {}: nothing to train", run_dir, s.steps);
    if (lead && !had_file) save_run_outputs(run_dir, c, pretrain ? &model : nullptr, parts.trainable, s);
    pg->barrier();
    return s;
  }
};

Trainer::Trainer(const Recipe& recipe, ResumeOptions resume)
    : impl_(std::make_unique<Impl>(recipe)), resume_(std::move(resume)) {
  check_run_folder(impl_->run_dir, resume_);
}
Trainer::~Trainer() = default;
TrainPlan Trainer::plan() const { return impl_->plan(); }
TrainSummary Trainer::run() {
  StopSignals signals;
  return impl_->run(resume_);
}

}  // namespace agate
