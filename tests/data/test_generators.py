"""Tests of the data generators: xtb molecular dynamics and the charged n-body system."""

from __future__ import annotations

import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest

from sciml.data.generators import (
    generate_xtb_md,
    load_nbody,
    nbody_samples,
    save_nbody,
    simulate_charged_nbody,
)


def test_xtb_md_labels_match_fresh_single_points(tmp_path: Path) -> None:
    tblite_ase = pytest.importorskip("tblite.ase")
    path = tmp_path / "ethanol.extxyz"
    frames = generate_xtb_md("ethanol", n_frames=3, stride=2, equilibration_steps=5, output=path)

    back = ase.io.read(path, ":")
    assert len(frames) == len(back) == 3
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    header = path.read_text().splitlines()[1]
    assert " energy=" in header and ":forces:R:3" in header and "REF_" not in header
    for frame in back:
        assert frame.get_chemical_formula() == "C2H6O"
        energy, forces = frame.get_potential_energy(), frame.get_forces()
        frame.calc = tblite_ase.TBLite(method="GFN2-xTB", verbosity=0)
        np.testing.assert_allclose(energy, frame.get_potential_energy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(forces, frame.get_forces(), rtol=0, atol=1e-5)
    # consecutive frames differ: the dynamics moved the atoms
    assert np.abs(back[1].positions - back[0].positions).max() > 1e-3


def test_xtb_md_failed_write_keeps_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tblite.ase")
    path = tmp_path / "water.extxyz"
    path.write_text("previous content")

    def broken_write(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ase.io, "write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        generate_xtb_md("water", n_frames=1, equilibration_steps=0, output=path)
    assert path.read_text() == "previous content"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_xtb_md_unknown_molecule() -> None:
    with pytest.raises(ValueError, match="not-a-molecule"):
        generate_xtb_md("not-a-molecule", n_frames=1)


def _energies(sim: dict[str, np.ndarray]) -> np.ndarray:
    """Total energy (S, T): kinetic 0.5 sum v^2 plus Coulomb sum_{i<j} q_i q_j / r_ij."""
    loc, vel, q = sim["loc"], sim["vel"], sim["charges"][:, None, :, 0]  # q: (S, 1, n)
    kinetic = 0.5 * (vel**2).sum(axis=(2, 3))
    i, j = np.triu_indices(loc.shape[2], 1)
    r = np.linalg.norm(loc[:, :, i] - loc[:, :, j], axis=-1)
    return kinetic + (q[..., i] * q[..., j] / r).sum(axis=-1)


@pytest.mark.slow
def test_nbody_conserves_energy_and_momentum() -> None:
    """Energy drift is small on unclipped trajectories; linear momentum is conserved exactly.

    The recorded velocities lag the positions by the kick-drift scheme's half step, so a close
    encounter (large force, not clipped at this tiny step) can still perturb the recorded energy of
    an odd trajectory; the bound is therefore on 90% of them, and the median is far below it.
    """
    sim = simulate_charged_nbody(64, length=20000, sample_freq=500, seed=1, delta_T=2e-5)
    ok = ~sim["clipped"]
    assert ok.sum() >= 48
    energy = _energies(sim)[ok]
    drift = np.abs(energy - energy[:, :1]).max(axis=1) / np.abs(energy[:, 0])
    assert np.quantile(drift, 0.9) < 1e-2
    assert np.median(drift) < 1e-3
    momentum = sim["vel"][ok].sum(axis=2)  # unit masses, (S, T, 3)
    assert np.abs(momentum - momentum[:, :1]).max() < 1e-9


def test_nbody_shapes_determinism_and_file_round_trip(tmp_path: Path) -> None:
    sim = simulate_charged_nbody(6, length=1000, sample_freq=20, seed=3)
    assert sim["loc"].shape == sim["vel"].shape == (6, 49, 5, 3)
    assert sim["charges"].shape == (6, 5, 1) and set(np.unique(sim["charges"])) <= {-1.0, 1.0}
    assert sim["clipped"].shape == (6,)

    again = simulate_charged_nbody(6, length=1000, sample_freq=20, seed=3)
    for key in sim:
        np.testing.assert_array_equal(sim[key], again[key])
    other = simulate_charged_nbody(6, length=1000, sample_freq=20, seed=4)
    assert not np.array_equal(sim["loc"], other["loc"])

    samples = nbody_samples(sim)
    assert {k: v.shape for k, v in samples.items()} == {
        "loc": (6, 5, 3),
        "vel": (6, 5, 3),
        "charges": (6, 5, 1),
        "loc_target": (6, 5, 3),
    }
    np.testing.assert_array_equal(samples["loc_target"], sim["loc"][:, 40])

    path = tmp_path / "nbody.npz"
    save_nbody(path, sim)
    loaded = load_nbody(path)
    assert loaded.keys() == sim.keys()
    for key in sim:
        np.testing.assert_array_equal(loaded[key], sim[key])
        assert loaded[key].dtype == sim[key].dtype


def test_nbody_matches_reference_generator() -> None:
    """First two trajectories of EGNN's ``nbody_small`` (seed 43), as the reference code gives."""
    sim = simulate_charged_nbody(2)
    np.testing.assert_array_equal(sim["charges"][:, :, 0], [[-1, 1, -1, -1, -1], [1, -1, 1, 1, 1]])
    expected = {  # (sim, frame, particle) -> (loc, vel or None)
        (0, 0, 0): ([0.445278278029731, 1.4597731517517143, -0.5162393922514775],
                    [0.41564402647521054, -0.29711393679221615, 0.00838641580202883]),
        (0, 10, 4): ([-0.3487804242497627, -1.4982510894645709, -0.5981412841370208], None),
        (1, 0, 0): ([-2.352681413054014, -0.10184921892794359, -1.0724202548676007],
                    [0.22988487406341834, -0.4245003570085455, 0.11703430930078351]),
        (1, 10, 4): ([0.2094961836663934, 0.5927461766577449, 0.02992650752604447], None),
    }
    for (s, t, i), (loc, vel) in expected.items():
        np.testing.assert_allclose(sim["loc"][s, t, i], loc, rtol=0, atol=1e-9)
        if vel is not None:
            np.testing.assert_allclose(sim["vel"][s, t, i], vel, rtol=0, atol=1e-9)


@pytest.mark.parametrize("module, argv, needle", [
    ("pyxtal", ["data", "generate", "crystals", "--num", "1"], "pip install --no-deps pyxtal"),
    ("tblite", ["data", "generate", "xtb-md", "--frames", "2"], "pip install tblite"),
])
def test_generators_without_their_optional_package_say_what_to_install(module, argv, needle, monkeypatch, capsys,
                                                                         tmp_path):
    from cli_testing import one_error_line
    from sciml.cli.main import main

    monkeypatch.setitem(sys.modules, module, None)  # import fails as if it were not installed
    output = tmp_path / "out"
    one_error_line(capsys, main(argv + ["--output", str(output)]), f"needs the {module} package", needle)
    assert not output.exists()
