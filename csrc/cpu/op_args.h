// Argument checks shared by the ops whose messages name the op and the argument every tensor must share a
// device with (select_step, frame_begin, frame_end); used by their CPU files, which the CUDA glue calls.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace autogaze_ext {

struct OpArgs {
  const char* op;
  const at::Tensor& ref;  // every argument must be on its device
  const char* ref_name;

  void typed(const at::Tensor& t, const char* name, at::ScalarType dtype) const {
    TORCH_CHECK(t.scalar_type() == dtype, op, ": ", name, " must be ", dtype, ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " on ",
                ref.device());
  }
  void scalar(const at::Tensor& t, const char* name) const {
    TORCH_CHECK(t.numel() == 1, op, ": ", name, " must hold one element, got shape ", t.sizes());
  }
  void in_place(const at::Tensor& t, const char* name) const {
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " is updated in place and must be contiguous");
  }
};

}  // namespace autogaze_ext
