#include "agate/data/shard.h"

#include <cstring>
#include <string>

#include "agate/util/checksum.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"

namespace agate {

namespace {

struct Layout {
  uint64_t tokens_at, mask_at, docs_at, end;
};

Layout layout(uint64_t n, uint64_t d, uint32_t flags) {
  Layout l{};
  l.tokens_at = sizeof(ShardHeader);
  uint64_t at = l.tokens_at + 4 * n;
  l.mask_at = at;
  if (flags & kShardHasMask) at += n;
  if (flags & kShardHasDocs) {
    at = (at + 7) / 8 * 8;
    l.docs_at = at;
    at += 8 * (d + 1);
  }
  l.end = at;
  return l;
}

}  // namespace

uint32_t write_shard(const std::string& path, const TokenSpace& space, const ShardContents& c) {
  const uint64_t n = c.tokens.size();
  if (!c.mask.empty() && c.mask.size() != n) throw_runtime("shard mask length differs from token count");
  const uint64_t d = c.doc_offsets.empty() ? 0 : c.doc_offsets.size() - 1;
  ShardHeader h{};
  std::memcpy(h.magic, kShardMagic, 8);
  h.version = kShardVersion;
  h.flags = (c.mask.empty() ? 0 : kShardHasMask) | (c.doc_offsets.empty() ? 0 : kShardHasDocs);
  h.num_tokens = n;
  h.num_docs = d;
  h.vocab_size = space.vocab_size;
  h.eos_id = space.eos_id;
  h.bos_id = space.bos_id;
  h.tokenizer_hash = space.tokenizer_hash;
  const Layout l = layout(n, d, h.flags);
  std::string bytes(l.end, '\0');
  std::memcpy(bytes.data() + l.tokens_at, c.tokens.data(), 4 * n);
  if (h.flags & kShardHasMask) std::memcpy(bytes.data() + l.mask_at, c.mask.data(), n);
  if (h.flags & kShardHasDocs) std::memcpy(bytes.data() + l.docs_at, c.doc_offsets.data(), 8 * (d + 1));
  h.payload_crc32 = crc32(bytes.data() + sizeof(ShardHeader), bytes.size() - sizeof(ShardHeader));
  std::memcpy(bytes.data(), &h, sizeof(h));
  write_file_atomic(path, bytes);
  return h.payload_crc32;
}

Shard Shard::open(const std::string& path) {
  Shard s;
  s.path_ = path;
  s.file_ = MappedFile::open(path);
  const uint64_t size = s.file_->size();
  const std::string hint = "re-create the dataset with 'agate tokenize'";
  if (size < sizeof(ShardHeader)) {
    throw_input(path, "truncated shard (" + std::to_string(size) + " bytes, the header alone is 256)", hint);
  }
  std::memcpy(&s.header_, s.file_->data(), sizeof(ShardHeader));
  const ShardHeader& h = s.header_;
  if (std::memcmp(h.magic, kShardMagic, 8) != 0) {
    throw_input(path, "bad magic: not an agate token shard", "shards start with the 8 bytes AGATETOK");
  }
  if (h.version != kShardVersion) {
    throw_input(path, "unsupported shard version " + std::to_string(h.version) + " (this agate reads version 1)",
                "re-tokenize with this agate version");
  }
  if (h.flags & ~(kShardHasMask | kShardHasDocs)) throw_input(path, "unknown flags " + std::to_string(h.flags), hint);
  if (h.vocab_size == 0) throw_input(path, "vocab_size is 0", hint);
  if (h.tokenizer_hash >> 32) throw_input(path, "tokenizer_hash has bits above 32 set (it is a 32-bit fingerprint)", hint);
  if (h.num_tokens > (size - sizeof(ShardHeader)) / 4) {
    throw_input(path, "truncated shard: header promises " + std::to_string(h.num_tokens) + " tokens but the file has " +
                          std::to_string(size) + " bytes", hint);
  }
  if ((h.flags & kShardHasDocs) && h.num_docs > size / 8) throw_input(path, "truncated shard: too many documents", hint);
  if (!(h.flags & kShardHasDocs) && h.num_docs != 0) throw_input(path, "num_docs set without document offsets", hint);
  const Layout l = layout(h.num_tokens, h.num_docs, h.flags);
  if (size != l.end) {
    throw_input(path, std::string(size < l.end ? "truncated shard" : "trailing bytes after the shard") + ": " +
                          std::to_string(size) + " bytes, the header implies " + std::to_string(l.end), hint);
  }
  const uint8_t* base = s.file_->data();
  const uint32_t crc = crc32(base + sizeof(ShardHeader), size - sizeof(ShardHeader));
  if (crc != h.payload_crc32) {
    throw_input(path, "checksum mismatch (stored " + hex32(h.payload_crc32) + ", computed " + hex32(crc) + ")",
                "the file is corrupt; " + hint);
  }
  s.tokens_ = reinterpret_cast<const uint32_t*>(base + l.tokens_at);
  for (uint64_t i = 0; i < h.num_tokens; ++i) {
    if (s.tokens_[i] >= h.vocab_size) {
      throw_input(path, "token " + std::to_string(i) + " has id " + std::to_string(s.tokens_[i]) +
                            " >= vocab size " + std::to_string(h.vocab_size),
                  "the shard was written with another tokenizer or is corrupt");
    }
    s.max_token_id_ = std::max(s.max_token_id_, s.tokens_[i]);
  }
  if (h.flags & kShardHasMask) {
    s.mask_ = base + l.mask_at;
    for (uint64_t i = 0; i < h.num_tokens; ++i)
      if (s.mask_[i] > 1) throw_input(path, "loss mask value " + std::to_string(s.mask_[i]) + " at token " + std::to_string(i) + " (must be 0 or 1)", hint);
  }
  if (h.flags & kShardHasDocs) {
    s.docs_ = reinterpret_cast<const uint64_t*>(base + l.docs_at);
    if (s.docs_[0] != 0 || s.docs_[h.num_docs] != h.num_tokens) {
      throw_input(path, "document offsets must start at 0 and end at the token count", hint);
    }
    for (uint64_t d = 0; d < h.num_docs; ++d)
      if (s.docs_[d + 1] <= s.docs_[d]) throw_input(path, "document " + std::to_string(d) + " is empty or offsets decrease", hint);
  }
  return s;
}

TokenSpace Shard::space() const {
  return {header_.vocab_size, header_.eos_id, header_.bos_id, header_.tokenizer_hash};
}

uint64_t Shard::file_bytes() const { return file_->size(); }

}  // namespace agate
