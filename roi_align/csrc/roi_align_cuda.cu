// RoIAlign CUDA kernels, registered for the operators defined in roi_align.cpp.
#include <torch/library.h>

#include "align_cuda.cuh"
#include "roi_sampler.h"

namespace {

at::Tensor roi_align_cuda(const at::Tensor& features, const at::Tensor& rois, int64_t aligned_height,
                          int64_t aligned_width, double spatial_scale, bool avg_pool) {
  return gaic_align::align_forward_cuda<gaic_align::RoiSampler>("roi_align", features, rois, aligned_height,
                                                                aligned_width, spatial_scale, avg_pool);
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad_output, const at::Tensor& rois, double spatial_scale,
                                   int64_t batch_size, int64_t height, int64_t width, bool avg_pool) {
  return gaic_align::align_backward_cuda<gaic_align::RoiSampler>("roi_align_backward", grad_output, rois,
                                                                 spatial_scale, batch_size, height, width, avg_pool);
}

}  // namespace

TORCH_LIBRARY_IMPL(roi_align, CUDA, m) {
  m.impl("roi_align", &roi_align_cuda);
  m.impl("roi_align_backward", &roi_align_backward_cuda);
}
