"""Run fairchem (v1, fairchem-core 1.x) EquiformerV2 checkpoints in sciml.

A fairchem trainer checkpoint is a dict with ``state_dict`` (keys prefixed ``module.`` when saved
from DDP), ``config["model"]`` (the model's constructor options: the legacy monolithic
``equiformer_v2`` class, or ``hydra`` with a ``backbone`` and heads), ``normalizers`` (target mean
and rmsd) and optionally ``ema`` (exponential moving averages of the parameters, which fairchem uses
for predictions). Files are read and written by :mod:`sciml.fairchem`; this module converts their
contents.

Renamed parameters: ``so2_m_conv.{k}.fc`` -> ``fc_m.{k}`` and ``so2_conv_1.rad_func`` ->
``rad_func`` (the radial MLP sits beside the SO(2) linear here); the hydra prefix ``backbone.`` is
dropped, and ``output_heads.<name>.`` by the head's kind: energy and force heads are dropped (the
DeNS heads' ``scalar_block`` / ``vector_block`` become ``energy_block`` / ``force_block``), the
rank-2 stress head goes to ``stress_head.``. ``elementrefs`` (energy) become the energy head's
element energies; the ``stress_isotropic`` / ``stress_anisotropic`` normalisers go into the stress
head. ``use_pbc_single`` and ``otf_graph`` need nothing (sciml builds each structure's graph on the
fly); ``enforce_max_neighbors_strictly`` picks the neighbour-cap rule. Constant buffers (Wigner/grid
tables, index maps, Gaussian offsets) are rebuilt by sciml and ignored.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from sciml.errors import CheckpointError
from sciml.models.domain import LABEL_UNITS, ModelDomain
from sciml.models.equiformer_v2.model import AVG_DEGREE, AVG_NUM_NODES, EquiformerV2, EquiformerV2Options

_RENAMES = (
    (re.compile(r"^module\."), ""),
    (re.compile(r"^backbone\."), ""),
    (re.compile(r"\.so2_m_conv\.(\d+)\.fc\."), r".fc_m.\1."),
    (re.compile(r"\.so2_conv_1\.rad_func\."), ".rad_func."),
)
# hydra heads by registry name or class name (the DeNS YAMLs give dotted class paths): their kind.
_HEAD_KINDS = {
    **dict.fromkeys(("equiformer_v2_energy_head", "EquiformerV2EnergyHead", "equiformerV2_scalar_head",
                     "EqV2ScalarHead", "eqV2_DeNS_scalar_head", "DeNSScalarHead"), "energy"),
    **dict.fromkeys(("equiformer_v2_force_head", "EquiformerV2ForceHead", "equiformerV2_vector_head",
                     "EqV2VectorHead", "eqV2_DeNS_vector_head", "DeNSVectorHead"), "forces"),
    **dict.fromkeys(("rank2_symmetric_head", "Rank2SymmetricTensorHead", "dens_rank2_symmetric_head",
                     "DeNSRank2Head"), "stress"),
}  # fmt: skip
_DENS_HEADS = ("eqV2_DeNS_scalar_head", "DeNSScalarHead", "eqV2_DeNS_vector_head", "DeNSVectorHead",
               "dens_rank2_symmetric_head", "DeNSRank2Head")
# where a head's parameters live in sciml: prefix, then renames inside the head
_HEAD_PREFIXES = {"energy": ("", (("scalar_block.", "energy_block."),)),
                  "forces": ("", (("vector_block.", "force_block."),)),
                  "stress": ("stress_head.", ())}
_BACKBONES = {"equiformer_v2_backbone": False, "EquiformerV2Backbone": False,
              "equiformer_v2_dens_backbone": True, "EqV2DeNSBackbone": True}
# rank2_symmetric_head options sciml reproduces: (fairchem's default, the only value sciml supports).
_STRESS_REQUIRED = {"decompose": (False, True), "edge_level_mlp": (False, False), "extensive": (False, False),
                    "output_name": ("stress", "stress")}
_CONSTANT_BUFFERS = re.compile(
    r"(^|\.)(SO3_rotation|mappingReduced|SO3_grid)\.|(^|\.)(expand_index|balance_degree_weight)$"
    r"|^distance_expansion\.offset$"
)
# sciml state that fairchem checkpoints do not carry: output normalisation (set from fairchem's
# normalisers) and the Gaussian centres (fixed by the cutoff).
_SCIML_ONLY = ("head.element_energies", "head.scale", "energy_shift", "force_scale", "distance_expansion.centres",
               "stress_head.isotropic_scale", "stress_head.isotropic_shift", "stress_head.anisotropic_scale",
               "stress_head.anisotropic_shift")
# fairchem options this implementation reproduces, with the only values it supports.
_REQUIRED = {
    "norm_type": "layer_norm_sh", "use_grid_mlp": True, "use_sep_s2_act": True, "use_gate_act": False,
    "use_s2_act_attn": False, "use_attn_renorm": True, "use_m_share_rad": False,
    "use_atom_edge_embedding": True, "share_atom_edge_embedding": False, "distance_function": "gaussian",
    "use_pbc": True,
}  # fmt: skip
# fairchem's defaults where they differ from sciml's (fairchem applies them when a key is absent).
_FAIRCHEM_DEFAULTS = {
    "max_neighbors": 500, "max_radius": 5.0, "num_layers": 12, "sphere_channels": 128, "attn_hidden_channels": 128,
    "num_heads": 8, "attn_alpha_channels": 32, "attn_value_channels": 16, "ffn_hidden_channels": 512,
    "norm_type": "rms_norm_sh", "lmax_list": [6], "mmax_list": [2], "grid_resolution": None, "edge_channels": 128,
    "max_num_elements": 90, "use_grid_mlp": False, "alpha_drop": 0.1, "drop_path_rate": 0.05,
}  # fmt: skip


def config_flag(model_config: Mapping[str, Any], key: str) -> bool:
    """A boolean of a fairchem model config, legacy or hydra (there in its backbone)."""
    backbone = model_config.get("backbone")
    return bool(model_config.get(key) or (isinstance(backbone, Mapping) and backbone.get(key)))


def _head_kind(head: Any) -> Tuple[str, str]:
    """(module name without its dotted path, kind) of one hydra head config."""
    module = str(head.get("module", "")) if isinstance(head, Mapping) else ""
    module = module.rsplit(".", 1)[-1]
    if module not in _HEAD_KINDS:
        raise CheckpointError(f"the checkpoint's hydra head {module or head!r} is not an EquiformerV2 energy, force "
                              f"or rank-2 stress head sciml implements ({', '.join(sorted(_HEAD_KINDS))})")
    return module, _HEAD_KINDS[module]


def fairchem_heads(model_config: Mapping[str, Any]) -> Dict[str, str]:
    """Hydra head name -> kind ("energy", "forces", "stress") of a fairchem ``config["model"]``
    ({} for the legacy monolithic class).

    Raises:
        CheckpointError: heads sciml does not implement, or two heads of one kind.
    """
    if model_config.get("name", model_config.get("model")) != "hydra":
        return {}
    heads = model_config.get("heads")
    if not isinstance(heads, Mapping) or not heads:
        source = (model_config.get("finetune_config") or {}).get("starting_checkpoint")
        where = f" (a fine-tuning config: they are in its starting checkpoint {source})" if source else ""
        raise CheckpointError(f"the checkpoint's hydra config names no heads{where}")
    kinds = {name: _head_kind(head)[1] for name, head in heads.items()}
    twice = sorted({k for k in kinds.values() if list(kinds.values()).count(k) > 1})
    if twice:
        raise CheckpointError(f"the checkpoint's hydra model has several {', '.join(twice)} heads; sciml supports one each")
    return kinds


def fairchem_model_options(model_config: Mapping[str, Any]) -> Dict[str, Any]:
    """sciml :class:`EquiformerV2` options equal to a fairchem ``config["model"]`` dict.

    Raises:
        CheckpointError: not an EquiformerV2 config, or options sciml does not implement.
    """
    config = dict(model_config)
    name = config.get("name", config.get("model"))
    heads = fairchem_heads(model_config)
    head_configs = {kind: dict(model_config["heads"][n]) for n, kind in heads.items()}
    dens_heads = [_head_kind(h)[0] in _DENS_HEADS for h in head_configs.values()]
    unsupported = []
    if name == "hydra":
        backbone = dict(config.get("backbone") or {})
        name = str(backbone.get("model", backbone.get("name"))).rsplit(".", 1)[-1]
        config = {**{k: v for k, v in config.items() if k not in ("backbone", "heads")}, **backbone}
        config["regress_forces"] = "forces" in heads
        if name in _BACKBONES and any(d != _BACKBONES[name] for d in dens_heads):
            unsupported.append(f"backbone {name} with heads {', '.join(h['module'] for h in head_configs.values())} "
                               "(sciml supports DeNS heads on the DeNS backbone only, and plain heads on the plain one)")
        if "energy" in head_configs and head_configs["energy"].get("reduce", "sum") != "sum":
            unsupported.append(f"energy head reduce={head_configs['energy']['reduce']!r} (sciml supports 'sum')")
        if "stress" in head_configs:
            stress = {**{k: default for k, (default, _) in _STRESS_REQUIRED.items()}, **head_configs["stress"]}
            unsupported += [f"stress head {k}={stress[k]!r} (sciml supports {v!r})"
                            for k, (_, v) in _STRESS_REQUIRED.items() if stress[k] != v]
        if config.get("use_noise_schedule_sigma_encoding"):
            unsupported.append("use_noise_schedule_sigma_encoding=True (sciml supports False)")
    if name not in ("equiformer_v2", "equiformer_v2_backbone_and_heads", *_BACKBONES):
        raise CheckpointError(f"the checkpoint holds model {name!r}, not a fairchem EquiformerV2 ('equiformer_v2')")
    config = {**_FAIRCHEM_DEFAULTS, **config}
    unsupported += [f"{k}={config[k]!r} (sciml supports {v!r})" for k, v in _REQUIRED.items()
                    if k in config and config[k] != v]
    if len(config["lmax_list"]) != 1 or len(config["mmax_list"]) != 1:
        unsupported.append(f"several resolutions lmax_list={config['lmax_list']} (sciml supports one)")
    if unsupported:
        raise CheckpointError("the checkpoint's EquiformerV2 uses options sciml does not implement: " + "; ".join(unsupported))
    stress = head_configs.get("stress")
    return dict(
        num_layers=config["num_layers"], sphere_channels=config["sphere_channels"],
        attn_hidden_channels=config["attn_hidden_channels"], num_heads=config["num_heads"],
        attn_alpha_channels=config["attn_alpha_channels"], attn_value_channels=config["attn_value_channels"],
        ffn_hidden_channels=config["ffn_hidden_channels"], lmax=int(config["lmax_list"][0]),
        mmax=int(config["mmax_list"][0]), grid_resolution=config["grid_resolution"],
        edge_channels=config["edge_channels"], num_distance_basis=600, cutoff=float(config["max_radius"]),
        max_neighbors=config["max_neighbors"], max_num_elements=config["max_num_elements"],
        alpha_drop=config["alpha_drop"], drop_path_rate=config["drop_path_rate"],
        avg_num_nodes=config.get("avg_num_nodes") or AVG_NUM_NODES, avg_degree=config.get("avg_degree") or AVG_DEGREE,
        direct_forces=bool(config.get("regress_forces", True)),
        # fairchem's EquiformerV2 caps neighbours strictly unless its config says otherwise
        max_neighbors_rule="strict" if config.get("enforce_max_neighbors_strictly", True) else "fairchem",
        energy_lin_ref=config_flag(config, "load_energy_lin_ref"),
        stress_head=stress is not None,
        stress_head_source_target=bool((stress or {}).get("use_source_target_embedding", False)),
        stress_head_mlp_layers=int((stress or {}).get("num_mlp_layers", 2)),
        dens=_BACKBONES.get(name, False),
    )  # fmt: skip


def convert_state_dict(state_dict: Mapping[str, torch.Tensor],
                       heads: Optional[Mapping[str, str]] = None) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """fairchem parameter names -> sciml names, in the checkpoint's order; returns (converted,
    ignored constant buffers). ``heads``: hydra head name -> kind (:func:`fairchem_heads`)."""
    heads = heads or {}
    converted, ignored = {}, []
    for key, value in state_dict.items():
        new = key
        for pattern, replacement in _RENAMES:
            new = pattern.sub(replacement, new)
        head = re.match(r"^output_heads\.([^.]+)\.", new)
        if head and head.group(1) in heads:
            prefix, renames = _HEAD_PREFIXES[heads[head.group(1)]]
            new = new[head.end():]
            for old_name, new_name in renames:
                new = new.replace(old_name, new_name, 1) if new.startswith(old_name) else new
            new = prefix + new
        if _CONSTANT_BUFFERS.search(new):
            ignored.append(key)
        else:
            converted[new] = value
    return converted, ignored


def _with_ema(state_dict: Dict[str, torch.Tensor], ema: Any, parameter_names: List[str]) -> bool:
    """Replace parameters by their EMA shadows (fairchem's ``ExponentialMovingAverage`` keeps them
    in the order of fairchem's ``model.parameters()``, ``parameter_names``); False when the EMA
    does not fit."""
    shadows = ema.get("shadow_params") if isinstance(ema, Mapping) else None
    if not shadows or len(shadows) != len(parameter_names):
        return False
    if any(tuple(state_dict[n].shape) != tuple(s.shape) for n, s in zip(parameter_names, shadows)):
        return False
    state_dict.update(zip(parameter_names, shadows))
    return True


def _normalizer(normalizers: Mapping[str, Any], *names: str) -> Optional[Tuple[float, float]]:
    for name in names:
        entry = normalizers.get(name)
        if isinstance(entry, Mapping) and "mean" in entry:
            scale = entry.get("rmsd", entry.get("std", 1.0))
            return float(torch.as_tensor(entry["mean"])), float(torch.as_tensor(scale))
    return None


def _config_normalizers(config: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    """Normalisers written in a fairchem config: ``dataset[.train].transforms.normalizer`` (fairchem
    1.x) or ``normalize_labels`` with ``target_mean``/``target_std``/``grad_target_std`` (older)."""
    dataset = config.get("dataset") if isinstance(config, Mapping) else None
    if isinstance(dataset, Mapping) and isinstance(dataset.get("train"), Mapping):
        dataset = dataset["train"]
    if not isinstance(dataset, Mapping):
        return {}
    normalizer = (dataset.get("transforms") or {}).get("normalizer") if isinstance(dataset.get("transforms"), Mapping) else None
    found = {}
    if isinstance(normalizer, Mapping):
        for name in ("energy", "forces"):
            entry = normalizer.get(name)
            if isinstance(entry, Mapping):
                found[name] = {"mean": entry.get("mean", 0.0), "rmsd": entry.get("stdev", entry.get("rmsd", 1.0))}
    elif dataset.get("normalize_labels"):
        found["energy"] = {"mean": dataset.get("target_mean", 0.0), "rmsd": dataset.get("target_std", 1.0)}
        found["forces"] = {"mean": dataset.get("grad_target_mean", 0.0), "rmsd": dataset.get("grad_target_std", 1.0)}
    return found


def _element_references(elementrefs: Any, path: "str | Path") -> Optional[torch.Tensor]:
    """The energy ``element_references`` (fairchem ``LinearReferences``, (119,) eV indexed by atomic
    number) of a checkpoint's ``elementrefs``, or None; references of other targets raise."""
    if not elementrefs:
        return None
    others = [k for k in elementrefs if k != "energy"]
    if others:
        raise CheckpointError(f"{path} has element references for {', '.join(others)}; sciml applies them to energy only")
    references = elementrefs["energy"].get("element_references") if isinstance(elementrefs["energy"], Mapping) else None
    if references is None:
        raise CheckpointError(f"{path} has energy elementrefs without 'element_references'")
    return torch.as_tensor(references, dtype=torch.float64).flatten()


def _set_stress_normalizers(model: EquiformerV2, normalizers: Mapping[str, Any]) -> Dict[str, Any]:
    """Copy the ``stress_isotropic`` / ``stress_anisotropic`` normalisers into the stress head;
    returns them as {name: (mean, rmsd)} (mean of the anisotropic part: a number or 5 numbers)."""
    if model.stress_head is None:
        return {}
    found = {}
    for part in ("isotropic", "anisotropic"):
        entry = normalizers.get(f"stress_{part}")
        if not isinstance(entry, Mapping) or "mean" not in entry:
            continue
        mean = torch.as_tensor(entry["mean"], dtype=torch.float64)
        rmsd = float(torch.as_tensor(entry.get("rmsd", entry.get("std", 1.0))))
        getattr(model.stress_head, f"{part}_scale").fill_(rmsd)
        getattr(model.stress_head, f"{part}_shift").copy_(mean.expand_as(getattr(model.stress_head, f"{part}_shift")))
        found[f"stress_{part}"] = (mean.tolist(), rmsd)
    return found


def fairchem_checkpoint_model(checkpoint: Any, path: "str | Path",
                              use_ema: bool = True) -> Tuple[EquiformerV2, Dict[str, Any]]:
    """:func:`sciml.fairchem.load_fairchem_checkpoint` of an already loaded checkpoint dict (read from ``path``,
    which error messages name)."""
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is not a fairchem checkpoint (no 'state_dict')")
    config = checkpoint.get("config") or {}
    model_config = config.get("model") if isinstance(config, Mapping) else None
    if not isinstance(model_config, Mapping):
        raise CheckpointError(f"{path} has no config['model']: cannot tell which EquiformerV2 it holds")
    options = fairchem_model_options(model_config)
    heads = fairchem_heads(model_config)
    state_dict, ignored = convert_state_dict(checkpoint["state_dict"], heads)
    model = EquiformerV2(EquiformerV2Options(**options))

    expected = model.state_dict()
    learned = [k for k in expected if k not in _SCIML_ONLY]
    missing = [k for k in learned if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [f"{k} {tuple(state_dict[k].shape)} != {tuple(expected[k].shape)}"
                   for k in learned if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or unexpected or wrong_shape:
        parts = [f"{label} ({len(keys)}): {', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if keys]
        raise CheckpointError(f"{path} does not match an EquiformerV2 with its config: " + "; ".join(parts))
    # fairchem's parameter order is its state dict's (same module traversal), not sciml's: the DeNS
    # backbone's force_embedding comes before the heads there
    parameters = {n for n, _ in model.named_parameters()}
    order = [k for k in state_dict if k in parameters]
    used_ema = bool(use_ema) and _with_ema(state_dict, checkpoint.get("ema"), order)
    model.load_state_dict({k: state_dict[k] for k in learned}, strict=False)

    normalizers = {**_config_normalizers(config), **(checkpoint.get("normalizers") or {})}
    energy = _normalizer(normalizers, "energy", "target")
    forces = _normalizer(normalizers, "forces", "grad_target")
    if forces is not None and forces[0] != 0.0:
        raise CheckpointError(f"{path} normalises forces with a non-zero mean {forces[0]}: not a rotation-equivariant target")
    with torch.no_grad():
        energy_mean, energy_scale = energy if energy is not None else (0.0, 1.0)
        model.head.scale.fill_(energy_scale)
        model.energy_shift.fill_(energy_mean)
        model.force_scale.fill_((forces[1] if forces is not None else energy_scale) / energy_scale)
        # fairchem applies the loaded energy_lin_ref only in the legacy class with use_energy_lin_ref
        applied = config_flag(model_config, "use_energy_lin_ref") and not heads
        if model.energy_lin_ref is not None and not applied:
            model.energy_lin_ref.zero_()
        element_references = _element_references(checkpoint.get("elementrefs"), path)
        if element_references is not None:
            model.head.element_energies[: element_references.numel()] += element_references.to(model.head.element_energies)
        stress = _set_stress_normalizers(model, normalizers)
    if not math.isfinite(energy_scale) or energy_scale <= 0:
        raise CheckpointError(f"{path} has an invalid energy normaliser rmsd {energy_scale}")
    model.domain = fairchem_domain(config, options, str(path))
    info = dict(options=options, fairchem_config=dict(model_config),
                normalizers={"energy": energy, "forces": forces, **stress}, elementrefs=element_references,
                used_ema=used_ema, ignored_buffers=ignored, epoch=checkpoint.get("epoch"), step=checkpoint.get("step"))
    return model.eval(), info


def fairchem_domain(config: Mapping[str, Any], options: Mapping[str, Any], source: str = "") -> ModelDomain:
    """The domain of a fairchem checkpoint from its config: the elements its embedding has rows
    for (atomic numbers 1 to ``max_num_elements`` - 1), periodic cells (fairchem's EquiformerV2
    models are trained on slabs and bulk crystals), the labels its heads were trained on (energy;
    forces for direct-force models; stress with a stress head) and the training data's path where
    the config names it. Structure counts and label ranges are not recorded there."""
    dataset = config.get("dataset") if isinstance(config, Mapping) else None
    if isinstance(dataset, Mapping) and isinstance(dataset.get("train"), Mapping):
        dataset = dataset["train"]
    src = dataset.get("src", "") if isinstance(dataset, Mapping) else ""
    trained = {"energy": True, "forces": options.get("direct_forces", True), "stress": options.get("stress_head", False)}
    labels = {k: LABEL_UNITS[k] for k, present in trained.items() if present}
    return ModelDomain(tuple(range(1, int(options["max_num_elements"]))), periodic=1, molecules=0, labels=labels,
                       dataset=f"fairchem config: {src}" if src else "fairchem config", counted=False, source=source)


def _fairchem_name(key: str) -> str:
    """Inverse of the renames of :func:`convert_state_dict` (legacy monolithic layout)."""
    key = re.sub(r"\.fc_m\.(\d+)\.", r".so2_m_conv.\1.fc.", key)
    return re.sub(r"^((?:blocks\.\d+\.ga)|force_block|denoising_pos_block)\.rad_func\.", r"\1.so2_conv_1.rad_func.", key)


def _hydra_name(key: str, dens: bool) -> str:
    """The hydra name of a sciml parameter: ``backbone.``, or ``output_heads.<energy|forces|stress>.``
    with the DeNS heads' ``scalar_block`` / ``vector_block``."""
    key = _fairchem_name(key)
    heads = {"energy_block.": ("energy", "scalar_block." if dens else "energy_block."),
             "force_block.": ("forces", "vector_block." if dens else "force_block."),
             "denoising_pos_block.": ("forces", "denoising_pos_block."), "stress_head.": ("stress", "")}
    for prefix, (head, name) in heads.items():
        if key.startswith(prefix):
            return f"output_heads.{head}.{name}{key[len(prefix):]}"
    return "backbone." + key


def fairchem_checkpoint_dict(model: EquiformerV2) -> Dict[str, Any]:
    """``model``'s weights as a fairchem v1 checkpoint (``state_dict`` prefixed ``module.``,
    ``config["model"]``; written by :func:`sciml.fairchem.export_fairchem_checkpoint`), e.g. to
    run fairchem on the same weights: the legacy ``equiformer_v2`` class, or for models with a
    stress head or the DeNS layout, ``hydra`` with the OMat24 family's backbone and heads. Output
    normalisation is not exported: the model must have the identity one. A model with
    ``max_neighbors`` must use one of fairchem's rules ("strict" or "fairchem"): fairchem cannot
    build the graph of sciml's "ties" rule."""
    c = model.options.to_dict()
    if c["max_neighbors"] is not None and c["max_neighbors_rule"] == "ties":
        raise ValueError("fairchem has no max_neighbors rule equal to sciml's 'ties'; build the model with "
                         "max_neighbors_rule='strict' or 'fairchem' (or max_neighbors=None) to export it")
    if float(model.head.scale) != 1.0 or float(model.energy_shift) != 0.0 or float(model.head.element_energies.abs().max()) != 0.0:
        raise ValueError("a fairchem checkpoint needs a model without output normalisation or element energies")
    head = model.stress_head
    if head is not None and not (float(head.isotropic_scale) == float(head.anisotropic_scale) == 1.0
                                 and not head.isotropic_shift.any() and not head.anisotropic_shift.any()):
        raise ValueError("a fairchem checkpoint needs a stress head without normalisation")
    backbone = dict(
        use_pbc=True, regress_forces=c["direct_forces"], otf_graph=True,
        max_neighbors=c["max_neighbors"], enforce_max_neighbors_strictly=c["max_neighbors_rule"] != "fairchem",
        max_radius=c["cutoff"], max_num_elements=c["max_num_elements"], num_layers=c["num_layers"],
        sphere_channels=c["sphere_channels"], attn_hidden_channels=c["attn_hidden_channels"],
        num_heads=c["num_heads"], attn_alpha_channels=c["attn_alpha_channels"], attn_value_channels=c["attn_value_channels"],
        ffn_hidden_channels=c["ffn_hidden_channels"], lmax_list=[c["lmax"]], mmax_list=[c["mmax"]],
        grid_resolution=c["grid_resolution"], edge_channels=c["edge_channels"], avg_num_nodes=c["avg_num_nodes"],
        avg_degree=c["avg_degree"], alpha_drop=c["alpha_drop"], drop_path_rate=c["drop_path_rate"], proj_drop=0.0,
        weight_init="uniform", load_energy_lin_ref=c["energy_lin_ref"], use_energy_lin_ref=c["energy_lin_ref"],
        **{k: v for k, v in _REQUIRED.items() if k != "use_pbc"},
    )  # fmt: skip
    learned = {k: v.detach().cpu() for k, v in model.state_dict().items() if k not in _SCIML_ONLY}
    if not (c["stress_head"] or c["dens"]):
        state = {"module." + _fairchem_name(k): v for k, v in learned.items()}
        return {"state_dict": state, "config": {"model": {"name": "equiformer_v2", **backbone}}, "normalizers": {}, "ema": None}
    if not c["direct_forces"] or c["energy_lin_ref"]:
        raise ValueError("the hydra export writes direct force heads without energy_lin_ref (fairchem's hydra "
                         "energy head does not apply it): build the model with direct_forces=True, energy_lin_ref=False")
    dens = c["dens"]
    heads = {"energy": {"module": "eqV2_DeNS_scalar_head" if dens else "equiformer_v2_energy_head"},
             "forces": {"module": "eqV2_DeNS_vector_head" if dens else "equiformer_v2_force_head"}}
    if c["stress_head"]:
        heads["stress"] = {"module": "dens_rank2_symmetric_head" if dens else "rank2_symmetric_head",
                           "output_name": "stress", "decompose": True, "num_mlp_layers": c["stress_head_mlp_layers"],
                           "use_source_target_embedding": c["stress_head_source_target"]}
    backbone["model"] = "equiformer_v2_dens_backbone" if dens else "equiformer_v2_backbone"
    model_config = {"name": "hydra", "otf_graph": True, "pass_through_head_outputs": True, "backbone": backbone, "heads": heads}
    state = {"module." + _hydra_name(k, dens): v for k, v in learned.items()}
    return {"state_dict": state, "config": {"model": model_config}, "normalizers": {}, "elementrefs": {}, "ema": None}
