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

/* paths: (P, 8) = channels, pattern of inputs 0..2 (see GROUP_LOOP), group begin, group end, output
 * broadcast, column of the hoisted scale (input 2).
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
                const int64_t *path = paths + 8 * p;                                                  \
                const int64_t channels = path[0];                                                     \
                const int out_broadcast = (int)path[6];                                               \
                const int pattern = (int)(path[1] * 6 + path[2] * 3 + path[3]);                       \
                switch (pattern) {                                                                    \
                    case 0: GROUP_LOOP(REAL, VEC, 0, 0, 0) break;                                     \
                    case 1: GROUP_LOOP(REAL, VEC, 0, 0, 1) break;                                     \
                    case 2: GROUP_LOOP(REAL, VEC, 0, 0, 2) break;                                     \
                    case 3: GROUP_LOOP(REAL, VEC, 0, 1, 0) break;                                     \
                    case 4: GROUP_LOOP(REAL, VEC, 0, 1, 1) break;                                     \
                    case 5: GROUP_LOOP(REAL, VEC, 0, 1, 2) break;                                     \
                    case 6: GROUP_LOOP(REAL, VEC, 1, 0, 0) break;                                     \
                    case 7: GROUP_LOOP(REAL, VEC, 1, 0, 1) break;                                     \
                    case 8: GROUP_LOOP(REAL, VEC, 1, 0, 2) break;                                     \
                    case 9: GROUP_LOOP(REAL, VEC, 1, 1, 0) break;                                     \
                    case 10: GROUP_LOOP(REAL, VEC, 1, 1, 1) break;                                    \
                    case 11: GROUP_LOOP(REAL, VEC, 1, 1, 2) break;                                    \
                }                                                                                     \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
}

DEFINE_CORE(sciml_tp_core_f32, float, vec_f32)
DEFINE_CORE(sciml_tp_core_f64, double, vec_f64)

/* All three input gradients of a forward core in one pass, for plans where every path has input a
 * and the output per-channel and input b broadcast (the channelwise product: features x edge
 * harmonics with per-edge weights); s per-channel or broadcast. Rows are the terms (identity row
 * maps). With o = c a b s summed over entries: grad_a += c b s g, grad_b += c sum_u a s g,
 * grad_s += c b a g; a, b, s and g are read once instead of once per gradient. */
#define PATH_COLUMNS 11  /* core.CorePlan.paths */
#define MAX_COMPONENTS 64 /* 2l+1 of input b; harmonics go to l = 16 */

#define DEFINE_FUSED_GRADIENTS(NAME, REAL, VEC)                                                          \
void NAME(int64_t terms, const REAL *a, const REAL *b, const REAL *s, const REAL *g, REAL *ga,         \
          REAL *gb, REAL *gs, const int64_t *widths, int64_t num_paths, const int64_t *paths,           \
          const int64_t *indices, const double *values, int num_threads) {                              \
    const int64_t lanes = (int64_t)(sizeof(VEC) / sizeof(REAL));                                        \
    _Pragma("omp parallel for schedule(dynamic, 16) num_threads(num_threads)")                          \
    for (int64_t z = 0; z < terms; ++z) {                                                               \
        const REAL *ar = a + z * widths[0], *br = b + z * widths[1], *sr = s + z * widths[2];           \
        const REAL *gr = g + z * widths[3];                                                             \
        REAL *gar = ga + z * widths[0], *gbr = gb + z * widths[1], *gsr = gs + z * widths[2];           \
        memset(gar, 0, (size_t)widths[0] * sizeof(REAL));                                               \
        memset(gbr, 0, (size_t)widths[1] * sizeof(REAL));                                               \
        memset(gsr, 0, (size_t)widths[2] * sizeof(REAL));                                               \
        for (int64_t p = 0; p < num_paths; ++p) {                                                       \
            const int64_t *P = paths + PATH_COLUMNS * p;                                                \
            const int64_t U = P[8];                                                                     \
            const int bc_s = (int)P[6];                                                                 \
            const REAL *ap = ar + P[0], *bp = br + P[1], *sp = sr + P[2], *gp = gr + P[3];              \
            REAL *gap = gar + P[0], *gbp = gbr + P[1], *gsp = gsr + P[2];                               \
            int64_t u0 = 0;                                                                             \
            for (; u0 + lanes <= U; u0 += lanes) {                                                      \
                VEC sv = {0};                                                                           \
                if (bc_s) sv += sp[0]; else sv = *(const VEC *)(sp + u0);                               \
                VEC gs_acc = {0}, gb_acc[MAX_COMPONENTS];                                               \
                int64_t components = 0;                                                                 \
                for (int64_t e = P[9]; e < P[10]; ++e) {                                                \
                    const int64_t *q = indices + 3 * e;                                                 \
                    for (; components <= q[1]; ++components) gb_acc[components] = (VEC){0};            \
                    const REAL c = (REAL)values[e], cb = c * bp[q[1]];                                  \
                    const VEC av = *(const VEC *)(ap + q[0] * U + u0);                                  \
                    const VEC gv = *(const VEC *)(gp + q[2] * U + u0);                                  \
                    *(VEC *)(gap + q[0] * U + u0) += (cb * gv) * sv;                                    \
                    const VEC ag = av * gv;                                                             \
                    gs_acc += cb * ag;                                                                  \
                    gb_acc[q[1]] += c * ag;  /* summed over channels once per block, below */           \
                }                                                                                       \
                for (int64_t j = 0; j < components; ++j) {                                              \
                    const VEC t = gb_acc[j] * sv;                                                       \
                    REAL sum = 0;                                                                       \
                    for (int64_t l = 0; l < lanes; ++l) sum += t[l];                                    \
                    gbp[j] += sum;                                                                      \
                }                                                                                       \
                if (bc_s) { REAL sum = 0; for (int64_t l = 0; l < lanes; ++l) sum += gs_acc[l]; gsp[0] += sum; } \
                else *(VEC *)(gsp + u0) += gs_acc;                                                      \
            }                                                                                           \
            for (; u0 < U; ++u0) {                                                                      \
                const REAL sv = bc_s ? sp[0] : sp[u0];                                                  \
                REAL gs_acc = 0;                                                                        \
                for (int64_t e = P[9]; e < P[10]; ++e) {                                                \
                    const int64_t *q = indices + 3 * e;                                                 \
                    const REAL c = (REAL)values[e], cb = c * bp[q[1]];                                  \
                    const REAL av = ap[q[0] * U + u0], gv = gp[q[2] * U + u0];                          \
                    gap[q[0] * U + u0] += cb * gv * sv;                                                 \
                    gs_acc += cb * av * gv;                                                             \
                    gbp[q[1]] += c * av * gv * sv;                                                      \
                }                                                                                       \
                gsp[bc_s ? 0 : u0] += gs_acc;                                                           \
            }                                                                                           \
        }                                                                                               \
    }                                                                                                   \
}

DEFINE_FUSED_GRADIENTS(sciml_tp_gradients_f32, float, vec_f32)
DEFINE_FUSED_GRADIENTS(sciml_tp_gradients_f64, double, vec_f64)
