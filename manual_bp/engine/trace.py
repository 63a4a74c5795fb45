"""Every quantity of one FF/BP pass, for inspection: ``engine.deltas``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from manual_bp.engine.losses import loss_and_grad, mean_scale
from manual_bp.engine.step import check_call, no_autocast
from manual_bp.mlp import MLP
from manual_bp.ops.network import backprop, feedforward

__all__ = ["Trace", "deltas"]


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
    y0, target = check_call(mlp, x, target, loss, reduction)
    layers = mlp.layers_of(mlp.parameters_flat())
    with torch.no_grad(), no_autocast(y0):
        xs, ys = [y0], [y0]
        for x_n, y_n in feedforward(layers, y0, keep_x=True):  # FF
            xs.append(x_n)  # type: ignore[arg-type]
            ys.append(y_n)
        saved = [
            y if act.from_output else x for (_, _, act), x, y in zip(layers, xs[1:], ys[1:], strict=True)
        ]
        scale = mean_scale(y0.shape[0], reduction)
        total, g = loss_and_grad(ys[-1], target, loss, scale, scale)
        depth = len(layers)
        out: list[Tensor] = [None] * (depth + 1)  # type: ignore[list-item]
        weight_grads: list[Tensor] = [None] * depth  # type: ignore[list-item]
        bias_grads: list[Tensor | None] = [None] * depth

        def bp3(n: int, delta: Tensor) -> None:  # keep δ_{n+1} and BP3's gradients
            out[n + 1] = delta
            weight_grads[n] = delta.t().mm(ys[n])  # ∂C/∂W_n = δ_{n+1}ᵀ y_n
            if layers[n][1] is not None:
                bias_grads[n] = delta.sum(0)  # ∂C/∂b_n = Σ_rows δ_{n+1}

        # ∂C/∂y_0 = δ_1 W_0 (under a feedback rule, δ_1 B_0: what the rule hands down)
        out[0] = backprop(layers, saved, g, bp3, input_grad=True, feedback=mlp.bp2(new_batch=False))
    return Trace(total, xs, ys, out, weight_grads, bias_grads)
