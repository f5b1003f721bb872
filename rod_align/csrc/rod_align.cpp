// RoDAlign operators (torch.ops.rod_align.*) and their CPU kernels. The CUDA kernels are
// registered from rod_align_cuda.cu when the extension is built with CUDA.
#include <Python.h>
#include <torch/library.h>

#include "align_cpu.h"
#include "rod_sampler.h"

namespace {

at::Tensor rod_align_cpu(const at::Tensor& features, const at::Tensor& rois, int64_t aligned_height,
                         int64_t aligned_width, double spatial_scale, bool avg_pool) {
  return gaic_align::align_forward_cpu<gaic_align::RodSampler>("rod_align", features, rois, aligned_height,
                                                               aligned_width, spatial_scale, avg_pool);
}

at::Tensor rod_align_backward_cpu(const at::Tensor& grad_output, const at::Tensor& rois, double spatial_scale,
                                  int64_t batch_size, int64_t height, int64_t width, bool avg_pool) {
  return gaic_align::align_backward_cpu<gaic_align::RodSampler>("rod_align_backward", grad_output, rois,
                                                                spatial_scale, batch_size, height, width, avg_pool);
}

}  // namespace

// Importing rod_align._C loads this library, which registers the operators.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "rod_align._C", "RoDAlign CPU/CUDA kernels", -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(rod_align, m) {
  m.def(
      "rod_align(Tensor features, Tensor rois, int aligned_height, int aligned_width, float spatial_scale, "
      "bool avg_pool=False) -> Tensor");
  m.def(
      "rod_align_backward(Tensor grad_output, Tensor rois, float spatial_scale, SymInt batch_size, SymInt height, "
      "SymInt width, bool avg_pool=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(rod_align, CPU, m) {
  m.impl("rod_align", &rod_align_cpu);
  m.impl("rod_align_backward", &rod_align_backward_cpu);
}
