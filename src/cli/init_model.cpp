#include "agate/util/logging.h"

#include <filesystem>
#include <iostream>

#include "agate/model/llama.h"
#include "agate/util/error.h"
#include "args.h"
#include "commands.h"

namespace agate::cli {

int cmd_init_model(const Argv& argv) {
  Args args("init-model", "--config config.json --out DIR [--seed N] [--dtype float32|bfloat16]",
            "Writes a randomly initialised model (HF's init: normal(0, initializer_range), norms 1,\n"
            "biases 0) as DIR/config.json + DIR/model.safetensors, loadable by agate and transformers.",
            {{"config", "FILE", "a Llama/Mistral/Qwen2 config.json", ""},
             {"out", "DIR", "output folder (must not already hold a model unless --force)", ""},
             {"seed", "N", "random seed", "0"},
             {"dtype", "NAME", "stored dtype: float32 or bfloat16", "float32"},
             {"max-shard-mb", "MB", "split weights into shards of at most MB (0 = one file)", "0"},
             {"force", "", "overwrite a model already in --out", ""}});
  if (!args.parse(argv)) return 0;
  args.expect_positionals(0);
  const std::string out = args.get("out");
  namespace fs = std::filesystem;
  if (!args.flag("force") && (fs::exists(fs::path(out) / "config.json") || fs::exists(fs::path(out) / "model.safetensors") ||
                              fs::exists(fs::path(out) / "model.safetensors.index.json"))) {
    throw_usage("'" + out + "' already holds a model", "pass --force to overwrite it, or choose another --out");
  }
  const long long seed = args.get_int("seed");
  const long long shard_mb = args.get_int("max-shard-mb");
  if (seed < 0) throw_usage("--seed must be non-negative");
  if (shard_mb < 0) throw_usage("--max-shard-mb must be non-negative");
  ModelConfig config = load_model_config(args.get("config"));
  LlamaModel model = LlamaModel::init_random(config, static_cast<uint64_t>(seed), parse_compute_dtype(args.get("dtype")));
  model.save(out, static_cast<uint64_t>(shard_mb) << 20);
  log::info("wrote {} ({:.2f} M parameters, {}) to {}", config.model_type, config.parameter_count() / 1e6,
               args.get("dtype"), out);
  return 0;
}

}  // namespace agate::cli
