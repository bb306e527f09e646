#include "agate/data/tokenizer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>
#include <sstream>

#include "agate/util/checksum.h"
#include "agate/util/error.h"
#include "agate/util/threads.h"
#include "bpe_tokenizer.h"

namespace fs = std::filesystem;

namespace agate {

namespace {

// The SentencePiece shim's C interface (src/data/spm_shim/spm_shim.cpp), resolved once.
struct SpmApi {
  void* (*load)(const char*, char*, size_t);
  void (*free_)(void*);
  long (*encode)(void*, const char*, size_t, int*, size_t);
  char* (*decode)(void*, const int*, size_t);
  void (*free_string)(char*);
  int (*vocab_size)(void*);
  int (*bos_id)(void*);
  int (*eos_id)(void*);
  size_t (*id_to_piece)(void*, int, char*, size_t);
  int (*train)(const char*, char*, size_t);
};

std::string shim_path() {
  if (const char* env = std::getenv("AGATE_SPM_SHIM")) return env;
  // Next to the running binary, then where the build put it.
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    for (fs::path dir = exe.parent_path(); !dir.empty() && dir != dir.root_path(); dir = dir.parent_path()) {
      if (fs::exists(dir / "libagate_spm.so")) return (dir / "libagate_spm.so").string();
      if (dir == exe.parent_path().parent_path()) break;  // look at most one level up (build/tests -> build)
    }
  }
#ifdef AGATE_SPM_SHIM_PATH
  return AGATE_SPM_SHIM_PATH;
#else
  return "libagate_spm.so";
#endif
}

const SpmApi& spm() {
  static SpmApi api{};
  static std::once_flag once;
  std::call_once(once, [] {
    const std::string path = shim_path();
    // DEEPBIND: SentencePiece must bind to its own bundled protobuf, not the system one.
    void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (!h) {
      throw_runtime(std::string("cannot load the SentencePiece shim: ") + dlerror(),
                    "build the agate_spm target, or set AGATE_SPM_SHIM to libagate_spm.so");
    }
    auto sym = [&](const char* name) {
      void* s = dlsym(h, name);
      if (!s) throw_runtime(std::string("SentencePiece shim lacks ") + name, "rebuild agate");
      return s;
    };
    api.load = reinterpret_cast<decltype(api.load)>(sym("agate_spm_load"));
    api.free_ = reinterpret_cast<decltype(api.free_)>(sym("agate_spm_free"));
    api.encode = reinterpret_cast<decltype(api.encode)>(sym("agate_spm_encode"));
    api.decode = reinterpret_cast<decltype(api.decode)>(sym("agate_spm_decode"));
    api.free_string = reinterpret_cast<decltype(api.free_string)>(sym("agate_spm_free_string"));
    api.vocab_size = reinterpret_cast<decltype(api.vocab_size)>(sym("agate_spm_vocab_size"));
    api.bos_id = reinterpret_cast<decltype(api.bos_id)>(sym("agate_spm_bos_id"));
    api.eos_id = reinterpret_cast<decltype(api.eos_id)>(sym("agate_spm_eos_id"));
    api.id_to_piece = reinterpret_cast<decltype(api.id_to_piece)>(sym("agate_spm_id_to_piece"));
    api.train = reinterpret_cast<decltype(api.train)>(sym("agate_spm_train"));
  });
  return api;
}

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& path) {
    if (!fs::exists(path)) throw_input(path, "does not exist", "train one with 'agate tokenizer train'");
    char err[512] = {0};
    handle_ = spm().load(path.c_str(), err, sizeof(err));
    if (!handle_) throw_input(path, std::string("is not a SentencePiece model: ") + err);
    hash_ = crc32_file(path);
    vocab_ = spm().vocab_size(handle_);
    bos_ = spm().bos_id(handle_);
    eos_ = spm().eos_id(handle_);
  }
  ~SentencePieceTokenizer() override { spm().free_(handle_); }

  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids(text.size() / 2 + 16);
    long n = spm().encode(handle_, text.data(), text.size(), ids.data(), ids.size());
    if (n < 0) throw_runtime("SentencePiece failed to encode a text");
    if (static_cast<size_t>(n) > ids.size()) {
      ids.resize(static_cast<size_t>(n));
      n = spm().encode(handle_, text.data(), text.size(), ids.data(), ids.size());
    }
    ids.resize(static_cast<size_t>(n));
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids) const override {
    for (int32_t id : ids) {
      if (id < 0 || id >= vocab_) throw_input("decode", "token id " + std::to_string(id) + " is outside the vocabulary");
    }
    char* s = spm().decode(handle_, ids.data(), ids.size());
    if (!s) throw_runtime("SentencePiece failed to decode");
    std::string out(s);
    spm().free_string(s);
    return out;
  }

  std::string piece(int32_t id) const override {
    if (id < 0 || id >= vocab_) return "<out-of-vocab " + std::to_string(id) + ">";
    char buf[256];
    spm().id_to_piece(handle_, id, buf, sizeof(buf));
    return buf;
  }

  int64_t vocab_size() const override { return vocab_; }
  int32_t bos_id() const override { return bos_; }
  int32_t eos_id() const override { return eos_; }
  Specials specials() const override { return bos_ >= 0 ? Specials{{bos_}, {}} : Specials{}; }
  uint64_t hash() const override { return hash_; }

 private:
  void* handle_ = nullptr;
  uint64_t hash_ = 0;
  int64_t vocab_ = 0;
  int32_t bos_ = -1, eos_ = -1;
};

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::load(const std::string& path) {
  if (fs::is_directory(path)) {
    throw_input(path, "is a folder, not a tokenizer file", "pass its tokenizer.json or tokenizer.model (--tokenizer FILE)");
  }
  if (fs::path(path).extension() == ".json") return load_bpe_tokenizer(path);
  return std::make_unique<SentencePieceTokenizer>(path);
}

std::vector<int32_t> encode_prompt(const Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids = tok.specials().prefix;
  const std::vector<int32_t> body = tok.encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

std::string default_tokenizer_path(const std::string& model_dir) {
  // A missing model folder is the problem to report, not its missing tokenizer.
  if (!fs::is_directory(model_dir)) throw_input(model_dir, "is not a folder", "pass a Hugging Face model folder (config.json + safetensors)");
  const std::string json = (fs::path(model_dir) / "tokenizer.json").string();
  const std::string model = (fs::path(model_dir) / "tokenizer.model").string();
  if (fs::exists(json) && bpe_tokenizer_problem(json).empty()) return json;
  if (fs::exists(model) || !fs::exists(json)) return model;
  return json;
}

void check_tokenizer_fits(const Tokenizer& tok, const std::string& path, int64_t model_vocab) {
  if (tok.vocab_size() <= model_vocab) return;
  throw_input(path, "has " + std::to_string(tok.vocab_size()) + " token ids but the model has only " +
                        std::to_string(model_vocab) + " embeddings",
              "use the tokenizer that ships with the model (--tokenizer DIR/tokenizer.json)");
}

void train_tokenizer(const TokenizerTrainOptions& o) {
  if (o.inputs.empty()) throw_usage("tokenizer training needs at least one --input file");
  check_thread_count(o.threads, "--threads");
  for (const auto& in : o.inputs) {
    if (in.find_first_of(" \t,") != std::string::npos) {
      throw_usage("input path '" + in + "' contains a space or comma", "SentencePiece takes inputs as one flag: rename or link the file");
    }
    if (!fs::is_regular_file(in)) throw_input(in, "does not exist or is not a file", "pass text files to --input");
    if (fs::file_size(in) == 0) throw_input(in, "is empty");
  }
  if (o.vocab_size < 16) throw_usage("--vocab must be at least 16");
  if (o.byte_fallback && o.vocab_size < 320) {
    throw_usage("--vocab " + std::to_string(o.vocab_size) + " is too small for byte fallback",
                "byte fallback needs 256 byte pieces + 3 specials + the text's characters: use --vocab >= 320");
  }
  if (o.model_type != "bpe" && o.model_type != "unigram") throw_usage("--model-type must be bpe or unigram");
  std::string prefix = o.out;
  if (prefix.size() > 6 && prefix.compare(prefix.size() - 6, 6, ".model") == 0) prefix.resize(prefix.size() - 6);
  else throw_usage("--out must end in .model", "e.g. --out tok.model");
  const fs::path parent = fs::path(o.out).parent_path();
  if (!parent.empty() && !fs::is_directory(parent)) throw_usage("the folder of --out does not exist: " + parent.string());
  // Train into a temporary prefix, then rename: a failed run never leaves a half-written model.
  const std::string tmp = prefix + ".tmp" + std::to_string(::getpid());
  std::ostringstream args;
  args << "--input=";
  for (size_t i = 0; i < o.inputs.size(); ++i) args << (i ? "," : "") << o.inputs[i];
  args << " --model_prefix=" << tmp << " --vocab_size=" << o.vocab_size << " --model_type=" << o.model_type
       << " --byte_fallback=" << (o.byte_fallback ? "true" : "false")
       << " --character_coverage=" << o.character_coverage << " --unk_id=0 --bos_id=1 --eos_id=2 --pad_id=-1"
       << " --num_threads=" << o.threads << " --input_sentence_size=" << o.max_sentences
       << " --shuffle_input_sentence=true --max_sentence_length=16384 --minloglevel=1"
       // Exact round trips: no NFKC, no whitespace folding, no dummy prefix (pieces encoded
       // separately, as SFT templates are, concatenate to the encoding of the joined text).
       << " --normalization_rule_name=identity --remove_extra_whitespaces=false --add_dummy_prefix=false"
       << " --allow_whitespace_only_pieces=true --split_digits=true";
  char err[1024] = {0};
  if (spm().train(args.str().c_str(), err, sizeof(err)) != 0) {
    std::error_code ec;
    fs::remove(tmp + ".model", ec);
    fs::remove(tmp + ".vocab", ec);
    throw_input("tokenizer training", err, "check --vocab against the amount and variety of text");
  }
  fs::rename(tmp + ".model", prefix + ".model");
  fs::rename(tmp + ".vocab", prefix + ".vocab");
}

}  // namespace agate
