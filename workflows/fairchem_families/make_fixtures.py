"""Reference fixtures of every released fairchem v1 EquiformerV2 family, made with fairchem-core.

Runs in a fairchem-core 1.10 environment (see README.md next to this file), not in sciml's:

    /work/fairchem-venv/bin/python workflows/fairchem_families/make_fixtures.py \
        --configs /tmp/fairchem-configs/configs --out tests/fixtures/fairchem_families

For each family it builds a small model with the structure of the published config (few layers
and channels), random weights (fixed seed; zero-initialised biases drawn too, so the DeNS
force-embedding bias matters), non-trivial normalisers / element references where the family has
them, saves it as a fairchem trainer checkpoint and records fairchem's energy, forces and stress
on a bulk crystal, a slab and a molecule in float32 and float64. It also records the parameter
counts of the published full-size configs.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path
from typing import Any, Dict

import ase
import ase.io
import numpy as np
import torch
import yaml
from ase.build import add_adsorbate, bulk, fcc111, molecule

import fairchem.core
import fairchem.core.models.base  # noqa: F401  (registers "hydra")
import fairchem.core.models.equiformer_v2.equiformer_v2  # noqa: F401  (backbone and heads)
import fairchem.core.models.equiformer_v2.equiformer_v2_dens  # noqa: F401  (DeNS backbone and heads)
import fairchem.core.models.equiformer_v2.equiformer_v2_deprecated  # noqa: F401  (the legacy class)
from fairchem.core.common.registry import registry
from fairchem.core.common.utils import cg_change_mat, irreps_sum
from fairchem.core.datasets import data_list_collater
from fairchem.core.modules.normalization.element_references import LinearReferences
from fairchem.core.modules.normalization.normalizer import Normalizer
from fairchem.core.preprocessing import AtomsToGraphs

SMALL = dict(num_layers=2, sphere_channels=16, attn_hidden_channels=16, num_heads=2, attn_alpha_channels=8,
             attn_value_channels=4, ffn_hidden_channels=16, edge_channels=16)
# family -> (published config giving the structure, normalisers, element references?)
FAMILIES = {
    "omat24": "omat24/all/eqV2_31M.yml",
    "omat24_dens": "omat24/mptrj/eqV2_31M_dens_mptrj.yml",
    "oc22": "oc22/s2ef/equiformer_v2/equiformer_v2_N@18_L@6_M@2_e4_f100_121M.yml",
    "odac": "odac/s2ef/eqv2_31M.yml",
    "odac_is2re": "odac/is2re/eqv2_31M.yml",
}
PUBLISHED = [
    "omat24/all/eqV2_31M.yml", "omat24/all/eqV2_86M.yml", "omat24/all/eqV2_153M.yml",
    "omat24/mptrj/eqV2_31M_mptrj.yml", "omat24/mptrj/eqV2_31M_dens_mptrj.yml",
    "omat24/mptrj/eqV2_86M_dens_mptrj.yml", "omat24/mptrj/eqV2_153M_dens_mptrj.yml",
    "oc22/s2ef/equiformer_v2/equiformer_v2_N@18_L@6_M@2_e4_f100_121M.yml",
    "odac/s2ef/eqv2_31M.yml", "odac/s2ef/eqv2_153M.yml", "odac/is2re/eqv2_31M.yml",
]  # fmt: skip
# keys of published configs that fairchem 1.10's constructors reject: the ODAC IS2RE YAML's
# norm_scale_*, the 86M/153M DeNS YAMLs' backbone use_denoising_energy/stress
DROPPED_KEYS = ("norm_scale_nodes", "norm_scale_degree", "use_denoising_energy", "use_denoising_stress")
# the 86M/153M DeNS YAMLs name heads that do not exist (DeNSEnergyHead, DeNSForceHead): the
# released checkpoints' configs use these
DENS_HEADS = {"DeNSEnergyHead": "DeNSScalarHead", "DeNSForceHead": "DeNSVectorHead"}


def _radius_graph_pbc_from_float32(data, *args, **kwargs):
    """fairchem 1.10's ``radius_graph_pbc`` builds its image offsets in float32 and fails on a
    float64 cell or default dtype: in the float64 runs the graph topology comes from float32 copies
    of the positions and cell, built with float32 as default dtype (the edge vectors are then
    computed by fairchem in float64, with its ``get_pbc_distances``' float32 periodic offsets)."""
    data = data.clone()
    data.pos, data.cell = data.pos.float(), data.cell.float()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        return _RADIUS_GRAPH_PBC(data, *args, **kwargs)
    finally:
        torch.set_default_dtype(default)


_RADIUS_GRAPH_PBC = fairchem.core.models.base.radius_graph_pbc
fairchem.core.models.base.radius_graph_pbc = _radius_graph_pbc_from_float32


def model_config(path: Path) -> Dict[str, Any]:
    """``model`` section of a published YAML (DeNS head names repaired, trainer-only keys dropped)."""
    config = copy.deepcopy(yaml.safe_load(path.read_text())["model"])
    for head in (config.get("heads") or {}).values():
        module, _, name = head["module"].rpartition(".")
        head["module"] = f"{module}.{DENS_HEADS.get(name, name)}" if module else DENS_HEADS.get(name, name)
    for key in DROPPED_KEYS:
        config.pop(key, None)
        (config.get("backbone") or {}).pop(key, None)
    return config


def build(config: Dict[str, Any]) -> torch.nn.Module:
    """fairchem's model for a ``config["model"]`` dict."""
    config = copy.deepcopy(config)
    return registry.get_model_class(config.pop("name"))(**config)


def small_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """The published structure at a small size: SMALL widths, 2 layers, lmax at most 4 (files of
    about 2 MB: the checkpoint holds fairchem's grid buffers, which grow with lmax)."""
    config = copy.deepcopy(config)
    target = config["backbone"] if config["name"] == "hydra" else config
    target.update(SMALL, alpha_drop=0.0, drop_path_rate=0.0, lmax_list=[min(target["lmax_list"][0], 4)])
    return config


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Draw every all-zero parameter (biases, the DeNS force embedding's) from N(0, 0.1^2)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def structures() -> Dict[str, ase.Atoms]:
    """A strained, rattled rock-salt crystal, a Pt(111) 3x3x3 + O slab and ethanol in a 40 Å box.
    The slab is 3x3 so that no atom's own periodic images (8.3 Å) are among its 20 nearest
    neighbours within ODAC's 8 Å: images at +a and -a are exactly tied, and the strict cap
    (ODAC) would keep one of them by an order fairchem does not define."""
    crystal = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    crystal.set_cell(crystal.cell.array @ np.array([[1.0, 0.02, 0.0], [0.0, 0.99, 0.03], [0.01, 0.0, 1.01]]),
                     scale_atoms=True)
    crystal.rattle(0.05, seed=1)
    slab = fcc111("Pt", (3, 3, 3), vacuum=8.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    slab.rattle(0.05, seed=2)
    ethanol = molecule("CH3CH2OH")
    ethanol.set_cell([40.0, 40.0, 40.0])
    ethanol.center()
    ethanol.pbc = False
    return {"bulk": crystal, "slab": slab, "molecule": ethanol}


def predict(model, checkpoint: Dict[str, Any], atoms: ase.Atoms, dtype: torch.dtype) -> Dict[str, Any]:
    """fairchem's prediction as its trainer makes it: model output, normalisers' denorm, element
    references, stress composed from its irreps with ``cg_change_mat(2)``. Stress (3, 3) eV/Å^3
    is the head's output as is (ase's convention: fairchem's calculator passes it to ase unchanged)."""
    data = AtomsToGraphs(r_edges=False, r_pbc=True, r_energy=False, r_forces=False).convert(atoms)
    batch = data_list_collater([data])
    batch.pos = batch.pos.to(dtype)
    batch.cell = batch.cell.to(dtype)
    torch.manual_seed(0)
    out = model(batch)
    out = {k: v for k, v in out.items()}
    normalizers = {k: Normalizer(mean=v["mean"], rmsd=v["rmsd"]).to(dtype) for k, v in checkpoint["normalizers"].items()}
    refs = {k: LinearReferences(v["element_references"]).to(dtype) for k, v in checkpoint["elementrefs"].items()}

    def denorm(key):
        value = out[key] if key == "forces" else out[key].view(1, -1)  # the trainer's (B, -1) for structure targets
        value = normalizers[key](value) if key in normalizers else value
        return refs[key](value, batch) if key in refs else value

    result = {"energy": float(denorm("energy").reshape(-1)[0])}
    if "forces" in out:
        result["forces"] = denorm("forces").detach().double().tolist()
    if "stress_isotropic" in out:
        irreps = torch.zeros(1, irreps_sum(2), dtype=dtype)
        irreps[:, 0:1] = denorm("stress_isotropic").view(1, -1)
        irreps[:, irreps_sum(1):irreps_sum(2)] = denorm("stress_anisotropic").view(1, -1)
        stress = torch.einsum("ba, cb->ca", cg_change_mat(2).to(dtype), irreps).view(3, 3)
        result["stress"] = stress.detach().double().tolist()
    return result


def normalizers_for(config: Dict[str, Any]) -> Dict[str, Dict[str, torch.Tensor]]:
    """Non-trivial normalisers for the targets the family predicts."""
    found = {"energy": {"mean": torch.tensor(-0.7), "rmsd": torch.tensor(1.9)}}
    if config.get("regress_forces", True) is not False:
        found["forces"] = {"mean": torch.tensor(0.0), "rmsd": torch.tensor(0.45)}
    if "stress" in (config.get("heads") or {}):
        found["stress_isotropic"] = {"mean": torch.tensor(0.013), "rmsd": torch.tensor(0.07)}
        found["stress_anisotropic"] = {"mean": torch.tensor(0.0), "rmsd": torch.tensor(0.02)}
    return found


def make_family(name: str, published: Dict[str, Any], out: Path, seed: int) -> Dict[str, Any]:
    """Write ``<name>.pt`` and return the family's reference record."""
    config = small_config(published)
    hydra = config["name"] == "hydra"
    backbone = config["backbone"] if hydra else config
    record: Dict[str, Any] = {"published_config": FAMILIES[name], "config": config, "structures": {}}
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(seed)
    model = build(config)
    if not hydra and backbone.get("load_energy_lin_ref"):
        with torch.no_grad():
            model.energy_lin_ref.copy_(torch.randn(model.energy_lin_ref.shape) * 0.5)
    randomise(model, seed)
    normalizers = normalizers_for(config)
    elementrefs = {}
    if hydra:  # the OMat24 family fits energy element references (configs/omat24/*_dataset.yml)
        refs = torch.zeros(119)
        refs[1:100] = -torch.linspace(0.5, 5.0, 99)
        elementrefs["energy"] = {"element_references": refs}
    checkpoint = {"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "config": {"model": config},
                  "normalizers": normalizers, "elementrefs": elementrefs, "ema": None, "epoch": 0, "step": 0}
    torch.save(checkpoint, out / f"{name}.pt")
    record["parameters"] = sum(p.numel() for p in model.parameters())
    for dtype in (torch.float32, torch.float64):
        torch.set_default_dtype(dtype)
        model = build(config).eval()
        model.load_state_dict({k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()})
        model = model.to(dtype)
        for label, atoms in structures().items():
            record["structures"].setdefault(label, {})[str(dtype).split(".")[-1]] = predict(model, checkpoint, atoms, dtype)
    torch.set_default_dtype(torch.float32)
    return record


def parameter_counts(configs: Path) -> Dict[str, Dict[str, Any]]:
    """Published config -> its ``model`` section and the parameters of fairchem's model for it
    (built with random initial weights; no released weights are read)."""
    counts = {}
    for relative in PUBLISHED:
        config = model_config(configs / relative)
        torch.manual_seed(0)
        model = build(config)
        counts[relative] = {"config": config, "parameters": sum(p.numel() for p in model.parameters())}
        print(relative, counts[relative]["parameters"], flush=True)
        del model
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", type=Path, required=True, help="fairchem's configs/ folder (fairchem_core-1.10.0)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip-counts", action="store_true", help="do not build the full-size published models")
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    labelled = []
    for label, atoms in structures().items():
        atoms.info["name"] = label
        labelled.append(atoms)
    ase.io.write(args.out / "structures.extxyz", labelled)
    reference = {"versions": {"fairchem-core": fairchem.core.__version__, "torch": torch.__version__,
                              "python": platform.python_version()}, "families": {}}
    for seed, (name, relative) in enumerate(FAMILIES.items()):
        reference["families"][name] = make_family(name, model_config(args.configs / relative), args.out, seed + 11)
        print(name, reference["families"][name]["parameters"], flush=True)
    if not args.skip_counts:
        reference["published_parameter_counts"] = parameter_counts(args.configs)
    (args.out / "reference.json").write_text(json.dumps(reference, indent=1))


if __name__ == "__main__":
    main()
