// The Llama-family decoder (Llama 2/3, Mistral, Qwen2) as plain tensors with HF names.
//
// Embedding -> L x [RMSNorm -> GQA attention (RoPE) -> residual -> RMSNorm -> SwiGLU -> residual]
// -> RMSNorm -> LM head (tied or not). Two hooks reach into attention: a KeyVisibility (which
// keys each KV head keeps: the gates) and a KVCache (inference).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "agate/io/named_tensors.h"
#include "agate/model/config.h"
#include "agate/model/rope.h"

namespace agate {

class KVCache;

// What a KeyVisibility decides for one layer's keys.
struct LayerKeep {
  at::Tensor keep;       // [B, T, Hkv] float: what attention uses (see masked_attention); undefined = keep all
  at::Tensor flags;      // [B, T, Hkv] float 0/1, detached: the hard decisions (what a KV cache stores);
                         // undefined when keep is
  at::Tensor flag_mean;  // [Hkv] float32: mean of flags per KV head over the decided keys (undefined when flags is)
  int64_t decided_end = -1;  // the flags decide keys [0, decided_end) only; later ones are kept
                             // whatever, and keep/flag means leave them out (-1: every key)

  // Hard 0/1 flags used as they are (keep = flags).
  static LayerKeep hard(const at::Tensor& flags);
};

// What a layer offers its KeyVisibility besides its input: the layer's own queries and keys
// (after RoPE; what the rules score with) and where the context ends.
struct KeyInputs {
  at::Tensor q;             // [B, H, T, hd] in the model's dtype (undefined: not offered)
  at::Tensor k;             // [B, Hkv, T, hd]
  int64_t context_end = 0;  // queries at positions >= this are a continuation's (T when none)
  int64_t start = 0;        // the position of the forward's first token (the cache's length)
};

// Decides, per layer, which keys stay visible to later queries at each KV head.
class KeyVisibility {
 public:
  virtual ~KeyVisibility() = default;
  // x: [B, T, D] the normalised hidden states that feed layer `layer`'s q/k/v; positions: [T]
  // int64; in: the layer's queries and keys (see KeyInputs). train: the keep that training
  // differentiates (e.g. straight-through flags) instead of the hard flags. Returns the layer's
  // decision (an empty LayerKeep keeps everything). Must give the same decision when called
  // again with the same arguments (activation recomputation calls it twice).
  virtual LayerKeep key_keep(int64_t layer, const at::Tensor& x, const at::Tensor& positions, bool train,
                             const KeyInputs& in) = 0;
  // Evicted tokens stay visible to queries fewer than this many positions later (0 = none).
  virtual int64_t recent_window() const { return 0; }
};

// The positions of a forward's tokens and their RoPE tables, computed once per forward.
struct Positions {
  int64_t start = 0;    // ids[0], on the host
  at::Tensor ids;       // [T] int64
  at::Tensor cos, sin;  // [T, head_dim] in the model's dtype
};

// The seven linear projections of a decoder layer, in HF naming.
enum class Projection { Q, K, V, O, Gate, Up, Down };
const char* projection_name(Projection p);  // "q_proj", ..., "down_proj"

// Adds a trainable term to a frozen projection (LoRA): y = x W^T + b + delta(x).
class ProjectionAdapter {
 public:
  virtual ~ProjectionAdapter() = default;
  // x: [B, T, in] -> [B, T, out], or an undefined tensor when `which` is not adapted.
  virtual at::Tensor delta(int64_t layer, Projection which, const at::Tensor& x) = 0;
};

struct ForwardOptions {
  KeyVisibility* visibility = nullptr;  // not owned
  KVCache* cache = nullptr;             // not owned; positions continue from cache->length()
  ProjectionAdapter* adapter = nullptr; // not owned
  bool train = false;      // passed to visibility->key_keep: the keep training differentiates
  bool recompute = false;  // activation recomputation: each layer keeps only its input and runs
                           // again in backward (training; not with a cache). The hooks above
                           // must then stay alive until backward has run.
  at::Tensor token_weight;  // [B, T] float 0/1 on the device (optional): the real tokens; the
                            // keep_mean statistic averages over them only (SFT padding is not
                            // counted). Undefined: every position counts.
  int64_t dense_until = 0;  // a context/continuation split (training): queries at positions below
                            // it attend to every earlier key whatever the flags (the context's
                            // full prefill); later queries see the flagged keys. 0 = none; not
                            // with a cache.
  bool reconstruct = false;  // per-layer reconstruction (training): a layer with keep decisions
                             // computes its full-cache attention output too, records how far
                             // the gated output is from it (LayerStats::recon_error), and
                             // continues the residual stream with the full one, so every
                             // layer sees the base model's own inputs and no gradient crosses
                             // layers. Not with a cache or recomputation.
  bool head = true;  // false: no LM head; ModelOutput::hidden holds the final normed hidden state
                     // instead of logits (for a loss fused with the head, lm_loss_from_hidden)
  bool last_only = false;  // with head: logits for the last position only, [B, 1, V] (a prefill
                           // needs no more; at SmolLM2's 49k vocabulary the other rows' head is
                           // a fifth of a 2k-token prefill's FLOPs)
};

// What one decoder layer's visibility decided (all undefined without a visibility).
struct LayerStats {
  at::Tensor keep_mean;  // [] float32: mean of the keep attention used; differentiable (a
                         // sparsity loss's input), also under recomputation
  at::Tensor flags;      // [B, T, Hkv] float 0/1, detached
  at::Tensor flag_mean;  // [Hkv] float32, detached
  int64_t decided_end = -1;  // LayerKeep::decided_end: keep_mean and flag_means count keys before it
  at::Tensor recon_error;  // [] float32 (ForwardOptions::reconstruct): sum over the real tokens of
                           // |gated - full|^2 of the attention output / sum of |full|^2;
                           // differentiable w.r.t. the keep
};

// The weight [B, T] float32 that keep and flag means count positions with: token_weight (or 1)
// times [position < decided_end] (LayerKeep::decided_end; -1 or >= T: no restriction). Undefined
// when neither restricts.
at::Tensor decided_weight(const at::Tensor& token_weight, int64_t decided_end, int64_t B, int64_t T, c10::Device device);

struct ModelOutput {
  at::Tensor logits;               // [B, T, V] in the model's dtype ([B, 1, V] with ForwardOptions::last_only;
                                   // undefined without ForwardOptions::head)
  at::Tensor hidden;               // [B, T, D] the final normed hidden state (only without ForwardOptions::head)
  std::vector<LayerStats> layers;  // one per decoder layer
  // [L] keep_mean per layer (differentiable) / [L, Hkv] flag_mean per layer and KV head;
  // undefined without a visibility.
  at::Tensor keep_means() const;
  at::Tensor flag_means() const;
  // [L'] recon_error of the layers that recorded one (ForwardOptions::reconstruct); undefined if none.
  at::Tensor recon_errors() const;
  // [L, Hkv] flag means over the positions where token_weight [B, T] is 1 (undefined: all).
  at::Tensor flag_means(const at::Tensor& token_weight) const;
};

struct LayerWeights {
  at::Tensor input_norm, q_proj, k_proj, v_proj, o_proj;  // [D], [H*hd, D], [Hkv*hd, D] x2, [D, H*hd]
  at::Tensor q_bias, k_bias, v_bias, o_bias;              // undefined unless the config has them
  at::Tensor post_norm, gate_proj, up_proj, down_proj;    // [D], [I, D], [I, D], [D, I]
};

class LlamaModel {
 public:
  // Builds a model from HF-named tensors, checking that every expected tensor is there with the
  // expected shape; converts each tensor straight to `dtype` (float32 or bfloat16) on `device`
  // into memory the model owns (one tensor at a time: never a full host copy of the model).
  // `source` names where the tensors came from, for errors.
  LlamaModel(ModelConfig config, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
             c10::ScalarType dtype, const std::string& source, c10::Device device = c10::kCPU);

  // Loads `dir/config.json` and the weights (single file or sharded) from a HF model folder,
  // from the memory map to `device`.
  static LlamaModel load(const std::string& dir, c10::ScalarType dtype, c10::Device device = c10::kCPU);
  // Random initialisation as HF does it (normal(0, initializer_range), norms 1, biases 0);
  // drawn on the CPU (the same weights on every device), then moved.
  static LlamaModel init_random(const ModelConfig& config, uint64_t seed, c10::ScalarType dtype,
                                c10::Device device = c10::kCPU);

  // Writes `dir/config.json` and the weights in HF layout (sharded above max_shard_bytes > 0).
  void save(const std::string& dir, uint64_t max_shard_bytes = 0) const;

  const ModelConfig& config() const { return config_; }
  c10::ScalarType dtype() const { return dtype_; }
  c10::Device device() const { return device_; }
  const Rope& rope() const { return rope_; }
  // Every parameter under its HF name, in a fixed order (tensors shared with the model).
  const NamedTensors& parameters() const { return params_; }
  void set_requires_grad(bool on);

  // The decoder, the one loop over its layers. tokens: [B, T] int64 (moved to the model's
  // device if needed) -> logits [B, T, V] in the model's dtype on its device, and what the
  // visibility decided per layer.
  ModelOutput run(const at::Tensor& tokens, const ForwardOptions& options = {}) const;
  // The same from input embeddings [B, T, D] (HF's inputs_embeds), e.g. embed(tokens) made to
  // require grad.
  ModelOutput run_embeds(const at::Tensor& embeds, const ForwardOptions& options = {}) const;
  // run(tokens, options).logits
  at::Tensor forward(const at::Tensor& tokens, const ForwardOptions& options = {}) const;

  at::Tensor embed(const at::Tensor& tokens) const;  // [B, T] -> [B, T, D]
  // Positions start, ..., start + T - 1 with their RoPE tables, on the model's device.
  Positions positions(int64_t start, int64_t T) const;
  at::Tensor head(const at::Tensor& h) const;  // final norm + LM head: [B, T, D] -> [B, T, V]
  const at::Tensor& lm_head() const { return lm_head_; }  // [V, D]
  // x: [B, T, D] -> RMSNorm(x) * weight, normalised in float32 as HF does.
  at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight) const;
  const LayerWeights& layer(int64_t i) const { return layers_[static_cast<size_t>(i)]; }

 private:
  friend class LayerRecompute;  // src/model/recompute.cpp: runs layer_forward again in backward
  // One decoder layer. h: [B, T, D] -> [B, T, D]; `stats` receives the visibility's decision.
  at::Tensor layer_forward(int64_t i, const at::Tensor& h, const Positions& positions, const ForwardOptions& options,
                           LayerStats* stats) const;

  ModelConfig config_;
  c10::ScalarType dtype_;
  c10::Device device_;
  Rope rope_;
  at::Tensor embed_tokens_, final_norm_, lm_head_;  // lm_head_ aliases embed_tokens_ when tied
  std::vector<LayerWeights> layers_;
  NamedTensors params_;
};

// The names and shapes a config implies, in the order the model stores them.
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_weight_shapes(const ModelConfig& config);

// Parses "float32" / "fp32" / "bfloat16" / "bf16" (what recipes and flags accept).
c10::ScalarType parse_compute_dtype(const std::string& name);

}  // namespace agate
