"""Wigner-D matrices of 3x3 (im)proper rotations in e3nn's basis, and per-edge frames.

``wigner_D(lmax, R)`` is the block-diagonal matrix of the spherical-harmonic irreps
0e + 1o + 2e + ... + lmax (parity (-1)^l), i.e. ``e3nn.o3.Irreps.spherical_harmonics(lmax)
.D_from_matrix(R)``, so that ``spherical_harmonics(lmax, v @ R.T) = spherical_harmonics(lmax, v) @
wigner_D(lmax, R).T`` for every R in O(3).

How: Y^l is a degree-l polynomial and D^l(R) Y^l(p) = Y^l(R p). Evaluating the harmonics on a
fixed point set P rotated by R gives D^l(R) = Y^l(R P) Y^l(P)^+, where the right pseudo-inverse
Y^l(P)^+ is computed once in float64. P is a Fibonacci sphere with the fewest points (at least
2 lmax + 1) for which every Y^l(P) has condition number below 10, so float32 keeps ~1e-6
accuracy. No Euler angles, hence no gimbal singularities; improper R give the parity for free
because the harmonics have parity (-1)^l; the result is a polynomial in R's entries, so it is
differentiable everywhere.

On CPU (float32/float64, ``SCIML_SH_BACKEND`` not "torch") one generated C kernel does it all per
block of rotations, one rotation per SIMD lane: the harmonics of the rotated points (the
recurrence of :mod:`sciml.ops.sh_recurrence`, C from :mod:`sciml.ops.sh_codegen`), the contraction with the pseudo-inverses
(literals in the source) and the (2l+1)^2 entries of each D^l written in place; its backward
(dL/dR) is C as well. Both run as operators of ``torch.ops.sciml`` (``sciml.ops.library``). Otherwise, and for a differentiable backward (``create_graph=True``), the
same steps run as torch operations.
"""

from __future__ import annotations

import functools
from typing import List, Optional, Tuple

import numpy as np
import torch

from sciml.ops import library
from sciml.ops.tracing import built_outside_tracing
from sciml.ops.sh_codegen import (
    build_kernels,
    c_gradient_statements,
    c_harmonics_statements,
    c_prelude,
    c_real,
    c_tile_functions,
    use_compiled,
)
from sciml.ops.sh_recurrence import MAX_L, cg_spherical_harmonics
from sciml.ops.spherical_harmonics import harmonics_of_rows

_MAX_CONDITION = 10.0


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n)
    azimuth = np.pi * (1.0 + 5**0.5) * i
    return np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar), np.cos(polar)], axis=1)


@functools.lru_cache(maxsize=None)
def _point_set(lmax: int) -> Tuple[np.ndarray, Tuple[np.ndarray, ...]]:
    """(P (n, 3), right pseudo-inverses of Y^l(P) (n, 2l+1) for l = 0..lmax), float64."""
    for n in range(2 * lmax + 1, 6 * lmax + 8):
        points = _fibonacci_sphere(n)
        harmonics = cg_spherical_harmonics(lmax, points)  # Y^l(P) as (n, 2l+1)
        if max(np.linalg.cond(y) for y in harmonics) < _MAX_CONDITION:
            return points, tuple(np.linalg.pinv(y.T) for y in harmonics)
    raise RuntimeError(f"no well-conditioned point set found for lmax {lmax}")  # not reached for lmax <= 16


@functools.lru_cache(maxsize=64)
@built_outside_tracing
def _torch_point_set(lmax: int, dtype: torch.dtype, device: torch.device) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    points, pinvs = _point_set(lmax)
    return (
        torch.tensor(points.T, dtype=dtype, device=device),
        [torch.tensor(p, dtype=dtype, device=device) for p in pinvs],
    )


def _check(lmax: int, rotations: torch.Tensor) -> None:
    if isinstance(lmax, bool) or not isinstance(lmax, (int, np.integer)) or not 0 <= lmax <= MAX_L:
        raise ValueError(f"lmax must be an int in 0..{MAX_L}, got {lmax!r}")
    if rotations.ndim < 2 or rotations.shape[-2:] != (3, 3):
        raise ValueError(f"rotations must have shape (..., 3, 3), got {tuple(rotations.shape)}")
    if not rotations.is_floating_point():
        raise ValueError(f"rotations must be a floating-point tensor, got {rotations.dtype}")


def wigner_D_blocks(lmax: int, rotations: torch.Tensor) -> List[torch.Tensor]:
    """Per-degree Wigner-D matrices of (im)proper rotations, in e3nn's basis.

    Args:
        lmax: highest degree, 0..16.
        rotations: (..., 3, 3) orthogonal matrices (det +1 or -1), acting on column vectors.

    Returns:
        [D^0, ..., D^lmax], D^l of shape (..., 2l+1, 2l+1) (contiguous), equal to e3nn's
        ``Irrep(l, (-1)**l).D_from_matrix(R)``. Differentiable with respect to ``rotations``.
        Several times cheaper than :func:`wigner_D`, which also writes the zero off-diagonal
        blocks (93% of its entries at lmax 6).
    """
    _check(lmax, rotations)
    batch = rotations.shape[:-2]
    return [b.contiguous().view(*batch, *b.shape[1:]) for b in _blocks(lmax, rotations)]


def _blocks(lmax: int, rotations: torch.Tensor) -> List[torch.Tensor]:
    """[D^l (E, 2l+1, 2l+1)] for l = 0..lmax, by the compiled kernel where it applies."""
    flat = rotations.reshape(-1, 3, 3)
    kernels = _compiled_kernels(lmax, flat.dtype) if use_compiled(flat) else None
    if kernels is None:
        return [b.permute(2, 0, 1) for b in _edge_minor_blocks(lmax, flat)]
    e = flat.shape[0]
    sizes = [(2 * l + 1) ** 2 for l in range(lmax + 1)]
    out = library.call("wigner_blocks", flat, kernels, lmax)
    # (torch.split: its backward is one cat, where slicing would zero-fill a full gradient per degree.)
    return [b.view(e, 2 * l + 1, 2 * l + 1) for l, b in enumerate(torch.split(out, [e * size for size in sizes]))]


def torch_flat_blocks(lmax: int, rotations: torch.Tensor) -> torch.Tensor:
    """The compiled kernel's output computed with torch operations: D^0..D^lmax of the rotations
    (E, 3, 3), each (E, 2l+1, 2l+1), flattened one after the other."""
    return torch.cat([b.permute(2, 0, 1).reshape(-1) for b in _edge_minor_blocks(lmax, rotations)])


def _edge_minor_blocks(lmax: int, rotations: torch.Tensor) -> List[torch.Tensor]:
    """[D^l as an edge-minor (2l+1, 2l+1, E) tensor (D^l[e, a, b] at [a, b, e])] for l = 0..lmax."""
    points, pinvs = _torch_point_set(lmax, rotations.dtype, rotations.device)
    e, n = rotations.numel() // 9, points.shape[1]
    # Rows (3, n E) of the rotated points R_e p, point-major and edge-minor, so that every
    # product below is one plain matrix product with the long edge axis last.
    rows = torch.einsum("ekj,jp->kpe", rotations.reshape(e, 3, 3), points).reshape(3, n * e)
    harmonics = harmonics_of_rows(rows, tuple(range(lmax + 1)), "component", as_rows=True)  # (K, n E)
    # D^l[e, a, b] = sum_p Y^l_a(R_e p) pinv[p, b]; as (a, b, e) = pinv^T @ Y^l_a(R P) per a.
    # (torch.split: its backward is one cat, where slicing would zero-fill a full gradient per degree.)
    degrees = torch.split(harmonics, [2 * l + 1 for l in range(lmax + 1)])
    return [pinv.t() @ y.view(2 * l + 1, n, e) for l, (pinv, y) in enumerate(zip(pinvs, degrees))]


def _c_literals(values: np.ndarray, real: str) -> str:
    suffix = "f" if real == "float" else ""
    return ", ".join(f"{float(v)!r}{suffix}" for v in np.asarray(values).reshape(-1))


def _c_source(lmax: int, real: str) -> str:
    """``sciml_wigner_forward`` (rotations (E, 3, 3) -> D^l (E, 2l+1, 2l+1) for l = 0..lmax, the
    degrees' blocks one after the other) and ``sciml_wigner_backward`` (dL/dD -> dL/dR); both
    return 1 when their scratch memory cannot be allocated, else 0.

    Per block of LANES rotations (one per lane): the harmonics of each rotated point R p into
    ``ys[p][k][lane]``, then D^l[a][b] = sum_p Y^l_a(R p) pinv_l[p][b] in vector registers, then
    each degree's rows transposed into place. The backward runs the same steps in reverse:
    dL/dY^l_a(R p) = sum_b dL/dD^l[a][b] pinv_l[p][b], the harmonics' gradient at each R p, and
    dL/dR = sum_p dL/d(R p) p^T.
    """
    points, pinvs = _point_set(lmax)
    n, k = len(points), (lmax + 1) ** 2
    offsets = np.cumsum([0] + [(2 * l + 1) ** 2 for l in range(lmax + 1)])
    lines = [c_prelude(real), "#include <omp.h>", f"#define NP {n}", f"#define KY {k}", "#define NINE 9"]
    for axis, name in enumerate("XYZ"):
        lines.append(f"static const real P{name}[NP] = {{{_c_literals(points[:, axis], real)}}};")
    for l, pinv in enumerate(pinvs):
        rows = ", ".join(f"{{{_c_literals(row, real)}}}" for row in pinv)
        lines.append(f"static const real PINV{l}[NP][{2 * l + 1}] = {{{rows}}};")
        lines.append(c_tile_functions(str((2 * l + 1) ** 2), f"d{l}"))
    lines.append(c_tile_functions("NINE", "dr"))
    rotate = [
        "const real x = r[0][b] * px + r[1][b] * py + r[2][b] * pz;",
        "const real y = r[3][b] * px + r[4][b] * py + r[5][b] * pz;",
        "const real z = r[6][b] * px + r[7][b] * py + r[8][b] * pz;",
    ]
    harmonics = rotate + c_harmonics_statements(lmax, lmax, "component", real)
    harmonics += [f"ys[p][{i}][b] = Y{i};" for i in range(k)]
    gradient = rotate + (c_harmonics_statements(lmax, lmax - 1, "component", real) if lmax > 0 else [])
    gradient += ["real gx = 0, gy = 0, gz = 0;"]
    if lmax > 0:
        gradient += c_gradient_statements(tuple(range(lmax + 1)), "component", real, lambda j: f"ys[p][{j}][b]")
    gradient += [f"dr[{3 * i + j}][b] += g{'xyz'[i]} * p{'xyz'[j]};" for i in range(3) for j in range(3)]

    def indent(statements: List[str], depth: int) -> str:
        return "\n".join(" " * depth + s for s in statements)

    contract, expand = [], []
    for l in range(lmax + 1):
        w = 2 * l + 1
        acc = [f"acc{b}" for b in range(w)]
        # forward: rows a w + b of D^l from rows l^2 + a of ys, summed over the points
        contract += [
            f"for (int a = 0; a < {w}; a++) {{",
            f"  vreal {', '.join(f'{v} = {{0}}' for v in acc)};",
            "  for (int p = 0; p < NP; p++) {",
            "    vreal y;",
            f"    memcpy(&y, ys[p][{l * l} + a], sizeof(vreal));",
            *[f"    {v} += y * PINV{l}[p][{b}];" for b, v in enumerate(acc)],
            "  }",
            *[f"  memcpy(d{l}[a * {w} + {b}], &{v}, sizeof(vreal));" for b, v in enumerate(acc)],
            "}",
            f"store_d{l}(d{l}, out + edges * {offsets[l]} + start * {w * w}, count);",
        ]
        # backward: rows l^2 + a of ys (now dL/dY) from rows a w + b of dL/dD^l
        expand += [
            f"load_d{l}(grad + edges * {offsets[l]} + start * {w * w}, count, d{l});",
            f"for (int a = 0; a < {w}; a++) {{",
            f"  vreal {', '.join(acc)};",
            *[f"  memcpy(&{v}, d{l}[a * {w} + {b}], sizeof(vreal));" for b, v in enumerate(acc)],
            "  for (int p = 0; p < NP; p++) {",
            f"    const vreal g = {' + '.join(f'{v} * PINV{l}[p][{b}]' for b, v in enumerate(acc))};",
            f"    memcpy(ys[p][{l * l} + a], &g, sizeof(vreal));",
            "  }",
            "}",
        ]
    degree_rows = " ".join(f"d{l}_t d{l};" for l in range(lmax + 1))
    degree_pointers = " ".join(f"real (*d{l})[LANES] = s->d{l};" for l in range(lmax + 1))
    scratch = f"""
    scratch_t* s = (scratch_t*)(scratch + size * omp_get_thread_num());
    real (*ys)[KY][LANES] = s->ys;
    real (*dr)[LANES] = s->dr;
    {degree_pointers}
    real r[9][LANES];"""
    block = """      const int64_t start = block * LANES;
      const int count = edges - start < LANES ? (int)(edges - start) : LANES;
      for (int b = 0; b < LANES; b++) {
        const real* m = rot + 9 * (start + (b < count ? b : count - 1));
        for (int i = 0; i < 9; i++) r[i][b] = m[i];
      }"""
    lines.append(f"""
/* Per-thread scratch: the harmonics (or their gradients) at the block's rotated points, the
   blocks of D^l (or their gradients) as rows, dL/dR as rows. */
typedef struct {{ real ys[NP][KY][LANES]; {degree_rows} dr_t dr; }} scratch_t;

/* One aligned scratch_t per thread, zeroed: the padding rows of the last tiles are transposed too. */
static size_t scratch_size(void) {{ return (sizeof(scratch_t) + VBYTES - 1) / VBYTES * VBYTES; }}
static char* scratch_alloc(int threads) {{
  void* memory = NULL;
  if (posix_memalign(&memory, VBYTES, scratch_size() * threads)) return NULL;
  memset(memory, 0, scratch_size() * threads);
  return memory;
}}

int sciml_wigner_forward(int64_t edges, const real* restrict rot, real* restrict out, int num_threads) {{
  const int64_t blocks = (edges + LANES - 1) / LANES;
  const int threads = blocks > 4 ? num_threads : 1;
  const size_t size = scratch_size();
  char* scratch = scratch_alloc(threads);
  if (!scratch) return 1;
#pragma omp parallel num_threads(threads)
  {{{scratch}
    (void)dr;
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; block++) {{
{block}
      for (int p = 0; p < NP; p++) {{
        const real px = PX[p], py = PY[p], pz = PZ[p];
#pragma omp simd
        for (int b = 0; b < LANES; b++) {{
{indent(harmonics, 10)}
        }}
      }}
{indent(contract, 6)}
    }}
  }}
  free(scratch);
  return 0;
}}

int sciml_wigner_backward(int64_t edges, const real* restrict rot, const real* restrict grad,
                           real* restrict grad_rot, int num_threads) {{
  const int64_t blocks = (edges + LANES - 1) / LANES;
  const int threads = blocks > 4 ? num_threads : 1;
  const size_t size = scratch_size();
  char* scratch = scratch_alloc(threads);
  if (!scratch) return 1;
#pragma omp parallel num_threads(threads)
  {{{scratch}
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; block++) {{
{block}
{indent(expand, 6)}
      memset(dr, 0, sizeof(dr_t));
      for (int p = 0; p < NP; p++) {{
        const real px = PX[p], py = PY[p], pz = PZ[p];
#pragma omp simd
        for (int b = 0; b < LANES; b++) {{
{indent(gradient, 10)}
        }}
      }}
      store_dr(dr, grad_rot + 9 * start, count);
    }}
  }}
  free(scratch);
  return 0;
}}
""")
    return "\n".join(lines)


def _compiled_kernels(lmax: int, dtype: torch.dtype) -> Optional[str]:
    """The operators' ``kernels`` argument for (lmax, dtype), or None where they cannot be built."""
    real = c_real(dtype)
    return build_kernels(
        ("wigner", lmax, real), lambda: _c_source(lmax, real), ("sciml_wigner_forward", "sciml_wigner_backward")
    )


def wigner_D(lmax: int, rotations: torch.Tensor) -> torch.Tensor:
    """Block-diagonal Wigner-D of the irreps 0e + 1o + ... + lmax for (im)proper rotations.

    Args:
        lmax: highest degree, 0..16.
        rotations: (..., 3, 3) orthogonal matrices acting on column vectors.

    Returns:
        (..., (lmax+1)^2, (lmax+1)^2), equal to ``e3nn.o3.Irreps.spherical_harmonics(lmax)
        .D_from_matrix(R)``: D(R1 R2) = D(R1) D(R2), D(R)^T = D(R^T). Differentiable. For
        orthogonal input only: other matrices give the polynomial extension, not D of the
        nearest rotation.
    """
    _check(lmax, rotations)
    dim = (lmax + 1) ** 2
    e = rotations.numel() // 9
    # Each block row is [0, D^l, 0] with broadcast (stride-0) zeros, so every entry is written
    # once and the backward is plain slicing (slice assignments would clone the gradient per
    # block). At lmax 6 the matrix is 93% zeros and writing it is most of the cost.
    zero = rotations.new_zeros(())
    rows = []
    for l, block in enumerate(_blocks(lmax, rotations)):
        start, stop = l * l, (l + 1) ** 2
        rows.append(
            torch.cat([zero.expand(e, stop - start, start), block, zero.expand(e, stop - start, dim - stop)], 2)
        )
    out = torch.cat(rows, 1)
    return out.view(*rotations.shape[:-2], dim, dim)


def edge_rotation(vectors: torch.Tensor) -> torch.Tensor:
    """Rotations R (det +1) with R @ v/|v| = (0, 1, 0): each edge onto e3nn's polar axis +y.

    The frame is the smallest rotation taking v̂ to +y when v̂_y > -1/2, and otherwise the
    smallest rotation taking F v̂ to +y composed with F = diag(-1, -1, 1) (a half turn about z),
    so both charts stay well conditioned; v̂ = +y gives the identity and v̂ = -y gives F. The map
    is deterministic and smooth except on the cone v̂_y = -1/2, where the roll about the edge
    jumps (no continuous choice exists on the whole sphere). SO(2)-equivariant layers do not
    depend on that roll. Zero vectors give the identity.

    Args:
        vectors: (..., 3) edge vectors (any length unit).

    Returns:
        (..., 3, 3) rotation matrices acting on column vectors; row 1 is v̂.
    """
    if vectors.ndim == 0 or vectors.shape[-1] != 3:
        raise ValueError(f"vectors must have shape (..., 3), got {tuple(vectors.shape)}")
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    flip = unit[..., 1] <= -0.5
    sign = torch.where(flip, -1.0, 1.0).to(unit.dtype)
    # In the flipped chart use u = F v̂ = (-x, -y, z), whose y component is >= 1/2.
    ux, uy, uz = sign * unit[..., 0], sign * unit[..., 1], unit[..., 2]
    # Smallest rotation taking u to +y: axis u × y = (-uz, 0, ux), cos = uy; Rodrigues with the
    # (1 - cos)/sin^2 = 1/(1 + cos) form, well conditioned since 1 + uy >= 1/2 (or u = 0).
    # R = I + [a]x + [a]x^2 / (1 + cos) with a = (-uz, 0, ux); the middle entry is written as
    # 1 - h (ux^2 + uz^2) (= uy for unit u) so that u = 0 gives the identity.
    h = 1.0 / (1.0 + uy)
    hxz = -h * ux * uz
    row0 = torch.stack([1.0 - h * ux * ux, -ux, hxz], -1)
    row1 = torch.stack([ux, 1.0 - h * (ux * ux + uz * uz), uz], -1)
    row2 = torch.stack([hxz, -uz, 1.0 - h * uz * uz], -1)
    rot = torch.stack([row0, row1, row2], -2)
    # Compose with F on the right: columns 0 and 1 change sign in the flipped chart.
    column_sign = torch.stack([sign, sign, torch.ones_like(sign)], -1).unsqueeze(-2)
    return rot * column_sign
