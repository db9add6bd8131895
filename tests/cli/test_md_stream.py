"""Streaming MD (sciml.simulate.run_md, sciml md): frames and log on disk as the run goes, ensembles,
restart, fixed atoms, flat memory, and one clear error line for bad input. EMT Cu stands in for a
model: what is measured is the MD driver, not the potential."""

import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, fcc111, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.io import read

from cli_testing import one_error_line
from sciml.cli.main import main
from sciml.md_log import read_last_frame, read_log
from sciml.simulate import MDSettings, fix_tags, run_md

ROOT = Path(__file__).resolve().parents[2]


class CheckedEMT(EMT):
    """EMT with the ``check_structure`` hook the CLI calls on a SciMLCalculator."""

    def check_structure(self, atoms) -> None:
        pass


class Harmonic(Calculator):
    """Atoms tied to their starting sites by springs (eV/Å²): the cheapest force field for long runs."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, sites: np.ndarray, k: float = 1.0) -> None:
        super().__init__()
        self.sites, self.k = sites.copy(), k

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        d = self.atoms.positions - self.sites
        self.results = {"energy": 0.5 * self.k * float(np.sum(d * d)), "forces": -self.k * d}


def copper(repeat: int = 2):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.calc = EMT()
    return atoms


@pytest.mark.slow
def test_nve_streams_frames_and_log_and_conserves_energy(tmp_path):
    traj, log = tmp_path / "nve.extxyz", tmp_path / "nve.log"
    atoms = copper()
    atoms.info["time_fs"] = 1234.0  # a stale time of the input must not be repeated
    report = run_md(atoms, 200, settings=MDSettings(timestep_fs=1.0, temperature_K=300, interval=10),
                    trajectory=traj, log=log)
    columns = read_log(log)
    assert list(columns["time_fs"]) == [10.0 * k for k in range(21)]
    assert list(columns["step"]) == [10 * k for k in range(21)]
    etot = columns["etot_eV"]
    assert np.allclose(etot, columns["epot_eV"] + columns["ekin_eV"], atol=1e-5)
    assert np.abs(etot - etot[0]).max() / len(atoms) < 2e-4  # eV/atom over 200 fs of 1 fs steps
    assert abs(report.drift_per_atom) < 2e-4 and report.frames_written == 21
    assert {"pressure_GPa", "volume_A3"} <= set(columns)
    frames = read(traj, ":")
    assert len(frames) == 21
    for frame, t, temperature, epot in zip(frames, columns["time_fs"], columns["temperature_K"], columns["epot_eV"]):
        assert frame.info["time_fs"] == t and frame.info["temperature_K"] == pytest.approx(temperature, abs=1e-4)
        assert frame.get_potential_energy() == pytest.approx(epot, abs=1e-5)
        assert frame.get_forces().shape == (len(atoms), 3) and frame.get_stress().shape == (6,)
        assert frame.get_temperature() == pytest.approx(temperature, rel=1e-4)  # momenta are in the frame
    stress = frames[-1].get_stress()
    assert columns["pressure_GPa"][-1] == pytest.approx(
        -np.mean(frames[-1].get_stress(include_ideal_gas=True)[:3]) / __import__("ase").units.GPa, abs=1e-3)
    assert stress is not None


def test_molecule_log_has_no_pressure_and_traj_suffix_works(tmp_path):
    atoms = molecule("CH4")
    atoms.calc = EMT()
    run_md(atoms, 20, settings=MDSettings(timestep_fs=0.25, interval=5), trajectory=tmp_path / "m.traj",
           log=tmp_path / "m.log")
    assert "pressure_GPa" not in read_log(tmp_path / "m.log")
    frames = read(tmp_path / "m.traj", ":")
    assert len(frames) == 5 and [f.info["time_fs"] for f in frames] == [0.0, 1.25, 2.5, 3.75, 5.0]


@pytest.mark.parametrize("ensemble", ["langevin", "nvt-bussi", "nose-hoover"])
@pytest.mark.slow
def test_thermostats_hold_the_target_temperature(tmp_path, ensemble):
    """32 Cu atoms, target 500 K from a perfect lattice (equipartition alone would give ~250 K)."""
    settings = MDSettings(timestep_fs=2.0, temperature_K=500, ensemble=ensemble, taut_fs=40, friction_per_fs=0.02,
                          interval=5, seed=3)
    run_md(copper(), 600, settings=settings, log=tmp_path / "t.log")
    temperature = read_log(tmp_path / "t.log")["temperature_K"][20:]  # after 200 fs
    assert abs(temperature.mean() - 500) < 60, temperature.mean()


@pytest.mark.slow
def test_npt_moves_the_volume_towards_the_target_pressure(tmp_path):
    """Cu at a = 3.5 Å is compressed (P > 0); at 0 GPa the MTK barostat expands it."""
    atoms = bulk("Cu", "fcc", a=3.5, cubic=True).repeat(2)
    atoms.calc = EMT()
    settings = MDSettings(timestep_fs=2.0, temperature_K=300, ensemble="npt", taut_fs=50, taup_fs=150, interval=10)
    run_md(atoms, 200, settings=settings, log=tmp_path / "p.log")
    columns = read_log(tmp_path / "p.log")
    assert columns["pressure_GPa"][0] > 5
    assert columns["volume_A3"][-8:].mean() > columns["volume_A3"][0] * 1.03
    assert abs(columns["pressure_GPa"][-8:].mean()) < abs(columns["pressure_GPa"][0]) / 2


def test_restart_continues_time_frames_and_trajectory_exactly(tmp_path):
    settings = MDSettings(timestep_fs=1.0, temperature_K=300, interval=10)
    whole = tmp_path / "whole.extxyz"
    run_md(copper(), 50, settings=settings, trajectory=whole, log=tmp_path / "whole.log")
    part = tmp_path / "part.extxyz"
    run_md(copper(), 30, settings=settings, trajectory=part, log=tmp_path / "part.log")
    atoms = read_last_frame(part)
    assert atoms.info == {"time_fs": 30.0, "step": 30}
    atoms.calc = EMT()
    run_md(atoms, 20, settings=settings, trajectory=part, log=tmp_path / "part.log", restart=True)
    a, b = read(whole, ":"), read(part, ":")
    assert [f.info["time_fs"] for f in b] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert [f.info["step"] for f in b] == [0, 10, 20, 30, 40, 50]
    for x, y in zip(a, b):  # NVE is deterministic: the restarted run retraces the uninterrupted one
        assert np.allclose(x.positions, y.positions, atol=1e-5)
        assert np.allclose(x.get_momenta(), y.get_momenta(), atol=1e-5)
    assert np.array_equal(read_log(tmp_path / "part.log")["time_fs"], read_log(tmp_path / "whole.log")["time_fs"])


def _fixed_slab():
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)  # ase tags layers 1 (top) .. 3 (bottom)
    slab.set_tags(np.where(slab.get_tags() == 3, 0, 1))  # OC20 style: 0 = subsurface, fixed
    slab.info.clear()  # ase's adsorbate_info cannot go to extxyz
    slab.calc = EMT()
    return slab


@pytest.mark.parametrize("ensemble", ["nve", "langevin", "nvt-bussi", "nose-hoover"])
@pytest.mark.slow
def test_fixed_atoms_do_not_move(tmp_path, ensemble):
    slab = _fixed_slab()
    assert fix_tags(slab, [0]) == 4
    start = slab.positions.copy()
    run_md(slab, 60, settings=MDSettings(timestep_fs=2.0, temperature_K=600, ensemble=ensemble, taut_fs=20,
                                         interval=20), trajectory=tmp_path / "s.extxyz")
    fixed = slab.get_tags() == 0
    assert np.array_equal(slab.positions[fixed], start[fixed])
    frames = read(tmp_path / "s.extxyz", ":")
    for frame in frames:
        assert np.array_equal(frame.positions[fixed], frames[0].positions[fixed])
        assert np.all(frame.get_momenta()[fixed] == 0)
        assert frame.constraints  # written (move_mask) so a restart keeps them
    assert np.abs(frame.positions[~fixed] - start[~fixed]).max() > 0.01


@pytest.mark.parametrize("ensemble", ["nvt-bussi", "nose-hoover"])
@pytest.mark.slow
def test_thermostat_on_a_half_fixed_slab_heats_only_the_free_atoms_to_the_target(tmp_path, ensemble):
    """36-atom slab, bottom two layers fixed: the free atoms reach 500 K (ase's Nose-Hoover chain on
    its own would count fixed atoms' momenta and all 3N degrees of freedom: 130 K here)."""
    slab = fcc111("Cu", (3, 3, 4), vacuum=6.0)
    slab.calc = EMT()
    assert fix_tags(slab, [3, 4]) == 18
    run_md(slab, 800, settings=MDSettings(timestep_fs=2.0, temperature_K=500, ensemble=ensemble, taut_fs=40,
                                          interval=5, seed=3), log=tmp_path / "s.log")
    temperature = read_log(tmp_path / "s.log")["temperature_K"][20:]
    assert abs(temperature.mean() - 500) < 75, temperature.mean()


@pytest.mark.slow
def test_fixed_atoms_under_berendsen_npt_and_mtk_refusal(tmp_path):
    from ase.constraints import FixAtoms

    atoms = copper()
    atoms.set_constraint(FixAtoms(indices=[0, 1, 2]))
    start = atoms.get_scaled_positions()[:3]
    volume = atoms.get_volume()
    settings = MDSettings(timestep_fs=2.0, temperature_K=300, ensemble="npt-berendsen", pressure_GPa=5.0, interval=10)
    run_md(atoms, 40, settings=settings, trajectory=tmp_path / "b.extxyz")
    # the barostat scales the cell, fixed atoms with it: their fractional coordinates stay put
    assert atoms.get_volume() < volume - 0.1
    assert np.allclose(atoms.get_scaled_positions()[:3], start, atol=1e-12)
    assert np.abs(atoms.get_scaled_positions()[3:] - copper().get_scaled_positions()[3:]).max() > 1e-3
    with pytest.raises(ValueError, match="npt-berendsen"):
        run_md(atoms, 10, settings=MDSettings(ensemble="npt"))


@pytest.mark.slow
def test_memory_is_flat_in_the_number_of_steps(tmp_path):
    """Python allocations peak no higher over 5,000 streamed steps than over 500 (a run that kept its
    frames, or even one float per step, would grow by hundreds of kB). The 100,000-step peak RSS of
    EMT Cu is in the report of this change; tracemalloc makes long runs slow here."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.calc = Harmonic(atoms.positions)
    run_md(atoms, 50, settings=MDSettings(timestep_fs=1.0, interval=10), trajectory=tmp_path / "warm.extxyz",
           log=tmp_path / "warm.log")  # imports and first-use caches
    peaks = []
    tracemalloc.start()
    try:
        for steps in (500, 5_000):
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            run_md(atoms, steps, settings=MDSettings(timestep_fs=1.0, interval=10),
                   trajectory=tmp_path / f"{steps}.extxyz", log=tmp_path / f"{steps}.log")
            peaks.append(tracemalloc.get_traced_memory()[1] - before)
    finally:
        tracemalloc.stop()
    assert len(read_log(tmp_path / "5000.log")["time_fs"]) == 501
    assert peaks[1] < peaks[0] + 40_000, peaks  # bytes


KILLED_RUN = """
import sys
from pathlib import Path
from ase.build import bulk
from ase.calculators.emt import EMT
from sciml.simulate import MDSettings, run_md
atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
atoms.calc = EMT()
run_md(atoms, 10**7, settings=MDSettings(timestep_fs=1.0, interval=2), trajectory=Path(sys.argv[1]),
       log=Path(sys.argv[1]).with_suffix(".log"))
"""


@pytest.mark.slow
def test_trajectory_is_readable_after_a_kill_and_restart_appends(tmp_path):
    traj = tmp_path / "killed.extxyz"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(traj)], env=env)
    deadline = time.time() + 60
    while time.time() < deadline and not (traj.exists() and traj.read_bytes().count(b"Lattice=") >= 20):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with open(traj, "ab") as handle:  # and as if the kill had come inside a frame
        handle.write(b"32\nLattice=\"7.2 0 0 0 7.2 0 0 0 7.2\" Properties=species:S:1:pos:R:3 step=999\nCu 0.0 0.")
    atoms = read_last_frame(traj)
    done = atoms.info["step"]
    assert done >= 38 and atoms.info["time_fs"] == done
    atoms.calc = EMT()
    run_md(atoms, 10, settings=MDSettings(timestep_fs=1.0, interval=2), trajectory=traj,
           log=traj.with_suffix(".log"), restart=True)
    steps = [f.info["step"] for f in read(traj, ":")]
    assert steps == list(range(0, done + 11, 2))
    assert list(read_log(traj.with_suffix(".log"))["step"]) == steps


@pytest.fixture
def emt_cli(monkeypatch):
    """`sciml md` with EMT in place of a checkpoint's model."""
    monkeypatch.setattr("sciml.cli.md.load_calculator", lambda args: CheckedEMT())


@pytest.mark.slow
def test_cli_md_restart_and_plot(emt_cli, tmp_path, capsys):
    from ase.io import write

    structure = tmp_path / "cu.extxyz"
    write(structure, bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2))
    out = tmp_path / "md.extxyz"
    assert main(["md", "model.pt", str(structure), "--ensemble", "nvt-bussi", "--steps", "40", "--timestep", "2",
                 "--interval", "10", "--output", str(out)]) == 0
    assert "energy drift" in capsys.readouterr().out
    assert len(read(out, ":")) == 5 and (tmp_path / "md.log").exists()
    assert main(["md", "model.pt", "--restart", str(out), "--ensemble", "nvt-bussi", "--steps", "20", "--timestep", "2",
                 "--interval", "10"]) == 0
    assert [f.info["time_fs"] for f in read(out, ":")] == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0]
    assert list(read_log(tmp_path / "md.log")["time_fs"]) == [0.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0]
    assert main(["plot", "md", str(tmp_path / "md.log"), "--output", str(tmp_path / "md.png")]) == 0
    assert (tmp_path / "md.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_fix_tags(emt_cli, tmp_path):
    from ase.io import write

    structure = tmp_path / "slab.extxyz"
    write(structure, _fixed_slab())
    out = tmp_path / "slab_md.extxyz"
    assert main(["md", "model.pt", str(structure), "--ensemble", "langevin", "--steps", "20", "--timestep", "2",
                 "--interval", "10", "--fix-tags", "0", "--output", str(out)]) == 0
    frames = read(out, ":")
    fixed = frames[0].get_tags() == 0
    assert np.array_equal(frames[-1].positions[fixed], frames[0].positions[fixed])


@pytest.mark.slow
def test_cli_bad_input_gives_one_line_and_writes_nothing(emt_cli, tmp_path, capsys):
    from ase.io import write

    cu, ch4 = tmp_path / "cu.extxyz", tmp_path / "ch4.xyz"
    write(cu, bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2))
    write(ch4, molecule("CH4"))
    corrupt = tmp_path / "corrupt.extxyz"
    corrupt.write_text("garbage\nnot a frame\n")
    plain = tmp_path / "plain.extxyz"
    write(plain, bulk("Cu", "fcc", a=3.61, cubic=True))  # no momenta, no time
    out = str(tmp_path / "o.extxyz")
    cases = [
        (["--restart", str(tmp_path / "missing.extxyz")], "does not exist"),
        (["--restart", str(corrupt)], "cannot read"),
        (["--restart", str(plain)], "not written by sciml md"),
        ([str(ch4), "--ensemble", "npt", "--output", out], "periodic"),
        ([str(cu), "--interval", "-1", "--output", out], "--interval"),
        ([str(cu), "--steps", "0", "--output", out], "--steps"),
        ([str(cu), "--ensemble", "nvt-bussi", "--taut", "0", "--output", out], "--taut"),
        ([str(cu), "--fix-tags", "5", "--output", out], "no atom has such a tag"),
        ([str(cu), "--output", str(tmp_path / "o.pdb")], ".extxyz"),
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    sizes = {p.name: p.stat().st_size for p in tmp_path.iterdir()}
    for extra, needle in cases:
        one_error_line(capsys, main(["md", "model.pt", *extra]), needle)
        assert sorted(p.name for p in tmp_path.iterdir()) == before, extra
        assert {p.name: p.stat().st_size for p in tmp_path.iterdir()} == sizes, extra
    Path(out).write_text("precious")
    one_error_line(capsys, main(["md", "model.pt", str(cu), "--output", out]), "already exists")
    assert Path(out).read_text() == "precious" and not (tmp_path / "o.log").exists()


def test_restart_of_an_ase_traj(tmp_path):
    traj = tmp_path / "md.traj"
    settings = MDSettings(timestep_fs=1.0, temperature_K=300, ensemble="langevin", interval=5)
    run_md(copper(), 10, settings=settings, trajectory=traj)
    atoms = read_last_frame(traj)
    assert atoms.info == {"time_fs": 10.0, "step": 10} and atoms.get_temperature() > 0
    atoms.calc = EMT()
    run_md(atoms, 10, settings=settings, trajectory=traj, restart=True)
    frames = read(traj, ":")
    assert [f.info["step"] for f in frames] == [0, 5, 10, 15, 20]
    assert frames[-1].get_forces().shape == (32, 3) and frames[-1].get_stress().shape == (6,)
