r"""Elementwise arithmetic and reductions: ``add``, ``sub``, ``mul``, ``div``, ``pow``, ``rsqrt``,
``exp``, ``log``, ``sqrt``, ``mean`` and ``sum``, each with its backward written out.

These are the ops a hand-written layer is made of (an RMSNorm's ``x * torch.rsqrt(x.pow(2).mean(-1) + ε)``,
a layer scale ``γ * x``, a position embedding ``x + p``): with them,
``convert(model, functional=True)`` gives such code explicit backward too.

For ``y = f(x, o)`` the error δ = ∂c/∂y reaching the op gives each operand its share (BP2 for an
activation, BP3 for a parameter such as ``γ`` or ``p``): ``δ ⊙ ∂y/∂x``. Operands broadcast as in
torch; where one was broadcast, its gradient is that share summed back to its own shape over the
dims it was broadcast along (:func:`sum_to`, written once and shared with
:mod:`~manual_bp.ops.matmul`). Python numbers are accepted where torch accepts them, and get no
gradient.

Each forward calls the native op, so torch's type promotion (an integer tensor with a float
number gives a float result, ``dtype=`` of the reductions), its output dtypes, its autocast casts
(on CUDA ``exp``, ``log``, ``pow``, ``rsqrt``, ``sum`` and ``mean`` run float16 in float32) and
its error messages for arguments it rejects are torch's own. A gradient for an operand of another
dtype (a float32 ``x`` times a float64 ``o``) is computed in the output's dtype and cast back by
autograd, as native's is. Complex tensors are not supported (their gradients need conjugates):
a call autograd records on them raises a ``TypeError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Number
from typing import Any

import torch
from torch import Tensor

from manual_bp._function import ManualFunction
from manual_bp.ops._op import BATCHES, Op, Sample, noncontiguous, tensor

__all__ = [
    "ARITHMETIC_OPS",
    "AddFunction",
    "DivFunction",
    "ExpFunction",
    "LogFunction",
    "MeanFunction",
    "MulFunction",
    "PowFunction",
    "RsqrtFunction",
    "SqrtFunction",
    "SubFunction",
    "SumFunction",
    "add",
    "div",
    "exp",
    "log",
    "mean",
    "mul",
    "pow",
    "recording",
    "rsqrt",
    "sqrt",
    "sub",
    "sum",
    "sum_to",
]

Scalar = Tensor | Number  # an operand: a tensor or a Python number


def sum_to(grad: Tensor, shape: Sequence[int]) -> Tensor:
    """``grad`` (of a broadcast result's shape) summed back to ``shape``, that of an operand that was
    broadcast to it: over the leading dims the operand lacks and over the dims where it has size 1.

    >>> sum_to(torch.ones(2, 3, 4), (3, 1)).tolist()
    [[8.0], [8.0], [8.0]]
    """
    if grad.shape == shape:
        return grad  # not broadcast: the common case, nothing to sum
    lead = grad.dim() - len(shape)
    ones = [lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1]
    if ones:
        grad = grad.sum(ones, keepdim=True)  # (…, n_i, …) -> (…, 1, …)
    if lead == grad.dim():
        return grad.sum()  # (*lead) -> (): a 0-d operand
    # (*lead, …) -> (…); a single dim: the bias of a batch (N, D) -> (D,), the quickest sum
    return grad.sum(0) if lead == 1 else grad.sum(tuple(range(lead))) if lead else grad


def recording(*operands: Any) -> bool:
    """Whether autograd records a call on ``operands``: grad mode is on and one of them requires grad.
    Where not, the native op is the whole call (there is nothing to differentiate), and skipping the
    Function saves its cost (a no-grad forward, masks and position ids computed in a model)."""
    if torch.is_grad_enabled():
        for x in operands:
            if isinstance(x, Tensor) and x.requires_grad:
                return True
    return False


def _real(output: Tensor, name: str) -> None:
    """Refuse a complex result that autograd records (its gradients need conjugates, which these
    formulas leave out): a ``TypeError`` before any node is made."""
    if output.is_complex():
        raise TypeError(f"manual_bp's {name} supports real dtypes only, got a result of {output.dtype}")


def _save(ctx: Any, input: Any, other: Any, keep_input: bool, keep_other: bool) -> None:
    """Keep the operands a backward needs: tensors with ``save_for_backward``, numbers on ``ctx``."""
    input_t, other_t = isinstance(input, Tensor), isinstance(other, Tensor)
    ctx.save_for_backward(
        input if input_t and keep_input else None, other if other_t and keep_other else None
    )
    ctx.numbers = (None if input_t else input, None if other_t else other)


def _saved(ctx: Any) -> tuple[Any, Any]:
    """The operands kept by :func:`_save` (a tensor, a number, or ``None`` where not kept)."""
    input, other = ctx.saved_tensors
    a, b = ctx.numbers
    return (a if input is None else input), (b if other is None else other)


def _shapes(ctx: Any, input: Any, other: Any) -> None:
    """The shapes of the operands that get a gradient (whose δ may need :func:`sum_to`)."""
    needs = ctx.needs_input_grad
    ctx.shapes = (input.shape if needs[0] else None, other.shape if needs[1] else None)


# ------------------------------------------------------------------------------------------------
# add, sub, mul, div, pow
# ------------------------------------------------------------------------------------------------


class AddFunction(ManualFunction):
    r"""``y = x + α o`` (broadcast): :math:`\partial c/\partial x = \delta`,
    :math:`\partial c/\partial o = \alpha \delta`, each summed to its operand's shape."""

    @staticmethod
    def forward(input: Scalar, other: Scalar, alpha: Number) -> Tensor:
        return torch.add(input, other, alpha=alpha)  # FF: y = x + α o

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, other, ctx.alpha = inputs
        _shapes(ctx, input, other)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        needs, (input_shape, other_shape) = ctx.needs_input_grad, ctx.shapes
        grad_input = grad_other = None
        if needs[0]:
            grad_input = sum_to(grad_output, input_shape)  # δ; (*out) -> (*x)
        if needs[1]:
            delta = grad_output if ctx.alpha == 1 else grad_output * ctx.alpha
            grad_other = sum_to(delta, other_shape)  # α δ; (*out) -> (*o)
        return grad_input, grad_other, None


class SubFunction(ManualFunction):
    r"""``y = x − α o`` (broadcast): :math:`\partial c/\partial x = \delta`,
    :math:`\partial c/\partial o = -\alpha \delta`, each summed to its operand's shape."""

    @staticmethod
    def forward(input: Scalar, other: Scalar, alpha: Number) -> Tensor:
        return torch.sub(input, other, alpha=alpha)  # FF: y = x − α o

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, other, ctx.alpha = inputs
        _shapes(ctx, input, other)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        needs, (input_shape, other_shape) = ctx.needs_input_grad, ctx.shapes
        grad_input = grad_other = None
        if needs[0]:
            grad_input = sum_to(grad_output, input_shape)  # δ; (*out) -> (*x)
        if needs[1]:
            delta = -grad_output if ctx.alpha == 1 else -grad_output * ctx.alpha
            grad_other = sum_to(delta, other_shape)  # −α δ; (*out) -> (*o)
        return grad_input, grad_other, None


class MulFunction(ManualFunction):
    r"""``y = x ⊙ o`` (broadcast): :math:`\partial c/\partial x = \delta \odot o`,
    :math:`\partial c/\partial o = \delta \odot x`, each summed to its operand's shape."""

    @staticmethod
    def forward(input: Scalar, other: Scalar) -> Tensor:
        return torch.mul(input, other)  # FF: y = x ⊙ o

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _real(output, "mul")
        input, other = inputs
        needs = ctx.needs_input_grad
        _save(ctx, input, other, keep_input=needs[1], keep_other=needs[0])  # each for the other's grad
        _shapes(ctx, input, other)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, other = _saved(ctx)
        needs, (input_shape, other_shape) = ctx.needs_input_grad, ctx.shapes
        grad_input = grad_other = None
        if needs[0]:
            grad_input = sum_to(grad_output * other, input_shape)  # δ ⊙ o; (*out) -> (*x)
        if needs[1]:
            grad_other = sum_to(grad_output * input, other_shape)  # δ ⊙ x; (*out) -> (*o)
        return grad_input, grad_other


class DivFunction(ManualFunction):
    r"""``y = x / o`` (broadcast): :math:`\partial c/\partial x = \delta / o`,
    :math:`\partial c/\partial o = -\delta \odot y / o`, each summed to its operand's shape."""

    @staticmethod
    def forward(input: Scalar, other: Scalar) -> Tensor:
        return torch.div(input, other)  # FF: y = x / o

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _real(output, "div")
        input, other = inputs
        needs = ctx.needs_input_grad
        _save(ctx, output, other, keep_input=needs[1], keep_other=needs[0] or needs[1])  # y and o
        _shapes(ctx, input, other)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        output, other = _saved(ctx)
        needs, (input_shape, other_shape) = ctx.needs_input_grad, ctx.shapes
        grad_input = grad_other = None
        if needs[0]:
            grad_input = sum_to(grad_output / other, input_shape)  # δ / o; (*out) -> (*x)
        if needs[1]:
            grad_other = sum_to(-grad_output * (output / other), other_shape)  # −δ ⊙ (x/o)/o; (*out) -> (*o)
        return grad_input, grad_other


def _log(base: Number) -> float:
    """``log`` of a number as torch takes it of a scalar: ``-inf`` at 0, NaN below."""
    return math.log(base) if base > 0 else (-math.inf if base == 0 else math.nan)  # type: ignore[operator]


class PowFunction(ManualFunction):
    r"""``y = x^e`` (broadcast; ``x`` or ``e`` may be a number):
    :math:`\partial c/\partial x = \delta \odot e\, x^{e-1}`,
    :math:`\partial c/\partial e = \delta \odot y \ln x`, each summed to its operand's shape.

    As native: ``∂c/∂x`` is 0 where ``e = 0``, ``∂c/∂e`` is 0 where ``x = 0`` and ``e ≥ 0`` (where
    the formulas read ``0 · ∞``).
    """

    @staticmethod
    def forward(input: Scalar, exponent: Scalar) -> Tensor:
        return torch.pow(input, exponent)  # FF: y = x^e

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _real(output, "pow")
        input, exponent = inputs
        needs = ctx.needs_input_grad
        input_t, exponent_t = isinstance(input, Tensor), isinstance(exponent, Tensor)
        # x and e for both gradients, y for ∂c/∂e = δ ⊙ y ln x
        ctx.save_for_backward(
            input if input_t else None, exponent if exponent_t else None, output if needs[1] else None
        )
        ctx.numbers = (None if input_t else input, None if exponent_t else exponent)
        ctx.out_dtype = output.dtype
        _shapes(ctx, input, exponent)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, exponent, output = ctx.saved_tensors
        a, b = ctx.numbers
        x = a if input is None else input
        e = b if exponent is None else exponent
        needs, (input_shape, exponent_shape) = ctx.needs_input_grad, ctx.shapes
        if isinstance(x, Tensor) and x.dtype != ctx.out_dtype:
            x = x.to(ctx.out_dtype)  # as native: in the output's dtype (float32 under CUDA autocast)
        grad_input = grad_exponent = None
        if needs[0]:
            if isinstance(e, Tensor):  # δ ⊙ e x^(e−1), 0 where e = 0
                grad = torch.where(e == 0, 0.0, grad_output * (e * x.pow(e - 1)))
            elif e == 0:
                grad = torch.zeros_like(x)
            else:
                grad = grad_output * (e * x.pow(e - 1))
            grad_input = sum_to(grad, input_shape)  # (*out) -> (*x)
        if needs[1]:
            if isinstance(x, Tensor):  # δ ⊙ y ln x, 0 where x = 0 and e ≥ 0
                grad = grad_output * torch.where((x == 0) & (e >= 0), 0.0, output * x.log())
            elif x == 0:
                grad = grad_output * torch.where(e >= 0, 0.0, output * _log(x))
            else:
                grad = grad_output * (output * _log(x))
            grad_exponent = sum_to(grad, exponent_shape)  # (*out) -> (*e)
        return grad_input, grad_exponent


def add(input: Scalar, other: Scalar, *, alpha: Number = 1) -> Tensor:
    """``input + alpha * other`` (broadcast) with the explicit backward of :class:`AddFunction`.

    As ``torch.add``: either operand may be a Python number (it gets no gradient), torch's type
    promotion gives the output dtype.

    >>> import torch
    >>> add(torch.randn(2, 3, requires_grad=True), torch.randn(3)).grad_fn.name()
    'AddFunctionBackward'
    """
    if recording(input, other):
        return AddFunction.apply(input, other, alpha)
    return torch.add(input, other, alpha=alpha)


def sub(input: Scalar, other: Scalar, *, alpha: Number = 1) -> Tensor:
    """``input - alpha * other`` (broadcast) with the explicit backward of :class:`SubFunction`
    (operands as in :func:`add`)."""
    if recording(input, other):
        return SubFunction.apply(input, other, alpha)
    return torch.sub(input, other, alpha=alpha)


def mul(input: Scalar, other: Scalar) -> Tensor:
    """``input * other`` (broadcast) with the explicit backward of :class:`MulFunction` (operands
    as in :func:`add`)."""
    if recording(input, other):
        return MulFunction.apply(input, other)
    return torch.mul(input, other)


def div(input: Scalar, other: Scalar, *, rounding_mode: str | None = None) -> Tensor:
    """``input / other`` (broadcast) with the explicit backward of :class:`DivFunction` (operands
    as in :func:`add`).

    ``rounding_mode='trunc'`` or ``'floor'`` has no gradient (the result is piecewise constant): it is
    computed natively where no operand requires a gradient (integer index arithmetic) and refused
    with a ``ValueError`` where one does.
    """
    if not recording(input, other):
        return torch.div(input, other, rounding_mode=rounding_mode)
    if rounding_mode is None:
        return DivFunction.apply(input, other)
    raise ValueError(
        f"div with rounding_mode={rounding_mode!r} has no gradient (its result is piecewise constant), "
        "but an operand requires one: use rounding_mode=None, or detach the operands"
    )


def pow(input: Scalar, exponent: Scalar) -> Tensor:
    """``input ** exponent`` (broadcast) with the explicit backward of :class:`PowFunction`.

    As ``torch.pow``: the exponent may be a number or a tensor, the base a tensor or a number
    (``pow(2, x)``); keep tensors that get a gradient away from where it is singular (``x = 0`` for
    an exponent below 1, ``x ≤ 0`` for a tensor exponent).
    """
    if recording(input, exponent):
        return PowFunction.apply(input, exponent)
    return torch.pow(input, exponent)


# ------------------------------------------------------------------------------------------------
# rsqrt, exp, log, sqrt
# ------------------------------------------------------------------------------------------------


class RsqrtFunction(ManualFunction):
    r"""``y = 1/√x``: :math:`\partial c/\partial x = -\tfrac12 \delta \odot y^3`."""

    @staticmethod
    def forward(input: Tensor) -> Tensor:
        return torch.rsqrt(input)  # FF: y = x^(−1/2)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _real(output, "rsqrt")
        ctx.save_for_backward(output)  # f′ = −y³/2

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (output,) = ctx.saved_tensors
        return -0.5 * grad_output * output.pow(3)  # BP2: δ ⊙ (−y³/2)


class ExpFunction(ManualFunction):
    r"""``y = eˣ``: :math:`\partial c/\partial x = \delta \odot y`."""

    @staticmethod
    def forward(input: Tensor) -> Tensor:
        return torch.exp(input)  # FF: y = e^x

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _real(output, "exp")
        ctx.save_for_backward(output)  # f′ = y

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (output,) = ctx.saved_tensors
        return grad_output * output  # BP2: δ ⊙ y


class LogFunction(ManualFunction):
    r"""``y = ln x``: :math:`\partial c/\partial x = \delta / x`."""

    @staticmethod
    def forward(input: Tensor) -> Tensor:
        return torch.log(input)  # FF: y = ln x

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _real(output, "log")
        ctx.save_for_backward(inputs[0])  # f′ = 1/x

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (input,) = ctx.saved_tensors
        return grad_output / input  # BP2: δ / x


class SqrtFunction(ManualFunction):
    r"""``y = √x``: :math:`\partial c/\partial x = \delta / (2 y)`."""

    @staticmethod
    def forward(input: Tensor) -> Tensor:
        return torch.sqrt(input)  # FF: y = √x

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _real(output, "sqrt")
        ctx.save_for_backward(output)  # f′ = 1/(2y)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (output,) = ctx.saved_tensors
        return grad_output / (2 * output)  # BP2: δ / (2y)


def rsqrt(input: Tensor) -> Tensor:
    """``1 / sqrt(input)`` with the explicit backward of :class:`RsqrtFunction` (as ``torch.rsqrt``:
    an integer input gives a float result)."""
    return RsqrtFunction.apply(input) if recording(input) else torch.rsqrt(input)


def exp(input: Tensor) -> Tensor:
    """``e ** input`` with the explicit backward of :class:`ExpFunction` (as ``torch.exp``)."""
    return ExpFunction.apply(input) if recording(input) else torch.exp(input)


def log(input: Tensor) -> Tensor:
    """The natural logarithm with the explicit backward of :class:`LogFunction` (as ``torch.log``)."""
    return LogFunction.apply(input) if recording(input) else torch.log(input)


def sqrt(input: Tensor) -> Tensor:
    """The square root with the explicit backward of :class:`SqrtFunction` (as ``torch.sqrt``)."""
    return SqrtFunction.apply(input) if recording(input) else torch.sqrt(input)


# ------------------------------------------------------------------------------------------------
# sum and mean
# ------------------------------------------------------------------------------------------------

Dims = int | Sequence[int] | None


def _reduced(shape: torch.Size, dim: Dims) -> list[int]:
    """The dims of ``shape`` a reduction over ``dim`` removes (all of them for ``None`` or ``[]``)."""
    if len(shape) == 0:
        return []
    if isinstance(dim, int):
        return [dim % len(shape)]
    if not dim:  # None or []: every dim
        return list(range(len(shape)))
    return sorted(d % len(shape) for d in dim)


def _spread(delta: Tensor, shape: torch.Size, dim: Dims, keepdim: bool) -> Tensor:
    """δ of a reduction spread back over the input's shape: the reduced dims put back (size 1),
    then expanded (a view)."""
    if not keepdim:
        for d in _reduced(shape, dim):
            delta = delta.unsqueeze(d)  # (…) -> (…, 1, …)
    return delta.expand(shape)  # (…, 1, …) -> (…, n, …)


class SumFunction(ManualFunction):
    r"""``y = Σ_dim x``: :math:`\partial c/\partial x = \delta` copied along ``dim``."""

    @staticmethod
    def forward(input: Tensor, dim: Dims, keepdim: bool, dtype: torch.dtype | None) -> Tensor:
        return torch.sum(input, dim, keepdim, dtype=dtype)  # FF: y = Σ_dim x

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, ctx.dim, ctx.keepdim, _ = inputs
        ctx.shape = input.shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None, None, None]:
        # BP2: δ copied to every summed entry; (reduced) -> (*x)
        grad_input = (
            _spread(grad_output, ctx.shape, ctx.dim, ctx.keepdim) if ctx.needs_input_grad[0] else None
        )
        return grad_input, None, None, None


class MeanFunction(ManualFunction):
    r"""``y = (1/n) Σ_dim x``: :math:`\partial c/\partial x = \delta / n` copied along ``dim``
    (``n`` entries averaged)."""

    @staticmethod
    def forward(input: Tensor, dim: Dims, keepdim: bool, dtype: torch.dtype | None) -> Tensor:
        return torch.mean(input, dim, keepdim, dtype=dtype)  # FF: y = (1/n) Σ_dim x

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, ctx.dim, ctx.keepdim, _ = inputs
        ctx.shape = input.shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None, None, None]:
        grad_input = None
        if ctx.needs_input_grad[0]:
            n = math.prod([ctx.shape[d] for d in _reduced(ctx.shape, ctx.dim)])
            # BP2: δ / n copied to every averaged entry; (reduced) -> (*x)
            grad_input = _spread(grad_output / n, ctx.shape, ctx.dim, ctx.keepdim)
        return grad_input, None, None, None


def sum(
    input: Tensor, dim: Dims = None, keepdim: bool = False, *, dtype: torch.dtype | None = None
) -> Tensor:
    """The sum over ``dim`` (every dim for ``None``) with the explicit backward of :class:`SumFunction`.

    As ``torch.sum``: ``keepdim`` keeps the summed dims with size 1, ``dtype`` casts first (an
    integer or bool input sums to ``int64``).

    >>> import torch
    >>> sum(torch.randn(2, 3, requires_grad=True), 1).grad_fn.name()
    'SumFunctionBackward'
    """
    if recording(input):
        return SumFunction.apply(input, dim, keepdim, dtype)
    return torch.sum(input, dim, keepdim, dtype=dtype)


def mean(
    input: Tensor, dim: Dims = None, keepdim: bool = False, *, dtype: torch.dtype | None = None
) -> Tensor:
    """The mean over ``dim`` (every dim for ``None``) with the explicit backward of
    :class:`MeanFunction` (as ``torch.mean``: a floating input, or a floating ``dtype``)."""
    if recording(input):
        return MeanFunction.apply(input, dim, keepdim, dtype)
    return torch.mean(input, dim, keepdim, dtype=dtype)


# ------------------------------------------------------------------------------------------------
# samples and registry entries
# ------------------------------------------------------------------------------------------------


def _positive(t: Tensor, low: float = 0.5) -> Tensor:
    """``|t| + low`` in ``t``'s layout, requiring grad: away from where ``log``, ``sqrt`` and
    ``rsqrt`` (and ``pow`` with an exponent below 1) are singular."""
    return t.detach().abs_().add_(low).requires_grad_(True)


def _binary_samples(op: str) -> Any:
    """Samples of a binary op: broadcasting, Python numbers, a 0-d tensor, an integer tensor,
    non-contiguous and empty operands. ``div`` keeps its divisors ``0.5`` or more from 0."""

    def make(dtype: torch.dtype, device: torch.device) -> list[Sample]:
        def x(*shape: int) -> Tensor:
            return tensor(shape, dtype, device)

        def o(*shape: int) -> Tensor:  # the second operand; a divisor keeps 0.5 or more from 0
            t = tensor(shape, dtype, device)
            if op != "div":
                return t
            away = t.detach().abs() + 0.5
            return torch.where(t < 0, -away, away).requires_grad_(True)

        ints = torch.tensor([1, -2, 3], device=device)
        out = [
            Sample((x(2, 3), o(2, 3)), label="same shape"),
            Sample((x(2, 3), o(3)), label="broadcast (2, 3) with (3,)"),
            Sample((x(2, 1, 3), o(4, 1)), label="broadcast (2, 1, 3) with (4, 1)"),
            Sample((x(2, 3), 1.5), label="a Python number"),
            Sample((-1.5, o(2, 3)), label="a Python number first"),
            Sample((x(2, 3), o()), label="a 0-d tensor"),
            Sample((ints, o(2, 3)), label="an integer tensor (no gradient)"),
            Sample((noncontiguous((4, 3), dtype, device), o(3)), label="non-contiguous"),
            Sample((x(0, 3), o(3)), label="empty batch"),
        ]
        if op in ("add", "sub"):
            out.append(Sample((x(2, 3), o(3)), {"alpha": -0.5}, label="alpha=-0.5"))
        return out

    return make


def _pow_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    """(Exponent 0 is tested in tests/test_arithmetic.py: its gradient, a constant 0, has nothing
    for the full-Jacobian gradgradcheck of ``manual-bp check`` to differentiate.)"""

    def x(*shape: int) -> Tensor:
        return tensor(shape, dtype, device)

    def p(*shape: int) -> Tensor:
        return _positive(x(*shape))

    return [
        Sample((x(2, 3), 2), label="x², an int exponent"),
        Sample((x(2, 3), 3.0), label="x³"),
        Sample((p(2, 3), 0.5), label="√x, x > 0"),
        Sample((p(2, 3), -1.5), label="a negative exponent, x > 0"),
        Sample((p(2, 3), x(3)), label="a tensor exponent, broadcast"),
        Sample((p(3), x(2, 3)), label="a tensor exponent, the base broadcast"),
        Sample((2.0, x(2, 3)), label="a number base: 2^x"),
        Sample((_positive(noncontiguous((4, 3), dtype, device)), 1.5), label="non-contiguous"),
        Sample((x(0, 3), 2), label="empty batch"),
    ]


def _unary_samples(positive: bool) -> Any:
    """Samples ``(*batch, 3)`` over :data:`BATCHES` and a non-contiguous ``(4, 3)``; ``positive``:
    in ``[0.5, 2.5]``, away from the singularity at 0."""

    def make(dtype: torch.dtype, device: torch.device) -> list[Sample]:
        def fix(t: Tensor) -> Tensor:
            return _positive(t) if positive else t

        out = [Sample((fix(tensor((*b, 3), dtype, device)),), label=f"batch {list(b)}") for b in BATCHES]
        out.append(Sample((fix(noncontiguous((4, 3), dtype, device)),), label="non-contiguous"))
        return out

    return make


def _reduction_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def x(*shape: int) -> Tensor:
        return tensor(shape, dtype, device)

    return [
        Sample((x(2, 3),), label="every dim"),
        Sample((x(2, 3), 1), label="dim 1"),
        Sample((x(2, 3), -1, True), label="dim -1, keepdim"),
        Sample((x(2, 3, 4), (0, 2)), label="dims (0, 2)"),
        Sample((x(2, 3, 4), [2, 0], True), label="dims [2, 0] (a list), keepdim"),
        Sample((x(4), 0), label="1-d"),
        Sample((x(),), label="0-d"),
        Sample((x(0, 3), 1), label="empty batch"),
        Sample((noncontiguous((4, 3), dtype, device), 0), label="non-contiguous"),
        Sample((x(2, 3), 1), {"dtype": torch.float64}, label="dtype=float64"),
    ]


def _unary(name: str, fn: Any, function_class: type, native: Any, positive: bool, formula: str) -> Op:
    return Op(
        name,
        fn,
        native,
        _unary_samples(positive),
        function_class,
        torch_functions=(native, getattr(Tensor, name)),
        formula=formula,
    )


ARITHMETIC_OPS: tuple[Op, ...] = (
    Op(
        "add",
        add,
        torch.add,
        _binary_samples("add"),
        AddFunction,
        torch_functions=(torch.add, Tensor.add),
        formula=(
            r"BP2/BP3: $\delta_x = \delta$, $\delta_o = \alpha\,\delta$, each summed over the dims it "
            r"was broadcast along"
        ),
    ),
    Op(
        "sub",
        sub,
        torch.sub,
        _binary_samples("sub"),
        SubFunction,
        torch_functions=(torch.sub, Tensor.sub, torch.subtract, Tensor.subtract),
        formula=(
            r"BP2/BP3: $\delta_x = \delta$, $\delta_o = -\alpha\,\delta$, each summed over the dims it "
            r"was broadcast along"
        ),
    ),
    Op(
        "mul",
        mul,
        torch.mul,
        _binary_samples("mul"),
        MulFunction,
        torch_functions=(torch.mul, Tensor.mul, torch.multiply, Tensor.multiply),
        formula=(
            r"BP2/BP3: $\delta_x = \delta \odot o$, $\delta_o = \delta \odot x$, each summed over the "
            r"dims it was broadcast along"
        ),
    ),
    Op(
        "div",
        div,
        torch.div,
        _binary_samples("div"),
        DivFunction,
        torch_functions=(torch.div, Tensor.div, torch.divide, Tensor.divide),
        formula=(
            r"BP2/BP3: $\delta_x = \delta / o$, $\delta_o = -\delta \odot y / o$, each summed over the "
            r"dims it was broadcast along"
        ),
    ),
    Op(
        "pow",
        pow,
        torch.pow,
        _pow_samples,
        PowFunction,
        torch_functions=(torch.pow, Tensor.pow),
        formula=(
            r"BP2/BP3: $\delta_x = \delta \odot e\,x^{e-1}$, $\delta_e = \delta \odot y \ln x$, each "
            r"summed over the dims it was broadcast along"
        ),
    ),
    _unary(
        "rsqrt", rsqrt, RsqrtFunction, torch.rsqrt, True, r"BP2: $\delta_x = -\tfrac12\,\delta \odot y^3$"
    ),
    _unary("exp", exp, ExpFunction, torch.exp, False, r"BP2: $\delta_x = \delta \odot y$"),
    _unary("log", log, LogFunction, torch.log, True, r"BP2: $\delta_x = \delta / x$"),
    _unary("sqrt", sqrt, SqrtFunction, torch.sqrt, True, r"BP2: $\delta_x = \delta / (2y)$"),
    Op(
        "mean",
        mean,
        torch.mean,
        _reduction_samples,
        MeanFunction,
        torch_functions=(torch.mean, Tensor.mean),
        formula=r"BP2: $\delta_x = \delta / n$ copied to the $n$ entries averaged",
    ),
    Op(
        "sum",
        sum,
        torch.sum,
        _reduction_samples,
        SumFunction,
        torch_functions=(torch.sum, Tensor.sum),
        formula=r"BP2: $\delta_x = \delta$ copied to every entry summed",
    ),
)
