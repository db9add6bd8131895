import warnings

import numpy as np
import pytest

pytest.importorskip("pyxtal")
spglib = pytest.importorskip("spglib")

from ase.calculators.emt import EMT

from sciml.data.generators.crystals import (
    ENANTIOMORPHIC_PARTNER,
    generate_crystals,
    mirror_image,
    write_crystal_dataset,
)

FMAX = 0.05


@pytest.fixture(scope="module")
def achiral():
    return generate_crystals(4, seed=0, elements=("Cu", "Au", "Al"), max_atoms=6, chiral_fraction=0.0, fmax=FMAX)


@pytest.fixture(scope="module")
def chiral():
    # seed 3 draws crystals in P4_332 and P6_222, whose mirror images are in P4_132 and P6_422
    return generate_crystals(3, seed=3, elements=("Cu", "Au", "Ag"), max_atoms=6, chiral_fraction=1.0, fmax=FMAX)


def _rotations(atoms, symprec=0.1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = spglib.get_symmetry_dataset((atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers),
                                              symprec=symprec)
    return dataset.rotations


@pytest.mark.slow
def test_relaxed_and_labelled(achiral):
    assert len(achiral) == 4 and all("enantiomorph_of" not in a.info for a in achiral)
    assert [a.info["id"] for a in achiral] == ["gen-000001", "gen-000002", "gen-000003", "gen-000004"]
    for atoms in achiral:
        assert atoms.info["converged"] and not atoms.info["chiral"]
        forces, stress = atoms.get_forces(), atoms.get_stress()
        assert np.isfinite(atoms.get_potential_energy()) and np.all(np.isfinite(forces)) and np.all(np.isfinite(stress))
        assert np.linalg.norm(forces, axis=1).max() < FMAX
        # FrechetCellFilter's cell force is the virial per atom
        assert np.abs(stress).max() * atoms.get_volume() / len(atoms) < FMAX
        assert -1.0 < atoms.info["formation_energy_peratom"] < 2.0
        assert 1 <= atoms.info["spacegroup"] <= 230
        assert np.any(np.linalg.det(_rotations(atoms)) < 0)
        # the label is the recomputed EMT energy
        probe = atoms.copy()
        probe.calc = EMT()
        assert probe.get_potential_energy() == pytest.approx(atoms.get_potential_energy(), rel=1e-10)


@pytest.mark.slow
def test_reproducible_for_a_seed(achiral):
    again = generate_crystals(2, seed=0, elements=("Cu", "Au", "Al"), max_atoms=6, chiral_fraction=0.0, fmax=FMAX)
    for first, second in zip(achiral, again):
        assert first.get_chemical_formula() == second.get_chemical_formula()
        assert first.get_potential_energy() == second.get_potential_energy()


@pytest.mark.slow
def test_enantiomorph_pairs(chiral):
    pairs = [(a, b) for a, b in zip(chiral, chiral[1:]) if b.info.get("enantiomorph_of") == a.info["id"]]
    assert len(pairs) == 3 and len(chiral) == 6
    enantiomorphic_groups = 0
    for original, mirror in pairs:
        assert original.info["chiral"] and mirror.info["chiral"]
        for key in ("formation_energy_peratom", "converged"):
            assert mirror.info[key] == original.info[key]
        assert np.linalg.det(mirror.cell.array) > 0
        # not superimposable: every symmetry operation of each is proper, so no proper motion maps
        # one onto the other (it would make an improper symmetry out of the reflection)
        for atoms in (original, mirror):
            assert np.all(np.linalg.det(_rotations(atoms)) > 0)
        group = original.info["spacegroup"]
        if group in ENANTIOMORPHIC_PARTNER:
            enantiomorphic_groups += 1
            assert mirror.info["spacegroup"] == ENANTIOMORPHIC_PARTNER[group]
        else:
            assert mirror.info["spacegroup"] == group
        # EMT gives the mirror image the same energy and the reflected forces and stress
        probe = mirror.copy()
        probe.calc = EMT()
        assert probe.get_potential_energy() == pytest.approx(original.get_potential_energy(), rel=1e-8)
        assert probe.get_potential_energy() == pytest.approx(mirror.get_potential_energy(), rel=1e-8)
        np.testing.assert_allclose(probe.get_forces(), mirror.get_forces(), atol=1e-8)
        np.testing.assert_allclose(probe.get_stress(), mirror.get_stress(), atol=1e-10)
    assert enantiomorphic_groups >= 1


@pytest.mark.slow
def test_mirror_image_twice_is_the_original(chiral):
    original = chiral[0]
    back = mirror_image(mirror_image(original))
    np.testing.assert_allclose(back.cell.array, original.cell.array)
    np.testing.assert_allclose(back.get_scaled_positions(), original.get_scaled_positions(), atol=1e-12)
    np.testing.assert_allclose(back.get_forces(), original.get_forces())


@pytest.mark.slow
def test_written_dataset_reads_back(achiral, chiral, tmp_path):
    with pytest.raises(ValueError, match="gen-000001"):
        write_crystal_dataset(achiral + chiral, tmp_path / "clash")
    crystals = chiral
    paths = write_crystal_dataset(crystals, tmp_path)
    assert all(p.exists() for p in paths.values())
    assert sorted(p.name for p in (tmp_path / "cifs").iterdir()) == sorted(f"{a.info['id']}.cif" for a in crystals)
    from ase.io import read

    frames = read(tmp_path / "structures.extxyz", index=":")
    assert len(frames) == len(crystals)
    np.testing.assert_allclose(frames[-1].get_stress(), crystals[-1].get_stress(), atol=1e-8)
    assert frames[-1].info["enantiomorph_of"] == crystals[-1].info["enantiomorph_of"]
    crystals_io = pytest.importorskip("sciml.data.crystals")
    records = crystals_io.read_jarvis(paths["jarvis"])
    assert [r.id for r in records] == [a.info["id"] for a in crystals]
    for record, atoms in zip(records, crystals):
        assert record.targets["formation_energy_peratom"] == pytest.approx(atoms.info["formation_energy_peratom"])
        np.testing.assert_allclose(record.atoms.cell.array, atoms.cell.array, atol=1e-6)
    target, rows = crystals_io.read_matbench(paths["matbench"])
    assert target == "formation_energy_peratom" and len(rows) == len(crystals)
    assert rows[-1].targets[target] == pytest.approx(crystals[-1].info["formation_energy_peratom"])


@pytest.mark.slow
def test_cli(tmp_path, capsys):
    from sciml.cli.main import main

    output = tmp_path / "crystals"
    argv = ["data", "generate", "crystals", "--num", "2", "--seed", "1", "--elements", "Cu", "Ag",
            "--max-atoms", "4", "--output", str(output)]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    assert (output / "dft_3d.json").is_file() and (output / "matbench_formation_energy_peratom.json.gz").is_file()
    assert (output / "structures.extxyz").is_file() and any((output / "cifs").iterdir())
    assert main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="EMT fcc metal"):
        generate_crystals(1, elements=("Fe",))
    with pytest.raises(ValueError):
        generate_crystals(0)
