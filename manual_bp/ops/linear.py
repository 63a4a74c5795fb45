r"""Linear: FF ``x_{n+1} = y_n Wᵀ + b``; BP2's linear half ``δ_{n+1} W``; BP3 ``δ_{n+1}ᵀ y_n``
and ``Σ_rows δ_{n+1}``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manual_bp._function import (
    _FLOATING,
    ManualFunction,
    autocast_cast,
    autocast_dtype,
    check_feedback,
    check_floating,
    check_same,
)
from manual_bp._torch_private import autocast_on
from manual_bp.ops._op import BATCHES, Op, Sample, noncontiguous, tensor

__all__ = [
    "LINEAR_OPS",
    "FeedbackLayer",
    "FeedbackLinearFunction",
    "Linear",
    "LinearFunction",
    "linear",
    "linear_feedback",
]


class LinearFunction(ManualFunction):
    r"""``y = x Wᵀ + b``.

    .. math::
        \frac{\partial c}{\partial x} = \delta W, \quad
        \frac{\partial c}{\partial W} = \delta^\top x, \quad
        \frac{\partial c}{\partial b} = \textstyle\sum_{\text{rows}} \delta
    """

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(input, weight, bias)  # FF: (*, D_in) @ (D_in, D_out) -> (*, D_out)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, weight, bias = inputs
        needs = ctx.needs_input_grad
        # W only for ∂c/∂x = δ W, x only for ∂c/∂W = δᵀ x (as native autograd keeps them): under
        # autocast they are casts, new memory
        ctx.save_for_backward(input if needs[1] else None, weight if needs[0] else None)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        flat = grad_output.dim() == 2  # a plain batch: mm, and no reshapes (a few µs less per call)
        grad_input = grad_weight = grad_bias = None
        if needs[0]:
            # BP2, linear half: δ_n' = δ_{n+1} W; (*, D_out) @ (D_out, D_in) -> (*, D_in)
            grad_input = grad_output.mm(weight) if flat else grad_output.matmul(weight)
        if needs[1] or (ctx.has_bias and needs[2]):
            delta = (
                grad_output if flat else grad_output.reshape(-1, grad_output.shape[-1])
            )  # (*, D_out) -> (N, D_out)
            if needs[1]:
                # BP3: ∂c/∂W = δᵀ y; (D_out, N) @ (N, D_in) -> (D_out, D_in)
                grad_weight = delta.t().mm(input if flat else input.reshape(-1, input.shape[-1]))
            if ctx.has_bias and needs[2]:
                grad_bias = delta.sum(0)  # BP3: ∂c/∂b = Σ_rows δ; (N, D_out) -> (D_out,)
        return grad_input, grad_weight, grad_bias


class FeedbackLinearFunction(LinearFunction):
    r"""``y = x Wᵀ + b`` whose BP2 multiplies δ by a feedback matrix ``B`` (W's shape) instead of ``W``.

    .. math::
        \delta_x = \delta B, \quad
        \frac{\partial c}{\partial W} = \delta^\top x, \quad
        \frac{\partial c}{\partial b} = \textstyle\sum_{\text{rows}} \delta

    The feedback rules of :mod:`manual_bp.feedback` (feedback alignment, sign symmetry) change only
    BP2, so this is :class:`LinearFunction` with ``B`` kept where it keeps ``W``: its backward is the
    same written-out formula, read with ``B``. ``B`` gets no gradient.
    """

    @staticmethod
    def forward(input: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor) -> Tensor:  # type: ignore[override]
        return F.linear(input, weight, bias)  # FF: (*, D_in) @ (D_in, D_out) -> (*, D_out)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, _, bias, feedback = inputs
        LinearFunction.setup_context(ctx, (input, feedback, bias), output)  # B where W would be

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return (*LinearFunction.backward(ctx, grad_output), None)  # BP2: δ B; BP3 unchanged


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight.T + bias`` with the explicit backward of :class:`LinearFunction`.

    Shape: ``input (*, D_in)``, ``weight (D_out, D_in)``, ``bias (D_out,)`` -> ``(*, D_out)``.
    Under ``torch.autocast`` the inputs are cast like the native ``linear`` (float64 untouched)
    and gradients flow back in each parameter's own dtype.
    """
    if not autocast_on() and _linear_args_ok(input, weight, bias):
        return LinearFunction.apply(input, weight, bias)  # the common case, checked cheaply
    _check_linear(input, weight, bias)
    cast = autocast_dtype(input)
    if cast is not None:
        input, weight, bias = (autocast_cast(t, cast) for t in (input, weight, bias))  # type: ignore[assignment]
    check_same("input", input, "weight", weight)
    if bias is not None:
        check_same("bias", bias, "weight", weight)
    return LinearFunction.apply(input, weight, bias)


def linear_feedback(input: Tensor, weight: Tensor, bias: Tensor | None = None, *, feedback: Tensor) -> Tensor:
    """:func:`linear` whose BP2 is ``δ feedback`` (:class:`FeedbackLinearFunction`): the input's
    gradient goes back through ``feedback``, a tensor of ``weight``'s shape, instead of ``weight``.

    >>> import torch
    >>> w = torch.randn(2, 3, requires_grad=True)
    >>> linear_feedback(torch.randn(4, 3), w, feedback=torch.randn(2, 3)).grad_fn.name()
    'FeedbackLinearFunctionBackward'
    """
    _check_linear(input, weight, bias)
    check_feedback(feedback, weight)
    cast = autocast_dtype(input)
    if cast is not None:
        input, weight, bias, feedback = (autocast_cast(t, cast) for t in (input, weight, bias, feedback))  # type: ignore[assignment]
    check_same("input", input, "weight", weight)
    if bias is not None:
        check_same("bias", bias, "weight", weight)
    check_same("feedback", feedback, "weight", weight)
    return FeedbackLinearFunction.apply(input, weight, bias, feedback)


def _linear_args_ok(input: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """One cheap test that the arguments need no cast and would pass every check of ``_check_linear``
    (dtypes are singletons, so ``is`` compares them; a 0-d input fails on ``shape[-1]``)."""
    try:
        dtype = weight.dtype
        return (
            input.dtype is dtype
            and dtype in _FLOATING
            and weight.ndim == 2
            and input.shape[-1] == weight.shape[1]
            and input.device == weight.device
            and (
                bias is None
                or (bias.dtype is dtype and bias.shape == weight.shape[:1] and bias.device == weight.device)
            )
        )
    except (AttributeError, IndexError):  # not tensors, or a 0-d input: let _check_linear say so
        return False


def _check_linear(input: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    """Raise a clear error for arguments ``linear`` cannot take (dtype and device checked after casts)."""
    check_floating("input", input)
    check_floating("weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {tuple(weight.shape)}")
    if input.dim() == 0 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear expected input of shape (*, {weight.shape[1]}) (in_features={weight.shape[1]}), "
            f"got shape {tuple(input.shape)}"
        )
    if bias is not None:
        check_floating("bias", bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},), got shape {tuple(bias.shape)}")


class FeedbackLayer:
    """What the drop-in layers whose BP2 reads a weight (``Linear``, the convolutions) share for the
    feedback rules of :mod:`manual_bp.feedback`: the rule, ``"backprop"`` unless one is set, and
    room for a ``dfa`` matrix that a ``state_dict`` brings before the first forward has drawn it."""

    #: the feedback rule of BP2 (:func:`manual_bp.feedback.set_feedback`); ``"backprop"``: ``δ W``
    feedback_rule = "backprop"

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any) -> None:
        m: Any = self
        key = prefix + "feedback_weight"
        if key in state_dict and m._buffers.get("feedback_weight", 0) is None:  # registered, not drawn
            m._buffers["feedback_weight"] = torch.empty_like(state_dict[key], device=m.weight.device)
        super()._load_from_state_dict(state_dict, prefix, *args)  # type: ignore[misc]


class Linear(FeedbackLayer, nn.Linear):
    """``torch.nn.Linear`` with the explicit backward of :func:`manual_bp.functional.linear`.

    Shape ``(*, in_features) -> (*, out_features)``; ``weight (out_features, in_features)`` and
    ``bias (out_features,)``, initialised as ``torch.nn.Linear`` does.

    >>> import torch, manual_bp
    >>> layer = manual_bp.Linear(3, 2)
    >>> layer(torch.randn(4, 3)).grad_fn.name()
    'LinearFunctionBackward'
    """

    __module__ = "manual_bp.modules"  # its public home (the drop-in layers)

    def forward(self, input: Tensor) -> Tensor:
        if self.feedback_rule == "backprop":
            return linear(input, self.weight, self.bias)
        from manual_bp.feedback import feedback_forward

        return feedback_forward(self, input, self.weight, self.bias)

    def manual_forward(
        self, input: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor | None
    ) -> Tensor:
        """The layer with BP2 through ``feedback`` (``weight`` itself when ``None``)."""
        if feedback is None:
            return linear(input, weight, bias)
        return linear_feedback(input, weight, bias, feedback=feedback)


def _samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    out = []
    for bias in (True, False):
        tag = "bias" if bias else "no bias"
        for b in BATCHES:
            w = tensor((2, 3), dtype, device)
            x = tensor((*b, 3), dtype, device)
            out.append(
                Sample((x, w, tensor((2,), dtype, device) if bias else None), label=f"{tag}, batch {list(b)}")
            )
        w = noncontiguous((2, 3), dtype, device)
        x = noncontiguous((5, 3), dtype, device)
        out.append(
            Sample((x, w, tensor((2,), dtype, device) if bias else None), label=f"{tag}, non-contiguous")
        )
    return out


LINEAR_OPS: tuple[Op, ...] = (
    Op(
        "linear",
        linear,
        F.linear,
        _samples,
        LinearFunction,
        modules=((nn.Linear, Linear),),
        torch_functions=(F.linear,),
        feedback=linear_feedback,
        formula=(
            r"BP2: $\delta_x = \delta W$; BP3: $\partial c/\partial W = \delta^\top x$, "
            r"$\partial c/\partial b = \sum_{\text{rows}} \delta$"
        ),
    ),
)
