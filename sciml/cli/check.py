"""``sciml check``: symmetry and energy/force consistency of a trained model."""

from __future__ import annotations

from sciml.cli.common import add_command, read_one_structure

EXAMPLES = """  sciml check runs/ethanol/best.pt                       # a built-in molecule and crystal
  sciml check model.pt POSCAR --tolerance 1e-5
"""


def register(sub) -> None:
    parser = add_command(sub, "check", "check equivariance and force/stress consistency of a checkpoint", EXAMPLES)
    parser.add_argument("checkpoint")
    parser.add_argument("structures", nargs="*", help="structures to test (default: ethanol and a rattled Cu crystal)")
    parser.add_argument("--tolerance", type=float, default=1e-6, help="max allowed error (float64), default 1e-6")
    parser.set_defaults(run=run)


def run(args) -> int:
    import torch
    from ase.build import bulk, molecule

    from sciml.graph import GraphSpec
    from sciml.models.heads import EnergyHead
    from sciml.testing import ALL_CHECKS, check_conservative, check_equivariance
    from sciml.inference import load_model

    model = load_model(args.checkpoint).double()
    energy_model = any(isinstance(module, EnergyHead) for module in model.modules())
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
    # property models (e.g. ComFormer's formation energy) are checked for one invariant output
    outputs = None if energy_model else {getattr(model, "target", "energy"): "scalar"}
    worst = 0.0
    print(f"{'structure':<12} {'check':<14} {'output':<8} max abs error (float64)")
    for atoms in structures:
        name = atoms.get_chemical_formula()
        # SO(3)-only models (EquiformerV2's SO(2) convolutions, ComFormer's right-handed lattice
        # frames) are not checked under reflections.
        checks = [c for c in ALL_CHECKS if c != "reflection" or getattr(model, "reflection_equivariant", True)]
        report = check_equivariance(model, atoms, outputs=outputs, checks=checks, dtype=torch.float64)
        for check, per_output in report.errors.items():
            for output, error in per_output.items():
                print(f"{name:<12} {check:<14} {output:<8} {error:.2e}")
        if not energy_model:
            consistency = {}
        elif getattr(model, "direct_forces", False):
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
