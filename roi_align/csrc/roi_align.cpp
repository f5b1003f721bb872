// RoIAlign operators (torch.ops.roi_align.*) and their CPU kernels. The CUDA kernels are
// registered from roi_align_cuda.cu when the extension is built with CUDA.
#include <Python.h>
#include <torch/library.h>

#include "align_cpu.h"
#include "roi_sampler.h"

namespace {

at::Tensor roi_align_cpu(const at::Tensor& features, const at::Tensor& rois, int64_t aligned_height,
                         int64_t aligned_width, double spatial_scale, bool avg_pool) {
  return gaic_align::align_forward_cpu<gaic_align::RoiSampler>("roi_align", features, rois, aligned_height,
                                                               aligned_width, spatial_scale, avg_pool);
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad_output, const at::Tensor& rois, double spatial_scale,
                                  int64_t batch_size, int64_t height, int64_t width, bool avg_pool) {
  return gaic_align::align_backward_cpu<gaic_align::RoiSampler>("roi_align_backward", grad_output, rois,
                                                                spatial_scale, batch_size, height, width, avg_pool);
}

}  // namespace

// Importing roi_align._C loads this library, which registers the operators.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "roi_align._C", "RoIAlign CPU/CUDA kernels", -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(roi_align, m) {
  m.def(
      "roi_align(Tensor features, Tensor rois, int aligned_height, int aligned_width, float spatial_scale, "
      "bool avg_pool=False) -> Tensor");
  m.def(
      "roi_align_backward(Tensor grad_output, Tensor rois, float spatial_scale, SymInt batch_size, SymInt height, "
      "SymInt width, bool avg_pool=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(roi_align, CPU, m) {
  m.impl("roi_align", &roi_align_cpu);
  m.impl("roi_align_backward", &roi_align_backward_cpu);
}
