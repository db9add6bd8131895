"""Speed of sciml's GauntTensorProduct against the e3nn tensor product that computes the same product.

The case is a MACE-style edge product at degree L = 2, 4, 6: node features ``C x (0e+1o+2e+...+L)``
(C = 16 channels) times the edge spherical harmonics ``1x(0e+1o+...+L)`` of ``num`` random edges,
to ``C x (0e+1o+...+L)``.

- sciml: ``GauntTensorProduct(L, L, L, C)`` (per-channel, per-degree weights on both inputs, the
  edge SH shared by the channels, ``method="auto"``), float32.
- e3nn: ``o3.TensorProduct`` in mode ``"uvu"`` (channelwise) with every parity-even path
  (l1 + l2 + l3 even: the paths the Gaunt product has; 11, 42 and 106 paths at L = 2, 4, 6) and
  shared internal weights, one per path and channel. Its weights are set to
  ``c(l1,l2,l3) w1[c,l1] w2[c,l2] / path_weight`` so it returns exactly the Gaunt layer's output
  (checked before timing): the same product computed with Clebsch-Gordan coefficients. This is
  not e3nn's FullyConnectedTensorProduct, which also has the odd paths and mixes channels.

"forward" runs with autograd recording (inputs require gradients, as in training);
"forward+backward" adds the gradients of ``<out, g>`` for a fixed random ``g`` with respect to the
node features and the weights. Times are the best of a few runs in one process, single-threaded
unless the caller set otherwise; on a shared machine they are indicative only.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import torch
from e3nn import o3

from sciml.bench.timing import best_seconds
from sciml.ops.gaunt import GauntTensorProduct, channels_to_mul_ir, gaunt_coefficients


def _best_ms(fn: Callable[[], object], repeats: int, budget_s: float) -> float:
    """Fastest of up to ``repeats`` timed runs after one warm-up, stopping once ``budget_s`` is spent."""
    return 1e3 * best_seconds(fn, repeats, budget_seconds=budget_s)


def e3nn_gaunt_tensor_product(layer: GauntTensorProduct) -> o3.TensorProduct:
    """The e3nn ``uvu`` tensor product on the parity-even paths that equals ``layer`` (same weights).

    Takes and returns e3nn's flat layout (``channels_to_mul_ir`` of the layer's inputs/outputs);
    in2 is ``1x(0e+1o+...)``, i.e. the layer's shared x2. Built in the current default dtype; the
    layer must use integral normalization.
    """
    if layer.normalization != "integral":
        raise ValueError("e3nn_gaunt_tensor_product needs a layer with normalization 'integral'")
    channels = layer.channels
    irreps1 = o3.Irreps([(channels, (l, (-1) ** l)) for l in range(layer.lmax1 + 1)])
    irreps2 = o3.Irreps.spherical_harmonics(layer.lmax2)
    irreps_out = o3.Irreps([(channels, (l, (-1) ** l)) for l in range(layer.lmax_out + 1)])
    instructions = [
        (i1, i2, io, "uvu", True)
        for i1, (_, ir1) in enumerate(irreps1)
        for i2, (_, ir2) in enumerate(irreps2)
        for io, (_, ir_out) in enumerate(irreps_out)
        if ir_out in ir1 * ir2 and (ir1.l + ir2.l + ir_out.l) % 2 == 0
    ]
    tp = o3.TensorProduct(irreps1, irreps2, irreps_out, instructions, shared_weights=True, internal_weights=True)
    gaunt = gaunt_coefficients(layer.lmax1, layer.lmax2, layer.lmax_out)
    ones = torch.ones(channels, max(layer.lmax1, layer.lmax2) + 1, dtype=torch.float64)
    w1, w2 = ones, ones
    if layer.weight1 is not None:  # (C, L+1), or (L+1,) shared by the channels
        w1 = layer.weight1.detach().double().expand(channels, -1)
        w2 = layer.weight2.detach().double().expand(channels, -1)
    weights = []
    for ins in tp.instructions:
        l1, l2, l3 = irreps1[ins.i_in1].ir.l, irreps2[ins.i_in2].ir.l, irreps_out[ins.i_out].ir.l
        block = gaunt[l1 * l1 : (l1 + 1) ** 2, l2 * l2 : (l2 + 1) ** 2, l3 * l3 : (l3 + 1) ** 2]
        scale = (block * o3.wigner_3j(l1, l2, l3, dtype=torch.float64)).sum() / ins.path_weight
        weights.append(scale * w1[:, l1] * w2[:, l2])
    with torch.no_grad():
        tp.weight.copy_(torch.cat(weights).to(tp.weight.dtype))
    return tp


def gaunt_rows(
    num: int = 10_000,
    lmaxes: Sequence[int] = (2, 4, 6),
    channels: int = 16,
    methods: Sequence[str] = ("auto",),
    weights: str = "channel",
    repeats: int = 3,
    budget_s: float = 2.0,
    seed: int = 0,
) -> List[Dict]:
    """Time GauntTensorProduct and the equal e3nn tensor product on ``num`` edges, float32.

    Returns rows ``{"op", "case", "sciml_ms", "e3nn_ms", "speedup"}`` (speedup = e3nn / sciml), per
    degree and method two rows (``op`` "forward" and "forward+backward"); ``case`` names L, C, the
    edge count, the weights (the layer's ``weights`` mode; "degree" keeps the shared x2 shared),
    the route taken (``methods`` may add "fourier", "grid", "dense" to "auto") and the e3nn path
    count. About 30 s at the defaults on one core of the dev box.
    """
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for lmax in lmaxes:
        n = (lmax + 1) ** 2
        reference = GauntTensorProduct(lmax, lmax, lmax, channels, weights=weights)
        with torch.no_grad():
            for weight in reference.parameters():
                weight.uniform_(0.5, 1.5, generator=generator)
        tp = e3nn_gaunt_tensor_product(reference)
        x1 = torch.randn(num, n, channels, generator=generator).requires_grad_(True)
        flat1 = channels_to_mul_ir(x1.detach()).requires_grad_(True)
        edges = torch.randn(num, 3, generator=generator)
        x2 = o3.spherical_harmonics(list(range(lmax + 1)), edges, normalize=True)  # integral normalization
        grad_out = torch.randn(num, n, channels, generator=generator)
        grad_flat = channels_to_mul_ir(grad_out)
        e3nn_params = [flat1] + list(tp.parameters())
        e3nn_ms = {
            "forward": _best_ms(lambda: tp(flat1, x2), repeats, budget_s),
            "forward+backward": _best_ms(
                lambda: torch.autograd.grad(tp(flat1, x2), e3nn_params, grad_flat), repeats, budget_s
            ),
        }
        with torch.no_grad():
            theirs = tp(flat1, x2)
        for method in methods:
            layer = GauntTensorProduct(lmax, lmax, lmax, channels, weights=weights, method=method)
            layer.load_state_dict(reference.state_dict())
            with torch.no_grad():
                error = (channels_to_mul_ir(layer(x1, x2)) - theirs).abs().max().item()
            if error > 1e-4 * (1.0 + theirs.abs().max().item()):
                raise RuntimeError(f"GauntTensorProduct ({method}) and e3nn differ by {error:.2e} at L={lmax}")
            params = [x1] + list(layer.parameters())
            sciml_ms = {
                "forward": _best_ms(lambda: layer(x1, x2), repeats, budget_s),
                "forward+backward": _best_ms(
                    lambda: torch.autograd.grad(layer(x1, x2), params, grad_out), repeats, budget_s
                ),
            }
            route = layer.resolved_method() + (" via auto" if method == "auto" else "")
            case = f"L={lmax} C={channels} E={num} w={weights} ({route}; e3nn uvu, {len(tp.instructions)} paths)"
            for op in ("forward", "forward+backward"):
                rows.append(
                    {
                        "op": op,
                        "case": case,
                        "sciml_ms": sciml_ms[op],
                        "e3nn_ms": e3nn_ms[op],
                        "speedup": e3nn_ms[op] / sciml_ms[op],
                    }
                )
    return rows


def format_gaunt_table(rows: List[Dict]) -> str:
    """A text table of ``gaunt_rows`` (speedup above 1 means sciml is faster)."""
    lines = [f"{'op':<17} {'case':<70} {'sciml ms':>9} {'e3nn ms':>9} {'speedup':>8}"]
    for r in rows:
        lines.append(f"{r['op']:<17} {r['case']:<70} {r['sciml_ms']:>9.2f} {r['e3nn_ms']:>9.2f} {r['speedup']:>8.1f}")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m sciml.bench.gaunt [methods...], e.g. auto fourier
    import sys

    torch.set_num_threads(1)
    print(format_gaunt_table(gaunt_rows(methods=tuple(sys.argv[1:]) or ("auto",))))
