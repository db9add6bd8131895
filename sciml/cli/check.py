"""``sciml check``: symmetry and energy/force consistency of a trained model."""

from __future__ import annotations

from sciml.cli.common import add_command, add_domain_option, add_runtime_options, print_runtime, read_one_structure

EXAMPLES = """  sciml check runs/ethanol/best.pt                       # a built-in molecule and crystal
  sciml check model.pt POSCAR --tolerance 1e-5
"""


def register(sub) -> None:
    parser = add_command(sub, "check", "check equivariance and force/stress consistency of a checkpoint", EXAMPLES)
    parser.add_argument("checkpoint")
    parser.add_argument("structures", nargs="*", help="structures to test (default: ethanol and a rattled Cu crystal)")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="max allowed error (float64), default 1e-6")
    add_runtime_options(parser, "float64")
    add_domain_option(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from ase.build import bulk, molecule

    from sciml.graph import GraphSpec
    from sciml.testing import ALL_CHECKS, check_conservative, check_equivariance
    from sciml.devices import resolve_device
    from sciml.inference import load_model, model_dtype

    device = resolve_device(args.device)
    model = load_model(args.checkpoint, device=device, dtype=args.dtype or "float64")
    dtype = model_dtype(model)
    print_runtime(device, dtype)
    domain = model.domain
    for line in domain.describe() if domain is not None else ["no training domain recorded in the checkpoint"]:
        print(f"domain: {line}")
    energy_model = "energy" in model.outputs
    crystals_only = GraphSpec.of(model).lattice_frame  # ComFormer: 3D crystals with lattice frames
    if args.structures:
        structures = [read_one_structure(path) for path in args.structures]
    else:
        crystal = bulk("Cu", "fcc", a=3.6) * (2, 2, 1)
        crystal.rattle(0.05, seed=0)
        structures = [molecule("CH3CH2OH"), crystal]
    if crystals_only:
        for atoms in [a for a in structures if not a.pbc.all()]:
            print(f"skipping {atoms.get_chemical_formula()}: the model reads 3D crystals only")
        structures = [a for a in structures if a.pbc.all()]
    if domain is not None and not args.structures:
        structures = [_within(atoms, domain.elements) for atoms in structures]
    # property models (e.g. ComFormer's formation energy) are checked for one invariant output
    outputs = None if energy_model else {name: output.kind for name, output in model.outputs.items()}
    if domain is not None:
        for atoms in structures:
            domain.check_elements(atoms.numbers, f"structure {atoms.get_chemical_formula()}",
                                  allow=args.allow_unknown_elements)
    worst = 0.0
    print(f"{'structure':<12} {'check':<14} {'output':<8} max abs error ({str(dtype).removeprefix('torch.')})")
    for atoms in structures:
        name = atoms.get_chemical_formula()
        # SO(3)-only models (EquiformerV2's SO(2) convolutions, ComFormer's right-handed lattice
        # frames) are not checked under reflections.
        checks = [c for c in ALL_CHECKS if c != "reflection" or model.symmetry == "E(3)"]
        report = check_equivariance(model, atoms, outputs=outputs, checks=checks, dtype=dtype)
        for check, per_output in report.errors.items():
            for output, error in per_output.items():
                print(f"{name:<12} {check:<14} {output:<8} {error:.2e}")
        if not energy_model:
            consistency = {}
        elif model.forces == "direct":
            print(f"{name:<12} {'finite diff.':<14} {'forces':<8} n/a (forces predicted directly, not -dE/dx)")
            consistency = {}
        else:
            consistency = check_conservative(model, atoms)
        for output, error in consistency.items():
            print(f"{name:<12} {'finite diff.':<14} {output:<8} {error:.2e}")
        worst = max([worst, report.max_error()] + list(consistency.values()))
    verdict = "PASS" if worst <= args.tolerance else "FAIL"
    print(f"{verdict}: largest error {worst:.2e} (tolerance {args.tolerance:g})")
    return 0 if verdict == "PASS" else 1


def _within(atoms, elements):
    """``atoms`` itself if its elements are among ``elements``, else a copy with the elements
    replaced by ``elements`` in turn (a symmetry check needs any structure the model may read)."""
    if set(atoms.numbers.tolist()) <= set(elements):
        return atoms
    changed = atoms.copy()
    species = sorted(set(atoms.numbers.tolist()))
    changed.numbers = [elements[species.index(z) % len(elements)] for z in atoms.numbers]
    print(f"{atoms.get_chemical_formula()} with its elements replaced by the model's: {changed.get_chemical_formula()}")
    return changed
