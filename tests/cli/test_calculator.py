import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS

from sciml.calculator import SciMLCalculator
from sciml.inference import predict
from sciml.io import save_checkpoint
from sciml.models import build_model
from sciml.simulate import run_md


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("egnn", hidden=16, layers=2, cutoff=4.0).double()


def test_forces_and_stress_match_ase_finite_differences(model):
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 1)
    atoms.rattle(0.05, seed=1)
    atoms.calc = SciMLCalculator(model)
    assert atoms.get_potential_energy() == atoms.get_potential_energy(apply_constraint=False)
    assert atoms.calc.results["free_energy"] == atoms.get_potential_energy()
    numeric_forces = calculate_numerical_forces(atoms, eps=1e-5)
    assert np.allclose(atoms.get_forces(), numeric_forces, atol=1e-6)
    numeric_stress = calculate_numerical_stress(atoms, eps=1e-5)
    assert np.allclose(atoms.get_stress(), numeric_stress, atol=1e-7)


def test_molecule_has_no_stress(model):
    atoms = molecule("CH3CH2OH")
    atoms.calc = SciMLCalculator(model)
    assert atoms.get_forces().shape == (9, 3)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_recomputes_only_when_the_structure_changes(model, monkeypatch):
    atoms = molecule("H2O")
    calc = SciMLCalculator(model)
    atoms.calc = calc
    calls = []
    original = calc.model.forward
    monkeypatch.setattr(calc.model, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    atoms.get_potential_energy()
    atoms.get_forces()
    assert len(calls) == 1
    atoms.positions[0, 0] += 0.01
    atoms.get_forces()
    assert len(calls) == 2


def test_bfgs_relaxation_and_cell_filter_converge(model):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    atoms.calc = SciMLCalculator(model)
    assert BFGS(atoms, logfile=None).run(fmax=0.05, steps=300)
    assert np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.05
    crystal = bulk("Cu", "fcc", a=3.7) * (2, 1, 1)
    crystal.rattle(0.02, seed=3)
    crystal.calc = SciMLCalculator(model)
    assert BFGS(FrechetCellFilter(crystal), logfile=None).run(fmax=0.05, steps=300)


@pytest.mark.slow
def test_nve_md_conserves_energy(model):
    atoms = molecule("CH3CH2OH")
    atoms.calc = SciMLCalculator(model)
    report = run_md(atoms, steps=100, timestep_fs=0.25, temperature_K=300)
    assert abs(report.drift_per_atom) < 1e-4  # eV/atom over 25 fs


def test_predict_batches_equal_the_calculator(model, tmp_path):
    structures = [molecule("H2O"), bulk("Cu", "fcc", a=3.6) * (2, 1, 1), molecule("CH4")]
    rows = predict(structures, model, batch_size=2)
    for atoms, row in zip(structures, rows):
        atoms.calc = SciMLCalculator(model)
        assert row["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        assert np.allclose(row["forces"], atoms.get_forces(), atol=1e-10)
        assert ("stress" in row) == bool(atoms.pbc.any())
    path = save_checkpoint(tmp_path / "m.pt", model.state_dict(), model.model_name, options=model.options.to_dict())
    calc = SciMLCalculator.from_checkpoint(str(path))
    water = molecule("H2O")
    water.calc = calc
    assert water.get_potential_energy() == pytest.approx(rows[0]["energy"], abs=1e-5)
