// The only translation unit that includes c10d (its headers are slow to compile).
#include <ATen/ATen.h>
#include <c10/util/Logging.h>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "agate/util/logging.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <thread>
#include <vector>

#include "agate/dist/dist.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"

namespace fs = std::filesystem;

namespace agate {

namespace {

class SingleProcess : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int world() const override { return 1; }
  std::string backend() const override { return "none"; }
  void all_reduce_sum(at::Tensor&) override {}
  void all_reduce_max(at::Tensor&) override {}
  void broadcast(at::Tensor&, int) override {}
  void barrier() override {}
  void heartbeat(int64_t) override {}
};

class C10dGroup : public ProcessGroup {
 public:
  C10dGroup(const LaunchEnv& env, const DistOptions& o) : env_(env), timeout_(o.timeout), device_(o.device) {
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(o.timeout);
    // Decided before joining: a rank that cannot take part says so at once, not after a timeout.
    backend_ = kDistBackends.name(o.backend == DistBackend::Auto ? (o.device.is_cuda() ? DistBackend::Nccl : DistBackend::Gloo) : o.backend);
    if (backend_ == "nccl" && !o.device.is_cuda()) {
      throw_usage("dist.backend nccl needs CUDA tensors, but run.device is " + o.device.str(),
                  "use dist.backend: gloo (or auto) on CPU, or run.device: cuda");
    }
    if (!o.file_store.empty()) {
      // torch's FileStore retries a file it cannot open for its default 300 s, whatever the
      // timeout: a folder that is not there or not writable is refused here.
      const fs::path dir = fs::absolute(o.file_store).parent_path();
      if (!fs::is_directory(dir) || !can_create_in(dir.string())) {
        throw_usage("dist.store_path " + o.file_store + ": its folder " + dir.string() + " does not exist or is not writable",
                    "use a file in a shared folder every rank can write, e.g. under the run folder");
      }
    }
    // torch logs each failed connection attempt of the join to stderr, with a C++ stack trace;
    // the join's failure is reported below in one line. Fatal messages only, until the group stands.
    struct QuietTorchLog {
      int saved = FLAGS_caffe2_log_level;
      QuietTorchLog() { FLAGS_caffe2_log_level = std::max(saved, 3); }
      ~QuietTorchLog() { FLAGS_caffe2_log_level = saved; }
    } quiet;
    try {
      if (!o.file_store.empty()) {
        store_ = c10::make_intrusive<c10d::FileStore>(o.file_store, env.world);
        store_->setTimeout(ms);
      } else {
        c10d::TCPStoreOptions so;
        so.port = static_cast<uint16_t>(env.master_port);
        so.isServer = env.rank == 0 && !env.agent_store;
        so.numWorkers = env.agent_store ? c10::nullopt : c10::optional<size_t>(env.world);
        so.waitWorkers = !env.agent_store;
        so.timeout = ms;
        store_ = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
      }
      store_ = c10::make_intrusive<c10d::PrefixStore>("agate", store_);
      if (backend_ == "nccl") {
#ifdef USE_C10D_NCCL
        // Blocking waits turn a collective timeout into an exception that run() reports with the
        // lost ranks, instead of the watchdog aborting the process (a user's setting wins).
        setenv("TORCH_NCCL_BLOCKING_WAIT", "1", /*overwrite=*/0);
        setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "0", /*overwrite=*/0);
        auto opts = c10d::ProcessGroupNCCL::Options::create();
        opts->timeout = ms;
        pg_ = c10::make_intrusive<c10d::ProcessGroupNCCL>(store_, env.rank, env.world, opts);
#else
        throw_usage("dist.backend nccl: this agate was built without NCCL (Torch without CUDA)",
                    "use dist.backend: gloo, or build with a CUDA-enabled LibTorch and -DAGATE_USE_CUDA=ON");
#endif
      } else {
        auto opts = c10d::ProcessGroupGloo::Options::create(ms);
        if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME")) {
          opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
        } else if (env.master_addr.rfind("127.", 0) == 0 || env.master_addr == "localhost") {
          opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
        } else {
          opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
        }
        opts->threads = 2;
        pg_ = c10::make_intrusive<c10d::ProcessGroupGloo>(store_, env.rank, env.world, opts);
      }
    } catch (const c10::Error& e) {
      const bool file = !o.file_store.empty();
      throw_runtime("rank " + std::to_string(env.rank) + ": cannot join the process group (" + env.launcher + ", " +
                        (file ? "file store " + o.file_store : env.master_addr + ":" + std::to_string(env.master_port)) +
                        "): " + e.what_without_backtrace(),
                    "are all " + std::to_string(env.world) + " ranks started, with the same " +
                        (file ? std::string("dist.store_path?") : std::string("MASTER_ADDR/MASTER_PORT?")));
    }
  }

  int rank() const override { return env_.rank; }
  int world() const override { return env_.world; }
  std::string backend() const override { return backend_; }

  void all_reduce_sum(at::Tensor& t) override { reduce(t, c10d::ReduceOp::SUM, "all-reduce"); }
  void all_reduce_max(at::Tensor& t) override { reduce(t, c10d::ReduceOp::MAX, "all-reduce"); }

  void broadcast(at::Tensor& t, int root) override {
    c10d::BroadcastOptions o;
    o.rootRank = root;
    collective(t, "broadcast", [&](std::vector<at::Tensor>& ts) { pg_->broadcast(ts, o)->wait(); });
  }

  void barrier() override {
    run("barrier", [&] { pg_->barrier()->wait(); });
  }

  void heartbeat(int64_t step) override {
    step_ = step;
    try {
      const std::string v = std::to_string(step);
      store_->set("hb/" + std::to_string(env_.rank), std::vector<uint8_t>(v.begin(), v.end()));
    } catch (const std::exception&) {  // reported by the next collective
    }
  }

 private:
  void reduce(at::Tensor& t, c10d::ReduceOp op, const char* what) {
    c10d::AllreduceOptions o;
    o.reduceOp = op;
    collective(t, what, [&](std::vector<at::Tensor>& ts) { pg_->allreduce(ts, o)->wait(); });
  }

  // Runs one collective on t in place. NCCL works on device memory only: host scalars (step
  // agreement, counters) take a round trip through the rank's device.
  template <typename F>
  void collective(at::Tensor& t, const char* what, F&& f) {
    const bool stage = backend_ == "nccl" && !t.is_cuda();
    std::vector<at::Tensor> ts{stage ? t.to(device_) : t};
    run(what, [&] { f(ts); });
    if (stage) t.copy_(ts[0]);
  }

  template <typename F>
  void run(const char* what, F&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      throw_runtime("rank " + std::to_string(env_.rank) + ": " + what + " failed at step " + std::to_string(step_) +
                        ": " + lost_ranks(),
                    std::string("a rank died or hung (details: ") + first_line(e.what()) +
                        "); re-run the same command to resume from the last complete checkpoint");
    }
  }

  static std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

  // Which ranks are gone: every survivor marks itself in the store when a collective fails;
  // after a short grace period, the ranks that did not are named.
  std::string lost_ranks() {
    try {
      const std::string v = std::to_string(step_);
      store_->set("down/" + std::to_string(env_.rank), std::vector<uint8_t>(v.begin(), v.end()));
      std::this_thread::sleep_for(std::chrono::seconds(2));
      std::string lost;
      for (int r = 0; r < env_.world; ++r) {
        if (r == env_.rank || store_->check({"down/" + std::to_string(r)})) continue;
        lost += (lost.empty() ? "" : ", ") + std::to_string(r);
      }
      return lost.empty() ? "a peer failed" : "lost rank(s) " + lost;
    } catch (const std::exception&) {
      return "lost contact with the store on rank 0 (" + env_.master_addr + ":" + std::to_string(env_.master_port) +
             "): rank 0 died or the network failed";
    }
  }

  LaunchEnv env_;
  std::chrono::seconds timeout_;
  c10::Device device_;
  std::string backend_;
  int64_t step_ = 0;
  c10::intrusive_ptr<c10d::Store> store_;
  c10::intrusive_ptr<c10d::Backend> pg_;  // Gloo or NCCL: both are c10d::Backend in torch 2.x
};

}  // namespace

std::unique_ptr<ProcessGroup> ProcessGroup::create(const LaunchEnv& env, const DistOptions& o) {
  if (env.world == 1) return std::make_unique<SingleProcess>();
  const std::string store = o.file_store.empty() ? env.master_addr + ":" + std::to_string(env.master_port) : "file " + o.file_store;
  log::info("joining the process group: rank {} of {} ({}, store {})", env.rank, env.world, env.launcher, store);
  return std::make_unique<C10dGroup>(env, o);
}

void ProcessGroup::check_same(const std::string& what, uint32_t value) {
  if (world() == 1) return;
  at::Tensor hi = at::full({1}, static_cast<int64_t>(value), at::kLong), lo = at::full({1}, -static_cast<int64_t>(value), at::kLong);
  all_reduce_max(hi);
  all_reduce_max(lo);
  if (hi.item<int64_t>() != -lo.item<int64_t>()) {
    throw_input("rank " + std::to_string(rank()), "ranks disagree on " + what,
                "every rank must load the same base weights and the same resolved recipe");
  }
}

}  // namespace agate
