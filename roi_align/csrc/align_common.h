// Arithmetic shared by the CPU and CUDA kernels of RoIAlign and RoDAlign.
//
// The two ops differ only in where the samples of output cell (ph, pw) lie and which of
// them are kept. Each describes that with a Sampler<T>, built per RoI from its row
// (batch_index, x1, y1, x2, y2):
//   Sampler(const T* roi, T spatial_scale, int64_t aligned_height, int64_t aligned_width,
//           int64_t height, int64_t width);
//   bool position(int64_t ph, int64_t pw, T& h, T& w) const;  // false: the cell is 0
//   static constexpr bool kSameGridForAllRois;  // h, w do not depend on the RoI (CPU shortcut)
// T is the position/accumulation type, at::opmath_type<scalar_t> (float unless double),
// which keeps float32 inputs in the original kernels' float32 arithmetic.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace gaic_align {

// max(value, 0) with NaN mapped to 0, as C's fmax(value, 0) in the original kernels.
template <typename T>
C10_HOST_DEVICE inline T clamp_nonnegative(T value) {
  return value > T(0) ? value : T(0);
}

// Bilinear weights of one sample: the top-left neighbour's offset in an (H, W) plane,
// or -1 when the sample is 0.
template <typename T>
struct BilinearSample {
  int64_t offset;
  T top_left;
  T top_right;
  T bottom_left;
  T bottom_right;
};

template <typename T>
C10_HOST_DEVICE inline BilinearSample<T> bilinear_sample(bool keep, T h, T w, int64_t height, int64_t width) {
  // Written so that NaN positions fail the test too.
  if (!(keep && h >= T(0) && h < T(height) && w >= T(0) && w < T(width))) {
    return {-1, T(0), T(0), T(0), T(0)};
  }
  // h, w >= 0, so truncation is floor. The last row/column starts one back so the four
  // neighbours exist; the ratio then exceeds 1 (linear extrapolation, as the original).
  int64_t h_start = static_cast<int64_t>(h);
  int64_t w_start = static_cast<int64_t>(w);
  if (h_start > height - 2) h_start = height - 2;
  if (w_start > width - 2) w_start = width - 2;
  const T h_ratio = h - static_cast<T>(h_start);
  const T w_ratio = w - static_cast<T>(w_start);
  return {h_start * width + w_start, (T(1) - h_ratio) * (T(1) - w_ratio), (T(1) - h_ratio) * w_ratio,
          h_ratio * (T(1) - w_ratio), h_ratio * w_ratio};
}

template <template <typename> class Sampler, typename T>
C10_HOST_DEVICE inline BilinearSample<T> cell_sample(const Sampler<T>& sampler, int64_t ph, int64_t pw,
                                                     int64_t height, int64_t width) {
  T h, w;
  const bool keep = sampler.position(ph, pw, h, w);
  return bilinear_sample(keep, h, w, height, width);
}

// Value of a sample in one (H, W) plane of the features.
template <typename T, typename scalar_t>
C10_HOST_DEVICE inline T interpolate(const scalar_t* plane, const BilinearSample<T>& sample, int64_t width) {
  if (sample.offset < 0) return T(0);
  const scalar_t* top = plane + sample.offset;
  const scalar_t* bottom = top + width;
  return sample.top_left * static_cast<T>(top[0]) + sample.top_right * static_cast<T>(top[1]) +
         sample.bottom_left * static_cast<T>(bottom[0]) + sample.bottom_right * static_cast<T>(bottom[1]);
}

// The ...Avg modules' 2x2 stride-1 average pooling, fused: pooled cell (i, j) averages grid
// cells (i..i+1, j..j+1) of a grid one larger each way. This is the gradient reaching grid
// cell (gi, gj) of a plane from the pooled gradient of that plane (aligned_height x
// aligned_width), i.e. the adjoint of the pooling.
template <typename T, typename scalar_t>
C10_HOST_DEVICE inline T unpool_gradient(const scalar_t* pooled_grad, int64_t gi, int64_t gj,
                                          int64_t aligned_height, int64_t aligned_width) {
  T sum(0);
  for (int64_t i = gi - 1; i <= gi; ++i) {
    if (i < 0 || i >= aligned_height) continue;
    for (int64_t j = gj - 1; j <= gj; ++j) {
      if (j < 0 || j >= aligned_width) continue;
      sum += static_cast<T>(pooled_grad[i * aligned_width + j]);
    }
  }
  return sum / T(4);
}

}  // namespace gaic_align
