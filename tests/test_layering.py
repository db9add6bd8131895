"""sciml's layering, read from the source with ``ast``: no module imports from a layer above it,
and imports form no cycle.

Every ``import`` counts, at any depth (inside functions too): ``import sciml.a.b``,
``from sciml.a import b``, ``from sciml import x`` and relative imports. ``from P import n`` imports
the package ``P`` itself (its ``__init__``) when ``P/__init__.py`` binds the name ``n``, else the
submodule ``P.n`` when there is one (as Python resolves it), else ``P``.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "sciml"
ROOT = "sciml"

# The layers, lowest first, each with the module prefixes it holds. A module may import from its
# own layer and from the layers listed before it, never from one listed after it. A prefix holds
# the module or package of that name and everything below it (the longest prefix wins), except
# ROOT, the root package, which stands for ``sciml/__init__.py`` alone.
LAYERS: List[Tuple[str, Tuple[str, ...]]] = [
    # Process-level services every layer may use: the version, devices and dtypes, thread counts,
    # and torch.distributed (process groups shared by training and batch inference); the error
    # types every layer raises.
    ("runtime", ("sciml.version", "sciml.errors", "sciml.devices", "sciml.threads", "sciml.distributed")),
    # Numerical kernels on plain tensors and their C/CUDA sources: no graphs, no models.
    ("ops", ("sciml.ops", "sciml._kernels")),
    # Atoms, cells, neighbour search and batching, the one place that builds graphs: no models.
    ("graph", ("sciml.graph",)),
    # Models and heads (built from ops on graphs) and the model contract: no files, no trainer,
    # no command line.
    ("models", ("sciml.models",)),
    # Files: formats, readers and generators of data sets, checkpoints, MD logs.
    ("files", ("sciml.io", "sciml.data", "sciml.md_log")),
    # A trained model at work: loading, batched prediction, the ase calculator, MD, export.
    # It needs no trainer.
    ("inference", ("sciml.inference", "sciml.fairchem", "sciml.batch_inference", "sciml.batch_journal",
                   "sciml.prediction_writers", "sciml.calculator", "sciml.simulate", "sciml.deploy")),
    # Checks run on any model: equivariance, finite differences, the conformance suite (which
    # saves and loads checkpoints).
    ("testing", ("sciml.testing",)),
    # Benchmark protocols run on a trained model, their metrics and figures.
    ("tasks", ("sciml.tasks", "sciml.plots")),
    # The trainer, a library under its command line.
    ("train", ("sciml.train",)),
    # Benchmarks and cluster job scripts, which drive training and inference.
    ("tools", ("sciml.bench", "sciml.hpc")),
    # The fronts: the command line, and the root package (``sciml.predict``, ``sciml.__version__``).
    ("front", ("sciml.cli", ROOT)),
]

# (importing layer, imported layer, rule): imports the order above allows but the design does not.
FORBIDDEN: List[Tuple[str, str, str]] = [
    # Readers turn files into graphs whatever model will consume them.
    ("files", "models", "readers know no model"),
]

LAYER_NAMES = [name for name, _ in LAYERS]
RANK = {name: rank for rank, name in enumerate(LAYER_NAMES)}
PREFIX_LAYER = {prefix: name for name, prefixes in LAYERS for prefix in prefixes}
FORBIDDEN_RULE = {(importer, imported): rule for importer, imported, rule in FORBIDDEN}


@dataclass(frozen=True)
class Import:
    """One imported sciml module: ``source`` imports ``target`` (a package stands for its
    ``__init__``) at ``file:line``; ``at_import`` when it runs as ``source`` is imported (not
    inside a function)."""

    source: str
    target: str
    file: str
    line: int
    at_import: bool

    def where(self) -> str:
        """``file:line: source imports target``, the start of every message about this import."""
        return f"{self.file}:{self.line}: {self.source} imports {self.target}"


@dataclass(frozen=True)
class Module:
    """One module of the package: its file (relative to the package's parent folder), whether it
    is a package's ``__init__``, its syntax tree."""

    file: str
    is_package: bool
    tree: ast.Module


def find_modules(package_dir: Path) -> Dict[str, Module]:
    """Every module under ``package_dir`` by dotted name (``a/b/__init__.py`` is ``a.b``), linked
    folders included (``sciml/_kernels`` links to ``kernels/``)."""
    paths = [Path(folder) / name for folder, _, names in os.walk(package_dir, followlinks=True)
             for name in names if name.endswith(".py")]
    modules = {}
    for path in sorted(paths):
        relative = path.relative_to(package_dir.parent)
        parts = relative.with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = Module(relative.as_posix(), is_package, ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return modules


def _import_nodes(tree: ast.Module) -> Iterator[Tuple[ast.stmt, bool]]:
    """The import statements of a module at any depth, each with whether it runs as the module is
    imported (function bodies run later; class bodies at import)."""
    pending: List[Tuple[ast.AST, bool]] = [(tree, True)]
    while pending:
        node, at_import = pending.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, at_import
            elif isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):  # expressions hold no statement
                pending.append((child, at_import and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))))


def _bound_names(tree: ast.Module) -> Set[str]:
    """Names a module binds in its namespace as it is imported (imports, definitions, assignments)."""
    names: Set[str] = set()
    pending: List[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(target.id for target in targets if isinstance(target, ast.Name))
        elif isinstance(node, (ast.If, ast.Try, ast.ExceptHandler, ast.With)):
            pending += [child for child in ast.iter_child_nodes(node) if isinstance(child, (ast.stmt, ast.excepthandler))]
    return names


def _from_module(name: str, module: Module, node: ast.ImportFrom) -> str:
    """The absolute module named by ``from ... import`` in module ``name``."""
    if not node.level:
        return node.module or ""
    package = name.split(".") if module.is_package else name.split(".")[:-1]
    if node.level - 1 >= len(package):
        raise ValueError(f"{module.file}:{node.lineno}: relative import beyond the top-level package")
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def find_imports(modules: Dict[str, Module]) -> List[Import]:
    """Every import of a module of the package ``ROOT`` by a module of ``modules``."""
    bound = {name: _bound_names(module.tree) for name, module in modules.items() if module.is_package}
    imports = []
    for name, module in modules.items():
        for node, at_import in _import_nodes(module.tree):
            if isinstance(node, ast.Import):
                targets = {alias.name for alias in node.names}
            else:
                package = _from_module(name, module, node)
                targets = {
                    package if alias.name in bound.get(package, ()) or f"{package}.{alias.name}" not in modules
                    else f"{package}.{alias.name}"
                    for alias in node.names
                }
            imports += [Import(name, target, module.file, node.lineno, at_import)
                        for target in sorted(targets) if target.split(".")[0] == ROOT and target != name]
    return imports


def layer_of(module: str) -> Optional[str]:
    """The layer that holds ``module``, or None where no prefix of LAYERS does."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in PREFIX_LAYER and (prefix != ROOT or end == len(parts)):
            return PREFIX_LAYER[prefix]
    return None


def layer_violations(imports: Sequence[Import]) -> List[str]:
    """One line per import of a layer above the importer's or of a FORBIDDEN layer."""
    violations = []
    for imp in imports:
        source, target = layer_of(imp.source), layer_of(imp.target)
        if source is None or target is None:
            continue
        if RANK[target] > RANK[source]:
            violations.append(f"{imp.where()}: layer {source} imports layer {target} above it "
                              f"(layers, lowest first: {' < '.join(LAYER_NAMES)})")
        elif (source, target) in FORBIDDEN_RULE:
            violations.append(f"{imp.where()}: layer {source} imports layer {target}: {FORBIDDEN_RULE[source, target]}")
    return violations


def import_cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """The cycles of a directed graph: its strongly connected components of more than one node
    (Tarjan's algorithm), each sorted."""
    index: Dict[str, int] = {}
    lowlink: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(edges.get(node, ())):
            if successor not in index:
                visit(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return sorted(cycles)


def import_time_edges(imports: Sequence[Import], modules: Dict[str, Module]) -> Dict[str, Set[str]]:
    """Module -> modules it imports when it is itself imported."""
    edges: Dict[str, Set[str]] = {}
    for imp in imports:
        if imp.at_import and imp.target in modules:
            edges.setdefault(imp.source, set()).add(imp.target)
    return edges


def top_level(module: str) -> str:
    """The top-level package or module that holds ``module`` (the root package stands for itself)."""
    return ".".join(module.split(".")[:2])


def package_edges(imports: Sequence[Import]) -> Dict[str, Set[str]]:
    """Top-level package or module -> those it imports, at any depth."""
    edges: Dict[str, Set[str]] = {}
    for imp in imports:
        source, target = top_level(imp.source), top_level(imp.target)
        if source != target:
            edges.setdefault(source, set()).add(target)
    return edges


# sciml itself


@pytest.fixture(scope="module")
def sciml_source() -> Tuple[Dict[str, Module], List[Import]]:
    """sciml's modules and their imports, read once for the tests below."""
    modules = find_modules(PACKAGE_DIR)
    return modules, find_imports(modules)


def test_every_module_has_a_layer(sciml_source):
    modules, _ = sciml_source
    unplaced = [name for name in modules if layer_of(name) is None]
    assert not unplaced, f"modules in no layer (add them to LAYERS in {Path(__file__).name}): {unplaced}"


def test_every_prefix_of_the_layers_names_a_module(sciml_source):
    modules, _ = sciml_source
    stale = [prefix for prefix in PREFIX_LAYER if prefix not in modules]
    assert not stale, f"LAYERS names modules that do not exist: {stale}"


def test_no_module_imports_from_a_layer_above_it(sciml_source):
    _, imports = sciml_source
    violations = layer_violations(imports)
    assert not violations, "layering violations:\n" + "\n".join(violations)


def test_no_import_cycle_between_modules_at_import_time(sciml_source):
    modules, imports = sciml_source
    cycles = import_cycles(import_time_edges(imports, modules))
    assert not cycles, "modules that import each other as they are imported: " + "; ".join(map(" <-> ".join, cycles))


def test_no_import_cycle_between_top_level_packages(sciml_source):
    _, imports = sciml_source
    cycles = import_cycles(package_edges(imports))
    assert not cycles, "top-level packages that import each other: " + "; ".join(map(" <-> ".join, cycles))


# the checker on a small package with known faults


def _write_package(root: Path, files: Dict[str, str]) -> Path:
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root / ROOT


@pytest.fixture
def faulty(tmp_path) -> Tuple[Dict[str, Module], List[Import]]:
    """A small ``sciml`` whose imports break each rule once or more, read by the checker."""
    package_dir = _write_package(tmp_path, {
        "sciml/__init__.py": "from sciml.version import __version__\n",
        "sciml/version.py": "__version__ = '1'\n",
        "sciml/graph/__init__.py": "def build():\n    from sciml.models import egnn\n",
        "sciml/models/__init__.py": "from .heads import Head\nfrom .registry import build_model\nDEFAULT = 'egnn'\n",
        "sciml/models/registry.py": "from sciml.models import egnn\n\ndef build_model():\n    from . import DEFAULT\n",
        "sciml/models/egnn.py": "import sciml.graph\nfrom ..data import readers\n",
        "sciml/models/heads.py": "from sciml.models import DEFAULT\n\nclass Head:\n    pass\n",
        "sciml/data/__init__.py": "",
        "sciml/data/readers.py": "import sciml.models.egnn\nfrom sciml import __version__\nfrom ..io import files\n",
        "sciml/io/__init__.py": "",
        "sciml/io/files.py": "def read():\n    from sciml.data import readers\n",
        "sciml/inference.py": "class Loader:\n    from sciml.train import trainer\n",
        "sciml/train/__init__.py": "",
        "sciml/train/trainer.py": "from . import optim\nfrom sciml.cli.main import main\nimport sciml.version\n",
        "sciml/train/optim.py": "from .trainer import main\n",
        "sciml/cli/__init__.py": "",
        "sciml/cli/main.py": "from sciml import __version__\nimport sciml.train.trainer\n\ndef main():\n    pass\n",
    })
    modules = find_modules(package_dir)
    return modules, find_imports(modules)


def test_imports_are_resolved_at_any_depth_and_relative(faulty):
    _, imports = faulty
    found = {(imp.source, imp.target, imp.at_import) for imp in imports}
    assert ("sciml.graph", "sciml.models.egnn", False) in found  # inside a function
    assert ("sciml.inference", "sciml.train.trainer", True) in found  # a class body runs at import
    assert ("sciml.models.egnn", "sciml.data.readers", True) in found  # from ..data import readers
    assert ("sciml.train.optim", "sciml.train.trainer", True) in found  # from .trainer import main
    assert ("sciml.data.readers", "sciml", True) in found  # from sciml import __version__
    assert ("sciml.models.registry", "sciml.models.egnn", True) in found  # a submodule, not the __init__
    assert ("sciml.models.registry", "sciml.models", True) not in found
    assert ("sciml.models.registry", "sciml.models", False) in found  # from . import DEFAULT, a name the __init__ binds
    assert ("sciml.data.readers", "sciml.io.files", True) in found  # from ..io import files
    assert next(imp for imp in imports if imp.source == "sciml.graph").where() == \
        "sciml/graph/__init__.py:2: sciml.graph imports sciml.models.egnn"


def test_layer_violations_name_module_import_and_rule(faulty):
    _, imports = faulty
    above = f"above it (layers, lowest first: {' < '.join(LAYER_NAMES)})"
    assert sorted(layer_violations(imports)) == sorted([
        f"sciml/graph/__init__.py:2: sciml.graph imports sciml.models.egnn: layer graph imports layer models {above}",
        f"sciml/models/egnn.py:2: sciml.models.egnn imports sciml.data.readers: layer models imports layer files {above}",
        "sciml/data/readers.py:1: sciml.data.readers imports sciml.models.egnn: layer files imports layer models: readers know no model",
        f"sciml/data/readers.py:2: sciml.data.readers imports sciml: layer files imports layer front {above}",
        f"sciml/inference.py:2: sciml.inference imports sciml.train.trainer: layer inference imports layer train {above}",
        f"sciml/train/trainer.py:2: sciml.train.trainer imports sciml.cli.main: layer train imports layer front {above}",
    ])


def test_cycles_at_import_time_and_between_packages(faulty):
    modules, imports = faulty
    assert import_cycles(import_time_edges(imports, modules)) == [
        ["sciml.cli.main", "sciml.train.optim", "sciml.train.trainer"],
        ["sciml.data.readers", "sciml.models.egnn"],
        ["sciml.models", "sciml.models.heads"],  # registry reads DEFAULT only when called
    ]
    assert import_cycles(package_edges(imports)) == [
        ["sciml.cli", "sciml.train"],
        ["sciml.data", "sciml.graph", "sciml.io", "sciml.models"],
    ]
