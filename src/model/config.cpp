#include "agate/model/config.h"

#include <cmath>
#include <tuple>
#include <utility>
#include <nlohmann/json.hpp>

#include "agate/util/error.h"
#include "agate/util/fs.h"

using json = nlohmann::json;

namespace agate {

namespace {

std::string type_name(const json& v) { return v.type_name(); }

// Typed accessors. `req` = required; the error names the key and what was found.
int64_t get_int(const json& j, const std::string& key, const std::string& src, bool req, int64_t def) {
  if (!j.contains(key) || j[key].is_null()) {
    if (req) throw_input(src, "missing required key \"" + key + "\"", "is this a Llama-family HF config.json?");
    return def;
  }
  const json& v = j[key];
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float() && v.get<double>() == static_cast<double>(static_cast<int64_t>(v.get<double>())))
    return static_cast<int64_t>(v.get<double>());
  throw_input(src, "key \"" + key + "\" must be an integer, found " + type_name(v) + " " + v.dump());
}

double get_num(const json& j, const std::string& key, const std::string& src, double def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  const json& v = j[key];
  if (!v.is_number()) throw_input(src, "key \"" + key + "\" must be a number, found " + type_name(v) + " " + v.dump());
  return v.get<double>();
}

bool get_bool(const json& j, const std::string& key, const std::string& src, bool def) {
  if (!j.contains(key) || j[key].is_null()) return def;
  const json& v = j[key];
  if (!v.is_boolean()) throw_input(src, "key \"" + key + "\" must be true or false, found " + v.dump());
  return v.get<bool>();
}

std::vector<int64_t> get_ids(const json& j, const std::string& key, const std::string& src) {
  std::vector<int64_t> out;
  if (!j.contains(key) || j[key].is_null()) return out;
  const json& v = j[key];
  if (v.is_number_integer()) return {v.get<int64_t>()};
  if (v.is_array()) {
    for (const auto& x : v) {
      if (!x.is_number_integer()) throw_input(src, "key \"" + key + "\" must hold integers, found " + x.dump());
      out.push_back(x.get<int64_t>());
    }
    return out;
  }
  throw_input(src, "key \"" + key + "\" must be an integer or a list of integers, found " + v.dump());
}

void parse_rope(const json& j, const std::string& src, ModelConfig& c) {
  // transformers v5 renamed rope_scaling to rope_parameters (which may also carry rope_theta).
  const char* key = j.contains("rope_parameters") && !j["rope_parameters"].is_null() ? "rope_parameters" : "rope_scaling";
  if (!j.contains(key) || j[key].is_null()) return;
  const json& r = j[key];
  if (!r.is_object()) throw_input(src, std::string("key \"") + key + "\" must be an object or null, found " + r.dump());
  const std::string where = std::string(key);
  if (r.contains("rope_theta")) c.rope_theta = get_num(r, "rope_theta", src, c.rope_theta);
  std::string type = "default";
  if (r.contains("rope_type") && r["rope_type"].is_string()) type = r["rope_type"].get<std::string>();
  else if (r.contains("type") && r["type"].is_string()) type = r["type"].get<std::string>();
  if (type != "default" && type != "linear" && type != "llama3") {
    throw_input(src, where + " type \"" + type + "\" is not supported", "agate supports default, linear and llama3 RoPE");
  }
  c.rope_scaling.type = type;
  if (type == "default") return;
  if (!r.contains("factor")) throw_input(src, where + " of type " + type + " needs \"factor\"");
  c.rope_scaling.factor = get_num(r, "factor", src, 1.0);
  if (c.rope_scaling.factor <= 0) throw_input(src, where + ".factor must be positive");
  if (type == "llama3") {
    for (const char* k : {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
      if (!r.contains(k)) throw_input(src, where + " of type llama3 needs \"" + k + "\"");
    }
    c.rope_scaling.low_freq_factor = get_num(r, "low_freq_factor", src, 1.0);
    c.rope_scaling.high_freq_factor = get_num(r, "high_freq_factor", src, 4.0);
    c.rope_scaling.original_max_position_embeddings = get_int(r, "original_max_position_embeddings", src, true, 8192);
    if (c.rope_scaling.high_freq_factor <= c.rope_scaling.low_freq_factor) {
      throw_input(src, where + ": high_freq_factor must exceed low_freq_factor");
    }
  }
}

}  // namespace

ModelConfig parse_model_config(const std::string& text, const std::string& src) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw_input(src, std::string("is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw_input(src, "is not a JSON object");

  ModelConfig c;
  if (!j.contains("model_type") || !j["model_type"].is_string()) {
    throw_input(src, "missing required key \"model_type\" (a string)", "agate reads llama, mistral and qwen2 configs");
  }
  c.model_type = j["model_type"].get<std::string>();
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2") {
    throw_input(src, "model_type \"" + c.model_type + "\" is not supported",
                "agate supports Llama-family decoders: llama, mistral, qwen2");
  }
  c.vocab_size = get_int(j, "vocab_size", src, true, 0);
  c.hidden_size = get_int(j, "hidden_size", src, true, 0);
  c.intermediate_size = get_int(j, "intermediate_size", src, true, 0);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", src, true, 0);
  c.num_attention_heads = get_int(j, "num_attention_heads", src, true, 0);
  c.num_key_value_heads = get_int(j, "num_key_value_heads", src, false, c.num_attention_heads);
  c.head_dim = get_int(j, "head_dim", src, false, 0);
  c.rms_norm_eps = get_num(j, "rms_norm_eps", src, 1e-6);
  c.rope_theta = get_num(j, "rope_theta", src, 10000.0);
  parse_rope(j, src, c);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", src, false);
  if (c.model_type == "qwen2") {
    c.qkv_bias = true;  // hard-coded in HF's Qwen2Attention
  } else {
    c.qkv_bias = c.o_bias = get_bool(j, "attention_bias", src, false);
  }
  c.max_position_embeddings = get_int(j, "max_position_embeddings", src, false, 2048);
  if (c.model_type == "mistral") c.sliding_window = get_int(j, "sliding_window", src, false, 0);
  if (c.model_type == "qwen2" && get_bool(j, "use_sliding_window", src, false)) {
    throw_input(src, "use_sliding_window=true is not supported for qwen2 (per-layer windows)",
                "released Qwen2 checkpoints set it to false; set it to false if the model was trained so");
  }
  c.initializer_range = get_num(j, "initializer_range", src, 0.02);
  c.bos_token_ids = get_ids(j, "bos_token_id", src);
  c.eos_token_ids = get_ids(j, "eos_token_id", src);
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"].get<std::string>();

  // Consistency.
  for (auto [k, v] : {std::pair<const char*, int64_t>{"vocab_size", c.vocab_size},
                      {"hidden_size", c.hidden_size},
                      {"intermediate_size", c.intermediate_size},
                      {"num_hidden_layers", c.num_hidden_layers},
                      {"num_attention_heads", c.num_attention_heads},
                      {"num_key_value_heads", c.num_key_value_heads}}) {
    if (v <= 0) throw_input(src, std::string("\"") + k + "\" must be positive, found " + std::to_string(v));
  }
  // Far above any released model (Llama 3.1 405B: hidden 16,384, 126 layers; Gemma 3: 262,144
  // tokens), low enough that no size or parameter count below overflows int64.
  for (auto [k, v, most] : {std::tuple<const char*, int64_t, int64_t>{"vocab_size", c.vocab_size, int64_t(1) << 24},
                            {"hidden_size", c.hidden_size, int64_t(1) << 17},
                            {"intermediate_size", c.intermediate_size, int64_t(1) << 20},
                            {"num_hidden_layers", c.num_hidden_layers, int64_t(1) << 12},
                            {"num_attention_heads", c.num_attention_heads, int64_t(1) << 12},
                            {"head_dim", c.head_dim, int64_t(1) << 12},
                            {"max_position_embeddings", c.max_position_embeddings, int64_t(1) << 27}}) {
    if (v > most) {
      throw_input(src, std::string("\"") + k + "\" is " + std::to_string(v) + ", above agate's limit of " + std::to_string(most),
                  "is this config.json damaged?");
    }
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    throw_input(src, "num_attention_heads (" + std::to_string(c.num_attention_heads) +
                         ") is not a multiple of num_key_value_heads (" + std::to_string(c.num_key_value_heads) + ")");
  }
  if (c.head_dim == 0) {
    if (c.hidden_size % c.num_attention_heads != 0) {
      throw_input(src, "hidden_size is not a multiple of num_attention_heads and no head_dim is given");
    }
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) throw_input(src, "head_dim must be positive and even (RoPE rotates pairs)");
  if (c.sliding_window < 0) throw_input(src, "sliding_window must be positive or null");
  // NaN fails every comparison below, so each check is written to refuse it too.
  if (!(c.rms_norm_eps > 0) || !std::isfinite(c.rms_norm_eps)) {
    throw_input(src, "rms_norm_eps must be a positive number, found " + std::to_string(c.rms_norm_eps),
                "HF configs use 1e-5 or 1e-6");
  }
  if (!(c.rope_theta > 0) || !std::isfinite(c.rope_theta)) {
    throw_input(src, "rope_theta must be a positive number, found " + std::to_string(c.rope_theta),
                "HF configs use 10000 or more");
  }
  if (c.max_position_embeddings <= 0) {
    throw_input(src, "max_position_embeddings must be positive, found " + std::to_string(c.max_position_embeddings),
                "the context length the model was trained for, e.g. 2048");
  }
  for (int64_t id : c.bos_token_ids)
    if (id < 0 || id >= c.vocab_size) throw_input(src, "bos_token_id " + std::to_string(id) + " is outside the vocabulary");
  for (int64_t id : c.eos_token_ids)
    if (id < 0 || id >= c.vocab_size) throw_input(src, "eos_token_id " + std::to_string(id) + " is outside the vocabulary");
  return c;
}

ModelConfig load_model_config(const std::string& path) { return parse_model_config(read_file(path), path); }

int64_t ModelConfig::parameter_count() const {
  const int64_t D = hidden_size, hd = head_dim, H = num_attention_heads, Hkv = num_key_value_heads;
  int64_t per_layer = 2 * D                       // two RMSNorms
                      + D * H * hd + 2 * D * Hkv * hd + H * hd * D  // q, k, v, o
                      + 3 * D * intermediate_size;  // gate, up, down
  if (qkv_bias) per_layer += H * hd + 2 * Hkv * hd;
  if (o_bias) per_layer += D;
  int64_t n = vocab_size * D + num_hidden_layers * per_layer + D;
  if (!tie_word_embeddings) n += vocab_size * D;
  return n;
}

std::string model_config_to_json(const ModelConfig& c) {
  json j;
  j["architectures"] = {c.model_type == "qwen2" ? "Qwen2ForCausalLM"
                        : c.model_type == "mistral" ? "MistralForCausalLM" : "LlamaForCausalLM"};
  j["model_type"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_key_value_heads;
  j["head_dim"] = c.head_dim;
  j["hidden_act"] = "silu";
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.rope_scaling.type == "default") {
    j["rope_scaling"] = nullptr;
  } else {
    json r = {{"rope_type", c.rope_scaling.type}, {"factor", c.rope_scaling.factor}};
    if (c.rope_scaling.type == "llama3") {
      r["low_freq_factor"] = c.rope_scaling.low_freq_factor;
      r["high_freq_factor"] = c.rope_scaling.high_freq_factor;
      r["original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings;
    }
    j["rope_scaling"] = r;
  }
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (c.model_type != "qwen2") j["attention_bias"] = c.qkv_bias;
  j["max_position_embeddings"] = c.max_position_embeddings;
  if (c.model_type == "mistral") j["sliding_window"] = c.sliding_window > 0 ? json(c.sliding_window) : json(nullptr);
  if (c.model_type == "qwen2") j["use_sliding_window"] = false;
  j["initializer_range"] = c.initializer_range;
  auto ids = [](const std::vector<int64_t>& v) -> json {
    if (v.empty()) return nullptr;
    if (v.size() == 1) return v[0];
    return v;
  };
  j["bos_token_id"] = ids(c.bos_token_ids);
  j["eos_token_id"] = ids(c.eos_token_ids);
  j["torch_dtype"] = c.torch_dtype;
  return j.dump(2) + "\n";
}

}  // namespace agate
