"""C code generation for the spherical-harmonic recurrence (:mod:`sciml.ops.sh_recurrence`), its
build, and the choice of the compiled path; shared with the Wigner-D kernel (:mod:`sciml.ops.wigner`),
which evaluates the same recurrence at rotated points.

The harmonics kernels (CPU, float32/float64): C source generated per (degrees, normalization,
normalize, dtype) with the fitted constants as literals, compiled at run time
(``sciml.ops.cbuild``) and run by the operators ``torch.ops.sciml.spherical_harmonics`` /
``spherical_harmonics_backward`` (``sciml.ops.library``). Points are processed in blocks of one
SIMD register's width (the recurrence runs across the block's points, so it vectorises), the
block's rows are transposed in registers and written straight into the (N, K) output; blocks are
split over ``torch.get_num_threads()`` OpenMP threads. The backward (dL/dr from the banded A_l and
the chain rule of the normalization) is C too; it recomputes the lower degrees from the points
instead of storing them.

``SCIML_SH_BACKEND`` = "auto" (default: ``c`` where it applies and builds, else ``torch``), "c"
(error if it cannot be used) or "torch" selects the path (the "harmonics" family of
:mod:`sciml.ops.backends`), for the harmonics and for :mod:`sciml.ops.wigner`.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from sciml.ops import backends, library
from sciml.ops.cbuild import build_library, compiler
from sciml.ops.sh_recurrence import gradient_bands, recurrence_constants
from sciml.ops.tracing import built_outside_tracing


def use_compiled(tensor: torch.Tensor) -> bool:
    """Whether the compiled kernels run on ``tensor``: the "harmonics" choice of
    :mod:`sciml.ops.backends` (``SCIML_SH_BACKEND``) is "c" for its device and dtype. Asking for
    "c" where it cannot run raises :class:`~sciml.ops.backends.BackendUnavailable`."""
    return backends.resolve("harmonics", None, tensor.device, tensor.dtype) == "c" and tensor.dtype in backends.KERNEL_DTYPES


def _why_not_compiled(device: torch.device) -> str:
    if device.type != "cpu":
        return "the compiled harmonics run on CPU tensors"
    try:
        compiler()
    except RuntimeError as error:
        return str(error)
    return library.unavailable_reason()


backends.register("harmonics", "c", _why_not_compiled)


_built: Dict[tuple, Tuple[bool, str]] = {}


@built_outside_tracing
def build_kernels(key: tuple, make_source: Callable[[], str], names: Sequence[str]) -> Optional[str]:
    """The functions ``names`` of the generated source, compiled once per ``key``, as the
    operators' ``kernels`` argument ("path:symbol" lines).

    Returns None when the build fails (no compiler, a compiler error, or no operator library; the
    reason is kept and the build is not retried), except under ``SCIML_SH_BACKEND=c``, which raises
    RuntimeError.
    """
    if key not in _built:
        try:
            if not library.available():
                raise RuntimeError(library.unavailable_reason())
            path = build_library(make_source())
            _built[key] = (True, "\n".join(f"{path}:{name}" for name in names))
        except (RuntimeError, OSError) as error:
            _built[key] = (False, str(error))
    built, result = _built[key]
    if not built:
        if backends.requested("harmonics") == "c":
            raise RuntimeError(f"the compiled spherical-harmonics kernel is unavailable: {result}")
        return None
    return result


def c_real(dtype: torch.dtype) -> str:
    """The C type of a float32/float64 tensor."""
    return "float" if dtype == torch.float32 else "double"


def _c_literal(value: float, real: str) -> str:
    text = repr(float(value))
    return f"{text}f" if real == "float" else text


def c_prelude(real: str) -> str:
    """Headers, ``real``, and the SIMD width of the target (``LANES`` values of ``real`` in a
    ``vreal``) with ``transpose(vreal r[LANES])``, an in-register transpose of LANES x LANES.

    The width (``VBYTES``) is read from the compiler's target macros (the kernels are built for the
    host CPU) unless the source defines it first (the tests check every width that way).
    The transpose swaps one bit of the row index with the same bit of the column index per round,
    each round one two-register shuffle per pair of rows (``vpermt2ps`` with AVX-512), written
    with the GCC (>= 12) and clang builtin, or GCC's older one.
    """
    size = 4 if real == "float" else 8
    lines = [
        "#include <math.h>",
        "#include <stdint.h>",
        "#include <stdlib.h>",
        "#include <string.h>",
        f"typedef {real} real;",
        "#ifndef VBYTES",
        "#if defined(__AVX512F__)",
        "#define VBYTES 64",
        "#elif defined(__AVX__)",
        "#define VBYTES 32",
        "#else",
        "#define VBYTES 16",
        "#endif",
        "#endif",
        f"#define LANES (VBYTES / {size})",
        "typedef real vreal __attribute__((vector_size(VBYTES)));",
        f"typedef int{8 * size}_t vindex __attribute__((vector_size(VBYTES)));",
        "#if defined(__clang__) || __GNUC__ >= 12",
        "#define SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)",
        "#else",
        "#define SHUFFLE(a, b, ...) __builtin_shuffle(a, b, (vindex){__VA_ARGS__})",
        "#endif",
    ]
    for number, lanes in enumerate((64 // size, 32 // size, 16 // size)):
        lines.append(f"#{'if' if number == 0 else 'elif'} LANES == {lanes}")
        lines.append("static inline void transpose(vreal r[LANES]) {")
        for bit in range(lanes.bit_length() - 1):
            h = 1 << bit
            low = [c if not c & h else lanes + (c ^ h) for c in range(lanes)]
            high = [c | h if not c & h else lanes + c for c in range(lanes)]
            for i in range(lanes):
                if not i & h:
                    lines.append(
                        f"  {{ const vreal a = r[{i}], b = r[{i | h}];"
                        f" r[{i}] = SHUFFLE(a, b, {', '.join(map(str, low))});"
                        f" r[{i | h}] = SHUFFLE(a, b, {', '.join(map(str, high))}); }}"
                    )
        lines.append("}")
    lines.append("#endif")
    return "\n".join(lines) + "\n"


def c_harmonics_statements(lmax: int, upto: int, normalization: str, real: str) -> List[str]:
    """C statements declaring ``Y0`` .. ``Y{(upto+1)^2 - 1}`` (degrees 0..upto, e3nn's order) of the
    point ``x, y, z`` (type ``real``): the recurrence of :func:`harmonic_rows` with the constants of
    ``recurrence_constants(lmax, normalization)`` as literals. Also uses ``r2``, ``cos_m``, ``sin_m``."""
    consts = recurrence_constants(lmax, normalization)
    lit = functools.partial(_c_literal, real=real)
    y0 = consts[0][0][0]
    out = [f"const real Y0 = {lit(y0)};"]
    if upto >= 1:
        c, a_end = consts[1][0], consts[1][1]
        out += [
            f"const real Y1 = {lit(c[0])} * x;",
            f"const real Y2 = {lit(a_end[0] * y0)} * y;",
            f"const real Y3 = {lit(c[1])} * z;",
        ]
    if upto >= 2:
        # T_{+m} + i T_{-m} = (z + i x)^m, from m = 1
        out += ["real cos_m = z, sin_m = x;", "const real r2 = x * x + y * y + z * z;"]
    for l in range(2, upto + 1):
        c, a_end, a_mid, b_mid = consts[l]
        cur, prev, prev2 = l * l, (l - 1) ** 2, (l - 2) ** 2
        out.append("{ const real t = z * cos_m - x * sin_m; sin_m = x * cos_m + z * sin_m; cos_m = t; }")
        out.append(f"const real Y{cur} = {lit(c[0])} * sin_m;")
        out.append(f"const real Y{cur + 1} = {lit(a_end[0])} * (y * Y{prev});")
        for i in range(2 * l - 3):
            out.append(
                f"const real Y{cur + 2 + i} = {lit(a_mid[i])} * (y * Y{prev + 1 + i})"
                f" - {lit(b_mid[i])} * (r2 * Y{prev2 + i});"
            )
        out.append(f"const real Y{cur + 2 * l - 1} = {lit(a_end[1])} * (y * Y{prev + 2 * l - 2});")
        out.append(f"const real Y{cur + 2 * l} = {lit(c[1])} * cos_m;")
    return out


def c_gradient_statements(ls: Tuple[int, ...], normalization: str, real: str, grad: Callable[[int], str]) -> List[str]:
    """C statements adding dL/d(x, y, z) to ``gx, gy, gz`` (declared by the caller) from dL/dY of the
    output columns (``grad(j)``: C expression of column j's gradient) and ``Y0`` .. ``Y{lmax^2 - 1}``
    (:func:`c_harmonics_statements` up to lmax - 1): the banded A_l of :func:`gradient_bands`,
    zero weights dropped."""
    t = gradient_bands(ls, normalization)
    lit = functools.partial(_c_literal, real=real)
    columns = sorted(set(t.g0.tolist()) | set(t.g1.tolist()) | set(t.g2.tolist()))
    out = [f"const real G{j} = {grad(j)};" for j in columns]
    weights = {name: getattr(t, name).tolist() for name in ("w_x0", "w_x2", "w_y1", "w_z0", "w_z2")}
    tiny = 1e-12 * max((abs(w) for ws in weights.values() for w in ws), default=0.0)

    def combination(*pairs: Tuple[float, int]) -> str:
        return " + ".join(f"{lit(w)} * G{j}" for w, j in pairs if abs(w) > tiny)

    for r, (g0, g1, g2, prev, flip) in enumerate(
        zip(t.g0.tolist(), t.g1.tolist(), t.g2.tolist(), t.prev.tolist(), t.flip.tolist())
    ):
        for target, terms, y in (
            ("gx", combination((weights["w_x0"][r], g0), (weights["w_x2"][r], g2)), flip),
            ("gy", combination((weights["w_y1"][r], g1)), prev),
            ("gz", combination((weights["w_z0"][r], g0), (weights["w_z2"][r], g2)), prev),
        ):
            if terms:
                out.append(f"{target} += ({terms}) * Y{y};")
    return out


def c_tile_functions(width: str, name: str) -> str:
    """C for rows of ``width`` (a constant expression) values per item, LANES items per block:
    ``{name}_t`` (rows[column][item], padded to whole tiles), ``store_{name}`` (rows ->
    out[item * width + column] for ``count`` items) and ``load_{name}`` (the inverse, zero beyond
    ``count`` and width), both by LANES x LANES tiles transposed in registers. Copies have
    constant sizes, so they compile to vector moves."""
    return f"""
#define {name.upper()}_TILES (({width} + LANES - 1) / LANES)
#define {name.upper()}_LAST ({width} - ({name.upper()}_TILES - 1) * LANES)
typedef real {name}_t[{name.upper()}_TILES * LANES][LANES];

static inline void store_{name}({name}_t rows, real* restrict out, int count) {{
  for (int t = 0; t < {name.upper()}_TILES; t++) {{
    vreal r[LANES];
    for (int i = 0; i < LANES; i++) memcpy(&r[i], rows[t * LANES + i], sizeof(vreal));
    transpose(r);
    real* o = out + t * LANES;
    if (t < {name.upper()}_TILES - 1)
      for (int b = 0; b < count; b++) memcpy(o + b * ({width}), &r[b], sizeof(vreal));
    else
      for (int b = 0; b < count; b++) memcpy(o + b * ({width}), &r[b], {name.upper()}_LAST * sizeof(real));
  }}
}}

static inline void load_{name}(const real* restrict in, int count, {name}_t rows) {{
  for (int t = 0; t < {name.upper()}_TILES; t++) {{
    vreal r[LANES];
    const real* g = in + t * LANES;
    for (int b = 0; b < LANES; b++) r[b] = (vreal){{0}};
    if (t < {name.upper()}_TILES - 1)
      for (int b = 0; b < count; b++) memcpy(&r[b], g + b * ({width}), sizeof(vreal));
    else
      for (int b = 0; b < count; b++) memcpy(&r[b], g + b * ({width}), {name.upper()}_LAST * sizeof(real));
    transpose(r);
    for (int i = 0; i < LANES; i++) memcpy(rows[t * LANES + i], &r[i], sizeof(vreal));
  }}
}}
"""


def harmonics_c_source(ls: Tuple[int, ...], normalization: str, normalize: bool, real: str) -> str:
    """``sciml_sh_forward`` and ``sciml_sh_backward`` for points (N, 3) -> harmonics (N, K), row-major.

    Each OpenMP thread takes blocks of LANES points: the points are loaded (and normalized) one by
    one, the recurrence runs across the block's points into rows ``rows[column][point]`` (one
    vector per row), and tiles of LANES rows are transposed in registers and stored as the
    points' output rows. The backward loads the gradient the same way (transposed), recomputes
    the degrees below lmax and applies the A_l and the normalization's chain rule.
    """
    lmax = max(ls)
    width = sum(2 * l + 1 for l in ls)
    columns = [i for l in ls for i in range(l * l, (l + 1) ** 2)]
    sqrt = "sqrtf" if real == "float" else "sqrt"
    forward = c_harmonics_statements(lmax, lmax, normalization, real) + [
        f"rows[{j}][b] = Y{i};" for j, i in enumerate(columns)
    ]
    backward = c_harmonics_statements(lmax, lmax - 1, normalization, real) if lmax > 0 else []
    backward += ["real gx = 0, gy = 0, gz = 0;"]
    backward += c_gradient_statements(ls, normalization, real, lambda j: f"rows[{j}][b]") if lmax > 0 else []
    if normalize:
        # d(v/|v|)/dv = (1 - u u^T) / |v|; below the clamp |v| is the constant 1e-12.
        backward += [
            "const real along = project[b] * (gx * x + gy * y + gz * z);",
            "gx = scale[b] * (gx - along * x); gy = scale[b] * (gy - along * y); gz = scale[b] * (gz - along * z);",
        ]
    backward += ["out_x[b] = gx; out_y[b] = gy; out_z[b] = gz;"]

    def body(statements: List[str]) -> str:
        return "\n".join(f"      {s}" for s in statements)

    return c_prelude(real) + f"""
#define NORMALIZE {int(normalize)}
#define K {width}

/* Points start.. of (N, 3) `in` as lanes (the block's tail repeats its last point), projected
   onto the unit sphere as torch.nn.functional.normalize does: v / max(|v|, 1e-12); `scale` and
   `project` carry that map's derivative. */
static inline void load_points(const real* restrict in, int count, real* px, real* py, real* pz,
                               real* scale, real* project) {{
  for (int b = 0; b < LANES; b++) {{
    const real* v = in + 3 * (b < count ? b : count - 1);
    real x = v[0], y = v[1], z = v[2];
#if NORMALIZE
    const real norm = {sqrt}(x * x + y * y + z * z);
    const int clamped = !(norm >= (real)1e-12);
    const real d = clamped ? (real)1e-12 : norm;
    x /= d; y /= d; z /= d;
    scale[b] = (real)1 / d;
    project[b] = clamped ? (real)0 : (real)1;
#endif
    px[b] = x; py[b] = y; pz[b] = z;
  }}
}}

{c_tile_functions('K', 'rows')}
void sciml_sh_forward(int64_t n, const real* restrict in, real* restrict out, int num_threads) {{
  const int64_t blocks = (n + LANES - 1) / LANES;
#pragma omp parallel num_threads(num_threads) if (blocks > 16)
  {{
    real px[LANES], py[LANES], pz[LANES], scale[LANES], project[LANES];
    rows_t rows __attribute__((aligned(VBYTES)));
    memset(rows, 0, sizeof(rows_t));  /* the padding rows of the last tile are transposed too */
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; block++) {{
      const int64_t start = block * LANES;
      const int count = n - start < LANES ? (int)(n - start) : LANES;
      load_points(in + 3 * start, count, px, py, pz, scale, project);
#pragma omp simd
      for (int b = 0; b < LANES; b++) {{
        const real x = px[b], y = py[b], z = pz[b];
{body(forward)}
      }}
      store_rows(rows, out + start * K, count);
    }}
  }}
}}

void sciml_sh_backward(int64_t n, const real* restrict in, const real* restrict grad, real* restrict grad_in,
                       int num_threads) {{
  const int64_t blocks = (n + LANES - 1) / LANES;
#pragma omp parallel num_threads(num_threads) if (blocks > 16)
  {{
    real px[LANES], py[LANES], pz[LANES], scale[LANES], project[LANES];
    real out_x[LANES], out_y[LANES], out_z[LANES];
    rows_t rows __attribute__((aligned(VBYTES)));
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; block++) {{
      const int64_t start = block * LANES;
      const int count = n - start < LANES ? (int)(n - start) : LANES;
      load_points(in + 3 * start, count, px, py, pz, scale, project);
      load_rows(grad + start * K, count, rows);
#pragma omp simd
      for (int b = 0; b < LANES; b++) {{
        const real x = px[b], y = py[b], z = pz[b];
{body(backward)}
      }}
      for (int b = 0; b < count; b++) {{
        grad_in[3 * (start + b)] = out_x[b];
        grad_in[3 * (start + b) + 1] = out_y[b];
        grad_in[3 * (start + b) + 2] = out_z[b];
      }}
    }}
  }}
}}
"""


def harmonics_kernels(ls: Tuple[int, ...], normalization: str, normalize: bool, dtype: torch.dtype) -> Optional[str]:
    """The harmonics operators' ``kernels`` argument for points of ``dtype`` (float32/float64) and
    the validated degrees ``ls``, or None where they cannot be built (see :func:`build_kernels`)."""
    real = c_real(dtype)
    return build_kernels(
        ("harmonics", ls, normalization, normalize, real),
        lambda: harmonics_c_source(ls, normalization, normalize, real),
        ("sciml_sh_forward", "sciml_sh_backward"),
    )

