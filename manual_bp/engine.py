r"""The seed's training algorithm with no autograd at all: FF, BP1, BP2, BP3 and the update.

Indexing as in :mod:`manual_bp.mlp`: the input is ``y_0``; ``mlp.layers[n]`` holds ``W_n, b_n``
and computes ``x_{n+1} = y_n W_nᵀ + b_n``, ``y_{n+1} = f(x_{n+1})``, ``n = 0..N−1``. For a batch of
``M`` samples (rows) and the loss ``C = Σ_i c_i`` (``reduction='sum'``) or ``C = (1/M) Σ_i c_i``
(``'mean'``), with ``s`` that factor (1 or ``1/M``):

====  ====================================  ==============================================
step  seed                                  here (rows are samples)
====  ====================================  ==============================================
FF    ``x_{n+1} = w_n y_n``, ``y = f(x)``   ``x = F.linear(y, W, b)``; ``y = f(x)`` in place
BP1   ``δ_N = (y_N − t) f′(x_N)``           ``δ = s (y_N − t) ⊙ f′(x_N)``
BP2   ``δ_n = δ_{n+1} w_n f′(x_n)``         ``δ_n = (δ_{n+1} @ W_n) ⊙ f′(x_n)`` (W_n not yet updated)
BP3   ``∂c/∂w_n = δ_{n+1} y_n``             ``δ_{n+1}ᵀ @ y_n``, ``Σ_rows δ_{n+1}``
UPD   ``Δw_n = −α δ_{n+1} y_n``             ``W_n.addmm_(δ_{n+1}.t(), y_n, alpha=−α)``
====  ====================================  ==============================================

``loss="cross_entropy"``: the network output ``y_N`` is taken as the logits (after the output
activation, exactly as ``cross_entropy(mlp(x), t)`` would see them, so use
``output_activation="identity"`` for the usual softmax classifier); BP1 becomes
``δ_N = s (softmax(y_N) − onehot(t)) ⊙ f′(x_N)`` (class probabilities ``q``: ``softmax(y_N) Σq − q``).

Data parallel: when ``torch.distributed`` is initialised, every process computes the *summed*
gradients ``Σ_i ∂c_i/∂W`` of its shard; one ``all_reduce(SUM)`` of a single flat buffer holding
them, the summed loss and the sample count gives the totals over all shards, which are divided by
the global count for ``'mean'`` (left as sums for ``'sum'``). So every process takes exactly the step
one process takes on the concatenated batch, for shards of any sizes, and returns that global loss.
Every process of the group must call :func:`sgd_step` together (it is a collective).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from manual_bp._activations import OWNED, Activation
from manual_bp._function import (
    autocast_dtype,
    check_floating,
    check_same,
    check_target,
)
from manual_bp.mlp import MLP

__all__ = ["LOSSES", "Trace", "deltas", "sgd_epoch", "sgd_step"]

LOSSES = ("half_squared_error", "cross_entropy")


@dataclass
class Trace:
    """Every quantity of one FF/BP pass, indexed as the seed indexes them.

    ``ys[n]`` (``n = 0..N``) is ``y_n`` (``ys[0]`` the input); ``xs[n]`` is ``x_n`` (``xs[0]`` is
    the input too: no activation is applied to it); ``deltas[n] = ∂C/∂x_n`` (``deltas[0]`` the
    gradient with respect to the input); ``weight_grads[n] = ∂C/∂W_n = δ_{n+1}ᵀ y_n`` and
    ``bias_grads[n] = Σ_rows δ_{n+1}`` belong to ``mlp.layers[n]`` (``None`` without bias).
    All tensors are 2-D ``(M, D_n)`` batches (leading input dims flattened).
    """

    loss: Tensor
    xs: list[Tensor] = field(default_factory=list)
    ys: list[Tensor] = field(default_factory=list)
    deltas: list[Tensor] = field(default_factory=list)
    weight_grads: list[Tensor] = field(default_factory=list)
    bias_grads: list[Tensor | None] = field(default_factory=list)


def _check(mlp: Any, x: Any, target: Any, loss: str, reduction: str) -> tuple[Tensor, Tensor]:
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
    check of :func:`_check` and :func:`_check_lr` unchanged: the error ``½‖y − t‖²``, a float
    ``lr``, and what :meth:`MLP._plain_call` accepts (a 2-D batch and a target of the network's
    dtype and device, no autocast). Anything else goes through the full checks, which say what
    is wrong. A small step is mostly fixed costs, and the full checks are a tenth of it."""
    return (
        loss == "half_squared_error"
        and (reduction == "mean" or reduction == "sum")
        and type(lr) is float
        and 0.0 < lr < math.inf
        and mlp._plain_call(x, target, params)
    )


def _no_autocast(x: Tensor) -> Any:
    """The engine computes in the parameters' dtype: autocast, if on, is switched off inside it."""
    if autocast_dtype(x) is None:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, enabled=False)


def _check_lr(lr: Any) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"lr must be a real number, got {type(lr).__name__}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be positive and finite, got {lr}")
    return float(lr)


def _forward(
    params: list[Tensor], acts: tuple[Activation, ...], y: Tensor, keep_x: bool
) -> tuple[list[Tensor], list[Tensor | None]]:
    """FF. Returns ``ys`` (``y_0..y_N``) and ``xs`` (``xs[0]`` is ``None``; ``xs[n] = x_n`` where
    ``f′`` needs ``x`` or ``keep_x``, else ``None``: the activation was applied over ``x``).
    ``params`` is ``W_0, b_0, W_1, b_1, …`` (no biases if the network has none)."""
    step = len(params) // len(acts)
    ys: list[Tensor] = [y]
    xs: list[Tensor | None] = [None]
    for n, act in enumerate(acts):
        bias = params[step * n + 1] if step == 2 else None
        x = F.linear(y, params[step * n], bias)  # x_{n+1} = y_n W_nᵀ + b_n; (M, D_n) -> (M, D_{n+1})
        if keep_x or not act.from_output:
            y = act.forward(x)
            xs.append(x)
        else:
            y = act.forward_(x)  # y = f(x) over x
            xs.append(None)
        ys.append(y)
    return ys, xs


_LOSS_FACTOR = {"half_squared_error": 0.5, "cross_entropy": 1.0}  # Σ_i c_i = factor · raw sum


def _loss_and_grad(
    y: Tensor, target: Tensor, loss: str, loss_scale: float | None, grad_scale: float
) -> tuple[Tensor, Tensor]:
    """``loss_scale · Σ_i c_i`` (a 0-d tensor) and BP1's first factor ``g = grad_scale · ∂(Σ_i c_i)/∂y_N``.

    ``loss_scale=None`` returns the raw sum instead (``Σ_i ‖y_i − t_i‖²`` or ``Σ_i c_i``), which
    the caller scales by ``_LOSS_FACTOR[loss]`` and its own factor: one op per step less.
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
    g = _grad(y, target, loss)
    if grad_scale != 1.0:
        g.mul_(grad_scale)
    return total, g


def _grad(y: Tensor, target: Tensor, loss: str) -> Tensor:
    """BP1's first factor for the summed loss, ``g = ∂(Σ_i c_i)/∂y_N``, without the loss itself:
    ``y_N − t``, or for cross-entropy ``softmax(y_N) − onehot(t)`` (``p Σq − q`` for class
    probabilities ``q``). A new tensor."""
    if loss == "half_squared_error":
        return y - target
    g = torch.softmax(y, -1)  # p
    if target.is_floating_point():
        return g.mul_(target.sum(-1, keepdim=True)).sub_(target)  # p Σq − q
    minus_ones = _minus_ones(y.shape[0], g.dtype, g.device)
    return g.scatter_add_(-1, target.unsqueeze(-1), minus_ones)  # p − onehot(t)


def _row_losses(y: Tensor, target: Tensor, loss: str) -> Tensor:
    """Each sample's raw loss ``(M,)``: ``‖y_i − t_i‖²`` (``_LOSS_FACTOR`` holds the ½) or ``c_i``."""
    if loss == "half_squared_error":
        d = y - target
        return (d * d).sum(-1)
    log_p = torch.log_softmax(y, -1)
    if target.is_floating_point():
        return -(target * log_p).sum(-1)
    return F.nll_loss(log_p, target, reduction="none")


def _mean_scale(count: int, reduction: str) -> float:
    """The factor of ``reduction`` over ``count`` samples: ``1/M`` for ``'mean'`` (NaN for an empty
    batch, as torch's mean gives), 1 for ``'sum'``."""
    if reduction != "mean":
        return 1.0
    return 1.0 / count if count else math.nan


def _activation_input(act: Activation, x: Tensor | None, y: Tensor) -> Tensor:
    return y if act.from_output else x  # type: ignore[return-value]


@lru_cache(maxsize=16)
def _minus_ones(rows: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A column of −1s: scattered onto ``p`` at the targets it gives ``p − onehot(t)`` (never written).
    An ordinary tensor even when first asked for in inference mode (the cache outlives the step)."""
    with torch.inference_mode(False):
        return torch.full((rows, 1), -1.0, dtype=dtype, device=device)


@lru_cache(maxsize=16)
def _ones(rows: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A column of ones: ``δᵀ 1`` is BP3's bias gradient ``Σ_rows δ`` as one matrix-vector product
    (an ordinary tensor, as :func:`_minus_ones`)."""
    with torch.inference_mode(False):
        return torch.ones(rows, dtype=dtype, device=device)


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
    with ``W_n`` before its update, as the derivation requires.

    Args:
        mlp: a :class:`manual_bp.MLP` (fused or not: the engine only reads its parameters).
        x: ``(*, D_0)`` inputs of the MLP's dtype and device. The engine computes in that dtype;
            ``torch.autocast``, if enabled, is switched off inside it.
        target: ``(*, D_N)`` for ``'half_squared_error'``; for ``'cross_entropy'`` int64 class
            indices ``(*)`` or class probabilities ``(*, D_N)``.
        lr: the learning rate ``α > 0``.
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
        if _common_call(mlp, params, x, target, lr, loss, reduction) and not _distributed():
            return _single_step(params, mlp.activations, x, target, lr, loss, reduction)  # the usual call
    y0, target = _check(mlp, x, target, loss, reduction)
    lr = _check_lr(lr)
    params, acts = mlp.parameters_flat(), mlp.activations
    with _no_autocast(y0):
        if _distributed():
            with torch.no_grad():
                return _distributed_step(params, acts, y0, target, lr, loss, reduction)
        return _single_step(params, acts, y0, target, lr, loss, reduction)


def _single_step(
    params: list[Tensor],
    acts: tuple[Activation, ...],
    y0: Tensor,
    target: Tensor,
    lr: float,
    loss: str,
    reduction: str,
) -> Tensor:
    """:func:`_local_step` in inference mode, on checked, flattened arguments; the loss it returns
    is scaled outside inference mode, so the caller gets an ordinary tensor."""
    with _no_graph():
        total = _local_step(_layers(params, acts), y0, target, lr, loss, reduction, None)
    return total * (_LOSS_FACTOR[loss] * _mean_scale(y0.shape[0], reduction))  # type: ignore[operator]


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
    y0, target = _check(mlp, x, target, loss, reduction)
    lr = _check_lr(lr)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    rows = y0.shape[0]
    if shuffle:
        order = torch.randperm(rows, generator=generator).to(y0.device)
        y0, target = y0[order], target[order]
    params, acts, distributed = mlp.parameters_flat(), mlp.activations, _distributed()
    batches = -(-rows // batch_size)
    if distributed:  # every step is a collective: run as many as the process with the most batches
        most = torch.tensor([batches], device=y0.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        batches = int(most)  # a process out of rows takes part with empty batches
    with _no_autocast(y0):
        with torch.no_grad() if distributed else _no_graph():
            # every batch's views at once (cheaper than slicing twice per step)
            y_batches, t_batches = y0.split(batch_size)[:batches], target.split(batch_size)[:batches]
            if distributed:
                if len(y_batches) < batches:  # out of rows: empty batches from here on
                    y_batches += (y0[rows:],) * (batches - len(y_batches))
                    t_batches += (target[rows:],) * (batches - len(t_batches))
                losses = [
                    _distributed_step(params, acts, y_b, t_b, lr, loss, reduction)
                    for y_b, t_b in zip(y_batches, t_batches, strict=True)
                ]
            else:
                losses = _epoch_losses(params, acts, y_batches, t_batches, target, lr, loss, reduction)
        # from here outside inference mode: the caller gets an ordinary tensor
        if not losses:
            return torch.full((), math.nan, dtype=y0.dtype, device=y0.device)
        if distributed:
            return torch.stack(losses).mean()
        # each chunk's sum of per-batch losses (raw: ½ and the mean over batches applied here)
        total = torch.stack(losses).sum() if len(losses) > 1 else losses[0]
        return (total * (_LOSS_FACTOR[loss] / batches)).to(y0.dtype)


_CHUNK = 1 << 20  # network outputs kept for the epoch's loss before their losses are computed


def _epoch_losses(
    params: list[Tensor],
    acts: tuple[Activation, ...],
    y_batches: tuple[Tensor, ...],
    t_batches: tuple[Tensor, ...],
    target: Tensor,
    lr: float,
    loss: str,
    reduction: str,
) -> list[Tensor]:
    """The single-process steps of :func:`sgd_epoch`; returns the batches' raw losses summed per
    chunk of consecutive batches (each batch's loss averaged over its rows for ``'mean'``), in
    float32 at least.

    A step computes no loss (:func:`_local_step` with ``outputs``): it keeps its ``y_N``, computed before
    its update. Every ``_CHUNK`` output elements, and at the end, one pass over the kept outputs
    gives their per-sample losses: a few ops per chunk instead of two or three per step (7 % of
    the digits epoch of ``scripts/bench.py``, batches of 32). The losses equal those the steps
    would have computed, up to rounding.
    """
    # float32 at least: in float16 the per-batch scales of a long epoch would be subnormal
    acc = torch.promote_types(params[0].dtype, torch.float32)
    sums: list[Tensor] = []
    outputs: list[Tensor] = []
    kept = start = 0  # output elements kept; the first row of the chunk
    layers = _layers(params, acts)
    for i, (y_b, t_b) in enumerate(zip(y_batches, t_batches, strict=True)):
        _local_step(layers, y_b, t_b, lr, loss, reduction, outputs)
        kept += outputs[-1].numel()
        if kept >= _CHUNK or i + 1 == len(y_batches):
            end = start + sum(out.shape[0] for out in outputs)
            y_n = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
            rows = _row_losses(y_n, target[start:end], loss).to(acc)
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


def _no_graph() -> torch.inference_mode:
    """The single-process steps run in inference mode: like ``no_grad``, with less bookkeeping for
    the tensors created inside (no version counters or view tracking for them; about 10 % of a
    small step here). The parameters stay ordinary tensors: their in-place updates still bump their
    version counters, so a graph recorded earlier that saved them refuses to run backward. The
    tensors made inside are inference tensors; the callers scale the raw losses outside it, so what
    they return is ordinary, and the cached constants are made outside it."""
    return torch.inference_mode()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _layers(params: list[Tensor], acts: tuple[Activation, ...]) -> tuple[tuple[Any, ...], ...]:
    """Per layer ``(W_n, b_n or None, f, f′ from y)``: what :func:`_local_step` reads, made once."""
    step = len(params) // len(acts)
    return tuple(
        (params[step * n], params[step * n + 1] if step == 2 else None, act, act.from_output)
        for n, act in enumerate(acts)
    )


def _local_step(
    layers: tuple[tuple[Any, ...], ...],
    y0: Tensor,
    target: Tensor,
    lr: float,
    loss: str,
    reduction: str,
    outputs: list[Tensor] | None,
) -> Tensor | None:
    """One single-process step (``layers`` from :func:`_layers`): FF, BP1, and per layer from the
    top BP2, then BP3 fused with the update, in one function with little bookkeeping between the
    ops (a small step is mostly fixed costs).

    Returns the raw loss of the batch, as ``_loss_and_grad(loss_scale=None)`` (the callers scale
    it). Given ``outputs``, it computes no loss: it appends ``y_N`` (taken before the update and
    never written afterwards) for :func:`_epoch_losses` to compute the losses of many steps at
    once, and returns ``None``.
    """
    # FF: x_{n+1} = y_n W_nᵀ + b_n; y_{n+1} = f(x_{n+1}), over x_{n+1} where f′ needs only y
    ys, saved = [y0], [y0]  # y_n; what f′ of x_n is computed from (y_n or x_n)
    y = y0
    for weight, bias, act, from_y in layers:
        x = F.linear(y, weight, bias)  # (M, D_n) -> (M, D_{n+1})
        y = act.forward_(x) if from_y else act.forward(x)
        ys.append(y)
        saved.append(y if from_y else x)
    count = y0.shape[0]
    # the gradients stay sums over rows: 'mean' divides the update by M; the callers scale the loss
    if outputs is None:
        total, g = _loss_and_grad(y, target, loss, None, 1.0)
    else:
        total, g = None, _grad(y, target, loss)
        outputs.append(y)
    depth = len(layers)
    delta = layers[-1][2].backward(g, saved[depth], OWNED)  # BP1: δ_N = g ⊙ f′(x_N)
    rate = lr / count if reduction == "mean" and count else lr
    ones = None
    for n in range(depth - 1, -1, -1):
        weight, bias = layers[n][0], layers[n][1]
        # BP2 with W_n before its update: δ_n = (δ_{n+1} W_n) ⊙ f′(x_n); (M, D_{n+1}) @ (D_{n+1}, D_n)
        below = layers[n - 1][2].backward(delta.mm(weight), saved[n], OWNED) if n else None
        # BP3 + UPD: W_n −= α δ_{n+1}ᵀ y_n; (D_{n+1}, M) @ (M, D_n)
        delta_t = delta.t()
        weight.addmm_(delta_t, ys[n], alpha=-rate)
        if bias is not None:
            if ones is None:
                ones = _ones(count, y0.dtype, y0.device)
            bias.addmv_(delta_t, ones, alpha=-rate)  # b_n −= α Σ_rows δ_{n+1}
        delta = below  # type: ignore[assignment]
    return total


def _distributed_step(
    params: list[Tensor],
    acts: tuple[Activation, ...],
    y0: Tensor,
    target: Tensor,
    lr: float,
    loss: str,
    reduction: str,
) -> Tensor:
    """One step under ``torch.distributed`` on checked, flattened arguments, under
    ``torch.no_grad()``: the global loss (the single-process step is :func:`_local_step`)."""
    depth = len(acts)
    step = len(params) // depth
    count = y0.shape[0]
    ys, xs = _forward(params, acts, y0, keep_x=False)  # FF
    # the gradients below stay sums over rows, divided by the global M after the all_reduce
    total, g = _loss_and_grad(ys[-1], target, loss, 1.0, 1.0)
    # BP1: δ_N = g ⊙ f′(x_N)
    delta = acts[-1].backward(g, _activation_input(acts[-1], xs[-1], ys[-1]), OWNED)

    # Distributed: BP3 into one flat buffer [∂W_0, ∂b_0, …, Σc, M], one all_reduce, then UPD.
    # float32 at least: a float16 buffer would round the sample count above 2048
    buf_dtype = torch.promote_types(y0.dtype, torch.float32)
    flat = torch.empty(sum(p.numel() for p in params) + 2, dtype=buf_dtype, device=y0.device)
    views, offset = [], 0
    for p in params:
        views.append(flat[offset : offset + p.numel()].view_as(p))
        offset += p.numel()
    flat[-2] = total
    flat[-1] = count
    for n in range(depth - 1, -1, -1):
        weight = params[step * n]
        if buf_dtype == y0.dtype:
            torch.mm(delta.t(), ys[n], out=views[step * n])  # BP3: Σ_i δ_{n+1}ᵀ y_n
            if step == 2:
                torch.sum(delta, 0, out=views[step * n + 1])
        else:
            views[step * n].copy_(delta.t().mm(ys[n]))
            if step == 2:
                views[step * n + 1].copy_(delta.sum(0))
        if n > 0:  # BP2
            delta = acts[n - 1].backward(
                delta.mm(weight), _activation_input(acts[n - 1], xs[n], ys[n]), OWNED
            )
    dist.all_reduce(flat)  # sums over processes
    global_total, global_count = flat[-2], flat[-1]
    factor = lr / global_count if reduction == "mean" else lr
    for p, grad in zip(params, views, strict=True):
        p.sub_((grad * factor).to(p.dtype))  # UPD: Δw = −α ∂C/∂w
    loss_value = global_total / global_count if reduction == "mean" else global_total.clone()
    return loss_value.to(y0.dtype)


def deltas(
    mlp: MLP,
    x: Tensor,
    target: Tensor,
    loss: str = "half_squared_error",
    reduction: str = "mean",
) -> Trace:
    """Every ``y_n``, ``x_n``, ``δ_n`` and parameter gradient of one pass, for inspection; no update.

    The same FF/BP1/BP2/BP3 as :func:`sgd_step` (without the distributed reduction), returned as a
    :class:`Trace`. Arguments as for :func:`sgd_step`.

    >>> import torch, manual_bp
    >>> net = manual_bp.MLP([2, 4, 4, 1])
    >>> trace = manual_bp.engine.deltas(net, torch.randn(8, 2), torch.rand(8, 1))
    >>> [tuple(d.shape) for d in trace.deltas]
    [(8, 2), (8, 4), (8, 4), (8, 1)]
    """
    y0, target = _check(mlp, x, target, loss, reduction)
    with torch.no_grad(), _no_autocast(y0):
        ys, xs_opt = _forward(mlp.parameters_flat(), mlp.activations, y0, keep_x=True)
        xs: list[Tensor] = [y0, *xs_opt[1:]]  # type: ignore[list-item]
        count = y0.shape[0]
        scale = _mean_scale(count, reduction)
        total, g = _loss_and_grad(ys[-1], target, loss, scale, scale)
        acts = mlp.activations
        depth = len(acts)
        saved = [None, *(y if a.from_output else x for a, x, y in zip(acts, xs[1:], ys[1:], strict=True))]
        out: list[Tensor] = [None] * (depth + 1)  # type: ignore[list-item]
        out[depth] = acts[-1].backward(g, saved[depth], OWNED)  # BP1
        weight_grads: list[Tensor] = [None] * depth  # type: ignore[list-item]
        bias_grads: list[Tensor | None] = [None] * depth
        for n in range(depth - 1, -1, -1):
            layer, delta = mlp.layers[n], out[n + 1]
            weight_grads[n] = delta.t().mm(ys[n])  # BP3
            if layer.bias is not None:
                bias_grads[n] = delta.sum(0)
            below = delta.mm(layer.weight)  # BP2 (for n = 0: ∂C/∂y_0, the input gradient)
            out[n] = acts[n - 1].backward(below, saved[n], OWNED) if n > 0 else below
    return Trace(total, xs, ys, out, weight_grads, bias_grads)
