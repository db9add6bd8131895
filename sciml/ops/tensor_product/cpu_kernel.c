/* Sparse tensor-product core on the CPU (see sciml/ops/tensor_product/core.py for the contract).
 *
 * The Python side compiles a plan and an output slot into a "program" (cpu.py): paths, each with
 * its channel count U and which inputs are broadcast over channels; groups of Clebsch-Gordan
 * entries writing the same output component; per entry the column of each of the three inputs in
 * its row and the coefficient. For every output row (in parallel, OpenMP; the kernel zeroes the
 * row first) and every term of that row (CSR order: deterministic, no atomics), each group
 * accumulates its entries in a register block of channels and writes the output once.
 */
#include <stdint.h>
#include <string.h>

/* 64-byte vectors (one AVX-512 register, two AVX2 registers); unaligned access allowed */
typedef float vec_f32 __attribute__((vector_size(64), aligned(4)));
typedef double vec_f64 __attribute__((vector_size(64), aligned(8)));

/* One path's groups for a fixed pattern of broadcast inputs (B0, B1, B2: compile-time 0/1):
 * broadcast inputs fold into the scalar f, the others are vectors over channels. Full blocks of
 * LANES channels use explicit vector types (the compiler otherwise vectorises the entry loop with
 * gathers, 5-10x slower); a channel tail runs scalar. */
#define GROUP_LOOP(REAL, VEC, B0, B1, B2)                                                               \
    for (int64_t g = path[4]; g < path[5]; ++g) {                                                      \
        const int64_t *G = groups + 3 * g;                                                             \
        const int64_t lanes = (int64_t)(sizeof(VEC) / sizeof(REAL));                                    \
        int64_t u0 = 0;                                                                                \
        for (; u0 + lanes <= channels; u0 += lanes) {                                                  \
            VEC acc = {0};                                                                             \
            for (int64_t e = G[1]; e < G[2]; ++e) {                                                    \
                const int64_t *q = offsets + 3 * e;                                                    \
                const REAL *x = row[0] + q[0], *y = row[1] + q[1], *w = row[2] + q[2];                 \
                const REAL f = (REAL)values[e] * (B0 ? x[0] : 1) * (B1 ? y[0] : 1) * (B2 ? w[0] : 1);   \
                VEC term = {0};                                                                        \
                term += f;                                                                             \
                if (!B0) term *= *(const VEC *)(x + u0);                                               \
                if (!B1) term *= *(const VEC *)(y + u0);                                               \
                if (!B2) term *= *(const VEC *)(w + u0);                                               \
                acc += term;                                                                           \
            }                                                                                          \
            if (out_broadcast) {                                                                       \
                REAL sum = 0;                                                                          \
                for (int64_t u = 0; u < lanes; ++u) sum += acc[u];                                     \
                out_row[G[0]] += sum;                                                                  \
            } else {                                                                                   \
                *(VEC *)(out_row + G[0] + u0) += acc;                                                  \
            }                                                                                          \
        }                                                                                              \
        for (; u0 < channels; ++u0) {                                                                  \
            REAL acc = 0;                                                                              \
            for (int64_t e = G[1]; e < G[2]; ++e) {                                                    \
                const int64_t *q = offsets + 3 * e;                                                    \
                const REAL *x = row[0] + q[0], *y = row[1] + q[1], *w = row[2] + q[2];                 \
                acc += (REAL)values[e] * (B0 ? x[0] : x[u0]) * (B1 ? y[0] : y[u0]) * (B2 ? w[0] : w[u0]); \
            }                                                                                          \
            out_row[G[0] + (out_broadcast ? 0 : u0)] += acc;                                           \
        }                                                                                              \
    }

/* paths: (P, 7) = channels, broadcast flag of inputs 0..2, group begin, group end, output broadcast.
 * groups: (G, 3) = output column (component offset; + channel for vector outputs), entry begin, end.
 * offsets: (n, 3) column of each input for the entry (component offset, channel 0). */
#define DEFINE_CORE(NAME, REAL, VEC)                                                                       \
void NAME(int64_t out_rows, const int64_t *ptr, const int64_t *order, REAL *const *inputs,             \
          const int64_t *const *rowmaps, const int64_t *widths, REAL *out, int64_t out_width,          \
          int64_t num_paths, const int64_t *paths, const int64_t *groups, const int64_t *offsets,      \
          const double *values, int num_threads) {                                                     \
    _Pragma("omp parallel for schedule(dynamic, 16) num_threads(num_threads)")                         \
    for (int64_t n = 0; n < out_rows; ++n) {                                                          \
        REAL *out_row = out + n * out_width;                                                          \
        memset(out_row, 0, (size_t)out_width * sizeof(REAL));  /* rows are owned by one thread */     \
        for (int64_t t = ptr[n]; t < ptr[n + 1]; ++t) {                                               \
            const int64_t z = order ? order[t] : t;                                                   \
            const REAL *row[3];                                                                       \
            for (int k = 0; k < 3; ++k) row[k] = inputs[k] + (rowmaps[k] ? rowmaps[k][z] : z) * widths[k]; \
            for (int64_t p = 0; p < num_paths; ++p) {                                                 \
                const int64_t *path = paths + 7 * p;                                                  \
                const int64_t channels = path[0];                                                     \
                const int out_broadcast = (int)path[6];                                               \
                const int pattern = (int)(path[1] * 4 + path[2] * 2 + path[3]);                       \
                switch (pattern) {                                                                    \
                    case 0: GROUP_LOOP(REAL, VEC, 0, 0, 0) break;                                     \
                    case 1: GROUP_LOOP(REAL, VEC, 0, 0, 1) break;                                     \
                    case 2: GROUP_LOOP(REAL, VEC, 0, 1, 0) break;                                     \
                    case 3: GROUP_LOOP(REAL, VEC, 0, 1, 1) break;                                     \
                    case 4: GROUP_LOOP(REAL, VEC, 1, 0, 0) break;                                     \
                    case 5: GROUP_LOOP(REAL, VEC, 1, 0, 1) break;                                     \
                    case 6: GROUP_LOOP(REAL, VEC, 1, 1, 0) break;                                     \
                    default: GROUP_LOOP(REAL, VEC, 1, 1, 1) break;                                    \
                }                                                                                     \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
}

DEFINE_CORE(sciml_tp_core_f32, float, vec_f32)
DEFINE_CORE(sciml_tp_core_f64, double, vec_f64)
