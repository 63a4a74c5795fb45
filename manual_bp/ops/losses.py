r"""Losses: the seed's error ``c = ½‖y − t‖²`` per sample (LOSS; its backward is BP1's first factor
``y − t``), and torch's losses, each with its ``∂c/∂y`` written out: the first factor of BP1
(``δ_N = ∂c/∂y_N ⊙ f′(x_N)``), which the layers below carry on with BP2 and BP3.

* on the difference ``d = y − t``: ``mse_loss`` (``d²``), ``l1_loss`` (``|d|``), ``smooth_l1_loss``
  and ``huber_loss``; binary cross-entropy on probabilities and on logits; ``kl_div`` — all
  elementwise losses ``ℓ(y, t)``, one :class:`PointwiseLossFunction` (a subclass per op names it);
* on class indices: ``nll_loss`` (``−w_t y_t``) and ``cross_entropy`` on logits (``∂c/∂z =
  softmax(z) − q``, ``q`` the one-hot, smoothed or probability target).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import make_tensor

from manual_bp._function import (
    _FLOATING,
    ManualFunction,
    autocast_dtype,
    check_floating,
    check_reduction,
    check_same,
    in_place_ok,
)
from manual_bp._torch_private import Loss, autocast_on, functorch_active
from manual_bp.ops._op import BATCHES, Op, Sample, noncontiguous, tensor
from manual_bp.ops.elementwise import to_float32

__all__ = [
    "LOSS_OPS",
    "BCELoss",
    "BCEWithLogitsLoss",
    "BinaryCrossEntropyFunction",
    "BinaryCrossEntropyWithLogitsFunction",
    "CrossEntropyFunction",
    "CrossEntropyLoss",
    "HalfSquaredError",
    "HalfSquaredErrorFunction",
    "HuberLoss",
    "HuberLossFunction",
    "KLDivFunction",
    "KLDivLoss",
    "L1Loss",
    "L1LossFunction",
    "MSELoss",
    "MSELossFunction",
    "NLLLoss",
    "NLLLossFunction",
    "PointwiseLossFunction",
    "SmoothL1Loss",
    "SmoothL1LossFunction",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "half_squared_error",
    "half_squared_error_reference",
    "huber_loss",
    "kl_div",
    "l1_loss",
    "mse_loss",
    "nll_loss",
    "scale_of_reduction",
    "smooth_l1_loss",
]

_REDUCTIONS = ("mean", "sum", "none")


def scale_of_reduction(grad_output: Tensor, reduction: str, count: int | Tensor) -> Tensor:
    """The per-sample factor ∂(reduced loss)/∂c_i, with a trailing axis to broadcast over features."""
    if reduction == "none":
        return grad_output.unsqueeze(-1)
    return grad_output / count if reduction == "mean" else grad_output


class HalfSquaredErrorFunction(ManualFunction):
    r"""The seed's error ``c = ½ Σ_j (y_j − t_j)²`` per sample (last dim), reduced over samples.

    .. math::
        \frac{\partial c}{\partial y} = y - t \;\text{(BP1's first factor)}, \qquad
        \frac{\partial c}{\partial t} = -(y - t)
    """

    @staticmethod
    def forward(input: Tensor, target: Tensor, reduction: str) -> Tensor:
        diff = input - target  # y − t
        if reduction == "none":
            return 0.5 * (diff * diff).sum(-1)  # (*, D) -> (*)
        flat = diff.reshape(-1)
        total = torch.dot(flat, flat)  # Σ_samples Σ_j (y − t)², one op
        count = math.prod(diff.shape[:-1])  # samples
        return total * (0.5 if reduction == "sum" else 0.5 / count if count else math.nan)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, target, reduction = inputs
        ctx.save_for_backward(input, target)
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        input, target = ctx.saved_tensors
        scale = scale_of_reduction(grad_output, ctx.reduction, math.prod(input.shape[:-1]))
        diff = input - target  # BP1's first factor: y − t
        grad = diff.mul_(scale) if in_place_ok(grad_output) else diff * scale
        grad_input = grad if ctx.needs_input_grad[0] else None
        grad_target = -grad if ctx.needs_input_grad[1] else None
        return grad_input, grad_target, None


def half_squared_error(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """The seed's ``c = ½‖input − target‖²`` over the last dim, per sample, then reduced.

    Shape: ``input (*, D)``, ``target`` the same shape -> ``(*)`` for ``reduction='none'``, else a
    scalar (``'mean'`` averages over samples, ``'sum'`` adds them). Under autocast it runs in
    float32, like ``mse_loss``.
    """
    if (  # the common case in one cheap test: same-shape floating tensors, no autocast
        isinstance(input, Tensor)
        and isinstance(target, Tensor)
        and input.dtype is target.dtype
        and input.dtype in _FLOATING
        and input.shape == target.shape
        and input.ndim
        and reduction in _REDUCTIONS
        and not autocast_on()
        and input.device == target.device
    ):
        return HalfSquaredErrorFunction.apply(input, target, reduction)
    check_floating("input", input)
    check_floating("target", target)
    check_reduction(reduction)
    if input.dim() == 0:
        raise ValueError("half_squared_error expected input of shape (*, D), got a 0-d tensor")
    if target.shape != input.shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal input shape {tuple(input.shape)} "
            "(half_squared_error does not broadcast)"
        )
    if autocast_dtype(input) is not None:
        input, target = to_float32(input), to_float32(target)
    check_same("target", target, "input", input)
    return HalfSquaredErrorFunction.apply(input, target, reduction)


def _legacy_reduction(size_average: bool | None, reduce: bool | None, reduction: str) -> str:
    """``reduction`` as torch derives it from the deprecated ``size_average``/``reduce`` (with torch's
    warning), or ``reduction`` itself when both are ``None``."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    reduction = "mean" if size_average and reduce else "sum" if reduce else "none"
    warnings.warn(
        f"size_average and reduce args will be deprecated, please use reduction='{reduction}' instead.",
        stacklevel=3,
    )
    return reduction


def _sum_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """``grad`` brought to ``shape``: summed over the dims a broadcast added or stretched, expanded
    where it is constant along a dim of ``shape`` (``∂ℓ/∂y = −t`` of a broadcast ``t``)."""
    if grad.shape == shape:
        return grad
    return grad.expand(torch.broadcast_shapes(grad.shape, shape)).sum_to_size(shape)


# ----------------------------------------------------------------------------- elementwise losses
# ℓ(y, t) per element, by kind; d = y − t. Each kind gives ℓ, ∂ℓ/∂y and ∂ℓ/∂t, written once.
_DIFFERENCE = ("mse", "l1", "smooth_l1", "huber")  # ℓ depends on d = y − t only: ∂ℓ/∂t = −∂ℓ/∂y


def _value(kind: str, y: Tensor, t: Tensor, pos_weight: Tensor | None, param: float) -> Tensor:
    """``ℓ(y, t)`` elementwise (``param``: smooth L1's ``beta``, Huber's ``delta``)."""
    if kind == "mse":
        d = y - t
        return d * d
    if kind == "l1":
        return (y - t).abs()
    if kind == "smooth_l1":  # ½d²/β inside |d| < β, |d| − ½β outside
        a = (y - t).abs()
        return torch.where(a < param, 0.5 * a * a / param, a - 0.5 * param)
    if kind == "huber":  # ½d² inside |d| < δ, δ(|d| − ½δ) outside
        a = (y - t).abs()
        return torch.where(a < param, 0.5 * a * a, param * (a - 0.5 * param))
    if kind == "bce":  # −t log y − (1 − t) log(1 − y), each log clamped at −100 as torch does
        return -(t * y.log().clamp_min(-100) + (1 - t) * torch.log1p(-y).clamp_min(-100))
    if kind == "bce_logits":  # (1 − t) z − (1 + (p_w − 1) t) log σ(z): stable for any z
        log_weight = 1 if pos_weight is None else 1 + (pos_weight - 1) * t
        return (1 - t) * y - log_weight * F.logsigmoid(y)
    if kind == "kl":  # t (log t − y), 0 where t = 0
        return torch.xlogy(t, t) - t * y
    if kind == "kl_log_target":  # e^t (t − y), the target given as log t
        return t.exp() * (t - y)
    raise AssertionError(kind)


def _d_input(kind: str, y: Tensor, t: Tensor, pos_weight: Tensor | None, param: float) -> Tensor:
    """``∂ℓ/∂y`` elementwise."""
    if kind == "mse":
        return 2 * (y - t)
    if kind == "l1":
        return (y - t).sign()
    if kind == "smooth_l1":
        d = y - t
        return torch.where(d.abs() < param, d / param, d.sign())
    if kind == "huber":
        return (y - t).clamp(-param, param)
    if kind == "bce":  # (y − t) / (y (1 − y)), the denominator clamped at 1e-12 as torch does
        return (y - t) / (y * (1 - y)).clamp_min(1e-12)
    if kind == "bce_logits":  # (1 − t) − (1 + (p_w − 1) t) σ(−z); σ(z) − t when p_w = 1
        log_weight = 1 if pos_weight is None else 1 + (pos_weight - 1) * t
        return (1 - t) - log_weight * torch.sigmoid(-y)
    if kind == "kl":
        return -t
    if kind == "kl_log_target":
        return -t.exp()
    raise AssertionError(kind)


def _d_target(kind: str, y: Tensor, t: Tensor, pos_weight: Tensor | None, param: float) -> Tensor:
    """``∂ℓ/∂t`` elementwise."""
    if kind in _DIFFERENCE:
        return -_d_input(kind, y, t, pos_weight, param)
    if kind == "bce":  # log(1 − y) − log y
        return torch.log1p(-y) - y.log()
    if kind == "bce_logits":  # −z − (p_w − 1) log σ(z)
        return -y if pos_weight is None else -y - (pos_weight - 1) * F.logsigmoid(y)
    if kind == "kl":
        return t.log() + 1 - y
    if kind == "kl_log_target":
        return t.exp() * (t - y + 1)
    raise AssertionError(kind)


class PointwiseLossFunction(ManualFunction):
    r"""``c = reduce(w ⊙ ℓ(y, t))`` for an elementwise loss ``ℓ`` named by ``kind`` (see the
    subclass of each op), ``y``, ``t`` and ``w`` broadcast against each other.

    With ``s`` the reduction's factor (1, ``1/n``, ``1/N``, ``1/Σw``):

    .. math::
        \frac{\partial c}{\partial y} = s\, w \odot \frac{\partial \ell}{\partial y}, \quad
        \frac{\partial c}{\partial t} = s\, w \odot \frac{\partial \ell}{\partial t}, \quad
        \frac{\partial c}{\partial w} = s\, \ell
        \quad (s\, (\ell - c) \text{ for the weighted mean } c = Σ wℓ / Σ w)

    ``reduction`` here also takes ``'batchmean'`` (divide by ``y.shape[0]``) and ``'weighted_mean'``
    (divide by ``Σw``, ``mse_loss``'s and ``l1_loss``'s weighted mean). ``pos_weight`` is
    ``binary_cross_entropy_with_logits``'s, not differentiable (as in torch).
    """

    @staticmethod
    def forward(
        input: Tensor,
        target: Tensor,
        weight: Tensor | None,
        pos_weight: Tensor | None,
        reduction: str,
        kind: str,
        param: float,
    ) -> Tensor:
        loss = _value(kind, input, target, pos_weight, param)  # ℓ, the broadcast shape
        if weight is not None:
            loss = loss * weight
        if reduction == "none":
            return loss
        total = loss.sum()
        if reduction == "sum":
            return total
        if reduction == "weighted_mean":
            return total / weight.sum()  # type: ignore[union-attr]
        return total / _count(reduction, loss.shape, input)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, target, weight, pos_weight, reduction, kind, param = inputs
        by_weight = reduction == "weighted_mean" and ctx.needs_input_grad[2]
        ctx.save_for_backward(input, target, weight, pos_weight, output if by_weight else None)
        ctx.reduction, ctx.kind, ctx.param = reduction, kind, param
        if reduction in ("mean", "batchmean"):
            shape = torch.broadcast_shapes(
                input.shape, target.shape, *([weight.shape] if weight is not None else [])
            )
            ctx.count = _count(reduction, shape, input)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, target, weight, pos_weight, output = ctx.saved_tensors
        needs, kind, param, reduction = ctx.needs_input_grad, ctx.kind, ctx.param, ctx.reduction
        if reduction in ("mean", "batchmean"):
            scale = grad_output / ctx.count
        elif reduction == "weighted_mean":
            scale = grad_output / weight.sum()
        else:
            scale = grad_output  # 'sum': a scalar; 'none': one per element of ℓ
        delta = scale if weight is None else scale * weight  # ∂c/∂ℓ per element
        grad_input = grad_target = grad_weight = None
        if needs[0]:
            # BP1's first factor: ∂c/∂y = s w ⊙ ∂ℓ/∂y; broadcast shape -> input's shape
            grad_input = _sum_to(delta * _d_input(kind, input, target, pos_weight, param), input.shape)
        if needs[1]:
            # ∂c/∂t = s w ⊙ ∂ℓ/∂t; broadcast shape -> target's shape
            grad_target = _sum_to(delta * _d_target(kind, input, target, pos_weight, param), target.shape)
        if needs[2]:
            # ∂c/∂w = s ℓ (− s c for the weighted mean c = Σ wℓ / Σ w); broadcast shape -> weight's shape
            grad_weight = _sum_to(scale * _value(kind, input, target, pos_weight, param), weight.shape)
            if reduction == "weighted_mean":
                grad_weight = grad_weight - scale * output
        return grad_input, grad_target, grad_weight, None, None, None, None


def _count(reduction: str, shape: torch.Size, input: Tensor) -> int:
    """What ``'mean'`` (every element of ℓ) and ``'batchmean'`` (the batch, ``y.shape[0]``) divide by."""
    if reduction == "batchmean":
        return input.shape[0] if input.dim() else 1
    return math.prod(shape)


class MSELossFunction(PointwiseLossFunction):
    r"""``ℓ = (y − t)²``: :math:`\partial\ell/\partial y = 2(y - t) = -\partial\ell/\partial t`."""


class L1LossFunction(PointwiseLossFunction):
    r"""``ℓ = |y − t|``: :math:`\partial\ell/\partial y = \operatorname{sign}(y - t)
    = -\partial\ell/\partial t`."""


class SmoothL1LossFunction(PointwiseLossFunction):
    r"""``ℓ = ½d²/β`` for ``|d| < β``, else ``|d| − ½β`` (``d = y − t``):
    :math:`\partial\ell/\partial y = d/β` inside, :math:`\operatorname{sign}(d)` outside."""


class HuberLossFunction(PointwiseLossFunction):
    r"""``ℓ = ½d²`` for ``|d| < δ``, else ``δ(|d| − ½δ)`` (``d = y − t``):
    :math:`\partial\ell/\partial y = \operatorname{clamp}(d, -δ, δ)`."""


class BinaryCrossEntropyFunction(PointwiseLossFunction):
    r"""``ℓ = −t log y − (1 − t) log(1 − y)``: :math:`\partial\ell/\partial y = (y - t) / (y(1 - y))`,
    :math:`\partial\ell/\partial t = \log(1 - y) - \log y`."""


class BinaryCrossEntropyWithLogitsFunction(PointwiseLossFunction):
    r"""``ℓ = (1 − t) z − (1 + (p_w − 1) t) log σ(z)``: :math:`\partial\ell/\partial z = σ(z) − t`
    for ``p_w = 1`` (in general ``(1 − t) − (1 + (p_w − 1) t) σ(−z)``)."""


class KLDivFunction(PointwiseLossFunction):
    r"""``ℓ = t (log t − y)`` (``y`` log-probabilities): :math:`\partial\ell/\partial y = -t`,
    :math:`\partial\ell/\partial t = \log t + 1 - y`; with ``log_target``, ``ℓ = e^t (t − y)``."""


def _broadcast(name: str, input: Tensor, target: Tensor, warn: bool) -> None:
    """Raise unless ``target`` broadcasts with ``input`` (naming both shapes); warn as torch does."""
    try:
        torch.broadcast_shapes(input.shape, target.shape)
    except RuntimeError:
        raise RuntimeError(
            f"{name}: target shape {tuple(target.shape)} does not broadcast with input shape "
            f"{tuple(input.shape)}"
        ) from None
    if warn and target.shape != input.shape:
        warnings.warn(
            f"Using a target size ({target.size()}) that is different to the input size ({input.size()}). "
            "This will likely lead to incorrect results due to broadcasting. "
            "Please ensure they have the same size.",
            stacklevel=4,
        )


def _pointwise(
    name: str,
    function: type[PointwiseLossFunction],
    kind: str,
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: str,
    param: float = 0.0,
    pos_weight: Tensor | None = None,
    float32: bool = True,
) -> Tensor:
    """Check the arguments of an elementwise loss and apply its Function (``float32``: autocast runs
    the op in float32, as it does the native one)."""
    check_floating("input", input)
    check_floating("target", target)
    for arg_name, arg in (("weight", weight), ("pos_weight", pos_weight)):
        if arg is not None:
            check_floating(arg_name, arg)
    if float32 and autocast_dtype(input) is not None:
        input, target = to_float32(input), to_float32(target)
        weight = None if weight is None else to_float32(weight)
        pos_weight = None if pos_weight is None else to_float32(pos_weight)
    for arg_name, arg in (("target", target), ("weight", weight), ("pos_weight", pos_weight)):
        if arg is not None:
            check_same(arg_name, arg, "input", input)
    if pos_weight is not None and pos_weight.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name} is not differentiable with respect to pos_weight (as in torch); detach it")
    return function.apply(input, target, weight, pos_weight, reduction, kind, float(param))


def _difference(
    name: str,
    function: type[PointwiseLossFunction],
    kind: str,
    input: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: str,
    param: float = 0.0,
    weighted_mean: bool = True,
) -> Tensor:
    """The losses of ``d = y − t``: broadcast as torch does (with its warning); an optional weight of
    the input's shape (the weighted op is not an autocast float32 op: ``ℓ ⊙ w`` runs in the inputs'
    dtype, except Huber's, whose ``ℓ`` is)."""
    check_floating("input", input)
    check_floating("target", target)
    check_reduction(reduction)
    _broadcast(name, input, target, warn=True)
    if weight is not None:
        check_floating("weight", weight)
        if weight.shape != input.shape:
            raise ValueError(
                f"{name}: weight must have the input's shape {tuple(input.shape)}, got {tuple(weight.shape)}"
            )
        if weighted_mean and reduction == "mean":
            reduction = "weighted_mean"
    float32 = weight is None or kind == "huber"
    return _pointwise(name, function, kind, input, target, weight, reduction, param, float32=float32)


def mse_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """Mean squared error ``(y − t)²`` with an explicit backward, ``torch.nn.functional.mse_loss``'s
    semantics: ``input`` and ``target`` broadcast (with torch's warning); ``weight`` of the input's
    shape multiplies each term and ``'mean'`` then divides by ``Σ weight``."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    return _difference("mse_loss", MSELossFunction, "mse", input, target, weight, reduction)


def l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """Mean absolute error ``|y − t|`` with an explicit backward (``torch.nn.functional.l1_loss``'s
    semantics, as :func:`mse_loss`)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    return _difference("l1_loss", L1LossFunction, "l1", input, target, weight, reduction)


def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    beta: float = 1.0,
) -> Tensor:
    """Smooth L1 loss (quadratic inside ``|y − t| < beta``) with an explicit backward;
    ``beta=0`` is the L1 loss, as in torch."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if beta < 0:
        raise RuntimeError(f"smooth_l1_loss does not support negative values for beta, got beta={beta}")
    if beta == 0.0:
        return _difference("smooth_l1_loss", L1LossFunction, "l1", input, target, None, reduction)
    return _difference(
        "smooth_l1_loss", SmoothL1LossFunction, "smooth_l1", input, target, None, reduction, beta
    )


def huber_loss(
    input: Tensor,
    target: Tensor,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Huber loss (quadratic inside ``|y − t| < delta``, linear outside) with an explicit backward;
    ``weight`` of the input's shape multiplies each term, and ``'mean'`` stays the mean over the
    elements, as in torch."""
    if delta <= 0:
        raise RuntimeError(f"huber_loss does not support non-positive values for delta, got delta={delta}")
    return _difference(
        "huber_loss", HuberLossFunction, "huber", input, target, weight, reduction, delta, weighted_mean=False
    )


def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Binary cross-entropy of probabilities ``input`` in ``[0, 1]`` with an explicit backward (each
    log clamped at −100, as in torch); ``target`` of the input's shape, ``weight`` broadcast to it
    (not differentiable, as in torch)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    check_floating("input", input)
    check_floating("target", target)
    check_reduction(reduction)
    if target.shape != input.shape:
        raise ValueError(
            f"binary_cross_entropy: target shape {tuple(target.shape)} must equal input shape "
            f"{tuple(input.shape)}"
        )
    _check_weight_broadcasts("binary_cross_entropy", "weight", weight, input)
    traced = torch.compiler.is_compiling() or functorch_active()
    if not traced:  # data-dependent: not while compiling or under vmap (there log gives NaN instead)
        for arg_name, arg in (("input", input), ("target", target)):
            outside = (arg < 0) | (arg > 1)
            if bool(outside.any()):
                raise RuntimeError(
                    f"binary_cross_entropy: every element of {arg_name} must lie in [0, 1] "
                    f"(probabilities), got {arg[outside][0].item()}"
                )
    return _pointwise(
        "binary_cross_entropy", BinaryCrossEntropyFunction, "bce", input, target, weight, reduction
    )


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Binary cross-entropy of logits in the stable form ``(1 − t) z − (1 + (p_w − 1) t) log σ(z)``,
    with an explicit backward; ``target`` of the input's shape, ``weight`` and ``pos_weight`` (one per
    class, the last dim) broadcast to it and not differentiable, as in torch."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    check_floating("input", input)
    check_floating("target", target)
    check_reduction(reduction)
    if target.shape != input.shape:
        raise ValueError(
            f"binary_cross_entropy_with_logits: target shape {tuple(target.shape)} must equal input "
            f"shape {tuple(input.shape)}"
        )
    _check_weight_broadcasts("binary_cross_entropy_with_logits", "weight", weight, input)
    _check_weight_broadcasts("binary_cross_entropy_with_logits", "pos_weight", pos_weight, input)
    return _pointwise(
        "binary_cross_entropy_with_logits",
        BinaryCrossEntropyWithLogitsFunction,
        "bce_logits",
        input,
        target,
        weight,
        reduction,
        pos_weight=pos_weight,
    )


def _check_weight_broadcasts(name: str, arg_name: str, weight: Tensor | None, input: Tensor) -> None:
    if weight is None:
        return
    check_floating(arg_name, weight)
    try:
        ok = torch.broadcast_shapes(weight.shape, input.shape) == input.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name}: {arg_name} of shape {tuple(weight.shape)} must broadcast to the input's shape "
            f"{tuple(input.shape)}"
        )
    if weight.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name} is not differentiable with respect to {arg_name} (as in torch); detach it")


def kl_div(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    log_target: bool = False,
) -> Tensor:
    """KL divergence ``t (log t − y)`` of log-probabilities ``input`` from ``target`` (probabilities,
    or log-probabilities with ``log_target=True``), with an explicit backward; ``'batchmean'``
    divides by the batch size, ``'mean'`` by the number of elements (with torch's warning)."""
    reduction = _legacy_reduction(size_average, reduce, reduction)
    if reduction not in ("mean", "batchmean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'batchmean', 'sum' or 'none', got {reduction!r}")
    if reduction == "mean":
        warnings.warn(
            "reduction: 'mean' divides the total loss by both the batch size and the support size."
            "'batchmean' divides only by the batch size, and aligns with the KL div math definition."
            "'mean' will be changed to behave the same as 'batchmean' in the next major release.",
            stacklevel=2,
        )
    check_floating("input", input)
    check_floating("target", target)
    _broadcast("kl_div", input, target, warn=False)
    kind = "kl_log_target" if log_target else "kl"
    return _pointwise("kl_div", KLDivFunction, kind, input, target, None, reduction)


# ----------------------------------------------------------------------------- class-index losses
# Inputs (N, C), (C,) or (N, C, d_1, ..., d_K): the class dim is 1, or 0 without a batch dim.
# Class-index targets (N,), () or (N, d_1, ..., d_K); a target equal to ignore_index counts for nothing.


def _target_weights(
    target: Tensor, weight: Tensor | None, ignore_index: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``(keep, safe, w_t)``, all target-shaped: whether each target counts (is not ``ignore_index``),
    the targets with ignored ones set to class 0 (a valid index), and each target's class weight
    ``w_{t_i}`` (1 without ``weight``), 0 where ignored."""
    keep = target != ignore_index
    safe = target * keep  # ignored -> class 0
    return keep, safe, keep if weight is None else weight[safe] * keep  # (bool keep: 1 or 0)


def _mean_divisor(w_t: Tensor) -> Tensor:
    """``Σ_i w_{t_i}``, the divisor of ``'mean'``, made 1 where it is 0 (every target ignored): the
    rows' gradients are then 0, as native's (0/0 would make them NaN; the loss stays NaN)."""
    total = w_t.sum()
    return total.clamp_min(1) if w_t.dtype is torch.bool else torch.where(total == 0, 1, total)


class NLLLossFunction(ManualFunction):
    r"""Negative log-likelihood ``c_i = −w_{t_i} y_{i t_i}`` of log-probabilities ``y``.

    .. math::
        \frac{\partial c_i}{\partial y_{ik}} = -w_{t_i}\, [k = t_i]

    ``'mean'`` divides by ``Σ_i w_{t_i}`` over the targets not ignored, as torch does; ``weight`` is
    not differentiable (as in torch).
    """

    @staticmethod
    def forward(
        input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str
    ) -> Tensor:
        return F.nll_loss(input, target, weight, ignore_index=ignore_index, reduction=reduction)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, target, weight, ignore_index, reduction = inputs
        ctx.save_for_backward(target, weight)
        ctx.ignore_index, ctx.reduction = ignore_index, reduction
        ctx.input_shape, ctx.class_dim = input.shape, 1 if input.dim() > 1 else 0

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        target, weight = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            cd = ctx.class_dim
            _, safe, w_t = _target_weights(target, weight, ctx.ignore_index)
            s = (
                grad_output / _mean_divisor(w_t) if ctx.reduction == "mean" else grad_output
            )  # ∂(reduced c)/∂c_i
            r = s * w_t  # s_i w_{t_i}, target-shaped
            # BP1's first factor: ∂c/∂y = −s w_t at each target's class; target shape -> input shape
            zeros = grad_output.new_zeros(ctx.input_shape)
            grad_input = zeros.scatter(cd, safe.unsqueeze(cd), -r.unsqueeze(cd))
        return grad_input, None, None, None, None


class CrossEntropyFunction(ManualFunction):
    r"""Cross-entropy of logits ``z`` against class indices or class probabilities, with class
    weights ``w`` and label smoothing ``ε``.

    With ``p = softmax(z)`` over the class dim and per-class coefficients ``a_i`` (``(1 − ε) w_{t_i}
    onehot(t_i) + (ε/C) w`` for indices, ``w ⊙ q_i`` for probabilities ``q_i = (1 − ε) t_i + ε/C``):

    .. math::
        c_i = -\sum_k a_{ik} \log p_{ik}, \qquad
        \frac{\partial c_i}{\partial z_i} = p_i \textstyle\sum_k a_{ik} - a_i, \qquad
        \frac{\partial c_i}{\partial t_i} = -(1 - ε)\, w \odot \log p_i, \qquad
        \frac{\partial c_i}{\partial w} = -q_i \odot \log p_i

    With one-hot indices and no weight or smoothing: ``∂c_i/∂z_i = p_i − onehot(t_i)`` (BP1's first
    factor), formed by a scatter on the target column, never a dense one-hot. As in torch,
    ``weight`` is differentiable for class probabilities only. The Function also returns
    ``log p`` (saved for backward, so that double backward differentiates it as an output).
    """

    @staticmethod
    def forward(
        input: Tensor,
        target: Tensor,
        weight: Tensor | None,
        ignore_index: int,
        reduction: str,
        label_smoothing: float,
    ) -> tuple[Tensor, Tensor]:
        cd = 1 if input.dim() > 1 else 0
        log_p = torch.log_softmax(input, cd)
        if target.is_floating_point():  # class probabilities
            a = _probability_coefficients(target, weight, label_smoothing, cd)
            per_row = -(log_p * a).sum(cd)  # (N, C, ...) -> (N, ...)
            if reduction == "none":
                return per_row, log_p
            total = per_row.sum()
            return (total / per_row.numel() if reduction == "mean" else total), log_p
        loss = F.nll_loss(log_p, target, weight, ignore_index=ignore_index, reduction=reduction)
        if label_smoothing:  # (1 − ε) nll + (ε/C) Σ_k w_k (−log p_k), the same rows and normaliser
            keep, _, w_t = _target_weights(target, weight, ignore_index)
            w = 1 if weight is None else _class_view(weight, input.dim(), cd)
            # (N, C, ...) -> (N, ...); an ignored row set to 0, not multiplied by it: its −Σ log p
            # may be inf (a logit of ±3e38), and inf · 0 = NaN where native's masked row is 0
            smooth = (-(log_p * w).sum(cd)).masked_fill_(~keep, 0.0)
            if reduction != "none":
                smooth = smooth.sum() / w_t.sum() if reduction == "mean" else smooth.sum()
            loss = (1 - label_smoothing) * loss + (label_smoothing / input.shape[cd]) * smooth
        return loss, log_p

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        input, target, weight, ignore_index, reduction, label_smoothing = inputs
        ctx.save_for_backward(target, weight, output[1])
        ctx.ignore_index, ctx.reduction, ctx.label_smoothing = ignore_index, reduction, label_smoothing
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(
        ctx: Any, grad_output: Tensor | None, grad_log_p: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        target, weight, log_p = ctx.saved_tensors
        needs, eps = ctx.needs_input_grad, ctx.label_smoothing
        cd = 1 if log_p.dim() > 1 else 0
        classes = log_p.shape[cd]
        grad_input = grad_target = grad_weight = None
        if grad_output is not None and target.is_floating_point():  # class probabilities
            a = _probability_coefficients(target, weight, eps, cd)
            rows = log_p.numel() // classes if classes else 0
            s = grad_output / rows if ctx.reduction == "mean" else grad_output  # ∂(reduced c)/∂c_i
            s = s.unsqueeze(cd) if ctx.reduction == "none" else s  # (N, ...) -> (N, 1, ...)
            if needs[0]:
                p = log_p.exp()
                # BP1's first factor: ∂c/∂z = s (p Σ_k a_k − a); (N, C, ...)
                grad_input = s * (p * a.sum(cd, keepdim=True) - a)
            if needs[1]:
                w = 1 if weight is None else _class_view(weight, log_p.dim(), cd)
                grad_target = s * (-(1 - eps) * w * log_p)  # ∂c/∂t = −(1 − ε) w ⊙ log p
            if needs[2]:
                q = target * (1 - eps) + eps / classes if eps else target
                # ∂c/∂w = Σ_rows −s q ⊙ log p; (N, C, ...) -> (C,)
                per_class = s * (-q * log_p)
                rest = [d for d in range(log_p.dim()) if d != cd]
                grad_weight = per_class.sum(rest) if rest else per_class  # (sum over [] sums all)
        elif grad_output is not None and needs[0]:  # class indices
            keep, safe, w_t = _target_weights(target, weight, ctx.ignore_index)
            s = (
                grad_output / _mean_divisor(w_t) if ctx.reduction == "mean" else grad_output
            )  # ∂(reduced c)/∂c_i
            r = (s * w_t).unsqueeze(cd)  # s_i w_{t_i}: (N, ...) -> (N, 1, ...)
            # p is this backward's own: edited in place where no graph is recorded. At 1024 x 1000
            # (float32, 1 thread) forward + backward took 0.92-1.01x native's time in place against
            # 1.6-1.8x out of place (interleaved timing as scripts/bench.py --cross-entropy does)
            in_place = in_place_ok(grad_output)
            p = log_p.exp()
            # BP1's first factor: ∂c/∂z = s (p Σ_k a_k − a), a = (1 − ε) w_t onehot(t) + (ε/C) w
            if not eps:
                grad_input = p.mul_(r) if in_place else p * r  # p Σ_k a_k = s w_t p
            else:
                k = (s * keep).unsqueeze(cd)  # s_i for the rows kept
                w = _class_view(weight, log_p.dim(), cd) if weight is not None else None
                w_sum = classes if weight is None else weight.sum()
                grad_input = p * ((1 - eps) * r + (eps / classes) * w_sum * k)  # p Σ_k a_k
                grad_input = grad_input - (eps / classes) * (k if w is None else k * w)  # − (ε/C) s w
            one_hot = -(1 - eps) * r if eps else -r  # − s (1 − ε) w_t at the target column
            index = safe.unsqueeze(cd)  # (N, ...) -> (N, 1, ...)
            grad_input = (
                grad_input.scatter_add_(cd, index, one_hot)
                if in_place
                else grad_input.scatter_add(cd, index, one_hot)
            )
        if grad_log_p is not None and needs[0]:  # log p is an output too: its softmax backward
            p = log_p.exp()
            from_log_p = grad_log_p - p * grad_log_p.sum(cd, keepdim=True)  # g − p Σ_k g_k
            grad_input = from_log_p if grad_input is None else grad_input + from_log_p
        return grad_input, grad_target, grad_weight, None, None, None


def _class_view(weight: Tensor, ndim: int, cd: int) -> Tensor:
    """``weight (C,)`` shaped to broadcast along the class dim of an ``ndim``-d input: ``(C, 1, ...)``."""
    return weight.reshape(weight.shape[0], *([1] * (ndim - cd - 1)))


def _probability_coefficients(
    target: Tensor, weight: Tensor | None, label_smoothing: float, cd: int
) -> Tensor:
    """``a = w ⊙ q``, ``q = (1 − ε) t + ε/C`` the smoothed class probabilities."""
    q = target * (1 - label_smoothing) + label_smoothing / target.shape[cd] if label_smoothing else target
    return q if weight is None else q * _class_view(weight, target.dim(), cd)


def _check_classes(name: str, input: Tensor) -> None:
    check_floating("input", input)
    if input.dim() == 0:
        raise ValueError(
            f"{name} expected input of shape (N, C), (C,) or (N, C, d_1, ..., d_K), got a 0-d tensor"
        )


def _check_indices(name: str, input: Tensor, target: Tensor, ignore_index: int) -> Tensor:
    """Check class-index targets (shape, dtype, device, range); return them as int64."""
    if not isinstance(target, Tensor):
        raise TypeError(
            f"{name}: target must be a torch.Tensor of class indices, got {type(target).__name__}"
        )
    if target.dtype not in (torch.int64, torch.uint8):
        raise TypeError(
            f"{name}: class-index target must be int64 (or uint8, as torch accepts), got {target.dtype}"
        )
    cd = 1 if input.dim() > 1 else 0
    expected = (input.shape[0], *input.shape[2:]) if cd else ()
    if target.shape != expected:
        raise ValueError(
            f"class-index target must have shape {expected} for input of shape {tuple(input.shape)}, "
            f"got {tuple(target.shape)}"
        )
    if target.device != input.device:
        raise ValueError(
            f"target and input must be on the same device, got target on {target.device} "
            f"and input on {input.device}"
        )
    target = target.long()
    _check_range(input, target, ignore_index)
    return target


def _check_range(input: Tensor, target: Tensor, ignore_index: int) -> None:
    """Raise naming the valid range if a class index lies outside ``[0, C)`` (and is not
    ``ignore_index``). Data-dependent: not while compiling or under vmap (there the native
    ``nll_loss`` of the forward refuses it)."""
    if torch.compiler.is_compiling() or functorch_active() or not target.numel():
        return
    classes = input.shape[1 if input.dim() > 1 else 0]
    bad = (target != ignore_index) & ((target < 0) | (target >= classes))
    if bool(bad.any()):
        raise ValueError(
            f"class-index target must lie in [0, {classes}) or equal ignore_index={ignore_index}, "
            f"got {target[bad][0].item()}"
        )


def _check_class_weight(name: str, weight: Tensor | None, input: Tensor, differentiable: bool) -> None:
    if weight is None:
        return
    check_floating("weight", weight)
    classes = input.shape[1 if input.dim() > 1 else 0]
    if weight.shape != (classes,):
        raise ValueError(f"weight must have shape ({classes},), got {tuple(weight.shape)}")
    if not differentiable and weight.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{name} with class-index targets is not differentiable with respect to weight "
            "(as in torch); detach the weight or pass class probabilities"
        )


def nll_loss(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of log-probabilities with an explicit backward, with
    ``torch.nn.functional.nll_loss``'s semantics.

    Shape: ``input (N, C)``, ``(C,)`` or ``(N, C, d_1, …, d_K)``; ``target`` int64 class indices
    ``(N,)``, ``()`` or ``(N, d_1, …, d_K)`` in ``[0, C)`` or equal to ``ignore_index``; ``weight (C,)``
    (not differentiable). ``'mean'`` divides by the summed weights of the targets not ignored.
    Under autocast it runs in float32, as the native op does.
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_classes("nll_loss", input)
    check_reduction(reduction)
    target = _check_indices("nll_loss", input, target, ignore_index)
    _check_class_weight("nll_loss", weight, input, differentiable=False)
    if autocast_dtype(input) is not None:
        input = to_float32(input)
        weight = None if weight is None else to_float32(weight)
    if weight is not None:
        check_same("weight", weight, "input", input)
    return NLLLossFunction.apply(input, target, weight, int(ignore_index), reduction)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Cross-entropy of logits with an explicit backward, with ``torch.nn.functional.cross_entropy``'s
    signature and semantics.

    Shape: ``input (N, C)``, ``(C,)`` or ``(N, C, d_1, …, d_K)``; ``target`` int64 class indices
    ``(N,)``, ``()`` or ``(N, d_1, …, d_K)`` (in ``[0, C)`` or equal to ``ignore_index``), or class
    probabilities of ``input``'s shape; ``weight (C,)``; ``label_smoothing`` in ``[0, 1]`` mixes the
    target with the uniform distribution. ``'mean'`` divides by the summed weights of the targets
    not ignored (indices) or by the number of rows (probabilities), as torch does. Under autocast
    it runs in float32, as the native op does.
    """
    if (  # the common case in one cheap test: (N, C) logits, int64 indices, no weight, no autocast
        weight is None
        and size_average is None
        and reduce is None
        and isinstance(input, Tensor)
        and isinstance(target, Tensor)
        and target.dtype is torch.int64
        and input.dtype in _FLOATING
        and input.ndim == 2
        and target.ndim == 1
        and target.shape[0] == input.shape[0]
        and reduction in _REDUCTIONS
        and 0.0 <= label_smoothing <= 1.0
        and not autocast_on()
        and target.device == input.device
    ):
        try:  # the forward's native nll_loss checks the class range: name it in the error
            return CrossEntropyFunction.apply(
                input, target, None, int(ignore_index), reduction, label_smoothing
            )[0]
        except IndexError:
            _check_range(input, target, ignore_index)
            raise
    reduction = _legacy_reduction(size_average, reduce, reduction)
    _check_classes("cross_entropy", input)
    check_reduction(reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0, got {label_smoothing}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    probabilities = target.is_floating_point()
    if probabilities:
        if target.shape != input.shape:
            raise ValueError(
                f"class-probability target must have the input's shape {tuple(input.shape)}, "
                f"got {tuple(target.shape)}"
            )
        if ignore_index >= 0:  # torch refuses it too (a negative one names no class, so it is harmless)
            raise ValueError(
                "ignore_index is not supported with class-probability targets (as in torch), "
                f"got ignore_index={ignore_index}"
            )
    elif target.dtype in (torch.int64, torch.uint8):
        target = _check_indices("cross_entropy", input, target, ignore_index)
    else:
        raise TypeError(
            f"target must hold int64 class indices or float class probabilities, got {target.dtype}"
        )
    _check_class_weight("cross_entropy", weight, input, differentiable=probabilities)
    if autocast_dtype(input) is not None:
        input = to_float32(input)
        target = to_float32(target) if probabilities else target
        weight = None if weight is None else to_float32(weight)
    if probabilities:
        check_same("target", target, "input", input)
    if weight is not None:
        check_same("weight", weight, "input", input)
    return CrossEntropyFunction.apply(
        input, target, weight, int(ignore_index), reduction, float(label_smoothing)
    )[0]


class HalfSquaredError(Loss):
    """The seed's error ``c = ½‖y − t‖²`` per sample, averaged (``'mean'``) or summed over samples.

    Shape: ``input (*, D)``, ``target`` the same -> scalar, or ``(*)`` with ``reduction='none'``.
    """

    __module__ = "manual_bp.modules"  # its public home (the drop-in layers)

    def __init__(self, reduction: str = "mean") -> None:
        check_reduction(reduction)
        super().__init__(reduction=reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return half_squared_error(input, target, self.reduction)


# ----------------------------------------------------------------------------- modules
class MSELoss(nn.MSELoss):
    """``torch.nn.MSELoss`` with the explicit backward of :func:`manual_bp.functional.mse_loss`.

    >>> import torch, manual_bp
    >>> manual_bp.MSELoss()(torch.randn(3, requires_grad=True), torch.randn(3)).grad_fn.name()
    'MSELossFunctionBackward'
    """

    __module__ = "manual_bp.modules"  # its public home (the drop-in layers)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return mse_loss(input, target, reduction=self.reduction)


class L1Loss(nn.L1Loss):
    """``torch.nn.L1Loss`` with the explicit backward of :func:`manual_bp.functional.l1_loss`.

    >>> import torch, manual_bp
    >>> manual_bp.L1Loss()(torch.randn(3, requires_grad=True), torch.randn(3)).grad_fn.name()
    'L1LossFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return l1_loss(input, target, reduction=self.reduction)


class SmoothL1Loss(nn.SmoothL1Loss):
    """``torch.nn.SmoothL1Loss`` with the explicit backward of :func:`manual_bp.functional.smooth_l1_loss`.

    >>> import torch, manual_bp
    >>> manual_bp.SmoothL1Loss()(torch.randn(3, requires_grad=True), torch.randn(3)).grad_fn.name()
    'SmoothL1LossFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)


class HuberLoss(nn.HuberLoss):
    """``torch.nn.HuberLoss`` with the explicit backward of :func:`manual_bp.functional.huber_loss`.

    >>> import torch, manual_bp
    >>> manual_bp.HuberLoss()(torch.randn(3, requires_grad=True), torch.randn(3)).grad_fn.name()
    'HuberLossFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return huber_loss(input, target, reduction=self.reduction, delta=self.delta)


class NLLLoss(nn.NLLLoss):
    """``torch.nn.NLLLoss`` with the explicit backward of :func:`manual_bp.functional.nll_loss`.

    >>> import torch, manual_bp
    >>> manual_bp.NLLLoss()(torch.randn(2, 3, requires_grad=True), torch.tensor([0, 2])).grad_fn.name()
    'NLLLossFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return nll_loss(input, target, self.weight, ignore_index=self.ignore_index, reduction=self.reduction)


class BCELoss(nn.BCELoss):
    """``torch.nn.BCELoss`` with the explicit backward of :func:`manual_bp.functional.binary_cross_entropy`.

    >>> import torch, manual_bp
    >>> manual_bp.BCELoss()(torch.rand(3, requires_grad=True), torch.rand(3)).grad_fn.name()
    'BinaryCrossEntropyFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy(input, target, self.weight, reduction=self.reduction)


class BCEWithLogitsLoss(nn.BCEWithLogitsLoss):
    """``torch.nn.BCEWithLogitsLoss`` (``weight`` and ``pos_weight`` buffers) with the explicit backward
    of :func:`manual_bp.functional.binary_cross_entropy_with_logits`.

    >>> import torch, manual_bp
    >>> loss = manual_bp.BCEWithLogitsLoss(pos_weight=torch.ones(3))
    >>> loss(torch.randn(2, 3, requires_grad=True), torch.rand(2, 3)).grad_fn.name()
    'BinaryCrossEntropyWithLogitsFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(
            input, target, self.weight, pos_weight=self.pos_weight, reduction=self.reduction
        )


class KLDivLoss(nn.KLDivLoss):
    """``torch.nn.KLDivLoss`` with the explicit backward of :func:`manual_bp.functional.kl_div`.

    >>> import torch, manual_bp
    >>> x = torch.randn(2, 3, requires_grad=True).log_softmax(-1)
    >>> manual_bp.KLDivLoss(reduction="batchmean")(x, torch.rand(2, 3)).grad_fn.name()
    'KLDivFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` (logits; class indices or probabilities, class weights,
    ``ignore_index``, ``label_smoothing``) with the explicit backward of
    :func:`manual_bp.functional.cross_entropy`.

    >>> import torch, manual_bp
    >>> loss = manual_bp.CrossEntropyLoss(label_smoothing=0.1)
    >>> loss(torch.randn(2, 3, requires_grad=True), torch.tensor([0, 2])).grad_fn.name()
    'CrossEntropyFunctionBackward'
    """

    __module__ = "manual_bp.modules"  # its public home (the drop-in layers)

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        check_reduction(self.reduction)  # at construction, as HalfSquaredError does

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            input,
            target,
            self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


def _hse_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    out = []
    for reduction in ("mean", "sum", "none"):
        kw = {"reduction": reduction}
        for b in BATCHES:
            pair = (tensor((*b, 3), dtype, device), tensor((*b, 3), dtype, device))
            nan = reduction == "mean" and 0 in b
            out.append(Sample(pair, kw, f"{reduction}, batch {list(b)}", finite=not nan))
        pair = (noncontiguous((4, 3), dtype, device), noncontiguous((4, 3), dtype, device))
        out.append(Sample(pair, kw, f"{reduction}, non-contiguous"))
    return out


def half_squared_error_reference(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """The seed's ``c = ½‖y − t‖²`` per sample with native ops and autograd, reduced: the reference."""
    per_sample = 0.5 * ((input - target) ** 2).sum(-1)
    return {"mean": per_sample.mean, "sum": per_sample.sum, "none": lambda: per_sample}[reduction]()


# ----------------------------------------------------------------------------- samples
def _leaf(t: Tensor, grad: bool = True) -> Tensor:
    return t.detach().requires_grad_(grad)


def _difference_pair(
    x_shape: tuple[int, ...],
    t_shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    kinks: list[float],
) -> tuple[Tensor, Tensor]:
    """Input and target whose difference (the broadcast shape) lies ``0.1`` or more from ``kinks``."""
    if torch.broadcast_shapes(x_shape, t_shape) == x_shape:
        t = tensor(t_shape, dtype, device)
        return _leaf(t + tensor(x_shape, dtype, device, kinks)), t
    x = tensor(x_shape, dtype, device)
    return x, _leaf(x - tensor(t_shape, dtype, device, kinks))


def _difference_samples(
    kinks: list[float],
    weighted: Callable[[str], tuple[Any, ...]] | None,
    legacy: bool,
    option: dict[str, float],
) -> Any:
    """Samples of a loss of ``d = y − t``: each reduction, unbatched, empty, non-contiguous,
    broadcasting either side, an elementwise weight (passed by position, so that the checks
    differentiate it: ``weighted(reduction)`` gives the arguments between target and weight), the
    op's parameter, the legacy arguments."""

    def make(dtype: torch.dtype, device: torch.device) -> list[Sample]:
        def pair(x: tuple[int, ...], t: tuple[int, ...]) -> tuple[Tensor, Tensor]:
            return _difference_pair(x, t, dtype, device, kinks)

        x_nc = noncontiguous((4, 3), dtype, device)
        out = [
            Sample(pair((4, 3), (4, 3)), {"reduction": "mean"}, "mean"),
            Sample(pair((3,), (3,)), {"reduction": "sum"}, "sum, no batch dim"),
            Sample(
                (x_nc, _leaf(x_nc - tensor((4, 3), dtype, device, kinks))),
                {"reduction": "none"},
                "none, non-contiguous",
            ),
            Sample(pair((4, 3), (1, 3)), {"reduction": "mean"}, "mean, target broadcast"),
            Sample(pair((4, 1), (4, 3)), {"reduction": "sum"}, "sum, input broadcast"),
            Sample(pair((0, 3), (0, 3)), {"reduction": "sum"}, "sum, empty batch"),
            Sample(pair((0, 3), (0, 3)), {"reduction": "mean"}, "mean, empty batch", finite=False),
            Sample(pair((4, 3), (4, 3)), {"reduction": "mean", **option}, f"mean, {option}"),
        ]
        if weighted:
            w = make_tensor((4, 3), dtype=dtype, device=device, low=0.5, high=2.0, requires_grad=True)
            out += [
                Sample((*pair((4, 3), (4, 3)), *weighted(red), w), {}, f"{red}, weight")
                for red in ("mean", "none")
            ]
        if legacy:
            out.append(Sample(pair((4, 3), (4, 3)), {"size_average": False}, "size_average=False (sum)"))
        return out

    return make


def _probabilities(
    shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, grad: bool = True
) -> Tensor:
    """Values in ``[0.05, 0.95]``: probabilities away from the ends, where the logs blow up."""
    return make_tensor(shape, dtype=dtype, device=device, low=0.05, high=0.95, requires_grad=grad)


def _bce_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def pair(*shape: int) -> tuple[Tensor, Tensor]:
        return _probabilities(shape, dtype, device), _probabilities(shape, dtype, device)

    w = make_tensor((3,), dtype=dtype, device=device, low=0.5, high=2.0)
    x_nc = _leaf(_probabilities((3, 4), dtype, device, False).t())
    return [
        Sample(pair(4, 3), {"reduction": "mean"}, "mean"),
        Sample(pair(3), {"reduction": "sum"}, "sum, no batch dim"),
        Sample(pair(4, 3), {"weight": w, "reduction": "none"}, "none, weight broadcast"),
        Sample(pair(4, 3), {"weight": _probabilities((4, 3), dtype, device, False)}, "mean, weight"),
        Sample((x_nc, _probabilities((4, 3), dtype, device)), {"reduction": "sum"}, "sum, non-contiguous"),
        Sample(pair(0, 3), {"reduction": "sum"}, "sum, empty batch"),
        Sample(pair(4, 3), {"reduce": False}, "reduce=False (none)"),
    ]


def _bce_logits_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def pair(*shape: int) -> tuple[Tensor, Tensor]:
        return tensor(shape, dtype, device), _probabilities(shape, dtype, device)

    def positive(*shape: int) -> Tensor:
        return make_tensor(shape, dtype=dtype, device=device, low=0.5, high=3.0)

    return [
        Sample(pair(4, 3), {"reduction": "mean"}, "mean"),
        Sample(pair(3), {"reduction": "sum"}, "sum, no batch dim"),
        Sample(pair(4, 3), {"weight": positive(3), "reduction": "none"}, "none, weight"),
        Sample(pair(4, 3), {"pos_weight": positive(3)}, "mean, pos_weight"),
        Sample(
            (noncontiguous((4, 3), dtype, device), _probabilities((4, 3), dtype, device)),
            {"weight": positive(4, 1), "pos_weight": positive(3), "reduction": "sum"},
            "sum, weight and pos_weight, non-contiguous",
        ),
        Sample(pair(0, 3), {"reduction": "sum"}, "sum, empty batch"),
        Sample(pair(4, 3), {"size_average": False}, "size_average=False (sum)"),
    ]


def _kl_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def log_p(*shape: int) -> Tensor:
        return _leaf(torch.log_softmax(tensor(shape, dtype, device), -1))

    def p(*shape: int) -> Tensor:
        return _leaf(torch.softmax(tensor(shape, dtype, device), -1))

    return [
        Sample((log_p(4, 3), p(4, 3)), {"reduction": "batchmean"}, "batchmean"),
        Sample((log_p(4, 3), p(4, 3)), {"reduction": "sum"}, "sum"),
        Sample((log_p(4, 3), p(4, 3)), {"reduction": "mean"}, "mean"),
        Sample((_leaf(log_p(3, 4).t()), p(4, 3)), {"reduction": "none"}, "none, non-contiguous"),
        Sample((log_p(4, 3), log_p(4, 3)), {"reduction": "batchmean", "log_target": True}, "log_target"),
        Sample((log_p(3), p(3)), {"reduction": "batchmean"}, "batchmean, no batch dim"),
        Sample((log_p(4, 3), p(1, 3)), {"reduction": "sum"}, "sum, target broadcast"),
        Sample((log_p(4, 3), p(4, 3)), {"reduce": False}, "reduce=False (none)"),
    ]


def _indices(shape: tuple[int, ...], classes: int, device: torch.device, ignored: int = 0) -> Tensor:
    """Class indices in ``[0, classes)``, the first ``ignored`` of them set to ``-100``."""
    t = torch.randint(0, classes, shape, device=device)
    t.view(-1)[:ignored] = -100
    return t


def _nll_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    w = make_tensor((4,), dtype=dtype, device=device, low=0.5, high=2.0)
    return [
        Sample((tensor((5, 4), dtype, device), _indices((5,), 4, device)), {}, "mean"),
        Sample(
            (tensor((4,), dtype, device), _indices((), 4, device)), {"reduction": "sum"}, "sum, no batch dim"
        ),
        Sample(
            (tensor((5, 4), dtype, device), _indices((5,), 4, device, ignored=2)),
            {"weight": w},
            "mean, weight, ignore_index",
        ),
        Sample(
            (tensor((2, 4, 3), dtype, device), _indices((2, 3), 4, device)),
            {"reduction": "none"},
            "none, (N, C, d)",
        ),
        Sample(
            (tensor((2, 4, 3), dtype, device), _indices((2, 3), 4, device, ignored=1)),
            {"weight": w, "ignore_index": -100},
            "mean, (N, C, d), weight, ignore_index",
        ),
        Sample(
            (tensor((0, 4), dtype, device), _indices((0,), 4, device)),
            {"reduction": "sum"},
            "sum, empty batch",
        ),
        Sample(
            (noncontiguous((5, 4), dtype, device), _indices((5,), 4, device)),
            {"reduce": False},
            "reduce=False, non-contiguous",
        ),
    ]


def _ce_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def probs(*shape: int, dim: int = -1) -> Tensor:
        return _leaf(torch.softmax(make_tensor(shape, dtype=dtype, device=device), dim))

    def weight(grad: bool = False) -> Tensor:
        return make_tensor((4,), dtype=dtype, device=device, low=0.5, high=2.0, requires_grad=grad)

    x = lambda *shape: tensor(shape, dtype, device)  # noqa: E731
    return [
        Sample((x(5, 4), _indices((5,), 4, device)), {}, "mean, indices"),
        Sample((x(4), _indices((), 4, device)), {"reduction": "sum"}, "sum, no batch dim"),
        Sample((x(0, 4), _indices((0,), 4, device)), {"reduction": "sum"}, "sum, empty batch"),
        Sample(
            (noncontiguous((5, 4), dtype, device), _indices((5,), 4, device, ignored=2)),
            {"weight": weight(), "reduction": "none"},
            "none, weight, ignore_index, non-contiguous",
        ),
        Sample(
            (x(5, 4), _indices((5,), 4, device, ignored=1)),
            {"weight": weight(), "label_smoothing": 0.2},
            "mean, weight, ignore_index, label_smoothing",
        ),
        Sample(
            (x(2, 4, 3), _indices((2, 3), 4, device, ignored=1)),
            {"label_smoothing": 0.1, "reduction": "none"},
            "none, (N, C, d), ignore_index, label_smoothing",
        ),
        Sample((x(5, 4), probs(5, 4), weight(grad=True)), {}, "mean, probabilities, weight"),
        Sample(
            (x(5, 4), probs(5, 4)),
            {"label_smoothing": 0.3, "reduction": "sum"},
            "sum, probabilities, label_smoothing",
        ),
        Sample(
            (x(2, 4, 3), probs(2, 4, 3, dim=1)),
            {"weight": weight(), "label_smoothing": 0.1, "reduction": "none"},
            "none, (N, C, d), probabilities, weight, label_smoothing",
        ),
        Sample((x(4), probs(4), weight(grad=True)), {}, "mean, probabilities, weight, no batch dim"),
    ]


# ----------------------------------------------------------------------------- registry
LOSS_OPS: tuple[Op, ...] = (
    Op(
        "half_squared_error",
        half_squared_error,
        half_squared_error_reference,
        _hse_samples,
        HalfSquaredErrorFunction,
        modules=((None, HalfSquaredError),),
        formula=r"BP1's first factor: $\partial c/\partial y = y - t$, $\partial c/\partial t = -(y - t)$",
    ),
    Op(
        "mse_loss",
        mse_loss,
        F.mse_loss,
        _difference_samples([], weighted=lambda red: (None, None, red), legacy=True, option={}),
        MSELossFunction,
        modules=((nn.MSELoss, MSELoss),),
        torch_functions=(F.mse_loss,),
        formula=r"BP1: $\partial c/\partial y = 2 s\,w \odot (y - t)$, "
        r"$\partial c/\partial t = -\partial c/\partial y$",
    ),
    Op(
        "l1_loss",
        l1_loss,
        F.l1_loss,
        _difference_samples([0.0], weighted=lambda red: (None, None, red), legacy=True, option={}),
        L1LossFunction,
        modules=((nn.L1Loss, L1Loss),),
        torch_functions=(F.l1_loss,),
        formula=r"BP1: $\partial c/\partial y = s\,w \odot \operatorname{sign}(y - t)$, "
        r"$\partial c/\partial t = -\partial c/\partial y$",
    ),
    Op(
        "smooth_l1_loss",
        smooth_l1_loss,
        F.smooth_l1_loss,
        _difference_samples([-1.0, 1.0, -0.5, 0.5], weighted=None, legacy=True, option={"beta": 0.5}),
        SmoothL1LossFunction,
        modules=((nn.SmoothL1Loss, SmoothL1Loss),),
        torch_functions=(F.smooth_l1_loss,),
        formula=r"BP1: $\partial c/\partial y = s\,d/\beta$ for $|d| < \beta$, "
        r"else $s\,\operatorname{sign} d$ ($d = y - t$)",
    ),
    Op(
        "huber_loss",
        huber_loss,
        F.huber_loss,
        _difference_samples(
            [-1.0, 1.0, -0.5, 0.5], weighted=lambda red: (red, 1.0), legacy=False, option={"delta": 0.5}
        ),
        HuberLossFunction,
        modules=((nn.HuberLoss, HuberLoss),),
        torch_functions=(F.huber_loss,),
        formula=r"BP1: $\partial c/\partial y = s\,w \odot \operatorname{clamp}(y - t, -\delta, \delta)$",
    ),
    Op(
        "binary_cross_entropy",
        binary_cross_entropy,
        F.binary_cross_entropy,
        _bce_samples,
        BinaryCrossEntropyFunction,
        modules=((nn.BCELoss, BCELoss),),
        torch_functions=(F.binary_cross_entropy,),
        formula=r"BP1: $\partial c/\partial y = s\,w \odot \frac{y - t}{y(1 - y)}$, "
        r"$\partial c/\partial t = s\,w \odot (\log(1 - y) - \log y)$",
    ),
    Op(
        "binary_cross_entropy_with_logits",
        binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        _bce_logits_samples,
        BinaryCrossEntropyWithLogitsFunction,
        modules=((nn.BCEWithLogitsLoss, BCEWithLogitsLoss),),
        torch_functions=(F.binary_cross_entropy_with_logits,),
        formula=r"BP1: $\partial c/\partial z = s\,w \odot (\sigma(z) - t)$ "
        r"(with $p_w$: $s\,w \odot ((1 - t) - (1 + (p_w - 1)t)\,\sigma(-z))$)",
    ),
    Op(
        "kl_div",
        kl_div,
        F.kl_div,
        _kl_samples,
        KLDivFunction,
        modules=((nn.KLDivLoss, KLDivLoss),),
        torch_functions=(F.kl_div,),
        formula=r"BP1: $\partial c/\partial y = -s\,t$, $\partial c/\partial t = s\,(\log t + 1 - y)$",
    ),
    Op(
        "nll_loss",
        nll_loss,
        F.nll_loss,
        _nll_samples,
        NLLLossFunction,
        modules=((nn.NLLLoss, NLLLoss),),
        torch_functions=(F.nll_loss,),
        formula=r"BP1: $\partial c/\partial y_{ik} = -s\,w_{t_i} [k = t_i]$ (a scatter on the target column)",
    ),
    Op(
        "cross_entropy",
        cross_entropy,
        F.cross_entropy,
        _ce_samples,
        CrossEntropyFunction,
        modules=((nn.CrossEntropyLoss, CrossEntropyLoss),),
        torch_functions=(F.cross_entropy,),
        formula=r"BP1's first factor: "
        r"$\partial c/\partial z = s\,(\operatorname{softmax}(z) \textstyle\sum_k a_k - a)$, "
        r"$a = w \odot q$; one-hot $q$: $\operatorname{softmax}(z) - \operatorname{onehot}(t)$",
    ),
)
