#include "post_processor.h"

#include <nlohmann/json.hpp>

#include "agate/util/error.h"

namespace agate::bpe {

using nlohmann::json;

namespace {

const char* kFileHint = "the file must be a Hugging Face tokenizers tokenizer.json";

// A [token, id] pair (BertProcessing's and RobertaProcessing's cls and sep).
int32_t pair_id(const json& j, const char* key, const std::string& where, const std::string& type) {
  if (!j.contains(key) || !j[key].is_array() || j[key].size() != 2 || !j[key][1].is_number_integer() || j[key][1].get<int64_t>() < 0) {
    throw_input(where, type + " post_processor needs \"" + key + "\": [token, id]", kFileHint);
  }
  return j[key][1].get<int32_t>();
}

// The ids of one SpecialToken of a template: special_tokens[name].ids.
std::vector<int32_t> special_ids(const json& specials, const std::string& name, const std::string& where) {
  if (!specials.is_object() || !specials.contains(name) || !specials[name].is_object() || !specials[name].contains("ids") ||
      !specials[name]["ids"].is_array()) {
    throw_input(where, "TemplateProcessing uses special token '" + name + "' but its \"special_tokens\" do not list its ids",
                kFileHint);
  }
  std::vector<int32_t> ids;
  for (const json& id : specials[name]["ids"]) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0) {
      throw_input(where, "TemplateProcessing special token '" + name + "' has an id that is not a non-negative integer", kFileHint);
    }
    ids.push_back(id.get<int32_t>());
  }
  return ids;
}

// One processor's prefix and suffix (a Sequence's: its one processor that adds tokens).
void parse(const json& j, const std::string& where, std::vector<int32_t>& prefix, std::vector<int32_t>& suffix) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) throw_input(where, "post_processor has no \"type\"", kFileHint);
  const std::string t = j["type"].get<std::string>();
  std::vector<int32_t> pre, suf;
  if (t == "ByteLevel") return;  // offsets only
  if (t == "Sequence") {
    // tokenizers composes two adding processors in ways of their own (a TemplateProcessing hands
    // on its pieces apart, which a later Bert wraps one by one); real files hold one, beside
    // ByteLevel (Llama 3: [ByteLevel, TemplateProcessing]).
    if (!j.contains("processors") || !j["processors"].is_array()) throw_input(where, "Sequence post_processor has no \"processors\" list", kFileHint);
    int adding = 0;
    for (const json& p : j["processors"]) {
      const bool bytelevel = p.is_object() && p.contains("type") && p["type"] == "ByteLevel";
      if (!bytelevel && ++adding > 1) {
        throw_input(where, "a Sequence post_processor with more than one processor that adds tokens is not supported",
                    "keep one TemplateProcessing (beside ByteLevel) in the post_processor");
      }
      parse(p, where, prefix, suffix);
    }
    return;
  }
  if (t == "BertProcessing" || t == "RobertaProcessing") {
    pre = {pair_id(j, "cls", where, t)};
    suf = {pair_id(j, "sep", where, t)};
  } else if (t == "TemplateProcessing") {
    if (!j.contains("single") || !j["single"].is_array()) throw_input(where, "TemplateProcessing has no \"single\" template", kFileHint);
    const json specials = j.contains("special_tokens") ? j["special_tokens"] : json::object();
    bool seen_a = false;
    for (const json& piece : j["single"]) {
      if (piece.is_object() && piece.contains("Sequence")) {
        if (seen_a) throw_input(where, "TemplateProcessing's \"single\" template holds the sequence twice", kFileHint);
        seen_a = true;
      } else if (piece.is_object() && piece.contains("SpecialToken") && piece["SpecialToken"].is_object() &&
                 piece["SpecialToken"].contains("id") && piece["SpecialToken"]["id"].is_string()) {
        const std::vector<int32_t> ids = special_ids(specials, piece["SpecialToken"]["id"].get<std::string>(), where);
        std::vector<int32_t>& into = seen_a ? suf : pre;
        into.insert(into.end(), ids.begin(), ids.end());
      } else {
        throw_input(where, "TemplateProcessing's \"single\" template has a piece that is neither {\"Sequence\": ...} nor {\"SpecialToken\": {\"id\": ...}}",
                    kFileHint);
      }
    }
    if (!seen_a) throw_input(where, "TemplateProcessing's \"single\" template has no $A sequence", kFileHint);
  } else {
    throw_input(where,
                "post_processor type '" + t + "' is not supported (supported: ByteLevel, TemplateProcessing, BertProcessing, RobertaProcessing, Sequence)",
                kFileHint);
  }
  prefix = std::move(pre);
  suffix = std::move(suf);
}

}  // namespace

PostProcessor::PostProcessor(const json& j, const std::string& where) {
  if (!j.is_null()) parse(j, where, prefix, suffix);
}

}  // namespace agate::bpe
