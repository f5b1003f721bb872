// RoDAlign's CUDA kernels, for the operators defined in rod_align.cpp.
#include "align_registration.h"

#include "align_cuda.cuh"
#include "rod_sampler.h"

GAIC_ALIGN_KERNELS(rod_align, RodSampler, CUDA, align_forward_cuda, align_backward_cuda)
