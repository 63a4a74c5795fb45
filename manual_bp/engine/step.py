"""One step of the seed's gradient descent: checks, then FF, BP1, BP2, BP3 and the update."""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from manual_bp._function import autocast_dtype, check_floating, check_same, check_target
from manual_bp.engine.distributed import distributed_step, is_distributed
from manual_bp.engine.losses import LOSS_FACTOR, LOSSES, grad, loss_and_grad, mean_scale, ones
from manual_bp.mlp import MLP
from manual_bp.ops.network import Feedback, Layer, backprop, forward_pass

__all__ = [
    "check_call",
    "check_lr",
    "local_step",
    "no_autocast",
    "no_graph",
    "sgd_step",
    "single_step",
]


def check_call(mlp: Any, x: Any, target: Any, loss: str, reduction: str) -> tuple[Tensor, Tensor]:
    """Validate the call and return ``x`` and ``target`` flattened to ``(M, ·)`` rows."""
    if not isinstance(mlp, MLP):
        raise TypeError(f"the engine trains a manual_bp.MLP, got {type(mlp).__name__}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    check_floating("x", x)
    weight = mlp.layers[0].weight
    d_in, d_out = mlp.sizes[0], mlp.sizes[-1]
    if x.dim() == 0 or x.shape[-1] != d_in:
        raise ValueError(f"x must have shape (*, {d_in}) (sizes[0]={d_in}), got {tuple(x.shape)}")
    check_same("x", x, "the MLP's weights", weight)
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    out_shape = (*x.shape[:-1], d_out)
    if loss == "cross_entropy" and not target.is_floating_point():
        if target.dtype != torch.int64:
            raise TypeError(f"class-index targets must be int64, got {target.dtype}")
        if target.shape != out_shape[:-1]:
            raise ValueError(
                f"class-index target must have shape {out_shape[:-1]} for an output of shape "
                f"{out_shape}, got {tuple(target.shape)}"
            )
        if target.device != x.device:
            raise ValueError(f"target must be on {x.device}, got {target.device}")
        if target.numel() and bool(((target < 0) | (target >= d_out)).any()):
            raise ValueError(
                f"class indices must lie in [0, {d_out}), got values in "
                f"[{int(target.min())}, {int(target.max())}]"
            )
        return x.reshape(-1, d_in), target.reshape(-1)
    check_target(target, x, "x", d_out)
    return x.reshape(-1, d_in), target.reshape(-1, d_out)


def _common_call(
    mlp: MLP, params: list[Tensor], x: Any, target: Any, lr: Any, loss: str, reduction: str
) -> bool:
    """One cheap test that :func:`sgd_step`'s arguments are the usual ones and would pass every
    check of :func:`check_call` and :func:`check_lr` unchanged: the error ``½‖y − t‖²``, a float
    ``lr``, and what :meth:`MLP._plain_call` accepts (a 2-D batch and a target of the network's
    dtype and device, no autocast). Anything else goes through the full checks, which say what
    is wrong. A small step is mostly fixed costs, and the full checks are a tenth of it."""
    return (
        loss == "half_squared_error"
        and (reduction == "mean" or reduction == "sum")
        and type(lr) is float
        and 0.0 < lr <= _largest(params[0].dtype)
        and mlp._plain_call(x, target, params)
    )


def no_autocast(x: Tensor) -> Any:
    """The engine computes in the parameters' dtype: autocast, if on, is switched off inside it."""
    if autocast_dtype(x) is None:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, enabled=False)


def check_lr(lr: Any, dtype: torch.dtype) -> float:
    """``lr`` as a Python float: a real number (``float``, ``int``, a NumPy scalar or a 0-d real
    tensor, as ``torch.optim`` takes), positive, and finite in the parameters' ``dtype`` (a
    larger one would overflow the update ``−lr ∂C/∂w``)."""
    if isinstance(lr, Tensor) and lr.dim() == 0 and not lr.is_complex() and lr.dtype != torch.bool:
        lr = lr.item()
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real):
        raise TypeError(
            f"lr must be a real number (a float, an int, a NumPy scalar or a 0-d tensor), got {_describe(lr)}"
        )
    lr = float(lr)
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be positive and finite, got {lr}")
    if lr > _largest(dtype):
        raise ValueError(
            f"lr={lr:g} overflows the parameters' {dtype}: the update −lr·∂C/∂w needs lr ≤ "
            f"{_largest(dtype):g}, the largest {dtype}"
        )
    return lr


def _describe(value: Any) -> str:
    """A value's type for an error, with a tensor's shape and dtype."""
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
    return type(value).__name__


@functools.cache
def _largest(dtype: torch.dtype) -> float:
    """The largest finite value of a floating ``dtype``."""
    return torch.finfo(dtype).max


def sgd_step(
    mlp: MLP,
    x: Tensor,
    target: Tensor,
    lr: float,
    loss: str = "half_squared_error",
    reduction: str = "mean",
) -> Tensor:
    """One step of the seed's gradient descent on ``mlp``, in place, with no autograd graph.

    Runs FF, BP1, BP2 and BP3 by hand and updates every ``W_n`` and ``b_n`` by ``−lr ∂C/∂W_n``
    (the update is fused into BP3's product: ``W.addmm_(δᵀ, y, alpha=−lr)``). ``δ_n`` is computed
    with ``W_n`` before its update, as the derivation requires. A parameter with
    ``requires_grad=False`` (a frozen layer) is not updated, as ``torch.optim`` skips it; the
    errors still flow through its layer.

    Args:
        mlp: a :class:`manual_bp.MLP` (fused or not: the engine only reads its parameters).
        x: ``(*, D_0)`` inputs of the MLP's dtype and device. The engine computes in that dtype;
            ``torch.autocast``, if enabled, is switched off inside it.
        target: ``(*, D_N)`` for ``'half_squared_error'``; for ``'cross_entropy'`` int64 class
            indices ``(*)`` or class probabilities ``(*, D_N)``.
        lr: the learning rate ``α > 0``: a float, an int, a NumPy scalar or a 0-d tensor, at most
            the parameters' dtype's largest value.
        loss: ``'half_squared_error'`` (the seed's ``½‖y_N − t‖²`` per sample) or
            ``'cross_entropy'`` (the output taken as logits).
        reduction: ``'mean'`` or ``'sum'`` over samples.

    Returns:
        The loss before the update (a detached 0-d tensor; the global loss under
        ``torch.distributed``).

    >>> import torch, manual_bp
    >>> net = manual_bp.MLP([2, 3, 1])
    >>> loss = manual_bp.engine.sgd_step(net, torch.randn(4, 2), torch.rand(4, 1), lr=0.5)
    >>> loss.shape, loss.requires_grad
    (torch.Size([]), False)
    """
    if isinstance(mlp, MLP):
        params = mlp.parameters_flat()
        if _common_call(mlp, params, x, target, lr, loss, reduction) and not is_distributed():
            # the usual call
            return single_step(mlp.layers_of(params), x, target, lr, loss, reduction, mlp.bp2())
    y0, target = check_call(mlp, x, target, loss, reduction)
    lr = check_lr(lr, y0.dtype)
    layers = mlp.layers_of(mlp.parameters_flat())
    with no_autocast(y0):
        if is_distributed():
            with torch.no_grad():
                return distributed_step(layers, y0, target, lr, loss, reduction, mlp.bp2())
        return single_step(layers, y0, target, lr, loss, reduction, mlp.bp2())


def single_step(
    layers: Sequence[Layer],
    y0: Tensor,
    target: Tensor,
    lr: float,
    loss: str,
    reduction: str,
    feedback: Feedback | None = None,
) -> Tensor:
    """:func:`local_step` in inference mode, on checked, flattened arguments; the loss it returns
    is scaled outside inference mode, so the caller gets an ordinary tensor."""
    with no_graph():
        total = local_step(layers, y0, target, lr, loss, reduction, None, feedback)
    return total * (LOSS_FACTOR[loss] * mean_scale(y0.shape[0], reduction))  # type: ignore[operator]


def no_graph() -> torch.inference_mode:
    """The single-process steps run in inference mode: like ``no_grad``, with less bookkeeping for
    the tensors created inside (no version counters or view tracking for them; about 10 % of a
    small step here). The parameters stay ordinary tensors: their in-place updates still bump their
    version counters, so a graph recorded earlier that saved them refuses to run backward. The
    tensors made inside are inference tensors; the callers scale the raw losses outside it, so what
    they return is ordinary, and the cached constants are made outside it."""
    return torch.inference_mode()


def local_step(
    layers: Sequence[Layer],
    y0: Tensor,
    target: Tensor,
    lr: float,
    loss: str,
    reduction: str,
    outputs: list[Tensor] | None,
    feedback: Feedback | None = None,
) -> Tensor | None:
    """One single-process step: FF, then the seed's loop (:func:`~manual_bp.ops.network.backprop`)
    with BP3 fused with the update, ``W_n −= α δ_{n+1}ᵀ y_n`` (``δ_n`` is taken with ``W_n``
    before its update, as the derivation requires). ``feedback``: a feedback rule's BP2 matrices
    (:meth:`manual_bp.MLP.bp2`; taken before any update too), ``None`` for the seed's.

    Returns the raw loss of the batch, as ``loss_and_grad(loss_scale=None)`` (the callers scale
    it). Given ``outputs``, it computes no loss: it appends ``y_N`` (taken before the update and
    never written afterwards) for the epoch to compute the losses of many steps at once, and
    returns ``None``.
    """
    ys, saved = forward_pass(layers, y0)  # FF: y_n; what f′ of x_{n+1} is computed from
    count = y0.shape[0]
    # the gradients stay sums over rows: 'mean' divides the update by M; the callers scale the loss
    if outputs is None:
        total, g = loss_and_grad(ys[-1], target, loss, None, 1.0)
    else:
        total, g = None, grad(ys[-1], target, loss)
        outputs.append(ys[-1])
    rate = lr / count if reduction == "mean" and count else lr
    ones_ = ones(count, y0.dtype, y0.device) if layers[0][1] is not None else None

    def bp3(n: int, delta: Tensor) -> None:  # BP3 + UPD: W_n −= α δ_{n+1}ᵀ y_n; (D_{n+1}, M) @ (M, D_n)
        weight, bias, _ = layers[n]
        delta_t = delta.t()
        if weight.requires_grad:  # a frozen parameter is left as it is, as torch.optim does
            weight.addmm_(delta_t, ys[n], alpha=-rate)
        if bias is not None and bias.requires_grad:
            bias.addmv_(delta_t, ones_, alpha=-rate)  # b_n −= α Σ_rows δ_{n+1}

    backprop(layers, saved, g, bp3, owned=True, feedback=feedback)  # BP1, BP2, and BP3 + UPD per layer
    return total
