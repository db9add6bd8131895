"""Time fairchem's own EquiformerV2 (fairchem-core 1.x) on given structures, for comparison with sciml.

This file runs ONLY in a separate Python environment that has fairchem-core 1.10 (and its torch
2.4.x, torch_geometric, torch-scatter); it never imports sciml and is started as a subprocess::

    <fairchem python> fairchem_runner.py --checkpoint C.pt --structures S.extxyz \
        --threads 2 --repeats 3 --out result.json

The checkpoint is a fairchem v1 trainer checkpoint: a dict with ``state_dict`` (keys possibly
prefixed ``module.``) and ``config["model"]`` holding the constructor options of fairchem's legacy
monolithic class registered as ``"equiformer_v2"``
(``fairchem/core/models/equiformer_v2/equiformer_v2_deprecated.py``) or of a ``"hydra"`` model
with an EquiformerV2 backbone (plain or DeNS) and energy, force and rank-2 stress heads (the
OMat24 family). Weights are loaded with
``strict=False`` so that fairchem's constant buffers (Wigner/grid tables, index maps, Gaussian
offsets) may be absent, but any missing parameter or any key the model does not have is an error.
EMA weights, if present, are not applied: ``state_dict`` is used as is.

Each structure (ase extxyz, tags read when present) is converted with fairchem's
``AtomsToGraphs`` (no precomputed edges) and ``data_list_collater(otf_graph=True)``, so the model
builds its own graph with its ``max_radius``/``max_neighbors`` and ``use_pbc``. Every model call is
preceded by ``torch.manual_seed(0)``, which fixes fairchem's random roll of the edge frames.

Measured per structure, float32, CPU, batch of one structure, model in eval mode (no dropout):

* ``forward_s``: seconds for one forward (fairchem's forward always records autograd);
* ``forward_backward_s``: seconds for forward plus backward of
  ``loss = energy.sum() + forces.pow(2).sum()`` (+ ``stress.pow(2).sum()`` with a stress head)
  to the parameters;
* both are the minimum over ``--repeats`` timed runs, after one untimed warm-up of each;
* ``energy`` (model units, eV for OC20 models; no normaliser applied) and ``forces`` (natoms x 3,
  direct force head, eV/Å) from one seeded forward;
* ``stress`` (3 x 3, model units, no normalisers) with a stress head: its isotropic and
  anisotropic outputs composed with fairchem's ``cg_change_mat(2)`` as its trainer does;
* ``num_edges``: directed edges of the graph the model builds (``generate_graph``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def load_model(path: Path) -> torch.nn.Module:
    """Build fairchem's legacy ``equiformer_v2`` or ``hydra`` model from a v1 trainer checkpoint, in eval mode."""
    import fairchem.core.models.base  # noqa: F401  (registers "hydra")
    import fairchem.core.models.equiformer_v2.equiformer_v2  # noqa: F401  (backbone and heads)
    import fairchem.core.models.equiformer_v2.equiformer_v2_dens  # noqa: F401  (DeNS backbone and heads)
    import fairchem.core.models.equiformer_v2.equiformer_v2_deprecated  # noqa: F401  (the legacy class)
    from fairchem.core.common.registry import registry

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    config = checkpoint["config"]
    if isinstance(config["model"], str):  # older layout: name in "model", options in "model_attributes"
        options = {"name": config["model"], **config.get("model_attributes", {})}
    else:
        options = dict(config["model"])
    name = options.pop("name", None)
    if name not in ("equiformer_v2", "hydra"):
        raise SystemExit(f"checkpoint model is {name!r}, this runner supports only 'equiformer_v2' and 'hydra'")
    model = registry.get_model_class(name)(**options)

    state = {k.removeprefix("module."): v for k, v in checkpoint["state_dict"].items()}
    result = model.load_state_dict(state, strict=False)
    parameter_names = {n for n, _ in model.named_parameters()}
    missing = [k for k in result.missing_keys if k in parameter_names]
    if missing or result.unexpected_keys:
        raise SystemExit(f"checkpoint does not fit the model: missing parameters {missing}, "
                         f"unexpected keys {list(result.unexpected_keys)}")  # fmt: skip
    return model.float().eval()


def read_batches(path: Path) -> list[dict[str, Any]]:
    """One fairchem batch (of one structure) per frame of an extxyz file, with name and size."""
    import ase.io
    from fairchem.core.datasets.lmdb_dataset import data_list_collater
    from fairchem.core.preprocessing import AtomsToGraphs

    a2g = AtomsToGraphs(r_edges=False, r_energy=False, r_forces=False, r_fixed=True, r_pbc=True)
    items = []
    for i, atoms in enumerate(ase.io.read(str(path), index=":", format="extxyz")):
        batch = data_list_collater([a2g.convert(atoms)], otf_graph=True)
        items.append({"name": str(atoms.info.get("name", i)), "natoms": len(atoms), "batch": batch})
    return items


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Minimum wall time in seconds of ``fn`` over ``repeats`` runs, after one untimed warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(model: torch.nn.Module, batch: Any, repeats: int) -> dict[str, Any]:
    """Outputs, edge count and timings of ``model`` on one batch (see module docstring)."""

    def forward() -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        return model(batch)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        out = forward()
        loss = out["energy"].sum() + out["forces"].pow(2).sum()
        (loss + stress(out).pow(2).sum() if "stress_isotropic" in out else loss).backward()

    num_edges: int | None
    try:
        with torch.no_grad():
            graph_model = getattr(model, "backbone", model)
            graph = graph_model.generate_graph(batch, enforce_max_neighbors_strictly=graph_model.enforce_max_neighbors_strictly)
        num_edges = int(graph.edge_index.shape[1])
    except Exception:  # noqa: BLE001  (edge count is informative only)
        num_edges = None
    out = forward()
    result = {"num_edges": num_edges, "energy": float(out["energy"].detach().reshape(-1)[0]),
              "forces": out["forces"].detach().double().tolist()}
    if "stress_isotropic" in out:
        result["stress"] = stress(out).detach().double()[0].tolist()
    result["forward_s"] = best_time(forward, repeats)
    result["forward_backward_s"] = best_time(forward_backward, repeats)
    model.zero_grad(set_to_none=True)
    return result


def stress(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, 3, 3) from the rank-2 head's ``stress_isotropic`` (B, 1) and ``stress_anisotropic`` (B, 5),
    as fairchem's trainer composes them (``cg_change_mat(2)``; irreps 0 and 2 of 9)."""
    from fairchem.core.common.utils import cg_change_mat

    isotropic, anisotropic = out["stress_isotropic"], out["stress_anisotropic"]
    irreps = torch.cat([isotropic.view(-1, 1), isotropic.new_zeros(isotropic.shape[0], 3), anisotropic.view(-1, 5)], 1)
    return torch.einsum("ba, cb->ca", cg_change_mat(2).to(irreps.dtype), irreps).view(-1, 3, 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="fairchem v1 trainer checkpoint (.pt)")
    parser.add_argument("--structures", type=Path, required=True, help="extxyz file, one or more frames")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    model = load_model(args.checkpoint)
    structures = []
    for item in read_batches(args.structures):
        structures.append({"name": item["name"], "natoms": item["natoms"], **measure(model, item["batch"], args.repeats)})
    result = {
        "fairchem_version": importlib.metadata.version("fairchem-core"),
        "torch_version": torch.__version__,
        "threads": args.threads,
        "repeats": args.repeats,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "units": {"time": "s", "energy": "eV (model units)", "forces": "eV/Å (model units)", "stress": "eV/Å^3 (model units)"},
        "structures": structures,
    }
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
