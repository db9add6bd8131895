"""Every released fairchem v1 EquiformerV2 family (OMat24/MPtrj/sAlex with the rank-2 stress head,
its DeNS variant, OC22 with linear references, ODAC S2EF and IS2RE) loads in sciml with fairchem's
outputs: energies, forces and stress on a bulk crystal, a slab and a molecule against
tests/fixtures/fairchem_families (made by workflows/fairchem_families/make_fixtures.py with
fairchem-core 1.10.0), parameter counts of the published configs, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from sciml.calculator import SciMLCalculator
from sciml.fairchem import load_fairchem_checkpoint
from sciml.graph import AtomicGraph
from sciml.inference import load_model
from sciml.io import CheckpointError
from sciml.models.equiformer_v2 import EquiformerV2, EquiformerV2Options, fairchem_model_options

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fairchem_families"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text())
FAMILIES = sorted(REFERENCE["families"])
STRUCTURES = {atoms.info["name"]: atoms for atoms in ase.io.read(FIXTURES / "structures.extxyz", ":")}
# float32 must agree to 1e-5 (the issue's bar); float64 is bounded by fairchem 1.10's float32
# Wigner tables (Jd.pt) and float32 periodic offsets (get_pbc_distances)
TOLERANCES = {torch.float32: 1e-5, torch.float64: 2e-6}


def energy_tolerance(energy: float, dtype: torch.dtype) -> float:
    """The bar, or 2 float32 ulps of the total energy where the element references make it large
    (-110 eV: fairchem's float32 total itself is only resolved to 7.6e-6 eV)."""
    return max(TOLERANCES[dtype], 2 * torch.finfo(dtype).eps * abs(energy))


def predict(model: EquiformerV2, name: str, dtype: torch.dtype) -> dict:
    graph = AtomicGraph.from_ase(STRUCTURES[name], model.graph_spec, dtype=dtype)
    with torch.set_grad_enabled(model.forces == "conservative"):  # energy-only models: -dE/dx
        return model(graph, compute_forces=True, compute_stress=True)


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.float64, marks=pytest.mark.slow)],
                         ids=["float32", "float64"])
@pytest.mark.parametrize("family", FAMILIES)
def test_family_reproduces_fairchem(family, dtype):
    model, info = load_fairchem_checkpoint(FIXTURES / f"{family}.pt")
    model = model.to(dtype)
    record = REFERENCE["families"][family]
    key = str(dtype).split(".")[-1]
    for name, expected in record["structures"].items():
        expected = expected[key]
        out = predict(model, name, dtype)
        assert abs(float(out["energy"]) - expected["energy"]) < energy_tolerance(expected["energy"], dtype), (family, name)
        if "forces" in expected:
            forces = torch.tensor(expected["forces"], dtype=torch.float64)
            assert forces.abs().max() > 1e-3, (family, name)  # not trivially small
            assert (out["forces"].double() - forces).abs().max() < TOLERANCES[dtype], (family, name)
        else:  # energy-only (IS2RE) models: sciml's forces are -dE/dx, not a fairchem output
            assert model.forces == "conservative" and "forces" not in model.domain.labels
        if "stress" in expected:
            stress = torch.tensor(expected["stress"], dtype=torch.float64)
            assert stress.abs().max() > 1e-3, (family, name)
            assert (out["stress"][0].double() - stress).abs().max() < TOLERANCES[dtype], (family, name)
            assert torch.allclose(out["stress"][0], out["stress"][0].T)
        else:
            assert not model.options.stress_head


@pytest.mark.slow
def test_stress_families_declare_stress_with_direct_forces():
    for family in FAMILIES:
        model, info = load_fairchem_checkpoint(FIXTURES / f"{family}.pt")
        has_stress = "stress" in REFERENCE["families"][family]["structures"]["bulk"]["float32"]
        assert model.options.stress_head == has_stress, family
        assert ("stress" in model.outputs) == (has_stress or model.forces == "conservative"), family
        if has_stress:
            assert model.forces == "direct" and model.domain.labels.get("stress") == "eV/Å^3"
            assert info["normalizers"]["stress_isotropic"][1] == pytest.approx(0.07)
            assert info["elementrefs"] is not None and float(info["elementrefs"][8]) != 0.0


@pytest.mark.slow
@pytest.mark.parametrize("family", ["omat24_dens", "oc22"])
def test_ema_weights_follow_fairchems_parameter_order(tmp_path, family):
    # fairchem's EMA lists shadows in its parameters() order, which differs from sciml's for the
    # DeNS force_embedding (OC22's energy_lin_ref happens to agree): loading with EMA must equal
    # loading the shadows as the state dict
    checkpoint = torch.load(FIXTURES / f"{family}.pt", weights_only=True)
    generator = torch.Generator().manual_seed(0)
    parameters = [k for k, v in checkpoint["state_dict"].items() if v.is_floating_point() and not any(
        b in k for b in ("SO3_", "mappingReduced", "expand_index", "balance_degree_weight", "offset"))]
    shadows = [checkpoint["state_dict"][k] + 0.01 * torch.randn(checkpoint["state_dict"][k].shape, generator=generator)
               for k in parameters]
    checkpoint["ema"] = {"shadow_params": shadows}
    torch.save(checkpoint, tmp_path / "ema.pt")
    checkpoint["ema"] = None
    checkpoint["state_dict"].update(zip(parameters, shadows))
    torch.save(checkpoint, tmp_path / "shadows.pt")
    with_ema, info = load_fairchem_checkpoint(tmp_path / "ema.pt")
    expected, _ = load_fairchem_checkpoint(tmp_path / "shadows.pt")
    assert info["used_ema"]
    for (name, value), (_, reference) in zip(with_ema.state_dict().items(), expected.state_dict().items()):
        assert torch.equal(value, reference), name


def test_dens_force_embedding_bias_is_applied():
    model, _ = load_fairchem_checkpoint(FIXTURES / "omat24_dens.pt")
    assert model.options.dens and model.force_embedding.bias.abs().max() > 0
    expected = REFERENCE["families"]["omat24_dens"]["structures"]["bulk"]["float64"]["energy"]
    model = model.double()
    with torch.no_grad():
        model.force_embedding.bias.zero_()  # what a loader that forgets the bias would compute
    assert abs(float(predict(model, "bulk", torch.float64)["energy"]) - expected) > 1e-4


def test_calculator_and_load_model_give_fairchem_stress_in_ase_voigt():
    record = REFERENCE["families"]["omat24"]["structures"]["bulk"]["float64"]
    model = load_model(FIXTURES / "omat24.pt", dtype="float64")
    assert isinstance(model, EquiformerV2) and "stress" in model.outputs
    atoms = STRUCTURES["bulk"].copy()
    atoms.calc = SciMLCalculator.from_checkpoint(str(FIXTURES / "omat24.pt"), device="cpu", dtype="float64")
    assert atoms.get_potential_energy() == pytest.approx(record["energy"], abs=2e-6)
    np.testing.assert_allclose(atoms.get_forces(), record["forces"], rtol=0, atol=2e-6)
    stress = np.array(record["stress"])  # 3x3, ase's sign
    voigt = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    assert np.abs(voigt).max() > 1e-3
    np.testing.assert_allclose(atoms.get_stress(), voigt, rtol=0, atol=2e-6)


def test_stress_trace_is_rotation_invariant_like_fairchems_head():
    # fairchem's anisotropic MLP (biases, SiLU per l = 2 component) is not equivariant; its
    # isotropic part is: the trace follows rotations exactly, the rest only approximately
    from scipy.spatial.transform import Rotation

    model, _ = load_fairchem_checkpoint(FIXTURES / "omat24.pt")
    model = model.double()
    atoms = STRUCTURES["bulk"]
    rotation = Rotation.random(random_state=3).as_matrix()
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ rotation.T)
    rotated.positions = atoms.positions @ rotation.T
    with torch.no_grad():
        stress = model(AtomicGraph.from_ase(atoms, model.graph_spec, dtype=torch.float64), compute_stress=True)["stress"][0]
        turned = model(AtomicGraph.from_ase(rotated, model.graph_spec, dtype=torch.float64), compute_stress=True)["stress"][0]
    r = torch.tensor(rotation)
    assert abs(float(torch.trace(turned) - torch.trace(stress))) < 1e-8  # the backbone's grid error
    assert float((r @ stress @ r.T - turned).abs().max()) > 1e-4  # fairchem's head, not a sciml bug


def build_published(config: dict) -> EquiformerV2:
    return EquiformerV2(EquiformerV2Options(**fairchem_model_options(config)))


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_small_fixture_parameter_counts_equal_fairchem():
    for family in FAMILIES:
        record = REFERENCE["families"][family]
        assert count(build_published(record["config"])) == record["parameters"], family


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(REFERENCE.get("published_parameter_counts", {})))
def test_published_parameter_counts_equal_fairchem(config):
    record = REFERENCE["published_parameter_counts"][config]
    assert count(build_published(record["config"])) == record["parameters"]


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_another_model_type_gives_one_line_error(tmp_path):
    checkpoint = torch.load(FIXTURES / "omat24.pt", weights_only=True)
    checkpoint["config"]["model"]["backbone"]["model"] = "escn_backbone"
    torch.save(checkpoint, tmp_path / "escn.pt")
    with pytest.raises(CheckpointError) as error:
        load_fairchem_checkpoint(tmp_path / "escn.pt")
    assert "escn_backbone" in one_line(error)


@pytest.mark.parametrize("change, named", [
    (("heads", "stress", "edge_level_mlp", True), "edge_level_mlp=True"),
    (("heads", "stress", "decompose", False), "decompose=False"),
    (("heads", "energy", "reduce", "mean"), "reduce='mean'"),
    (("backbone", "use_noise_schedule_sigma_encoding", True), "use_noise_schedule_sigma_encoding"),
    (("backbone", "norm_type", "rms_norm_sh"), "norm_type='rms_norm_sh'"),
])  # fmt: skip
def test_unsupported_options_give_one_line_errors(tmp_path, change, named):
    checkpoint = torch.load(FIXTURES / "omat24.pt", weights_only=True)
    section = checkpoint["config"]["model"]
    *path, key, value = change
    for part in path:
        section = section[part]
    section[key] = value
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as error:
        load_fairchem_checkpoint(tmp_path / "bad.pt")
    assert named in one_line(error) and "does not implement" in str(error.value)


def test_unknown_head_and_dens_mix_give_one_line_errors(tmp_path):
    checkpoint = torch.load(FIXTURES / "omat24.pt", weights_only=True)
    checkpoint["config"]["model"]["heads"]["dipole"] = {"module": "equiformerV2_rank1_head"}
    torch.save(checkpoint, tmp_path / "head.pt")
    with pytest.raises(CheckpointError) as error:
        load_fairchem_checkpoint(tmp_path / "head.pt")
    assert "equiformerV2_rank1_head" in one_line(error)
    checkpoint = torch.load(FIXTURES / "omat24_dens.pt", weights_only=True)
    checkpoint["config"]["model"]["backbone"]["model"] = "equiformer_v2_backbone"
    torch.save(checkpoint, tmp_path / "mix.pt")
    with pytest.raises(CheckpointError) as error:
        load_fairchem_checkpoint(tmp_path / "mix.pt")
    assert "DeNS" in one_line(error)
