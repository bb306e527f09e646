// safetensors reader/writer: round trips and refusal of every kind of malformed file.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "../test_util.h"
#include "agate/io/safetensors.h"
#include "agate/util/error.h"
#include "agate/util/fs.h"

using namespace agate;
using agate::test::error_of;
using agate::test::TempDir;

namespace {

// Builds a safetensors file from a raw header string and data bytes.
std::string make_file(const std::string& header, const std::string& data) {
  uint64_t n = header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + header + data;
}

std::string f32_header(const std::string& name, const std::string& shape, uint64_t b, uint64_t e,
                       const std::string& dtype = "F32") {
  return "{\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(b) + "," + std::to_string(e) + "]}}";
}

}  // namespace

TEST(Safetensors, RoundTripIsBitIdenticalForEveryDtype) {
  TempDir dir;
  NamedTensors in = {
      {"f32", at::randn({3, 5})},
      {"bf16", at::randn({4, 2}).to(at::kBFloat16)},
      {"f16", at::randn({7}).to(at::kHalf)},
      {"i64", at::arange(0, 10, at::kLong).view({2, 5})},
      {"i32", at::arange(0, 6, at::kInt)},
      {"u8", at::arange(0, 9, at::kByte)},
      {"scalar", at::tensor(3.5)},
      {"empty", at::zeros({0, 4})},
  };
  save_safetensors(dir.file("t.safetensors"), in, {{"who", "test"}});
  SafetensorsFile f = SafetensorsFile::open(dir.file("t.safetensors"));
  ASSERT_EQ(f.entries().size(), in.size());
  EXPECT_EQ(f.metadata().at("who"), "test");
  for (const auto& [name, t] : in) {
    at::Tensor back = f.tensor(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(back.sizes(), t.sizes()) << name;
    EXPECT_EQ(std::memcmp(back.data_ptr(), t.contiguous().data_ptr(), t.numel() * t.element_size()), 0) << name;
  }
  // Saving what was read gives the same bytes again.
  NamedTensors again;
  for (const auto& [name, t] : in) again.push_back({name, f.tensor(name)});
  save_safetensors(dir.file("u.safetensors"), again, {{"who", "test"}});
  EXPECT_EQ(test::read_bytes(dir.file("t.safetensors")), test::read_bytes(dir.file("u.safetensors")));
}

TEST(Safetensors, HeaderIsPaddedAndReadableJson) {
  TempDir dir;
  save_safetensors(dir.file("t.safetensors"), {{"a", at::ones({3})}});
  std::string bytes = test::read_bytes(dir.file("t.safetensors"));
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes[8], '{');
  EXPECT_EQ(bytes.size(), 8 + n + 12);
}

TEST(Safetensors, MalformedFilesAreRefusedWithFileAndReason) {
  TempDir dir;
  const std::string p = dir.file("bad.safetensors");
  const std::string data(16, '\0');  // 4 floats
  struct Case {
    const char* what;
    std::string bytes;
    const char* expect;
  };
  std::string big_len(8, '\0');
  uint64_t huge = 1ull << 40;
  std::memcpy(big_len.data(), &huge, 8);
  std::string beyond(8, '\0');
  uint64_t fifty = 50;
  std::memcpy(beyond.data(), &fifty, 8);
  const Case cases[] = {
      {"truncated", std::string("\x05\x00\x00", 3), "truncated"},
      {"huge header", big_len + "{}", "100 MB"},
      {"header beyond file", beyond + "{}", "runs past the end"},
      {"bad json", make_file("{\"a\":", data), "not valid JSON"},
      {"not an object", make_file("[1,2]", data), "not a JSON object"},
      {"offsets out of range", make_file(f32_header("a", "[4]", 0, 32), data), "out of range"},
      {"length mismatch", make_file(f32_header("a", "[3]", 0, 16), data), "does not match shape"},
      {"unknown dtype", make_file(f32_header("a", "[4]", 0, 16, "F7"), data), "unsupported dtype 'F7'"},
      {"negative shape", make_file(f32_header("a", "[-4]", 0, 16), data), "negative"},
      // 2^62 float32 elements are 2^64 bytes: a byte count that wraps to 0 must not pass as [0, 0].
      {"shape whose bytes overflow", make_file(f32_header("a", "[4611686018427387904]", 0, 0), data), "is absurdly large"},
      {"missing field", make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[4]}}", data), "needs dtype, shape and data_offsets"},
      {"overlap",
       make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                 data),
       "overlap"},
  };
  for (const auto& c : cases) {
    test::write_bytes(p, c.bytes);
    std::string msg = error_of([&] { SafetensorsFile::open(p); });
    EXPECT_NE(msg.find(p), std::string::npos) << c.what << ": " << msg;
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.what << ": " << msg;
  }
  EXPECT_NE(error_of([&] { SafetensorsFile::open(dir.file("missing.safetensors")); }).find("does not exist"),
            std::string::npos);
}

TEST(Safetensors, ShardedFolderLoadsLikeSingleFile) {
  TempDir dir;
  NamedTensors in;
  for (int i = 0; i < 6; ++i) in.push_back({"w" + std::to_string(i), at::randn({64, 16})});
  save_weight_folder(dir.file("single"), in);
  save_weight_folder(dir.file("sharded"), in, /*max_shard_bytes=*/10000);
  EXPECT_TRUE(std::filesystem::exists(dir.file("sharded/model.safetensors.index.json")));
  EXPECT_TRUE(std::filesystem::exists(dir.file("sharded/model-00001-of-00003.safetensors")));
  WeightFolder a = WeightFolder::open(dir.file("single")), b = WeightFolder::open(dir.file("sharded"));
  ASSERT_EQ(a.names(), b.names());
  for (const auto& n : a.names()) EXPECT_TRUE(at::equal(a.tensor(n), b.tensor(n))) << n;
  EXPECT_EQ(a.total_bytes(), b.total_bytes());
}

TEST(Safetensors, ShardedIndexProblemsAreRefused) {
  TempDir dir;
  save_weight_folder(dir.path(), {{"a", at::ones({300})}, {"b", at::ones({300})}}, 1000);
  std::filesystem::remove(dir.file("model-00002-of-00002.safetensors"));
  EXPECT_NE(error_of([&] { WeightFolder::open(dir.path()); }).find("which does not exist"), std::string::npos);
  TempDir empty;
  EXPECT_NE(error_of([&] { WeightFolder::open(empty.path()); }).find("has neither model.safetensors"),
            std::string::npos);
}

TEST(Fs, AtomicWriteReplacesWholeFileAndLeavesNoTemporaries) {
  TempDir dir;
  write_file_atomic(dir.file("x"), std::string("old"));
  write_file_atomic(dir.file("x"), std::string("new contents"));
  EXPECT_EQ(read_file(dir.file("x")), "new contents");
  int n = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.path())) n += 1, (void)e;
  EXPECT_EQ(n, 1);
  // A write into a missing folder fails cleanly and names the path.
  EXPECT_NE(error_of([&] { write_file_atomic(dir.file("nope/x"), std::string("y")); }).find("cannot create"),
            std::string::npos);
}
