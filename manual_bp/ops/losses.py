r"""Losses: the seed's error ``c = ½‖y − t‖²`` per sample (LOSS; its backward is BP1's first factor
``y − t``), and cross-entropy on logits.
"""

from __future__ import annotations

import math
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
    "CrossEntropyFunction",
    "CrossEntropyLoss",
    "HalfSquaredError",
    "HalfSquaredErrorFunction",
    "cross_entropy",
    "half_squared_error",
    "half_squared_error_reference",
    "scale_of_reduction",
]

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(per_sample: Tensor, reduction: str, count: int | Tensor) -> Tensor:
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    return total / count if reduction == "mean" else total


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


class CrossEntropyFunction(ManualFunction):
    r"""Cross-entropy of logits ``z (*, C)`` against class indices or class probabilities.

    With per-class coefficients ``a_i`` (``w_{t_i}·onehot(t_i)`` for indices, ``w ⊙ q_i`` for
    probabilities) and ``p = softmax(z)``:

    .. math::
        c_i = -\sum_k a_{ik} \log p_{ik}, \qquad
        \frac{\partial c_i}{\partial z_i} = p_i \textstyle\sum_k a_{ik} - a_i, \qquad
        \frac{\partial c_i}{\partial q_i} = -w \odot \log p_i, \qquad
        \frac{\partial c_i}{\partial w} = -q_i \odot \log p_i

    As in torch, ``weight`` is differentiable for class probabilities only.
    """

    @staticmethod
    def forward(
        input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str
    ) -> Tensor:
        log_p = torch.log_softmax(input, -1)
        coef, count = _ce_coefficients(input, target, weight, ignore_index)
        per_sample = -(coef * log_p).sum(-1)  # (*, C) -> (*)
        return _reduce(per_sample, reduction, count)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, target, weight, ignore_index, reduction = inputs
        ctx.save_for_backward(input, target, weight)
        ctx.ignore_index, ctx.reduction = ignore_index, reduction

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, target, weight = ctx.saved_tensors
        coef, count = _ce_coefficients(input, target, weight, ctx.ignore_index)
        scale = scale_of_reduction(grad_output, ctx.reduction, count)
        grad_input = grad_target = None
        if ctx.needs_input_grad[0]:
            p = torch.softmax(input, -1)
            grad_input = scale * (p * coef.sum(-1, keepdim=True) - coef)  # p Σa − a
        grad_weight = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:  # class probabilities only
            log_p = torch.log_softmax(input, -1)
            if ctx.needs_input_grad[1]:
                w = weight if weight is not None else 1.0
                grad_target = scale * (-w * log_p)  # −w ⊙ log p
            if ctx.needs_input_grad[2]:
                # ∂c/∂w = Σ_rows −q ⊙ log p; (*, C) -> (N, C) -> (C,)
                grad_weight = (scale * (-target * log_p)).reshape(-1, input.shape[-1]).sum(0)
        return grad_input, grad_target, grad_weight, None, None


def _ce_coefficients(
    input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int
) -> tuple[Tensor, Tensor | int]:
    """Per-class coefficients ``a`` (shape of ``input``) and the normaliser of ``'mean'``."""
    if target.dtype == torch.long:  # class indices
        keep = target != ignore_index
        safe = torch.where(keep, target, torch.zeros_like(target)).unsqueeze(-1)
        w_t = (
            weight.gather(0, safe.reshape(-1)).reshape(safe.shape)
            if weight is not None
            else torch.ones(safe.shape, dtype=input.dtype, device=input.device)
        )
        w_t = w_t * keep.unsqueeze(-1).to(input.dtype)  # (*, 1)
        coef = torch.zeros_like(input).scatter(-1, safe, w_t)
        return coef, w_t.sum()
    coef = target * weight if weight is not None else target  # class probabilities
    return coef, input.numel() // input.shape[-1] if input.shape[-1] else 0


def _cross_entropy_k_dim(
    input: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str
) -> Tensor:
    """``(N, C, d_1, …, d_K)`` logits: class axis last, flattened to ``(N·d_1⋯d_K, C)`` rows."""
    classes = input.shape[1]
    rows = input.movedim(1, -1)  # (N, d_1, …, d_K, C)
    if isinstance(target, Tensor) and target.is_floating_point():
        if target.shape != input.shape:
            raise ValueError(
                f"class-probability target must have the input's shape {tuple(input.shape)}, "
                f"got {tuple(target.shape)}"
            )
        flat_target = target.movedim(1, -1).reshape(-1, classes)
    else:
        expected = (input.shape[0], *input.shape[2:])
        if not isinstance(target, Tensor) or target.shape != expected:
            got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ValueError(
                f"class-index target must have shape {expected} for input of shape "
                f"{tuple(input.shape)}, got {got}"
            )
        flat_target = target.reshape(-1)
    loss = cross_entropy(rows.reshape(-1, classes), flat_target, weight, ignore_index, reduction)
    return loss.reshape(rows.shape[:-1]) if reduction == "none" else loss


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy of logits with an explicit backward, with ``torch.nn.functional``'s semantics.

    Shape: ``input (N, C)`` or ``(C,)``; ``target`` class indices ``(N,)`` / ``()`` (int64, in
    ``[0, C)`` or ``ignore_index``) or class probabilities of ``input``'s shape; ``weight (C,)``.
    ``input (N, C, d_1, …, d_K)`` with targets ``(N, d_1, …, d_K)`` (or probabilities of the
    input's shape) works as in torch: the class axis is moved last and the rest flattened.
    ``'mean'`` divides by the summed weights of the non-ignored targets (indices) or by ``N``
    (probabilities), as torch does. Label smoothing is not supported. Under autocast it runs in
    float32, as the native op does.
    """
    check_floating("input", input)
    check_reduction(reduction)
    if input.dim() == 0:
        raise ValueError(
            "cross_entropy expected input of shape (N, C), (C,) or (N, C, d_1, ..., d_K), got a 0-d tensor"
        )
    if input.dim() > 2:
        return _cross_entropy_k_dim(input, target, weight, ignore_index, reduction)
    if autocast_dtype(input) is not None:
        input = to_float32(input)
        if target.is_floating_point():
            target = to_float32(target)
        if weight is not None:
            weight = to_float32(weight)
    if target.is_floating_point():
        if target.shape != input.shape:
            raise ValueError(
                f"class-probability target must have the input's shape {tuple(input.shape)}, "
                f"got {tuple(target.shape)}"
            )
        check_same("target", target, "input", input)
        if ignore_index >= 0:  # torch refuses it too (a negative one names no class, so it is harmless)
            raise ValueError(
                "ignore_index is not supported with class-probability targets (as in torch), "
                f"got ignore_index={ignore_index}"
            )
    elif target.dtype in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        if target.shape != input.shape[:-1]:
            raise ValueError(
                f"class-index target must have shape {tuple(input.shape[:-1])} for input of shape "
                f"{tuple(input.shape)}, got {tuple(target.shape)}"
            )
        target = target.long()
        if target.device != input.device:
            raise ValueError(
                f"target and input must be on the same device, got target on {target.device} "
                f"and input on {input.device}"
            )
        # a data-dependent check: not possible while compiling or under vmap (there an index out of
        # range fails in the Function's scatter instead)
        traced = torch.compiler.is_compiling() or functorch_active()
        if not traced and target.numel():
            bad = (target != ignore_index) & ((target < 0) | (target >= input.shape[-1]))
            if bool(bad.any()):
                raise ValueError(
                    f"class-index target must lie in [0, {input.shape[-1]}) or equal "
                    f"ignore_index={ignore_index}, got {target[bad][0].item()}"
                )
    else:
        raise TypeError(
            f"target must hold int64 class indices or float class probabilities, got {target.dtype}"
        )
    if weight is not None:
        check_floating("weight", weight)
        if weight.shape != (input.shape[-1],):
            raise ValueError(f"weight must have shape ({input.shape[-1]},), got {tuple(weight.shape)}")
        check_same("weight", weight, "input", input)
        if not target.is_floating_point() and weight.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "cross_entropy with class-index targets is not differentiable with respect to weight "
                "(as in torch); detach the weight or pass class probabilities"
            )
    return CrossEntropyFunction.apply(input, target, weight, int(ignore_index), reduction)


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


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` (logits and class indices or probabilities), explicit backward.

    ``label_smoothing`` other than 0 is not supported.
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
        if label_smoothing != 0.0:
            raise ValueError(
                f"manual_bp.CrossEntropyLoss supports label_smoothing=0.0 only, got {label_smoothing}"
            )
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        check_reduction(self.reduction)  # at construction, as HalfSquaredError does

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(input, target, self.weight, self.ignore_index, self.reduction)


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


def _ce_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def idx(shape: tuple[int, ...]) -> Tensor:
        return torch.randint(0, 4, shape, device=device)

    def probs(n: int) -> Tensor:
        return torch.softmax(make_tensor((n, 4), dtype=dtype, device=device), -1).requires_grad_(True)

    weight = make_tensor((4,), dtype=dtype, device=device, low=0.5, high=2.0)
    out = []
    for reduction in ("mean", "sum", "none"):
        kw = {"reduction": reduction}
        out += [
            Sample((tensor((5, 4), dtype, device), idx((5,))), kw, f"{reduction}, indices"),
            Sample((tensor((4,), dtype, device), idx(())), kw, f"{reduction}, no batch dim"),
            Sample(
                (tensor((0, 4), dtype, device), idx((0,))),
                kw,
                f"{reduction}, empty batch",
                reduction != "mean",
            ),
            Sample(
                (noncontiguous((5, 4), dtype, device), idx((5,))),
                {**kw, "weight": weight},
                f"{reduction}, weight",
            ),
            Sample(
                (tensor((5, 4), dtype, device), torch.tensor([0, -100, 3, 1, -100], device=device)),
                kw,
                f"{reduction}, ignore_index",
            ),
            Sample((tensor((5, 4), dtype, device), probs(5)), kw, f"{reduction}, probabilities"),
        ]
    return out


LOSS_OPS: tuple[Op, ...] = (
    Op(
        "half_squared_error",
        half_squared_error,
        half_squared_error_reference,
        _hse_samples,
        HalfSquaredErrorFunction,
        modules=((None, HalfSquaredError),),
    ),
    Op(
        "cross_entropy",
        cross_entropy,
        F.cross_entropy,
        _ce_samples,
        CrossEntropyFunction,
        modules=((nn.CrossEntropyLoss, CrossEntropyLoss),),
        torch_functions=(F.cross_entropy,),
    ),
)
