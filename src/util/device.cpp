#include "agate/util/device.h"

#include <torch/cuda.h>
#include <torch/version.h>
#include <ATen/Context.h>

#include <exception>
#include <utility>

#ifdef AGATE_USE_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "agate/util/error.h"

namespace agate {

bool built_with_cuda() {
#ifdef AGATE_USE_CUDA
  return true;
#else
  return false;
#endif
}

std::optional<c10::Device> parse_device(const std::string& spec, int local_rank, const std::string& what) {
  if (spec == "auto") return std::nullopt;
  if (spec == "cpu") return c10::Device(c10::kCPU);
  if (spec == "cuda") return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(local_rank));
  if (spec.rfind("cuda:", 0) == 0) {
    try {
      size_t used = 0;
      const int index = std::stoi(spec.substr(5), &used);
      if (used == spec.size() - 5 && index >= 0) return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(index));
    } catch (const std::exception&) {
    }
  }
  throw_usage(what + " '" + spec + "' is not a device", "use auto, cpu, cuda or cuda:N");
}

c10::Device resolve_device(const std::string& spec, int local_rank, const std::string& what) {
  const bool cuda = torch::cuda::is_available();
  const std::optional<c10::Device> wanted = parse_device(spec, local_rank, what);
  if (!wanted) return cuda ? resolve_device("cuda", local_rank, what) : c10::Device(c10::kCPU);
  if (wanted->is_cpu()) return *wanted;
  if (!cuda) {
    throw_usage(what + " " + spec + ": no CUDA device is available on this machine" +
                    (built_with_cuda() ? "" : " (and this agate was built without CUDA kernels)"),
                "use " + what + " cpu (or auto), or run on a machine with an NVIDIA GPU and a CUDA build of torch");
  }
  const int index = wanted->index();
  const auto n = static_cast<int>(torch::cuda::device_count());
  if (index >= n) {
    throw_usage(what + " " + spec + ": only " + std::to_string(n) + " CUDA device(s) are visible" +
                    (spec == "cuda" ? " (cuda means cuda:LOCAL_RANK = cuda:" + std::to_string(index) + ")" : ""),
                "check CUDA_VISIBLE_DEVICES and the number of ranks per node");
  }
  // float32 gate and LoRA matmuls may use TF32 tensor cores (as torch's default for cuDNN).
  at::globalContext().setAllowTF32CuBLAS(true);
  return *wanted;
}

void synchronize(c10::Device device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

namespace {
#ifdef AGATE_USE_CUDA
// The allocated-bytes statistic over all pools: {current, peak}.
std::pair<int64_t, int64_t> allocated(c10::Device device) {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
  const auto& s = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)];
  return {s.current, s.peak};
}
#endif
}  // namespace

std::optional<int64_t> device_allocated_bytes(c10::Device device) {
#ifdef AGATE_USE_CUDA
  if (device.is_cuda()) return allocated(device).first;
#endif
  return std::nullopt;
}

std::optional<int64_t> device_peak_bytes(c10::Device device) {
#ifdef AGATE_USE_CUDA
  if (device.is_cuda()) return allocated(device).second;
#endif
  return std::nullopt;
}

void reset_device_peak(c10::Device device) {
#ifdef AGATE_USE_CUDA
  if (device.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
#endif
}

std::string build_info() {
  std::string s = "agate 0.1.0 (torch " TORCH_VERSION ", ";
#ifdef AGATE_USE_CUDA
  s += std::string("CUDA kernels compiled for sm_") + AGATE_CUDA_ARCHS_STR;
#else
  s += "CPU build, no CUDA kernels";
#endif
  s += ", " + std::to_string(torch::cuda::is_available() ? torch::cuda::device_count() : 0) + " CUDA device(s) visible)";
  return s;
}

}  // namespace agate
