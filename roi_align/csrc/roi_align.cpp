// RoIAlign: the operators torch.ops.roi_align.* and their CPU kernels (CUDA: roi_align_cuda.cu).
#include "align_registration.h"

#include "align_cpu.h"
#include "roi_sampler.h"

GAIC_ALIGN_LIBRARY(roi_align)
GAIC_ALIGN_KERNELS(roi_align, RoiSampler, CPU, align_forward_cpu, align_backward_cpu)
