#include "agate/model/ragged_kv_cache.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "agate/model/attention.h"
#include "agate/util/error.h"

namespace agate {

namespace {

constexpr int64_t kForever = std::numeric_limits<int64_t>::max();

// Free slots left after a compaction or growth to n entries: compactions (each one host read)
// are at least this many decode steps apart.
int64_t slack(int64_t n) { return std::max<int64_t>(n / 2, 16); }

}  // namespace

RaggedKVCache::RaggedKVCache(int64_t num_layers) : layers_(static_cast<size_t>(num_layers)) {}

RaggedKVCache::RaggedKVCache(const RaggedKVCache& other) { *this = other; }

RaggedKVCache& RaggedKVCache::operator=(const RaggedKVCache& other) {
  if (this == &other) return *this;
  layers_ = other.layers_;
  for (Layer& L : layers_) {
    if (!L.k.defined()) continue;
    for (at::Tensor* t : {&L.k, &L.v, &L.pos, &L.expires, &L.len}) *t = t->clone();
  }
  length_ = other.length_;
  window_ = other.window_;
  return *this;
}

void RaggedKVCache::init_layer(Layer& L, const at::Tensor& k) const {
  const int64_t Hkv = k.size(0), hd = k.size(2);
  const auto long_opts = k.options().dtype(at::kLong);
  L.k = at::zeros({Hkv, 0, hd}, k.options());
  L.v = at::zeros({Hkv, 0, hd}, k.options());
  L.pos = at::zeros({Hkv, 0}, long_opts);
  L.expires = at::zeros({Hkv, 0}, long_opts);
  L.len = at::zeros({Hkv}, long_opts);
  L.cap = L.bound = 0;
}

// Reallocates to `need` slots per head (no host read). Unused slots hold zeros (finite, so a
// masked-out slot contributes 0 x value exactly) and expire before any query.
void RaggedKVCache::grow(Layer& L, int64_t need) const {
  const int64_t Hkv = L.k.size(0), hd = L.k.size(2);
  at::Tensor k = at::zeros({Hkv, need, hd}, L.k.options()), v = at::zeros({Hkv, need, hd}, L.v.options());
  at::Tensor pos = at::zeros({Hkv, need}, L.pos.options()), exp = at::full({Hkv, need}, -1, L.expires.options());
  const int64_t n = std::min(L.cap, need);
  if (n > 0) {
    k.narrow(1, 0, n).copy_(L.k.narrow(1, 0, n));
    v.narrow(1, 0, n).copy_(L.v.narrow(1, 0, n));
    pos.narrow(1, 0, n).copy_(L.pos.narrow(1, 0, n));
    exp.narrow(1, 0, n).copy_(L.expires.narrow(1, 0, n));
  }
  L.k = k, L.v = v, L.pos = pos, L.expires = exp;
  L.cap = need;
}

// Which stored slots a query at position >= next may still see: [Hkv, cap] bool.
at::Tensor RaggedKVCache::live(const Layer& L, int64_t next) const {
  at::Tensor slot = at::arange(L.cap, L.len.options());
  at::Tensor r = (slot.unsqueeze(0) < L.len.unsqueeze(1)) & (L.expires >= next);
  if (window_ > 0) r = r & (L.pos > next - window_);  // next - pos < window
  return r;
}

// Drops the entries no query at position >= next can see (expired, or outside the sliding
// window), keeping the others' order (a stable device-side gather), and resizes the buffers to
// the live entries plus `extra` plus slack. Reads max(len) to the host once: that sizes the
// buffers and the attention span, and only happens when the capacity ran out (at least
// slack() steps apart) or after a multi-token chunk.
void RaggedKVCache::compact(Layer& L, int64_t next, int64_t extra) const {
  if (L.cap == 0) {
    grow(L, extra + slack(extra));
    return;
  }
  const int64_t Hkv = L.k.size(0), hd = L.k.size(2), cap = L.cap;
  const at::Tensor alive = live(L, next);
  const at::Tensor incl = alive.cumsum(1);  // [Hkv, cap] int64: live entries up to each slot
  const at::Tensor cnt = incl.select(1, cap - 1);
  // The meta device (shape-only; the tests run decode on it to prove it reads nothing) has no
  // values: it keeps the upper bound.
  const int64_t m = cnt.is_meta() ? L.bound : cnt.max().item<int64_t>();
  const int64_t new_cap = m + extra + slack(m + extra);
  // A permutation per head: live slots first, then the dead ones, each in slot order; src[g, j]
  // is the slot that moves to j.
  const at::Tensor slot = at::arange(cap, L.len.options()).expand({Hkv, cap});
  // (Arithmetic rather than at::where: the meta device lacks where, and the tests run this there.)
  const at::Tensor a = alive.to(at::kLong), dead_dst = cnt.unsqueeze(1) + slot - incl;
  const at::Tensor dst = dead_dst + a * (incl - 1 - dead_dst);
  const int64_t take = std::min(cap, new_cap);  // the live ones land in [0, m), m <= take
  const at::Tensor src = at::empty_like(dst).scatter_(1, dst, slot).narrow(1, 0, take);
  const at::Tensor src3 = src.unsqueeze(2).expand({Hkv, take, hd});
  at::Tensor k = at::zeros({Hkv, new_cap, hd}, L.k.options()), v = at::zeros({Hkv, new_cap, hd}, L.v.options());
  at::Tensor pos = at::zeros({Hkv, new_cap}, L.pos.options()), exp = at::full({Hkv, new_cap}, -1, L.expires.options());
  k.narrow(1, 0, take).copy_(L.k.gather(1, src3));
  v.narrow(1, 0, take).copy_(L.v.gather(1, src3));
  pos.narrow(1, 0, take).copy_(L.pos.gather(1, src));
  exp.narrow(1, 0, take).copy_(L.expires.gather(1, src));
  L.k = k, L.v = v, L.pos = pos, L.expires = exp;
  L.len = cnt.clone();
  L.cap = new_cap;
  L.bound = m;
}

at::Tensor RaggedKVCache::attend(int64_t layer, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const at::Tensor& keep, int64_t sliding_window, int64_t recent_window) {
  if (q.size(0) != 1) throw_internal("the ragged KV cache serves batch size 1, got " + std::to_string(q.size(0)));
  const int64_t H = q.size(1), Tn = q.size(2), hd = q.size(3), Hkv = k.size(1), G = H / Hkv;
  window_ = sliding_window;
  Layer& L = layers_.at(static_cast<size_t>(layer));
  const at::Tensor kn = k.detach()[0], vn = v.detach()[0];  // [Hkv, Tn, hd]
  if (!L.k.defined()) init_layer(L, kn);
  // Buffers made under InferenceMode cannot be written in place outside it: own a copy.
  if (L.k.is_inference() && !c10::InferenceMode::is_enabled())
    for (at::Tensor* t : {&L.k, &L.v, &L.pos, &L.expires, &L.len}) *t = t->clone();
  const int64_t first = length_;  // position of the first new token
  const auto long_opts = L.len.options();
  const at::Tensor tpos = at::arange(first, first + Tn, long_opts);
  // flags [Hkv, Tn]: kept (undefined: all kept).
  const at::Tensor flags = keep.defined() ? (keep.detach()[0] > 0.5).t() : at::Tensor();

  // Room for the chunk. A decode step compacts (one host read, see compact()) only when the
  // host's upper bound on max(len) reaches the capacity; a longer chunk grows without a read
  // (it is compacted after the attention anyway).
  if (L.bound + Tn > L.cap) {
    if (Tn == 1) compact(L, first, 1);
    else grow(L, L.bound + Tn);
  }
  const bool was_empty = L.bound == 0;
  // The chunk goes into slots len[g] + t of every head. Expiry: kept never; an evicted token at
  // p is visible to queries up to p + recent_window - 1 (itself only without a recent window):
  // then one rule, slot < len && pos <= t && t <= expires (&& the window), covers stored
  // entries and new tokens alike, and equals masked_attention's.
  const at::Tensor slots = L.len.unsqueeze(1) + at::arange(Tn, long_opts);  // [Hkv, Tn]
  L.k.scatter_(1, slots.unsqueeze(2).expand({Hkv, Tn, hd}), kn);
  L.v.scatter_(1, slots.unsqueeze(2).expand({Hkv, Tn, hd}), vn);
  L.pos.scatter_(1, slots, tpos.unsqueeze(0).expand({Hkv, Tn}));
  const int64_t seen_for = std::max<int64_t>(recent_window, 1) - 1;  // an evicted token's expiry - position
  const at::Tensor exp_new = flags.defined()
                                 ? (tpos + seen_for).unsqueeze(0).expand({Hkv, Tn}).masked_fill(flags, kForever)
                                 : at::full({Hkv, Tn}, kForever, long_opts);
  L.expires.scatter_(1, slots, exp_new);
  L.len.add_(Tn);
  L.bound += Tn;

  at::Tensor out;
  if (was_empty && Tn > 1) {
    // Nothing stored before the chunk: exactly the training-time attention (the blocked kernel,
    // memory linear in Tn).
    const at::Tensor kv_keep = flags.defined() ? flags.t().unsqueeze(0).to(q.scalar_type()) : at::Tensor();
    out = masked_attention(q, k, v, tpos, tpos, kv_keep, sliding_window, recent_window);
  } else {
    // One batched attention over every KV head: the stored slots up to the bound (the chunk
    // included), visibility [Hkv, Tn, W], softmax accumulated in float32 for reduced precision
    // (as masked_attention_reference's plain path).
    const int64_t W = L.bound;
    const at::Tensor Kw = L.k.narrow(1, 0, W), Vw = L.v.narrow(1, 0, W);
    const at::Tensor Pw = L.pos.narrow(1, 0, W).unsqueeze(1);  // [Hkv, 1, W]
    const at::Tensor Ew = L.expires.narrow(1, 0, W).unsqueeze(1);
    const at::Tensor t = tpos.view({1, Tn, 1});
    // The complement, hidden [Hkv, Tn, W], is what the softmax masks.
    at::Tensor hidden = (at::arange(W, long_opts).view({1, 1, W}) >= L.len.view({Hkv, 1, 1})) | (Ew < t);
    if (Tn > 1) hidden = hidden | (Pw > t);  // a decode query comes after every stored entry
    if (sliding_window > 0) hidden = hidden | (Pw <= t - sliding_window);
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    at::Tensor scores = at::bmm(q[0].reshape({Hkv, G * Tn, hd}), Kw.transpose(1, 2)).mul_(scale).view({Hkv, G, Tn, W});
    scores.masked_fill_(hidden.unsqueeze(1), -std::numeric_limits<float>::infinity());
    const auto st = scores.scalar_type();
    const auto acc = (st == at::kBFloat16 || st == at::kHalf) ? at::kFloat : st;
    const at::Tensor probs = at::softmax(scores, -1, acc).to(Vw.scalar_type()).view({Hkv, G * Tn, W});
    out = at::bmm(probs, Vw).view({1, H, Tn, hd});
  }

  if (Tn == 1) {
    // An evicted token without a recent window is seen by itself only: give its slot back.
    if (flags.defined() && recent_window <= 1) L.len.add_(flags.view({Hkv}).to(at::kLong) - 1);
  } else {
    compact(L, first + Tn, 0);  // what the next token cannot see is not stored (nor counted)
  }
  return out;
}

void RaggedKVCache::insert(int64_t layer, const at::Tensor& k, const at::Tensor& v, const at::Tensor& keep) {
  const int64_t Hkv = k.size(0), T = k.size(1), hd = k.size(2);
  if (keep.size(0) != T || keep.size(1) != Hkv) throw_internal("RaggedKVCache::insert: keep must be [T, Hkv]");
  Layer& L = layers_.at(static_cast<size_t>(layer));
  if (!L.k.defined()) init_layer(L, k.detach());
  if (L.k.is_inference() && !c10::InferenceMode::is_enabled())
    for (at::Tensor* t : {&L.k, &L.v, &L.pos, &L.expires, &L.len}) *t = t->clone();
  const auto long_opts = L.len.options();
  at::Tensor flags = keep.to(k.device());
  flags = (flags.scalar_type() == at::kBool ? flags : flags > 0.5).t();  // [Hkv, T]
  if (L.bound + T > L.cap) grow(L, L.bound + T);
  // Every entry goes in, the evicted ones already expired; the compaction keeps the chosen ones.
  const at::Tensor slots = L.len.unsqueeze(1) + at::arange(T, long_opts);  // [Hkv, T]
  L.k.scatter_(1, slots.unsqueeze(2).expand({Hkv, T, hd}), k.detach());
  L.v.scatter_(1, slots.unsqueeze(2).expand({Hkv, T, hd}), v.detach());
  L.pos.scatter_(1, slots, at::arange(length_, length_ + T, long_opts).unsqueeze(0).expand({Hkv, T}));
  L.expires.scatter_(1, slots, at::full({Hkv, T}, length_ - 1, long_opts).masked_fill_(flags, kForever));
  L.len.add_(T);
  L.bound += T;
  compact(L, length_, 0);
}

int64_t RaggedKVCache::bytes() const {
  int64_t n = 0;
  for (const Layer& L : layers_)
    if (L.cap > 0) n += live(L, length_).sum().item<int64_t>() * L.k.size(2) * 2 * L.k.element_size();
  return n;
}

int64_t RaggedKVCache::capacity_bytes() const {
  int64_t n = 0;
  for (const Layer& L : layers_)
    if (L.k.defined()) n += (L.k.numel() + L.v.numel()) * L.k.element_size();
  return n;
}

int64_t RaggedKVCache::entries(int64_t layer, int64_t head) const {
  const Layer& L = layers_.at(static_cast<size_t>(layer));
  if (L.cap == 0) return 0;
  return live(L, length_).select(0, head).sum().item<int64_t>();
}

std::vector<int64_t> RaggedKVCache::positions(int64_t layer, int64_t head) const {
  const Layer& L = layers_.at(static_cast<size_t>(layer));
  if (L.cap == 0) return {};
  const at::Tensor p = L.pos.select(0, head).masked_select(live(L, length_).select(0, head)).cpu().contiguous();
  return std::vector<int64_t>(p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + p.numel());
}

int64_t RaggedKVCache::total_entries() const {
  int64_t n = 0;
  for (const Layer& L : layers_)
    if (L.cap > 0) n += live(L, length_).sum().item<int64_t>();
  return n;
}

}  // namespace agate
