"""The step under ``torch.distributed``: every process's summed gradients, one ``all_reduce``, the update."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from manual_bp.engine.losses import loss_and_grad
from manual_bp.ops.network import Feedback, Layer, backprop, forward_pass

__all__ = ["distributed_step", "is_distributed"]


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised (every step is then a collective)."""
    return dist.is_available() and dist.is_initialized()


def distributed_step(
    layers: Sequence[Layer],
    y0: Tensor,
    target: Tensor,
    lr: float,
    loss: str,
    reduction: str,
    feedback: Feedback | None = None,
) -> Tensor:
    """One step under ``torch.distributed`` on checked, flattened arguments, under
    ``torch.no_grad()``: the global loss.

    BP3 writes every process's summed gradients ``Σ_i δ_{n+1}ᵀ y_n`` into one flat buffer
    ``[∂W_0, ∂b_0, …, Σc, M]``; one ``all_reduce`` sums it over processes; then UPD divides by the
    global sample count for ``'mean'``. So every process takes the step one process takes on the
    concatenated batch.
    """
    ys, saved = forward_pass(layers, y0)  # FF
    count = y0.shape[0]
    # the gradients below stay sums over rows, divided by the global M after the all_reduce
    total, g = loss_and_grad(ys[-1], target, loss, 1.0, 1.0)
    params = [p for weight, bias, _ in layers for p in (weight, bias) if p is not None]
    # float32 at least: a float16 buffer would round the sample count above 2048
    buf_dtype = torch.promote_types(y0.dtype, torch.float32)
    flat = torch.empty(sum(p.numel() for p in params) + 2, dtype=buf_dtype, device=y0.device)
    views, offset = [], 0
    for p in params:
        views.append(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    flat[-2] = total
    flat[-1] = count
    step = 2 if layers[0][1] is not None else 1

    def bp3(n: int, delta: Tensor) -> None:  # BP3 into the buffer: Σ_i δ_{n+1}ᵀ y_n, Σ_i δ_{n+1}
        if buf_dtype == y0.dtype:
            torch.mm(delta.t(), ys[n], out=views[step * n])
            if step == 2:
                torch.sum(delta, 0, out=views[step * n + 1])
        else:
            views[step * n].copy_(delta.t().mm(ys[n]))
            if step == 2:
                views[step * n + 1].copy_(delta.sum(0))

    backprop(layers, saved, g, bp3, owned=True, feedback=feedback)  # BP1, BP2, BP3
    dist.all_reduce(flat)  # sums over processes
    global_total, global_count = flat[-2], flat[-1]
    factor = lr / global_count if reduction == "mean" else lr
    for p, grad in zip(params, views, strict=True):
        if p.requires_grad:  # a frozen parameter is left as it is, as torch.optim does
            p.sub_((grad * factor).to(p.dtype))  # UPD: Δw = −α ∂C/∂w
    loss_value = global_total / global_count if reduction == "mean" else global_total.clone()
    return loss_value.to(y0.dtype)
