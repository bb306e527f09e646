// Devices: what `run.device` / `--device` mean, and what this build can run on.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <optional>
#include <string>

namespace agate {

// Parses a device spec without asking what this machine has: "cpu" -> cpu, "cuda" ->
// cuda:local_rank, "cuda:N" -> cuda:N, "auto" -> nullopt (it depends on the machine). Refuses
// anything else with one line and a hint (`what` names the key or flag).
std::optional<c10::Device> parse_device(const std::string& spec, int local_rank = 0, const std::string& what = "--device");

// Resolves a device spec: "auto" (cuda:local_rank when CUDA is available, else cpu), "cpu",
// "cuda" (= cuda:local_rank) or "cuda:N"; choosing CUDA allows TF32 for float32 matmuls. Refuses, with one line and a hint, CUDA on a machine
// or a build without it, an index past the visible devices, and anything else.
// `what` names the key or flag for the message (e.g. "--device" or "run.device").
c10::Device resolve_device(const std::string& spec, int local_rank = 0, const std::string& what = "--device");

// Waits for the device's queued work (CUDA); nothing on the CPU. For timing only.
void synchronize(c10::Device device);

// The CUDA caching allocator's bytes on `device`: in use now, and the most in use since the last
// reset_device_peak (torch.cuda.memory_allocated / max_memory_allocated). nullopt on the CPU and
// in a build without CUDA (use AllocTracker there). For benchmarks.
std::optional<int64_t> device_allocated_bytes(c10::Device device);
std::optional<int64_t> device_peak_bytes(c10::Device device);
void reset_device_peak(c10::Device device);

// True when this binary was built with agate's CUDA kernels (AGATE_USE_CUDA).
bool built_with_cuda();

// One line: agate and torch versions, whether CUDA kernels are compiled (and for which
// architectures), and how many CUDA devices are visible now.
std::string build_info();

}  // namespace agate
