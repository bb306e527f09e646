// The Attention-Gate (gate.type: attention): a reduced causal multi-head attention with its
// own q/k/v projections and the model's RoPE, then a linear map to one keep logit per KV head.
//   x [B, T, D] -> q, k, v [B, H', T, d'] -> causal attention -> z [B, T, H'd']
//   -> logits = z W_s^T + b_s  [B, T, Hkv] -> p = sigmoid(logits)
#include <ATen/ATen.h>

#include "agate/model/attention.h"
#include "agate/model/rope.h"
#include "gate_types.h"

namespace agate {

namespace {

class AttentionGates : public Gates {
 public:
  AttentionGates(const GateConfig& g, const ModelConfig& m, uint64_t seed, c10::Device device)
      : Gates(g, m, device), rope_(m, g.head_dim) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    const int64_t D = m.hidden_size, W = g.heads * g.head_dim, Hkv = m.num_key_value_heads;
    for (int64_t i = 0; i < m.num_hidden_layers; ++i) {
      Layer L;
      L.wq = param(prefix(i) + "q_proj.weight", {W, D}, g.init_std, false, gen);
      L.wk = param(prefix(i) + "k_proj.weight", {W, D}, g.init_std, false, gen);
      L.wv = param(prefix(i) + "v_proj.weight", {W, D}, g.init_std, false, gen);
      L.ws = param(prefix(i) + "score.weight", {Hkv, W}, g.init_std, false, gen);
      L.bs = param(prefix(i) + "score.bias", {Hkv}, g.init_bias, true, gen);
      layers_.push_back(L);
    }
    // On the parameters' device now: a lazy copy in the first step would be a blocking
    // host-to-device copy (a sync) inside training.
    inv_freq_ = rope_.inv_freq().to(device);
  }

  // x_in: [B, T, D] on the parameters' device; positions: [T] int64 (moved to x's device if
  // elsewhere) -> keep logits [B, T, Hkv] float32.
  at::Tensor logits(int64_t layer, const at::Tensor& x_in, const at::Tensor& positions_in) override {
    const Layer& L = layers_[static_cast<size_t>(layer)];
    at::Tensor x = x_in.to(at::kFloat);
    const at::Tensor positions = positions_in.to(x.device());
    const int64_t B = x.size(0), T = x.size(1), H = config_.heads, d = config_.head_dim;
    auto [cos, sin] = cos_sin(positions);  // [T, d] each
    at::Tensor q = Rope::apply(at::linear(x, L.wq).view({B, T, H, d}), cos, sin).transpose(1, 2).contiguous();
    at::Tensor k = Rope::apply(at::linear(x, L.wk).view({B, T, H, d}), cos, sin).transpose(1, 2).contiguous();
    at::Tensor v = at::linear(x, L.wv).view({B, T, H, d}).transpose(1, 2).contiguous();
    at::Tensor k_pos = positions;
    if (cache_on_) {  // attend over the sequence's earlier tokens too
      Cached& c = cache_[static_cast<size_t>(layer)];
      if (c.k.defined()) {
        k = at::cat({c.k, k}, 2);
        v = at::cat({c.v, v}, 2);
        k_pos = at::cat({c.pos, positions});
      }
      c.k = k.detach(), c.v = v.detach(), c.pos = k_pos;
    }
    at::Tensor z = masked_attention(q, k, v, positions, k_pos, at::Tensor());  // [B, H, T, d]
    z = z.transpose(1, 2).reshape({B, T, H * d});
    return at::linear(z, L.ws, L.bs);  // [B, T, Hkv] logits
  }

 private:
  // positions: [T] int64 -> RoPE (cos, sin), each [T, d] float32 on positions' device. The
  // same ops as Rope::cos_sin (bit for bit on the CPU), against a copy of Rope's inverse
  // frequencies on that device (Rope keeps them on the CPU).
  std::pair<at::Tensor, at::Tensor> cos_sin(const at::Tensor& positions) {
    if (!inv_freq_.defined() || inv_freq_.device() != positions.device()) {
      inv_freq_ = rope_.inv_freq().to(positions.device());
    }
    at::Tensor freqs = positions.to(at::kFloat).unsqueeze(1) * inv_freq_.unsqueeze(0);  // [T, d/2]
    at::Tensor emb = at::cat({freqs, freqs}, -1);                                        // [T, d]
    return {emb.cos(), emb.sin()};
  }

  void set_decode_cache(bool on) override {
    cache_on_ = on;
    reset_decode_cache();
  }
  void reset_decode_cache() override { cache_.assign(layers_.size(), Cached{}); }

  struct Layer {
    at::Tensor wq, wk, wv, ws, bs;
  };
  struct Cached {
    at::Tensor k, v, pos;  // [B, H', T, d'], [T]
  };
  std::vector<Layer> layers_;
  std::vector<Cached> cache_;
  bool cache_on_ = false;
  Rope rope_;
  at::Tensor inv_freq_;  // [d/2] float32: rope_.inv_freq() on the device last used
};

}  // namespace

std::unique_ptr<Gates> make_attention_gates(const GateConfig& gate, const ModelConfig& model, uint64_t seed,
                                            c10::Device device) {
  return std::make_unique<AttentionGates>(gate, model, seed, device);
}

}  // namespace agate
