#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "agate/model/inspect.h"
#include "agate/util/error.h"
#include "args.h"
#include "commands.h"

namespace agate::cli {

int cmd_inspect(const Argv& argv) {
  Args args("inspect", "DIR [--json]", "Prints a model folder's config, parameter count and bytes by dtype\n"
                                       "(reads headers only; no weights are loaded).",
            {{"json", "", "print JSON instead of text", ""}});
  if (!args.parse(argv)) return 0;
  args.expect_positionals(1, "the model folder DIR");
  ModelSummary s = summarize_model_folder(args.positionals()[0]);
  const ModelConfig& c = s.config;
  if (args.flag("json")) {
    nlohmann::json j = {{"model_type", c.model_type},       {"vocab_size", c.vocab_size},
                        {"hidden_size", c.hidden_size},     {"intermediate_size", c.intermediate_size},
                        {"num_hidden_layers", c.num_hidden_layers}, {"num_attention_heads", c.num_attention_heads},
                        {"num_key_value_heads", c.num_key_value_heads}, {"head_dim", c.head_dim},
                        {"rope_theta", c.rope_theta},       {"rope_scaling", c.rope_scaling.type},
                        {"tie_word_embeddings", c.tie_word_embeddings}, {"qkv_bias", c.qkv_bias},
                        {"o_bias", c.o_bias},               {"sliding_window", c.sliding_window},
                        {"num_tensors", s.num_tensors},     {"num_parameters", s.num_parameters},
                        {"bytes_by_dtype", s.bytes_by_dtype}, {"params_by_dtype", s.params_by_dtype}};
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::printf("model_type          %s\n", c.model_type.c_str());
  std::printf("layers              %lld\n", (long long)c.num_hidden_layers);
  std::printf("hidden / ffn        %lld / %lld\n", (long long)c.hidden_size, (long long)c.intermediate_size);
  std::printf("heads / kv heads    %lld / %lld (head_dim %lld)\n", (long long)c.num_attention_heads,
              (long long)c.num_key_value_heads, (long long)c.head_dim);
  std::printf("vocab               %lld (tied embeddings: %s)\n", (long long)c.vocab_size,
              c.tie_word_embeddings ? "yes" : "no");
  std::printf("rope                theta %g, scaling %s", c.rope_theta, c.rope_scaling.type.c_str());
  if (c.rope_scaling.type != "default") std::printf(" x%g", c.rope_scaling.factor);
  std::printf("\nbiases              qkv %s, o %s\n", c.qkv_bias ? "yes" : "no", c.o_bias ? "yes" : "no");
  if (c.sliding_window > 0) std::printf("sliding window      %lld\n", (long long)c.sliding_window);
  std::printf("tensors             %lld\n", (long long)s.num_tensors);
  std::printf("parameters          %lld (%.2f M)\n", (long long)s.num_parameters, s.num_parameters / 1e6);
  for (const auto& [dtype, bytes] : s.bytes_by_dtype) {
    std::printf("  %-6s            %lld params, %.2f MB\n", dtype.c_str(), (long long)s.params_by_dtype.at(dtype),
                bytes / 1e6);
  }
  return 0;
}

}  // namespace agate::cli
