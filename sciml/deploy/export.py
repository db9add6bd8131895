"""Energy models exported as AOTInductor packages (``.pt2``) that run without the Python model.

The package holds one compiled function of one structure (float = the model's dtype)::

    (positions (N, 3) Å, atomic_numbers (N,) int64, cell (3, 3) Å (rows; zeros for a molecule),
     edge_index (2, E) int64 (centre i, neighbour j; both directions), cell_shifts (E, 3) float)
    -> (energy (1,) eV, energies (N,) eV, forces (N, 3) eV/Å, virial (3, 3) eV)

with edge vectors ``positions[j] - positions[i] + cell_shifts @ cell`` and ``virial = -dE/deps``
for a symmetric strain eps applied as ``x -> x (I + eps)`` to positions and cell (ase's stress is
``-virial / volume``). N >= 1 and E >= 0 are dynamic. The C++ loader and the LAMMPS pair style
(``sciml/deploy/csrc``, :mod:`sciml.deploy.lammps`) are written against this interface; it does
not change without a new ``sciml_format``.

How: the model's forward with the force and strain derivatives is traced by ``make_fx`` (which
writes the backward pass into the graph), exported with one dynamic dimension per kind (atoms,
edges) and compiled by ``torch._inductor.aoti_compile_and_package``. The package's metadata
(``aot_inductor.metadata``, read in C++ by ``AOTIModelPackageLoader::get_metadata()``) records
:data:`METADATA_KEYS`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from ase.data import chemical_symbols
from torch import nn
from torch.utils import _pytree as pytree

from sciml.graph import AtomicGraph, GraphSpec, neighbor_list, stress_from_virial
from sciml.graph.atomic_graph import GRAPH_DYNAMIC_AXES
from sciml.graph.validation import MAX_ATOMIC_NUMBER
from sciml.inference import energy_gradients
from sciml.models.contract import ENERGY_OUTPUTS, Model, Output
from sciml.models.domain import ModelDomain

FORMAT = "1"
# "domain": the training domain (JSON of ModelDomain.to_dict(), "" when the model has none).
METADATA_KEYS = ("sciml_format", "model", "cutoff", "elements", "dtype", "device", "torch_version", "forces", "domain")
DTYPES = {"float32": torch.float32, "float64": torch.float64}

# The one place that picks the kernels a package is built from: sciml.ops' pure-torch paths, which
# trace and leave a package that needs nothing but libtorch (the C++ loader and LAMMPS load no sciml
# library). The compiled kernels trace as torch.ops.sciml operators that the runtime would then have
# to provide (load the operator library in the loaders to build packages with them). Kernels chosen
# per call (harmonics, Wigner-D, scatter) read these variables while tracing; tensor-product modules
# choose when built, and the models that export as packages have none.
TRACEABLE_BACKENDS = {"SCIML_TP_BACKEND": "torch", "SCIML_SH_BACKEND": "torch", "SCIML_SCATTER_BACKEND": "torch"}
TRACEABLE_MODEL_OPTIONS = {"so2_backend": "torch"}  # EquiformerV2's Triton rotations

# Inductor options per device. CPU: the generated loops run on one thread (vectorised; matrix
# products still run in threaded BLAS). Generated in a process of several threads, torch 2.13's
# AOTInductor packages of models with 128-wide features abort with heap corruption at the first
# call, whatever the threads they run with (measured); serial loops are also what LAMMPS runs
# with one thread per MPI rank.
INDUCTOR_OPTIONS = {"cpu": {"cpp.threads": 1}}

# The dynamic axes of the interface's inputs, in order (see the module docstring).
INTERFACE_DYNAMIC_AXES = ({0: "atoms"}, {0: "atoms"}, None, {1: "edges"}, {0: "edges"})


class ExportError(ValueError):
    """A model that cannot be exported, or a package that cannot be loaded here (one line)."""


@contextlib.contextmanager
def traceable_kernels() -> Iterator[None]:
    """Select :data:`TRACEABLE_BACKENDS` while tracing; the environment is restored afterwards."""
    saved = {name: os.environ.get(name) for name in TRACEABLE_BACKENDS}
    os.environ.update(TRACEABLE_BACKENDS)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class EnergyForcesVirial(nn.Module):
    """The exported function (see the module docstring) around an energy model.

    Conservative models: forces and virial are -dE/dx and -dE/deps of one backward pass
    (:func:`~sciml.inference.energy_gradients`).
    Direct-force models (EquiformerV2 with ``direct_forces``): forces come from the force head
    and the virial is zeros (such a model has no stress; metadata ``forces`` = "direct").
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.direct = model.forces == "direct"

    def forward(self, positions: torch.Tensor, atomic_numbers: torch.Tensor, cell: torch.Tensor,
                edge_index: torch.Tensor, cell_shifts: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        n = positions.shape[0]
        batch = torch.zeros(n, dtype=torch.int64, device=positions.device)
        graph = AtomicGraph(
            positions=positions,
            atomic_numbers=atomic_numbers,
            cell=cell.unsqueeze(0),
            pbc=torch.zeros(1, 3, dtype=torch.bool, device=cell.device),  # unread: the virial is returned, not stress
            batch=batch,
            ptr=torch.cat([batch.new_zeros(1), batch.new_full((1,), n)]),
            edge_index=edge_index,
            cell_shifts=cell_shifts,
            cutoff=self.model.cutoff,
        )
        if self.direct:
            out = self.model(graph, compute_forces=True, compute_stress=False)
            return out["energy"], out["energies"], out["forces"], cell.new_zeros(3, 3)
        out, forces, virial = energy_gradients(self.model, graph, strain=True)
        return out["energy"], out["energies"], forces, virial[0]


def check_exportable(model: nn.Module) -> None:
    """Raise ExportError naming the first model option the exported interface cannot express."""
    name, spec = model.model_name, model.graph_spec
    if model.inputs != "graph" or "energy" not in model.outputs:
        raise ExportError(f"{name} does not predict energies; only energy models can be exported")
    if model.forces == "direct" and "stress" in model.outputs:
        raise ExportError(f"{name} predicts stress with a direct stress head, which the exported interface (energy, "
                          f"forces and the virial of -dE/d(strain)) does not carry; use it from Python")
    if spec is not None and spec.knn is not None:
        raise ExportError(f"{name} reads a k-nearest-neighbour crystal graph with lattice frames, which the "
                          f"exported interface (a radius graph, as LAMMPS builds it) cannot give; use it from Python")
    if spec is None or spec.cutoff is None:
        raise ExportError(f"{name} has cutoff=None; the exported interface needs the radius its graph is built with")
    if spec.max_neighbors is not None:
        raise ExportError(f"{name} has max_neighbors={spec.max_neighbors}: the exported interface takes every pair "
                          f"within the cutoff, so a model trained on capped neighbour lists cannot be exported")


def model_elements(model: nn.Module) -> str:
    """Space-separated chemical symbols the model accepts: atomic numbers 1 .. ``num_elements`` - 1
    of its element embedding (checkpoints do not record the elements they were trained on)."""
    return " ".join(chemical_symbols[z] for z in range(1, min(int(model.num_elements), MAX_ATOMIC_NUMBER + 1)))


def example_inputs(cutoff: float, dtype: torch.dtype, device: str) -> Tuple[torch.Tensor, ...]:
    """The interface's inputs for a small periodic structure to trace with: 7 atoms (H, C, N) in a
    triclinic box of about one cutoff, so that atoms, edges and every fixed size differ."""
    generator = torch.Generator().manual_seed(0)
    cell = torch.tensor([[1.0, 0.0, 0.0], [0.1, 1.1, 0.0], [0.05, 0.1, 0.9]], dtype=torch.float64) * 1.05 * cutoff
    positions = torch.rand(7, 3, generator=generator, dtype=torch.float64) @ cell
    i, j, shifts = neighbor_list(positions, cell, torch.ones(3, dtype=torch.bool), cutoff)
    numbers = torch.tensor([1, 6, 7, 1, 6, 7, 1], device=device)
    edge_index = torch.stack([i, j]).to(device)
    return (positions.to(device, dtype), numbers, cell.to(device, dtype), edge_index, shifts.to(device, dtype))


def trace(function: Callable, inputs: Sequence[torch.Tensor], dynamic: Sequence[Optional[Dict[int, str]]]):
    """``torch.export`` program of ``function(*inputs)``, including any ``torch.autograd.grad`` or
    ``torch.func.grad`` it takes (forces), with dynamic sizes.

    Args:
        function: tensors in, a pytree of tensors out.
        inputs: example tensors; their dynamic sizes should differ from each other and from 0, 1.
        dynamic: per input, ``{axis: "atoms" | "edges"}`` for its dynamic axes, or None.

    make_fx writes the backward pass into the graph first (export alone would not trace through
    the gradient), then export makes the sizes symbolic: atoms >= 1, edges >= 0.
    """
    from torch.export import Dim
    from torch.fx.experimental.proxy_tensor import make_fx

    dims = {"atoms": Dim("atoms", min=1), "edges": Dim("edges", min=0)}
    shapes = tuple(None if axes is None else {axis: dims[kind] for axis, kind in axes.items()} for axes in dynamic)
    with traceable_kernels():
        function(*inputs)  # builds the kernels' lazily cached constant tables, which tracing cannot
        graph = make_fx(function, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*inputs)
        return torch.export.export(graph, tuple(inputs), dynamic_shapes=shapes, strict=False)


def export_forward(model: nn.Module, graph: AtomicGraph, compute_forces: bool = True, compute_stress: bool = False):
    """``torch.export`` program of ``model(graph, compute_forces, compute_stress)``, dynamic in the
    numbers of atoms and edges. It takes the graph's tensors in the order of
    ``torch.utils._pytree.tree_leaves(graph)`` and returns the model's dict of outputs."""
    flat, spec = pytree.tree_flatten_with_path(graph)
    tensors = [k for k, (_, leaf) in enumerate(flat) if isinstance(leaf, torch.Tensor)]
    leaves = [leaf for _, leaf in flat]

    def forward(*inputs: torch.Tensor) -> Dict[str, torch.Tensor]:
        for k, value in zip(tensors, inputs):
            leaves[k] = value
        return model(pytree.tree_unflatten(leaves, spec), compute_forces=compute_forces, compute_stress=compute_stress)

    inputs = [leaves[k] for k in tensors]
    return trace(forward, inputs, [GRAPH_DYNAMIC_AXES.get(flat[k][0][0].name) for k in tensors])


def export_model(model_or_checkpoint: Union[nn.Module, str, os.PathLike], path: Union[str, os.PathLike],
                 dtype: Optional[Union[str, torch.dtype]] = None, device: str = "cpu") -> Path:
    """Write the AOTInductor package of a model's energy/forces/virial function to ``path`` (.pt2).

    Args:
        model_or_checkpoint: an energy model or the path of its checkpoint.
        path: the package to write.
        dtype: "float32"/"float64" (or a torch dtype); default the model's.
        device: "cpu" or "cuda": where the package runs (it runs nowhere else).

    Raises:
        ExportError: the model has an option the interface cannot express (named in the message).
    """
    from torch._inductor import aoti_compile_and_package

    from sciml.inference import load_model, model_dtype

    model = model_or_checkpoint
    if not isinstance(model, nn.Module):
        model = load_model(model_or_checkpoint, device="cpu")
    check_exportable(model)
    dtype = _dtype(dtype) if dtype is not None else model_dtype(model)
    device = torch.device(device).type
    model = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    for option, value in TRACEABLE_MODEL_OPTIONS.items():
        if hasattr(model, option):
            setattr(model, option, value)
    metadata = {
        "sciml_format": FORMAT,
        "model": model.model_name,
        "cutoff": repr(float(model.cutoff)),
        "elements": model_elements(model),
        "dtype": str(dtype).removeprefix("torch."),
        "device": device,
        "torch_version": torch.__version__,
        "forces": model.forces,
        "symmetry": model.symmetry,
        "domain": json.dumps(model.domain.to_dict()) if model.domain is not None else "",
    }
    try:
        program = trace(EnergyForcesVirial(model), example_inputs(model.cutoff, dtype, device), INTERFACE_DYNAMIC_AXES)
    except Exception as err:  # torch's tracing errors are pages long; --debug shows them
        reason = (str(err).strip().splitlines() or [""])[0]
        raise ExportError(f"{model.model_name} could not be traced for export ({type(err).__name__}: {reason})") from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with traceable_kernels():
        aoti_compile_and_package(program, package_path=str(path), inductor_configs={"aot_inductor.metadata": metadata, **INDUCTOR_OPTIONS.get(device, {})})
    return path


def _dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ExportError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


@dataclass
class ExportedModel:
    """A loaded package: ``model(positions, atomic_numbers, cell, edge_index, cell_shifts)``
    returns ``(energy, energies, forces, virial)`` (see the module docstring).

    Attributes:
        function: the compiled function. metadata: the package's :data:`METADATA_KEYS`.
    """

    function: Callable
    metadata: Dict[str, str]

    @property
    def cutoff(self) -> float:
        """Å, the radius of the graph the model reads."""
        return float(self.metadata["cutoff"])

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.metadata["dtype"]]

    @property
    def device(self) -> torch.device:
        return torch.device(self.metadata["device"])

    def __call__(self, positions: torch.Tensor, atomic_numbers: torch.Tensor, cell: torch.Tensor,
                 edge_index: torch.Tensor, cell_shifts: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(self.function(positions, atomic_numbers, cell, edge_index, cell_shifts))


def read_metadata(path: Union[str, os.PathLike]) -> Dict[str, str]:
    """The metadata of a package, read from its archive without loading the compiled code.

    Raises:
        ExportError: the file is not a zip archive or holds no sciml package.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith(".wrapper_metadata.json")]
            metadata = json.loads(archive.read(names[0])) if names else {}
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ExportError(f"{path} is not an exported sciml model ({err})") from None
    if metadata.get("sciml_format") != FORMAT:
        raise ExportError(f"{path} is not an exported sciml model of format {FORMAT} "
                          f"(sciml_format={metadata.get('sciml_format')!r})")
    return metadata


def load_exported(path: Union[str, os.PathLike], device: Optional[str] = None) -> ExportedModel:
    """Load a package written by :func:`export_model`.

    Raises:
        ExportError: the file is missing or no sciml package, was built by another torch version,
            or for another device than ``device`` (default: the device it was built for).
    """
    from torch._inductor import aoti_load_package

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"exported model {path} does not exist")
    metadata = read_metadata(path)
    if metadata.get("torch_version") != torch.__version__:
        raise ExportError(f"{path} was built by torch {metadata.get('torch_version')} but this is torch "
                          f"{torch.__version__}; export it again with this torch (sciml export)")
    if device is not None and torch.device(device).type != metadata["device"]:
        raise ExportError(f"{path} was built for {metadata['device']} and cannot run on {torch.device(device).type}; "
                          f"export it again with --device {torch.device(device).type}")
    return ExportedModel(aoti_load_package(str(path)), metadata)


class ExportedPotential(nn.Module, Model):
    """A package as a sciml energy model, for the calculator, ``sciml predict``, ``md`` and ``relax``.

    ``forward(graph, compute_forces, compute_stress)`` returns what the exported model returned:
    ``energy`` (B,) eV, ``energies`` (N,), ``forces`` (N, 3) eV/Å and, for conservative models,
    ``stress`` (B, 3, 3) eV/Å^3 (-virial / volume; 0 for structures without a periodic direction),
    calling the package once per structure of the batch. Graphs are radius graphs of the
    package's cutoff (:attr:`graph_spec`).
    """

    def __init__(self, exported: ExportedModel, source: str = ""):
        super().__init__()
        self.exported = exported
        self.model_name = exported.metadata["model"]
        self.cutoff, self.max_neighbors = exported.cutoff, None
        self.forces = exported.metadata["forces"]
        self.symmetry = exported.metadata.get("symmetry", "trivial")
        domain = exported.metadata.get("domain")
        self.domain = ModelDomain.from_dict(json.loads(domain), source) if domain else None
        # sciml.inference reads a model's dtype and device from its parameters: an empty one tells them.
        self.dtype_marker = nn.Parameter(torch.empty(0, dtype=exported.dtype, device=exported.device),
                                         requires_grad=False)

    @property
    def graph_spec(self) -> GraphSpec:
        return GraphSpec(cutoff=self.cutoff)

    @property
    def outputs(self) -> Dict[str, Output]:
        """Energy outputs; stress only from conservative models (the virial of direct ones is 0)."""
        return {k: v for k, v in ENERGY_OUTPUTS.items() if k != "stress" or self.forces == "conservative"}

    def forward(self, graph: AtomicGraph, compute_forces: bool = True,
                compute_stress: bool = False) -> Dict[str, torch.Tensor]:
        if graph.cutoff is None or graph.cutoff + 1e-9 < self.cutoff or graph.knn is not None:
            raise ValueError(f"the exported model reads a radius graph of {self.cutoff} Å; build the graph with "
                             f"graph.with_edges({self.cutoff})")
        dtype = self.exported.dtype
        results = [self.exported(g.positions.to(dtype), g.atomic_numbers, g.cell[0].to(dtype), g.edge_index,
                                 g.cell_shifts.to(dtype)) for g in graph.split()]
        energy, energies, forces, virial = (torch.cat(parts) for parts in zip(*results))
        out = {"energy": energy, "energies": energies}
        if compute_forces:
            out["forces"] = forces
        if compute_stress and self.forces == "conservative":
            out["stress"] = stress_from_virial(virial.view(-1, 3, 3), graph.cell.to(dtype), graph.pbc)
        return out


def is_exported(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` names an exported package (by its suffix, ``.pt2``)."""
    return Path(path).suffix == ".pt2"


def load_potential(path: Union[str, os.PathLike], device: "str | torch.device" = "cpu",
                   dtype: "str | torch.dtype | None" = None) -> nn.Module:
    """The energy model of a checkpoint, or of an exported package (``.pt2``) as an
    :class:`ExportedPotential`, on ``device``; ``dtype`` None keeps the saved one.

    Raises:
        ValueError: a package asked to run in another dtype than it was compiled for.
    """
    from sciml.devices import resolve_dtype
    from sciml.inference import load_model

    if is_exported(path):
        potential = ExportedPotential(load_exported(path, device=device), str(path))
        wanted = resolve_dtype(dtype)
        if wanted is not None and wanted != potential.exported.dtype:
            raise ValueError(f"{path} was compiled for {potential.exported.metadata['dtype']} and runs only in it; "
                             f"export it again with --dtype {str(wanted).removeprefix('torch.')}")
        return potential
    return load_model(path, device=device, dtype=dtype)
