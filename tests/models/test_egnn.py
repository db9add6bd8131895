import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from sciml.bench.egnn import format_egnn_table, reference_style_forward
from sciml.graph import AtomicGraph
from sciml.models import MODELS, EnergyHead, PropertyHead, build_model, fit_element_energies
from sciml.models.heads import NUM_ELEMENTS
from sciml.testing import assert_equivariant

MOLECULE_CHECKS = ("rotation", "reflection", "translation", "permutation")


def small_model(seed: int = 0, **options):
    """A float64 EGNN whose coordinate updates are large enough to matter in the checks."""
    torch.manual_seed(seed)
    model = build_model("egnn", **{"hidden": 16, "layers": 3, "cutoff": 3.5, **options}).double()
    model.head.set_statistics(torch.zeros(NUM_ELEMENTS), scale=10.0)  # forces of order 0.1-1 eV/Å
    with torch.no_grad():
        for layer in model.layers:
            if layer.coord_mlp is not None:  # the reference's init (gain 0.001) barely moves atoms
                layer.coord_mlp[2].weight.normal_(0.0, 0.3)
    return model.eval()


def crystal():
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    atoms.set_cell(
        atoms.cell.array @ np.array([[1.0, 0.04, 0.0], [0.0, 1.03, 0.05], [0.0, 0.0, 0.98]]), scale_atoms=True
    )
    atoms.rattle(0.1, seed=1)
    return atoms


# ----------------------------------------------------------------------------------- symmetry
@pytest.mark.parametrize(
    "options", [{}, {"update_coords": True}, {"update_coords": True, "normalize": True, "tanh": True}]
)
def test_energy_invariant_and_forces_equivariant_on_a_molecule(options):
    model = small_model(**options)
    atoms = molecule("CH3CH2OH")
    assert_equivariant(model, atoms, tolerance=1e-9, checks=MOLECULE_CHECKS)
    assert (
        float(model(AtomicGraph.from_ase(atoms, cutoff=3.5, dtype=torch.float64))["forces"].detach().abs().max()) > 0.05
    )


def nbody_graph(positions, velocities, charges, model):
    return AtomicGraph.from_tensors(
        positions, torch.ones(len(positions), dtype=torch.int64), cutoff=model.cutoff, dtype=torch.float64,
        atom_properties={"velocities": velocities, "charges": charges},
    )  # fmt: skip


def nbody_model():
    torch.manual_seed(0)
    model = build_model("egnn_nbody", hidden=16, layers=3).double()
    with torch.no_grad():
        for layer in model.layers:
            layer.coord_mlp[2].weight.normal_(0.0, 0.3)
    return model.eval()


@pytest.mark.slow
def test_nbody_model_learns_on_generated_trajectories():
    from sciml.data.generators.nbody import nbody_samples, simulate_charged_nbody

    data = nbody_samples(simulate_charged_nbody(8, length=400, sample_freq=100, seed=0), frame_in=0, frame_out=2)
    torch.manual_seed(0)
    model = build_model("egnn_nbody", hidden=32, layers=2)
    graph = AtomicGraph.collate([
        AtomicGraph.from_tensors(data["loc"][s], [1] * 5, cutoff=model.cutoff,
                                 atom_properties={"velocities": data["vel"][s], "charges": data["charges"][s]})
        for s in range(8)
    ])  # fmt: skip
    assert graph.num_edges == 8 * 5 * 4  # fully connected, as in the reference
    target = torch.as_tensor(data["loc_target"], dtype=torch.float32).reshape(-1, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = (model(graph)["positions"] - target).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_nbody_model_requires_velocities_and_charges():
    model = nbody_model()
    graph = AtomicGraph.from_tensors(np.eye(3), [1, 1, 1], cutoff=model.cutoff, dtype=torch.float64)
    with pytest.raises(ValueError, match="velocities"):
        model(graph)


@pytest.mark.parametrize("update_coords", [False, True])
def test_energy_and_forces_are_continuous_when_an_atom_crosses_the_cutoff(update_coords):
    cutoff = 3.0

    def evaluate(model, distance):
        atoms = Atoms("CuCuO", positions=[[0, 0, 0], [1.6, 0.3, 0], [-distance, 0, 0]])
        out = model(AtomicGraph.from_ase(atoms, cutoff=cutoff, dtype=torch.float64))
        return float(out["energy"].detach()), out["forces"].detach()

    smooth = small_model(cutoff=cutoff, update_coords=update_coords)
    (e_in, f_in), (e_out, f_out) = evaluate(smooth, cutoff - 1e-5), evaluate(smooth, cutoff + 1e-5)
    assert abs(e_in - e_out) < 1e-12 and float((f_in - f_out).abs().max()) < 1e-9
    sharp = small_model(cutoff=cutoff, update_coords=update_coords, envelope_exponent=None)
    assert abs(evaluate(sharp, cutoff - 1e-5)[0] - evaluate(sharp, cutoff + 1e-5)[0]) > 1e-4  # the test can fail


def test_training_mode_forces_can_be_backpropagated():
    model = small_model(update_coords=True).train()
    graph = AtomicGraph.from_ase(molecule("H2O"), cutoff=3.5, dtype=torch.float64)
    model(graph)["forces"].square().sum().backward()
    assert model.embedding.weight.grad is not None and float(model.embedding.weight.grad.abs().max()) > 0


# ----------------------------------------------------------------------------------- reference
def test_nbody_model_has_the_reference_parameter_count():
    assert sum(p.numel() for p in build_model("egnn_nbody").parameters()) == 134_020


@pytest.mark.parametrize("name", ["egnn_nbody", "egnn"])
def test_fused_layers_compute_the_reference_function(name):
    """Splitting phi_e's first Linear into per-atom blocks changes only rounding."""
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    positions = rng.normal(size=(6, 3)) * 1.2
    if name == "egnn_nbody":
        model = nbody_model()
        graph = nbody_graph(positions, rng.normal(size=(6, 3)), rng.choice([-1.0, 1.0], size=6), model)
        key = "positions"
    else:
        model = build_model("egnn", preset="qm9", hidden=16, cutoff=None, envelope_exponent=None).double()
        graph = AtomicGraph.from_tensors(positions, [1, 6, 7, 8, 9, 6], cutoff=100.0, dtype=torch.float64)
        key = "energy"
    ours = model(graph, compute_forces=False) if key == "energy" else model(graph)
    assert torch.allclose(ours[key], reference_style_forward(model, graph)[key], atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------- heads
def test_fit_element_energies_recovers_per_element_energies():
    rng = np.random.default_rng(0)
    elements = [1, 6, 8, 29]
    truth = torch.zeros(NUM_ELEMENTS, dtype=torch.float64)
    truth[elements] = torch.tensor([-13.6, -1029.5, -2041.3, -45000.25], dtype=torch.float64)
    counts = torch.zeros(30, NUM_ELEMENTS, dtype=torch.float64)
    counts[:, elements] = torch.as_tensor(rng.integers(0, 6, size=(30, 4)), dtype=torch.float64)
    counts[:, 1] += 1  # no empty structures
    fitted, residual = fit_element_energies(counts, counts @ truth)
    assert torch.allclose(fitted, truth, rtol=1e-12, atol=1e-9) and residual < 1e-9
    assert torch.count_nonzero(fitted) == len(elements)  # absent elements stay 0

    graphs = [
        AtomicGraph.from_tensors(
            rng.normal(size=(int(c.sum()), 3)), np.repeat(np.arange(NUM_ELEMENTS), c.int().numpy())
        )
        for c in counts[:10]
    ]
    graphs = [AtomicGraph.collate(graphs[:4])] + graphs[4:]  # batches and single structures mix
    fitted_graphs, _ = fit_element_energies(graphs, counts[:10] @ truth)
    assert torch.allclose(fitted_graphs[elements], truth[elements], rtol=1e-10)


def test_energy_head_uses_element_energies_and_scale():
    model = small_model()
    element_energies = torch.zeros(NUM_ELEMENTS, dtype=torch.float64)
    element_energies[[1, 8]] = torch.tensor([-13.6, -2041.3], dtype=torch.float64)
    model.head.set_statistics(element_energies, scale=0.0)
    out = model(AtomicGraph.from_ase(molecule("H2O"), cutoff=3.5, dtype=torch.float64))
    assert float(out["energy"]) == pytest.approx(2 * -13.6 - 2041.3)
    assert torch.allclose(out["energies"].sum(), out["energy"].sum())
    lone = model(AtomicGraph.from_tensors([[0.0, 0.0, 0.0]], [8], cutoff=3.5, dtype=torch.float64))
    assert float(lone["energy"]) == pytest.approx(-2041.3) and float(lone["forces"].abs().max()) == 0.0
    with pytest.raises(ValueError, match="shape"):
        EnergyHead().set_statistics(torch.zeros(3), 1.0)


def test_property_head_pools_and_destandardises():
    torch.manual_seed(0)
    graph = AtomicGraph.collate([AtomicGraph.from_tensors(np.zeros((n, 3)), [1] * n) for n in (2, 3)])
    features = torch.randn(5, 4)
    for pooling in ("mean", "sum"):
        head = PropertyHead(4, 2, pooling=pooling)
        head.set_statistics(torch.tensor([1.0, -2.0]), 3.0)
        per_atom = head.mlp(features)
        reduce = torch.sum if pooling == "sum" else torch.mean
        pooled = torch.stack([reduce(per_atom[:2], 0), reduce(per_atom[2:], 0)])
        assert torch.allclose(head(features, graph), pooled * 3.0 + torch.tensor([1.0, -2.0]), atol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        PropertyHead(4, pooling="max")


# ----------------------------------------------------------------------------------- registry
def test_build_model_presets_and_rebuild_from_config():
    qm9 = build_model("egnn", preset="qm9")
    assert (qm9.options.layers, qm9.options.hidden, qm9.options.attention) == (7, 128, True)
    assert all(layer.coord_mlp is None and layer.gate is not None for layer in qm9.layers)
    model = small_model(update_coords=True, max_neighbors=12)
    rebuilt = build_model(model.model_name, **model.options.to_dict()).double()
    rebuilt.load_state_dict(model.state_dict())
    graph = AtomicGraph.from_ase(molecule("CH4"), cutoff=3.5, dtype=torch.float64)
    assert torch.equal(rebuilt(graph)["energy"], model(graph)["energy"])
    assert (model.cutoff, model.max_neighbors) == (3.5, 12)
    nbody = build_model("egnn_nbody")
    assert build_model(nbody.model_name, **nbody.options.to_dict()).options == nbody.options


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("egn", {}, "unknown model 'egn'; available: .*egnn, egnn_nbody, equiformer_v2"),
        ("egnn", {"hiden": 64}, "unknown option 'hiden' for model egnn; valid: hidden, layers"),
        ("egnn", {"preset": "qm10"}, "unknown preset 'qm10' for model egnn; available: qm9"),
        ("egnn_nbody", {"preset": "qm9"}, "unknown preset 'qm9' for model egnn_nbody"),
        ("egnn", {"hidden": 0}, "hidden and layers must be positive"),
        ("egnn", {"cutoff": -1.0}, "cutoff must be"),
    ],
)
def test_bad_options_raise_value_errors(name, options, message):
    registered = set(MODELS)
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build_model(name, **options)
    assert set(MODELS) == registered  # a failed build registers nothing


def test_graph_without_edges_is_rejected_but_isolated_atoms_are_fine():
    model = small_model()
    with pytest.raises(ValueError, match="graph has no edges; build it with cutoff=3.5"):
        model(AtomicGraph.from_tensors([[0.0, 0, 0], [1.0, 0, 0]], [1, 1], dtype=torch.float64))
    far = model(AtomicGraph.from_tensors([[0.0, 0, 0], [9.0, 0, 0]], [1, 1], cutoff=3.5, dtype=torch.float64))
    assert torch.equal(far["forces"], torch.zeros(2, 3, dtype=torch.float64))


def test_bench_table_labels_reference_times_as_not_measured_in_this_run():
    row = {"case": "nbody", "edges": 2000, "params": 134020, "max_abs_diff": 1e-6}
    row.update({f"{w}_{p}_s": 1e-3 for w in ("sciml", "baseline", "reference") for p in ("forward", "backward")})
    table = format_egnn_table([row])
    assert "not in this run" in table and "nbody" in table and "forward+backward" in table
