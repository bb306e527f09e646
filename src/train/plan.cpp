#include "agate/train/plan.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "agate/data/loader.h"
#include "agate/gate/gates.h"
#include "agate/gate/losses.h"
#include "agate/train/run_checks.h"
#include "agate/train/trainable.h"
#include "agate/util/device.h"
#include "agate/util/logging.h"

namespace fs = std::filesystem;

namespace agate {

std::string TrainPlan::describe() const {
  char buf[1024];
  std::snprintf(buf, sizeof(buf),
                "parameters        %.2f M (base)\n"
                "trainable         %.3f M (gates %.3f M)\n"
                "tokens per step   %lld\n"
                "train samples     %lld\n"
                "model FLOPs       %.3g per token (%.3g per step)\n"
                "memory estimate   weights %.1f MB + grads/optimizer %.1f MB + activations %.1f MB = %.1f MB per rank on %s\n",
                parameters / 1e6, trainable / 1e6, gate_parameters / 1e6, (long long)tokens_per_step,
                (long long)train_samples, flops_per_token, flops_per_token * static_cast<double>(tokens_per_step),
                weights_mb, optimizer_mb, activations_mb, weights_mb + optimizer_mb + activations_mb, device.c_str());
  return buf;
}

TrainPlan plan_run(const RunConfig& rc, const ModelConfig& c, const PlanCounts& counts, const std::string& device) {
  TrainPlan p;
  const int64_t seq_len = rc.data.seq_len, global_batch = rc.train.global_batch, micro_batch = rc.train.micro_batch;
  const bool gates = rc.has_gates();
  p.parameters = c.parameter_count();
  p.trainable = counts.trainable;
  p.gate_parameters = counts.gate_parameters;
  p.tokens_per_step = global_batch * seq_len;
  p.train_samples = counts.train_samples;
  const double wb = parse_compute_dtype(rc.model.dtype) == at::kBFloat16 ? 2 : 4;
  p.weights_mb = p.parameters * wb / 1e6;
  p.optimizer_mb = p.trainable * 4.0 * 3 / 1e6;  // grad + Adam m, v (float32)
  // Saved activations per micro-batch: per layer and token, ~ (6D + 3I + 2(H + 2Hkv)hd)
  // values in the compute dtype. Attention runs on the blocked kernels
  // (flash_attention.h: CPU, and CUDA in CUDA builds), which keep no T x T map: per query row
  // they save the row max and sum (2 H float32 per token), and their backward holds, for
  // one layer at a time, float32 copies of q, k, v and dO, dq partials and dk, dv (below).
  const double B = static_cast<double>(micro_batch), T = static_cast<double>(seq_len);
  const double D = c.hidden_size, I = c.intermediate_size, hd = c.head_dim, H = c.num_attention_heads,
               Hkv = c.num_key_value_heads;
  double per_layer = B * T * ((6 * D + 3 * I + 2 * (H + 2 * Hkv) * hd) * wb + 2 * H * 4 + Hkv * 4);
  double transient = B * T * (5 * H * hd + 6 * Hkv * hd) * 4;  // one layer's attention backward
  if (gates && rc.gate.type == GateType::Attention) {
    // The gate's own float32 attention (q, k, v, output, RoPE'd copies) on the same kernels.
    const double Wg = static_cast<double>(rc.gate.heads * rc.gate.head_dim);
    per_layer += B * T * (6 * Wg * 4 + 2 * rc.gate.heads * 4 + 2 * Hkv * 4);
    transient = std::max(transient, B * T * 9 * Wg * 4);
  }
  const double layers = rc.train.recompute ? (c.num_hidden_layers * B * T * D * wb + per_layer)
                                                     : c.num_hidden_layers * per_layer;
  // The LM loss: with distillation, whole logits (3 x V float32 per token: student, teacher,
  // log-probabilities); else fused with the head (lm_loss_from_hidden): one chunk of logits and
  // their gradient in the compute dtype plus float32 log-probabilities, and the saved gradient
  // w.r.t. the hidden state.
  const double V = static_cast<double>(c.vocab_size);
  const double loss = gates && rc.loss.distill > 0
                          ? B * T * V * 4 * 3
                          : std::min(B * T * V, static_cast<double>(kLossChunkElements)) * (2 * wb + 4) + B * T * D * wb;
  p.activations_mb = (layers + transient + loss) / 1e6;
  GateConfig g = rc.gate;
  if (!gates) g.type = GateType::None;
  p.flops_per_token = train_flops_per_token(c, g, seq_len);
  p.device = device;
  return p;
}

TrainPlan plan_recipe(const Recipe& r) {
  check_recipe(r);
  const RunConfig rc = RunConfig::from(r);
  const ModelConfig mc = load_model_config((fs::path(rc.model.path) / "config.json").string());
  const RunData data = open_run_data(r, mc);
  PlanCounts counts;
  if (rc.train.mode == TrainMode::Pretrain) {
    counts.trainable = mc.parameter_count();
  } else {
    // Counted on the meta device: shapes, no memory.
    const TrainableParts parts = make_trainable_parts(rc, mc, static_cast<uint64_t>(rc.run.seed), c10::kMeta);
    counts.trainable = numel(parts.trainable);
    counts.gate_parameters = parts.gates ? numel(parts.gates->parameters()) : 0;
  }
  counts.train_samples = static_cast<int64_t>(DataLoader(data.train, train_loader_options(rc), {}).num_samples());
  // run.device may name a GPU this machine lacks: the estimate is for that device.
  const auto wanted = parse_device(rc.run.device, 0, "run.device");
  const std::string device = wanted ? wanted->str() : resolve_device("auto").str();
  return plan_run(rc, mc, counts, device);
}

double train_flops_per_token(const ModelConfig& c, const GateConfig& g, int64_t T) {
  const double D = c.hidden_size, I = c.intermediate_size, H = c.num_attention_heads, Hkv = c.num_key_value_heads,
               hd = c.head_dim, L = c.num_hidden_layers, V = c.vocab_size, t = static_cast<double>(T);
  const double linear = L * (D * (H + 2 * Hkv) * hd + H * hd * D + 3 * D * I) + V * D;
  const double attention = L * 4 * t * H * hd;
  double gate = 0;
  if (g.type == GateType::Attention) {
    const double W = static_cast<double>(g.heads * g.head_dim);
    gate = L * (2 * (3 * W * D + Hkv * W) + 4 * t * W);
  } else if (g.type == GateType::Mlp) {
    gate = L * 2 * (D * g.mlp_hidden + g.mlp_hidden * Hkv);
  }
  return 2 * linear * 2 + attention * 3 + gate * 3;
}

}  // namespace agate
