// Input checks and preparation shared by the CPU and CUDA entry points of both ops.
// Errors name the op and the argument; value errors raise ValueError in Python.
#pragma once

#include <ATen/ATen.h>

#include <cmath>

namespace gaic_align {

inline void check_floating(const char* op, const char* name, const at::Tensor& tensor) {
  const auto dtype = tensor.scalar_type();
  TORCH_CHECK_VALUE(dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kFloat || dtype == at::kDouble, op,
                    ": ", name, " must be float16, bfloat16, float32 or float64, got ", dtype);
}

inline void check_common(const char* op, const at::Tensor& values, const char* values_name, const at::Tensor& rois,
                         int64_t height, int64_t width, int64_t aligned_height, int64_t aligned_width,
                         bool avg_pool) {
  check_floating(op, values_name, values);
  check_floating(op, "rois", rois);
  TORCH_CHECK_VALUE(rois.dim() == 2 && rois.size(1) == 5, op,
                    ": rois must have shape (K, 5) with rows (batch_index, x1, y1, x2, y2), got ", rois.sizes());
  TORCH_CHECK_VALUE(values.device() == rois.device(), op, ": ", values_name, " are on ", values.device(),
                    " but rois on ", rois.device());
  TORCH_CHECK_VALUE(height >= 2 && width >= 2, op, ": features need H >= 2 and W >= 2 for bilinear sampling, got H=",
                    height, ", W=", width);
  // The sampling grid needs two rows and columns; avg_pool samples one more each way.
  const int64_t min_size = avg_pool ? 1 : 2;
  TORCH_CHECK_VALUE(aligned_height >= min_size, op, ": aligned_height must be an integer >= ", min_size,
                    avg_pool ? " with avg_pool" : "", ", got ", aligned_height);
  TORCH_CHECK_VALUE(aligned_width >= min_size, op, ": aligned_width must be an integer >= ", min_size,
                    avg_pool ? " with avg_pool" : "", ", got ", aligned_width);
}

inline void check_forward_inputs(const char* op, const at::Tensor& features, const at::Tensor& rois,
                                 int64_t aligned_height, int64_t aligned_width, double spatial_scale,
                                 bool avg_pool) {
  TORCH_CHECK_VALUE(features.dim() == 4, op, ": features must have shape (B, C, H, W), got ", features.sizes());
  check_common(op, features, "features", rois, features.size(2), features.size(3), aligned_height, aligned_width,
               avg_pool);
  TORCH_CHECK_VALUE(std::isfinite(spatial_scale) && spatial_scale > 0, op,
                    ": spatial_scale must be finite and > 0, got ", spatial_scale);
}

inline void check_backward_inputs(const char* op, const at::Tensor& grad_output, const at::Tensor& rois,
                                  double spatial_scale, int64_t batch_size, int64_t height, int64_t width,
                                  bool avg_pool) {
  TORCH_CHECK_VALUE(grad_output.dim() == 4, op, ": grad_output must have shape (K, C, aligned_height, aligned_width), got ",
                    grad_output.sizes());
  check_common(op, grad_output, "grad_output", rois, height, width, grad_output.size(2), grad_output.size(3),
               avg_pool);
  TORCH_CHECK_VALUE(grad_output.size(0) == rois.size(0), op, ": grad_output has ", grad_output.size(0),
                    " rows but rois has ", rois.size(0));
  TORCH_CHECK_VALUE(batch_size >= 0, op, ": batch_size must be >= 0, got ", batch_size);
  TORCH_CHECK_VALUE(std::isfinite(spatial_scale) && spatial_scale > 0, op,
                    ": spatial_scale must be finite and > 0, got ", spatial_scale);
}

// Type of positions and accumulation: float64 stays, float16/bfloat16/float32 use float32.
inline at::ScalarType compute_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

// The rois contiguous in the compute dtype, ready for the kernels.
inline at::Tensor rois_for_kernels(const at::Tensor& rois, at::ScalarType values_dtype) {
  return rois.to(compute_dtype(values_dtype)).contiguous();
}

// Checks that every rois[:, 0] is an integer in [0, batch_size) (on CUDA this synchronises)
// and returns the rois ready for the kernels.
inline at::Tensor prepare_rois(const char* op, const at::Tensor& rois, at::ScalarType values_dtype,
                               int64_t batch_size) {
  const auto batch_index = rois.select(1, 0).to(at::kCPU, at::kDouble).contiguous();
  const double* index = batch_index.data_ptr<double>();
  for (int64_t row = 0; row < batch_index.numel(); ++row) {
    // Written so that NaN fails too.
    const bool valid = index[row] >= 0 && index[row] < static_cast<double>(batch_size) &&
                       index[row] == std::floor(index[row]);
    TORCH_CHECK_VALUE(valid, op, ": rois[", row, ", 0] = ", index[row],
                      " is not a batch index: expected an integer in [0, ", batch_size, ")");
  }
  return rois_for_kernels(rois, values_dtype);
}

}  // namespace gaic_align
