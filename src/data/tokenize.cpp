#include "agate/data/tokenize.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include "agate/util/logging.h"
#include <thread>

#include <unistd.h>

#include "agate/data/tokenizer.h"
#include "bpe/unicode.h"
#include "agate/util/checksum.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"
#include "agate/util/threads.h"
#include "agate/util/timer.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace agate {

namespace {

// One SFT turn or one CPT document.
struct Message {
  std::string role;  // system | user | assistant (cpt: empty)
  std::string content;
};

struct RawDoc {
  std::vector<Message> messages;  // cpt: one message with the text
  uint32_t hash = 0;              // of the content, decides the split
};

struct EncodedDoc {
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> mask;
  std::string skip_reason, truncation;
  bool val = false;
  bool invalid_utf8 = false;  // some text was not UTF-8: the tokenizer read each bad byte as U+FFFD
};

std::string render(const std::string& pattern, const std::string& content) {
  std::string out = pattern;
  const auto at = out.find("{content}");
  if (at != std::string::npos) out.replace(at, 9, content);
  return out;
}

bool is_jsonl(const std::string& path, const std::string& format) {
  if (format == "jsonl") return true;
  if (format == "text") return false;
  const std::string ext = fs::path(path).extension().string();
  return ext == ".jsonl" || ext == ".json";
}

std::string get_string(const json& j, const std::string& key, const std::string& where) {
  if (!j.contains(key)) throw_input(where, "missing field \"" + key + "\"");
  if (!j[key].is_string()) throw_input(where, "field \"" + key + "\" must be a string");
  return j[key].get<std::string>();
}

// Parses one JSONL line into a document.
RawDoc parse_json_doc(const std::string& line, const std::string& where, const TokenizeOptions& o) {
  json j;
  try {
    j = json::parse(line);
  } catch (const json::exception& e) {
    throw_input(where, std::string("malformed JSON: ") + e.what(), "each line must be one JSON object");
  }
  if (!j.is_object()) throw_input(where, "line is not a JSON object");
  RawDoc d;
  if (o.kind == "cpt") {
    d.messages.push_back({"", get_string(j, o.text_field, where)});
  } else if (j.contains("messages")) {
    if (!j["messages"].is_array()) throw_input(where, "\"messages\" must be a list");
    for (const auto& m : j["messages"]) {
      if (!m.is_object()) throw_input(where, "each message must be an object with role and content");
      Message msg{get_string(m, "role", where), get_string(m, "content", where)};
      if (msg.role != "system" && msg.role != "user" && msg.role != "assistant") {
        throw_input(where, "unknown role \"" + msg.role + "\"", "roles are system, user and assistant");
      }
      d.messages.push_back(msg);
    }
  } else {
    d.messages.push_back({"user", get_string(j, "prompt", where)});
    d.messages.push_back({"assistant", get_string(j, "response", where)});
  }
  return d;
}

// Reads documents from one input file, calling `emit` for each (streaming).
template <typename Emit>
void read_documents(const std::string& path, const TokenizeOptions& o, uint64_t& bytes, Emit&& emit) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_input(path, fs::exists(path) ? "cannot be read" : "does not exist", "check --input");
  std::string line;
  uint64_t lineno = 0;
  if (is_jsonl(path, o.format)) {
    while (std::getline(in, line)) {
      ++lineno;
      bytes += line.size() + 1;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      emit(parse_json_doc(line, path + ":" + std::to_string(lineno), o));
    }
    return;
  }
  if (o.kind == "sft") throw_usage(path + ": sft input must be JSONL (prompt/response or messages)");
  // Plain text: documents are separated by blank lines.
  std::string doc;
  auto flush = [&] {
    if (!doc.empty()) emit(RawDoc{{{"", doc}}, 0});
    doc.clear();
  };
  while (std::getline(in, line)) {
    bytes += line.size() + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) {
      flush();
    } else {
      if (!doc.empty()) doc += '\n';
      doc += line;
    }
  }
  flush();
}

std::vector<uint32_t> to_u32(const std::vector<int32_t>& ids) { return std::vector<uint32_t>(ids.begin(), ids.end()); }

EncodedDoc encode(const Tokenizer& tok, const RawDoc& d, const TokenizeOptions& o) {
  EncodedDoc e;
  uint32_t h = 0;
  for (const auto& m : d.messages) {
    h = crc32(m.content.data(), m.content.size(), h);
    e.invalid_utf8 |= !bpe::utf8_valid(m.content);
  }
  e.val = (h % 1000000u) < static_cast<uint32_t>(o.val_fraction * 1000000.0);
  auto append = [&](const std::string& text, uint8_t target) {
    if (text.empty()) return;
    auto ids = to_u32(tok.encode(text));
    e.tokens.insert(e.tokens.end(), ids.begin(), ids.end());
    e.mask.insert(e.mask.end(), ids.size(), target);
  };
  if (o.add_bos && tok.bos_id() >= 0) {
    e.tokens.push_back(static_cast<uint32_t>(tok.bos_id()));
    e.mask.push_back(0);
  }
  const uint32_t eos = static_cast<uint32_t>(tok.eos_id());
  if (o.kind == "cpt") {
    append(d.messages[0].content, 1);
    if (tok.eos_id() >= 0) e.tokens.push_back(eos);
    e.mask.clear();
    if (d.messages[0].content.find_first_not_of(" \t\n") == std::string::npos) e.skip_reason = "empty text";
    return e;
  }
  // SFT: render turn by turn so mask boundaries fall exactly on token boundaries.
  size_t last_assistant = std::string::npos;
  bool any_assistant = false;
  for (const auto& m : d.messages) {
    if (m.role == "system") append(render(o.sft_template.system, m.content), 0);
    else if (m.role == "user") append(render(o.sft_template.user, m.content), 0);
    else {
      last_assistant = e.tokens.size();
      append(o.sft_template.assistant_prefix, 0);
      append(m.content, 1);
      append(o.sft_template.assistant_suffix, 1);
      if (o.sft_template.end_with_eos && tok.eos_id() >= 0) {
        e.tokens.push_back(eos);
        e.mask.push_back(1);
      }
      any_assistant = true;
    }
  }
  if (!any_assistant) {
    e.skip_reason = "no assistant turn";
    return e;
  }
  const size_t max_len = static_cast<size_t>(o.max_len);
  if (o.max_len > 0 && e.tokens.size() > max_len) {
    size_t from, to;
    if (e.tokens.size() - last_assistant <= max_len) {
      // Keep the end: drop the oldest context on the left.
      from = e.tokens.size() - max_len;
      to = e.tokens.size();
      e.truncation = "context cut on the left";
    } else {
      // The last reply alone is too long: keep its start.
      from = last_assistant;
      to = last_assistant + max_len;
      e.truncation = "response cut on the right";
    }
    e.tokens = std::vector<uint32_t>(e.tokens.begin() + from, e.tokens.begin() + to);
    e.mask = std::vector<uint8_t>(e.mask.begin() + from, e.mask.begin() + to);
  }
  bool any_target = false;
  for (uint8_t v : e.mask) any_target |= v != 0;
  if (!any_target) e.skip_reason = "no response tokens left after truncation";
  return e;
}

}  // namespace

SftTemplate SftTemplate::named(const std::string& name) {
  SftTemplate t;
  if (name.empty() || name == "default") return t;
  if (name == "chatml") {
    t.system = "<|im_start|>system\n{content}<|im_end|>\n";
    t.user = "<|im_start|>user\n{content}<|im_end|>\n";
    t.assistant_prefix = "<|im_start|>assistant\n";
    t.assistant_suffix = "<|im_end|>";
    return t;
  }
  if (!fs::exists(name)) throw_usage("unknown SFT template '" + name + "'", "use default, chatml or a JSON file");
  json j;
  try {
    j = json::parse(read_file(name));
  } catch (const json::exception& e) {
    throw_input(name, std::string("is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) {
    throw_input(name, "an SFT template must be a JSON object", "e.g. {\"user\": \"User: {content}\\n\", \"assistant_prefix\": \"Assistant: \"}");
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "eos") {
      if (!it.value().is_boolean()) throw_input(name, "template key \"eos\" must be true or false");
      t.end_with_eos = it.value().get<bool>();
      continue;
    }
    if (!it.value().is_string()) throw_input(name, "template key \"" + it.key() + "\" must be a string");
    const std::string v = it.value().get<std::string>();
    if (it.key() == "system") t.system = v;
    else if (it.key() == "user") t.user = v;
    else if (it.key() == "assistant_prefix") t.assistant_prefix = v;
    else if (it.key() == "assistant_suffix") t.assistant_suffix = v;
    else throw_input(name, "unknown template key \"" + it.key() + "\"", "keys: system, user, assistant_prefix, assistant_suffix, eos");
  }
  return t;
}

namespace {
TokenizeSummary tokenize_into(const Tokenizer& tok, const TokenizeOptions& o, const std::string& out);
}  // namespace

TokenizeSummary tokenize_corpus(const Tokenizer& tok, const TokenizeOptions& o) {
  if (o.inputs.empty()) throw_usage("tokenize needs at least one --input");
  if (o.kind != "cpt" && o.kind != "sft") throw_usage("--kind must be cpt or sft");
  if (o.format != "auto" && o.format != "text" && o.format != "jsonl") {
    throw_usage("--format must be auto, text or jsonl, got '" + o.format + "'", "auto reads .jsonl/.json files as JSONL");
  }
  if (!(o.val_fraction >= 0 && o.val_fraction < 1)) throw_usage("--val-fraction must be in [0, 1)");  // NaN fails too
  if (o.shard_tokens < 1) throw_usage("--shard-tokens must be positive");
  for (const auto& in : o.inputs) {
    if (!fs::is_regular_file(in)) throw_input(in, "does not exist or is not a file", "check --input");
  }
  if (tok.vocab_size() > UINT32_MAX) throw_usage("vocabulary too large");
  check_thread_count(o.threads, "--threads");
  // Written to a staging folder inside --out and swapped in only when every input has been read
  // and validated: a bad input never costs the dataset already there (nor leaves half of one).
  const bool out_existed = fs::exists(o.out);
  const fs::path stage = fs::path(o.out) / (".tokenize.tmp." + std::to_string(::getpid()));
  auto drop_stage = [&] {
    std::error_code ec;
    fs::remove_all(stage, ec);
    if (!out_existed) fs::remove(o.out, ec);  // only when empty: it was made here
  };
  try {
    make_dirs(stage.string());
    TokenizeSummary sum = tokenize_into(tok, o, stage.string());
    for (const char* split : {"train", "val"}) {
      const fs::path dst = fs::path(o.out) / split;
      if (fs::exists(dst)) fs::rename(dst, stage / (std::string("old_") + split));
      fs::rename(stage / split, dst);
    }
    drop_stage();
    return sum;
  } catch (const fs::filesystem_error& e) {
    drop_stage();
    throw_runtime(std::string("cannot write the dataset into ") + o.out + ": " + e.what(), "is the disk full or the folder read-only?");
  } catch (...) {
    drop_stage();
    throw;
  }
}

namespace {

TokenizeSummary tokenize_into(const Tokenizer& tok, const TokenizeOptions& o, const std::string& out) {
  const TokenSpace space{static_cast<uint32_t>(tok.vocab_size()), tok.eos_id(), tok.bos_id(), tok.hash()};
  DatasetWriter train((fs::path(out) / "train").string(), o.kind, "train", space, o.shard_tokens);
  DatasetWriter val((fs::path(out) / "val").string(), o.kind, "val", space, o.shard_tokens);

  TokenizeSummary sum;
  const double t0 = now_seconds();
  double last_report = t0;
  const int threads = std::max(1, o.threads);
  std::vector<RawDoc> chunk;
  auto process = [&] {
    std::vector<EncodedDoc> out(chunk.size());
    std::vector<std::thread> pool;
    std::vector<std::exception_ptr> errors(static_cast<size_t>(threads));
    for (int w = 0; w < threads; ++w) {
      pool.emplace_back([&, w] {
        try {
          for (size_t i = static_cast<size_t>(w); i < chunk.size(); i += static_cast<size_t>(threads))
            out[i] = encode(tok, chunk[i], o);
        } catch (...) {
          errors[static_cast<size_t>(w)] = std::current_exception();
        }
      });
    }
    for (auto& t : pool) t.join();
    for (auto& e : errors)
      if (e) std::rethrow_exception(e);
    for (auto& e : out) {
      if (!e.skip_reason.empty()) {
        sum.skipped[e.skip_reason] += 1;
        continue;
      }
      if (!e.truncation.empty()) sum.truncated[e.truncation] += 1;
      if (e.invalid_utf8) sum.invalid_utf8 += 1;
      SplitSummary& s = e.val ? sum.val : sum.train;
      s.documents += 1;
      s.tokens += e.tokens.size();
      (e.val ? val : train).add(e.tokens, e.mask);
    }
    chunk.clear();
    if (now_seconds() - last_report > 5) {
      last_report = now_seconds();
      log::info("tokenize: {:.1f} MB read, {} documents, {:.1f} MB/s", sum.input_bytes / 1e6,
                   sum.train.documents + sum.val.documents, sum.input_bytes / 1e6 / (last_report - t0));
    }
  };
  for (const auto& in : o.inputs) {
    read_documents(in, o, sum.input_bytes, [&](RawDoc&& d) {
      chunk.push_back(std::move(d));
      if (chunk.size() >= 2048) process();
    });
  }
  process();
  const DatasetManifest mt = train.finish(), mv = val.finish();
  sum.train.shards = mt.shards.size();
  sum.val.shards = mv.shards.size();
  sum.train.loss_tokens = mt.num_loss_tokens;
  sum.val.loss_tokens = mv.num_loss_tokens;
  sum.seconds = now_seconds() - t0;
  return sum;
}

}  // namespace

SftPair encode_sft_pair(const Tokenizer& tokenizer, const std::string& prompt, const std::string& response,
                        const SftTemplate& sft_template, bool add_bos) {
  TokenizeOptions o;
  o.kind = "sft";
  o.sft_template = sft_template;
  o.add_bos = add_bos;
  RawDoc d;
  d.messages = {{"user", prompt}, {"assistant", response}};
  const EncodedDoc e = encode(tokenizer, d, o);
  SftPair p;
  for (size_t i = 0; i < e.tokens.size(); ++i) (e.mask[i] ? p.target : p.context).push_back(e.tokens[i]);
  return p;
}

}  // namespace agate
