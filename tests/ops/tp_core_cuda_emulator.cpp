// CPU emulation of kernels/tp_core.cu, for tests on machines without a GPU.
//
// The kernel source is compiled as plain C++ (SCIML_TP_CORE_HOST_EMULATION) and each launch runs
// the grid block by block, one std::thread per CUDA thread, with a real barrier for __syncthreads
// and one shared-memory buffer per block. So the kernel's indexing, masking, piece splitting and
// shared-memory reductions run exactly as written; what is not emulated is the GPU memory model
// beyond __syncthreads (warps, caches) and the speed. Built by tests/ops/test_tp_kernels_gpu.py.

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
namespace emulation {
cudaError_t last_error = cudaSuccess;
}
inline cudaError_t cudaGetLastError() {
  const cudaError_t error = emulation::last_error;
  emulation::last_error = cudaSuccess;
  return error;
}
inline const char* cudaGetErrorString(cudaError_t code) {
  return code == cudaSuccess ? "no error" : "invalid argument";
}

namespace emulation {

class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const long generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      condition_.notify_all();
    } else {
      condition_.wait(lock, [&] { return generation != generation_; });
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable condition_;
  int count_;
  int arrived_ = 0;
  long generation_ = 0;
};

thread_local dim3 thread_index;
dim3 block_index, block_dim;
Barrier* barrier = nullptr;
}  // namespace emulation

namespace {
// The kernel's `extern __shared__ ... shared_bytes[]` (in the same unnamed namespace) binds to this.
alignas(16) unsigned char shared_bytes[48 * 1024];
}  // namespace

#define threadIdx emulation::thread_index
#define blockIdx emulation::block_index
#define blockDim emulation::block_dim
#define __syncthreads() emulation::barrier->wait()
#define __global__
#define __shared__
#define __align__(n)

template <typename Kernel, typename Args>
void emulate_launch(Kernel kernel, dim3 grid, dim3 block, std::size_t shared, const Args& args) {
  if (shared > 48 * 1024 || block.x * block.y * block.z > 1024) {  // CUDA's default launch limits
    emulation::last_error = cudaErrorInvalidValue;
    return;
  }
  const int threads = static_cast<int>(block.x * block.y * block.z);
  emulation::block_dim = block;
  for (unsigned int by = 0; by < grid.y; ++by) {
    for (unsigned int bx = 0; bx < grid.x; ++bx) {
      emulation::block_index = dim3(bx, by);
      emulation::Barrier barrier(threads);
      emulation::barrier = &barrier;
      std::vector<std::thread> workers;
      for (unsigned int ty = 0; ty < block.y; ++ty) {
        for (unsigned int tx = 0; tx < block.x; ++tx) {
          workers.emplace_back([=] {
            emulation::thread_index = dim3(tx, ty);
            kernel(args);
          });
        }
      }
      for (auto& worker : workers) worker.join();
    }
  }
}

#define SCIML_TP_CORE_HOST_EMULATION
#include "tp_core.cu"
