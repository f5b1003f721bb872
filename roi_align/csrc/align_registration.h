// The one registration pattern of both ops, after pytorch/extension-cpp: namespace `ns` holds
// torch.ops.ns.ns (the forward) and torch.ops.ns.ns_backward, defined once per namespace and
// implemented once per backend. Each op's shells are one macro line each:
//   <ns>.cpp:      GAIC_ALIGN_LIBRARY(ns) and GAIC_ALIGN_KERNELS(ns, Sampler, CPU, align_forward_cpu, ...)
//   <ns>_cuda.cu:  GAIC_ALIGN_KERNELS(ns, Sampler, CUDA, align_forward_cuda, ...)
// Errors name the op by its schema name ("ns" or "ns_backward").
#pragma once

#include <Python.h>
#include <torch/library.h>

// The schemas, and the Python module `ns._C` whose import loads this library (and so
// registers them). Once per namespace.
#define GAIC_ALIGN_LIBRARY(ns)                                                                                \
  extern "C" PyObject* PyInit__C(void) {                                                                     \
    static PyModuleDef module = {PyModuleDef_HEAD_INIT, #ns "._C", #ns " CPU/CUDA kernels", -1, nullptr};    \
    return PyModule_Create(&module);                                                                         \
  }                                                                                                          \
  TORCH_LIBRARY(ns, m) {                                                                                     \
    m.def(#ns "(Tensor features, Tensor rois, int aligned_height, int aligned_width, float spatial_scale, "   \
              "bool avg_pool=False) -> Tensor");                                                             \
    m.def(#ns "_backward(Tensor grad_output, Tensor rois, float spatial_scale, SymInt batch_size, "          \
              "SymInt height, SymInt width, bool avg_pool=False) -> Tensor");                                \
  }

// The kernels of backend `key` (CPU, CUDA): `forward` and `backward` (align_cpu.h, align_cuda.cuh)
// instantiated with the op's Sampler (align_common.h).
#define GAIC_ALIGN_KERNELS(ns, Sampler, key, forward, backward)                                               \
  TORCH_LIBRARY_IMPL(ns, key, m) {                                                                           \
    m.impl(#ns, [](const at::Tensor& features, const at::Tensor& rois, int64_t aligned_height,               \
                   int64_t aligned_width, double spatial_scale, bool avg_pool) {                             \
      return gaic_align::forward<gaic_align::Sampler>(#ns, features, rois, aligned_height, aligned_width,    \
                                                      spatial_scale, avg_pool);                              \
    });                                                                                                      \
    m.impl(#ns "_backward", [](const at::Tensor& grad_output, const at::Tensor& rois, double spatial_scale,  \
                               int64_t batch_size, int64_t height, int64_t width, bool avg_pool) {           \
      return gaic_align::backward<gaic_align::Sampler>(#ns "_backward", grad_output, rois, spatial_scale,    \
                                                       batch_size, height, width, avg_pool);                 \
    });                                                                                                      \
  }
