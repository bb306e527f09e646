#include "agate/infer/ragged_kv_cache.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

#include "agate/model/attention.h"
#include "agate/util/error.h"

namespace agate {

namespace {
constexpr int64_t kForever = std::numeric_limits<int64_t>::max();
}

RaggedKVCache::RaggedKVCache(int64_t num_layers) : layers_(static_cast<size_t>(num_layers)) {}

at::Tensor RaggedKVCache::attend(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& keep, int64_t sliding_window, int64_t recent_window) {
  if (q.size(0) != 1) throw_usage("the ragged KV cache serves batch size 1");
  const int64_t H = q.size(1), Tn = q.size(2), hd = q.size(3), Hkv = k.size(1), G = H / Hkv;
  element_size_ = k.element_size();
  auto& heads = layers_.at(static_cast<size_t>(layer));
  if (heads.empty()) heads.resize(static_cast<size_t>(Hkv));
  const int64_t first = length_;  // position of the first new token
  // The per-head bookkeeping (positions, expiry) is on the host: one read of the flags per
  // layer and chunk. (A device-resident ragged cache with batched decode is the kernel issue's.)
  at::Tensor flags = keep.defined() ? (keep.detach()[0].to(at::kFloat) > 0.5).cpu() : at::ones({Tn, Hkv}, at::kBool);  // [Tn, Hkv]
  auto fa = flags.accessor<bool, 2>();
  auto long_opts = at::TensorOptions().dtype(at::kLong).device(k.device());
  at::Tensor q_pos = at::arange(first, first + Tn, long_opts);
  // Removes the entries that no query at position >= next can see: evicted ones whose recent
  // window has passed, and those outside Mistral's sliding window.
  auto prune = [&](Head& h, int64_t next) {
    if (h.pos.empty()) return;
    std::vector<int64_t> live;
    for (size_t i = 0; i < h.pos.size(); ++i) {
      const bool in_window = sliding_window <= 0 || next - h.pos[i] < sliding_window;
      if (h.expires[i] >= next && in_window) live.push_back(static_cast<int64_t>(i));
    }
    if (live.size() == h.pos.size()) return;
    at::Tensor idx = at::tensor(live, long_opts);
    h.k = h.k.index_select(0, idx);
    h.v = h.v.index_select(0, idx);
    std::vector<int64_t> pos, exp;
    for (int64_t i : live) pos.push_back(h.pos[static_cast<size_t>(i)]), exp.push_back(h.expires[static_cast<size_t>(i)]);
    h.pos = pos;
    h.expires = exp;
  };
  std::vector<at::Tensor> outs;
  for (int64_t g = 0; g < Hkv; ++g) {
    Head& h = heads[static_cast<size_t>(g)];
    // Drop entries no new query can see any more (the cache only moves forward).
    prune(h, first);
    // Keys: the stored entries, then the new tokens. Visibility of stored entries: each
    // survives until `expires`; new tokens follow the training rule through masked_attention.
    const int64_t n_old = static_cast<int64_t>(h.pos.size());
    at::Tensor kg = k[0][g], vg = v[0][g];  // [Tn, hd]
    at::Tensor keys = n_old ? at::cat({h.k, kg}) : kg, vals = n_old ? at::cat({h.v, vg}) : vg;
    at::Tensor qg = q[0].slice(0, g * G, (g + 1) * G).unsqueeze(0);  // [1, G, Tn, hd]
    at::Tensor out;
    const int64_t oldest = n_old ? h.pos.front() : first;
    const bool window_cuts = sliding_window > 0 && first + Tn - 1 - oldest >= sliding_window;
    if (Tn == 1 && !window_cuts) {
      // Decode fast path: one query sees every stored entry and itself; plain softmax.
      at::Tensor sc = at::matmul(qg[0], keys.transpose(0, 1)) / std::sqrt(static_cast<double>(hd));  // [G, 1, n]
      const auto acc = (sc.scalar_type() == at::kBFloat16 || sc.scalar_type() == at::kHalf) ? at::kFloat : sc.scalar_type();
      out = at::matmul(at::softmax(sc, -1, acc).to(vals.scalar_type()), vals).unsqueeze(0);  // [1, G, 1, hd]
    } else {
      std::vector<int64_t> kpos = h.pos;
      for (int64_t t = 0; t < Tn; ++t) kpos.push_back(first + t);
      // keep for masked_attention: stored entries 1 (their expiry is handled below), new
      // tokens by their flag.
      std::vector<float> keep_host(static_cast<size_t>(n_old + Tn), 1.0f);
      for (int64_t t = 0; t < Tn; ++t) keep_host[static_cast<size_t>(n_old + t)] = fa[t][g] ? 1.0f : 0.0f;
      at::Tensor kv_keep = at::tensor(keep_host, at::kFloat).view({1, n_old + Tn, 1}).to(k.device());
      bool any_expiring = false;
      for (int64_t e : h.expires) any_expiring |= e != kForever && e < first + Tn - 1;
      if (!any_expiring) {
      out = masked_attention(qg, keys.unsqueeze(0).unsqueeze(0), vals.unsqueeze(0).unsqueeze(0), q_pos,
                             at::tensor(kpos, long_opts), kv_keep, sliding_window, recent_window);
      } else {  // some stored entry expires within this chunk: one query at a time
      std::vector<at::Tensor> rows;
      for (int64_t t = 0; t < Tn; ++t) {
        std::vector<float> kk_host = keep_host;
        for (int64_t i = 0; i < n_old; ++i) kk_host[static_cast<size_t>(i)] = h.expires[static_cast<size_t>(i)] >= first + t ? 1.0f : 0.0f;
        at::Tensor kk = at::tensor(kk_host, at::kFloat).view({1, n_old + Tn, 1}).to(k.device());
        rows.push_back(masked_attention(qg.slice(2, t, t + 1), keys.unsqueeze(0).unsqueeze(0),
                                        vals.unsqueeze(0).unsqueeze(0), q_pos.slice(0, t, t + 1),
                                        at::tensor(kpos, long_opts), kk, sliding_window, recent_window));
      }
      out = at::cat(rows, 2);
      }
    }
    outs.push_back(out[0]);  // [G, Tn, hd]
    // Store the new entries: kept ones for good, evicted ones only while the recent window
    // still shows them to a later query.
    std::vector<int64_t> take;
    for (int64_t t = 0; t < Tn; ++t) {
      const int64_t p = first + t;
      if (fa[t][g]) {
        take.push_back(t), h.pos.push_back(p), h.expires.push_back(kForever);
      } else if (recent_window > 1) {
        take.push_back(t), h.pos.push_back(p), h.expires.push_back(p + recent_window - 1);
      }
    }
    if (!take.empty()) {
      at::Tensor idx = at::tensor(take, long_opts);
      at::Tensor nk = kg.index_select(0, idx), nv = vg.index_select(0, idx);
      h.k = n_old ? at::cat({h.k, nk}) : nk;
      h.v = n_old ? at::cat({h.v, nv}) : nv;
    }
    prune(h, first + Tn);  // what the next token cannot see is not stored (nor counted) after this chunk
  }
  return at::cat(outs, 0).unsqueeze(0);  // [1, H, Tn, hd]
}

void RaggedKVCache::insert(int64_t layer, const at::Tensor& k, const at::Tensor& v, const at::Tensor& keep) {
  const int64_t Hkv = k.size(0), T = k.size(1);
  if (keep.size(0) != T || keep.size(1) != Hkv) throw_usage("RaggedKVCache::insert: keep must be [T, Hkv]");
  element_size_ = k.element_size();
  auto& heads = layers_.at(static_cast<size_t>(layer));
  if (heads.empty()) heads.resize(static_cast<size_t>(Hkv));
  for (int64_t g = 0; g < Hkv; ++g) {
    Head& h = heads[static_cast<size_t>(g)];
    at::Tensor idx = keep.select(1, g).to(k.device()).nonzero().view({-1});  // kept positions, ascending
    at::Tensor nk = k[g].index_select(0, idx), nv = v[g].index_select(0, idx);
    h.k = h.pos.empty() ? nk : at::cat({h.k, nk});
    h.v = h.pos.empty() ? nv : at::cat({h.v, nv});
    const at::Tensor idx_host = idx.cpu();
    auto ia = idx_host.accessor<int64_t, 1>();
    for (int64_t i = 0; i < ia.size(0); ++i) h.pos.push_back(length_ + ia[i]), h.expires.push_back(kForever);
  }
}

int64_t RaggedKVCache::bytes() const { return total_entries() * 2 * element_size_ * (layers_.empty() || layers_[0].empty() || !layers_[0][0].k.defined() ? 0 : layers_[0][0].k.size(1)); }

int64_t RaggedKVCache::entries(int64_t layer, int64_t head) const {
  return static_cast<int64_t>(layers_.at(static_cast<size_t>(layer)).at(static_cast<size_t>(head)).pos.size());
}

std::vector<int64_t> RaggedKVCache::positions(int64_t layer, int64_t head) const {
  return layers_.at(static_cast<size_t>(layer)).at(static_cast<size_t>(head)).pos;
}

int64_t RaggedKVCache::total_entries() const {
  int64_t n = 0;
  for (const auto& l : layers_)
    for (const auto& h : l) n += static_cast<int64_t>(h.pos.size());
  return n;
}

}  // namespace agate
