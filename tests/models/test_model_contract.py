"""The model contract: a new model written in this one file is built by build_model, trained by
the trainer, served by the calculator and checked by the conformance suite, with no other file
edited; the suite fails a model that breaks what it declares."""

import csv
from dataclasses import dataclass
from typing import Dict

import pytest
import torch
from ase.build import molecule
from ase.io import read, write
from torch import nn

from cli_testing import ETHANOL
from sciml.graph import AtomicGraph, MessagePassing, PolynomialEnvelope
from sciml.graph.radial import GaussianBasis
from sciml.models import ENERGY_OUTPUTS, MODELS, Model, ModelOptions, build_model, register_model
from sciml.models.heads import NUM_ELEMENTS, EnergyHead, check_embedded_elements
from sciml.ops import scatter
from sciml.testing import conformance


@dataclass(frozen=True)
class PairOptions(ModelOptions):
    """Options of the toy pair model: ``cutoff`` Å, ``basis`` Gaussians, ``hidden`` width."""

    cutoff: float = 4.0
    basis: int = 8
    hidden: int = 16


@register_model("toy_pair", PairOptions, presets={"wide": PairOptions(hidden=64)})
class PairModel(MessagePassing, Model):
    """E = sum_i MLP(sum_j w(r_ij) [z_j embedding] * basis(r_ij)): a toy many-body potential."""

    symmetry = "E(3)"
    outputs = ENERGY_OUTPUTS
    forces = "conservative"

    def __init__(self, options: PairOptions = PairOptions()):
        super().__init__(cutoff=options.cutoff)
        self.options = options
        self.embedding = nn.Embedding(NUM_ELEMENTS, options.basis)
        self.basis = GaussianBasis(0.0, options.cutoff, options.basis)
        self.envelope = PolynomialEnvelope(options.cutoff, 5)
        self.readout = nn.Sequential(nn.Linear(options.basis, options.hidden), nn.SiLU(), nn.Linear(options.hidden, 1))
        self.head = EnergyHead()

    def check_elements(self, graph: AtomicGraph) -> None:
        check_embedded_elements(graph, NUM_ELEMENTS, "toy pair model")

    def forward(self, graph: AtomicGraph, compute_forces: bool = True, compute_stress: bool = False
                ) -> Dict[str, torch.Tensor]:
        self.check_graph(graph)
        geometry = self.geometry(graph, forces=compute_forces or compute_stress, stress=compute_stress)
        centres, neighbours = graph.edge_index
        messages = self.basis(geometry.lengths) * self.envelope(geometry.lengths).unsqueeze(1)
        messages = messages * self.embedding(graph.atomic_numbers[neighbours])
        atoms = scatter(messages, centres, graph.num_nodes, "sum")
        return self.head(self.readout(atoms).squeeze(1), graph, geometry if compute_forces or compute_stress else None,
                         training=self.training)


@register_model("toy_pair_absolute", PairOptions)
class AbsolutePairModel(PairModel):
    """Declares E(3) but adds a term in absolute positions: not translation or rotation invariant."""

    def forward(self, graph, compute_forces=True, compute_stress=False):
        out = super().forward(graph, compute_forces, compute_stress)
        out["energy"] = out["energy"] + scatter(graph.positions[:, 0], graph.batch, graph.num_graphs, "sum")
        return out


@pytest.fixture(scope="module", autouse=True)
def unregister_toys():
    yield
    for name in ("toy_pair", "toy_pair_absolute"):
        MODELS.pop(name)


def test_a_model_in_one_file_is_built_by_name_with_presets_and_checked_options():
    model = build_model("toy_pair", preset="wide", cutoff=3.5)
    assert model.model_name == "toy_pair" and model.options == PairOptions(cutoff=3.5, hidden=64)
    assert isinstance(build_model("toy_pair", cutoff=4).options.cutoff, float)  # YAML integers become floats
    with pytest.raises(ValueError, match="unknown option 'hiden' for model toy_pair; valid: cutoff, basis, hidden"):
        build_model("toy_pair", hiden=3)
    with pytest.raises(ValueError, match="option hidden of PairOptions must be int"):
        build_model("toy_pair", hidden="wide")
    with pytest.raises(ValueError, match="unknown preset 'narrow' for model toy_pair; available: wide"):
        build_model("toy_pair", preset="narrow")


@pytest.mark.parametrize("check", conformance.CHECKS)
def test_the_new_model_passes_the_conformance_suite(check):
    getattr(conformance, f"check_{check}")("toy_pair")


def test_the_suite_fails_a_model_that_breaks_its_declared_symmetry():
    with pytest.raises(AssertionError, match="toy_pair_absolute is not E\\(3\\)-equivariant"):
        conformance.check_symmetry("toy_pair_absolute")


def test_registration_refuses_a_class_outside_the_contract_and_a_taken_name():
    with pytest.raises(TypeError, match="must derive sciml.models.Model"):
        register_model("toy_plain", PairOptions)(nn.Linear)
    with pytest.raises(ValueError, match="'toy_pair' is taken by PairModel"):
        register_model("toy_pair", PairOptions)(AbsolutePairModel)
    with pytest.raises(TypeError, match="presets \\['big'\\] of toy_other are not PairOptions"):
        register_model("toy_other", PairOptions, presets={"big": {"hidden": 3}})(PairModel)
    assert "toy_plain" not in MODELS and "toy_other" not in MODELS


def test_the_trainer_trains_it_and_the_calculator_serves_it(tmp_path):
    from sciml.calculator import SciMLCalculator
    from sciml.train import load_config, train

    write(tmp_path / "data.extxyz", read(ETHANOL, ":40"))
    (tmp_path / "config.yaml").write_text(f"""
model: {{name: toy_pair, options: {{hidden: 16}}}}
data: {{path: {tmp_path / 'data.extxyz'}}}
split: {{train: 30, valid: 5, test: 5, seed: 0}}
loss: {{energy: 1.0, forces: 1.0}}
optimizer: {{lr: 0.003}}
epochs: 4
batch_size: 10
output_dir: {tmp_path / 'run'}
""")
    train(load_config(tmp_path / "config.yaml"), verbose=False)
    with open(tmp_path / "run" / "metrics.csv") as handle:
        losses = [float(row["valid_loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    calculator = SciMLCalculator.from_checkpoint(str(tmp_path / "run" / "best.pt"), device="cpu")
    atoms = read(ETHANOL, "35")
    atoms.calc = calculator
    model = calculator.model
    expected = model(AtomicGraph.from_ase(atoms, model.graph_spec, dtype=torch.float64))["energy"]
    assert atoms.get_potential_energy() == pytest.approx(float(expected), abs=1e-9)
    assert atoms.get_forces().shape == (9, 3)
    water = molecule("H2O")
    water.numbers[0] = 11  # sodium: outside the training domain (H, C, O)
    water.calc = calculator
    with pytest.raises(ValueError, match="Na"):
        water.get_potential_energy()
