// Where RoDAlign samples: one aligned_height x aligned_width grid over the whole feature
// map (stepping over H - 1.001, as the original), dropping the samples inside the scaled RoI.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace gaic_align {

template <typename T>
struct RodSampler {
  // Positions depend only on the map and grid sizes; a RoI only decides which cells are kept.
  static constexpr bool kSameGridForAllRois = true;

  T x1;
  T y1;
  T x2;
  T y2;
  T step_h;
  T step_w;

  C10_HOST_DEVICE RodSampler(const T* roi, T spatial_scale, int64_t aligned_height, int64_t aligned_width,
                             int64_t height, int64_t width) {
    x1 = roi[1] * spatial_scale;
    y1 = roi[2] * spatial_scale;
    x2 = roi[3] * spatial_scale;
    y2 = roi[4] * spatial_scale;
    // The original rounds H - 1.001 (a double) to float before dividing.
    step_h = static_cast<T>(static_cast<double>(height) - 1.001) / static_cast<T>(aligned_height - 1);
    step_w = static_cast<T>(static_cast<double>(width) - 1.001) / static_cast<T>(aligned_width - 1);
  }

  // Inside means within the RoI, bounds included; comparisons with NaN are false, so a NaN
  // coordinate drops nothing.
  C10_HOST_DEVICE bool position(int64_t ph, int64_t pw, T& h, T& w) const {
    h = static_cast<T>(ph) * step_h;
    w = static_cast<T>(pw) * step_w;
    return !(h >= y1 && h <= y2 && w >= x1 && w <= x2);
  }
};

}  // namespace gaic_align
