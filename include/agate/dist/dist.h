// Data-parallel plumbing over torch's c10d: launch-environment detection, the store, and a
// small process-group facade (Gloo on CPUs; NCCL where Torch was built with CUDA).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "agate/util/choices.h"

namespace agate {

struct LaunchEnv {
  std::string launcher = "none";  // torchrun | slurm | mpi | agate (scripts/launch.sh) | none
  int rank = 0, world = 1, local_rank = 0, local_world = 1;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  bool agent_store = false;  // torchrun's agent already serves the TCPStore: every rank is a client
};

// Reads the environment: torchrun (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
// MASTER_PORT, TORCHELASTIC_USE_AGENT_STORE), Slurm (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
// SLURM_NTASKS_PER_NODE), Open MPI (OMPI_COMM_WORLD_*), else a single process. MASTER_ADDR and
// MASTER_PORT come from the environment for every launcher (Slurm: set them in the sbatch
// script). Inconsistent values are refused with a hint.
LaunchEnv detect_launch_env();

enum class DistBackend { Auto, Gloo, Nccl };  // auto: nccl on CUDA, gloo on CPU
inline constexpr Choices<DistBackend, 3> kDistBackends{{"auto", "gloo", "nccl"}};
enum class StoreKind { Tcp, File };  // rendezvous: a TCPStore at MASTER_ADDR:MASTER_PORT | a shared file
inline constexpr Choices<StoreKind, 2> kStoreKinds{{"tcp", "file"}};

struct DistOptions {
  DistBackend backend = DistBackend::Auto;
  c10::Device device = c10::kCPU;     // where the tensors to reduce live (the rank's device)
  std::chrono::seconds timeout{300};  // every collective and the rendezvous
  std::string file_store;             // a FileStore path instead of the TCPStore (tests, shared FS)
};

// The process group. With world 1 every collective is a no-op and nothing is created.
class ProcessGroup {
 public:
  static std::unique_ptr<ProcessGroup> create(const LaunchEnv& env, const DistOptions& options);
  virtual ~ProcessGroup() = default;

  virtual int rank() const = 0;
  virtual int world() const = 0;
  virtual std::string backend() const = 0;

  // In place, on every rank. A lost or hung peer fails within the timeout with an
  // agate::Error (Runtime) naming the ranks that stopped reporting.
  virtual void all_reduce_sum(at::Tensor& t) = 0;
  virtual void all_reduce_max(at::Tensor& t) = 0;
  virtual void broadcast(at::Tensor& t, int root) = 0;
  virtual void barrier() = 0;
  // Records this rank's progress (the step) in the store, for naming lost ranks.
  virtual void heartbeat(int64_t step) = 0;

  // Throws (Input) unless every rank passes the same value, naming `what`.
  void check_same(const std::string& what, uint32_t value);
};

}  // namespace agate
