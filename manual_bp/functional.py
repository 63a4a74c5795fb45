r"""Stateless ops, each one ``torch.autograd.Function`` whose ``backward`` is explicit math.

Notation (row-major, as in ``torch.nn``): a batch is ``(*, D)``; ``W`` is ``(D_out, D_in)``;
``x`` is a layer's pre-activation, ``y = f(x)`` its output, ``δ = ∂c/∂x``. The seed's steps:

* FF  — ``linear``: ``x_{n+1} = y_n Wᵀ + b``; activations: ``y_n = f(x_n)``
* BP1 — ``half_squared_error`` gives ``y_N − t``; the output activation multiplies by ``f′(x_N)``
* BP2 — ``linear`` backward gives ``δ_{n+1} W``; the activation backward multiplies by ``f′(x_n)``
* BP3 — ``linear`` backward gives ``∂c/∂W = δ_{n+1}ᵀ y_n`` and ``∂c/∂b = Σ_rows δ_{n+1}``

Every ``backward`` is written with differentiable torch ops on saved tensors, so double backward
(``gradgradcheck``) works; no ``backward`` asks autograd for a derivative. Where ``f′`` is a
function of the output (sigmoid, tanh, relu, leaky_relu with slope ≥ 0, elu with α ≥ 0) only the
output is saved; otherwise the input is.

Each public function has the signature of its ``torch.nn.functional`` counterpart (without
``inplace``), checks its arguments, and calls ``<Name>Function.apply`` with every argument
positional.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from manual_bp import _activations as _act
from manual_bp._function import (
    _FLOATING,
    ManualFunction,
    autocast_cast,
    autocast_dtype,
    check_floating,
    check_reduction,
    check_same,
    in_place_ok,
)

if TYPE_CHECKING:  # at run time these load lazily, see __getattr__ at the end
    from manual_bp.mlp import MLPFunction, MLPLossFunction, mlp, mlp_loss

__all__ = [
    "CrossEntropyFunction",
    "MLPFunction",
    "MLPLossFunction",
    "ELUFunction",
    "GELUFunction",
    "HalfSquaredErrorFunction",
    "LeakyReLUFunction",
    "LinearFunction",
    "ReLUFunction",
    "SiLUFunction",
    "SigmoidFunction",
    "SoftplusFunction",
    "TanhFunction",
    "cross_entropy",
    "elu",
    "gelu",
    "half_squared_error",
    "leaky_relu",
    "linear",
    "mlp",
    "mlp_loss",
    "relu",
    "sigmoid",
    "silu",
    "softplus",
    "tanh",
]


_autocast_on = torch._C._is_any_autocast_enabled  # as autocast_enabled(), without the Python call
_REDUCTIONS = ("mean", "sum", "none")

# --------------------------------------------------------------------------------------------
# Linear: FF x_{n+1} = y_n Wᵀ + b; BP2 (first half) δ_{n+1} W; BP3 δ_{n+1}ᵀ y_n and Σ δ_{n+1}
# --------------------------------------------------------------------------------------------


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


def linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``input @ weight.T + bias`` with the explicit backward of :class:`LinearFunction`.

    Shape: ``input (*, D_in)``, ``weight (D_out, D_in)``, ``bias (D_out,)`` -> ``(*, D_out)``.
    Under ``torch.autocast`` the inputs are cast like the native ``linear`` (float64 untouched)
    and gradients flow back in each parameter's own dtype.
    """
    if not _autocast_on() and _linear_args_ok(input, weight, bias):
        return LinearFunction.apply(input, weight, bias)  # the common case, checked cheaply
    _check_linear(input, weight, bias)
    cast = autocast_dtype(input)
    if cast is not None:
        input, weight, bias = (autocast_cast(t, cast) for t in (input, weight, bias))  # type: ignore[assignment]
    check_same("input", input, "weight", weight)
    if bias is not None:
        check_same("bias", bias, "weight", weight)
    return LinearFunction.apply(input, weight, bias)


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


def _to_float32(tensor: Tensor) -> Tensor:
    """Cast like autocast does for a float32 op: float16 and bfloat16 up to float32, float64 untouched."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


# --------------------------------------------------------------------------------------------
# Activations: FF y = f(x); BP2 (second half) and BP1's f′ factor: grad_x = grad_y ⊙ f′(x)
# --------------------------------------------------------------------------------------------


class SigmoidFunction(ManualFunction):
    r"""``σ(x) = 1 / (1 + e^{-x})``; :math:`σ'(x) = y (1 - y)` from the saved output."""

    @staticmethod
    def forward(input: Tensor) -> Tensor:
        return torch.sigmoid(input)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return _SIGMOID.backward(grad_output, y, _mode(grad_output))  # ⊙ f′(x) = y (1 − y)


class TanhFunction(ManualFunction):
    r"""``tanh(x)``; :math:`\tanh'(x) = 1 - y^2` from the saved output."""

    @staticmethod
    def forward(input: Tensor) -> Tensor:
        return torch.tanh(input)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return _TANH.backward(grad_output, y, _mode(grad_output))  # ⊙ f′(x) = 1 − y²


class ReLUFunction(ManualFunction):
    r"""``max(x, 0)``; :math:`f'(x) = [y > 0]` from the saved output."""

    @staticmethod
    def forward(input: Tensor) -> Tensor:
        return torch.relu(input)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return _RELU.backward(grad_output, y, _mode(grad_output))  # ⊙ f′(x) = [x > 0] = [y > 0]


class LeakyReLUFunction(ManualFunction):
    r"""``x if x > 0 else s·x``; :math:`f'(x) = 1` if :math:`x > 0` else :math:`s`.

    With ``s ≥ 0`` the sign of the output is the sign of the input, so the output is saved;
    with ``s < 0`` the input is.
    """

    @staticmethod
    def forward(input: Tensor, negative_slope: float) -> Tensor:
        return F.leaky_relu(input, negative_slope)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, negative_slope = inputs
        ctx.act = _act.LeakyReLU(negative_slope)
        ctx.save_for_backward(output if ctx.act.from_output else input)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (saved,) = ctx.saved_tensors  # y if s ≥ 0 else x; either way [saved > 0] = [x > 0]
        return ctx.act.backward(grad_output, saved, _mode(grad_output)), None  # ⊙ f′(x) = 1 or s


class ELUFunction(ManualFunction):
    r"""``x if x > 0 else α(eˣ − 1)``; :math:`f'(x) = 1` if :math:`x > 0` else :math:`y + α`.

    With ``α ≥ 0`` the derivative is a function of the output alone, which is saved.
    """

    @staticmethod
    def forward(input: Tensor, alpha: float) -> Tensor:
        return F.elu(input, alpha)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, alpha = inputs
        ctx.act = _act.ELU(alpha)
        ctx.save_for_backward(output if ctx.act.from_output else input)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (saved,) = ctx.saved_tensors
        return ctx.act.backward(grad_output, saved, _mode(grad_output)), None  # ⊙ f′(x) = 1 or y + α


class SoftplusFunction(ManualFunction):
    r"""``log(1 + e^{βx}) / β``, linear where ``βx > threshold``; :math:`f'(x) = σ(βx)` (1 where linear)."""

    @staticmethod
    def forward(input: Tensor, beta: float, threshold: float) -> Tensor:
        return F.softplus(input, beta, threshold)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, beta, threshold = inputs
        ctx.save_for_backward(input)
        ctx.act = _act.Softplus(beta, threshold)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return ctx.act.backward(grad_output, x, _mode(grad_output)), None, None  # ⊙ f′(x) = σ(βx)


class GELUFunction(ManualFunction):
    r"""``x Φ(x)`` (or its tanh approximation).

    .. math::
        f'(x) = Φ(x) + x φ(x) \quad \text{(exact)}, \qquad
        f'(x) = \tfrac12 (1 + t) + \tfrac12 x (1 - t^2)\, k (1 + 3 c x^2),\;
        t = \tanh(k (x + c x^3)) \quad \text{(tanh)}
    """

    @staticmethod
    def forward(input: Tensor, approximate: str) -> Tensor:
        return F.gelu(input, approximate=approximate)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, approximate = inputs
        ctx.save_for_backward(input)
        ctx.act = _GELU[approximate]

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        return ctx.act.backward(grad_output, x, _mode(grad_output)), None  # ⊙ f′(x) = Φ(x) + x φ(x)


class SiLUFunction(ManualFunction):
    r"""``x σ(x)``; :math:`f'(x) = σ(x) (1 + x (1 − σ(x)))`."""

    @staticmethod
    def forward(input: Tensor) -> Tensor:
        return F.silu(input)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return _SILU.backward(grad_output, x, _mode(grad_output))  # ⊙ f′(x) = σ(x) (1 + x (1 − σ(x)))


_SIGMOID, _TANH, _RELU, _SILU = _act.Sigmoid(), _act.Tanh(), _act.ReLU(), _act.SiLU()
_GELU = {"none": _act.GELU("none"), "tanh": _act.GELU("tanh")}


def _mode(grad: Tensor) -> int:
    """In-place ops on temporaries where :func:`in_place_ok`, differentiable out-of-place ones otherwise."""
    return _act.FRESH if in_place_ok(grad) else _act.GRAPH


def _activation_input(input: Tensor) -> None:
    if not (isinstance(input, Tensor) and input.dtype in _FLOATING):
        check_floating("input", input)  # raises, naming what came


def sigmoid(input: Tensor) -> Tensor:
    """Logistic sigmoid with the explicit backward ``y (1 − y)``. Shape ``(*) -> (*)``."""
    _activation_input(input)
    return SigmoidFunction.apply(input)


def tanh(input: Tensor) -> Tensor:
    """Hyperbolic tangent with the explicit backward ``1 − y²``. Shape ``(*) -> (*)``."""
    _activation_input(input)
    return TanhFunction.apply(input)


def relu(input: Tensor) -> Tensor:
    """Rectified linear unit with the explicit backward ``[x > 0]``. Shape ``(*) -> (*)``."""
    _activation_input(input)
    return ReLUFunction.apply(input)


def leaky_relu(input: Tensor, negative_slope: float = 0.01) -> Tensor:
    """Leaky ReLU with the explicit backward ``1 or negative_slope``. Shape ``(*) -> (*)``."""
    _activation_input(input)
    return LeakyReLUFunction.apply(input, float(negative_slope))


def elu(input: Tensor, alpha: float = 1.0) -> Tensor:
    """ELU with the explicit backward ``1 or y + α``. Shape ``(*) -> (*)``."""
    _activation_input(input)
    return ELUFunction.apply(input, float(alpha))


def softplus(input: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """Softplus with the explicit backward ``σ(βx)``. Shape ``(*) -> (*)``.

    Under CUDA autocast it runs in float32, as the native op does.
    """
    _activation_input(input)
    if input.device.type == "cuda" and autocast_dtype(input) is not None:
        input = _to_float32(input)
    return SoftplusFunction.apply(input, float(beta), float(threshold))


def gelu(input: Tensor, approximate: str = "none") -> Tensor:
    """GELU (``approximate='none'`` or ``'tanh'``) with an explicit backward. Shape ``(*) -> (*)``."""
    _activation_input(input)
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return GELUFunction.apply(input, approximate)


def silu(input: Tensor) -> Tensor:
    """SiLU (swish) with the explicit backward ``σ(x)(1 + x(1 − σ(x)))``. Shape ``(*) -> (*)``."""
    _activation_input(input)
    return SiLUFunction.apply(input)


# --------------------------------------------------------------------------------------------
# Losses: LOSS c = ½‖y − t‖² per sample, and cross-entropy on logits
# --------------------------------------------------------------------------------------------


def _reduce(per_sample: Tensor, reduction: str, count: int | Tensor) -> Tensor:
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    return total / count if reduction == "mean" else total


def _scale(grad_output: Tensor, reduction: str, count: int | Tensor) -> Tensor:
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
        scale = _scale(grad_output, ctx.reduction, math.prod(input.shape[:-1]))
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
        and not _autocast_on()
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
        input, target = _to_float32(input), _to_float32(target)
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
        scale = _scale(grad_output, ctx.reduction, count)
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
        input = _to_float32(input)
        if target.is_floating_point():
            target = _to_float32(target)
        if weight is not None:
            weight = _to_float32(weight)
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
        traced = torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
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


def __getattr__(name: str) -> Any:
    """``mlp``, ``mlp_loss`` and their Functions (the fused network) live in :mod:`manual_bp.mlp`,
    which imports this module; they are loaded on first access."""
    if name in ("mlp", "mlp_loss", "MLPFunction", "MLPLossFunction"):
        from manual_bp import mlp as _mlp_module

        return getattr(_mlp_module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
