"""One pass over a data set in batches: a step per batch, the arguments checked once."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from manual_bp.engine.distributed import distributed_step, is_distributed
from manual_bp.engine.losses import LOSS_FACTOR, row_losses
from manual_bp.engine.step import check_call, check_lr, local_step, no_autocast, no_graph
from manual_bp.mlp import MLP
from manual_bp.ops.network import Feedback, Layer

__all__ = ["sgd_epoch"]


def sgd_epoch(
    mlp: MLP,
    x: Tensor,
    target: Tensor,
    lr: float,
    batch_size: int,
    loss: str = "half_squared_error",
    reduction: str = "mean",
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One pass over ``(x, target)`` in batches of ``batch_size``: :func:`sgd_step` on each batch.

    The arguments are checked once for the whole epoch (not per batch), so small batches pay
    less Python; each batch's step is exactly :func:`sgd_step`'s. The last batch may be smaller.
    ``shuffle=True`` visits the rows in the order of ``torch.randperm(M, generator=generator)``.
    Under ``torch.distributed`` each process passes its shard; step ``b`` is the global step on
    every shard's batch ``b`` (a process whose shard has fewer batches joins with empty ones).

    Returns:
        The mean of the batches' losses (a detached 0-d tensor), each taken before its update.

    >>> import torch, manual_bp
    >>> net = manual_bp.MLP([2, 3, 1])
    >>> manual_bp.engine.sgd_epoch(net, torch.randn(10, 2), torch.rand(10, 1), lr=0.5, batch_size=4).shape
    torch.Size([])
    """
    y0, target = check_call(mlp, x, target, loss, reduction)
    lr = check_lr(lr, y0.dtype)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    rows = y0.shape[0]
    if shuffle:
        order = torch.randperm(rows, generator=generator).to(y0.device)
        y0, target = y0[order], target[order]
    layers, distributed = mlp.layers_of(mlp.parameters_flat()), is_distributed()
    bp2 = mlp.bp2  # a feedback rule's BP2 matrices (None for the seed's), taken anew every step
    batches = -(-rows // batch_size)
    if distributed:  # every step is a collective: run as many as the process with the most batches
        most = torch.tensor([batches], device=y0.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        batches = int(most)  # a process out of rows takes part with empty batches
    with no_autocast(y0):
        with torch.no_grad() if distributed else no_graph():
            # every batch's views at once (cheaper than slicing twice per step)
            y_batches, t_batches = y0.split(batch_size)[:batches], target.split(batch_size)[:batches]
            if distributed:
                if len(y_batches) < batches:  # out of rows: empty batches from here on
                    y_batches += (y0[rows:],) * (batches - len(y_batches))
                    t_batches += (target[rows:],) * (batches - len(t_batches))
                losses = [
                    distributed_step(layers, y_b, t_b, lr, loss, reduction, bp2())
                    for y_b, t_b in zip(y_batches, t_batches, strict=True)
                ]
            else:
                losses = _epoch_losses(layers, y_batches, t_batches, target, lr, loss, reduction, bp2)
        # from here outside inference mode: the caller gets an ordinary tensor
        if not losses:
            return torch.full((), math.nan, dtype=y0.dtype, device=y0.device)
        if distributed:
            return torch.stack(losses).mean()
        # each chunk's sum of per-batch losses (raw: ½ and the mean over batches applied here)
        total = torch.stack(losses).sum() if len(losses) > 1 else losses[0]
        return (total * (LOSS_FACTOR[loss] / batches)).to(y0.dtype)


_CHUNK = 1 << 20  # network outputs kept for the epoch's loss before their losses are computed


def _epoch_losses(
    layers: Sequence[Layer],
    y_batches: tuple[Tensor, ...],
    t_batches: tuple[Tensor, ...],
    target: Tensor,
    lr: float,
    loss: str,
    reduction: str,
    bp2: Callable[[], Feedback | None] = lambda: None,
) -> list[Tensor]:
    """The single-process steps of :func:`sgd_epoch`; returns the batches' raw losses summed per
    chunk of consecutive batches (each batch's loss averaged over its rows for ``'mean'``), in
    float32 at least.

    A step computes no loss (:func:`~manual_bp.engine.step.local_step` with ``outputs``): it keeps
    its ``y_N``, computed before its update. Every ``_CHUNK`` output elements, and at the end, one
    pass over the kept outputs gives their per-sample losses: a few ops per chunk instead of two
    or three per step (7 % of the digits epoch of ``scripts/bench.py``, batches of 32). The losses
    equal those the steps would have computed, up to rounding.
    """
    # float32 at least: in float16 the per-batch scales of a long epoch would be subnormal
    acc = torch.promote_types(layers[0][0].dtype, torch.float32)
    sums: list[Tensor] = []
    outputs: list[Tensor] = []
    kept = start = 0  # output elements kept; the first row of the chunk
    for i, (y_b, t_b) in enumerate(zip(y_batches, t_batches, strict=True)):
        local_step(layers, y_b, t_b, lr, loss, reduction, outputs, bp2())
        kept += outputs[-1].numel()
        if kept >= _CHUNK or i + 1 == len(y_batches):
            end = start + sum(out.shape[0] for out in outputs)
            y_n = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
            rows = row_losses(y_n, target[start:end], loss).to(acc)
            if reduction == "sum":
                sums.append(rows.sum())
            else:  # every batch of the chunk but perhaps the epoch's last one has the first's size
                size, last = outputs[0].shape[0], outputs[-1].shape[0]
                full = len(outputs) if last == size else len(outputs) - 1
                chunk = rows[: full * size].sum() / size
                if full < len(outputs):
                    chunk = chunk + rows[full * size :].sum() / last
                sums.append(chunk)
            outputs.clear()
            kept, start = 0, end
    return sums
