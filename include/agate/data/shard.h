// Token shard format v1: one file of tokens (+ optional loss mask and document offsets).
//
// Byte layout (all integers little-endian), documented for other writers in docs/formats.md:
//   [0, 256)  header (ShardHeader below)
//   [256, 256 + 4N)                     tokens, uint32 x N
//   then, if flags & kShardHasMask:     loss mask, uint8 x N (1 = the token is a loss target)
//   then zero padding to a multiple of 8 bytes (from the start of the file)
//   then, if flags & kShardHasDocs:     document offsets, uint64 x (D + 1): doc d spans tokens
//                                       [off[d], off[d+1]); off[0] = 0, off[D] = N, increasing
//   file size == exactly the end of the last present section.
//   payload_crc32 = CRC-32 (zlib) of every byte after the header.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace agate {

class MappedFile;

inline constexpr char kShardMagic[8] = {'A', 'G', 'A', 'T', 'E', 'T', 'O', 'K'};
inline constexpr uint32_t kShardVersion = 1;
inline constexpr uint32_t kShardHasMask = 1u << 0;
inline constexpr uint32_t kShardHasDocs = 1u << 1;

#pragma pack(push, 1)
struct ShardHeader {
  char magic[8];             // "AGATETOK"
  uint32_t version;          // 1
  uint32_t flags;            // kShardHasMask | kShardHasDocs
  uint64_t num_tokens;       // N
  uint64_t num_docs;         // D (0 when there are no document offsets)
  uint32_t vocab_size;       // every token id is < vocab_size
  int32_t eos_id;            // -1 = none
  int32_t bos_id;            // -1 = none
  uint32_t payload_crc32;    // CRC-32 of bytes [256, file end)
  uint64_t tokenizer_hash;   // the tokenizer's fingerprint (agate: CRC-32 of its model file)
  uint8_t reserved[200];     // zero
};
#pragma pack(pop)
static_assert(sizeof(ShardHeader) == 256, "shard header is 256 bytes");

// Identity of the vocabulary the tokens come from.
struct TokenSpace {
  uint32_t vocab_size = 0;
  int32_t eos_id = -1;
  int32_t bos_id = -1;
  uint64_t tokenizer_hash = 0;
};

struct ShardContents {
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> mask;          // empty or one per token
  std::vector<uint64_t> doc_offsets;  // empty or D + 1 entries
};

// Writes a shard atomically; returns its payload CRC-32.
uint32_t write_shard(const std::string& path, const TokenSpace& space, const ShardContents& contents);

// A memory-mapped, fully validated shard: header fields, exact file size, payload checksum,
// every token id < vocab_size, mask values 0/1, document offsets increasing and in range.
class Shard {
 public:
  static Shard open(const std::string& path);

  const std::string& path() const { return path_; }
  const ShardHeader& header() const { return header_; }
  TokenSpace space() const;
  uint64_t num_tokens() const { return header_.num_tokens; }
  uint64_t num_docs() const { return header_.num_docs; }
  const uint32_t* tokens() const { return tokens_; }
  const uint8_t* mask() const { return mask_; }          // nullptr when absent
  const uint64_t* doc_offsets() const { return docs_; }  // nullptr when absent
  // The largest token id in the shard (found by the validation scan): a model can read the
  // shard iff this is below its vocabulary, even when the tokenizer's is larger (added tokens).
  uint32_t max_token_id() const { return max_token_id_; }
  uint64_t file_bytes() const;

 private:
  std::string path_;
  std::shared_ptr<MappedFile> file_;
  ShardHeader header_{};
  const uint32_t* tokens_ = nullptr;
  const uint8_t* mask_ = nullptr;
  const uint64_t* docs_ = nullptr;
  uint32_t max_token_id_ = 0;
};

}  // namespace agate
