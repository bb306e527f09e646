// The only translation unit that touches SentencePiece. It is built as its own shared library
// (libagate_spm.so) and loaded with dlopen(RTLD_LOCAL | RTLD_DEEPBIND): SentencePiece bundles
// and exports its own protobuf, which clashes with the system protobuf libtorch loads (a crash
// at start-up when both are linked into one binary). Plain C interface; see tokenizer.cpp.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

void set_error(char* err, size_t cap, const std::string& msg) {
  if (err && cap > 0) {
    std::strncpy(err, msg.c_str(), cap - 1);
    err[cap - 1] = '\0';
  }
}

sentencepiece::SentencePieceProcessor* proc(void* h) { return static_cast<sentencepiece::SentencePieceProcessor*>(h); }

}  // namespace

extern "C" {

void* agate_spm_load(const char* path, char* err, size_t cap) {
  auto* p = new sentencepiece::SentencePieceProcessor();
  auto status = p->Load(path);
  if (!status.ok()) {
    set_error(err, cap, status.ToString());
    delete p;
    return nullptr;
  }
  return p;
}

void agate_spm_free(void* h) { delete proc(h); }

// Encodes `len` bytes of text; writes up to `cap` ids to `out` and returns how many ids the text
// has (call again with a larger buffer when the result exceeds cap); -1 on error.
long agate_spm_encode(void* h, const char* text, size_t len, int* out, size_t cap) {
  std::vector<int> ids;
  if (!proc(h)->Encode(std::string(text, len), &ids).ok()) return -1;
  for (size_t i = 0; i < ids.size() && i < cap; ++i) out[i] = ids[i];
  return static_cast<long>(ids.size());
}

// Decodes ids; returns a malloc'ed NUL-terminated string (free with agate_spm_free_string).
char* agate_spm_decode(void* h, const int* ids, size_t n) {
  std::string text;
  if (!proc(h)->Decode(std::vector<int>(ids, ids + n), &text).ok()) return nullptr;
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  std::memcpy(out, text.data(), text.size() + 1);
  return out;
}

void agate_spm_free_string(char* s) { std::free(s); }

int agate_spm_vocab_size(void* h) { return proc(h)->GetPieceSize(); }
int agate_spm_bos_id(void* h) { return proc(h)->bos_id(); }
int agate_spm_eos_id(void* h) { return proc(h)->eos_id(); }
int agate_spm_pad_id(void* h) { return proc(h)->pad_id(); }
int agate_spm_unk_id(void* h) { return proc(h)->unk_id(); }

// Copies piece `id` into buf (NUL-terminated, truncated to cap); returns its full length.
size_t agate_spm_id_to_piece(void* h, int id, char* buf, size_t cap) {
  const std::string& p = proc(h)->IdToPiece(id);
  set_error(buf, cap, p);
  return p.size();
}

// Trains a model from a SentencePiece flag string ("--input=... --model_prefix=..."); 0 = ok.
int agate_spm_train(const char* args, char* err, size_t cap) {
  auto status = sentencepiece::SentencePieceTrainer::Train(args);
  if (!status.ok()) {
    set_error(err, cap, status.ToString());
    return 1;
  }
  return 0;
}

}  // extern "C"
