// The recipe schema: every key, its type, default and meaning. The README's recipe reference is
// generated from this table (agate train --print-schema), so the two cannot drift.
#include "agate/train/recipe.h"
#include "agate/train/run_config.h"  // the fixed choices' name tables

namespace agate {

const std::vector<RecipeKey>& recipe_schema() {
  static const std::vector<RecipeKey> keys = {
      // run
      {"run.name", "string", "run", "name of the run (used in the default run.dir)"},
      {"run.dir", "string", "runs/${run.name}", "run folder: resolved config, metrics.jsonl, logs/, checkpoints/"},
      {"run.seed", "int", "0", "seed for gate/LoRA initialisation and the data order", {}, false, "[0, )"},
      {"run.threads", "int", "0", "intra-op threads (0 = all cores / local ranks)", {}, false, "[0, 1024]"},
      {"run.device", "string", "auto", "auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda or cuda:N"},
      // model
      {"model.path", "string", "", "Hugging Face model folder (config.json + safetensors)", {}, true},
      {"model.dtype", "string", "float32", "compute dtype of the frozen base", {"float32", "bfloat16"}},
      {"model.init_seed", "int", "-1", "pretrain mode: >= 0 initialises model.path's config randomly instead of loading weights", {}, false, "[-1, )"},
      // gate
      {"gate.type", "string", "attention", "gate module: attention (the paper's AG), mlp (per-token, cheaper) or none", kGateTypes.list()},
      {"gate.heads", "int", "4", "attention gate: heads of its causal attention", {}, false, "[1, 256]"},
      {"gate.head_dim", "int", "32", "attention gate: width of each head (RoPE as the model's)", {}, false, "[2, 1024]"},
      {"gate.mlp_hidden", "int", "64", "mlp gate: hidden width", {}, false, "[1, 65536]"},
      {"gate.threshold", "float", "0.5", "a token is kept at a KV head when its keep probability exceeds this", {}, false, "(0, 1)"},
      {"gate.estimator", "string", "ste", "ste: hard flags, straight-through gradient; soft: keep probabilities as a log-bias", kEstimators.list()},
      {"gate.sink_tokens", "int", "0", "the first N tokens are always kept", {}, false, "[0, )"},
      {"gate.recent_window", "int", "0", "an evicted token stays visible to the next N-1 queries", {}, false, "[0, )"},
      {"gate.init_bias", "float", "3.0", "initial keep logit (sigmoid(3) = 0.95: every token starts kept)", {}, false, "[-30, 30]"},
      {"gate.rule_feature", "string", "none", "attention: the gate also reads the attention each key receives from the context's queries (H2O's statistic), weighted per layer and KV head; needs train.context_min > 0", kRuleFeatures.list()},
      // lora
      {"lora.rank", "int", "0", "LoRA rank (0 = no LoRA)", {}, false, "[0, 4096]"},
      {"lora.alpha", "float", "16.0", "LoRA scale numerator (delta = alpha / rank * B A x)", {}, false, "[0, )"},
      {"lora.targets", "list", "[q_proj, v_proj]", "projections that get adapters"},
      // data
      {"data.train", "string", "", "training dataset folder (agate tokenize output, e.g. DIR/train)", {}, true},
      {"data.val", "string", "", "validation dataset folder (empty = no validation)"},
      {"data.seq_len", "int", "256", "tokens per sample (the model sees seq_len, predicts seq_len)", {}, false, "[2, 1048576]"},
      {"data.sft_mode", "string", "pad", "sft datasets: pad (one document per sample) or pack", kSftModes.list()},
      // train
      {"train.mode", "string", "gates", "gates: train gates (+LoRA) on the frozen base; pretrain: train every weight, no gates", kTrainModes.list()},
      {"train.steps", "int", "100", "optimizer steps", {}, false, "[1, )"},
      {"train.global_batch", "int", "8", "samples per optimizer step, over all ranks", {}, false, "[1, )"},
      {"train.micro_batch", "int", "0", "samples per forward/backward (gradient accumulation); 0 = the whole local batch", {}, false, "[0, )"},
      {"train.context_min", "float", "0.0", "context/continuation split: each step's context is a random share in [context_min, context_max] of the sequence; it attends fully, the continuation sees the gates' flags and alone carries the loss", {}, false, "[0, 1)"},
      {"train.context_max", "float", "0.0", "context/continuation split: the largest context share (0 = no split: the gates act on every query, the loss on every position)", {}, false, "[0, 1)"},
      {"train.recompute", "bool", "false", "recompute each decoder layer's activations in backward (saves memory)"},
      {"train.log_every", "int", "10", "steps between progress lines and metrics records", {}, false, "[1, )"},
      {"train.max_bad_steps", "int", "3", "consecutive non-finite losses/gradients (skipped steps) before the run stops", {}, false, "[1, )"},
      // optim
      {"optim.lr", "float", "1e-3", "peak learning rate (AdamW)", {}, false, "(0, )"},
      {"optim.weight_decay", "float", "0.0", "AdamW weight decay", {}, false, "[0, 1)"},
      {"optim.beta1", "float", "0.9", "AdamW beta1", {}, false, "[0, 1)"},
      {"optim.beta2", "float", "0.95", "AdamW beta2", {}, false, "[0, 1)"},
      {"optim.eps", "float", "1e-8", "AdamW epsilon", {}, false, "(0, )"},
      {"optim.grad_clip", "float", "1.0", "clip the global gradient norm to this (0 = off)", {}, false, "[0, )"},
      {"optim.schedule", "string", "cosine", "learning-rate schedule after warm-up", kScheduleKinds.list()},
      {"optim.warmup_steps", "int", "10", "linear warm-up steps", {}, false, "[0, )"},
      {"optim.min_lr_ratio", "float", "0.1", "final lr / peak lr (cosine, wsd)", {}, false, "[0, 1]"},
      {"optim.decay_fraction", "float", "0.2", "wsd: share of the steps spent decaying at the end", {}, false, "[0, 1]"},
      // loss
      {"loss.sparsity", "string", "l2_target", "sparsity regulariser on per-layer keep ratios", kSparsityForms.list()},
      {"loss.objective", "string", "lm", "lm: the gated model's next-token loss through the whole frozen model; reconstruction: each layer's gated attention output against its full-cache output, on the base model's residual stream (no gradient across layers)", kObjectives.list()},
      {"loss.count_window", "bool", "false", "count gate.recent_window's protected entries in the keep target, as gate-rank does at inference: the flags aim at (target x n - window) / (n - window), n the context length"},
      {"loss.target_keep", "float", "0.5", "target keep ratio in (0, 1] (1 - eviction ratio)", {}, false, "(0, 1]"},
      {"loss.lambda", "float", "1.0", "weight of the sparsity term", {}, false, "[0, )"},
      {"loss.lambda_warmup_steps", "int", "0", "ramp lambda linearly from 0 over this many steps", {}, false, "[0, )"},
      {"loss.target_keep_max", "float", "0.0", "randomised targets: each step's keep target is drawn from [target_keep, target_keep_max] (0 = off)", {}, false, "[0, 1]"},
      {"loss.target_ramp_steps", "int", "0", "ramp the keep target linearly from 1 down to loss.target_keep over this many steps (0 = off)", {}, false, "[0, )"},
      {"loss.distill", "float", "0.0", "weight of KL(base ‖ gated) on target tokens (0 = off)", {}, false, "[0, )"},
      // checkpoint
      {"checkpoint.every_steps", "int", "0", "steps between checkpoints (0 = only the final one)", {}, false, "[0, )"},
      {"checkpoint.keep_last", "int", "2", "complete checkpoints kept (>= 2; older ones are pruned after a new one is complete)", {}, false, "[2, )"},
      // dist
      {"dist.backend", "string", "auto", "c10d backend: auto (nccl on CUDA, gloo on CPU), gloo or nccl", kDistBackends.list()},
      {"dist.timeout_s", "int", "300", "seconds before a lost or hung rank fails every collective", {}, false, "[1, )"},
      {"dist.store", "string", "tcp", "rendezvous: tcp (TCPStore at MASTER_ADDR:MASTER_PORT) or file (a shared file)", kStoreKinds.list()},
      {"dist.store_path", "string", "", "file store path (default: RUN_DIR/.store)"},
      // eval
      {"eval.every", "int", "50", "steps between validation runs (0 = only at the end)", {}, false, "[0, )"},
      {"eval.batches", "int", "8", "validation batches per run", {}, false, "[1, )"},
  };
  return keys;
}

}  // namespace agate
