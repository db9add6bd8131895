"""Run the reference iComFormer / eComFormer (divelab AIRS ``OpenMat/ComFormer``) on given weights
and one crystal batch, for comparison with sciml.

This file runs ONLY in a separate Python environment that has torch, torch_geometric,
torch_scatter, e3nn and pydantic (v1 or v2); it never imports sciml and is started as a
subprocess::

    <reference python> comformer_runner.py --source DIR --input batch.pt --output out.pt \
        --repeats 5 --threads 2

``--source`` is the AIRS ComFormer source: the folder that holds the ``comformer`` package
(``.../OpenMat/ComFormer``), the package folder itself, or an AIRS checkout root.

The reference does not import as published, so its modules are loaded here from their source
text, patched in memory (nothing on disk is changed), as the package ``comformer``:

* ``models/transformer.py`` (source patched before exec): the import typo
  ``comforemr.models.utils`` -> ``comformer.models.utils``; ``super(MatformerConv, self)`` in
  ``ComformerConv.__init__`` -> ``super(ComformerConv, self)``; the unused
  ``from torch_sparse import SparseTensor`` removed; the constructors' banner ``print`` calls
  silenced (stdout is kept for this runner's own messages).
* ``models/comformer.py`` (source patched before exec): ``from pydantic.typing import Literal``
  -> ``from typing import Literal`` (``pydantic.typing`` is gone in pydantic 2).
* ``models/utils.py``: executed unchanged (``RBFExpansion``).
* ``comformer.utils`` and ``comformer.features`` are replaced by shim modules: the first holds
  only ``BaseSettings`` (a ``pydantic.BaseModel`` with the reference's ``extra="forbid"``; the
  real module imports matplotlib and needs pydantic 1's ``BaseSettings``; reading settings from
  environment variables is the only thing lost, and the models are built with default configs),
  the second only a placeholder ``angle_emb_mp`` (imported by ``comformer.py`` but never used
  by either model; the real module needs sympy).

The models are built with the AIRS default configs (``iComformerConfig(name="iComformer")``,
``eComformerConfig(name="eComformer")``) and loaded strictly, except the buffers e3nn's tensor
products make themselves (``output_mask``, and ``weight``, empty without shared weights).

Input file (``torch.save`` of a dict; loaded with ``weights_only=True``), the reference's PyG
convention (edge u -> v with ``edge_attr`` r = x_v - x_u, messages aggregated at v):

* ``x`` (N, 92) float32 CGCNN atom features; ``batch`` (N,) int64 crystal of each atom;
* ``edge_index`` (2, E) int64 [u; v]; ``edge_attr`` (E, 3) Å; ``edge_nei`` (E, 3, 3) Å, the three
  lattice vectors (rows) of each edge's crystal;
* ``models``: {"iComformer" | "eComformer": state dict in the reference's names}.

Output file (``torch.save`` of a dict): per model name ``output`` (B,) float32 from one forward
in eval mode (BatchNorm with running statistics), ``parameters`` (count), ``forward_s`` and
``forward_backward_s`` (minimum over ``--repeats`` after one untimed warm-up; train mode, as in
training: BatchNorm with batch statistics; loss = output.sum(), gradients to the parameters,
no optimizer step); with ``--intermediates`` also ``layers``: the eval-mode outputs of every
top-level submodule call, keyed ``name#call`` (``att_layers.0#0``, ``edge_update_layer#0``,
``equi_update#0``, ...). Plus ``torch_version`` and ``threads``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict

import torch

MODEL_NAMES = ("iComformer", "eComformer")

_TRANSFORMER_PATCHES = (
    ("from comforemr.models.utils import softmax", "from comformer.models.utils import softmax"),
    ("super(MatformerConv, self).__init__", "super(ComformerConv, self).__init__"),
    ("from torch_sparse import SparseTensor\n", "\n"),
)
_COMFORMER_PATCHES = (("from pydantic.typing import Literal", "from typing import Literal"),)


def _package_dir(source: Path) -> Path:
    for candidate in (source, source / "comformer", source / "OpenMat" / "ComFormer" / "comformer"):
        if (candidate / "models" / "transformer.py").is_file():
            return candidate
    raise SystemExit(f"no ComFormer source under {source} (looked for comformer/models/transformer.py)")


def _patched(path: Path, patches) -> str:
    text = path.read_text()
    for old, new in patches:
        if old not in text:
            raise SystemExit(f"{path}: expected text not found, the source changed: {old!r}")
        text = text.replace(old, new)
    return text


def _module(name: str, path: Path | None = None, text: str | None = None, package: bool = False) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = str(path) if path else f"<{name} shim>"
    if package:
        module.__path__ = []
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    if text is not None:
        exec(compile(text, module.__file__, "exec"), module.__dict__)
    return module


def load_reference(source: Path) -> types.ModuleType:
    """The reference's ``comformer.models.comformer`` module, patched as the module docstring says."""
    root = _package_dir(source)
    import pydantic

    _module("comformer", package=True)
    utils = _module("comformer.utils")

    class BaseSettings(pydantic.BaseModel):
        """Stand-in for the reference's pydantic-1 ``BaseSettings`` (no environment variables)."""

        model_config = pydantic.ConfigDict(extra="forbid", use_enum_values=True)

    utils.BaseSettings = BaseSettings
    features = _module("comformer.features")
    features.angle_emb_mp = None  # imported by comformer.py, used by neither model
    _module("comformer.models", package=True)
    _module("comformer.models.utils", root / "models" / "utils.py", (root / "models" / "utils.py").read_text())
    _module("comformer.models.transformer", root / "models" / "transformer.py",
            _patched(root / "models" / "transformer.py", _TRANSFORMER_PATCHES))
    return _module("comformer.models.comformer", root / "models" / "comformer.py",
                   _patched(root / "models" / "comformer.py", _COMFORMER_PATCHES))


def build(reference: types.ModuleType, name: str, state: Dict[str, torch.Tensor]) -> torch.nn.Module:
    """The reference model ``name`` with default config and the given weights, float32."""
    with contextlib.redirect_stdout(io.StringIO()):  # the constructors print banners
        if name == "iComformer":
            model = reference.iComformer(reference.iComformerConfig(name="iComformer"))
        elif name == "eComformer":
            model = reference.eComformer(reference.eComformerConfig(name="eComformer"))
        else:
            raise SystemExit(f"unknown model {name!r}; expected one of {MODEL_NAMES}")
    result = model.load_state_dict(state, strict=False)
    buffers = dict(model.named_buffers())
    missing = [k for k in result.missing_keys
               if not (k in buffers and (k.endswith("output_mask") or buffers[k].numel() == 0))]
    if missing or result.unexpected_keys:
        raise SystemExit(f"{name}: weights do not fit the reference model: missing {missing}, "
                         f"unexpected {list(result.unexpected_keys)}")
    return model.float()


def make_batch(inputs: Dict[str, Any]):
    """The reference's ``(data, ldata, lattice)`` argument; only ``data`` is read by the models."""
    from torch_geometric.data import Data

    data = Data(x=inputs["x"].float(), edge_index=inputs["edge_index"].long(), edge_attr=inputs["edge_attr"].float(),
                edge_nei=inputs["edge_nei"].float(), batch=inputs["batch"].long())
    return data, None, None


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Minimum wall time in seconds of ``fn`` over ``repeats`` runs, after one untimed warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def layer_outputs(model: torch.nn.Module, batch) -> Dict[str, torch.Tensor]:
    """Outputs of every call of each top-level submodule during one forward (model in eval mode)."""
    recorded: Dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if name.count(".") > 1 or not name or isinstance(module, torch.nn.ModuleList):
            continue

        def hook(module, args, output, name=name):
            calls = sum(1 for k in recorded if k.split("#")[0] == name)
            if isinstance(output, torch.Tensor):
                recorded[f"{name}#{calls}"] = output.detach().clone()

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return recorded


def measure(model: torch.nn.Module, batch, repeats: int, intermediates: bool) -> Dict[str, Any]:
    """Eval-mode output (and layer outputs) and train-mode timings (see the module docstring)."""
    model.eval()
    with torch.no_grad():
        output = model(batch).detach().clone()
    result: Dict[str, Any] = {"output": output, "parameters": sum(p.numel() for p in model.parameters())}
    if intermediates:
        result["layers"] = layer_outputs(model, batch)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # train mode moves BatchNorm statistics
    model.train()

    def forward():
        return model(batch)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        model(batch).sum().backward()

    result["forward_s"] = best_time(forward, repeats)
    result["forward_backward_s"] = best_time(forward_backward, repeats)
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="AIRS ComFormer source folder")
    parser.add_argument("--input", type=Path, required=True, help="batch and weights (.pt), see the docstring")
    parser.add_argument("--output", type=Path, required=True, help="result file (.pt)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept); 0: no timing")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--intermediates", action="store_true", help="also return every top-level layer's output")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    reference = load_reference(args.source)
    inputs = torch.load(args.input, map_location="cpu", weights_only=True)
    batch = make_batch(inputs)
    result: Dict[str, Any] = {"torch_version": str(torch.__version__), "threads": args.threads, "repeats": args.repeats}
    for name, state in inputs["models"].items():
        model = build(reference, name, state)
        if args.repeats > 0:
            result[name] = measure(model, batch, args.repeats, args.intermediates)
        else:
            model.eval()
            with torch.no_grad():
                result[name] = {"output": model(batch).detach().clone(),
                                "parameters": sum(p.numel() for p in model.parameters())}
            if args.intermediates:
                result[name]["layers"] = layer_outputs(model, batch)
    torch.save(result, args.output)


if __name__ == "__main__":
    main()
