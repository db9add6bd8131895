"""``sciml info``: what a checkpoint or exported package holds: model, options, training and domain."""

from __future__ import annotations

from sciml.cli.common import add_command

EXAMPLES = """  sciml info runs/ethanol/best.pt
  sciml info eq2_31M_ec4_allmd.pt          # a fairchem EquiformerV2 checkpoint
  sciml info model.pt2                     # a package of sciml export
"""


def register(sub) -> None:
    parser = add_command(sub, "info", "describe a checkpoint: model, options, training and the domain it was "
                                      "trained on", EXAMPLES)
    parser.add_argument("checkpoint", help="a sciml or fairchem checkpoint (.pt) or a package of sciml export (.pt2)")
    parser.set_defaults(run=run)


def run(args) -> int:
    for line in describe(args.checkpoint):
        print(line)
    return 0


def describe(path: str) -> list:
    """The lines ``sciml info`` prints for ``path``."""
    from sciml.deploy.export import is_exported, read_metadata
    from sciml.devices import dtype_name
    from sciml.inference import load_model, model_dtype
    from sciml.io.checkpoint import is_sciml_payload, read_torch_file
    from sciml.models.domain import ModelDomain

    if is_exported(path):
        import json

        metadata = read_metadata(path)
        lines = [f"{path}: package of sciml export ({metadata['model']}, {metadata['dtype']}, "
                 f"{metadata['device']}, torch {metadata['torch_version']})",
                 f"cutoff: {float(metadata['cutoff']):g} Å", f"forces: {metadata['forces']}"]
        domain = ModelDomain.from_dict(json.loads(metadata["domain"])) if metadata.get("domain") else None
    else:
        payload = read_torch_file(path)
        model = load_model(path)
        parameters = sum(p.numel() for p in model.parameters())
        if is_sciml_payload(payload):
            kind = f"sciml checkpoint (sciml {payload.get('sciml_version', '?')})"
            options = payload.get("options", {})
            trained = payload.get("epoch")
            training = (f"trained {trained} epochs, best epoch {payload.get('best_epoch')} "
                        f"(validation loss {payload.get('best_metric', float('nan')):.4g})") if isinstance(trained, int) else None
        else:
            kind = "fairchem checkpoint (converted on loading)"
            options, training = {}, None
        lines = [f"{path}: {kind}", f"model: {model.model_name}, {parameters:,} parameters, {dtype_name(model_dtype(model))}"]
        if options:
            lines.append("options: " + ", ".join(f"{k}={v}" for k, v in options.items()))
        if training:
            lines.append(training)
        parent = payload.get("parent") if is_sciml_payload(payload) else None
        if parent:
            lines.append(f"fine-tuned from {parent['path']} (sha256 {parent['sha256']})")
        domain = model.domain
    if domain is None:
        lines.append("domain: not recorded (a checkpoint from before sciml recorded domains): no element check")
    else:
        lines += [f"domain: {line}" for line in domain.describe()]
    return lines
