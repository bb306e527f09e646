// Errors: a user's mistake (usage, input: exit 2) is told apart from agate's own broken
// invariants (internal: exit 70, "internal error", a please-report hint).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "../tiny_model.h"
#include "agate/model/llama.h"
#include "agate/util/device.h"
#include "agate/util/error.h"

namespace agate {
namespace {

template <typename F>
Error caught(F&& body) {
  try {
    body();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no agate::Error thrown";
  return Error(Error::Kind::Runtime, "none");
}

TEST(Errors, InternalInvariantsAreNotUsageErrors) {
  // A module handing the model tokens of the wrong rank is a bug between modules, not a user's.
  const LlamaModel m = LlamaModel::init_random(test::tiny_config(), 1, at::kFloat);
  const Error e = caught([&] { m.forward(at::zeros({5}, at::kLong)); });
  EXPECT_EQ(e.kind(), Error::Kind::Internal);
  EXPECT_EQ(e.exit_code(), 70);
  EXPECT_NE(std::string(e.what()).find("internal error: LlamaModel::run expects tokens of shape [B, T]"), std::string::npos)
      << e.what();
  EXPECT_NE(std::string(e.what()).find("please report"), std::string::npos) << e.what();
  // A user's bad flag stays a usage error (exit 2).
  const Error u = caught([] { resolve_device("tpu"); });
  EXPECT_EQ(u.kind(), Error::Kind::Usage);
  EXPECT_EQ(u.exit_code(), 2);
}

}  // namespace
}  // namespace agate
