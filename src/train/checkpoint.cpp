#include "agate/train/checkpoint.h"

#include "agate/io/safetensors.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>

#include "agate/util/error.h"
#include "agate/util/fs.h"

namespace fs = std::filesystem;

namespace agate {

namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step_%08lld", static_cast<long long>(step));
  return buf;
}

NamedTensors read_all(const std::string& path) {
  SafetensorsFile f = SafetensorsFile::open(path);
  NamedTensors out;
  for (const auto& e : f.entries()) out.push_back({e.name, f.float_tensor(e.name).clone()});
  return out;
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, int64_t step, const CheckpointData& data, int64_t keep_last) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  make_dirs(root.string());
  const fs::path tmp = root / (".tmp_" + step_name(step));
  const fs::path final_dir = root / step_name(step);
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    make_dirs(tmp.string());
    save_safetensors((tmp / "trainable.safetensors").string(), data.trainable);
    save_safetensors((tmp / "optimizer.safetensors").string(), data.optimizer);
    write_file_atomic((tmp / "trainer_state.json").string(), data.state_json);
    fs::remove_all(final_dir, ec);  // an incomplete folder of the same step from a crash
    fs::rename(tmp, final_dir);
    write_file_atomic((final_dir / "DONE").string(), std::string("ok\n"));
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(tmp, ec);
    throw_runtime(std::string("cannot write checkpoint ") + final_dir.string() + ": " + e.what(),
                  "is the disk full or the run folder read-only? the previous checkpoint is intact");
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  // Prune only complete checkpoints older than the newest keep_last, never the one just written.
  std::vector<std::string> done = list_checkpoints(run_dir);
  const size_t keep = static_cast<size_t>(std::max<int64_t>(1, keep_last));
  for (size_t i = 0; i + keep < done.size(); ++i) {
    if (done[i] != final_dir.string()) fs::remove_all(done[i], ec);
  }
  return final_dir.string();
}

std::vector<std::string> list_checkpoints(const std::string& run_dir) {
  std::vector<std::string> out;
  const fs::path root = fs::path(run_dir) / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("step_", 0) == 0 && fs::exists(e.path() / "DONE")) out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());  // zero-padded step numbers sort by step
  return out;
}

std::optional<std::string> latest_checkpoint(const std::string& run_dir) {
  auto all = list_checkpoints(run_dir);
  if (all.empty()) return std::nullopt;
  return all.back();
}

CheckpointData load_checkpoint(const std::string& dir) {
  if (!fs::exists(fs::path(dir) / "DONE")) {
    throw_input(dir, "is not a complete checkpoint (no DONE marker)", "its write was interrupted; use an earlier one");
  }
  CheckpointData d;
  d.trainable = read_all((fs::path(dir) / "trainable.safetensors").string());
  d.optimizer = read_all((fs::path(dir) / "optimizer.safetensors").string());
  d.state_json = read_file((fs::path(dir) / "trainer_state.json").string());
  return d;
}

}  // namespace agate
