// Hugging Face `config.json` for Llama-family decoders (model_type llama, mistral, qwen2).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace agate {

struct RopeScaling {
  std::string type = "default";          // "default" (none), "linear" or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;          // llama3 only
  double high_freq_factor = 4.0;         // llama3 only
  int64_t original_max_position_embeddings = 8192;  // llama3 only
};

struct ModelConfig {
  std::string model_type = "llama";      // llama | mistral | qwen2
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;       // defaults to num_attention_heads
  int64_t head_dim = 0;                  // defaults to hidden_size / num_attention_heads
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;                 // llama attention_bias, or always for qwen2
  bool o_bias = false;                   // llama attention_bias only
  int64_t max_position_embeddings = 2048;
  int64_t sliding_window = 0;            // 0 = none; key j visible to query i iff i - j < window
  double initializer_range = 0.02;
  std::vector<int64_t> bos_token_ids;
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype = "float32";

  int64_t kv_groups() const { return num_attention_heads / num_key_value_heads; }
  // Number of parameters of the model this config describes (tied embeddings counted once).
  int64_t parameter_count() const;
};

// Parses config JSON text; `source` names the file in error messages. Unknown keys are ignored
// (HF configs carry many); missing required keys, wrong types, unsupported model types and
// rope scalings, and inconsistent sizes are refused with an agate::Error naming the key.
ModelConfig parse_model_config(const std::string& json_text, const std::string& source);
ModelConfig load_model_config(const std::string& path);   // reads and parses a file

// Serialises in HF form (keys as HF writes them), so the output loads in transformers too.
std::string model_config_to_json(const ModelConfig& config);

}  // namespace agate
