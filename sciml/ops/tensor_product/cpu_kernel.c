/* Sparse tensor-product core on the CPU (see sciml/ops/tensor_product/core.py for the contract).
 *
 * The Python side compiles a plan and an output slot into a "program" (cpu.py): paths, each with
 * its channel count U and which inputs are broadcast over channels; groups of Clebsch-Gordan
 * entries writing the same output component; per entry the column of each of the three inputs in
 * its row and the coefficient. For every output row (in parallel, OpenMP; the kernel zeroes the
 * row first) and every term of that row (CSR order: deterministic, no atomics), each group
 * accumulates its entries in a register block of channels and writes the output once.
 *
 * An operand may be a column selection of the tensor passed in its slot (core.CorePlan.columns,
 * e.g. features in e3nn's mul_ir layout read in the core's ir_mul order): the driver copies the
 * selected columns of each input row into a per-thread row buffer in cache, and sums the output
 * row, computed in a buffer, into the selected columns of the zeroed tensor row. So a layout
 * change costs no pass over memory of its own.
 *
 * The per-term arithmetic is a function TERM(rows, out, num_paths, paths, groups, offsets, values):
 * the generic one reads the program's tables; cpu_codegen.py writes one with the tables as
 * constants and compiles it with this file's driver (SCIML_DRIVER_ONLY: no generic kernels).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* 64-byte vectors (one AVX-512 register, two AVX2 registers); unaligned access allowed */
typedef float vec_f32 __attribute__((vector_size(64), aligned(4)));
typedef double vec_f64 __attribute__((vector_size(64), aligned(8)));

/* One path's groups for a fixed pattern of inputs (compile-time): B0, B1 = 1 if input 0/1 is
 * broadcast over channels (folded into the scalar f) else a vector over channels; B2 likewise, or
 * 2 when input 2 is the per-channel scale, which is the same for every entry of a path and so
 * multiplies the accumulated block once instead of every entry. Full blocks of channels use
 * explicit vector types (the compiler otherwise vectorises the entry loop with gathers, 5-10x
 * slower); a channel tail runs scalar. */
#define ENTRY_TERM(REAL, VEC, B0, B1, B2, E, TERM)                                                      \
    VEC TERM = {0};                                                                                    \
    {                                                                                                  \
        const int64_t *q = offsets + 3 * (E);                                                          \
        const REAL *x = row[0] + q[0], *y = row[1] + q[1], *w = row[2] + q[2];                         \
        TERM += (REAL)values[E] * (B0 ? x[0] : 1) * (B1 ? y[0] : 1) * (B2 == 1 ? w[0] : 1);             \
        if (!B0) TERM *= *(const VEC *)(x + u0);                                                       \
        if (!B1) TERM *= *(const VEC *)(y + u0);                                                       \
        if (B2 == 0) TERM *= *(const VEC *)(w + u0);                                                   \
    }

#define GROUP_LOOP(REAL, VEC, B0, B1, B2)                                                               \
    for (int64_t g = path[4]; g < path[5]; ++g) {                                                      \
        const int64_t *G = groups + 3 * g;                                                             \
        const int64_t lanes = (int64_t)(sizeof(VEC) / sizeof(REAL));                                    \
        const REAL *scale = row[2] + path[7];                                                          \
        int64_t u0 = 0;                                                                                \
        for (; u0 + lanes <= channels; u0 += lanes) {                                                  \
            VEC acc = {0}, acc1 = {0};  /* two chains hide the add latency */                          \
            int64_t e = G[1];                                                                          \
            for (; e + 1 < G[2]; e += 2) {                                                             \
                ENTRY_TERM(REAL, VEC, B0, B1, B2, e, term0)                                            \
                ENTRY_TERM(REAL, VEC, B0, B1, B2, e + 1, term1)                                        \
                acc += term0;                                                                          \
                acc1 += term1;                                                                         \
            }                                                                                          \
            if (e < G[2]) { ENTRY_TERM(REAL, VEC, B0, B1, B2, e, term0) acc += term0; }                 \
            acc += acc1;                                                                               \
            if (B2 == 2) acc *= *(const VEC *)(scale + u0);                                            \
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
                acc += (REAL)values[e] * (B0 ? x[0] : x[u0]) * (B1 ? y[0] : y[u0])                      \
                       * (B2 == 1 ? w[0] : B2 == 2 ? 1 : w[u0]);                                       \
            }                                                                                          \
            if (B2 == 2) acc *= scale[u0];                                                             \
            out_row[G[0] + (out_broadcast ? 0 : u0)] += acc;                                           \
        }                                                                                              \
    }

/* A row buffer of ``width`` reals per thread, cache-line aligned (NULL where no selection needs one). */
static inline void *row_buffer(const int64_t *columns, int64_t width, size_t real) {
    void *buffer = NULL;
    if (columns && posix_memalign(&buffer, 64, (size_t)width * real + 64) != 0) buffer = NULL;
    return buffer;
}

/* An input row as its operand: the tensor row itself, or its selected columns copied into buffer. */
#define DEFINE_STAGING(SUFFIX, REAL)                                                                   \
static inline const REAL *select_##SUFFIX(const REAL *row, const int64_t *columns, int64_t width,     \
                                          REAL *buffer) {                                             \
    if (!columns) return row;                                                                         \
    for (int64_t c = 0; c < width; ++c) buffer[c] = row[columns[c]];                                   \
    return buffer;                                                                                    \
}                                                                                                     \
/* The operand row computed in ``buffer`` summed into the selected columns of the zeroed tensor row */ \
static inline void scatter_##SUFFIX(REAL *row, int64_t row_width, const int64_t *columns, int64_t width, \
                                    const REAL *buffer) {                                             \
    memset(row, 0, (size_t)row_width * sizeof(REAL));                                                 \
    for (int64_t c = 0; c < width; ++c) row[columns[c]] += buffer[c];                                  \
}

DEFINE_STAGING(f32, float)
DEFINE_STAGING(f64, double)

/* The core over output rows (see the top of the file). Slots in kernel order: inputs 0..2, then the
 * output (3); per slot the tensor's row stride ``widths``, the column selection ``columns`` (NULL:
 * operand column c is tensor column c) and the operand width ``selected``. The output tensor row
 * is zeroed; without a selection the term adds straight into it. */
#define DEFINE_DRIVER(NAME, SUFFIX, REAL, TERM)                                                        \
void NAME(int64_t out_rows, const int64_t *ptr, const int64_t *order, REAL *const *inputs,             \
          const int64_t *const *rowmaps, const int64_t *widths, const int64_t *const *columns,         \
          const int64_t *selected, REAL *out, int64_t num_paths, const int64_t *paths,                 \
          const int64_t *groups, const int64_t *offsets, const double *values, int num_threads) {      \
    _Pragma("omp parallel num_threads(num_threads)")                                                   \
    {                                                                                                  \
        REAL *buffer[4];                                                                               \
        for (int k = 0; k < 4; ++k) buffer[k] = (REAL *)row_buffer(columns[k], selected[k], sizeof(REAL)); \
        _Pragma("omp for schedule(dynamic, 16)")                                                       \
        for (int64_t n = 0; n < out_rows; ++n) {                                                       \
            REAL *out_row = out + n * widths[3];                                                       \
            REAL *acc = columns[3] ? buffer[3] : out_row; /* rows are owned by one thread */           \
            memset(acc, 0, (size_t)(columns[3] ? selected[3] : widths[3]) * sizeof(REAL));             \
            for (int64_t t = ptr[n]; t < ptr[n + 1]; ++t) {                                            \
                const int64_t z = order ? order[t] : t;                                                \
                const REAL *row[3];                                                                    \
                for (int k = 0; k < 3; ++k)                                                            \
                    row[k] = select_##SUFFIX(inputs[k] + (rowmaps[k] ? rowmaps[k][z] : z) * widths[k], \
                                             columns[k], selected[k], buffer[k]);                      \
                TERM(row, acc, num_paths, paths, groups, offsets, values);                             \
            }                                                                                          \
            if (columns[3]) scatter_##SUFFIX(out_row, widths[3], columns[3], selected[3], acc);        \
        }                                                                                              \
        for (int k = 0; k < 4; ++k) free(buffer[k]);                                                   \
    }                                                                                                  \
}

/* All three input gradients of a forward core in one pass, for plans where every path has input a
 * and the output per-channel and input b broadcast (the channelwise product: features x edge
 * harmonics with per-edge weights); s per-channel or broadcast. Rows are the terms (identity row
 * maps). With o = c a b s summed over entries: grad_a += c b s g, grad_b += c sum_u a s g,
 * grad_s += c b a g; a, b, s and g are read once instead of once per gradient. Slots a, b, s, g
 * (grad_a, grad_b, grad_s in the same tensors' layouts) may be column selections, as in the driver. */
#define DEFINE_GRADIENTS_DRIVER(NAME, SUFFIX, REAL, TERM)                                              \
void NAME(int64_t terms, REAL *const *tensors, REAL *const *grads, const int64_t *widths,               \
          const int64_t *const *columns, const int64_t *selected, int64_t num_paths, const int64_t *paths, \
          const int64_t *indices, const double *values, int num_threads) {                              \
    _Pragma("omp parallel num_threads(num_threads)")                                                    \
    {                                                                                                   \
        REAL *in_buffer[4], *out_buffer[3];                                                             \
        for (int k = 0; k < 4; ++k) in_buffer[k] = (REAL *)row_buffer(columns[k], selected[k], sizeof(REAL)); \
        for (int k = 0; k < 3; ++k) out_buffer[k] = (REAL *)row_buffer(columns[k], selected[k], sizeof(REAL)); \
        _Pragma("omp for schedule(dynamic, 16)")                                                        \
        for (int64_t z = 0; z < terms; ++z) {                                                           \
            const REAL *in[4];                                                                          \
            REAL *out[3];                                                                               \
            for (int k = 0; k < 4; ++k)                                                                 \
                in[k] = select_##SUFFIX(tensors[k] + z * widths[k], columns[k], selected[k], in_buffer[k]); \
            for (int k = 0; k < 3; ++k) {                                                               \
                out[k] = columns[k] ? out_buffer[k] : grads[k] + z * widths[k];                         \
                memset(out[k], 0, (size_t)(columns[k] ? selected[k] : widths[k]) * sizeof(REAL));       \
            }                                                                                           \
            TERM(in, out, num_paths, paths, indices, values);                                           \
            for (int k = 0; k < 3; ++k)                                                                 \
                if (columns[k]) scatter_##SUFFIX(grads[k] + z * widths[k], widths[k], columns[k], selected[k], out[k]); \
        }                                                                                               \
        for (int k = 0; k < 4; ++k) free(in_buffer[k]);                                                 \
        for (int k = 0; k < 3; ++k) free(out_buffer[k]);                                                \
    }                                                                                                   \
}

#ifndef SCIML_DRIVER_ONLY
/* paths: (P, 8), rows of cpu_codegen.ProgramPath = channels, pattern of inputs 0..2 (see GROUP_LOOP),
 * group begin, group end, output broadcast, column of the hoisted scale (input 2).
 * groups: (G, 3) = output column (component offset; + channel for vector outputs), entry begin, end.
 * offsets: (n, 3) column of each input for the entry (component offset, channel 0). */
#define DEFINE_GENERIC_TERM(NAME, REAL, VEC)                                                           \
static void NAME(const REAL *const *row, REAL *out_row, int64_t num_paths, const int64_t *paths,       \
                 const int64_t *groups, const int64_t *offsets, const double *values) {               \
    for (int64_t p = 0; p < num_paths; ++p) {                                                         \
        const int64_t *path = paths + 8 * p;                                                          \
        const int64_t channels = path[0];                                                             \
        const int out_broadcast = (int)path[6];                                                       \
        const int pattern = (int)(path[1] * 6 + path[2] * 3 + path[3]);                               \
        switch (pattern) {                                                                            \
            case 0: GROUP_LOOP(REAL, VEC, 0, 0, 0) break;                                             \
            case 1: GROUP_LOOP(REAL, VEC, 0, 0, 1) break;                                             \
            case 2: GROUP_LOOP(REAL, VEC, 0, 0, 2) break;                                             \
            case 3: GROUP_LOOP(REAL, VEC, 0, 1, 0) break;                                             \
            case 4: GROUP_LOOP(REAL, VEC, 0, 1, 1) break;                                             \
            case 5: GROUP_LOOP(REAL, VEC, 0, 1, 2) break;                                             \
            case 6: GROUP_LOOP(REAL, VEC, 1, 0, 0) break;                                             \
            case 7: GROUP_LOOP(REAL, VEC, 1, 0, 1) break;                                             \
            case 8: GROUP_LOOP(REAL, VEC, 1, 0, 2) break;                                             \
            case 9: GROUP_LOOP(REAL, VEC, 1, 1, 0) break;                                             \
            case 10: GROUP_LOOP(REAL, VEC, 1, 1, 1) break;                                            \
            case 11: GROUP_LOOP(REAL, VEC, 1, 1, 2) break;                                            \
        }                                                                                             \
    }                                                                                                 \
}

DEFINE_GENERIC_TERM(generic_term_f32, float, vec_f32)
DEFINE_GENERIC_TERM(generic_term_f64, double, vec_f64)
DEFINE_DRIVER(sciml_tp_core_f32, f32, float, generic_term_f32)
DEFINE_DRIVER(sciml_tp_core_f64, f64, double, generic_term_f64)

#define PATH_COLUMNS 11  /* core.PathRow: the rows of core.CorePlan.paths */
#define MAX_COMPONENTS 64 /* 2l+1 of input b; harmonics go to l = 16 */

#define DEFINE_GENERIC_GRADIENTS_TERM(NAME, REAL, VEC)                                                  \
static void NAME(const REAL *const *in, REAL *const *out, int64_t num_paths, const int64_t *paths,      \
                 const int64_t *indices, const double *values) {                                        \
    const int64_t lanes = (int64_t)(sizeof(VEC) / sizeof(REAL));                                        \
    const REAL *ar = in[0], *br = in[1], *sr = in[2], *gr = in[3];                                      \
    REAL *gar = out[0], *gbr = out[1], *gsr = out[2];                                                   \
    for (int64_t p = 0; p < num_paths; ++p) {                                                           \
        const int64_t *P = paths + PATH_COLUMNS * p;                                                    \
        const int64_t U = P[8];                                                                         \
        const int bc_s = (int)P[6];                                                                     \
        const REAL *ap = ar + P[0], *bp = br + P[1], *sp = sr + P[2], *gp = gr + P[3];                  \
        REAL *gap = gar + P[0], *gbp = gbr + P[1], *gsp = gsr + P[2];                                   \
        int64_t u0 = 0;                                                                                 \
        for (; u0 + lanes <= U; u0 += lanes) {                                                          \
            VEC sv = {0};                                                                               \
            if (bc_s) sv += sp[0]; else sv = *(const VEC *)(sp + u0);                                   \
            VEC gs_acc = {0}, gb_acc[MAX_COMPONENTS];                                                   \
            int64_t components = 0;                                                                     \
            for (int64_t e = P[9]; e < P[10]; ++e) {                                                    \
                const int64_t *q = indices + 3 * e;                                                     \
                for (; components <= q[1]; ++components) gb_acc[components] = (VEC){0};                 \
                const REAL c = (REAL)values[e], cb = c * bp[q[1]];                                      \
                const VEC av = *(const VEC *)(ap + q[0] * U + u0);                                      \
                const VEC gv = *(const VEC *)(gp + q[2] * U + u0);                                      \
                *(VEC *)(gap + q[0] * U + u0) += (cb * gv) * sv;                                        \
                const VEC ag = av * gv;                                                                 \
                gs_acc += cb * ag;                                                                      \
                gb_acc[q[1]] += c * ag;  /* summed over channels once per block, below */               \
            }                                                                                           \
            for (int64_t j = 0; j < components; ++j) {                                                  \
                const VEC t = gb_acc[j] * sv;                                                           \
                REAL sum = 0;                                                                           \
                for (int64_t l = 0; l < lanes; ++l) sum += t[l];                                        \
                gbp[j] += sum;                                                                          \
            }                                                                                           \
            if (bc_s) { REAL sum = 0; for (int64_t l = 0; l < lanes; ++l) sum += gs_acc[l]; gsp[0] += sum; }\
            else *(VEC *)(gsp + u0) += gs_acc;                                                          \
        }                                                                                               \
        for (; u0 < U; ++u0) {                                                                          \
            const REAL sv = bc_s ? sp[0] : sp[u0];                                                      \
            REAL gs_acc = 0;                                                                            \
            for (int64_t e = P[9]; e < P[10]; ++e) {                                                    \
                const int64_t *q = indices + 3 * e;                                                     \
                const REAL c = (REAL)values[e], cb = c * bp[q[1]];                                      \
                const REAL av = ap[q[0] * U + u0], gv = gp[q[2] * U + u0];                              \
                gap[q[0] * U + u0] += cb * gv * sv;                                                     \
                gs_acc += cb * av * gv;                                                                 \
                gbp[q[1]] += c * av * gv * sv;                                                          \
            }                                                                                           \
            gsp[bc_s ? 0 : u0] += gs_acc;                                                               \
        }                                                                                               \
    }                                                                                                   \
}

DEFINE_GENERIC_GRADIENTS_TERM(generic_gradients_f32, float, vec_f32)
DEFINE_GENERIC_GRADIENTS_TERM(generic_gradients_f64, double, vec_f64)
DEFINE_GRADIENTS_DRIVER(sciml_tp_gradients_f32, f32, float, generic_gradients_f32)
DEFINE_GRADIENTS_DRIVER(sciml_tp_gradients_f64, f64, double, generic_gradients_f64)
#endif /* SCIML_DRIVER_ONLY */
