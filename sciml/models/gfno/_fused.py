"""The FNO / G-FNO block and MLP as fused operations with hand-written backward passes.

Done layer by layer, a Fourier block writes every intermediate field of the whole batch to memory
(both norms, the conv output, the MLP's hidden features, ...), autograd keeps most of them for the
backward pass and sums the three gradients of the block input in extra passes. On a CPU that is
memory traffic, and every fresh allocation above glibc's mmap threshold is page-faulted again. Here

* the first instance norm is applied to the kept spectrum (the transform is linear: the spectrum
  of ``(x - mean) * rstd`` is ``rstd`` times that of x, less ``mean * rstd * points`` at frequency
  zero), so the normalised field is never formed;
* the pointwise tail of the block (last inverse transform, second norm, the MLP, the skip map and
  the activation) runs on a few samples at a time, with intermediates of about
  :data:`CHUNK_BYTES` written into buffers reused by every chunk, so that they stay in cache;
* the backward pass recomputes the chunk intermediates from the block input and the conv output
  before its last inverse transform (a fraction of a field), except the MLP's hidden and output
  pre-activations, which are kept when small (:data:`KEEP_BYTES`), and it writes the input
  gradient once, adding the transform and norm parts in place;
* the projection MLP (width -> 4 width -> out) runs the same way, its hidden layer recomputed.

The arithmetic is that of the layer-by-layer computation, up to the grouping of floating-point sums
(in matrix products, reductions, and the norm's shift applied at frequency zero); the tests check
both against each other and against the reference implementation.

Tensors are channels-first: (B, C, *grid). Pointwise weights are the dense matrices of the maps on
flattened channels (:meth:`GroupLinear.matrix`); spectral weights (P, C_in, C_out) complex, one
matrix per kept frequency (:meth:`SpectralConvolution.spectral_weight`). The operations support one
backward pass (no double backward).
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

#: bytes of one (samples, channels, points) intermediate in a chunk
CHUNK_BYTES = 4 << 20
#: a block keeps its MLP's hidden pre-activation and its pre-activation output for the backward pass
#: when each is at most this large (for the whole batch); larger ones, which cost as much to write,
#: page-fault and read back as to recompute (three matrix products), are recomputed, which also
#: bounds the memory of large grids and batches
KEEP_BYTES = 32 << 20


class SpectralPlan(NamedTuple):
    """The truncated transforms of a spectral convolution on one grid.

    ``rdft`` (n, 2m) and ``irdft`` (2m, n): the real DFT along the last axis (length n) to frequencies
    0..m-1 as (re, im) pairs and back; ``axes``: for every other axis, (forward (k, n_axis),
    inverse (n_axis, k)) complex DFT matrices restricted to the kept frequencies; ``zero``: the index
    of frequency 0 in each of those axes' kept frequencies.
    """

    rdft: torch.Tensor
    irdft: torch.Tensor
    axes: Tuple[Tuple[torch.Tensor, torch.Tensor], ...]
    zero: Tuple[int, ...]


def _along(z: torch.Tensor, matrix: torch.Tensor, dim: int) -> torch.Tensor:
    """``matrix`` (k, n) applied along axis ``dim`` (length n) of z: (.., n, ..) -> (.., k, ..)."""
    if dim == z.dim() - 2:
        return torch.matmul(matrix, z)
    return torch.matmul(matrix, z.movedim(dim, -2)).movedim(-2, dim)


def transform(x: torch.Tensor, plan: SpectralPlan) -> torch.Tensor:
    """The kept spectrum of x (B, C, *grid): (B, C, *kept) complex."""
    modes = plan.rdft.shape[1] // 2
    ft = torch.view_as_complex((x.reshape(-1, x.shape[-1]) @ plan.rdft).view(*x.shape[:-1], modes, 2))
    for axis in reversed(range(len(plan.axes))):
        ft = _along(ft, plan.axes[axis][0], axis + 2)
    return ft


def mix(ft: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, C_in, *kept) -> (B, C_out, *kept): one matrix (C_in, C_out) per kept frequency."""
    batch, box = ft.shape[0], ft.shape[2:]
    out = torch.bmm(ft.reshape(batch, ft.shape[1], -1).permute(2, 0, 1).contiguous(), weight)
    return out.permute(1, 2, 0).contiguous().view(batch, -1, *box)


def inverse_axes(out: torch.Tensor, plan: SpectralPlan) -> torch.Tensor:
    """Back to the grid along every axis but the last: (B, C, *kept) -> (B, C, *grid[:-1], m)."""
    for axis in range(len(plan.axes)):
        out = _along(out, plan.axes[axis][1], axis + 2)
    return out


def _adjoint(matrix: torch.Tensor) -> torch.Tensor:
    return matrix.conj().resolve_conj().T.contiguous()


def _spans(batch: int, sample_bytes: int) -> List[Tuple[int, int]]:
    step = max(1, CHUNK_BYTES // max(sample_bytes, 1))
    return [(start, min(start + step, batch)) for start in range(0, batch, step)]


class _Workspace:
    """Buffers reused by every chunk of one call: a chunk's intermediates are written into them
    (``out=`` and in-place operations) rather than freshly allocated, which on a CPU costs page
    faults and cache misses for every allocation above glibc's mmap threshold."""

    def __init__(self, like: torch.Tensor, samples: int):
        self.like, self.samples, self.buffers = like, samples, {}

    def __call__(self, name: str, n: int, *shape: int) -> torch.Tensor:
        buffer = self.buffers.get(name)
        if buffer is None or buffer.shape[1:] != shape:
            buffer = self.buffers[name] = self.like.new_empty(self.samples, *shape)
        return buffer[:n]


def _linear(weight: torch.Tensor, bias: Optional[torch.Tensor], x: torch.Tensor,
            out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """weight (o, i) @ x (n, i, N) (+ bias (o,)) -> (n, o, N), into ``out`` if given."""
    if weight.shape[1] == 1 and bias is None:  # an outer product: cheaper as a broadcast
        return torch.mul(weight[None], x, out=out)
    weight = weight.expand(x.shape[0], *weight.shape)
    if bias is None:
        return torch.bmm(weight, x, out=out)
    return torch.baddbmm(bias[:, None], weight, x, out=out)


def _accumulate_outer(target: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """target (o, i) += sum_n a[n] @ b[n]^T for a (n, o, N), b (n, i, N)."""
    if a.shape[0] == 1:
        target.addmm_(a[0], b[0].T)
    else:
        target += torch.bmm(a, b.transpose(1, 2)).sum(0)


def _gelu(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu.out(x, out=out)


def _gelu_backward(grad: torch.Tensor, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """grad * gelu'(x) into ``out`` (which may be ``grad``)."""
    return torch.ops.aten.gelu_backward.grad_input(grad, x, grad_input=out)


def _moments(x: torch.Tensor, order: int, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/sqrt(var + eps) (biased) of x (B, C, N) over each group of ``order`` consecutive
    channels and all points, (B, C / order) each, a few samples at a time."""
    batch, channels = x.shape[:2]
    mean = x.new_empty(batch, channels // order)
    rstd = torch.empty_like(mean)
    spans = _spans(batch, x[0].numel() * x.element_size())
    work = _Workspace(x, spans[0][1])
    for start, stop in spans:
        chunk = x[start:stop].view(stop - start, channels // order, -1)
        m = chunk.mean(-1)
        centred = torch.sub(chunk, m[..., None], out=work("centred", stop - start, *chunk.shape[1:]))
        mean[start:stop] = m
        rstd[start:stop] = _rstd(centred, keepdim=False, eps=eps)
    return mean, rstd


def _rstd(centred: torch.Tensor, keepdim: bool, eps: float) -> torch.Tensor:
    """1/sqrt(mean(centred^2) + eps) over the last axis, one pass (a norm) with no temporary."""
    return torch.rsqrt(torch.linalg.vector_norm(centred, dim=-1, keepdim=keepdim).square_()
                       .div_(centred.shape[-1]).add_(eps))


def _normalise_(z: torch.Tensor, order: int, eps: float) -> torch.Tensor:
    """z (n, C, N) -> (z - mean) * rstd in place over groups of ``order`` channels; returns rstd (n, C/order, 1)."""
    grouped = z.view(z.shape[0], z.shape[1] // order, -1)
    grouped.sub_(grouped.mean(-1, keepdim=True))
    rstd = _rstd(grouped, keepdim=True, eps=eps)
    grouped.mul_(rstd)
    return rstd


def _tail_input(spectrum, inverse, order, eps, start, stop, out):
    """The (normalised) conv output on samples start:stop into ``out`` (n, C, N); the norm's rstd (or None)."""
    torch.mm(torch.view_as_real(spectrum[start:stop]).reshape(-1, inverse.shape[0]), inverse,
             out=out.view(-1, inverse.shape[1]))
    return _normalise_(out, order, eps) if eps is not None else None


class _FourierBlock(torch.autograd.Function):
    """act(W2 gelu(W1 norm2(conv(norm1(x))) + b1) + Ws x + bias), x (B, C, N) with N the flattened grid."""

    @staticmethod
    def forward(ctx, x, weight, w1, b1, w2, ws, bias, plan: SpectralPlan, grid, order: int, eps: Optional[float],
                activation: bool):
        batch, channels, points = x.shape
        ft = transform(x.view(batch, channels, *grid), plan)
        scaled = ft
        mean = rstd = None
        if eps is not None:
            mean, rstd = _moments(x, order, eps)
            scaled = _normalised_spectrum(ft, mean, rstd, order, plan, points)
        spectrum = inverse_axes(mix(scaled, weight), plan).contiguous()
        out = torch.empty(batch, w2.shape[0], points, dtype=x.dtype, device=x.device)
        # the MLP's hidden pre-activation and the pre-activation output, kept for the backward pass if small
        size = batch * max(w1.shape[0], w2.shape[0]) * points * x.element_size()
        keep = any(ctx.needs_input_grad) and size <= KEEP_BYTES
        hidden = x.new_empty(batch, w1.shape[0], points) if keep else None
        before = x.new_empty(batch, w2.shape[0], points) if keep and activation else None
        spans = _spans(batch, channels * points * x.element_size())
        work = _Workspace(x, spans[0][1])
        for start, stop in spans:
            n = stop - start
            z = work("z", n, channels, points)
            _tail_input(spectrum, plan.irdft, order, eps, start, stop, z)
            h = _linear(w1, b1, z, out=work("h", n, w1.shape[0], points) if hidden is None else hidden[start:stop])
            c = _linear(w2, bias, _gelu(h, work("g", n, w1.shape[0], points)),
                        out=out[start:stop] if before is None else before[start:stop])
            c.baddbmm_(ws.expand(n, *ws.shape), x[start:stop])
            if activation:
                _gelu(c, out[start:stop])
        ctx.save_for_backward(x, ft, spectrum, weight, w1, b1, w2, ws, bias, mean, rstd, hidden, before)
        ctx.options = (plan, grid, order, eps, activation, spans)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, ft, spectrum, weight, w1, b1, w2, ws, bias, mean, rstd, hidden, before = ctx.saved_tensors
        plan, grid, order, eps, activation, spans = ctx.options
        batch, channels, points = x.shape
        grad_spectrum = torch.empty_like(spectrum)
        grad_x = torch.empty_like(x)
        grad_w1, grad_w2, grad_ws = torch.zeros_like(w1), torch.zeros_like(w2), torch.zeros_like(ws)
        grad_b1, grad_bias = w1.new_zeros(w1.shape[0]), w2.new_zeros(w2.shape[0])
        work = _Workspace(x, spans[0][1])
        hidden_channels = w1.shape[0]
        for start, stop in spans:
            n = stop - start
            z = work("z", n, channels, points)
            rstd2 = _tail_input(spectrum, plan.irdft, order, eps, start, stop, z)
            h = _linear(w1, b1, z, out=work("h", n, hidden_channels, points)) if hidden is None else hidden[start:stop]
            g = _gelu(h, work("g", n, hidden_channels, points))
            dc = grad[start:stop]
            if activation:
                if before is None:
                    c = _linear(w2, bias, g, out=work("c", n, w2.shape[0], points))
                    c.baddbmm_(ws.expand(n, *ws.shape), x[start:stop])
                else:
                    c = before[start:stop]
                dc = _gelu_backward(dc, c, work("dc", n, w2.shape[0], points))
            _accumulate_outer(grad_w2, dc, g)
            _accumulate_outer(grad_ws, dc, x[start:stop])
            grad_bias += dc.sum((0, 2))
            torch.bmm(ws.T.expand(n, ws.shape[1], ws.shape[0]), dc, out=grad_x[start:stop])
            dh = _linear(w2.T, None, dc, out=g)  # g is no longer needed
            _gelu_backward(dh, h, dh)
            _accumulate_outer(grad_w1, dh, z)
            grad_b1 += dh.sum((0, 2))
            dz = _linear(w1.T, None, dh, out=work("dz", n, channels, points))
            if eps is not None:  # instance-norm backward: rstd (dn - mean(dn) - n mean(dn n))
                dn, normed = dz.view(n, channels // order, -1), z.view(n, channels // order, -1)
                projection = torch.linalg.vecdot(dn, normed)[..., None].div_(dn.shape[-1])
                dn.sub_(dn.mean(-1, keepdim=True)).addcmul_(normed, projection, value=-1).mul_(rstd2)
            torch.mm(dz.view(-1, plan.irdft.shape[1]), plan.irdft.T,
                     out=torch.view_as_real(grad_spectrum[start:stop]).view(-1, plan.irdft.shape[0]))
        # back through the inverse transforms, the frequency-wise products and the first norm
        for axis in reversed(range(len(plan.axes))):
            grad_spectrum = _along(grad_spectrum, _adjoint(plan.axes[axis][1]), axis + 2)
        box = grad_spectrum.shape[2:]
        grad_out = grad_spectrum.reshape(batch, grad_spectrum.shape[1], -1).permute(2, 0, 1).contiguous()
        scaled = ft if eps is None else _normalised_spectrum(ft, mean, rstd, order, plan, points)
        scaled = scaled.reshape(batch, channels, -1).permute(2, 0, 1).contiguous()  # (P, B, C_in)
        grad_weight = torch.bmm(scaled.transpose(1, 2).conj(), grad_out)
        # grad_out @ weight^H, conjugating the small factor rather than the weight
        grad_ft = torch.bmm(grad_out.conj_physical_(), weight.transpose(1, 2)).conj_physical_()
        grad_ft = grad_ft.permute(1, 2, 0).contiguous()
        grad_ft = grad_ft.view(batch, channels, *box)
        slope = offset = None
        if eps is not None:
            scale = rstd.repeat_interleave(order, 1)
            # d/d scale of ft * scale, d/d shift of shift * points at frequency 0 (scale, shift real)
            grad_scale = (torch.view_as_real(grad_ft) * torch.view_as_real(ft)).flatten(2).sum(-1)
            grad_shift = grad_ft[(slice(None), slice(None)) + plan.zero + (0,)].real * points
            grad_ft = grad_ft * scale.view(batch, channels, *(1,) * len(box))
            # scale = rstd, shift = -mean rstd, repeated over the group
            grad_scale = grad_scale.view(batch, -1, order).sum(-1)
            grad_shift = grad_shift.view(batch, -1, order).sum(-1)
            grad_rstd = grad_scale - mean * grad_shift
            grad_mean = -rstd * grad_shift
            # d rstd / d x = -rstd^3 (x - mean) / count, d mean / d x = 1 / count
            count = points * order
            slope = (-grad_rstd * rstd.pow(3) / count)[..., None]
            offset = (grad_mean / count)[..., None] - slope * mean[..., None]
        for axis in reversed(range(len(plan.axes))):
            grad_ft = _along(grad_ft, _adjoint(plan.axes[axis][0]), axis + 2)
        grad_ft = torch.view_as_real(grad_ft).reshape(batch, channels, -1, plan.rdft.shape[1])
        for start, stop in spans:
            n = stop - start
            chunk = grad_x[start:stop].view(n * channels * (points // grid[-1]), grid[-1])
            chunk.addmm_(grad_ft[start:stop].reshape(-1, plan.rdft.shape[1]), plan.rdft.T)
            if slope is not None:
                grouped = grad_x[start:stop].view(n, channels // order, -1)
                grouped.addcmul_(slope[start:stop], x[start:stop].view_as(grouped)).add_(offset[start:stop])
        return grad_x, grad_weight, grad_w1, grad_b1, grad_w2, grad_ws, grad_bias, None, None, None, None, None


def _normalised_spectrum(ft, mean, rstd, order, plan, points):
    """The kept spectrum of (x - mean) * rstd from that of x (statistics per group of ``order`` channels)."""
    return affine_spectrum(ft, rstd.repeat_interleave(order, 1), -(mean * rstd).repeat_interleave(order, 1), plan,
                           points)


def affine_spectrum(ft: torch.Tensor, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
                    plan: SpectralPlan, points: int) -> torch.Tensor:
    """The kept spectrum of ``x * scale + shift`` from ``ft``, that of x on a grid of ``points``
    points; ``scale``, ``shift``: (B, C) real, per sample and channel, or None. The transform is
    linear: the spectrum is scaled, and ``shift`` times the number of points is added at frequency
    zero. A new tensor; ``ft`` is not changed."""
    out = ft * scale.view(*scale.shape, *(1,) * (ft.dim() - 2)) if scale is not None else ft.clone()
    if shift is not None:
        zero = (slice(None), slice(None)) + plan.zero + (0,)
        out[zero] += shift * points
    return out


def fourier_block(x: torch.Tensor, weight: torch.Tensor, plan: SpectralPlan, w1: torch.Tensor, b1: torch.Tensor,
                  w2: torch.Tensor, ws: torch.Tensor, bias: torch.Tensor, order: int, eps: Optional[float],
                  activation: bool) -> torch.Tensor:
    """One Fourier block, (B, C, *grid) -> (B, C_out, *grid):
    ``act(W2 gelu(W1 norm(conv(norm(x))) + b1) + Ws x + bias)``.

    ``weight`` (P, C, C_conv) complex and ``plan``: the spectral convolution; ``norm``: instance norm
    over each group of ``order`` channels and the grid with ``eps`` (None: no norm); ``act``: GELU
    if ``activation``; ``w1`` (C_hidden, C_conv), ``w2`` (C_out, C_hidden), ``ws`` (C_out, C), biases."""
    grid = tuple(x.shape[2:])
    x = x.reshape(x.shape[0], x.shape[1], -1).contiguous()
    out = _FourierBlock.apply(x, weight, w1, b1, w2, ws, bias, plan, grid, order, eps, activation)
    return out.view(out.shape[0], -1, *grid)


class _MLP(torch.autograd.Function):
    """W2 gelu(W1 x + b1) + b2 on x (B, C, N), the hidden layer recomputed in backward."""

    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2):
        batch, _, points = x.shape
        out = torch.empty(batch, w2.shape[0], points, dtype=x.dtype, device=x.device)
        spans = _spans(batch, w1.shape[0] * points * x.element_size())
        work = _Workspace(x, spans[0][1])
        for start, stop in spans:
            h = _linear(w1, b1, x[start:stop], out=work("h", stop - start, w1.shape[0], points))
            _linear(w2, b2, _gelu(h, h), out=out[start:stop])
        ctx.save_for_backward(x, w1, b1, w2)
        ctx.spans = spans
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, w1, b1, w2 = ctx.saved_tensors
        points = x.shape[2]
        grad_x = torch.empty_like(x)
        grad_w1, grad_b1, grad_w2 = torch.zeros_like(w1), torch.zeros_like(b1), torch.zeros_like(w2)
        work = _Workspace(x, ctx.spans[0][1])
        for start, stop in ctx.spans:
            n = stop - start
            h = _linear(w1, b1, x[start:stop], out=work("h", n, w1.shape[0], points))
            g = _gelu(h, work("g", n, w1.shape[0], points))
            _accumulate_outer(grad_w2, grad[start:stop], g)
            dh = _gelu_backward(_linear(w2.T, None, grad[start:stop], out=g), h, g)
            _accumulate_outer(grad_w1, dh, x[start:stop])
            grad_b1 += dh.sum((0, 2))
            torch.bmm(w1.T.expand(n, w1.shape[1], w1.shape[0]), dh, out=grad_x[start:stop])
        return grad_x, grad_w1, grad_b1, grad_w2, grad.sum((0, 2))


def mlp(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """W2 gelu(W1 x + b1) + b2 on channels-first x (B, C, *grid) -> (B, C_out, *grid)."""
    grid = x.shape[2:]
    out = _MLP.apply(x.reshape(x.shape[0], x.shape[1], -1).contiguous(), w1, b1, w2, b2)
    return out.view(x.shape[0], -1, *grid)
