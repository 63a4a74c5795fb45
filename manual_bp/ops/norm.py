r"""Normalisation: batch, instance, layer, group and RMS norm, with their explicit backwards.

Every one normalises ``x̂ = (x − μ)/σ`` over some axes (RMS norm: ``x̂ = x/rms``, no centring) and
scales ``y = γ ⊙ x̂ + β``. With ``δ = ∂c/∂y`` and ``g = δ ⊙ γ``, the whole family shares

* BP2: ``∂c/∂x = (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)) / σ``, the means over the normalised axes (RMS norm
  drops ``mean(g)``; batch norm in eval mode, whose statistics are constants, keeps ``g/σ`` only);
* BP3: ``∂c/∂γ = Σ δ ⊙ x̂`` and ``∂c/∂β = Σ δ`` over every axis but the feature axes.

The forwards call the native kernels (which also give ``μ`` and ``1/σ``, and update batch norm's
running statistics in place exactly as native does); each Function saves ``x``, ``γ``, ``μ`` and
``1/σ``, and its backward forms ``x̂`` once. For double backward (a graph recorded in the backward)
the statistics are recomputed from ``x`` with differentiable ops, since the saved ones are constants.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import make_tensor

from manual_bp._function import ManualFunction, check_floating, in_place_ok
from manual_bp._torch_private import autocast_on
from manual_bp.ops._op import Op, Sample, noncontiguous, tensor
from manual_bp.ops.elementwise import to_float32

__all__ = [
    "NORM_OPS",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormFunction",
    "GroupNorm",
    "GroupNormFunction",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "InstanceNormFunction",
    "LayerNorm",
    "LayerNormFunction",
    "RMSNorm",
    "RMSNormFunction",
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
]

_HALF = (torch.float16, torch.bfloat16)


def _opmath(t: Tensor) -> Tensor:
    """The dtype the backward computes in: float32 for float16/bfloat16 (as native kernels do)."""
    return t.float() if t.dtype in _HALF else t


def _moments(
    x: Tensor, dims: Sequence[int], eps: float, centred: bool = True
) -> tuple[Tensor | None, Tensor]:
    """``μ`` and ``1/σ = 1/√(var + eps)`` over ``dims`` (kept), differentiable in ``x``; without
    ``centred`` (RMS norm) ``None`` and ``1/√(mean(x²) + eps)``."""
    if not centred:
        return None, torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + eps)
    var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
    return mean, torch.rsqrt(var + eps)


def _normalized(x: Tensor, mean: Tensor | None, rstd: Tensor, out: Tensor | None = None) -> Tensor:
    """``x̂ = (x − μ)/σ``, as ``x/σ − μ/σ`` in one pass over ``x`` (``x/rms`` without ``μ``)."""
    return torch.mul(x, rstd, out=out) if mean is None else torch.addcmul(-mean * rstd, x, rstd, out=out)


def _xhat_and_sums(
    x: Tensor,
    mean: Tensor | None,
    rstd: Tensor,
    delta: Tensor,
    sums: Callable[[Tensor], tuple[Tensor | None, ...]],
    owned: bool,
) -> tuple[Tensor, tuple[Tensor | None, ...]]:
    """``x̂`` and ``sums(δ ⊙ x̂)`` (BP3's sums of ``δ ⊙ x̂``, and BP2's ``mean(g ⊙ x̂)``).

    ``owned`` (no graph recorded): both in one full-size tensor, ``δ ⊙ x̂`` first, then ``x̂``
    written over it (which BP2 then overwrites): a fresh tensor costs several in-place passes here;
    forward + backward against native went from 2.0-2.6x to 1.6-1.7x for batch norm at 8x64x56x56
    and 32x64x56x56 (alternating runs).
    """
    xhat = _normalized(x, mean, rstd)
    if not owned:
        return xhat, sums(delta * xhat)
    reduced = sums(xhat.mul_(delta))
    return _normalized(x, mean, rstd, out=xhat), reduced


def _bp2(
    delta: Tensor,
    gamma: Tensor | None,
    xhat: Tensor,
    g_mean: Tensor | None,
    gxhat_mean: Tensor,
    rstd: Tensor | None,
    owned: bool,
) -> Tensor:
    """BP2 of every normalisation: ``∂c/∂x = (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂)) / σ``, ``g = δ ⊙ γ``.

    ``g`` is never formed: ``δ ⊙ γ`` is added in one op (``γ`` ``None``: ``g = δ``). ``g_mean`` and
    ``gxhat_mean`` are ``mean(g)`` and ``mean(g ⊙ x̂)`` in the statistics' shape (``g_mean`` is
    ``None`` for RMS norm, which does not centre). ``rstd`` is ``1/σ``, or ``None`` where the
    caller folded it into ``γ`` and the means (one ``γ/σ`` per channel for batch and instance
    norm). ``owned``: no graph is recorded and ``x̂`` is the caller's temporary, so the result is
    written over it: a full-size tensor fewer to allocate, which is most of the cost on CPU at
    ResNet/ViT sizes (a fresh tensor's first touch costs several in-place passes).
    """
    if owned:
        grad = xhat.mul_(-gxhat_mean)  # −x̂ ⊙ mean(g ⊙ x̂)
        if g_mean is not None:
            grad.sub_(g_mean)  # − mean(g)
        grad = grad.addcmul_(delta, gamma) if gamma is not None else grad.add_(delta)  # + g
        return grad.mul_(rstd) if rstd is not None else grad  # / σ
    if g_mean is None:
        shift = xhat * -gxhat_mean
    else:
        shift = torch.addcmul(-g_mean, xhat, -gxhat_mean)
    grad = torch.addcmul(shift, delta, gamma) if gamma is not None else shift + delta
    return grad * rstd if rstd is not None else grad


def _cast_grads(
    grads: tuple[Tensor | None, ...], refs: tuple[Tensor | None, ...]
) -> tuple[Tensor | None, ...]:
    """Each gradient in its input's dtype (the backward computes half inputs in float32)."""
    return tuple(
        [
            g.to(r.dtype) if g is not None and r is not None and g.dtype != r.dtype else g
            for g, r in zip(grads, refs, strict=True)
        ]
    )


# --- batch norm and instance norm: one (μ, σ) per channel (and per sample for instance norm) ----


def _channel_backward(
    ctx: Any, grad_output: Tensor, needs: tuple[bool, bool, bool], per_sample: bool
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Batch norm's and instance norm's backward over the ``(N, C, S)`` view of the input.

    ``γ`` is one number per channel, constant over the normalised axes, so ``mean(g) = γ Σδ / M``
    and ``mean(g ⊙ x̂) = γ Σ δ ⊙ x̂ / M``: BP3's sums (per sample for instance norm) give BP2's means.
    """
    input, weight, mean, rstd = ctx.saved_tensors
    n, c = input.shape[:2]
    x = _opmath(input).reshape(n, c, -1)  # (N, C, *) -> (N, C, S)
    delta = _opmath(grad_output).reshape(n, c, -1)
    # the axes of the statistics: (S,) per sample and channel, (N, S) per channel; none in eval mode
    dims = (2,) if per_sample and ctx.batch_stats else (0, 2)
    stats_shape = (n, c, 1) if per_sample and ctx.batch_stats else (1, c, 1)
    if ctx.batch_stats and torch.is_grad_enabled():  # double backward: μ, 1/σ as functions of x
        mean, rstd = _moments(x, dims, ctx.eps)
    else:
        mean, rstd = _opmath(mean).reshape(stats_shape), _opmath(rstd).reshape(stats_shape)
    batch_bp2 = needs[0] and ctx.batch_stats  # BP2 with the batch terms, which need BP3's sums
    owned = in_place_ok(grad_output)
    grad_input = grad_weight = grad_bias = None
    if needs[1] or batch_bp2:

        def sums(delta_xhat: Tensor) -> tuple[Tensor]:
            return (delta_xhat.sum(dims, keepdim=True),)  # Σ δ ⊙ x̂; (N, C, S) -> stats shape

        xhat, (delta_xhat_sum,) = _xhat_and_sums(x, mean, rstd, delta, sums, owned)
        if needs[1]:
            grad_weight = delta_xhat_sum.sum(0).reshape(c)  # BP3: ∂c/∂γ = Σ δ ⊙ x̂; -> (C,)
    if needs[2] or batch_bp2:
        delta_sum = delta.sum(dims, keepdim=True)  # Σδ; (N, C, S) -> stats shape
        if needs[2]:
            grad_bias = delta_sum.sum(0).reshape(c)  # BP3: ∂c/∂β = Σ δ; -> (C,)
    if needs[0]:
        k = rstd if weight is None else _opmath(weight).reshape(1, c, 1) * rstd  # γ/σ per channel
        if batch_bp2:
            count = x.numel() // delta_sum.numel()  # M, the values behind one statistic
            # BP2 with g = δ ⊙ γ: mean(g)/σ = (γ/σ) Σδ/M, mean(g ⊙ x̂)/σ = (γ/σ) Σ δ ⊙ x̂ / M
            grad_input = _bp2(delta, k, xhat, k * delta_sum / count, k * delta_xhat_sum / count, None, owned)
        else:
            grad_input = delta * k  # BP2 (eval): g/σ, the running statistics are constants
        grad_input = grad_input.reshape(input.shape)  # (N, C, S) -> (N, C, *)
    return _cast_grads((grad_input, grad_weight, grad_bias), (input, weight, weight))


class BatchNormFunction(ManualFunction):
    r"""Batch norm over ``(N, *)`` per channel of ``x (N, C, *)``; in eval mode with the running
    statistics. Training updates ``running_mean``/``running_var`` in place, as native does.

    Returns ``(y, μ, 1/σ)``, the statistics ``(C,)`` not differentiable (:func:`batch_norm` gives ``y``).

    .. math::
        \frac{\partial c}{\partial x} = \frac{g - \operatorname{mean}(g)
            - \hat x \odot \operatorname{mean}(g \odot \hat x)}{\sigma}, \quad
        \frac{\partial c}{\partial \gamma} = \textstyle\sum \delta \odot \hat x, \quad
        \frac{\partial c}{\partial \beta} = \textstyle\sum \delta
    """

    @staticmethod
    def forward(
        input: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        training: bool,
        momentum: float,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        # FF: y = γ ⊙ (x − μ)/σ + β; in training μ, σ² of the batch, and the running stats updated
        output, mean, rstd = torch.native_batch_norm(
            input, weight, bias, running_mean, running_var, training, momentum, eps
        )
        if not training:  # the running statistics (the native kernel's 1/√(var + eps))
            mean, rstd = running_mean.clone(), torch.rsqrt(running_var + eps)
        return output, mean, rstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
        input, weight, _, _, _, training, _, eps = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(input, weight, mean, rstd)
        ctx.batch_stats, ctx.eps = training, eps

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _mean: Any, _rstd: Any) -> tuple[Tensor | None, ...]:
        needs = ctx.needs_input_grad
        grads = _channel_backward(ctx, grad_output, (needs[0], needs[1], needs[2]), per_sample=False)
        return (*grads, None, None, None, None, None)


class InstanceNormFunction(ManualFunction):
    r"""Instance norm: each sample's channel of ``x (N, C, *)`` over its own ``(*)`` (or with the
    running statistics when ``use_input_stats`` is off). Updates the running statistics with the
    batch's average of the per-instance ones, in place, as native does.

    Returns ``(y, μ, 1/σ)``, the statistics ``(N·C,)`` (``(C,)`` from the running ones) not
    differentiable; BP2 and BP3 as :class:`BatchNormFunction`'s, the means per instance.
    """

    @staticmethod
    def forward(
        input: Tensor,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        weight: Tensor | None,
        bias: Tensor | None,
        use_input_stats: bool,
        momentum: float,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        # FF as native computes it: batch norm of the (1, N·C, *) view, parameters repeated per sample
        n, c = input.shape[:2]
        rm, rv, w, b = [
            t.repeat(n) if t is not None else None for t in (running_mean, running_var, weight, bias)
        ]
        output, mean, rstd = torch.native_batch_norm(
            input.reshape(1, n * c, *input.shape[2:]), w, b, rm, rv, use_input_stats, momentum, eps
        )
        if running_mean is not None:  # the running statistics: the average over the batch
            running_mean.copy_(rm.view(n, c).mean(0))
            running_var.copy_(rv.view(n, c).mean(0))
        if not use_input_stats:
            mean, rstd = running_mean.clone(), torch.rsqrt(running_var + eps)
        return output.view(input.shape), mean, rstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
        input, _, _, weight, _, use_input_stats, _, eps = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(input, weight, mean, rstd)
        ctx.batch_stats, ctx.eps = use_input_stats, eps

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _mean: Any, _rstd: Any) -> tuple[Tensor | None, ...]:
        needs = ctx.needs_input_grad
        grad_input, grad_weight, grad_bias = _channel_backward(
            ctx, grad_output, (needs[0], needs[3], needs[4]), per_sample=True
        )
        return grad_input, None, None, grad_weight, grad_bias, None, None, None


# --- layer, group and RMS norm: γ varies over the normalised axes --------------------------------


def _trailing_backward(
    ctx: Any,
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor | None,
    mean: Tensor | None,
    rstd: Tensor,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Layer norm's and RMS norm's (``mean`` ``None``: no centring) backward over the ``(R, D)``
    view of the input, the ``D`` normalised values of each of ``R`` rows.

    ``g = δ ⊙ γ`` with ``γ`` along the rows, so ``mean(g) = δ γ / D`` and ``mean(g ⊙ x̂) = (δ ⊙ x̂) γ / D``
    are matrix-vector products, the second reusing BP3's ``δ ⊙ x̂``.
    """
    centred = mean is not None
    d = math.prod(input.shape[ctx.lead :])
    x = _opmath(input).reshape(-1, d)  # (*, *normalized_shape) -> (R, D)
    delta = _opmath(grad_output).reshape(-1, d)
    if torch.is_grad_enabled():  # double backward: μ, 1/σ as functions of x
        mean, rstd = _moments(x, (1,), ctx.eps, centred)
    else:
        mean = _opmath(mean).reshape(-1, 1) if mean is not None else None
        rstd = _opmath(rstd).reshape(-1, 1)
    w = _opmath(weight).reshape(d) if weight is not None else None

    def sums(delta_xhat: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Σ_rows δ ⊙ x̂ (BP3) and mean(g ⊙ x̂) = (δ ⊙ x̂) γ / D per row (BP2); (R, D) -> (D,), (R, 1)"""
        column_sum = delta_xhat.sum(0) if needs[1] else None
        if not needs[0]:
            return column_sum, None
        row_mean = delta_xhat.mean(1, keepdim=True) if w is None else (delta_xhat @ w).unsqueeze(1) / d
        return column_sum, row_mean

    owned = in_place_ok(grad_output)
    grad_input = grad_weight = grad_bias = None
    xhat, (delta_xhat_sum, gxhat_mean) = _xhat_and_sums(x, mean, rstd, delta, sums, owned)
    if needs[1]:
        grad_weight = delta_xhat_sum.reshape(weight.shape)  # BP3: ∂c/∂γ = Σ δ ⊙ x̂; (D,) -> γ's shape
    if needs[2]:
        grad_bias = delta.sum(0).reshape(weight.shape)  # BP3: ∂c/∂β = Σ δ; (R, D) -> β's shape
    if needs[0]:
        g_mean = None
        if centred:  # mean(g) = δ γ / D; (R, D) @ (D,) -> (R, 1)
            g_mean = delta.mean(1, keepdim=True) if w is None else (delta @ w).unsqueeze(1) / d
        grad_input = _bp2(delta, w, xhat, g_mean, gxhat_mean, rstd, owned)  # BP2
        grad_input = grad_input.reshape(input.shape)  # (R, D) -> (*, *normalized_shape)
    return _cast_grads((grad_input, grad_weight, grad_bias), (input, weight, weight))  # type: ignore[return-value]


class LayerNormFunction(ManualFunction):
    r"""Layer norm of ``x (*, *normalized_shape)`` over its trailing ``normalized_shape``.

    Returns ``(y, μ, 1/σ)``, the statistics ``(*, 1, …)`` not differentiable.

    .. math::
        \frac{\partial c}{\partial x} = \frac{g - \operatorname{mean}(g)
            - \hat x \odot \operatorname{mean}(g \odot \hat x)}{\sigma},\ g = \delta \odot \gamma, \quad
        \frac{\partial c}{\partial \gamma} = \textstyle\sum \delta \odot \hat x, \quad
        \frac{\partial c}{\partial \beta} = \textstyle\sum \delta
    """

    @staticmethod
    def forward(
        input: Tensor,
        normalized_shape: tuple[int, ...],
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        return torch.native_layer_norm(input, normalized_shape, weight, bias, eps)  # FF: γ ⊙ x̂ + β

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
        input, normalized_shape, weight, _, eps = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(input, weight, mean, rstd)
        ctx.lead, ctx.eps = input.dim() - len(normalized_shape), eps

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _mean: Any, _rstd: Any) -> tuple[Tensor | None, ...]:
        input, weight, mean, rstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grads = _trailing_backward(
            ctx, grad_output, input, weight, mean, rstd, (needs[0], needs[2], needs[3])
        )
        return grads[0], None, grads[1], grads[2], None


def _per_channel(stat: Tensor, channels: int) -> Tensor:
    """A statistic per sample and group, repeated for each channel of the group; -> (N, C, 1)."""
    grouped = stat.reshape(stat.shape[0], -1, 1)  # (N, G, 1)
    return grouped.repeat_interleave(channels // grouped.shape[1], dim=1)


def _group_mean(per_channel_sum: Tensor, gamma: Tensor | None, groups: int, spatial: int) -> Tensor:
    """``mean(γ ⊙ t)`` over each group's channels and ``(*)``, from ``Σ_S t`` ``(N, C, 1)``; -> (N, C, 1)."""
    weighted = per_channel_sum * gamma if gamma is not None else per_channel_sum
    n, c = weighted.shape[:2]
    group_mean = weighted.reshape(n, groups, -1).sum(2) / (c // groups * spatial)  # (N, G)
    return _per_channel(group_mean, c)


class GroupNormFunction(ManualFunction):
    r"""Group norm of ``x (N, C, *)``: the ``C`` channels in ``G`` groups, each sample's group over
    its channels and ``(*)``; ``γ``, ``β`` per channel.

    Returns ``(y, μ, 1/σ)``, the statistics ``(N, G)`` not differentiable. BP2 and BP3 as
    :class:`LayerNormFunction`'s over the ``(N, G, C/G·S)`` view.
    """

    @staticmethod
    def forward(
        input: Tensor, num_groups: int, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> tuple[Tensor, Tensor, Tensor]:
        n, c = input.shape[:2]
        return torch.native_group_norm(  # FF: γ ⊙ x̂ + β
            input.contiguous(), weight, bias, n, c, math.prod(input.shape[2:]), num_groups, eps
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
        input, num_groups, weight, _, eps = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.save_for_backward(input, weight, mean, rstd)
        ctx.groups, ctx.eps = num_groups, eps

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _mean: Any, _rstd: Any) -> tuple[Tensor | None, ...]:
        input, weight, mean, rstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        n, c, groups = input.shape[0], input.shape[1], ctx.groups
        x = _opmath(input).reshape(n, c, -1)  # (N, C, *) -> (N, C, S)
        delta = _opmath(grad_output).reshape(n, c, -1)
        if torch.is_grad_enabled():  # double backward: μ, 1/σ as functions of x
            mean, rstd = _moments(x.reshape(n, groups, -1), (2,), ctx.eps)  # over (N, G, C/G·S)
        mean, rstd = (_per_channel(_opmath(t), c) for t in (mean, rstd))  # (N, G) -> (N, C, 1)
        gamma = _opmath(weight).reshape(1, c, 1) if weight is not None else None

        def sums(delta_xhat: Tensor) -> tuple[Tensor | None, Tensor | None]:
            """Σ_{N,S} δ ⊙ x̂ (BP3) and mean(g ⊙ x̂) per group (BP2); (N, C, S) -> (C,), (N, C, 1)"""
            per_channel = delta_xhat.sum(2, keepdim=True)  # (N, C, 1)
            return per_channel.sum(0).reshape(c), _group_mean(per_channel, gamma, groups, x.shape[2])

        owned = in_place_ok(grad_output)
        grad_input = grad_weight = grad_bias = None
        xhat, (delta_xhat_sum, gxhat_mean) = _xhat_and_sums(x, mean, rstd, delta, sums, owned)
        if needs[2]:
            grad_weight = delta_xhat_sum  # BP3: ∂c/∂γ = Σ δ ⊙ x̂ over (N, S)
        if needs[3]:
            grad_bias = delta.sum((0, 2))  # BP3: ∂c/∂β = Σ δ; (N, C, S) -> (C,)
        if needs[0]:
            g_mean = _group_mean(delta.sum(2, keepdim=True), gamma, groups, x.shape[2])  # mean(g)
            grad_input = _bp2(delta, gamma, xhat, g_mean, gxhat_mean, rstd, owned)  # BP2
            grad_input = grad_input.reshape(input.shape)  # (N, C, S) -> (N, C, *)
        grad_input, grad_weight, grad_bias = _cast_grads(
            (grad_input, grad_weight, grad_bias), (input, weight, weight)
        )
        return grad_input, None, grad_weight, grad_bias, None


class RMSNormFunction(ManualFunction):
    r"""RMS norm of ``x (*, *normalized_shape)``: ``y = γ ⊙ x / rms(x)``, ``rms = √(mean(x²) + eps)``.

    Returns ``(y, 1/rms)``, the statistic ``(*, 1, …)`` not differentiable.

    .. math::
        \frac{\partial c}{\partial x}
            = \frac{g - \hat x \odot \operatorname{mean}(g \odot \hat x)}{\mathrm{rms}},
        \ g = \delta \odot \gamma, \quad
        \frac{\partial c}{\partial \gamma} = \textstyle\sum \delta \odot \hat x
    """

    @staticmethod
    def forward(
        input: Tensor, normalized_shape: tuple[int, ...], weight: Tensor | None, eps: float
    ) -> tuple[Tensor, Tensor]:
        x = _opmath(input)
        _, rstd = _moments(x, tuple(range(x.dim() - len(normalized_shape), x.dim())), eps, centred=False)
        output = x * rstd  # FF: x̂ = x/rms
        if weight is not None:
            output = output * weight  # γ ⊙ x̂
        return output.to(input.dtype), rstd

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        input, normalized_shape, weight, eps = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(input, weight, output[1])
        ctx.lead, ctx.eps = input.dim() - len(normalized_shape), eps

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _rstd: Any) -> tuple[Tensor | None, ...]:
        input, weight, rstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grads = _trailing_backward(ctx, grad_output, input, weight, None, rstd, (needs[0], needs[2], False))
        return grads[0], None, grads[1], None


# --- argument checks shared by the family ---------------------------------------------------------


def _check_input(op: str, input: Any, min_dim: int, expected: str) -> None:
    check_floating("input", input)
    if input.dim() < min_dim:
        raise ValueError(f"{op} expected input of shape {expected}, got shape {tuple(input.shape)}")


def _check_param(name: str, t: Tensor | None, input: Tensor, shape: tuple[int, ...], what: str) -> None:
    """``t`` is ``None`` or a floating tensor of ``shape`` on ``input``'s device, of its dtype (or
    float32 for a float16/bfloat16 input, the mixed precision native accepts)."""
    if t is None:
        return
    check_floating(name, t)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape} ({what}), got shape {tuple(t.shape)}")
    if t.device != input.device:
        raise ValueError(
            f"{name} and input must be on the same device, "
            f"got {name} on {t.device} and input on {input.device}"
        )
    if t.dtype != input.dtype and not (input.dtype in _HALF and t.dtype == torch.float32):
        raise TypeError(
            f"{name} must have the input's dtype {input.dtype} (or float32 for a float16/bfloat16 input), "
            f"got {t.dtype}"
        )


def _check_momentum(momentum: Any) -> None:
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool):  # None included, as torch
        raise TypeError(
            f"momentum must be a float, got {type(momentum).__name__} "
            "(the modules turn momentum=None into the cumulative average's factor)"
        )


def _check_eps(eps: Any) -> None:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or eps < 0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch norm of ``input (N, C, *)`` per channel, with the explicit backward of
    :class:`BatchNormFunction` (``torch.nn.functional.batch_norm``'s semantics).

    ``training=True`` normalises with the batch's statistics over ``(N, *)`` and, where given,
    updates ``running_mean ← (1 − momentum)·running_mean + momentum·μ`` and ``running_var`` likewise
    with the unbiased batch variance, in place; ``training=False`` normalises with the running
    statistics. ``weight``/``bias`` ``(C,)``. A float16/bfloat16 input may come with float32
    parameters and statistics (output in the input's dtype); autocast leaves batch norm alone on CPU.
    """
    _check_input("batch_norm", input, 2, "(N, C, *)")
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        _check_param(name, t, input, (c,), f"one per channel of the input's {c}")
    _check_param("weight", weight, input, (c,), f"one per channel of the input's {c}")
    _check_param("bias", bias, input, (c,), f"one per channel of the input's {c}")
    _check_eps(eps)
    _check_momentum(momentum)
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm takes running_mean and running_var together, got only one of them")
    if training:
        if math.prod(input.shape) // c == 1:  # torch's own message
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {input.size()}"
            )
    elif running_mean is None:
        raise ValueError(
            "batch_norm with training=False normalises with running_mean and running_var, got None"
        )
    return BatchNormFunction.apply(
        input, weight, bias, running_mean, running_var, bool(training), float(momentum), float(eps)
    )[0]


def _float32_under_autocast(input: Tensor) -> bool:
    """Whether autocast runs layer, group and RMS norm in float32 for ``input``: it does on CUDA
    (and XPU, MPS, ...), where they are float32 ops; CPU autocast leaves every norm alone."""
    if not autocast_on():
        return False
    device_type = input.device.type
    return (
        device_type != "cpu"
        and torch.amp.is_autocast_available(device_type)
        and torch.is_autocast_enabled(device_type)
    )


def _autocast_float32(*tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    return tuple(to_float32(t) if t is not None else None for t in tensors)


def _shape_tuple(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(normalized_shape, int) and not isinstance(normalized_shape, bool):
        return (normalized_shape,)
    try:
        shape = tuple(int(s) for s in normalized_shape)  # type: ignore[union-attr]
    except TypeError:
        raise TypeError(
            f"normalized_shape must be an int or a sequence of ints, got {type(normalized_shape).__name__}"
        ) from None
    if not shape:
        raise ValueError("normalized_shape must name at least one dimension, got ()")
    return shape


def _check_trailing(op: str, input: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(input.shape[input.dim() - len(shape) :]) != shape or input.dim() < len(shape):
        raise ValueError(
            f"{op}: given normalized_shape={list(shape)}, expected input with shape "
            f"[*, {', '.join(map(str, shape))}], but got input of size {list(input.shape)}"
        )


def layer_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Layer norm over the trailing ``normalized_shape`` of ``input``, with the explicit backward of
    :class:`LayerNormFunction` (``torch.nn.functional.layer_norm``'s semantics).

    Shape: ``input (*, *normalized_shape)``, ``weight``/``bias`` ``normalized_shape``. A
    float16/bfloat16 input may come with float32 parameters (output in the input's dtype). Autocast
    runs it in float32 on CUDA, as native does, and leaves it alone on CPU.
    """
    check_floating("input", input)
    shape = _shape_tuple(normalized_shape)
    _check_trailing("layer_norm", input, shape)
    _check_param("weight", weight, input, shape, "normalized_shape")
    _check_param("bias", bias, input, shape, "normalized_shape")
    _check_eps(eps)
    if _float32_under_autocast(input):
        input, weight, bias = _autocast_float32(input, weight, bias)  # type: ignore[assignment]
    return LayerNormFunction.apply(input, shape, weight, bias, float(eps))[0]


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """Group norm of ``input (N, C, *)``: ``C`` channels in ``num_groups`` groups, each normalised
    per sample over its channels and ``(*)``, with the explicit backward of :class:`GroupNormFunction`
    (``torch.nn.functional.group_norm``'s semantics). ``weight``/``bias`` ``(C,)``; autocast as
    :func:`layer_norm`.
    """
    _check_input("group_norm", input, 2, "(N, C, *)")
    c = input.shape[1]
    if not isinstance(num_groups, int) or isinstance(num_groups, bool) or num_groups <= 0:
        raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
    if c % num_groups:
        raise ValueError(
            "Expected number of channels in input to be divisible by num_groups, "
            f"but got input of shape {list(input.shape)} and num_groups={num_groups}"
        )
    _check_param("weight", weight, input, (c,), f"one per channel of the input's {c}")
    _check_param("bias", bias, input, (c,), f"one per channel of the input's {c}")
    _check_eps(eps)
    if input.numel() and input.numel() // (input.shape[0] * num_groups) == 1 and input.shape[0] == 1:
        raise ValueError(  # torch's check: one value per group
            f"Expected more than 1 value per channel when training, got input size "
            f"{[c // num_groups, num_groups, *input.shape[2:]]}"
        )
    if _float32_under_autocast(input):
        input, weight, bias = _autocast_float32(input, weight, bias)  # type: ignore[assignment]
    return GroupNormFunction.apply(input, num_groups, weight, bias, float(eps))[0]


def rms_norm(
    input: Tensor,
    normalized_shape: int | Sequence[int],
    weight: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    """RMS norm over the trailing ``normalized_shape`` of ``input``, with the explicit backward of
    :class:`RMSNormFunction` (``torch.nn.functional.rms_norm``'s semantics).

    ``eps=None`` takes the machine epsilon of the dtype it computes in, as native does: the input's,
    or float32's for a float16/bfloat16 input (computed in float32). Autocast as :func:`layer_norm`.
    """
    check_floating("input", input)
    shape = _shape_tuple(normalized_shape)
    _check_trailing("rms_norm", input, shape)
    _check_param("weight", weight, input, shape, "normalized_shape")
    if eps is None:
        eps = torch.finfo(torch.float32 if input.dtype in _HALF else input.dtype).eps
    _check_eps(eps)
    if _float32_under_autocast(input):
        input, weight = _autocast_float32(input, weight)  # type: ignore[assignment]
    return RMSNormFunction.apply(input, shape, weight, float(eps))[0]


def instance_norm(
    input: Tensor,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    use_input_stats: bool = True,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Instance norm of ``input (N, C, *)``: each sample's channel over ``(*)``, with the explicit
    backward of :class:`InstanceNormFunction` (``torch.nn.functional.instance_norm``'s semantics).

    With ``use_input_stats`` (the default) the running statistics, where given, are updated in place
    with the batch's average of the per-instance ones; without it they normalise. ``weight``/``bias``
    ``(C,)``. The modules (``InstanceNorm1d`` ...) also take an unbatched ``(C, *)`` input.
    """
    _check_input("instance_norm", input, 2, "(N, C, *)")
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        _check_param(name, t, input, (c,), f"one per channel of the input's {c}")
    _check_param("weight", weight, input, (c,), f"one per channel of the input's {c}")
    _check_param("bias", bias, input, (c,), f"one per channel of the input's {c}")
    _check_eps(eps)
    _check_momentum(momentum)
    if (running_mean is None) != (running_var is None):
        raise ValueError("instance_norm takes running_mean and running_var together, got only one of them")
    if use_input_stats:
        if math.prod(input.shape[2:]) == 1:  # torch's own message
            raise ValueError(
                f"Expected more than 1 spatial element when training, got input size {input.size()}"
            )
    elif running_mean is None:
        raise ValueError(
            "instance_norm with use_input_stats=False normalises with running_mean and running_var, got None"
        )
    return InstanceNormFunction.apply(
        input, running_mean, running_var, weight, bias, bool(use_input_stats), float(momentum), float(eps)
    )[0]


# --- the drop-in modules ---------------------------------------------------------------------------


def _batch_norm_forward(self: nn.modules.batchnorm._BatchNorm, input: Tensor) -> Tensor:
    """``torch.nn``'s ``_BatchNorm.forward``, calling :func:`batch_norm`: the momentum factor (the
    cumulative average ``1/num_batches_tracked`` for ``momentum=None``), ``num_batches_tracked``
    and which statistics normalise, exactly as native decides them."""
    self._check_input_dim(input)
    factor = 0.0 if self.momentum is None else self.momentum
    if self.training and self.track_running_stats and self.num_batches_tracked is not None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
    use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
    tracked = not self.training or self.track_running_stats  # buffers passed only to be used or updated
    return batch_norm(
        input,
        self.running_mean if tracked else None,
        self.running_var if tracked else None,
        self.weight,
        self.bias,
        use_batch_stats,
        factor,
        self.eps,
    )


class BatchNorm1d(nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` (input ``(N, C)`` or ``(N, C, L)``) with the explicit backward of
    :func:`manual_bp.functional.batch_norm`; same parameters, buffers and running-statistics updates.

    >>> import torch, manual_bp
    >>> manual_bp.BatchNorm1d(3)(torch.randn(4, 3)).grad_fn.name()
    'BatchNormFunctionBackward'
    """

    __module__ = "manual_bp.modules"  # its public home (the drop-in layers)
    forward = _batch_norm_forward


class BatchNorm2d(nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` (input ``(N, C, H, W)``) with the explicit backward of
    :func:`manual_bp.functional.batch_norm`; same parameters, buffers and running-statistics updates.

    >>> import torch, manual_bp
    >>> manual_bp.BatchNorm2d(3)(torch.randn(2, 3, 4, 4)).grad_fn.name()
    'BatchNormFunctionBackward'
    """

    __module__ = "manual_bp.modules"
    forward = _batch_norm_forward


class BatchNorm3d(nn.BatchNorm3d):
    """``torch.nn.BatchNorm3d`` (input ``(N, C, D, H, W)``) with the explicit backward of
    :func:`manual_bp.functional.batch_norm`; same parameters, buffers and running-statistics updates.

    >>> import torch, manual_bp
    >>> manual_bp.BatchNorm3d(3)(torch.randn(2, 3, 2, 2, 2)).grad_fn.name()
    'BatchNormFunctionBackward'
    """

    __module__ = "manual_bp.modules"
    forward = _batch_norm_forward


def _apply_instance_norm(self: nn.modules.instancenorm._InstanceNorm, input: Tensor) -> Tensor:
    """``torch.nn``'s ``_InstanceNorm._apply_instance_norm`` (what its ``forward`` calls after
    checking the input and adding the batch dim of an unbatched one), calling :func:`instance_norm`."""
    return instance_norm(
        input,
        self.running_mean,
        self.running_var,
        self.weight,
        self.bias,
        self.training or not self.track_running_stats,
        self.momentum if self.momentum is not None else 0.0,
        self.eps,
    )


class InstanceNorm1d(nn.InstanceNorm1d):
    """``torch.nn.InstanceNorm1d`` (input ``(N, C, L)`` or unbatched ``(C, L)``) with the explicit
    backward of :func:`manual_bp.functional.instance_norm`.

    >>> import torch, manual_bp
    >>> manual_bp.InstanceNorm1d(3)(torch.randn(2, 3, 5, requires_grad=True)).grad_fn.name()
    'InstanceNormFunctionBackward'
    """

    __module__ = "manual_bp.modules"
    _apply_instance_norm = _apply_instance_norm


class InstanceNorm2d(nn.InstanceNorm2d):
    """``torch.nn.InstanceNorm2d`` (input ``(N, C, H, W)`` or unbatched ``(C, H, W)``) with the
    explicit backward of :func:`manual_bp.functional.instance_norm`.

    >>> import torch, manual_bp
    >>> manual_bp.InstanceNorm2d(3, affine=True)(torch.randn(2, 3, 4, 4)).grad_fn.name()
    'InstanceNormFunctionBackward'
    """

    __module__ = "manual_bp.modules"
    _apply_instance_norm = _apply_instance_norm


class InstanceNorm3d(nn.InstanceNorm3d):
    """``torch.nn.InstanceNorm3d`` (input ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)``) with the
    explicit backward of :func:`manual_bp.functional.instance_norm`.

    >>> import torch, manual_bp
    >>> manual_bp.InstanceNorm3d(3, affine=True)(torch.randn(2, 3, 2, 2, 2)).grad_fn.name()
    'InstanceNormFunctionBackward'
    """

    __module__ = "manual_bp.modules"
    _apply_instance_norm = _apply_instance_norm


class LayerNorm(nn.LayerNorm):
    """``torch.nn.LayerNorm`` with the explicit backward of :func:`manual_bp.functional.layer_norm`.

    >>> import torch, manual_bp
    >>> manual_bp.LayerNorm(4)(torch.randn(2, 4)).grad_fn.name()
    'LayerNormFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class GroupNorm(nn.GroupNorm):
    """``torch.nn.GroupNorm`` with the explicit backward of :func:`manual_bp.functional.group_norm`.

    >>> import torch, manual_bp
    >>> manual_bp.GroupNorm(2, 4)(torch.randn(3, 4, 5)).grad_fn.name()
    'GroupNormFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class RMSNorm(nn.RMSNorm):
    """``torch.nn.RMSNorm`` with the explicit backward of :func:`manual_bp.functional.rms_norm`.

    >>> import torch, manual_bp
    >>> manual_bp.RMSNorm(4)(torch.randn(2, 4)).grad_fn.name()
    'RMSNormFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        return rms_norm(input, self.normalized_shape, self.weight, self.eps)


# --- samples and the registry ----------------------------------------------------------------------


def _stats(c: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """Running statistics (not differentiated): a mean in [-1, 1], a variance in [0.5, 2]."""
    mean = make_tensor((c,), dtype=dtype, device=device, low=-1.0, high=1.0)
    return mean, make_tensor((c,), dtype=dtype, device=device, low=0.5, high=2.0)


def _affine(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    return tensor(shape, dtype, device), tensor(shape, dtype, device)


def _bn_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def s(x: Tensor, stats: bool, affine: bool, training: bool, label: str, momentum: float = 0.1) -> Sample:
        c = x.shape[1]
        rm, rv = _stats(c, dtype, device) if stats else (None, None)
        w, b = _affine((c,), dtype, device) if affine else (None, None)
        return Sample((x, rm, rv, w, b, training, momentum), label=label)

    return [  # the first has no running statistics: vmap refuses to update them in place, as native
        s(tensor((3, 2, 4), dtype, device), False, True, True, "training, batch statistics only"),
        s(tensor((3, 2, 4), dtype, device), True, True, True, "training, running stats", momentum=0.3),
        s(tensor((3, 2, 4), dtype, device), True, True, False, "eval"),
        s(tensor((2, 2, 3, 3), dtype, device), True, False, True, "2-d, training, no affine"),
        s(tensor((2, 2, 3, 3), dtype, device), True, False, False, "2-d, eval, no affine"),
        s(tensor((5, 3), dtype, device), True, True, True, "(N, C), training"),
        s(noncontiguous((3, 2, 4), dtype, device), True, True, True, "non-contiguous, training"),
        s(noncontiguous((3, 2, 4), dtype, device), True, True, False, "non-contiguous, eval"),
    ]


def _in_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def s(x: Tensor, stats: bool, affine: bool, use_input_stats: bool, label: str) -> Sample:
        c = x.shape[1]
        rm, rv = _stats(c, dtype, device) if stats else (None, None)
        w, b = _affine((c,), dtype, device) if affine else (None, None)
        return Sample((x, rm, rv, w, b, use_input_stats), label=label)

    return [
        s(tensor((3, 2, 4), dtype, device), False, True, True, "affine"),
        s(tensor((3, 2, 4), dtype, device), False, False, True, "no affine"),
        s(tensor((3, 2, 4), dtype, device), True, True, True, "running stats updated"),
        s(tensor((3, 2, 4), dtype, device), True, True, False, "running stats used"),
        s(tensor((2, 2, 3, 3), dtype, device), False, True, True, "2-d"),
        s(tensor((2, 2, 3, 3), dtype, device), True, False, False, "2-d, running stats used, no affine"),
        s(noncontiguous((3, 2, 4), dtype, device), True, True, True, "non-contiguous"),
    ]


def _ln_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def s(x: Tensor, shape: tuple[int, ...], weight: bool, bias: bool, label: str, **kw: Any) -> Sample:
        w = tensor(shape, dtype, device) if weight else None
        b = tensor(shape, dtype, device) if bias else None
        return Sample((x, shape, w, b), kw, label)

    return [
        s(tensor((3, 4), dtype, device), (4,), True, True, "affine"),
        s(tensor((2, 3, 4), dtype, device), (3, 4), True, True, "2 normalised dims"),
        s(tensor((4,), dtype, device), (4,), True, True, "no batch dim"),
        s(tensor((0, 4), dtype, device), (4,), True, True, "empty batch"),
        s(tensor((3, 4), dtype, device), (4,), False, False, "no affine"),
        s(tensor((2, 2, 4), dtype, device), (4,), True, False, "weight, no bias", eps=1e-3),
        s(noncontiguous((3, 4), dtype, device), (4,), True, True, "non-contiguous"),
    ]


def _gn_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def s(x: Tensor, groups: int, affine: bool, label: str, **kw: Any) -> Sample:
        w, b = _affine((x.shape[1],), dtype, device) if affine else (None, None)
        return Sample((x, groups, w, b), kw, label)

    return [
        s(tensor((3, 4, 2), dtype, device), 2, True, "2 groups"),
        s(tensor((3, 4, 2), dtype, device), 1, True, "1 group"),
        s(tensor((3, 4, 3), dtype, device), 4, False, "a group per channel, no affine"),
        s(tensor((2, 4, 2, 3), dtype, device), 2, True, "2-d", eps=1e-3),
        s(tensor((3, 6), dtype, device), 2, True, "(N, C)"),
        s(noncontiguous((3, 4, 3), dtype, device), 2, True, "non-contiguous"),
    ]


def _rms_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def s(x: Tensor, shape: tuple[int, ...], weight: bool, label: str, **kw: Any) -> Sample:
        return Sample((x, shape, tensor(shape, dtype, device) if weight else None), kw, label)

    return [
        s(tensor((3, 4), dtype, device), (4,), True, "weight"),
        s(tensor((2, 3, 4), dtype, device), (3, 4), True, "2 normalised dims"),
        s(tensor((4,), dtype, device), (4,), True, "no batch dim"),
        s(tensor((0, 4), dtype, device), (4,), True, "empty batch"),
        s(tensor((3, 4), dtype, device), (4,), False, "no weight"),
        s(tensor((3, 4), dtype, device), (4,), True, "eps", eps=1e-3),
        s(noncontiguous((3, 4), dtype, device), (4,), True, "non-contiguous"),
    ]


_BP3 = (
    r"BP3: $\partial c/\partial\gamma = \sum \delta \odot \hat x$, $\partial c/\partial\beta = \sum \delta$"
)
_BP2 = (
    r"BP2: $\partial c/\partial x = (g - \overline{g} - \hat x \odot \overline{g \odot \hat x})/\sigma$, "
    r"$g = \delta \odot \gamma$"
)

NORM_OPS: tuple[Op, ...] = (
    Op(
        "batch_norm",
        batch_norm,
        F.batch_norm,
        _bn_samples,
        BatchNormFunction,
        modules=(
            (nn.BatchNorm1d, BatchNorm1d),
            (nn.BatchNorm2d, BatchNorm2d),
            (nn.BatchNorm3d, BatchNorm3d),
        ),
        torch_functions=(F.batch_norm,),
        formula=f"{_BP2}, means over $(N, *)$ (eval: $g/\\sigma$); {_BP3} over $(N, *)$",
    ),
    Op(
        "instance_norm",
        instance_norm,
        F.instance_norm,
        _in_samples,
        InstanceNormFunction,
        modules=(
            (nn.InstanceNorm1d, InstanceNorm1d),
            (nn.InstanceNorm2d, InstanceNorm2d),
            (nn.InstanceNorm3d, InstanceNorm3d),
        ),
        torch_functions=(F.instance_norm,),
        formula=f"{_BP2}, means over $(*)$ per sample and channel; {_BP3} over $(N, *)$",
    ),
    Op(
        "layer_norm",
        layer_norm,
        F.layer_norm,
        _ln_samples,
        LayerNormFunction,
        modules=((nn.LayerNorm, LayerNorm),),
        torch_functions=(F.layer_norm,),
        formula=f"{_BP2}, means over the normalised dims; {_BP3} over the leading dims",
    ),
    Op(
        "group_norm",
        group_norm,
        F.group_norm,
        _gn_samples,
        GroupNormFunction,
        modules=((nn.GroupNorm, GroupNorm),),
        torch_functions=(F.group_norm,),
        formula=f"{_BP2}, means over each group's channels and $(*)$; {_BP3} over $(N, *)$",
    ),
    Op(
        "rms_norm",
        rms_norm,
        F.rms_norm,
        _rms_samples,
        RMSNormFunction,
        modules=((nn.RMSNorm, RMSNorm),),
        torch_functions=(F.rms_norm,),
        formula=(
            r"BP2: $\partial c/\partial x = (g - \hat x \odot \overline{g \odot \hat x})/\mathrm{rms}$, "
            r"$g = \delta \odot \gamma$; BP3: $\partial c/\partial\gamma = \sum \delta \odot \hat x$"
        ),
    ),
)
