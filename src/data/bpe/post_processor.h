// The "post_processor" of a tokenizer.json (internal header): the special ids that Hugging Face
// tokenizers' encode(text, add_special_tokens=True) puts around one text, which is what
// transformers' tokenizer(text) returns. Read when the file is read; what is not a known
// post-processor is refused then.
#pragma once

#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace agate::bpe {

// null, ByteLevel (offsets only: adds nothing), TemplateProcessing (its "single" template),
// BertProcessing / RobertaProcessing (cls before, sep after), or a Sequence holding at most one
// of the processors that add tokens (beside any ByteLevel).
struct PostProcessor {
  PostProcessor() = default;
  PostProcessor(const nlohmann::json& j, const std::string& where);
  std::vector<int32_t> prefix, suffix;
};

}  // namespace agate::bpe
