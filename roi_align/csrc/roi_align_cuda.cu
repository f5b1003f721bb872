// RoIAlign's CUDA kernels, for the operators defined in roi_align.cpp.
#include "align_registration.h"

#include "align_cuda.cuh"
#include "roi_sampler.h"

GAIC_ALIGN_KERNELS(roi_align, RoiSampler, CUDA, align_forward_cuda, align_backward_cuda)
