"""Tests of the PDE data: the Navier-Stokes solver, grid symmetries, the FNO and PDEBench readers, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from sciml.cli.main import main
from sciml.data.pde import (
    PDEDataError,
    forcing_field,
    gaussian_random_field,
    generate_navier_stokes,
    read_fno_mat,
    read_pdebench,
    reflect_periodic,
    rotate90_periodic,
    solve_navier_stokes,
    write_fno_mat,
)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def grid(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n, dtype=torch.float64) / n
    return torch.meshgrid(x, x, indexing="ij")


@pytest.mark.parametrize("m", [1, 3])
def test_taylor_green_vortex_decays_exactly(m: int) -> None:
    x, y = grid(32)
    k = 2 * math.pi * m
    w0 = torch.stack([2 * k * torch.sin(k * x) * torch.sin(k * y), 2 * k * torch.cos(k * x) * torch.cos(k * y)])
    nu, dt = 1e-3, 1e-3
    out = solve_navier_stokes(w0, nu, None, t_final=1.0, dt=dt, record_every=0.25)
    times = 0.25 * torch.arange(1, 5, dtype=torch.float64)
    exact = w0[..., None] * torch.exp(-2 * nu * k**2 * times)
    assert out.shape == (2, 32, 32, 4)
    assert relative(out, exact) < 1e-4


def test_time_orders_of_euler_and_heun() -> None:
    w0 = gaussian_random_field(1, 32, seed=1)
    f = forcing_field("fno", 32)
    reference = solve_navier_stokes(w0, 1e-3, f, 0.4, 1e-3 / 4, 0.4, scheme="heun")
    for scheme, order in (("euler", 1), ("heun", 2)):
        errors = [relative(solve_navier_stokes(w0, 1e-3, f, 0.4, dt, 0.4, scheme=scheme), reference)
                  for dt in (2e-2, 1e-2)]
        assert math.log2(errors[0] / errors[1]) == pytest.approx(order, abs=0.15)


@pytest.mark.parametrize("forcing", ["fno", "symmetric", "none"])
def test_mean_vorticity_is_conserved(forcing: str) -> None:
    w0 = gaussian_random_field(2, 32, seed=2)
    w0[1] += 0.7  # a non-zero mean stays as it is: forcings and advection have zero mean
    out = solve_navier_stokes(w0, 1e-3, forcing_field(forcing, 32), 0.5, 5e-3, 0.25)
    np.testing.assert_allclose(out.mean(dim=(1, 2)), [[0.0, 0.0], [0.7, 0.7]], atol=1e-12)


def test_symmetric_forcing_commutes_with_rotations_about_the_origin() -> None:
    w0 = gaussian_random_field(2, 32, seed=3)
    f = forcing_field("symmetric", 32)

    def solve(w: torch.Tensor) -> torch.Tensor:
        return solve_navier_stokes(w, 1e-3, f, 0.5, 5e-3, 0.25)

    out = solve(w0)
    for k in (1, 2, 3):
        assert relative(solve(rotate90_periodic(w0, k)), rotate90_periodic(out, k)) < 1e-12
    # torch.rot90 rotates about the cell centre: the forcing is not invariant under that map
    assert relative(solve(torch.rot90(w0, 1, (1, 2))), torch.rot90(out, 1, (1, 2))) > 1e-3
    # the FNO forcing has no rotation symmetry
    fno = solve_navier_stokes(rotate90_periodic(w0), 1e-3, forcing_field("fno", 32), 0.5, 5e-3, 0.25)
    fno_out = solve_navier_stokes(w0, 1e-3, forcing_field("fno", 32), 0.5, 5e-3, 0.25)
    assert relative(fno, rotate90_periodic(fno_out)) > 0.1


def test_reflections_map_vorticity_as_a_pseudo_scalar() -> None:
    w0 = gaussian_random_field(2, 32, seed=4)

    def solve(w: torch.Tensor, forcing: str) -> torch.Tensor:
        return solve_navier_stokes(w, 1e-3, forcing_field(forcing, 32), 0.5, 5e-3, 0.25)

    assert relative(solve(-reflect_periodic(w0), "none"), -reflect_periodic(solve(w0, "none"))) < 1e-12
    # the symmetric forcing is even under x -> -x while vorticity is odd: no reflection symmetry
    assert relative(solve(-reflect_periodic(w0), "symmetric"), -reflect_periodic(solve(w0, "symmetric"))) > 1e-2
    assert relative(solve(reflect_periodic(w0), "symmetric"), reflect_periodic(solve(w0, "symmetric"))) > 1e-2


def test_grid_symmetries_fix_the_origin() -> None:
    w = torch.arange(16.0).reshape(1, 4, 4)
    i, j = 1, 3
    assert rotate90_periodic(w)[0, i, j] == w[0, j, -i % 4]
    assert reflect_periodic(w)[0, i, j] == w[0, -i % 4, j]
    assert torch.equal(rotate90_periodic(rotate90_periodic(w), 3), w)
    assert torch.equal(rotate90_periodic(w, -1), rotate90_periodic(w, 3))
    assert torch.equal(reflect_periodic(reflect_periodic(w)), w)
    f = forcing_field("symmetric", 8)[None]
    torch.testing.assert_close(rotate90_periodic(f), f, rtol=0, atol=1e-15)
    torch.testing.assert_close(reflect_periodic(f), f, rtol=0, atol=1e-15)
    assert forcing_field("none", 8) is None
    with pytest.raises(ValueError, match="square"):
        rotate90_periodic(torch.zeros(1, 4, 6))


def test_gaussian_random_field_statistics_and_reproducibility() -> None:
    fields = gaussian_random_field(3, 64, seed=5)
    assert fields.shape == (3, 64, 64) and fields.dtype == torch.float64
    assert torch.equal(gaussian_random_field(2, 64, seed=5), fields[:2])
    assert fields.mean(dim=(1, 2)).abs().max() < 1e-12
    assert not torch.equal(gaussian_random_field(1, 64, seed=6)[0], fields[0])
    spectrum = torch.fft.fft2(fields).abs().pow(2).mean(0)
    assert spectrum[1, 0] > 30 * spectrum[8, 0]  # power decays as (4 pi^2 |k|^2 + tau^2)^-alpha


def test_generate_subsamples_the_solver_grid_and_checks_inputs() -> None:
    data = generate_navier_stokes(3, resolution=16, solver_resolution=32, viscosity=1e-3, forcing="fno",
                                  t_final=0.2, record_every=0.1, dt=1e-2, batch_size=2, seed=7)
    assert data["vorticity"].shape == (3, 16, 16, 2) and data["initial"].shape == (3, 16, 16)
    torch.testing.assert_close(data["t"], torch.tensor([0.1, 0.2], dtype=torch.float64))
    w0 = gaussian_random_field(3, 32, seed=7)
    torch.testing.assert_close(data["initial"], w0[:, ::2, ::2])
    full = solve_navier_stokes(w0, 1e-3, forcing_field("fno", 32), 0.2, 1e-2, 0.1)
    torch.testing.assert_close(data["vorticity"], full[:, ::2, ::2], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="does not divide"):
        solve_navier_stokes(w0, 1e-3, None, 0.25, 1e-2, 0.1)
    with pytest.raises(ValueError, match="whole number"):
        solve_navier_stokes(w0, 1e-3, None, 0.2, 3e-2, 0.1)
    with pytest.raises(ValueError, match="square"):
        solve_navier_stokes(torch.zeros(1, 8, 16), 1e-3, None, 0.1, 1e-2, 0.1)
    with pytest.raises(ValueError, match="unknown forcing"):
        generate_navier_stokes(1, forcing="cos")
    with pytest.raises(FloatingPointError, match="decrease dt"):
        solve_navier_stokes(100 * w0, 1e-4, None, 2.0, 0.1, 0.1)


# ----------------------------------------------------------------------------------------- readers


def fno_arrays(n: int = 3, s: int = 8, t: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"a": rng.normal(size=(n, s, s)).astype(np.float32), "u": rng.normal(size=(n, s, s, t)).astype(np.float32),
            "t": np.arange(1, t + 1, dtype=np.float32)[None]}


def write_mat73(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """MATLAB v7.3: HDF5 after a 512-byte header, each array stored with reversed axes."""
    with h5py.File(path, "w", userblock_size=512) as handle:
        for key, value in arrays.items():
            handle.create_dataset(key, data=np.transpose(value, tuple(range(value.ndim - 1, -1, -1))))
    with open(path, "r+b") as stream:
        stream.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 .")


def test_fno_mat_v5_and_v73_give_the_same_arrays(tmp_path: Path) -> None:
    arrays = fno_arrays()
    scipy.io.savemat(tmp_path / "v5.mat", arrays)
    write_mat73(tmp_path / "v73.mat", arrays)
    for name in ("v5.mat", "v73.mat"):
        np.testing.assert_array_equal(read_fno_mat(tmp_path / name), arrays["u"])
        np.testing.assert_array_equal(read_fno_mat(tmp_path / name, "a"), arrays["a"])
        np.testing.assert_array_equal(read_fno_mat(tmp_path / name, "t"), arrays["t"][0])


def test_fno_mat_bad_files(tmp_path: Path) -> None:
    arrays = fno_arrays()
    with pytest.raises(PDEDataError, match="no such file"):
        read_fno_mat(tmp_path / "missing.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(PDEDataError, match="junk.mat: not a MATLAB"):
        read_fno_mat(tmp_path / "junk.mat")
    scipy.io.savemat(tmp_path / "v5.mat", arrays)
    with pytest.raises(PDEDataError, match="no array 'sol'"):
        read_fno_mat(tmp_path / "v5.mat", "sol")
    write_mat73(tmp_path / "v73.mat", arrays)
    with pytest.raises(PDEDataError, match="v73.mat: no array 'sol'"):
        read_fno_mat(tmp_path / "v73.mat", "sol")
    scipy.io.savemat(tmp_path / "rank.mat", {"u": arrays["u"][0]})
    with pytest.raises(PDEDataError, match="rank 4"):
        read_fno_mat(tmp_path / "rank.mat")
    scipy.io.savemat(tmp_path / "rect.mat", {"u": arrays["u"][:, :, :4]})
    with pytest.raises(PDEDataError, match="8 x 4 grid"):
        read_fno_mat(tmp_path / "rect.mat")
    assert read_fno_mat(tmp_path / "rect.mat", require_square=False).shape == (3, 8, 4, 5)
    bad = arrays["u"].copy()
    bad[0, 1, 2, 3] = np.nan
    write_mat73(tmp_path / "nan.mat", {"u": bad})
    with pytest.raises(PDEDataError, match="nan.mat: 'u' contains 1 NaN"):
        read_fno_mat(tmp_path / "nan.mat")


def test_write_fno_mat_round_trip(tmp_path: Path) -> None:
    arrays = fno_arrays()
    path = write_fno_mat(tmp_path / "ns.mat", u=arrays["u"], a=arrays["a"], t=arrays["t"][0])
    raw = scipy.io.loadmat(path)
    assert raw["u"].shape == (3, 8, 8, 5) and raw["a"].shape == (3, 8, 8) and raw["t"].shape == (1, 5)
    np.testing.assert_array_equal(read_fno_mat(path), arrays["u"])
    assert [p.name for p in tmp_path.iterdir()] == ["ns.mat"]


def write_incompressible_ns(path: Path, n: int = 2, t: int = 4, x: int = 6, y: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays = {"velocity": rng.normal(size=(n, t, x, y, 2)), "particles": rng.normal(size=(n, t, x, y, 1)),
              "force": rng.normal(size=(n, x, y, 2)), "t": np.tile(np.arange(t) * 0.05, (n, 1))}
    with h5py.File(path, "w") as handle:
        for key, value in arrays.items():
            handle.create_dataset(key, data=value.astype(np.float32))
    return arrays


def write_sample_groups(path: Path, data: np.ndarray, x: np.ndarray, y: np.ndarray, t: np.ndarray) -> None:
    with h5py.File(path, "w") as handle:
        for i, sample in enumerate(data):
            handle.create_dataset(f"{i:04d}/data", data=sample, dtype="f")
            for name, values in (("x", x), ("y", y), ("t", t)):
                handle.create_dataset(f"{i:04d}/grid/{name}", data=values, dtype="f")
            handle[f"{i:04d}"].attrs["config"] = f"sim: {{seed: {i}}}\n"


def test_pdebench_incompressible_ns(tmp_path: Path) -> None:
    path = tmp_path / "ns_incom_inhom_2d_512-0.h5"
    arrays = write_incompressible_ns(path)
    data = read_pdebench(path, "incompressible-ns")
    assert data.fields.shape == (2, 6, 6, 4, 3) and data.variables == ("vx", "vy", "particles")
    np.testing.assert_allclose(data.fields[1, 2, 3, 0, :2], arrays["velocity"][1, 0, 2, 3], rtol=1e-6)
    np.testing.assert_allclose(data.fields[1, 2, 3, 3, 2], arrays["particles"][1, 3, 2, 3, 0], rtol=1e-6)
    np.testing.assert_allclose(data.t, [0.0, 0.05, 0.1, 0.15], rtol=1e-6)
    np.testing.assert_allclose(data.x, np.arange(6) + 0.5)
    assert data.static["force"].shape == (2, 6, 6, 2)
    assert read_pdebench(path, "incompressible-ns", max_samples=1).fields.shape[0] == 1


def test_pdebench_shallow_water_and_diffusion_reaction(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    x, y, t = np.linspace(-2.5, 2.5, 8), np.linspace(-2.5, 2.5, 8), np.linspace(0, 1, 5)
    h = rng.normal(size=(3, 5, 8, 8, 1))  # (N, T, X, Y, 1) as clawpack's q[depth, i, j]
    write_sample_groups(tmp_path / "2D_rdb_NA_NA.h5", h, x, y, t)
    data = read_pdebench(tmp_path / "2D_rdb_NA_NA.h5", "shallow-water", require_square=True)
    assert data.fields.shape == (3, 8, 8, 5, 1) and data.variables == ("h",)
    np.testing.assert_allclose(data.fields[2, 1, 4, 3, 0], h[2, 3, 1, 4, 0], rtol=1e-6)
    np.testing.assert_allclose(data.t, t, rtol=1e-6)

    xr, yr = np.linspace(-1, 1, 6), np.linspace(-1, 1, 4)  # a rectangle shows the (y, x) storage order
    uv = rng.normal(size=(2, 5, 4, 6, 2))  # (N, T, Y, X, 2) as PDEBench's generator writes it
    write_sample_groups(tmp_path / "2D_diff-react_NA_NA.h5", uv, xr, yr, t)
    data = read_pdebench(tmp_path / "2D_diff-react_NA_NA.h5", "diffusion-reaction")
    assert data.fields.shape == (2, 6, 4, 5, 2) and data.variables == ("u", "v")
    np.testing.assert_allclose(data.fields[1, 5, 2, 3], uv[1, 3, 2, 5], rtol=1e-6)
    with pytest.raises(PDEDataError, match="6 x 4 grid"):
        read_pdebench(tmp_path / "2D_diff-react_NA_NA.h5", "diffusion-reaction", require_square=True)


def test_pdebench_bad_files(tmp_path: Path) -> None:
    with pytest.raises(PDEDataError, match="no such file"):
        read_pdebench(tmp_path / "missing.h5", "shallow-water")
    (tmp_path / "junk.h5").write_text("junk")
    with pytest.raises(PDEDataError, match="junk.h5: not an HDF5 file"):
        read_pdebench(tmp_path / "junk.h5", "shallow-water")
    with pytest.raises(ValueError, match="unknown PDEBench kind"):
        read_pdebench(tmp_path / "junk.h5", "burgers")
    arrays = write_incompressible_ns(tmp_path / "ns.h5")
    with h5py.File(tmp_path / "ns.h5", "a") as handle:
        del handle["force"]
    with pytest.raises(PDEDataError, match=r"ns.h5: missing \['force'\]"):
        read_pdebench(tmp_path / "ns.h5", "incompressible-ns")
    with h5py.File(tmp_path / "ns.h5", "a") as handle:
        handle["force"] = arrays["force"][0]
    with pytest.raises(PDEDataError, match="'force' has shape .* rank 4"):
        read_pdebench(tmp_path / "ns.h5", "incompressible-ns")
    write_sample_groups(tmp_path / "sw.h5", np.zeros((2, 3, 4, 4, 1)), np.arange(4), np.arange(4), np.arange(3))
    with h5py.File(tmp_path / "sw.h5", "a") as handle:
        handle["0001/data"][0, 1, 1, 0] = np.nan
    with pytest.raises(PDEDataError, match="sw.h5: 'fields' contains 1 NaN"):
        read_pdebench(tmp_path / "sw.h5", "shallow-water")
    with h5py.File(tmp_path / "sw.h5", "a") as handle:
        del handle["0000/grid/t"]
    with pytest.raises(PDEDataError, match=r"sample '0000' lacks \['grid/t'\]"):
        read_pdebench(tmp_path / "sw.h5", "shallow-water")
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(PDEDataError, match="no sample groups"):
        read_pdebench(tmp_path / "empty.h5", "diffusion-reaction")


def test_cli_generates_an_fno_mat_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "ns.mat"
    command = ["data", "generate", "navier-stokes", "--num", "3", "--resolution", "8", "--solver-resolution", "16",
               "--viscosity", "1e-3", "--forcing", "symmetric", "--t-final", "0.2", "--record-every", "0.1",
               "--dt", "0.01", "--batch-size", "2", "--seed", "3", "--output", str(output)]
    assert main(command) == 0
    u = read_fno_mat(output)
    assert u.shape == (3, 8, 8, 2) and u.dtype == np.float32
    np.testing.assert_allclose(read_fno_mat(output, "t"), [0.1, 0.2])
    initial = gaussian_random_field(3, 16, seed=3)[:, ::2, ::2]
    np.testing.assert_allclose(read_fno_mat(output, "a"), initial, atol=1e-6)
    capsys.readouterr()
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and len(err.splitlines()) == 1
