// Where RoIAlign samples: an aligned_height x aligned_width grid spanning the scaled RoI,
// both corners included, in the original GAIC kernel's arithmetic.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

#include "align_common.h"

namespace gaic_align {

template <typename T>
struct RoiSampler {
  static constexpr bool kSameGridForAllRois = false;

  T x1;
  T y1;
  T step_h;
  T step_w;

  C10_HOST_DEVICE RoiSampler(const T* roi, T spatial_scale, int64_t aligned_height, int64_t aligned_width,
                             int64_t /*height*/, int64_t /*width*/) {
    x1 = roi[1] * spatial_scale;
    y1 = roi[2] * spatial_scale;
    const T x2 = roi[3] * spatial_scale;
    const T y2 = roi[4] * spatial_scale;
    // "+ 1" and the clamp are the original's: a degenerate RoI collapses onto its corner.
    step_w = clamp_nonnegative(x2 - x1 + T(1)) / static_cast<T>(aligned_width - 1);
    step_h = clamp_nonnegative(y2 - y1 + T(1)) / static_cast<T>(aligned_height - 1);
  }

  C10_HOST_DEVICE bool position(int64_t ph, int64_t pw, T& h, T& w) const {
    h = static_cast<T>(ph) * step_h + y1;
    w = static_cast<T>(pw) * step_w + x1;
    return true;
  }
};

}  // namespace gaic_align
