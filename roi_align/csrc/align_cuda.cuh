// CUDA kernels of both ops, generic in the Sampler (see align_common.h).
//
// Forward: one thread per output element; with avg_pool it averages its four grid samples.
// Backward: one thread per grid sample, scattering into the gradient with float32 (float64
// for double) atomics, so the summation order, and the last bits, vary between runs. It does not
// copy the batch indices to the host to check them: autograd hands it the rois the forward
// checked, and a row whose index is not in [0, batch_size) scatters nothing. So a training step
// synchronises once per op (the forward's check), not twice.
// float16/bfloat16 sample and accumulate in float32 (at::opmath_type).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/Atomic.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <string>

#include "align_checks.h"
#include "align_common.h"

namespace gaic_align {

constexpr int kThreadsPerBlock = 256;
// Grid-stride loops cover anything beyond this many blocks.
constexpr int64_t kMaxBlocks = int64_t{1} << 16;

inline int64_t blocks_for(int64_t threads) {
  return std::min<int64_t>((threads + kThreadsPerBlock - 1) / kThreadsPerBlock, kMaxBlocks);
}

template <template <typename> class Sampler, typename scalar_t>
__global__ void align_forward_kernel(int64_t total, const scalar_t* __restrict__ features,
                                     const at::opmath_type<scalar_t>* __restrict__ rois,
                                     at::opmath_type<scalar_t> spatial_scale, int64_t channels, int64_t height,
                                     int64_t width, int64_t aligned_height, int64_t aligned_width, bool avg_pool,
                                     scalar_t* __restrict__ output) {
  using T = at::opmath_type<scalar_t>;
  const int64_t grid_height = aligned_height + avg_pool, grid_width = aligned_width + avg_pool;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < total; index += stride) {
    const int64_t j = index % aligned_width;
    const int64_t i = (index / aligned_width) % aligned_height;
    const int64_t c = (index / (aligned_width * aligned_height)) % channels;
    const int64_t k = index / (aligned_width * aligned_height * channels);
    const T* roi = rois + k * 5;
    const Sampler<T> sampler(roi, spatial_scale, grid_height, grid_width, height, width);
    const scalar_t* plane = features + (static_cast<int64_t>(roi[0]) * channels + c) * height * width;
    T value = interpolate(plane, cell_sample(sampler, i, j, height, width), width);
    if (avg_pool) {
      // Same order as the CPU kernel: top row, then bottom row.
      value = (value + interpolate(plane, cell_sample(sampler, i, j + 1, height, width), width) +
               interpolate(plane, cell_sample(sampler, i + 1, j, height, width), width) +
               interpolate(plane, cell_sample(sampler, i + 1, j + 1, height, width), width)) /
              T(4);
    }
    output[index] = static_cast<scalar_t>(value);
  }
}

template <template <typename> class Sampler, typename scalar_t>
__global__ void align_backward_kernel(int64_t total, const scalar_t* __restrict__ grad_output,
                                      const at::opmath_type<scalar_t>* __restrict__ rois,
                                      at::opmath_type<scalar_t> spatial_scale, int64_t channels, int64_t height,
                                      int64_t width, int64_t aligned_height, int64_t aligned_width, bool avg_pool,
                                      int64_t batch_size, at::opmath_type<scalar_t>* __restrict__ grad_features) {
  using T = at::opmath_type<scalar_t>;
  const int64_t grid_height = aligned_height + avg_pool, grid_width = aligned_width + avg_pool;
  const int64_t stride = static_cast<int64_t>(blockDim.x) * gridDim.x;
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; index < total; index += stride) {
    const int64_t gj = index % grid_width;
    const int64_t gi = (index / grid_width) % grid_height;
    const int64_t c = (index / (grid_width * grid_height)) % channels;
    const int64_t k = index / (grid_width * grid_height * channels);
    const T* roi = rois + k * 5;
    // Written so that NaN is skipped too.
    if (!(roi[0] >= T(0) && roi[0] < static_cast<T>(batch_size) && roi[0] == floor(roi[0]))) continue;
    const Sampler<T> sampler(roi, spatial_scale, grid_height, grid_width, height, width);
    const BilinearSample<T> sample = cell_sample(sampler, gi, gj, height, width);
    if (sample.offset < 0) continue;
    const scalar_t* grad_plane = grad_output + (k * channels + c) * aligned_height * aligned_width;
    const T value = avg_pool ? unpool_gradient<T>(grad_plane, gi, gj, aligned_height, aligned_width)
                             : static_cast<T>(grad_plane[gi * aligned_width + gj]);
    T* top = grad_features + (static_cast<int64_t>(roi[0]) * channels + c) * height * width + sample.offset;
    gpuAtomicAdd(top, sample.top_left * value);
    gpuAtomicAdd(top + 1, sample.top_right * value);
    gpuAtomicAdd(top + width, sample.bottom_left * value);
    gpuAtomicAdd(top + width + 1, sample.bottom_right * value);
  }
}

template <template <typename> class Sampler>
at::Tensor align_forward_cuda(const char* op, const at::Tensor& features_in, const at::Tensor& rois_in,
                              int64_t aligned_height, int64_t aligned_width, double spatial_scale, bool avg_pool) {
  check_forward_inputs(op, features_in, rois_in, aligned_height, aligned_width, spatial_scale, avg_pool);
  const c10::cuda::CUDAGuard device_guard(features_in.device());
  const int64_t batch_size = features_in.size(0), channels = features_in.size(1);
  const int64_t height = features_in.size(2), width = features_in.size(3);
  const at::Tensor rois = prepare_rois(op, rois_in, features_in.scalar_type(), batch_size);
  const at::Tensor features = features_in.contiguous();
  at::Tensor output = at::empty({rois.size(0), channels, aligned_height, aligned_width}, features.options());
  const int64_t total = output.numel();
  if (total == 0) return output;

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "align_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    align_forward_kernel<Sampler, scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
        total, features.data_ptr<scalar_t>(), rois.data_ptr<T>(), static_cast<T>(spatial_scale), channels, height,
        width, aligned_height, aligned_width, avg_pool, output.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return output;
}

template <template <typename> class Sampler>
at::Tensor align_backward_cuda(const char* op, const at::Tensor& grad_output_in, const at::Tensor& rois_in,
                               double spatial_scale, int64_t batch_size, int64_t height, int64_t width,
                               bool avg_pool) {
  check_backward_inputs(op, grad_output_in, rois_in, spatial_scale, batch_size, height, width, avg_pool);
  at::globalContext().alertNotDeterministic(std::string(op) + "_cuda");
  const c10::cuda::CUDAGuard device_guard(grad_output_in.device());
  const int64_t channels = grad_output_in.size(1);
  const int64_t aligned_height = grad_output_in.size(2), aligned_width = grad_output_in.size(3);
  const at::Tensor rois = rois_for_kernels(rois_in, grad_output_in.scalar_type());
  const at::Tensor grad_output = grad_output_in.contiguous();
  at::Tensor grad_features = at::zeros({batch_size, channels, height, width},
                                       grad_output.options().dtype(compute_dtype(grad_output.scalar_type())));
  const int64_t total = rois.size(0) * channels * (aligned_height + avg_pool) * (aligned_width + avg_pool);
  if (total == 0) return grad_features.to(grad_output.scalar_type());

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "align_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    align_backward_kernel<Sampler, scalar_t><<<blocks_for(total), kThreadsPerBlock, 0, stream>>>(
        total, grad_output.data_ptr<scalar_t>(), rois.data_ptr<T>(), static_cast<T>(spatial_scale), channels,
        height, width, aligned_height, aligned_width, avg_pool, batch_size, grad_features.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return grad_features.to(grad_output.scalar_type());
}

}  // namespace gaic_align
