#include "agate/train/held_out.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>

#include "agate/data/loader.h"
#include "agate/dist/dist.h"
#include "agate/gate/losses.h"

namespace agate {

HeldOut measure_held_out(const LlamaModel& model, const ForwardOptions& options, const Dataset& data,
                         const HeldOutOptions& o, ProcessGroup* pg) {
  c10::NoGradGuard no_grad;
  LoaderOptions lo;
  lo.seq_len = o.seq_len;
  lo.global_batch = o.batch;
  lo.sft_mode = o.sft_mode;
  lo.prefetch = 0;
  DataLoader loader(data, lo, {12345, 0, 0});
  const int64_t n = std::min<int64_t>(o.batches, loader.batches_per_epoch());
  const int rank = pg ? pg->rank() : 0, world = pg ? pg->world() : 1;
  double loss_sum = 0, count_sum = 0;
  at::Tensor keep_sum;  // [L, Hkv] float64 on the CPU
  for (int64_t b = 0; b < n; ++b) {
    Batch batch = loader.next();
    if (b % world != rank) continue;  // ranks split the batches
    const at::Tensor tokens = batch.tokens.to(model.device()), mask = batch.mask.to(model.device());
    ForwardOptions opts = options;
    opts.token_weight = batch.real.slice(1, 0, o.seq_len).to(model.device());  // SFT padding is not counted
    const ModelOutput out = model.run(tokens.slice(1, 0, o.seq_len), opts);
    double count = 0;
    const double l = lm_loss(out.logits, tokens.slice(1, 1), mask.slice(1, 1), &count).item<double>();
    loss_sum += l * count;
    count_sum += count;
    const at::Tensor by_head = out.flag_means(opts.token_weight);
    if (by_head.defined()) {
      const at::Tensor k = by_head.to(at::kCPU, at::kDouble);
      keep_sum = keep_sum.defined() ? keep_sum + k : k;
    }
  }
  if (pg && world > 1) {
    at::Tensor sums = at::tensor({loss_sum, count_sum}, at::kDouble);
    pg->all_reduce_sum(sums);
    loss_sum = sums[0].item<double>(), count_sum = sums[1].item<double>();
    if (options.visibility) {
      if (!keep_sum.defined()) keep_sum = at::zeros({model.config().num_hidden_layers, model.config().num_key_value_heads}, at::kDouble);
      pg->all_reduce_sum(keep_sum);
    }
  }
  HeldOut h;
  h.batches = n;
  h.loss = loss_sum / std::max(count_sum, 1.0);
  if (keep_sum.defined() && n > 0) {
    h.keep_by_head = keep_sum / static_cast<double>(n);
    h.keep = h.keep_by_head.mean().item<double>();
  }
  return h;
}

}  // namespace agate
