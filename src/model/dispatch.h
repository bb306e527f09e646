// Dtype dispatch for agate's own kernels (model-internal header): ATen's dispatch macros,
// restricted to the two compute dtypes the kernels are written for. Inside the lambda,
// `scalar_t` is float or c10::BFloat16; any other dtype fails with a c10::Error naming NAME
// and the dtype.
#pragma once

#include <ATen/Dispatch.h>

#define AGATE_DISPATCH_FLOAT_BF16(TYPE, NAME, ...) \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
