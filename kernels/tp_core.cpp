// Torch binding of the CUDA sparse tensor-product core (kernels/tp_core.cu), built on first use by
// sciml/ops/tensor_product/cuda.py with torch.utils.cpp_extension.load. It only checks the
// tensors and forwards their pointers: the kernel file itself knows nothing about torch, and the
// caller picks the device (torch.cuda.device) and passes the current stream as an integer.

#include <torch/extension.h>

#include <cstdint>

extern "C" {
int sciml_tp_core_cuda_f32(int64_t out_rows, const int64_t* ptr, const int64_t* order, const void* x, const void* y,
                           const void* w, const int64_t* map_x, const int64_t* map_y, const int64_t* map_w,
                           int64_t width_x, int64_t width_y, int64_t width_w, const int32_t* groups,
                           int64_t num_groups, const int32_t* entries, const void* coefficients, void* destination,
                           int64_t width_out, int64_t pieces, int block_u, int block_rows, void* stream);
int sciml_tp_core_cuda_f64(int64_t out_rows, const int64_t* ptr, const int64_t* order, const void* x, const void* y,
                           const void* w, const int64_t* map_x, const int64_t* map_y, const int64_t* map_w,
                           int64_t width_x, int64_t width_y, int64_t width_w, const int32_t* groups,
                           int64_t num_groups, const int32_t* entries, const void* coefficients, void* destination,
                           int64_t width_out, int64_t pieces, int block_u, int block_rows, void* stream);
const char* sciml_tp_core_cuda_error(int code);
}

namespace {

void check(const at::Tensor& tensor, const char* name, at::ScalarType dtype, int64_t dim, const at::Device& device) {
  TORCH_CHECK(tensor.device() == device, name, " must be on ", device, ", got ", tensor.device());
  TORCH_CHECK(tensor.scalar_type() == dtype, name, " must be ", dtype, ", got ", tensor.scalar_type());
  TORCH_CHECK(tensor.dim() == dim, name, " must have ", dim, " dimensions, got ", tensor.dim());
  TORCH_CHECK(tensor.is_contiguous(), name, " must be contiguous");
}

// destination (out_rows * pieces, width_out) += the core over the CSR ptr/order (see tp_core.cu).
void sparse_core(const at::Tensor& ptr, const at::Tensor& order, const at::Tensor& x, const at::Tensor& y,
                 const at::Tensor& w, const at::Tensor& map_x, const at::Tensor& map_y, const at::Tensor& map_w,
                 const at::Tensor& groups, const at::Tensor& entries, const at::Tensor& coefficients,
                 at::Tensor& destination, int64_t pieces, int64_t block_u, int64_t block_rows, int64_t stream) {
  const at::Device device = destination.device();
  TORCH_CHECK(device.is_cuda(), "the cuda tensor-product core needs CUDA tensors, got ", device);
  const at::ScalarType real = destination.scalar_type();
  TORCH_CHECK(real == at::kFloat || real == at::kDouble, "the cuda tensor-product core supports float32/float64");
  check(destination, "destination", real, 2, device);
  check(ptr, "ptr", at::kLong, 1, device);
  check(order, "order", at::kLong, 1, device);
  check(x, "x", real, 2, device);
  check(y, "y", real, 2, device);
  check(w, "w", real, 2, device);
  check(map_x, "map_x", at::kLong, 1, device);
  check(map_y, "map_y", at::kLong, 1, device);
  check(map_w, "map_w", at::kLong, 1, device);
  check(groups, "groups", at::kInt, 2, device);
  check(entries, "entries", at::kInt, 2, device);
  check(coefficients, "coefficients", real, 1, device);
  const int64_t out_rows = ptr.numel() - 1;
  TORCH_CHECK(out_rows >= 0 && pieces >= 1 && destination.size(0) == out_rows * pieces,
              "destination must have (out_rows * pieces) rows");
  TORCH_CHECK(groups.size(1) == 5 && entries.size(1) == 6 && coefficients.size(0) == entries.size(0),
              "malformed schedule");
  TORCH_CHECK(order.numel() == map_x.numel() && order.numel() == map_y.numel() && order.numel() == map_w.numel(),
              "row maps must have one entry per term");
  const auto launch = real == at::kFloat ? sciml_tp_core_cuda_f32 : sciml_tp_core_cuda_f64;
  const int code = launch(out_rows, ptr.data_ptr<int64_t>(), order.data_ptr<int64_t>(), x.data_ptr(), y.data_ptr(),
                          w.data_ptr(), map_x.data_ptr<int64_t>(), map_y.data_ptr<int64_t>(),
                          map_w.data_ptr<int64_t>(), x.size(1), y.size(1), w.size(1), groups.data_ptr<int32_t>(),
                          groups.size(0), entries.data_ptr<int32_t>(), coefficients.data_ptr(),
                          destination.data_ptr(), destination.size(1), pieces, static_cast<int>(block_u),
                          static_cast<int>(block_rows), reinterpret_cast<void*>(stream));
  TORCH_CHECK(code == 0, "tensor-product CUDA kernel launch failed: ", sciml_tp_core_cuda_error(code));
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("sparse_core", &sparse_core, "Sparse tensor-product core on CUDA (adds into destination)");
}
