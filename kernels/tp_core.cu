// Sparse tensor-product core on CUDA (contract: sciml/ops/tensor_product/core.py; the schedule it
// reads: sciml/ops/tensor_product/_kernel_schedule.py).
//
// For every output row n (terms order[ptr[n]:ptr[n+1]], receiver-sorted CSR) and every group g of
// entries writing the columns start_g + u:
//
//     out[n, start_g + u] += sum_terms sum_{e in g} c_e * x[row_x, col_x + u*step_x]
//                                                      * y[row_y, col_y + u*step_y] * w[row_w, col_w + u*step_w]
//
// or, for a group whose output is broadcast over channels ("reduce"), the same summed over u into
// the single column start_g.
//
// Parallelisation: a block is (block_u threads over channels) x (block_rows output rows); grid.x
// covers the rows, grid.y the pieces a long row is split into (partial rows, summed afterwards in a
// fixed order by the caller). A thread owns one (row, channel) pair and walks the row's terms and
// the group's entries serially, accumulating in a register, so each output element is written once
// per group by the thread that owns it: no atomics, bitwise reproducible. Reduce groups sum the
// block_u partials of a row with a fixed-shape tree in shared memory (deterministic too).
//
// This file includes no torch headers: the launchers below take raw pointers and a cudaStream_t,
// so it compiles standalone with `nvcc -c`; kernels/tp_core.cpp binds them to torch tensors.
// Apart from the launch statement, the code is plain C++: with SCIML_TP_CORE_HOST_EMULATION
// defined, tests/tp_core_cuda_emulator.cpp runs it on the CPU with one OS thread per CUDA thread
// (and a real barrier for __syncthreads), so its logic is tested on machines without a GPU.

#include <cstdint>
#ifndef SCIML_TP_CORE_HOST_EMULATION
#include <cuda_runtime.h>
#endif

namespace {

constexpr int kGroupColumns = 5;  // start, channels, reduce, begin, end
constexpr int kEntryColumns = 6;  // col_x, step_x, col_y, step_y, col_w, step_w

template <typename scalar_t>
struct CoreArgs {
  int64_t out_rows;
  const int64_t* __restrict__ ptr;
  const int64_t* __restrict__ order;
  const scalar_t* __restrict__ x;
  const scalar_t* __restrict__ y;
  const scalar_t* __restrict__ w;
  const int64_t* __restrict__ map_x;
  const int64_t* __restrict__ map_y;
  const int64_t* __restrict__ map_w;
  int64_t width_x, width_y, width_w;
  const int32_t* __restrict__ groups;
  int64_t num_groups;
  const int32_t* __restrict__ entries;
  const scalar_t* __restrict__ coefficients;
  scalar_t* __restrict__ destination;
  int64_t width_out;
  int64_t pieces;
};

template <typename scalar_t>
__global__ void sparse_core_kernel(const CoreArgs<scalar_t> args) {
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  scalar_t* partial = reinterpret_cast<scalar_t*>(shared_bytes);  // block_u x block_rows

  const int lane = threadIdx.x;
  const int block_u = blockDim.x;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const int64_t piece = blockIdx.y;
  const bool has_row = row < args.out_rows;

  int64_t t_begin = 0, t_end = 0;
  if (has_row) {
    const int64_t first = args.ptr[row];
    const int64_t count = args.ptr[row + 1] - first;
    t_begin = first + count * piece / args.pieces;
    t_end = first + count * (piece + 1) / args.pieces;
  }
  scalar_t* out = args.destination + (has_row ? (row * args.pieces + piece) * args.width_out : 0);
  scalar_t* my_partial = partial + threadIdx.y * block_u;

  // Loops over groups and channel blocks are uniform across the block (they depend on the plan
  // only), so the barriers inside them are reached by every thread.
  for (int64_t g = 0; g < args.num_groups; ++g) {
    const int32_t* group = args.groups + kGroupColumns * g;
    const int64_t start = group[0], channels = group[1];
    const bool reduce = group[2] != 0;
    const int64_t begin = group[3], end = group[4];
    for (int64_t u0 = 0; u0 < channels; u0 += block_u) {
      const int64_t u = u0 + lane;
      scalar_t acc = 0;
      if (u < channels) {
        for (int64_t t = t_begin; t < t_end; ++t) {
          const int64_t term = args.order[t];
          const scalar_t* row_x = args.x + args.map_x[term] * args.width_x;
          const scalar_t* row_y = args.y + args.map_y[term] * args.width_y;
          const scalar_t* row_w = args.w + args.map_w[term] * args.width_w;
          for (int64_t e = begin; e < end; ++e) {
            const int32_t* entry = args.entries + kEntryColumns * e;
            acc += args.coefficients[e] * row_x[entry[0] + u * entry[1]] * row_y[entry[2] + u * entry[3]] *
                   row_w[entry[4] + u * entry[5]];
          }
        }
      }
      if (!reduce) {
        if (has_row && u < channels) out[start + u] += acc;
      } else {
        my_partial[lane] = acc;
        __syncthreads();
        for (int stride = block_u / 2; stride > 0; stride /= 2) {  // block_u is a power of two
          if (lane < stride) my_partial[lane] += my_partial[lane + stride];
          __syncthreads();
        }
        if (has_row && lane == 0) out[start] += my_partial[0];
      }
      // Orders this group's writes before a later group that may touch the same columns from
      // another thread, and before the shared partials are reused.
      __syncthreads();
    }
  }
}

template <typename scalar_t>
int launch(const CoreArgs<scalar_t>& args, int block_u, int block_rows, void* stream) {
  if (args.out_rows == 0 || args.num_groups == 0) return static_cast<int>(cudaSuccess);
  if (block_u <= 0 || (block_u & (block_u - 1)) != 0 || block_rows <= 0 || block_u * block_rows > 1024 ||
      args.pieces <= 0 || args.pieces > 65535) {
    return static_cast<int>(cudaErrorInvalidValue);
  }
  const dim3 block(block_u, block_rows);
  const dim3 grid(static_cast<unsigned int>((args.out_rows + block_rows - 1) / block_rows),
                  static_cast<unsigned int>(args.pieces));
  const size_t shared = sizeof(scalar_t) * block_u * block_rows;
#ifdef SCIML_TP_CORE_HOST_EMULATION
  emulate_launch(sparse_core_kernel<scalar_t>, grid, block, shared, args);
#else
  sparse_core_kernel<scalar_t><<<grid, block, shared, static_cast<cudaStream_t>(stream)>>>(args);
#endif
  return static_cast<int>(cudaGetLastError());
}

template <typename scalar_t>
int run_core(int64_t out_rows, const int64_t* ptr, const int64_t* order, const void* x, const void* y,
             const void* w, const int64_t* map_x, const int64_t* map_y, const int64_t* map_w, int64_t width_x,
             int64_t width_y, int64_t width_w, const int32_t* groups, int64_t num_groups,
             const int32_t* entries, const void* coefficients, void* destination, int64_t width_out,
             int64_t pieces, int block_u, int block_rows, void* stream) {
  CoreArgs<scalar_t> args{out_rows,
                          ptr,
                          order,
                          static_cast<const scalar_t*>(x),
                          static_cast<const scalar_t*>(y),
                          static_cast<const scalar_t*>(w),
                          map_x,
                          map_y,
                          map_w,
                          width_x,
                          width_y,
                          width_w,
                          groups,
                          num_groups,
                          entries,
                          static_cast<const scalar_t*>(coefficients),
                          static_cast<scalar_t*>(destination),
                          width_out,
                          pieces};
  return launch(args, block_u, block_rows, stream);
}

}  // namespace

#define SCIML_TP_CORE_ARGS                                                                                 \
  int64_t out_rows, const int64_t *ptr, const int64_t *order, const void *x, const void *y, const void *w, \
      const int64_t *map_x, const int64_t *map_y, const int64_t *map_w, int64_t width_x, int64_t width_y,   \
      int64_t width_w, const int32_t *groups, int64_t num_groups, const int32_t *entries,                   \
      const void *coefficients, void *destination, int64_t width_out, int64_t pieces, int block_u,          \
      int block_rows, void *stream
#define SCIML_TP_CORE_FORWARD                                                                        \
  out_rows, ptr, order, x, y, w, map_x, map_y, map_w, width_x, width_y, width_w, groups, num_groups, \
      entries, coefficients, destination, width_out, pieces, block_u, block_rows, stream

// Launch the core on `stream` (a cudaStream_t); returns a cudaError_t (0 on success).
extern "C" int sciml_tp_core_cuda_f32(SCIML_TP_CORE_ARGS) { return run_core<float>(SCIML_TP_CORE_FORWARD); }
extern "C" int sciml_tp_core_cuda_f64(SCIML_TP_CORE_ARGS) { return run_core<double>(SCIML_TP_CORE_FORWARD); }
extern "C" const char* sciml_tp_core_cuda_error(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}
