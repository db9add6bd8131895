"""Export-ready models (torch.export of the forward) and exported AOTInductor packages (.pt2).

AOTInductor compiles cost tens of seconds each on a CPU: each package is built once per module.
"""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from torch.utils import _pytree as pytree

from sciml.calculator import SciMLCalculator
from sciml.deploy import ExportError, export_model, load_exported
from sciml.deploy.export import export_forward, read_metadata
from sciml.graph import AtomicGraph
from sciml.io.checkpoint import save_checkpoint
from sciml.models import build_model
from sciml.models.heads import NUM_ELEMENTS

EQUIFORMER = dict(num_layers=1, sphere_channels=8, attn_hidden_channels=8, num_heads=2, attn_alpha_channels=4,
                  attn_value_channels=4, ffn_hidden_channels=8, lmax=2, mmax=1, grid_resolution=6, edge_channels=8,
                  num_distance_basis=16, cutoff=3.0, max_neighbors=None, max_num_elements=10, alpha_drop=0.0,
                  drop_path_rate=0.0)  # fmt: skip
COMFORMER = dict(target="energy", features=16, rbf_bins=16, fc_features=16, k=8, node_layers=2)


def energy_model(name: str, **options) -> torch.nn.Module:
    """A small float64 model whose energies and forces are far from zero."""
    torch.manual_seed(0)
    presets = {"egnn": dict(hidden=16, layers=2, cutoff=3.0), "equiformer_v2": EQUIFORMER}
    model = build_model(name, **{**presets.get(name, COMFORMER), **options}).double().eval()
    element_energies = torch.linspace(-3.0, -1.0, NUM_ELEMENTS, dtype=torch.float64)
    model.head.set_statistics(element_energies, scale=5.0)
    return model


def crystal(repeat=(2, 1, 1), seed=1) -> Atoms:
    atoms = bulk("C", "diamond", a=3.6) * repeat
    atoms.numbers[::3] = 7
    atoms.rattle(0.1, seed=seed)
    return atoms


def triclinic(seed=0, n=4) -> Atoms:
    rng = np.random.default_rng(seed)
    cell = np.diag([3.4, 3.9, 4.4]) + rng.uniform(-0.5, 0.5, (3, 3))
    return Atoms(["Cu", "Au", "Ag", "Ni", "Pd"][:n], scaled_positions=rng.uniform(0, 1, (n, 3)), cell=cell, pbc=True)


def graph_of(model, atoms) -> AtomicGraph:
    return AtomicGraph.from_ase(atoms, model.graph_spec, dtype=torch.float64)


# ------------------------------------------------------------------------------ part 4: export-ready forward
@pytest.mark.parametrize(
    "name, options, first, second",
    [
        ("egnn", {}, crystal(), crystal((2, 2, 1), seed=3)),
        ("egnn", {"update_coords": True, "envelope_exponent": None}, crystal(), molecule("CH3CH2OH")),
        ("equiformer_v2", {"direct_forces": False}, crystal(), crystal((2, 2, 1), seed=3)),
        ("equiformer_v2", {"direct_forces": True}, crystal(), molecule("CH3CH2OH")),
        ("icomformer", {}, triclinic(0, 4), triclinic(1, 5)),
        ("ecomformer", {}, triclinic(0, 4), triclinic(1, 5)),
    ],
    ids=["egnn", "egnn-moving", "equiformer-conservative", "equiformer-direct", "icomformer", "ecomformer"],
)
@pytest.mark.slow
def test_forward_exports_with_dynamic_atoms_and_edges(name, options, first, second):
    model = energy_model(name, **options)
    stress = bool(first.pbc.all()) and model.forces == "conservative"
    program = export_forward(model, graph_of(model, first), compute_forces=True, compute_stress=stress)
    graph = graph_of(model, second)
    assert (graph.num_nodes, graph.num_edges) != (len(first), graph_of(model, first).num_edges)
    exported = program.module()(*[t for t in pytree.tree_leaves(graph) if isinstance(t, torch.Tensor)])
    eager = model(graph, compute_forces=True, compute_stress=stress)
    assert sorted(exported) == sorted(eager) and ("stress" in eager) == stress
    for key, value in eager.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=1e-10, msg=key)
    assert float(eager["forces"].detach().abs().max()) > 1e-3
    if name != "ecomformer":  # the models that export as packages trace to torch operators only (libtorch runs them)
        assert not [node.target for node in program.graph.nodes if "sciml" in str(node.target)]


def test_stress_is_zero_for_structures_without_periodic_directions():
    model = energy_model("egnn")
    graph = AtomicGraph.collate([graph_of(model, crystal()), graph_of(model, molecule("H2O"))])
    stress = model(graph, compute_forces=True, compute_stress=True)["stress"]
    assert float(stress[0].abs().max()) > 1e-4 and torch.equal(stress[1], torch.zeros(3, 3, dtype=torch.float64))


def test_value_checks_still_raise_in_eager_calls():
    with pytest.raises(ValueError, match="element embedding"):
        energy_model("equiformer_v2")(AtomicGraph.from_tensors([[0.0, 0, 0]], [12], cutoff=3.0, dtype=torch.float64))
    graph = AtomicGraph.from_tensors([[0.0, 0, 0], [1.0, 0, 0]], [1, 1], dtype=torch.float64)
    with pytest.raises(ValueError, match="no edges"):
        energy_model("egnn")(graph)


# ------------------------------------------------------------------------------ part 6: exported packages
@pytest.fixture(scope="module")
def egnn_checkpoint(tmp_path_factory):
    model = energy_model("egnn")
    path = tmp_path_factory.mktemp("egnn") / "egnn.pt"
    save_checkpoint(path, model.state_dict(), model.model_name, model.options.to_dict())
    return path


@pytest.fixture(scope="module")
def egnn_package(egnn_checkpoint):
    """float64 EGNN, exported through the command line."""
    from sciml.cli.main import main

    path = egnn_checkpoint.with_suffix(".pt2")
    assert main(["export", str(egnn_checkpoint), "--output", str(path)]) == 0
    return path


PACKAGES = {  # name: (model, dtype); each is compiled once per module, when a test asks for it
    # the default width (128 features): vectorised inductor kernels of that width crashed at run time
    "egnn-float32": (("egnn", {"hidden": 128}), "float32"),
    "equiformer-conservative-float64": (("equiformer_v2", {"direct_forces": False}), "float64"),
    "equiformer-direct-float32": (("equiformer_v2", {"direct_forces": True}), "float32"),
}
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}


@pytest.fixture(scope="module", params=["egnn-float64", *PACKAGES])
def package(request, egnn_checkpoint, tmp_path_factory):
    """(eager model, loaded package, dtype name) for each exported configuration."""
    if request.param == "egnn-float64":
        return energy_model("egnn"), load_exported(request.getfixturevalue("egnn_package")), "float64"
    (name, options), dtype = PACKAGES[request.param]
    model = energy_model(name, **options)
    path = export_model(model, tmp_path_factory.mktemp("package") / f"{request.param}.pt2", dtype=dtype)
    return model.to(getattr(torch, dtype)), load_exported(path), dtype


@pytest.mark.parametrize("atoms", [crystal((2, 2, 1), seed=4), molecule("CH3CH2OH"), Atoms("N", [[0.0, 0, 0]])],
                         ids=["crystal", "molecule", "isolated-atom"])
@pytest.mark.slow
def test_package_equals_eager_model(package, atoms):
    model, exported, dtype_name = package
    dtype = getattr(torch, dtype_name)
    graph = AtomicGraph.from_ase(atoms, model.graph_spec, dtype=dtype)
    assert graph.num_nodes != 7  # the size the package was traced with
    periodic = bool(atoms.pbc.any())
    conservative = model.forces == "conservative"
    eager = model(graph, compute_forces=True, compute_stress=periodic and conservative)
    energy, energies, forces, virial = exported(graph.positions, graph.atomic_numbers, graph.cell[0],
                                                graph.edge_index, graph.cell_shifts.to(dtype))
    tolerance = TOLERANCE[dtype_name]
    expected = {"energy": eager["energy"], "energies": eager["energies"], "forces": eager["forces"]}
    if periodic and conservative:
        volume = torch.linalg.det(graph.cell[0]).abs()
        expected["virial"] = -eager["stress"][0] * volume
    for key, value in expected.items():
        got = {"energy": energy, "energies": energies, "forces": forces, "virial": virial}[key]
        assert got.dtype == dtype
        torch.testing.assert_close(got, value.detach(), rtol=tolerance, atol=tolerance, msg=key)
    if not conservative:
        assert torch.equal(virial, torch.zeros(3, 3, dtype=dtype))
    assert len(atoms) == 1 or float(forces.abs().max()) > 1e-4


@pytest.mark.slow
def test_package_metadata(egnn_package):
    metadata = read_metadata(egnn_package)
    assert metadata["sciml_format"] == "1" and metadata["model"] == "egnn" and float(metadata["cutoff"]) == 3.0
    assert metadata["dtype"] == "float64" and metadata["device"] == "cpu"
    assert metadata["torch_version"] == torch.__version__ and metadata["forces"] == "conservative"
    elements = metadata["elements"].split()
    assert elements[:3] == ["H", "He", "Li"] and len(elements) == NUM_ELEMENTS - 1


@pytest.mark.slow
def test_calculator_from_package_equals_calculator_from_checkpoint(egnn_checkpoint, egnn_package):
    from ase.calculators.calculator import PropertyNotImplementedError

    atoms = crystal((2, 1, 2), seed=5)
    results = []
    for path in (egnn_checkpoint, egnn_package):
        atoms.calc = SciMLCalculator.from_checkpoint(str(path))
        results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
    for eager, exported in zip(*results):
        np.testing.assert_allclose(exported, eager, rtol=0, atol=1e-10)
    water = molecule("H2O")
    water.calc = SciMLCalculator.from_checkpoint(str(egnn_package))
    assert abs(water.get_potential_energy()) > 0.1
    with pytest.raises(PropertyNotImplementedError):
        water.get_stress()


@pytest.mark.slow
def test_predict_and_relax_run_a_package(egnn_checkpoint, egnn_package, tmp_path, capsys):
    import json

    from sciml.cli.main import main

    structure = tmp_path / "crystal.extxyz"
    crystal((2, 2, 1), seed=6).write(structure)
    rows = []
    for path in (egnn_checkpoint, egnn_package):
        output = tmp_path / f"{path.suffix[1:]}.json"
        assert main(["predict", "--checkpoint", str(path), str(structure), "--output", str(output)]) == 0
        rows.append(json.loads(output.read_text())[0])
    for key in ("energy_eV", "pressure_GPa", "forces_eV_per_A"):
        np.testing.assert_allclose(rows[1][key], rows[0][key], rtol=0, atol=1e-9, err_msg=key)
    main(["relax", str(egnn_package), str(structure), "--steps", "3"])
    assert "after" in capsys.readouterr().out


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "name, options, message",
    [
        ("icomformer", {}, "k-nearest-neighbour crystal graph"),
        ("egnn", {"max_neighbors": 12}, "max_neighbors=12"),
        ("egnn", {"cutoff": None}, "cutoff=None"),
        ("egnn_nbody", {}, "does not predict energies"),
        ("equiformer_v2", {"direct_forces": True, "stress_head": True}, "direct stress head"),
    ],
)
def test_unexportable_models_are_refused_naming_why(name, options, message, tmp_path):
    model = build_model(name, **options) if name == "egnn_nbody" else energy_model(name, **options)
    with pytest.raises(ExportError, match=message) as error:
        export_model(model, tmp_path / "model.pt2")
    assert "\n" not in str(error.value) and not (tmp_path / "model.pt2").exists()


def test_cli_export_refuses_a_crystal_graph_model_in_one_line(tmp_path, capsys):
    from sciml.cli.main import main

    model = energy_model("ecomformer")
    checkpoint = tmp_path / "ecomformer.pt"
    save_checkpoint(checkpoint, model.state_dict(), model.model_name, model.options.to_dict())
    assert main(["export", str(checkpoint), "--output", str(tmp_path / "x.pt2")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("sciml export: error: ecomformer reads a k-nearest-neighbour") and "\n" not in error


def _with_metadata(package, tmp_path, **changes):
    """A copy of ``package`` whose metadata has ``changes``."""
    import json
    import zipfile

    copy = tmp_path / f"changed-{len(list(tmp_path.iterdir()))}.pt2"
    with zipfile.ZipFile(package) as source, zipfile.ZipFile(copy, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename.endswith(".wrapper_metadata.json"):
                data = json.dumps({**json.loads(data), **changes}).encode()
            target.writestr(item, data)
    return copy


@pytest.mark.slow
def test_loading_a_package_of_another_torch_version_or_device_says_so(egnn_package, tmp_path):
    with pytest.raises(ExportError, match=r"built by torch 2\.0\.0 but this is torch"):
        load_exported(_with_metadata(egnn_package, tmp_path, torch_version="2.0.0"))
    with pytest.raises(ExportError, match="was built for cpu and cannot run on cuda"):
        load_exported(egnn_package, device="cuda")
    with pytest.raises(ExportError, match="not an exported sciml model"):
        load_exported(_with_metadata(egnn_package, tmp_path, sciml_format="0"))
    with pytest.raises(ExportError, match="does not exist"):
        load_exported(tmp_path / "missing.pt2")
