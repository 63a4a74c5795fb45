"""The engine's losses: each loss and BP1's first factor ``g = ∂(Σ_i c_i)/∂y_N``, for whole batches."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSSES", "LOSS_FACTOR", "grad", "loss_and_grad", "mean_scale", "minus_ones", "ones", "row_losses"]

LOSSES = ("half_squared_error", "cross_entropy")

LOSS_FACTOR = {"half_squared_error": 0.5, "cross_entropy": 1.0}  # Σ_i c_i = factor · raw sum


def loss_and_grad(
    y: Tensor, target: Tensor, loss: str, loss_scale: float | None, grad_scale: float
) -> tuple[Tensor, Tensor]:
    """``loss_scale · Σ_i c_i`` (a 0-d tensor) and BP1's first factor ``g = grad_scale · ∂(Σ_i c_i)/∂y_N``.

    ``loss_scale=None`` returns the raw sum instead (``Σ_i ‖y_i − t_i‖²`` or ``Σ_i c_i``), which
    the caller scales by ``LOSS_FACTOR[loss]`` and its own factor: one op per step less.
    """
    if loss == "half_squared_error":
        g = y - target  # y_N − t
        flat = g.reshape(-1)
        total = torch.dot(flat, flat)  # Σ_i ‖y_i − t_i‖²
        if loss_scale is not None:
            total.mul_(0.5 * loss_scale)  # Σ_i ½‖y_i − t_i‖², scaled
        if grad_scale != 1.0:
            g.mul_(grad_scale)
        return total, g
    log_p = torch.log_softmax(y, -1)  # (M, C)
    if target.is_floating_point():  # class probabilities q: c_i = −Σ_k q_ik log p_ik
        total = torch.dot(target.reshape(-1), log_p.reshape(-1))
        total.mul_(-1.0 if loss_scale is None else -loss_scale)
    else:  # class indices: c_i = −log p_{i t_i}
        total = F.nll_loss(log_p, target, reduction="sum")  # Σ_i −log p_{i t_i}
        if loss_scale is not None and loss_scale != 1.0:
            total.mul_(loss_scale)
    g = grad(y, target, loss)
    if grad_scale != 1.0:
        g.mul_(grad_scale)
    return total, g


def grad(y: Tensor, target: Tensor, loss: str) -> Tensor:
    """BP1's first factor for the summed loss, ``g = ∂(Σ_i c_i)/∂y_N``, without the loss itself:
    ``y_N − t``, or for cross-entropy ``softmax(y_N) − onehot(t)`` (``p Σq − q`` for class
    probabilities ``q``). A new tensor."""
    if loss == "half_squared_error":
        return y - target
    g = torch.softmax(y, -1)  # p
    if target.is_floating_point():
        return g.mul_(target.sum(-1, keepdim=True)).sub_(target)  # p Σq − q
    return g.scatter_add_(
        -1, target.unsqueeze(-1), minus_ones(y.shape[0], g.dtype, g.device)
    )  # p − onehot(t)


def row_losses(y: Tensor, target: Tensor, loss: str) -> Tensor:
    """Each sample's raw loss ``(M,)``: ``‖y_i − t_i‖²`` (``LOSS_FACTOR`` holds the ½) or ``c_i``."""
    if loss == "half_squared_error":
        d = y - target
        return (d * d).sum(-1)
    log_p = torch.log_softmax(y, -1)
    if target.is_floating_point():
        return -(target * log_p).sum(-1)
    return F.nll_loss(log_p, target, reduction="none")


def mean_scale(count: int, reduction: str) -> float:
    """The factor of ``reduction`` over ``count`` samples: ``1/M`` for ``'mean'`` (NaN for an empty
    batch, as torch's mean gives), 1 for ``'sum'``."""
    if reduction != "mean":
        return 1.0
    return 1.0 / count if count else math.nan


@lru_cache(maxsize=16)
def minus_ones(rows: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A column of −1s: scattered onto ``p`` at the targets it gives ``p − onehot(t)`` (never written).
    An ordinary tensor even when first asked for in inference mode (the cache outlives the step)."""
    with torch.inference_mode(False):
        return torch.full((rows, 1), -1.0, dtype=dtype, device=device)


@lru_cache(maxsize=16)
def ones(rows: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A column of ones: ``δᵀ 1`` is BP3's bias gradient ``Σ_rows δ`` as one matrix-vector product
    (an ordinary tensor, as :func:`minus_ones`)."""
    with torch.inference_mode(False):
        return torch.ones(rows, dtype=dtype, device=device)
