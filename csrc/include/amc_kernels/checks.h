// Argument checks for the ops: every message starts with the op name, then says what to fix.
#pragma once

#include <c10/util/Exception.h>

#define AMC_CHECK(cond, op, ...) TORCH_CHECK(cond, "amc_kernels.", op, ": ", __VA_ARGS__)

#define AMC_CHECK_DIM(t, n, op, name) \
  AMC_CHECK((t).dim() == (n), op, name, " must have ", n, " dimensions, got shape ", (t).sizes())

#define AMC_CHECK_FLOATING(t, op, name)                                                      \
  AMC_CHECK(at::isFloatingType((t).scalar_type()), op, name,                                 \
            " must be a floating-point tensor (float16, bfloat16, float32 or float64), got ", \
            (t).scalar_type())
