// RoDAlign: the operators torch.ops.rod_align.* and their CPU kernels (CUDA: rod_align_cuda.cu).
#include "align_registration.h"

#include "align_cpu.h"
#include "rod_sampler.h"

GAIC_ALIGN_LIBRARY(rod_align)
GAIC_ALIGN_KERNELS(rod_align, RodSampler, CPU, align_forward_cpu, align_backward_cpu)
