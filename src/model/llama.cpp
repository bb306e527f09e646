#include "agate/model/llama.h"

#include "agate/io/safetensors.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "agate/model/attention.h"
#include "agate/model/kv_cache.h"
#include "agate/model/rms_norm.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"
#include "recompute.h"

namespace fs = std::filesystem;

namespace agate {

namespace {

std::string layer_prefix(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

std::string shape_text(at::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace

const char* projection_name(Projection p) {
  switch (p) {
    case Projection::Q: return "q_proj";
    case Projection::K: return "k_proj";
    case Projection::V: return "v_proj";
    case Projection::O: return "o_proj";
    case Projection::Gate: return "gate_proj";
    case Projection::Up: return "up_proj";
    case Projection::Down: return "down_proj";
  }
  return "?";
}

c10::ScalarType parse_compute_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "f32") return at::kFloat;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  throw_usage("unknown compute dtype '" + name + "'", "use float32 or bfloat16");
}

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_weight_shapes(const ModelConfig& c) {
  const int64_t D = c.hidden_size, I = c.intermediate_size, hd = c.head_dim;
  const int64_t Hq = c.num_attention_heads * hd, Hk = c.num_key_value_heads * hd;
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, D}});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = layer_prefix(i);
    out.push_back({p + "input_layernorm.weight", {D}});
    out.push_back({p + "self_attn.q_proj.weight", {Hq, D}});
    out.push_back({p + "self_attn.k_proj.weight", {Hk, D}});
    out.push_back({p + "self_attn.v_proj.weight", {Hk, D}});
    out.push_back({p + "self_attn.o_proj.weight", {D, Hq}});
    if (c.qkv_bias) {
      out.push_back({p + "self_attn.q_proj.bias", {Hq}});
      out.push_back({p + "self_attn.k_proj.bias", {Hk}});
      out.push_back({p + "self_attn.v_proj.bias", {Hk}});
    }
    if (c.o_bias) out.push_back({p + "self_attn.o_proj.bias", {D}});
    out.push_back({p + "post_attention_layernorm.weight", {D}});
    out.push_back({p + "mlp.gate_proj.weight", {I, D}});
    out.push_back({p + "mlp.up_proj.weight", {I, D}});
    out.push_back({p + "mlp.down_proj.weight", {D, I}});
  }
  out.push_back({"model.norm.weight", {D}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, D}});
  return out;
}

LlamaModel::LlamaModel(ModelConfig config, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       c10::ScalarType dtype, const std::string& source, c10::Device device)
    : config_(std::move(config)), dtype_(dtype), device_(device), rope_(config_) {
  rope_.to(device_);
  if (dtype != at::kFloat && dtype != at::kBFloat16) throw_usage("compute dtype must be float32 or bfloat16");
  std::map<std::string, at::Tensor> by_name(tensors.begin(), tensors.end());
  for (const auto& [name, shape] : expected_weight_shapes(config_)) {
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      throw_input(source, "missing tensor '" + name + "'", "is config.json the one that belongs to these weights?");
    }
    if (it->second.sizes() != at::IntArrayRef(shape)) {
      throw_input(source, "tensor '" + name + "' has shape " + shape_text(it->second.sizes()) +
                              " but config.json implies " + shape_text(shape),
                  "wrong config.json for these weights?");
    }
    // Own the memory in the compute dtype on the device (the source may be a read-only memory
    // map): one copy per tensor, converted on the way.
    at::Tensor t = it->second.to(device_, dtype, /*non_blocking=*/false, /*copy=*/true).contiguous();
    params_.push_back({name, t});
  }
  std::map<std::string, at::Tensor> p(params_.begin(), params_.end());
  embed_tokens_ = p.at("model.embed_tokens.weight");
  final_norm_ = p.at("model.norm.weight");
  lm_head_ = config_.tie_word_embeddings ? embed_tokens_ : p.at("lm_head.weight");
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    const std::string pre = layer_prefix(i);
    auto get = [&](const std::string& n) { return p.count(pre + n) ? p.at(pre + n) : at::Tensor(); };
    LayerWeights L;
    L.input_norm = get("input_layernorm.weight");
    L.q_proj = get("self_attn.q_proj.weight");
    L.k_proj = get("self_attn.k_proj.weight");
    L.v_proj = get("self_attn.v_proj.weight");
    L.o_proj = get("self_attn.o_proj.weight");
    L.q_bias = get("self_attn.q_proj.bias");
    L.k_bias = get("self_attn.k_proj.bias");
    L.v_bias = get("self_attn.v_proj.bias");
    L.o_bias = get("self_attn.o_proj.bias");
    L.post_norm = get("post_attention_layernorm.weight");
    L.gate_proj = get("mlp.gate_proj.weight");
    L.up_proj = get("mlp.up_proj.weight");
    L.down_proj = get("mlp.down_proj.weight");
    layers_.push_back(L);
  }
}

LlamaModel LlamaModel::load(const std::string& dir, c10::ScalarType dtype, c10::Device device) {
  const std::string config_path = (fs::path(dir) / "config.json").string();
  if (!fs::is_directory(dir)) throw_input(dir, "is not a folder", "pass a Hugging Face model folder");
  if (!fs::exists(config_path)) throw_input(dir, "has no config.json", "pass a Hugging Face model folder");
  ModelConfig config = load_model_config(config_path);
  WeightFolder weights = WeightFolder::open(dir);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& name : weights.names()) {
    // Older Llama checkpoints carry rotary buffers; a tied model may still ship lm_head.
    if (name.size() > 19 && name.compare(name.size() - 19, 19, "rotary_emb.inv_freq") == 0) continue;
    tensors.push_back({name, weights.float_tensor(name)});
  }
  std::map<std::string, bool> expected;
  for (const auto& kv : expected_weight_shapes(config)) expected[kv.first] = true;
  for (const auto& kv : tensors) {
    if (!expected.count(kv.first) && !(kv.first == "lm_head.weight" && config.tie_word_embeddings)) {
      throw_input(dir, "unexpected tensor '" + kv.first + "' for a " + config.model_type + " model",
                  "is config.json the one that belongs to these weights?");
    }
  }
  LlamaModel model(config, tensors, dtype, dir, device);
  // Damaged weights would otherwise give NaN log-probabilities and exit 0. One pass over each
  // tensor on its device; a double sum cannot overflow for finite float32/bfloat16 values, and
  // NaN or infinity anywhere makes it non-finite.
  for (const auto& [name, t] : model.params_) {
    if (!std::isfinite(t.sum(at::kDouble).item<double>())) {
      throw_input(dir, "weight '" + name + "' holds NaN or infinite values", "the weights are damaged: download or convert them again");
    }
  }
  return model;
}

LlamaModel LlamaModel::init_random(const ModelConfig& config, uint64_t seed, c10::ScalarType dtype,
                                   c10::Device device) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  for (const auto& [name, shape] : expected_weight_shapes(config)) {
    at::Tensor t;
    const bool is_norm = name.find("norm.weight") != std::string::npos;
    const bool is_bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    if (is_norm) t = at::ones(shape, at::kFloat);
    else if (is_bias) t = at::zeros(shape, at::kFloat);
    else t = at::normal(0.0, config.initializer_range, shape, gen);
    tensors.push_back({name, t});
  }
  return LlamaModel(config, tensors, dtype, "init_random", device);
}

void LlamaModel::save(const std::string& dir, uint64_t max_shard_bytes) const {
  make_dirs(dir);
  ModelConfig c = config_;
  c.torch_dtype = dtype_ == at::kBFloat16 ? "bfloat16" : "float32";
  save_weight_folder(dir, params_, max_shard_bytes, {{"format", "pt"}});
  write_file_atomic((fs::path(dir) / "config.json").string(), model_config_to_json(c));
}

void LlamaModel::set_requires_grad(bool on) {
  for (auto& kv : params_) kv.second.requires_grad_(on);
}

at::Tensor LlamaModel::rms_norm(const at::Tensor& x, const at::Tensor& weight) const {
  return agate::rms_norm(x, weight, config_.rms_norm_eps);
}

at::Tensor LlamaModel::embed(const at::Tensor& tokens) const {
  // Ids are checked where they are still on the host (a device-side check would cost a sync in
  // every step; token datasets are checked against the vocabulary when they are opened).
  if (tokens.numel() > 0 && tokens.is_cpu()) {
    const int64_t lo = tokens.min().item<int64_t>(), hi = tokens.max().item<int64_t>();
    if (lo < 0 || hi >= config_.vocab_size) {
      throw_input("tokens", "token id " + std::to_string(lo < 0 ? lo : hi) + " is outside the vocabulary [0, " +
                                std::to_string(config_.vocab_size) + ")",
                  "were these tokens made with this model's tokenizer?");
    }
  }
  return at::embedding(embed_tokens_, tokens.to(device_));
}

Positions LlamaModel::positions(int64_t start, int64_t T) const {
  Positions p;
  p.start = start;
  p.ids = at::arange(start, start + T, at::TensorOptions().dtype(at::kLong).device(device_));
  std::tie(p.cos, p.sin) = rope_.cos_sin(p.ids, dtype_);
  return p;
}

at::Tensor decided_weight(const at::Tensor& token_weight, int64_t decided_end, int64_t B, int64_t T, c10::Device device) {
  at::Tensor w = token_weight.defined() ? token_weight.to(at::kFloat) : at::Tensor();
  if (decided_end < 0 || decided_end >= T) return w;
  at::Tensor m = at::ones({B, T}, at::TensorOptions().dtype(at::kFloat).device(device));
  m.slice(1, decided_end).zero_();
  return w.defined() ? w * m : m;
}

at::Tensor LlamaModel::layer_forward(int64_t i, const at::Tensor& h, const Positions& pos,
                                     const ForwardOptions& options, LayerStats* stats) const {
  const LayerWeights& L = layers_[static_cast<size_t>(i)];
  const int64_t B = h.size(0), T = h.size(1);
  // x W^T + b, plus the adapter's delta (LoRA) when there is one.
  auto proj = [&](const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, Projection which) {
    at::Tensor y = at::linear(x, w, b);
    if (options.adapter) {
      at::Tensor d = options.adapter->delta(i, which, x);
      if (d.defined()) y = y + d.to(y.scalar_type());
    }
    return y;
  };
  const int64_t H = config_.num_attention_heads, Hkv = config_.num_key_value_heads, hd = config_.head_dim;

  at::Tensor x = rms_norm(h, L.input_norm);                                   // [B, T, D]
  const at::Tensor& cos = pos.cos;  // [T, hd]
  const at::Tensor& sin = pos.sin;
  at::Tensor q = Rope::apply(proj(x, L.q_proj, L.q_bias, Projection::Q).view({B, T, H, hd}), cos, sin);
  at::Tensor k = Rope::apply(proj(x, L.k_proj, L.k_bias, Projection::K).view({B, T, Hkv, hd}), cos, sin);
  at::Tensor v = proj(x, L.v_proj, L.v_bias, Projection::V).view({B, T, Hkv, hd});
  // Head-major and contiguous: the batched matmuls (oneDNN in bf16) are much faster on dense
  // operands than on strided views.
  q = q.transpose(1, 2).contiguous();  // [B, H, T, hd]
  k = k.transpose(1, 2).contiguous();  // [B, Hkv, T, hd]
  v = v.transpose(1, 2).contiguous();

  at::Tensor keep;
  int64_t recent = 0;
  if (options.visibility) {
    const KeyInputs in{q, k, options.dense_until > 0 ? std::min(options.dense_until, T) : T, pos.start};
    LayerKeep decided = options.visibility->key_keep(i, x, pos.ids, options.train, in);
    keep = decided.keep;  // [B, T, Hkv]
    recent = options.visibility->recent_window();
    if (stats && keep.defined()) {
      const at::Tensor w = decided_weight(options.token_weight, decided.decided_end, B, T, keep.device());
      if (w.defined()) {
        const at::Tensor w3 = w.unsqueeze(-1);  // [B, T, 1]
        stats->keep_mean = (keep.to(at::kFloat) * w3).sum() / (w3.sum() * keep.size(2)).clamp_min(1.0);
      } else {
        stats->keep_mean = keep.to(at::kFloat).mean();
      }
      stats->flags = decided.flags;
      stats->flag_mean = decided.flag_mean;
      stats->decided_end = decided.decided_end;
    }
  }


  at::Tensor attn = options.cache
                        ? options.cache->attend(i, q, k, v, keep, config_.sliding_window, recent)
                        : masked_attention(q, k, v, pos.ids, pos.ids, keep, config_.sliding_window, recent,
                                           options.dense_until);
  if (options.reconstruct && keep.defined()) {
    at::Tensor full;  // [B, H, T, hd]: the same layer with every key visible
    {
      c10::NoGradGuard no_grad;
      full = masked_attention(q, k, v, pos.ids, pos.ids, {}, config_.sliding_window);
    }
    const at::Tensor err = (attn.to(at::kFloat) - full.to(at::kFloat)).pow(2).sum(at::IntArrayRef{1, 3});  // [B, T]
    at::Tensor norm = full.to(at::kFloat).pow(2).sum(at::IntArrayRef{1, 3});                               // [B, T]
    at::Tensor e = err, n = norm;
    if (options.token_weight.defined()) {
      const at::Tensor w = options.token_weight.to(at::kFloat);
      e = e * w, n = n * w;
    }
    if (stats) stats->recon_error = e.sum() / n.sum().clamp_min(1e-12);
    attn = full;  // the residual stream stays the base model's
  }
  attn = attn.transpose(1, 2).reshape({B, T, H * hd});                        // [B, T, H*hd]
  at::Tensor out = h + proj(attn, L.o_proj, L.o_bias, Projection::O);

  at::Tensor y = rms_norm(out, L.post_norm);
  at::Tensor mlp = proj(at::silu(proj(y, L.gate_proj, {}, Projection::Gate)) * proj(y, L.up_proj, {}, Projection::Up),
                        L.down_proj, {}, Projection::Down);
  return out + mlp;
}

at::Tensor LlamaModel::head(const at::Tensor& h) const { return at::linear(rms_norm(h, final_norm_), lm_head_); }

ModelOutput LlamaModel::run(const at::Tensor& tokens, const ForwardOptions& options) const {
  if (tokens.dim() != 2) throw_internal("LlamaModel::run expects tokens of shape [B, T], got " + std::to_string(tokens.dim()) + " dimensions");
  return run_embeds(embed(tokens), options);
}

ModelOutput LlamaModel::run_embeds(const at::Tensor& embeds, const ForwardOptions& options) const {
  if (embeds.dim() != 3 || embeds.size(2) != config_.hidden_size) {
    throw_internal("LlamaModel::run_embeds expects embeddings of shape [B, T, " + std::to_string(config_.hidden_size) + "]");
  }
  if (options.recompute && options.cache) throw_internal("activation recomputation is for training, not with a KV cache");
  if (options.dense_until > 0 && options.cache) throw_internal("a context/continuation split is for training, not with a KV cache");
  if (options.reconstruct && (options.cache || options.recompute)) {
    throw_internal("per-layer reconstruction is for training, not with a KV cache or recomputation");
  }
  const int64_t T = embeds.size(1);
  const int64_t start = options.cache ? options.cache->length() : 0;
  const Positions pos = positions(start, T);
  ModelOutput out;
  out.layers.resize(static_cast<size_t>(config_.num_hidden_layers));
  at::Tensor h = embeds;
  for (int64_t i = 0; i < config_.num_hidden_layers; ++i) {
    LayerStats& s = out.layers[static_cast<size_t>(i)];
    h = options.recompute ? LayerRecompute::run(*this, i, h, pos, options, &s) : layer_forward(i, h, pos, options, &s);
  }
  if (options.cache) options.cache->advance(T);
  if (options.head) out.logits = head(options.last_only ? h.slice(1, T - 1) : h);
  else out.hidden = rms_norm(h, final_norm_);
  return out;
}

at::Tensor LlamaModel::forward(const at::Tensor& tokens, const ForwardOptions& options) const {
  return run(tokens, options).logits;
}

LayerKeep LayerKeep::hard(const at::Tensor& flags) {
  LayerKeep k;
  k.keep = flags;
  k.flags = flags.detach();
  k.flag_mean = flags.detach().to(at::kFloat).mean(at::IntArrayRef{0, 1});
  return k;
}

namespace {
at::Tensor stack_defined(const std::vector<LayerStats>& layers, at::Tensor LayerStats::*field) {
  std::vector<at::Tensor> parts;
  for (const LayerStats& s : layers)
    if ((s.*field).defined()) parts.push_back(s.*field);
  return parts.empty() ? at::Tensor() : at::stack(parts);
}
}  // namespace

at::Tensor ModelOutput::keep_means() const { return stack_defined(layers, &LayerStats::keep_mean); }
at::Tensor ModelOutput::flag_means() const { return stack_defined(layers, &LayerStats::flag_mean); }
at::Tensor ModelOutput::recon_errors() const { return stack_defined(layers, &LayerStats::recon_error); }

at::Tensor ModelOutput::flag_means(const at::Tensor& token_weight) const {
  if (!token_weight.defined()) return flag_means();
  std::vector<at::Tensor> parts;
  for (const LayerStats& s : layers) {
    if (!s.flags.defined()) continue;
    const at::Tensor w = decided_weight(token_weight, s.decided_end, s.flags.size(0), s.flags.size(1), s.flags.device())
                             .unsqueeze(-1);  // [B, T, 1]
    parts.push_back((s.flags.to(at::kFloat) * w).sum(at::IntArrayRef{0, 1}) / w.sum().clamp_min(1.0));
  }
  return parts.empty() ? at::Tensor() : at::stack(parts);
}

}  // namespace agate
