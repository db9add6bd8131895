"""``compile: true`` trains on forces and stress (double backward) as eager training does.

Each test trains the same seeded run twice, eager and compiled, for 3 epochs on real data (EMT
labelled periodic crystals with stress, xTB ethanol molecules) and compares the per-epoch
training and validation losses. EGNN is compiled with inductor (generated kernels, the default);
the EquiformerV2 runs use the aot_eager backend, which traces and differentiates the same graph
but runs it op by op, to keep the suite short (inductor's C++ build of an EquiformerV2 graph
takes minutes on two cores; ``sciml bench equiformer_v2 --train-step`` compiles it with inductor).
Training sets are multiples of the batch size: a batch of one structure would compile once more.
"""

from __future__ import annotations

import csv
from pathlib import Path

import ase.io
import pytest
import torch

from sciml.data.crystals import read_jarvis
from sciml.data.generators import perturbed_crystals
from sciml.graph import AtomicGraph
from sciml.io.files import write_extxyz
from sciml.models import ENERGY_OUTPUTS, Model
from sciml.train import Trainer, load_config, train
from sciml.train.compile import CompiledOutputs

ROOT = Path(__file__).resolve().parents[2]
ETHANOL = ROOT / "datasets" / "ethanol_xtb_500K" / "ethanol_xtb_500K.extxyz"
CRYSTALS = ROOT / "datasets" / "crystals_emt" / "dft_3d.json"
# 24 structures: 4 validate, 20 train in batches of 5
SETTINGS = ["split.valid=4", "split.test=0", "batch_size=5", "epochs=3", "optimizer.lr=3e-3", "seed=1"]
TINY_EQUIFORMER_OPTIONS = dict(num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4,
                               attn_value_channels=4, ffn_hidden_channels=8, lmax=2, mmax=1, grid_resolution=None,
                               edge_channels=8, num_distance_basis=16, cutoff=4.0, max_neighbors=12)
TINY_EQUIFORMER = ", ".join(f"{key}: {'null' if value is None else value}" for key, value in TINY_EQUIFORMER_OPTIONS.items())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    """Perturbed EMT crystals with energy, forces and stress; ethanol frames with energy and forces."""
    folder = tmp_path_factory.mktemp("compile_data")
    crystals = [record.atoms for record in read_jarvis(CRYSTALS)[:80] if len(record.atoms) <= 4][:8]
    write_extxyz(folder / "crystals.extxyz", perturbed_crystals(crystals, copies=3, seed=0))
    ase.io.write(folder / "ethanol.extxyz", ase.io.read(ETHANOL, index=":24"))
    return {"crystals": folder / "crystals.extxyz", "ethanol": folder / "ethanol.extxyz"}


def epoch_losses(run_dir: Path) -> list:
    with open(run_dir / "metrics.csv", newline="") as handle:
        return [(float(row["train_loss"]), float(row["valid_loss"])) for row in csv.DictReader(handle)]


def assert_compiled_trains_as_eager(tmp_path: Path, overrides: list) -> None:
    losses = {}
    for compiled in (False, True):
        config = load_config(None, SETTINGS + overrides + [f"output_dir={tmp_path / str(compiled)}",
                                                          f"compile={str(compiled).lower()}"])
        train(config, verbose=False)
        losses[compiled] = epoch_losses(tmp_path / str(compiled))
    assert len(losses[True]) == 3
    for eager, compiled in zip(losses[False], losses[True]):
        assert compiled == pytest.approx(eager, rel=1e-5, abs=0)


@pytest.mark.slow
def test_egnn_trains_compiled_on_forces_and_stress_as_eager(data, tmp_path):
    assert_compiled_trains_as_eager(tmp_path, [
        f"data.path={data['crystals']}", "model={name: egnn, options: {hidden: 16, layers: 2, cutoff: 4.0}}",
        "loss.stress=1.0"])


@pytest.mark.slow
def test_conservative_equiformer_v2_trains_compiled_as_eager_with_dropout(data, tmp_path):
    # dropout and drop path draw random numbers inside the compiled graph: the same ones as eager
    options = f"{{{TINY_EQUIFORMER}, direct_forces: false, alpha_drop: 0.2, drop_path_rate: 0.2}}"
    assert_compiled_trains_as_eager(tmp_path, [
        f"data.path={data['crystals']}", f"model={{name: equiformer_v2, options: {options}}}", "loss.stress=1.0",
        "compile_backend=aot_eager"])


@pytest.mark.slow
def test_direct_force_equiformer_v2_trains_compiled_as_eager(data, tmp_path):
    options = f"{{{TINY_EQUIFORMER}, direct_forces: true, alpha_drop: 0.0, drop_path_rate: 0.0}}"
    assert_compiled_trains_as_eager(tmp_path, [
        f"data.path={data['ethanol']}", f"model={{name: equiformer_v2, options: {options}}}",
        "compile_backend=aot_eager"])


@pytest.mark.slow
def test_compiled_force_training_refuses_activation_checkpointing(data, tmp_path):
    config = load_config(None, SETTINGS + [
        f"data.path={data['ethanol']}", "model={name: egnn, options: {hidden: 8, layers: 1}}", "compile=true",
        "activation_checkpointing=true", f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="compile and activation_checkpointing cannot be combined"):
        Trainer(config, verbose=False)


class EdgeCountingPotential(torch.nn.Module, Model):
    """A pair potential written with ``int()`` of the number of edges, as size-fixing code is.
    Its forces are -dE/dx of its energy (taken by CompiledOutputs)."""

    outputs = {"energy": ENERGY_OUTPUTS["energy"]}
    forces = "conservative"

    def __init__(self):
        super().__init__()
        self.strength = torch.nn.Parameter(torch.ones(()))

    def forward(self, graph: AtomicGraph, compute_forces: bool = True, compute_stress: bool = False):
        centres, neighbours = graph.edge_index
        vectors = graph.positions[neighbours] - graph.positions[centres]
        lengths = vectors.norm(dim=1).view(int(graph.edge_index.shape[1]), 1)
        return {"energy": (self.strength / lengths).sum().reshape(1)}


@pytest.mark.slow
def test_a_model_that_fixes_the_number_of_edges_is_refused_when_traced():
    batch = AtomicGraph.collate([AtomicGraph.from_ase(a, cutoff=3.0) for a in ase.io.read(ETHANOL, index=":3")])
    with pytest.raises(ValueError, match=f"fixed the number of edges to {batch.num_edges}"):
        CompiledOutputs(EdgeCountingPotential(), True, False, backend="aot_eager")(batch)


@pytest.mark.parametrize("name", ["egnn", "equiformer_v2"])
@pytest.mark.slow
def test_compiled_force_and_stress_loss_has_the_eager_parameter_gradients(name):
    """float64: outputs and every parameter's gradient of a loss on energy, forces and stress equal
    eager autograd's to round-off (a force graph traced through autograd.grad would be off by 1e-7
    relative, see sciml.train.compile), in training mode with dropout and drop path drawn alike."""
    from ase.build import bulk

    from sciml.inference import model_outputs
    from sciml.models import build_model

    options = ({"hidden": 16, "layers": 2, "cutoff": 4.0} if name == "egnn" else
               {**TINY_EQUIFORMER_OPTIONS, "direct_forces": False, "alpha_drop": 0.3, "drop_path_rate": 0.3})
    torch.manual_seed(0)
    model = build_model(name, **options).double().train()
    cells = []
    for seed in range(3):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.1, seed=seed)
        cells.append(AtomicGraph.from_ase(atoms, model.graph_spec, dtype=torch.float64))
    batch = AtomicGraph.collate(cells)

    def step(outputs):
        model.zero_grad()
        torch.manual_seed(1)
        out = outputs(batch)
        (out["energy"].square().sum() + out["forces"].square().sum() + out["stress"].square().sum()).backward()
        return out, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    eager, eager_grads = step(lambda b: model_outputs(model, b, True, True))
    compiled, compiled_grads = step(CompiledOutputs(model, True, True, backend="aot_eager"))
    assert eager["forces"].abs().max() > 1e-5 and eager["stress"].abs().max() > 1e-7  # not zeros
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-12, atol=1e-14)
    assert len(compiled_grads) == len(eager_grads) > 0
    for compiled_grad, eager_grad in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-10, atol=1e-14)

