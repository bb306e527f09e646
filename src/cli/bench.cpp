#include <c10/core/InferenceMode.h>
#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <tuple>
#include <nlohmann/json.hpp>

#include "agate/data/dataset.h"
#include "agate/data/loader.h"
#include "agate/gate/gates.h"
#include "agate/gate/losses.h"
#include "agate/model/ragged_kv_cache.h"
#include "agate/io/safetensors.h"
#include "agate/model/attention.h"
#include "agate/train/plan.h"
#include "agate/model/llama.h"
#include "agate/train/adamw.h"
#include "agate/util/alloc_tracker.h"
#include "agate/util/error.h"
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <sys/resource.h>

#include "agate/dist/dist.h"
#include "agate/train/train_forward.h"
#include "agate/train/train_step.h"
#include "agate/util/device.h"
#include "agate/util/threads.h"
#include "agate/util/timer.h"
#include "args.h"
#include "commands.h"

namespace agate::cli {

namespace {

nlohmann::json machine_info(int threads, c10::Device device = c10::kCPU) {
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  return {{"threads", threads}, {"openblas_coretype", coretype ? coretype : "(unset)"}, {"device", device.str()}};
}

// Times f on `device`: the device's queue is drained after each run.
template <typename F>
std::vector<double> time_on(c10::Device device, F&& f, int iters, int warmup = 1) {
  return time_runs([&] { f(); synchronize(device); }, iters, warmup);
}

int bench_forward(const Args& args, int threads) {
  c10::InferenceMode inference;
  const std::string dtype = args.get("dtype");
  const c10::Device device = device_from(args);
  LlamaModel model = LlamaModel::load(args.get("model"), parse_compute_dtype(dtype), device);
  const long long seq = args.get_int("seq"), batch = args.get_int("batch"), iters = args.get_int("iters");
  if (seq < 1 || batch < 1 || iters < 1) throw_usage("--seq, --batch and --iters must be positive");
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  at::Tensor tokens = at::randint(0, model.config().vocab_size, {batch, seq}, gen, at::kLong).to(device);
  std::vector<double> times = time_on(device, [&] { model.forward(tokens); }, static_cast<int>(iters));
  const double med = median(times);
  nlohmann::json j = {{"impl", "agate"}, {"mode", "forward"}, {"dtype", dtype}, {"seq", seq}, {"batch", batch},
                      {"iters", iters}, {"tokens_per_s_median", batch * seq / med}, {"median_s", med},
                      {"times", times}};
  j.update(machine_info(threads, device));
  std::cout << j.dump() << "\n";
  return 0;
}

int bench_load(const Args& args, int threads) {
  const std::string dir = args.get("model");
  const auto dtype = parse_compute_dtype(args.get("dtype"));
  const int iters = static_cast<int>(args.get_int("iters"));
  WeightFolder folder = WeightFolder::open(dir);
  std::vector<std::string> files;
  uint64_t bytes = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().extension() == ".safetensors") {
      files.push_back(e.path().string());
      bytes += e.file_size();
    }
  }
  // Baseline: read every byte of the files into memory (page cache warm after the warm-up).
  std::vector<char> buf(bytes);
  auto read_all = [&] {
    size_t off = 0;
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      in.read(buf.data() + off, static_cast<std::streamsize>(buf.size() - off));
      off += static_cast<size_t>(in.gcount());
    }
  };
  const double read_s = median(time_runs(read_all, iters));
  const c10::Device device = device_from(args);
  const double load_s = median(time_on(device, [&] { LlamaModel::load(dir, dtype, device); }, iters));
  nlohmann::json j = {{"impl", "agate"}, {"mode", "load"}, {"dtype", args.get("dtype")}, {"bytes", bytes},
                      {"read_s", read_s}, {"load_s", load_s}, {"load_over_read", load_s / read_s},
                      {"read_GBps", bytes / read_s / 1e9}, {"load_GBps", bytes / load_s / 1e9}};
  j.update(machine_info(threads, device));
  std::cout << j.dump() << "\n";
  return 0;
}

int bench_loader(const Args& args, int threads) {
  Dataset data = Dataset::open(args.get("data"));
  LoaderOptions o;
  o.seq_len = args.get_int("seq");
  o.global_batch = args.get_int("batch");
  DataLoader loader(data, o, {});
  const long long batches = args.get_int("batches");
  const double t0 = now_seconds();
  for (long long i = 0; i < batches; ++i) loader.next();
  const double s = now_seconds() - t0;
  const double tokens = static_cast<double>(batches) * o.global_batch * o.seq_len;
  nlohmann::json j = {{"impl", "agate"}, {"mode", "loader"}, {"seq", o.seq_len}, {"batch", o.global_batch},
                      {"batches", batches}, {"seconds", s}, {"tokens_per_s", tokens / s}};
  j.update(machine_info(threads));
  std::cout << j.dump() << "\n";
  return 0;
}

// The machine's matmul peak in a dtype: the best median GFLOP/s of square GEMMs.
int bench_matmul(const Args& args, int threads) {
  c10::InferenceMode inference;
  const std::string dtype = args.get("dtype");
  const auto st = parse_compute_dtype(dtype);
  const int iters = static_cast<int>(args.get_int("iters"));
  nlohmann::json sizes = nlohmann::json::object();
  double best = 0;
  const c10::Device device = device_from(args);
  const std::vector<int64_t> ns = device.is_cuda() ? std::vector<int64_t>{1024, 2048, 4096, 8192}
                                                   : std::vector<int64_t>{256, 512, 1024, 2048};
  for (int64_t n : ns) {
    at::Tensor a = at::randn({n, n}).to(device, st), b = at::randn({n, n}).to(device, st), c = at::empty({n, n}, a.options());
    const int reps = static_cast<int>(std::max<int64_t>(1, (int64_t{1} << 30) / (n * n * n)));  // ~2 GFLOP per timing
    const double s = median(time_on(device, [&] { for (int r = 0; r < reps; ++r) at::mm_out(c, a, b); }, iters)) / reps;
    const double gflops = 2.0 * n * n * n / s / 1e9;
    sizes[std::to_string(n)] = gflops;
    best = std::max(best, gflops);
  }
  nlohmann::json j = {{"impl", "agate"}, {"mode", "matmul"}, {"dtype", dtype}, {"peak_gflops", best}, {"gflops_by_size", sizes}};
  j.update(machine_info(threads, device));
  std::cout << j.dump() << "\n";
  return 0;
}

// Gate-training step time against the same frozen model's forward + backward without gates
// (there the embeddings' output requires grad, so backward runs through every layer just as
// it must to reach the gates of the first layers).
int bench_train(const Args& args, int threads) {
  const std::string dtype = args.get("dtype");
  const c10::Device device = device_from(args);
  LlamaModel model = LlamaModel::load(args.get("model"), parse_compute_dtype(dtype), device);
  model.set_requires_grad(false);
  GateConfig g;
  g.type = kGateTypes.parse(args.get("gate"), "--gate");
  g.heads = args.get_int("gate-heads");
  g.head_dim = args.get_int("gate-head-dim");
  g.init_bias = 0.0;  // about half the tokens evicted: the masked path, as in real training
  auto gates = Gates::create(g, model.config(), 0, device);
  AdamW opt(gates->parameters(), AdamWOptions{});
  const std::string attn = args.get("attention") == "fused" ? "rows" : args.get("attention");  // fused: the old name
  set_attention_kernel(parse_attention_kernel(attn));
  const long long seq = args.get_int("seq"), batch = args.get_int("batch"), iters = args.get_int("iters");
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  const at::Tensor tokens = at::randint(0, model.config().vocab_size, {batch, seq + 1}, gen, at::kLong);  // host
  const at::Tensor mask = at::ones({batch, seq + 1});
  // The gated step is the trainer's own TrainStep (one micro-batch, sparsity l2_target 0.5).
  auto pg = ProcessGroup::create(LaunchEnv{}, DistOptions{});
  TrainForward forward(model, gates.get(), nullptr);
  TrainStepOptions so;
  so.micro_batch = batch;
  so.global_batch = batch;
  so.gates = true;
  TrainStep train_step([&](const ForwardCall& call) { return forward(call); }, gates->parameters(),
                       opt, *pg, so, device);
  // The reference: forward + backward of the frozen model without gates, the embeddings'
  // output made to require grad so backward runs through every layer as it must for gates.
  const at::Tensor inputs = tokens.slice(1, 0, seq).to(device), targets = tokens.slice(1, 1).to(device);
  const at::Tensor w = mask.slice(1, 1).to(device);
  ForwardOptions frozen;
  frozen.head = false;  // the same fused head + loss as the trainer's step
  auto frozen_step = [&] {
    lm_loss_from_hidden(model.run_embeds(model.embed(inputs).requires_grad_(true), frozen).hidden, model.lm_head(),
                        targets, w)
        .backward();
  };
  auto gated_step = [&] { train_step.run(tokens, mask, 1e-4, 1.0, 0.5); };
  // Interleave the two so machine noise hits both alike.
  std::vector<double> with, without;
  gated_step();
  frozen_step();
  if (args.has("profile")) {  // one more gated step, traced op by op (chrome://tracing format)
    torch::autograd::profiler::RecordProfile trace(args.get("profile"));
    gated_step();
  }
  for (long long i = 0; i < iters; ++i) {
    with.push_back(time_on(device, gated_step, 1, 0)[0]);
    without.push_back(time_on(device, frozen_step, 1, 0)[0]);
  }
  const double mw = median(with), mo = median(without);
  const double flops = train_flops_per_token(model.config(), g, seq);
  nlohmann::json j = {{"impl", "agate"}, {"mode", "train"}, {"dtype", dtype}, {"gate", kGateTypes.name(g.type)}, {"seq", seq},
                      {"batch", batch}, {"iters", iters}, {"gate_step_s", mw}, {"frozen_step_s", mo},
                      {"gate_tokens_per_s", batch * seq / mw}, {"overhead", mw / mo},
                      {"attention", attn}, {"model_flops_per_token", flops}, {"model_gflops_per_s", flops * batch * seq / mw / 1e9}};
  j.update(machine_info(threads, device));
  std::cout << j.dump() << "\n";
  return 0;
}

// Random keep flags at a given ratio, by absolute position (sink: position 0 always kept).
class RandomKeep : public KeyVisibility {
 public:
  RandomKeep(int64_t layers, int64_t T, int64_t Hkv, double keep, uint64_t seed, c10::Device device) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    table_ = (at::rand({layers, T, Hkv}, gen) < keep).to(at::kFloat);
    table_.select(1, 0).fill_(1.0);
    table_ = table_.to(device);
  }
  LayerKeep key_keep(int64_t layer, const at::Tensor& x, const at::Tensor& positions, bool, const KeyInputs&) override {
    return LayerKeep::hard(table_[layer].index_select(0, positions).unsqueeze(0).to(x.scalar_type()));
  }

 private:
  at::Tensor table_;
};

// --keeps: ratios in (0, 1].
std::vector<double> keep_ratios(const Args& args) {
  std::vector<double> keeps;
  for (const auto& k : args.get_list("keeps")) {
    char* end = nullptr;
    const double v = std::strtod(k.c_str(), &end);
    if (*end != '\0' || !(v > 0 && v <= 1)) throw_usage("--keeps must hold ratios in (0, 1], got '" + k + "'", "e.g. --keeps 1.0,0.5,0.25");
    keeps.push_back(v);
  }
  return keeps;
}

// Every size and count a benchmark reads, checked once before any work: positive (or >= 0
// where 0 means none) and far below what overflows a tensor's byte count.
void check_bench_sizes(const Args& args) {
  const std::tuple<const char*, long long, long long> sizes[] = {
      {"seq", 1, 1 << 20},     {"batch", 1, 1 << 16},       {"iters", 1, 1 << 20},  {"batches", 1, 1 << 30},
      {"new", 1, 1 << 20},     {"gate-heads", 1, 1 << 10},  {"gate-head-dim", 2, 1 << 12}, {"heads", 1, 1 << 12},
      {"kv-heads", 1, 1 << 12}, {"head-dim", 1, 1 << 12},   {"window", 0, 1 << 30}, {"recent", 0, 1 << 30}};
  for (const auto& [name, lo, hi] : sizes) args.get_int(name, lo, hi);
  args.get_double("keep", 0, 1);
  for (long long T : parse_int_list(args.get("contexts"), "--contexts")) {
    if (T < 1 || T > (1 << 20)) throw_usage("--contexts must hold lengths between 1 and 1048576, got " + std::to_string(T));
  }
  keep_ratios(args);
  if (args.has("profile")) {
    const std::filesystem::path dir = std::filesystem::absolute(args.get("profile")).parent_path();
    if (!std::filesystem::is_directory(dir)) throw_usage("--profile " + args.get("profile") + ": the folder " + dir.string() + " does not exist");
  }
}

// Decode tokens/s and KV bytes over the ragged cache at several keep ratios and context
// lengths; and the gates' prefill overhead (fresh attention gates vs no gates).
int bench_decode(const Args& args, int threads) {
  c10::InferenceMode guard;
  const std::string dtype = args.get("dtype");
  const c10::Device device = device_from(args);
  LlamaModel model = LlamaModel::load(args.get("model"), parse_compute_dtype(dtype), device);
  const ModelConfig& c = model.config();
  const long long n_new = args.get_int("new");
  const std::vector<double> keeps = keep_ratios(args);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(0);
  for (long long T : parse_int_list(args.get("contexts"), "--contexts")) {
    at::Tensor prompt = at::randint(0, c.vocab_size, {1, T}, gen, at::kLong).to(device);
    for (double keep : keeps) {
      RandomKeep flags(c.num_hidden_layers, T, c.num_key_value_heads, keep, 1, device);
      std::vector<double> rates;
      int64_t bytes = 0, full = 0;
      for (int rep = 0; rep < 3; ++rep) {
        RaggedKVCache cache(c.num_hidden_layers);
        ForwardOptions pre;
        pre.cache = &cache;
        pre.visibility = &flags;
        pre.last_only = true;
        model.forward(prompt, pre);
        bytes = cache.bytes();
        full = T * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2 * (dtype == "bfloat16" ? 2 : 4);
        ForwardOptions dec;
        dec.cache = &cache;
        at::Tensor tok = at::zeros({1, 1}, prompt.options());
        synchronize(device);
        const double t0 = now_seconds();
        for (long long i = 0; i < n_new; ++i) model.forward(tok, dec);
        synchronize(device);
        rates.push_back(n_new / (now_seconds() - t0));
      }
      nlohmann::json j = {{"impl", "agate"}, {"mode", "decode"}, {"dtype", dtype}, {"context", T}, {"keep", keep},
                          {"kv_bytes", bytes}, {"kv_bytes_full", full}, {"decode_tokens_per_s", median(rates)}};
      j.update(machine_info(threads, device));
      std::cout << j.dump() << "\n";
    }
    // Prefill with fresh attention gates (ragged cache) against prefill without gates.
    GateConfig g;
    g.heads = args.get_int("gate-heads");
    g.head_dim = args.get_int("gate-head-dim");
    auto gates = Gates::create(g, c, 0, device);
    auto prefill = [&](bool with_gates) {
      RaggedKVCache cache(c.num_hidden_layers);
      ForwardOptions o;
      o.cache = &cache;
      o.visibility = with_gates ? gates.get() : nullptr;
      o.last_only = true;
      model.forward(prompt, o);
    };
    std::vector<double> with, without;
    for (int rep = 0; rep < 3; ++rep) {
      with.push_back(time_on(device, [&] { prefill(true); }, 1, rep == 0 ? 1 : 0)[0]);
      without.push_back(time_on(device, [&] { prefill(false); }, 1, rep == 0 ? 1 : 0)[0]);
    }
    nlohmann::json j = {{"impl", "agate"}, {"mode", "prefill"}, {"dtype", dtype}, {"context", T},
                        {"prefill_s_gates", median(with)}, {"prefill_s_plain", median(without)},
                        {"gate_prefill_overhead", median(with) / median(without)}};
    j.update(machine_info(threads, device));
    std::cout << j.dump() << "\n";
  }
  return 0;
}

// The process's peak resident set so far (bytes).
int64_t rss_max_bytes() {
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<int64_t>(u.ru_maxrss) * 1024;
}

// One gated attention call (masked_attention with the selected kernel) on random inputs, the
// shape of one layer: q [B, H, T, hd], k/v [B, Hkv, T, hd], random 0/1 keep flags per (batch,
// KV head, key) with --keep of them kept, straight-through (flags + p - p.detach()) in train
// mode so the gradient reaches p. forward = no autograd; train = forward + backward to q, k, v
// and p. Inputs are drawn in a fixed order from one seeded generator, exactly as
// tools/bench/attention_peers.py draws them, so both sides see the same flags.
int bench_attention(const Args& args, int threads) {
  const AttentionKernel kernel = parse_attention_kernel(args.get("kernel"));
  const c10::ScalarType st = parse_compute_dtype(args.get("dtype"));
  const std::string dtype = st == at::kFloat ? "float32" : "bfloat16";
  const std::string mode = args.get("mode");
  if (mode != "forward" && mode != "train") throw_usage("unknown --mode '" + mode + "'", "use forward or train");
  const long long T = args.get_int("seq"), B = args.get_int("batch"), iters = args.get_int("iters");
  const long long H = args.get_int("heads"), Hkv = args.get_int("kv-heads"), hd = args.get_int("head-dim");
  const long long window = args.get_int("window"), recent = args.get_int("recent");
  const double keep = args.get_double("keep");
  if (T < 1 || B < 1 || iters < 1) throw_usage("--seq, --batch and --iters must be positive");
  if (H < 1 || Hkv < 1 || hd < 1) throw_usage("--heads, --kv-heads and --head-dim must be positive");
  if (H % Hkv != 0) {
    throw_usage("--heads " + std::to_string(H) + " is not a multiple of --kv-heads " + std::to_string(Hkv),
                "grouped-query attention needs H = Hkv x G, e.g. --heads 9 --kv-heads 3");
  }
  if (!(keep >= 0.0 && keep <= 1.0)) throw_usage("--keep must lie in [0, 1], got " + args.get("keep"));
  if (window < 0 || recent < 0) throw_usage("--window and --recent must be >= 0 (0 = none)");
  const c10::Device device = device_from(args);
  set_attention_kernel(kernel);
  const bool train = mode == "train";

  auto gen = at::make_generator<at::CPUGeneratorImpl>(args.get_int("seed"));
  const at::Tensor p = at::rand({B, T, Hkv}, gen);                // keep probabilities (float32)
  const at::Tensor flags = (p > 1.0 - keep).to(at::kFloat);      // 0/1, about --keep of them 1
  const at::Tensor q = at::randn({B, H, T, hd}, gen).to(device, st).requires_grad_(train);
  const at::Tensor k = at::randn({B, Hkv, T, hd}, gen).to(device, st).requires_grad_(train);
  const at::Tensor v = at::randn({B, Hkv, T, hd}, gen).to(device, st).requires_grad_(train);
  const at::Tensor dout = at::randn({B, H, T, hd}, gen).to(device, st);
  const at::Tensor pd = p.to(device).requires_grad_(train), fd = flags.to(device);
  const at::Tensor pos = at::arange(T, at::TensorOptions(at::kLong).device(device));
  const double kept = flags.mean().item<double>();

  auto step = [&] {
    if (train) {
      const at::Tensor key_keep = fd + pd - pd.detach();
      const at::Tensor out = masked_attention(q, k, v, pos, pos, key_keep, window, recent);
      torch::autograd::grad({out}, {q, k, v, pd}, {dout});
    } else {
      c10::InferenceMode inference;
      masked_attention(q, k, v, pos, pos, fd, window, recent);
    }
  };
  std::vector<double> times = time_on(device, step, static_cast<int>(iters));
  // One more step under the allocation tracker: the bytes it allocates above what was live before.
  // CPU: agate's counting allocator; CUDA: the caching allocator's statistics (as
  // torch.cuda.max_memory_allocated in the peers).
  nlohmann::json peak = nullptr;
  if (device.is_cpu()) {
    AllocTracker tracker;
    AllocTracker::reset_peak();
    const int64_t base = AllocTracker::current_bytes();
    step();
    peak = AllocTracker::peak_bytes() - base;
  } else if (const auto base = device_allocated_bytes(device)) {
    synchronize(device);
    reset_device_peak(device);
    step();
    synchronize(device);
    peak = *device_peak_bytes(device) - *base;
  }
  // The same problem on both sides: mean(out * dout) of a forward (tools/bench/attention_peers.py
  // reports it too; equal to float32 rounding when inputs, flags and semantics agree).
  double checksum = 0;
  {
    c10::InferenceMode inference;
    const at::Tensor out = masked_attention(q.detach(), k.detach(), v.detach(), pos, pos, fd, window, recent);
    checksum = (out.to(at::kDouble) * dout.to(at::kDouble)).mean().item<double>();
  }
  std::vector<double> ms;
  for (double t : times) ms.push_back(t * 1e3);
  nlohmann::json j = {{"impl", "agate"}, {"kernel", attention_kernel_name(kernel)}, {"mode", mode}, {"dtype", dtype},
                      {"T", T}, {"batch", B}, {"heads", H}, {"kv_heads", Hkv}, {"head_dim", hd}, {"keep", keep},
                      {"keep_actual", kept}, {"window", window}, {"recent", recent}, {"gated", true},
                      {"grad_to_keep", train}, {"iters", iters}, {"median_ms", median(ms)}, {"times_ms", ms},
                      {"peak_bytes", peak}, {"peak_method", device.is_cpu() ? "alloc_tracker" : peak.is_null() ? "none" : "cuda_allocator"},
                      {"rss_max_bytes", rss_max_bytes()}, {"out_checksum", checksum}, {"status", "ok"}};
  j.update(machine_info(threads, device));
  std::cout << j.dump() << "\n";
  return 0;
}

}  // namespace

int cmd_bench(const Argv& argv) {
  Args args("bench", "forward|load|train|decode --model DIR [options] | loader --data DIR [options] | matmul [--dtype D] | "
            "attention [--kernel K] [--mode forward|train] [options]",
            "Micro-benchmarks, one JSON line each (medians of --iters runs after one warm-up):\n"
            "  forward  tokens/s of a full-sequence forward (no grad) on random tokens\n"
            "  load     weight-loading time against simply reading the files' bytes\n"
            "  loader   tokens/s the streaming data loader delivers (prefetch thread on)\n"
            "  train    gate-training step (fwd + bwd) time and its overhead over the frozen model's\n"
            "  decode   decode tokens/s and KV bytes over the ragged cache at several keep ratios\n"
            "  matmul   this machine's GEMM peak GFLOP/s in --dtype (for model FLOPs utilisation)\n"
            "  attention  one gated attention call (masked_attention, --kernel) on random inputs with random\n"
            "           0/1 keep flags: median ms and the step's peak tensor bytes (CPU or CUDA) (tools/bench/attention.sh\n"
            "           runs it against the PyTorch peers)",
            {{"model", "DIR", "Hugging Face model folder", ""},
             {"data", "DIR", "token dataset folder (loader)", ""},
             {"batches", "N", "batches to draw (loader)", "2000"},
             {"gate", "TYPE", "gate type (train): attention or mlp", "attention"},
             {"contexts", "LIST", "context lengths (decode)", "256,512,1024,2048"},
             {"keeps", "LIST", "keep ratios (decode)", "1.0,0.5,0.25"},
             {"new", "N", "decoded tokens per measurement (decode)", "32"},
             {"gate-heads", "N", "attention gate heads (train)", "2"},
             {"attention", "KERNEL", "gated attention kernel (train): flash, rows or reference (fused = rows)", "flash"},
             {"kernel", "KERNEL", "attention kernel (attention): flash, rows or reference", "flash"},
             {"mode", "MODE", "attention: forward (no autograd) or train (forward + backward to q, k, v, keep)", "forward"},
             {"heads", "H", "query heads (attention)", "9"},
             {"kv-heads", "Hkv", "key/value heads (attention; H must be a multiple)", "3"},
             {"head-dim", "hd", "head width (attention)", "64"},
             {"keep", "FRACTION", "fraction of keys kept by the random 0/1 flags (attention)", "0.5"},
             {"window", "N", "sliding window, 0 = none (attention)", "0"},
             {"recent", "N", "recent window always visible, 0 = none (attention)", "0"},
             {"seed", "N", "random seed of the inputs and flags (attention)", "0"},
             {"gate-head-dim", "N", "attention gate head width (train)", "16"},
             {"dtype", "NAME", "compute dtype: float32 or bfloat16", "float32"},
             {"seq", "T", "sequence length (forward, train, attention)", "256"},
             {"batch", "B", "batch size (forward, train, attention)", "1"},
             {"iters", "K", "timed repetitions", "5"},
             {"threads", "N", "intra-op threads (0 = all cores)", "0"},
             {"profile", "FILE", "train: also trace one gated step op by op into FILE (chrome://tracing JSON)", ""},
             device_option()});
  if (!args.parse(argv)) return 0;
  args.expect_positionals(1, "the benchmark name (forward, load, loader, train, decode, matmul or attention)");
  const int threads = configure_threads(args.threads());
  check_bench_sizes(args);
  const std::string what = args.positionals()[0];
  if (what == "forward") return bench_forward(args, threads);
  if (what == "load") return bench_load(args, threads);
  if (what == "loader") return bench_loader(args, threads);
  if (what == "train") return bench_train(args, threads);
  if (what == "matmul") return bench_matmul(args, threads);
  if (what == "decode") return bench_decode(args, threads);
  if (what == "attention") return bench_attention(args, threads);
  throw_usage("unknown benchmark '" + what + "' (" + args.usage() + ")",
              "use forward, load, loader, train, decode, matmul or attention");
}

}  // namespace agate::cli
