r"""Shape layers: softmax, log-softmax, flatten and unflatten.

Softmax's BP2 ``P ⊙ (δ − Σ_dim δ ⊙ P)`` and log-softmax's ``δ − softmax(x) ⊙ Σ_dim δ`` are the
softmax Jacobian applied to δ (for float16/bfloat16 computed in float32 and rounded once, as native's
kernels do: in bfloat16 throughout, softmax's gradient was up to 6.5 times as far from the float64
truth as native's, measured over 50 random (8, 64) inputs); flatten's and unflatten's BP2 only
move numbers back into the input's shape.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manual_bp._function import ManualFunction, autocast_enabled, check_floating
from manual_bp.ops._op import Op, Sample, noncontiguous, tensor
from manual_bp.ops.elementwise import to_float32

__all__ = [
    "SHAPE_OPS",
    "Flatten",
    "FlattenFunction",
    "LogSoftmax",
    "LogSoftmaxFunction",
    "Softmax",
    "Softmax2d",
    "SoftmaxFunction",
    "Unflatten",
    "UnflattenFunction",
    "flatten",
    "log_softmax",
    "softmax",
    "softmax_grad",
    "unflatten",
]

# device types where autocast runs softmax and log_softmax in float32 (the "fp32_set_opt_dtype" list
# of ATen's autocast_mode.cpp for CUDA; on the CPU they run in the input's dtype, checked here)
_FLOAT32_UNDER_AUTOCAST_ON: tuple[str, ...] = ("cuda",)


def _wrap_dim(dim: Any, ndim: int, what: str = "dim") -> int:
    """``dim`` in ``[0, ndim)`` (a 0-d tensor takes 0 and -1), or torch's error."""
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"{what} must be an int, got {type(dim).__name__}")
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {dim})"
        )
    return int(dim) % n


def _check_tensor(name: str, input: Any) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"{name} expected input to be a torch.Tensor, got {type(input).__name__}")


# ------------------------------------------------------------------------------------------------
# softmax and log_softmax
# ------------------------------------------------------------------------------------------------


class SoftmaxFunction(ManualFunction):
    r"""``P = softmax(x)`` along ``dim``: ``P_j = e^{x_j} / Σ_k e^{x_k}``.

    .. math::
        \frac{\partial c}{\partial x} = P \odot (\delta - \textstyle\sum_{\text{dim}} \delta \odot P)

    (the Jacobian ``diag(P) − P Pᵀ`` applied to δ). Call it as ``SoftmaxFunction.apply(x, dim)``.
    """

    @staticmethod
    def forward(input: Tensor, dim: int) -> Tensor:
        return torch.softmax(input, dim)  # FF: P = e^x / Σ_dim e^x

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(output)  # P: all the backward needs
        ctx.dim = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None]:
        (p,) = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = softmax_grad(p, grad_output, ctx.dim)
        return grad_input, None


def softmax_grad(p: Tensor, grad_output: Tensor, dim: int) -> Tensor:
    """Softmax's BP2, ``P ⊙ (δ − Σ_dim δ ⊙ P)`` for the output ``P`` and ``δ = grad_output`` (in
    float32 for float16/bfloat16, rounded once to δ's dtype, as native's kernels do). The one copy of
    this formula: :class:`SoftmaxFunction` and the attention's backward call it."""
    p, delta = to_float32(p), to_float32(grad_output)
    # BP2: P ⊙ (δ − Σ_dim δ ⊙ P); the sum keeps dim (size 1) and broadcasts back
    return (p * (delta - (delta * p).sum(dim, keepdim=True))).to(grad_output.dtype)


class LogSoftmaxFunction(ManualFunction):
    r"""``L = log softmax(x)`` along ``dim``: ``L_j = x_j − log Σ_k e^{x_k}``.

    .. math::
        \frac{\partial c}{\partial x} = \delta - e^{L} \odot \textstyle\sum_{\text{dim}} \delta

    (``e^L`` is softmax(x)).
    """

    @staticmethod
    def forward(input: Tensor, dim: int) -> Tensor:
        return torch.log_softmax(input, dim)  # FF: L = x − log Σ_dim e^x

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(output)  # L: softmax(x) = e^L
        ctx.dim = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None]:
        (log_p,) = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            log_p, delta = to_float32(log_p), to_float32(grad_output)  # float16/bfloat16: in float32
            # BP2: δ − softmax(x) ⊙ Σ_dim δ; the sum keeps dim (size 1) and broadcasts back
            grad_input = (delta - log_p.exp() * delta.sum(ctx.dim, keepdim=True)).to(grad_output.dtype)
        return grad_input, None


def _softmax_dim(name: str, ndim: int, stacklevel: int) -> int:
    """torch's legacy implicit dim (0 for 0-, 1- and 3-d inputs, else 1), with its deprecation warning."""
    if not torch.compiler.is_compiling():  # (dynamo cannot trace warnings.warn)
        warnings.warn(
            f"Implicit dimension choice for {name} has been deprecated. "
            "Change the call to include dim=X as an argument.",
            stacklevel=stacklevel,
        )
    return 0 if ndim in (0, 1, 3) else 1


def _softmax_input(
    name: str, input: Tensor, dim: int | None, stacklevel: int, dtype: torch.dtype | None
) -> tuple[Tensor, int]:
    """The checked (and cast) input and dim of ``softmax``/``log_softmax``."""
    _check_tensor(name, input)
    if isinstance(stacklevel, torch.dtype):  # torch.softmax(input, dim, dtype), Tensor.softmax(dim, dtype)
        if dtype is not None:
            raise TypeError(f"{name} got two dtypes: {stacklevel} (third positional argument) and {dtype}")
        stacklevel, dtype = 3, stacklevel
    if dim is None:
        dim = _softmax_dim(name, input.dim(), stacklevel + 1)
    dim = _wrap_dim(dim, input.dim())
    if dtype is not None:
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"{name} expected dtype to be a torch.dtype or None, got {type(dtype).__name__}")
        input = input.to(dtype)  # as native: cast first (a ToCopyBackward node), then the op
    elif (
        autocast_enabled()
        and input.device.type in _FLOAT32_UNDER_AUTOCAST_ON
        and torch.is_autocast_enabled(input.device.type)
        and input.dtype in (torch.float16, torch.bfloat16)
    ):
        input = input.float()  # as native's autocast there
    check_floating("input", input)
    return input, dim


def softmax(
    input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None
) -> Tensor:
    """Softmax along ``dim`` with the explicit backward of :class:`SoftmaxFunction`.

    Shape ``(*) -> (*)``. As ``torch.nn.functional.softmax``: ``dim=None`` picks torch's legacy
    implicit dim with its deprecation warning, ``dtype`` casts the input first; under CUDA autocast
    float16/bfloat16 inputs run in float32 (on the CPU in their own dtype, as native). A dtype as the
    third positional argument is taken as ``dtype``, so that ``torch.softmax(input, dim, dtype)``
    and ``Tensor.softmax(dim, dtype)`` calls mean the same here.
    """
    input, dim = _softmax_input("softmax", input, dim, _stacklevel, dtype)
    return SoftmaxFunction.apply(input, dim)


def log_softmax(
    input: Tensor, dim: int | None = None, _stacklevel: int = 3, dtype: torch.dtype | None = None
) -> Tensor:
    """Log-softmax along ``dim`` with the explicit backward of :class:`LogSoftmaxFunction`.

    Shape ``(*) -> (*)``; ``dim``, ``dtype`` and autocast as in :func:`softmax`.
    """
    input, dim = _softmax_input("log_softmax", input, dim, _stacklevel, dtype)
    return LogSoftmaxFunction.apply(input, dim)


class Softmax(nn.Softmax):
    """``torch.nn.Softmax`` with the explicit backward of :func:`manual_bp.functional.softmax`.

    >>> import torch, manual_bp
    >>> manual_bp.Softmax(dim=1)(torch.randn(2, 3, requires_grad=True)).grad_fn.name()
    'SoftmaxFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        return softmax(input, self.dim, _stacklevel=5)


class LogSoftmax(nn.LogSoftmax):
    """``torch.nn.LogSoftmax`` with the explicit backward of :func:`manual_bp.functional.log_softmax`.

    >>> import torch, manual_bp
    >>> manual_bp.LogSoftmax(dim=1)(torch.randn(2, 3, requires_grad=True)).grad_fn.name()
    'LogSoftmaxFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        return log_softmax(input, self.dim, _stacklevel=5)


class Softmax2d(nn.Softmax2d):
    """``torch.nn.Softmax2d`` (softmax over the channels of ``(N, C, H, W)`` or ``(C, H, W)``) with
    the explicit backward of :func:`manual_bp.functional.softmax`.

    >>> import torch, manual_bp
    >>> manual_bp.Softmax2d()(torch.randn(2, 3, 4, 4, requires_grad=True)).grad_fn.name()
    'SoftmaxFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        _check_tensor("Softmax2d", input)
        if input.dim() not in (3, 4):
            raise ValueError(f"Softmax2d: expected input to be 3D or 4D, got {input.dim()}D instead")
        return softmax(input, -3, _stacklevel=5)


# ------------------------------------------------------------------------------------------------
# flatten and unflatten
# ------------------------------------------------------------------------------------------------


class FlattenFunction(ManualFunction):
    r"""``y = x`` with dims ``start_dim … end_dim`` merged into one.

    BP2 moves numbers, computes nothing: ``∂c/∂x = δ`` reshaped back to ``x``'s shape. The output is
    a view of the input where torch's ``flatten`` gives one (so it may not be modified in place
    while autograd records: clone it first).
    """

    @staticmethod
    def forward(input: Tensor, start_dim: int, end_dim: int) -> Tensor:
        return input.flatten(start_dim, end_dim)  # FF: (…, d_s, …, d_e, …) -> (…, d_s⋯d_e, …)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.shape = inputs[0].shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None, None]:
        # BP2: δ back in the input's shape; (…, d_s⋯d_e, …) -> (…, d_s, …, d_e, …)
        grad_input = grad_output.reshape(ctx.shape) if ctx.needs_input_grad[0] else None
        return grad_input, None, None


class UnflattenFunction(ManualFunction):
    r"""``y = x`` with dim ``dim`` split into ``sizes``.

    BP2 moves numbers, computes nothing: ``∂c/∂x = δ`` reshaped back to ``x``'s shape. The output is
    a view of the input (so it may not be modified in place while autograd records: clone it first).
    """

    @staticmethod
    def forward(input: Tensor, dim: int, sizes: tuple[int, ...]) -> Tensor:
        return input.unflatten(dim, sizes)  # FF: (…, d, …) -> (…, *sizes, …)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.shape = inputs[0].shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None, None]:
        # BP2: δ back in the input's shape; (…, *sizes, …) -> (…, d, …)
        grad_input = grad_output.reshape(ctx.shape) if ctx.needs_input_grad[0] else None
        return grad_input, None, None


def flatten(input: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge dims ``start_dim … end_dim`` into one, with the explicit backward of :class:`FlattenFunction`.

    As ``torch.flatten``: a 0-d input gives shape ``(1,)``; the result is a view where possible.
    Its backward moves numbers (δ reshaped back), it computes nothing.
    """
    _check_tensor("flatten", input)
    start = _wrap_dim(start_dim, input.dim(), "start_dim")
    end = _wrap_dim(end_dim, input.dim(), "end_dim")
    if start > end:
        raise RuntimeError(
            f"flatten() has invalid args: start_dim cannot come after end_dim (got start_dim={start_dim}, "
            f"end_dim={end_dim} for a {input.dim()}-d input)"
        )
    return FlattenFunction.apply(input, start, end)


def unflatten(input: Tensor, dim: int, sizes: Sequence[int]) -> Tensor:
    """Split dim ``dim`` into ``sizes`` (one of them may be -1), with the explicit backward of
    :class:`UnflattenFunction`.

    As ``torch.unflatten``; the result is a view. Its backward moves numbers (δ reshaped back), it
    computes nothing.
    """
    _check_tensor("unflatten", input)
    if input.dim() == 0:
        raise RuntimeError("unflatten: the input is a 0-d tensor, it has no dimension to split")
    dim = _wrap_dim(dim, input.dim())
    if isinstance(sizes, Tensor) or not isinstance(sizes, Sequence):
        raise TypeError(f"unflatten expected sizes to be a tuple or list of ints, got {type(sizes).__name__}")
    if not sizes:
        raise RuntimeError("unflatten: sizes must be non-empty")
    if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in sizes):
        raise TypeError(f"unflatten expected sizes to be a tuple or list of ints, got {sizes!r}")
    sizes = tuple(int(s) for s in sizes)
    size = input.shape[dim]
    known, inferred = 1, 0  # the product of the given sizes, and how many are -1
    for s in sizes:
        if s == -1:
            inferred += 1
        else:
            known *= s
    if (
        inferred > 1
        or any(s < -1 for s in sizes)
        or (inferred == 0 and known != size)
        or (inferred == 1 and (known == 0 or size % known))
    ):
        raise RuntimeError(
            f"unflatten: Provided sizes {list(sizes)} don't multiply up to the size of dim {dim} ({size}) "
            "in the input tensor (at most one size may be -1, inferred from the others)"
        )
    return UnflattenFunction.apply(input, dim, sizes)


class Flatten(nn.Flatten):
    """``torch.nn.Flatten`` (``start_dim=1`` by default) with the explicit backward of
    :func:`manual_bp.functional.flatten`.

    >>> import torch, manual_bp
    >>> manual_bp.Flatten()(torch.randn(2, 3, 4, requires_grad=True)).grad_fn.name()
    'FlattenFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        return flatten(input, self.start_dim, self.end_dim)


class Unflatten(nn.Unflatten):
    """``torch.nn.Unflatten`` with the explicit backward of :func:`manual_bp.functional.unflatten`
    (named tensors with a named shape are not supported).

    >>> import torch, manual_bp
    >>> manual_bp.Unflatten(1, (2, 3))(torch.randn(4, 6, requires_grad=True)).grad_fn.name()
    'UnflattenFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        return unflatten(input, self.dim, self.unflattened_size)


# ------------------------------------------------------------------------------------------------
# samples and registry entries
# ------------------------------------------------------------------------------------------------


def _softmax_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def x(*shape: int) -> Tensor:
        return tensor(shape, dtype, device)

    return [
        Sample((x(), 0), label="0-d"),
        Sample((x(4), 0), label="[4], dim 0"),
        Sample((x(2, 4), 1), label="[2, 4], dim 1"),
        Sample((x(2, 4), 0), label="[2, 4], dim 0"),
        Sample((x(2, 3, 4), -1), label="[2, 3, 4], dim -1"),
        Sample((x(2, 3, 4), 1), label="[2, 3, 4], dim 1"),
        Sample((x(0, 3), -1), label="empty batch"),
        Sample((noncontiguous((4, 3), dtype, device), 1), label="non-contiguous"),
        Sample((x(2, 3), 1), {"dtype": torch.float64}, label="dtype=float64"),
    ]


def _flatten_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def x(*shape: int) -> Tensor:
        return tensor(shape, dtype, device)

    return [
        Sample((x(2, 3, 4),), label="all dims"),
        Sample((x(2, 3, 4), 1), label="start_dim=1"),
        Sample((x(2, 3, 2, 2), 1, -2), label="start_dim=1, end_dim=-2"),
        Sample((x(2, 3, 4), 1, 1), label="start_dim=end_dim (no-op)"),
        Sample((x(),), label="0-d"),
        Sample((x(0, 3, 2), 1), label="empty batch"),
        Sample((noncontiguous((4, 3), dtype, device),), label="non-contiguous (copies)"),
    ]


def _unflatten_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def x(*shape: int) -> Tensor:
        return tensor(shape, dtype, device)

    return [
        Sample((x(2, 6), 1, (2, 3)), label="[2, 6], dim 1"),
        Sample((x(2, 6), -1, (3, -1)), label="dim -1, an inferred size"),
        Sample((x(6), 0, [2, 3]), label="no batch, sizes a list"),
        Sample((x(4, 6), 0, (2, 1, 2)), label="dim 0"),
        Sample((x(0, 6), 1, (2, 3)), label="empty batch"),
        Sample((noncontiguous((4, 6), dtype, device), 1, (3, 2)), label="non-contiguous"),
    ]


SHAPE_OPS: tuple[Op, ...] = (
    Op(
        "softmax",
        softmax,
        F.softmax,
        _softmax_samples,
        SoftmaxFunction,
        modules=((nn.Softmax, Softmax), (nn.Softmax2d, Softmax2d)),
        torch_functions=(F.softmax, torch.softmax, Tensor.softmax),
        formula=r"BP2: $P \odot (\delta - \sum_{\text{dim}} \delta \odot P)$, $P$ the output",
    ),
    Op(
        "log_softmax",
        log_softmax,
        F.log_softmax,
        _softmax_samples,
        LogSoftmaxFunction,
        modules=((nn.LogSoftmax, LogSoftmax),),
        torch_functions=(F.log_softmax, torch.log_softmax, Tensor.log_softmax),
        formula=r"BP2: $\delta - e^{L} \odot \sum_{\text{dim}} \delta$, $L$ the output",
    ),
    Op(
        "flatten",
        flatten,
        torch.flatten,
        _flatten_samples,
        FlattenFunction,
        modules=((nn.Flatten, Flatten),),
        torch_functions=(torch.flatten, Tensor.flatten),
        formula=r"BP2: $\delta$ reshaped back to the input's shape (moves numbers, computes nothing)",
    ),
    Op(
        "unflatten",
        unflatten,
        torch.unflatten,
        _unflatten_samples,
        UnflattenFunction,
        modules=((nn.Unflatten, Unflatten),),
        torch_functions=(torch.unflatten, Tensor.unflatten),
        formula=r"BP2: $\delta$ reshaped back to the input's shape (moves numbers, computes nothing)",
    ),
)
