// CPU kernels of both ops, generic in the Sampler (see align_common.h).
//
// Layout: the features (and the gradient being accumulated) are read/written with channels
// innermost, (B, H, W, C): a sample's four neighbours are runs of C contiguous values and
// its weights serve every channel, so the channel loops vectorise. Each RoI's samples are
// computed once into a table. When a Sampler declares kSameGridForAllRois (RoDAlign), the
// interpolated grid is computed once per image and each RoI only masks it; in backward the
// masked gradients of an image are summed before a single scatter.
// Forward parallelises over RoIs; backward over (image, channel block) tasks that own their
// part of the gradient and add RoIs in order: no races, deterministic results.
// With avg_pool the grid is one larger each way and the 2x2 stride-1 mean is fused in.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "align_checks.h"
#include "align_common.h"

namespace gaic_align {

template <typename T>
struct SampleTable {
  int64_t grid_cells;
  bool shared;                                   // one grid of samples for all RoIs
  std::unique_ptr<int64_t[]> batch_index;        // per RoI
  std::unique_ptr<BilinearSample<T>[]> samples;  // per RoI, or once when shared
  std::unique_ptr<uint8_t[]> keep;               // when shared: per RoI and grid cell

  const BilinearSample<T>* roi_samples(int64_t k) const { return samples.get() + (shared ? 0 : k * grid_cells); }
};

// Chunk size for at::parallel_for when each iteration does about `work` sample-channel
// updates. A chunk gets at least ~0.2 ms of work: below that, waking threads costs more than
// it saves, and on shared cores a descheduled thread stalls the whole region.
constexpr int64_t kMinWorkPerChunk = int64_t{1} << 19;

inline int64_t grain_for(int64_t work) {
  return std::max<int64_t>(1, kMinWorkPerChunk / std::max<int64_t>(1, work));
}

template <template <typename> class Sampler, typename T>
SampleTable<T> build_sample_table(const T* rois, int64_t num_rois, T spatial_scale, int64_t grid_height,
                                  int64_t grid_width, int64_t height, int64_t width) {
  constexpr bool shared = Sampler<T>::kSameGridForAllRois;
  const int64_t cells = grid_height * grid_width;
  SampleTable<T> table{cells, shared, std::unique_ptr<int64_t[]>(new int64_t[num_rois]),
                       std::unique_ptr<BilinearSample<T>[]>(new BilinearSample<T>[shared ? cells : num_rois * cells]),
                       std::unique_ptr<uint8_t[]>(shared ? new uint8_t[num_rois * cells] : nullptr)};
  at::parallel_for(0, num_rois, grain_for(cells), [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const T* roi = rois + k * 5;
      const Sampler<T> sampler(roi, spatial_scale, grid_height, grid_width, height, width);
      table.batch_index[k] = static_cast<int64_t>(roi[0]);
      for (int64_t cell = 0; cell < cells; ++cell) {
        T h, w;
        const bool keep = sampler.position(cell / grid_width, cell % grid_width, h, w);
        if (!shared) {
          table.samples[k * cells + cell] = bilinear_sample(keep, h, w, height, width);
          continue;
        }
        table.keep[k * cells + cell] = keep;
        if (k == 0) table.samples[cell] = bilinear_sample(true, h, w, height, width);
      }
    }
  });
  return table;
}

// row[c] = the sample's value in channel c of `image` (B=1 slice of the pixels, (H, W, C)).
template <typename T, typename scalar_t>
inline void interpolate_row(const scalar_t* image, const BilinearSample<T>& sample, int64_t width,
                            int64_t channels, T* row) {
  if (sample.offset < 0) {
    std::fill(row, row + channels, T(0));
    return;
  }
  const scalar_t* top = image + sample.offset * channels;
  const scalar_t* bottom = top + width * channels;
  for (int64_t c = 0; c < channels; ++c) {
    // The order of interpolate() in align_common.h, so CPU and CUDA round alike.
    row[c] = sample.top_left * static_cast<T>(top[c]) + sample.top_right * static_cast<T>(top[c + channels]) +
             sample.bottom_left * static_cast<T>(bottom[c]) + sample.bottom_right * static_cast<T>(bottom[c + channels]);
  }
}

// a[c] += wa * row[c], ... for four disjoint runs of `count` values (restrict lets them vectorise).
template <typename T>
inline void add_scaled_4(T* __restrict__ a, T* __restrict__ b, T* __restrict__ c, T* __restrict__ d, T wa, T wb,
                         T wc, T wd, const T* __restrict__ row, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    a[i] += wa * row[i];
    b[i] += wb * row[i];
    c[i] += wc * row[i];
    d[i] += wd * row[i];
  }
}

// The adjoint of interpolate_row for `count` <= `channels` channels.
template <typename T>
inline void scatter_row(T* image, const BilinearSample<T>& sample, int64_t width, int64_t channels, int64_t count,
                        const T* row) {
  if (sample.offset < 0) return;
  T* top = image + sample.offset * channels;
  T* bottom = top + width * channels;
  add_scaled_4(top, top + channels, bottom, bottom + channels, sample.top_left, sample.top_right,
               sample.bottom_left, sample.bottom_right, row, count);
}

// target[c * target_stride + r] = source[r * columns + c] for a rows x columns block, in
// 4x4 tiles so that loads and stores both run along contiguous memory.
template <typename Source, typename Target>
inline void transpose_block(const Source* source, int64_t rows, int64_t columns, Target* target,
                            int64_t target_stride) {
  constexpr int64_t kTile = 4;
  const int64_t full_rows = rows - rows % kTile, full_columns = columns - columns % kTile;
  for (int64_t r = 0; r < full_rows; r += kTile) {
    for (int64_t c = 0; c < full_columns; c += kTile) {
      Source tile[kTile][kTile];
      for (int64_t i = 0; i < kTile; ++i) {
        for (int64_t j = 0; j < kTile; ++j) tile[i][j] = source[(r + i) * columns + c + j];
      }
      for (int64_t j = 0; j < kTile; ++j) {
        for (int64_t i = 0; i < kTile; ++i) target[(c + j) * target_stride + r + i] = static_cast<Target>(tile[i][j]);
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = r < full_rows ? full_columns : 0; c < columns; ++c) {
      target[c * target_stride + r] = static_cast<Target>(source[r * columns + c]);
    }
  }
}

template <template <typename> class Sampler>
at::Tensor align_forward_cpu(const char* op, const at::Tensor& features, const at::Tensor& rois_in,
                             int64_t aligned_height, int64_t aligned_width, double spatial_scale, bool avg_pool) {
  check_forward_inputs(op, features, rois_in, aligned_height, aligned_width, spatial_scale, avg_pool);
  const int64_t batch_size = features.size(0), channels = features.size(1);
  const int64_t height = features.size(2), width = features.size(3);
  const int64_t num_rois = rois_in.size(0), cells = aligned_height * aligned_width;
  const int64_t grid_height = aligned_height + avg_pool, grid_width = aligned_width + avg_pool;
  const int64_t grid_cells = grid_height * grid_width;
  const at::Tensor rois = prepare_rois(op, rois_in, features.scalar_type(), batch_size);
  // No copy when the features are channels_last already.
  const at::Tensor pixels = features.permute({0, 2, 3, 1}).contiguous();
  at::Tensor output = at::empty({num_rois, channels, aligned_height, aligned_width}, features.options());
  if (output.numel() == 0) return output;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "align_forward_cpu", [&] {
    using T = at::opmath_type<scalar_t>;
    const auto table = build_sample_table<Sampler, T>(rois.data_ptr<T>(), num_rois, static_cast<T>(spatial_scale),
                                                      grid_height, grid_width, height, width);
    const scalar_t* input = pixels.data_ptr<scalar_t>();
    const int64_t image_size = height * width * channels;
    // Shared grid: every image's interpolated grid, [image][grid cell][channel].
    std::vector<T> image_grids(table.shared ? batch_size * grid_cells * channels : 0);
    if (table.shared) {
      at::parallel_for(0, batch_size * grid_cells, grain_for(channels), [&](int64_t begin, int64_t end) {
        for (int64_t index = begin; index < end; ++index) {
          interpolate_row(input + (index / grid_cells) * image_size, table.samples[index % grid_cells], width,
                          channels, image_grids.data() + index * channels);
        }
      });
    }
    scalar_t* out = output.data_ptr<scalar_t>();
    at::parallel_for(0, num_rois, grain_for(grid_cells * channels), [&](int64_t begin, int64_t end) {
      std::vector<T> grid(grid_cells * channels);              // [grid cell][channel]
      std::vector<T> pooled(avg_pool ? cells * channels : 0);  // [output cell][channel]
      for (int64_t k = begin; k < end; ++k) {
        const int64_t b = table.batch_index[k];
        const BilinearSample<T>* samples = table.roi_samples(k);
        for (int64_t s = 0; s < grid_cells; ++s) {
          T* row = grid.data() + s * channels;
          if (!table.shared) {
            interpolate_row(input + b * image_size, samples[s], width, channels, row);
          } else if (table.keep[k * grid_cells + s]) {
            std::copy_n(image_grids.data() + (b * grid_cells + s) * channels, channels, row);
          } else {
            std::fill(row, row + channels, T(0));
          }
        }
        // The 2x2 mean with channels innermost (vectorised), then one transposing store.
        const T* values = grid.data();
        if (avg_pool) {
          for (int64_t i = 0; i < aligned_height; ++i) {
            for (int64_t j = 0; j < aligned_width; ++j) {
              const T* top = grid.data() + (i * grid_width + j) * channels;
              const T* bottom = top + grid_width * channels;
              T* mean = pooled.data() + (i * aligned_width + j) * channels;
              for (int64_t c = 0; c < channels; ++c) {
                mean[c] = (top[c] + top[c + channels] + bottom[c] + bottom[c + channels]) / T(4);
              }
            }
          }
          values = pooled.data();
        }
        transpose_block(values, cells, channels, out + k * channels * cells, cells);
      }
    });
  });
  return output;
}

template <template <typename> class Sampler>
at::Tensor align_backward_cpu(const char* op, const at::Tensor& grad_output_in, const at::Tensor& rois_in,
                              double spatial_scale, int64_t batch_size, int64_t height, int64_t width, bool avg_pool) {
  constexpr int64_t kChannelBlock = 16;
  check_backward_inputs(op, grad_output_in, rois_in, spatial_scale, batch_size, height, width, avg_pool);
  const int64_t num_rois = grad_output_in.size(0), channels = grad_output_in.size(1);
  const int64_t aligned_height = grad_output_in.size(2), aligned_width = grad_output_in.size(3);
  const int64_t cells = aligned_height * aligned_width;
  const int64_t grid_height = aligned_height + avg_pool, grid_width = aligned_width + avg_pool;
  const int64_t grid_cells = grid_height * grid_width;
  const at::Tensor rois = prepare_rois(op, rois_in, grad_output_in.scalar_type(), batch_size);
  const at::Tensor grad_output = grad_output_in.contiguous();
  at::Tensor grad_pixels = at::zeros({batch_size, height, width, channels},
                                     grad_output.options().dtype(compute_dtype(grad_output.scalar_type())));
  at::Tensor grad_features = at::empty({batch_size, channels, height, width}, grad_output.options());
  if (grad_output.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "align_backward_cpu", [&] {
      using T = at::opmath_type<scalar_t>;
      const auto table = build_sample_table<Sampler, T>(rois.data_ptr<T>(), num_rois,
                                                        static_cast<T>(spatial_scale), grid_height, grid_width,
                                                        height, width);
      const scalar_t* grad = grad_output.data_ptr<scalar_t>();
      T* grad_in = grad_pixels.data_ptr<T>();
      const int64_t blocks = (channels + kChannelBlock - 1) / kChannelBlock;
      const int64_t work_per_task = std::max<int64_t>(1, num_rois / batch_size) * grid_cells * kChannelBlock;
      at::parallel_for(0, batch_size * blocks, grain_for(work_per_task), [&](int64_t begin, int64_t end) {
        // [cell][channel in block]; channels past `count` in the last block are unused padding.
        std::vector<T> grid(grid_cells * kChannelBlock, T(0));
        std::vector<T> pooled(avg_pool ? cells * kChannelBlock : 0, T(0));
        std::vector<T> image_grid(table.shared ? grid_cells * kChannelBlock : 0);  // masked sum over RoIs
        for (int64_t task = begin; task < end; ++task) {
          const int64_t b = task / blocks, first = (task % blocks) * kChannelBlock;
          const int64_t count = std::min(kChannelBlock, channels - first);
          T* image = grad_in + b * height * width * channels + first;
          std::fill(image_grid.begin(), image_grid.end(), T(0));
          for (int64_t k = 0; k < num_rois; ++k) {
            if (table.batch_index[k] != b) continue;
            // The gradient reaching each grid cell: a transposing load, then with avg_pool the
            // adjoint of the 2x2 mean (vectorised over the block).
            const scalar_t* source = grad + (k * channels + first) * cells;
            T* loaded = avg_pool ? pooled.data() : grid.data();
            transpose_block(source, count, cells, loaded, kChannelBlock);
            if (avg_pool) {
              std::fill(grid.begin(), grid.end(), T(0));
              for (int64_t i = 0; i < aligned_height; ++i) {
                for (int64_t j = 0; j < aligned_width; ++j) {
                  const T* mean = pooled.data() + (i * aligned_width + j) * kChannelBlock;
                  T* top = grid.data() + (i * grid_width + j) * kChannelBlock;
                  T* bottom = top + grid_width * kChannelBlock;
                  const T quarter(0.25);  // a power of two: the same as dividing the sum by 4
                  add_scaled_4(top, top + kChannelBlock, bottom, bottom + kChannelBlock, quarter, quarter, quarter,
                               quarter, mean, kChannelBlock);
                }
              }
            }
            const BilinearSample<T>* samples = table.roi_samples(k);
            for (int64_t s = 0; s < grid_cells; ++s) {
              const T* row = grid.data() + s * kChannelBlock;
              if (!table.shared) {
                scatter_row(image, samples[s], width, channels, count, row);
              } else if (table.keep[k * grid_cells + s]) {
                T* sum = image_grid.data() + s * kChannelBlock;
                for (int64_t c = 0; c < kChannelBlock; ++c) sum[c] += row[c];
              }
            }
          }
          if (table.shared) {
            for (int64_t s = 0; s < grid_cells; ++s) {
              scatter_row(image, table.samples[s], width, channels, count, image_grid.data() + s * kChannelBlock);
            }
          }
        }
      });
    });
  }
  grad_features.copy_(grad_pixels.permute({0, 3, 1, 2}));
  return grad_features;
}

}  // namespace gaic_align
