// Launch-environment detection for torchrun, Slurm, Open MPI and single processes.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <string>

#include "../test_util.h"
#include "agate/dist/dist.h"

using namespace agate;

namespace {

// Sets variables for one test and restores the environment afterwards.
class ScopedEnv {
 public:
  explicit ScopedEnv(const std::map<std::string, std::string>& vars) {
    for (const char* k : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                          "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RUN_ID", "AGATE_LAUNCHER", "SLURM_PROCID",
                          "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "OMPI_COMM_WORLD_RANK",
                          "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"}) {
      if (const char* v = std::getenv(k)) saved_[k] = v;
      ::unsetenv(k);
    }
    for (const auto& [k, v] : vars) ::setenv(k.c_str(), v.c_str(), 1);
  }
  ~ScopedEnv() {
    for (const char* k : {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                          "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS",
                          "SLURM_LOCALID", "SLURM_NTASKS_PER_NODE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
                          "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE", "AGATE_LAUNCHER"})
      ::unsetenv(k);
    for (const auto& [k, v] : saved_) ::setenv(k.c_str(), v.c_str(), 1);
  }

 private:
  std::map<std::string, std::string> saved_;
};

}  // namespace

TEST(LaunchEnv, SingleProcessByDefault) {
  ScopedEnv e({});
  LaunchEnv env = detect_launch_env();
  EXPECT_EQ(env.launcher, "none");
  EXPECT_EQ(env.world, 1);
  EXPECT_EQ(env.rank, 0);
}

TEST(LaunchEnv, Torchrun) {
  ScopedEnv e({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
               {"MASTER_ADDR", "node0"}, {"MASTER_PORT", "29400"}, {"TORCHELASTIC_RUN_ID", "x"},
               {"TORCHELASTIC_USE_AGENT_STORE", "True"}});
  LaunchEnv env = detect_launch_env();
  EXPECT_EQ(env.launcher, "torchrun");
  EXPECT_EQ(env.rank, 3);
  EXPECT_EQ(env.world, 8);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.local_world, 2);
  EXPECT_EQ(env.master_addr, "node0");
  EXPECT_EQ(env.master_port, 29400);
  EXPECT_TRUE(env.agent_store) << "with the agent store every rank, rank 0 included, is a client";
}

TEST(LaunchEnv, SlurmAndMpi) {
  {
    ScopedEnv e({{"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "16"}, {"SLURM_LOCALID", "1"}, {"SLURM_NTASKS_PER_NODE", "8"}});
    LaunchEnv env = detect_launch_env();
    EXPECT_EQ(env.launcher, "slurm");
    EXPECT_EQ(env.rank, 5);
    EXPECT_EQ(env.world, 16);
    EXPECT_EQ(env.local_world, 8);
  }
  {
    ScopedEnv e({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"},
                 {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}});
    LaunchEnv env = detect_launch_env();
    EXPECT_EQ(env.launcher, "mpi");
    EXPECT_EQ(env.rank, 1);
    EXPECT_EQ(env.world, 2);
  }
}

TEST(LaunchEnv, InconsistentValuesAreRefused) {
  ScopedEnv e({{"RANK", "4"}, {"WORLD_SIZE", "4"}});
  EXPECT_NE(test::error_of([] { detect_launch_env(); }).find("rank 4 of world 4"), std::string::npos);
  ScopedEnv f({{"RANK", "x"}, {"WORLD_SIZE", "2"}});
  EXPECT_NE(test::error_of([] { detect_launch_env(); }).find("RANK='x' is not an integer"), std::string::npos);
}

// A local rank outside its node's count, or half of RANK/WORLD_SIZE, used to be ignored silently.
TEST(LaunchEnv, InconsistentLocalRanksAndHalfLaunchesAreRefused) {
  {
    ScopedEnv e({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "5"}, {"LOCAL_WORLD_SIZE", "2"}});
    EXPECT_NE(test::error_of([] { detect_launch_env(); }).find("local rank 5 of 2 on this node"), std::string::npos);
  }
  {
    ScopedEnv e(std::map<std::string, std::string>{{"WORLD_SIZE", "2"}});
    EXPECT_NE(test::error_of([] { detect_launch_env(); }).find("WORLD_SIZE is set but RANK is not"), std::string::npos);
  }
}
