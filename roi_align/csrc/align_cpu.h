// CPU kernels of both ops, generic in the Sampler (see align_common.h).
//
// Each RoI's bilinear samples are computed once into a table and reused for every channel.
// Forward parallelises over (RoI, channel) output planes; backward over (image, channel)
// gradient planes, each accumulating its RoIs in order: no races, deterministic results.
// With avg_pool the sampling grid is one larger each way and the 2x2 average is fused in.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "align_checks.h"
#include "align_common.h"

namespace gaic_align {

template <typename T>
struct SampleTable {
  std::unique_ptr<int64_t[]> batch_index;        // per RoI
  std::unique_ptr<BilinearSample<T>[]> samples;  // per RoI, grid_height * grid_width
};

// Chunk size for at::parallel_for when each iteration does about `work` sample updates.
inline int64_t grain_for(int64_t work) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, work));
}

template <template <typename> class Sampler, typename T>
SampleTable<T> build_sample_table(const T* rois, int64_t num_rois, T spatial_scale, int64_t grid_height,
                                  int64_t grid_width, int64_t height, int64_t width) {
  const int64_t cells = grid_height * grid_width;
  SampleTable<T> table{std::unique_ptr<int64_t[]>(new int64_t[num_rois]),
                       std::unique_ptr<BilinearSample<T>[]>(new BilinearSample<T>[num_rois * cells])};
  at::parallel_for(0, num_rois, grain_for(cells), [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const T* roi = rois + k * 5;
      const Sampler<T> sampler(roi, spatial_scale, grid_height, grid_width, height, width);
      table.batch_index[k] = static_cast<int64_t>(roi[0]);
      BilinearSample<T>* samples = table.samples.get() + k * cells;
      for (int64_t ph = 0; ph < grid_height; ++ph) {
        for (int64_t pw = 0; pw < grid_width; ++pw) {
          samples[ph * grid_width + pw] = cell_sample(sampler, ph, pw, height, width);
        }
      }
    }
  });
  return table;
}

template <template <typename> class Sampler>
at::Tensor align_forward_cpu(const char* op, const at::Tensor& features_in, const at::Tensor& rois_in,
                             int64_t aligned_height, int64_t aligned_width, double spatial_scale, bool avg_pool) {
  check_forward_inputs(op, features_in, rois_in, aligned_height, aligned_width, spatial_scale, avg_pool);
  const int64_t batch_size = features_in.size(0), channels = features_in.size(1);
  const int64_t height = features_in.size(2), width = features_in.size(3);
  const int64_t num_rois = rois_in.size(0), cells = aligned_height * aligned_width;
  const int64_t grid_height = aligned_height + avg_pool, grid_width = aligned_width + avg_pool;
  const int64_t grid_cells = grid_height * grid_width;
  const at::Tensor rois = prepare_rois(op, rois_in, features_in.scalar_type(), batch_size);
  const at::Tensor features = features_in.contiguous();
  at::Tensor output = at::empty({num_rois, channels, aligned_height, aligned_width}, features.options());
  if (output.numel() == 0) return output;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "align_forward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto table = build_sample_table<Sampler, T>(rois.data_ptr<T>(), num_rois, static_cast<T>(spatial_scale),
                                                      grid_height, grid_width, height, width);
    const scalar_t* input = features.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    at::parallel_for(0, num_rois * channels, grain_for(grid_cells), [&](int64_t begin, int64_t end) {
      std::vector<T> grid(grid_cells);
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t k = plane / channels, c = plane % channels;
        const scalar_t* source = input + (table.batch_index[k] * channels + c) * height * width;
        const BilinearSample<T>* samples = table.samples.get() + k * grid_cells;
        for (int64_t i = 0; i < grid_cells; ++i) grid[i] = interpolate(source, samples[i], width);
        scalar_t* target = out + plane * cells;
        if (!avg_pool) {
          for (int64_t i = 0; i < cells; ++i) target[i] = static_cast<scalar_t>(grid[i]);
          continue;
        }
        for (int64_t i = 0; i < aligned_height; ++i) {
          const T* top = grid.data() + i * grid_width;
          const T* bottom = top + grid_width;
          for (int64_t j = 0; j < aligned_width; ++j) {
            target[i * aligned_width + j] = static_cast<scalar_t>((top[j] + top[j + 1] + bottom[j] + bottom[j + 1]) / T(4));
          }
        }
      }
    });
  });
  return output;
}

template <template <typename> class Sampler>
at::Tensor align_backward_cpu(const char* op, const at::Tensor& grad_output_in, const at::Tensor& rois_in,
                              double spatial_scale, int64_t batch_size, int64_t height, int64_t width, bool avg_pool) {
  check_backward_inputs(op, grad_output_in, rois_in, spatial_scale, batch_size, height, width, avg_pool);
  const int64_t num_rois = grad_output_in.size(0), channels = grad_output_in.size(1);
  const int64_t aligned_height = grad_output_in.size(2), aligned_width = grad_output_in.size(3);
  const int64_t cells = aligned_height * aligned_width;
  const int64_t grid_height = aligned_height + avg_pool, grid_width = aligned_width + avg_pool;
  const int64_t grid_cells = grid_height * grid_width;
  const at::Tensor rois = prepare_rois(op, rois_in, grad_output_in.scalar_type(), batch_size);
  const at::Tensor grad_output = grad_output_in.contiguous();
  const auto accumulate_dtype = compute_dtype(grad_output.scalar_type());
  at::Tensor grad_features =
      at::zeros({batch_size, channels, height, width}, grad_output.options().dtype(accumulate_dtype));
  if (grad_output.numel() == 0) return grad_features.to(grad_output.scalar_type());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "align_backward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto table = build_sample_table<Sampler, T>(rois.data_ptr<T>(), num_rois, static_cast<T>(spatial_scale),
                                                      grid_height, grid_width, height, width);
    const scalar_t* grad = grad_output.data_ptr<scalar_t>();
    T* grad_in = grad_features.data_ptr<T>();
    const int64_t work_per_plane = std::max<int64_t>(1, num_rois * grid_cells / std::max<int64_t>(1, batch_size));
    at::parallel_for(0, batch_size * channels, grain_for(work_per_plane), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t b = plane / channels, c = plane % channels;
        T* target = grad_in + plane * height * width;
        for (int64_t k = 0; k < num_rois; ++k) {
          if (table.batch_index[k] != b) continue;
          const scalar_t* source = grad + (k * channels + c) * cells;
          const BilinearSample<T>* samples = table.samples.get() + k * grid_cells;
          for (int64_t i = 0; i < grid_cells; ++i) {
            const BilinearSample<T>& sample = samples[i];
            if (sample.offset < 0) continue;
            const T value = avg_pool ? unpool_gradient<T>(source, i / grid_width, i % grid_width, aligned_height,
                                                          aligned_width)
                                     : static_cast<T>(source[i]);
            T* top = target + sample.offset;
            top[0] += sample.top_left * value;
            top[1] += sample.top_right * value;
            top[width] += sample.bottom_left * value;
            top[width + 1] += sample.bottom_right * value;
          }
        }
      }
    });
  });
  return grad_features.to(grad_output.scalar_type());
}

}  // namespace gaic_align
