#include <cstdlib>
#include <string>

#include "agate/dist/dist.h"
#include "agate/util/error.h"

namespace agate {

namespace {

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

int env_int(const char* name, int fallback) {
  const char* v = env(name);
  if (!v) return fallback;
  try {
    size_t used = 0;
    int x = std::stoi(v, &used);
    if (used == std::string(v).size()) return x;
  } catch (const std::exception&) {
  }
  throw_usage(std::string("environment variable ") + name + "='" + v + "' is not an integer");
}

}  // namespace

LaunchEnv detect_launch_env() {
  LaunchEnv e;
  if (!env("RANK") != !env("WORLD_SIZE")) {
    throw_usage(std::string(env("RANK") ? "RANK" : "WORLD_SIZE") + " is set but " + (env("RANK") ? "WORLD_SIZE" : "RANK") + " is not",
                "a torchrun-style launch sets both (and LOCAL_RANK, MASTER_ADDR, MASTER_PORT); unset it for one process");
  }
  if (env("RANK") && env("WORLD_SIZE")) {
    e.launcher = env("TORCHELASTIC_RUN_ID") ? "torchrun" : env("AGATE_LAUNCHER") ? env("AGATE_LAUNCHER") : "torchrun";
    e.rank = env_int("RANK", 0);
    e.world = env_int("WORLD_SIZE", 1);
    e.local_rank = env_int("LOCAL_RANK", e.rank);
    e.local_world = env_int("LOCAL_WORLD_SIZE", e.world);
    const char* agent = env("TORCHELASTIC_USE_AGENT_STORE");
    e.agent_store = agent && (std::string(agent) == "True" || std::string(agent) == "true" || std::string(agent) == "1");
  } else if (env("SLURM_PROCID") && env("SLURM_NTASKS")) {
    e.launcher = "slurm";
    e.rank = env_int("SLURM_PROCID", 0);
    e.world = env_int("SLURM_NTASKS", 1);
    e.local_rank = env_int("SLURM_LOCALID", 0);
    e.local_world = env_int("SLURM_NTASKS_PER_NODE", env_int("SLURM_TASKS_PER_NODE", 1));
  } else if (env("OMPI_COMM_WORLD_RANK") && env("OMPI_COMM_WORLD_SIZE")) {
    e.launcher = "mpi";
    e.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    e.world = env_int("OMPI_COMM_WORLD_SIZE", 1);
    e.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
    e.local_world = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1);
  }
  if (const char* a = env("MASTER_ADDR")) e.master_addr = a;
  e.master_port = env_int("MASTER_PORT", 29500);
  if (e.world < 1 || e.rank < 0 || e.rank >= e.world) {
    throw_usage("launch environment (" + e.launcher + ") gives rank " + std::to_string(e.rank) + " of world " +
                    std::to_string(e.world),
                "check RANK/WORLD_SIZE (or the Slurm/MPI variables)");
  }
  if (e.local_world < 1 || e.local_rank < 0 || e.local_rank >= e.local_world) {
    throw_usage("launch environment (" + e.launcher + ") gives local rank " + std::to_string(e.local_rank) + " of " +
                    std::to_string(e.local_world) + " on this node",
                "check LOCAL_RANK/LOCAL_WORLD_SIZE (or SLURM_LOCALID/SLURM_NTASKS_PER_NODE, OMPI_COMM_WORLD_LOCAL_*)");
  }
  if (e.master_port <= 0 || e.master_port > 65535) throw_usage("MASTER_PORT must be a port number");
  return e;
}

}  // namespace agate
