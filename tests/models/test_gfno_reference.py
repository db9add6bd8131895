"""sciml's FNO-2D and G-FNO-2D (p4, p4m) against the reference (divelab AIRS ``OpenPDE/G-FNO``) on
the same weights: equal outputs and input gradients, in float64 and float32.

The reference source is found at ``SCIML_GFNO_REFERENCE`` (the G-FNO folder, or an AIRS checkout)
or /work/gfno-ref; the tests are skipped without it (CI has none). The reference needs only torch;
:mod:`sciml.bench.gfno_runner` loads it from its source text and copies sciml's weights onto it.

What differs between the two, all of it exactly convertible, so the checks are not weakened:

* The Hermitian spectral kernels are parametrised differently. The reference stores each kernel
  W(k) = conj W(-k) on the centred (2m-1) x (2m-1) box by its half: ``00_modes`` (real, frequency
  0), ``y0_modes`` (complex, frequencies (-(m-1)..-1, 0)) and ``yposx_modes`` (complex, last axis
  1..m-1), the rest by conjugate symmetry. sciml stores one real array A on the full box with
  W = (A + A_rev)/2 + i (A - A_rev)/2, A_rev(k) = A(-k); A = Re W + Im W maps one onto the other.
* The reflected group elements are numbered differently: the reference's element 4 + r is the
  kernel transform flip_x(rot90^r(.)) = rot90^-r(flip_x(.)), which is sciml's element
  4 + (-r mod 4); rotations 0..3 agree.
* The reference hard-codes float32 (``torch.float``) and complex64 (``torch.cfloat``); its source
  is patched in memory so that these follow the default dtype, and it is built and run with
  float64 as the default dtype for the float64 checks (its grid feature is also made in the default
  dtype). With the default float32 the patched source computes exactly what the published one does.
* Both use the same grid feature ("symmetric": squared distance from the centre of the plane,
  from ``linspace(0, 1, n)`` coordinates), instance norm (eps 1e-5, no affine), GELU and layouts.
  The reference's truncated FFTs are full ``rfft2`` / ``irfft2`` calls, sciml's are truncated DFTs
  as matrix products; they agree to rounding.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from sciml.bench.gfno_runner import build_reference, copy_to_reference, default_dtype, find_source
from sciml.models import build_model

MODELS = ("fno2d", "gfno2d_p4", "gfno2d_p4m")


def _source():
    location = os.environ.get("SCIML_GFNO_REFERENCE", "/work/gfno-ref")
    try:
        return find_source(Path(location))
    except FileNotFoundError:
        pytest.skip(f"no divelab AIRS G-FNO source at {location} (set SCIML_GFNO_REFERENCE to OpenPDE/G-FNO; "
                    "CI has none)")


def _pair(name, dtype, **options):
    torch.manual_seed(0)
    model = build_model(name, **options).to(dtype).eval()
    with default_dtype(dtype):
        reference = build_reference(name, _source(), grid=model.options.grid, width=model.width,
                                    modes=model.options.modes)
        copy_to_reference(model, reference.eval())
    return model, reference


def _run(module, x, dtype):
    """Output (B, X, Y, 1) and the gradient of a fixed loss to the input."""
    x = x.clone().requires_grad_()
    with default_dtype(dtype):
        y = module(x).reshape(*x.shape[:3], 1)
        weights = torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)
        (grad,) = torch.autograd.grad((y * weights).sum() + y.square().mean(), x)
    return y.detach(), grad


def _relative(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts_equal_the_reference(name):
    model, reference = _pair(name, torch.float32)
    counted = sum(p.numel() * (2 if p.is_complex() else 1) for p in reference.parameters())
    assert counted == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("options", [{}, {"grid": "none"}])
@pytest.mark.parametrize("name", MODELS)
def test_float64_outputs_and_input_gradients_equal_the_reference(name, options):
    model, reference = _pair(name, torch.float64, **options)
    x = torch.randn(2, 32, 32, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours, ours_grad = _run(model, x, torch.float64)
    theirs, theirs_grad = _run(reference, x, torch.float64)
    assert _relative(ours, theirs) < 1e-10
    assert _relative(ours_grad, theirs_grad) < 1e-10


@pytest.mark.parametrize("name", MODELS)
def test_float32_outputs_equal_the_reference(name):
    model, reference = _pair(name, torch.float32)
    x = torch.randn(4, 64, 64, 10, generator=torch.Generator().manual_seed(2))
    ours, ours_grad = _run(model, x, torch.float32)
    theirs, theirs_grad = _run(reference, x, torch.float32)
    assert float((ours - theirs).abs().max() / theirs.abs().max()) < 1e-5
    assert _relative(ours_grad, theirs_grad) < 1e-5


def test_bench_times_the_reference_in_the_same_run():
    from sciml.bench.gfno import bench_gfno, format_gfno_table

    rows = bench_gfno(sizes=[32], batch=2, repeats=1, threads=1, memory=False, reference_source=str(_source()))
    assert [r["model"] for r in rows] == list(MODELS)
    for row in rows:
        assert row["reference_measured"] and row["reference_forward_backward_s"] > 0
        assert row["max_relative_difference"] < 1e-5
    table = format_gfno_table(rows)
    assert "timed in this run" in table and "QUOTED" not in table
