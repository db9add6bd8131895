"""``sciml predict``: energies, forces and stress, or the properties a model predicts, of structures in files.

The work is done by :mod:`sciml.batch_inference`: workers read files and build graphs, ranks of a
``torchrun`` job share the structures, and ``--output`` runs resume where they stopped
(:mod:`sciml.batch_journal`); :mod:`sciml.prediction_writers` writes the results.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sciml.cli.common import (add_command, add_domain_option, add_runtime_options, add_species_argument, print_runtime,
                              refuse_overwrite)

EXAMPLES = """  sciml predict --checkpoint runs/ethanol/best.pt frames.extxyz --output predictions.extxyz
  sciml predict --checkpoint runs/jarvis_formation/best.pt cifs/*.cif          # prints a property table
  sciml predict --checkpoint model.pt POSCAR a.cif b.cif --output predictions.csv
  sciml predict --checkpoint model.pt structures.xyz --output predictions.json --batch-size 64
  sciml predict --checkpoint model.pt structures.db --files-from cifs.txt --workers 8 --output predictions.csv
  torchrun --nproc-per-node 4 --no-python sciml predict --checkpoint model.pt --device cuda \\
      --files-from cifs.txt --workers 4 --output predictions.extxyz           # 4 GPUs share the structures

  With --output, results are appended to OUTPUT.parts/rank-<r>.jsonl batch by batch and merged into
  OUTPUT at the end; an interrupted run resumes when started again with the same command (the
  structures already in OUTPUT.parts are not predicted again). Bad files and structures are listed
  and skipped; they are recorded, so a resume skips them too unless --retry-errors is given.
  --force overwrites OUTPUT and deletes OUTPUT.parts: the run starts from scratch.
"""


def register(sub) -> None:
    parser = add_command(sub, "predict", "predict energies/forces/stress or properties for structure files", EXAMPLES)
    parser.add_argument("--checkpoint", required=True, help="model checkpoint (.pt), or a package of sciml export (.pt2)")
    parser.add_argument("files", nargs="*",
                        help="CIF, POSCAR, xyz, extxyz, ase .db or .traj, any ase-readable file, or a file of a "
                             "streamable format registered in sciml.data.formats; each structure of a "
                             "multi-structure file is predicted")
    parser.add_argument("--files-from", metavar="LIST",
                        help="a text file of structure files, one path per line (after the FILES given); "
                             "blank lines and lines starting with # are ignored")
    parser.add_argument("--output", help="out.csv, out.json or out.extxyz, resumable (default: print a table only)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0,
                        help="processes reading files and building graphs while the model runs (default 0: none)")
    add_runtime_options(parser, "the checkpoint's")
    add_domain_option(parser)
    parser.add_argument("--force", action="store_true",
                        help="overwrite --output if it exists and discard OUTPUT.parts of an interrupted run")
    parser.add_argument("--retry-errors", action="store_true",
                        help="on resume, try again the structures an earlier run recorded as bad")
    add_species_argument(parser)
    parser.set_defaults(run=run)


def run(args) -> int:
    from sciml import batch_inference
    from sciml.distributed import setup, teardown
    from sciml.prediction_writers import output_format
    from sciml.deploy.export import load_potential
    from sciml.inference import model_dtype

    paths = list(args.files) + (_read_file_list(args.files_from) if args.files_from else [])
    if not paths:
        raise ValueError("no structure files: give FILES or --files-from LIST")
    if args.batch_size < 1 or args.workers < 0:
        raise ValueError(f"--batch-size must be >= 1 and --workers >= 0, got {args.batch_size} and {args.workers}")
    output = refuse_overwrite(args.output, args.force) if args.output else None
    if output is not None:
        output_format(output)  # refuses a bad suffix before the model is loaded
    ctx = setup(args.device)
    try:
        if output is None and ctx.world_size > 1:
            raise ValueError("--output is needed to predict across ranks (each rank writes its share there)")
        device = ctx.device(args.device)  # under torchrun, auto and cuda are each rank's own GPU
        model = load_potential(args.checkpoint, device=device, dtype=args.dtype)
        if ctx.is_main:
            print_runtime(device, model_dtype(model))
        if output is None:
            records, skipped = batch_inference.predict_structures(
                model, paths, args.batch_size, args.workers, allow_unknown_elements=args.allow_unknown_elements,
                species=args.species)
            _print_skipped(skipped)
            print(_table(records))
        else:
            summary = batch_inference.predict_to_file(
                model, paths, output, ctx=ctx, batch_size=args.batch_size, workers=args.workers, force=args.force,
                retry_errors=args.retry_errors, job=_job(args.checkpoint, model) if ctx.is_main else None,
                allow_unknown_elements=args.allow_unknown_elements,
                species=args.species,
            )
            if summary is not None:  # rank 0
                _print_skipped(summary.skipped)
                print(f"wrote predictions for {summary.predicted} structures to {output}")
    finally:
        teardown()
    return 0


def _job(checkpoint: str, model) -> dict:
    """What OUTPUT.parts must have been made with to be resumed: the same model in the same dtype."""
    from sciml.io.files import file_sha256
    from sciml.devices import dtype_name
    from sciml.inference import model_dtype

    return {"checkpoint_sha256": file_sha256(checkpoint), "dtype": dtype_name(model_dtype(model))}


def _read_file_list(path: str) -> list:
    """The paths listed in ``path``, one a line, as written (relative ones are relative to the
    working directory, as for FILES)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ValueError(f"--files-from {path}: cannot read ({err.strerror or err})") from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _print_skipped(skipped: list) -> None:
    for reason in skipped:
        print(f"skipped {reason}", file=sys.stderr)
    if skipped:
        print(f"skipped {len(skipped)} bad file{'s' * (len(skipped) != 1)} or structure{'s' * (len(skipped) != 1)} "
              f"(listed above)", file=sys.stderr)


def _table(records: list) -> str:
    """A fixed-width text table of the records' summary rows (floats with 6 significant digits)."""
    from sciml.batch_journal import output_fields
    from sciml.prediction_writers import summary_columns, summary_row

    fields = dict.fromkeys(name for record in records for name in output_fields(record))
    columns = summary_columns(list(fields))
    rows = [summary_row(record) for record in records]
    cells = [[f"{v:.6g}" if isinstance(v, float) else str(v) for v in (row.get(c, "") for c in columns)] for row in rows]
    widths = [max(len(c), *(len(line[k]) for line in cells)) for k, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)
