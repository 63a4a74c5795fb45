r"""Pooling: max, average and adaptive pooling; BP2 routes δ back to the window entries it came from.

* max pooling (and adaptive max pooling): each output is one input entry, the window's argmax, so
  BP2 adds δ there: ``δ_x = scatter_add(0, argmax, δ_y)`` (its own backward is a ``gather``);
* average pooling: each output is ``Σ_window x / divisor``, so BP2 spreads ``δ_y / divisor`` evenly
  over the window (a sum over kernel offsets of strided-slice additions);
* adaptive average pooling: the windows are fixed per output size, ``y = A_h x A_wᵀ`` with ``A`` the
  row-normalised window indicator, so BP2 is ``δ_x = A_hᵀ δ_y A_w``, as for a linear layer.

Under autocast pooling runs in the input's dtype (it is on no autocast list), as native's does.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manual_bp._function import ManualFunction, check_floating
from manual_bp.ops._op import Op, Sample, noncontiguous, tensor

__all__ = [
    "POOLING_OPS",
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveAvgPoolFunction",
    "AdaptiveMaxPool1d",
    "AdaptiveMaxPool2d",
    "AdaptiveMaxPoolFunction",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPoolFunction",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPoolFunction",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "avg_pool1d",
    "avg_pool2d",
    "max_pool1d",
    "max_pool2d",
]

Ints = tuple[int, ...]


# --------------------------------------------------------------------------------------------
# The backward formulas, shared by the pooling Functions
# --------------------------------------------------------------------------------------------


def _max_backward(ctx: Any, grad_output: Tensor) -> Tensor | None:
    """BP2 of a max pooling: ``δ_x[argmax] += δ_y``, the argmax flat over the input's spatial dims."""
    if not ctx.needs_input_grad[0]:
        return None
    (indices,) = ctx.saved_tensors
    n = ctx.spatial_dims
    # BP2: δ_x[argmax] += δ_y; (*, o…) -> (*, O) scattered into (*, L) -> (*, L…)
    spatial = ctx.input_shape[-n:]
    grad = grad_output.new_zeros((*ctx.input_shape[:-n], math.prod(spatial)))
    grad.scatter_add_(-1, indices.flatten(-n), grad_output.flatten(-n))  # (in place: on new zeros)
    return grad.unflatten(-1, spatial)


def _save_argmax(ctx: Any, input: Tensor, output: tuple[Tensor, Tensor], spatial_dims: int) -> None:
    indices = output[1]
    ctx.mark_non_differentiable(indices)
    ctx.save_for_backward(indices)
    ctx.input_shape, ctx.spatial_dims = input.shape, spatial_dims


class MaxPoolFunction(ManualFunction):
    r"""``max_pool1d/2d`` returning ``(output, indices)``; ``kernel_size`` etc. are tuples of 1 or 2 ints.

    .. math:: \delta_x[\operatorname{argmax}_w] \mathrel{+}= \delta_y[w] \text{ for each window } w
    """

    @staticmethod
    def forward(
        input: Tensor, kernel_size: Ints, stride: Ints, padding: Ints, dilation: Ints, ceil_mode: bool
    ) -> tuple[Tensor, Tensor]:
        native = F.max_pool1d_with_indices if len(kernel_size) == 1 else F.max_pool2d_with_indices
        return native(input, kernel_size, stride, padding, dilation, ceil_mode, True)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        _save_argmax(ctx, inputs[0], output, len(inputs[1]))

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _grad_indices: Tensor | None) -> tuple[Tensor | None, ...]:
        return _max_backward(ctx, grad_output), None, None, None, None, None


class AdaptiveMaxPoolFunction(ManualFunction):
    r"""``adaptive_max_pool1d/2d`` returning ``(output, indices)``; ``output_size`` a tuple of 1 or 2 ints.

    .. math:: \delta_x[\operatorname{argmax}_w] \mathrel{+}= \delta_y[w] \text{ for each window } w
    """

    @staticmethod
    def forward(input: Tensor, output_size: Ints) -> tuple[Tensor, Tensor]:
        if len(output_size) == 1:
            return F.adaptive_max_pool1d_with_indices(input, output_size, True)
        return F.adaptive_max_pool2d_with_indices(input, output_size, True)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        _save_argmax(ctx, inputs[0], output, len(inputs[1]))

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor, _grad_indices: Tensor | None) -> tuple[Tensor | None, None]:
        return _max_backward(ctx, grad_output), None


def window_sizes(size: int, out: int, k: int, s: int, p: int, count_include_pad: bool) -> Tensor:
    """The length of each of ``out`` average-pooling windows along one dim, as torch counts it:
    window ``i`` spans ``[i·s − p, i·s − p + k)`` cut at the padded input's end ``size + p``
    (``ceil_mode`` windows run past it), and without ``count_include_pad`` cut to the input ``[0, size)``."""
    start = torch.arange(out) * s - p
    end = (start + k).clamp(max=size + p)
    if count_include_pad:
        return end - start
    return end.clamp(max=size) - start.clamp(min=0)


class AvgPoolFunction(ManualFunction):
    r"""``avg_pool1d/2d``; ``kernel_size``, ``stride`` and ``padding`` are tuples of 1 or 2 ints.

    .. math:: \delta_x[j] = \textstyle\sum_{w \ni j} \delta_y[w] / \mathrm{divisor}_w
    """

    @staticmethod
    def forward(
        input: Tensor,
        kernel_size: Ints,
        stride: Ints,
        padding: Ints,
        ceil_mode: bool,
        count_include_pad: bool,
        divisor_override: int | None,
    ) -> Tensor:
        if len(kernel_size) == 1:  # (native avg_pool1d has no divisor_override)
            return F.avg_pool1d(input, kernel_size, stride, padding, ceil_mode, count_include_pad)
        return F.avg_pool2d(
            input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, ctx.kernel_size, ctx.stride, ctx.padding, _, ctx.count_include_pad, ctx.divisor_override = (
            inputs
        )
        ctx.input_shape = input.shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None, None
        k, s, p, n = ctx.kernel_size, ctx.stride, ctx.padding, len(ctx.kernel_size)
        spatial, out = ctx.input_shape[-n:], grad_output.shape[-n:]
        if ctx.divisor_override:
            divisor: Tensor | int = ctx.divisor_override
        else:  # the product of the window's lengths along each dim: (o_1,) or (o_1, o_2)
            lengths = [
                window_sizes(*a, ctx.count_include_pad) for a in zip(spatial, out, k, s, p, strict=True)
            ]
            divisor = lengths[0] if n == 1 else lengths[0][:, None] * lengths[1]
            divisor = divisor.to(grad_output.device, grad_output.dtype)
        share = grad_output / divisor  # δ_y[w] / divisor_w
        # BP2: δ_x[j] = Σ_{windows w ∋ j} δ_y[w] / divisor_w, as a sum over kernel offsets: offset a
        # of every window is a strided slice a, a + s, … of the padded input; (*, o…) -> (*, padded L…).
        # The padded extent holds every window (ceil_mode's may run past the padding) and the input.
        extent = [
            max((o - 1) * s_ + k_, p_ + size)
            for o, s_, k_, p_, size in zip(out, s, k, p, spatial, strict=True)
        ]
        grad = share.new_zeros((*share.shape[:-n], *extent))
        for offset in itertools.product(*map(range, k)):  # entry `offset` of every window
            entries = (slice(a, a + (o - 1) * s_ + 1, s_) for a, o, s_ in zip(offset, out, s, strict=True))
            grad[(..., *entries)] += share
        inside = (slice(p_, p_ + size) for p_, size in zip(p, spatial, strict=True))
        return grad[(..., *inside)], *(None,) * 6  # the input's part: (*, padded L…) -> (*, L…)


def adaptive_windows(size: int, out: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``A (out, size)``: row ``i`` is ``1/|w_i|`` on adaptive window ``w_i = [⌊i·L/o⌋, ⌈(i+1)·L/o⌉)``."""
    i = torch.arange(out, device=device)
    start, end = (i * size) // out, ((i + 1) * size + out - 1) // out
    j = torch.arange(size, device=device)
    inside = (j >= start[:, None]) & (j < end[:, None])  # (o, L)
    return inside.to(dtype) / (end - start)[:, None].to(dtype)


class AdaptiveAvgPoolFunction(ManualFunction):
    r"""``adaptive_avg_pool1d/2d``; ``output_size`` is a tuple of 1 or 2 ints.

    .. math:: y = A_h\, x\, A_w^\top, \qquad \delta_x = A_h^\top \delta_y A_w
    """

    @staticmethod
    def forward(input: Tensor, output_size: Ints) -> Tensor:
        if len(output_size) == 1:
            return F.adaptive_avg_pool1d(input, output_size)
        return F.adaptive_avg_pool2d(input, output_size)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.input_shape, ctx.spatial_dims = inputs[0].shape, len(inputs[1])

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        n = ctx.spatial_dims
        a = [
            adaptive_windows(size, o, grad_output.dtype, grad_output.device)
            for size, o in zip(ctx.input_shape[-n:], grad_output.shape[-n:], strict=True)
        ]
        if n == 1:  # BP2: δ_x = δ_y A; (*, o) @ (o, L) -> (*, L)
            return torch.einsum("...i,ia->...a", grad_output, a[0]), None
        # BP2: δ_x = A_hᵀ δ_y A_w; (*, o_h, o_w) -> (*, H, W)
        return torch.einsum("...ij,ia,jb->...ab", grad_output, a[0], a[1]), None


# --------------------------------------------------------------------------------------------
# Argument checks (the errors native gives, naming what was expected and what came)
# --------------------------------------------------------------------------------------------


def _ints(fn: str, name: str, value: Any, n: int) -> Ints:
    """``value`` as ``n`` ints: an int, or a tuple or list of 1 or ``n`` ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,) * n
    if (
        isinstance(value, Sequence)
        and len(value) in (1, n)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return tuple(value) * (n // len(value))
    raise TypeError(f"{fn}: {name} must be an int or a tuple of {n} ints, got {value!r}")


def _check_input(fn: str, input: Tensor, n: int) -> None:
    check_floating("input", input)  # (max pooling takes integers in native's forward; gradients need floats)
    if input.dim() not in (n + 1, n + 2):
        raise RuntimeError(
            f"{fn} expected a {n + 1}-D (unbatched) or {n + 2}-D (batched) input, "
            f"got shape {tuple(input.shape)}"
        )
    if 0 in input.shape[-n - 1 :]:
        raise RuntimeError(
            f"{fn} expected non-zero sizes in every dim but the batch dim, got shape {tuple(input.shape)}"
        )


def pool_output_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """Torch's output length of a pooling along one dim; with ``ceil_mode`` the last window may run
    past the padded input, but must start inside the input or its left padding."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    return out - 1 if ceil_mode and (out - 1) * s >= size + p else out


def _pool_args(
    fn: str,
    input: Tensor,
    n: int,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    ceil_mode: bool,
) -> tuple[Ints, Ints, Ints, Ints]:
    """Check a pooling's arguments; return ``kernel_size, stride, padding, dilation`` as ``n``-tuples."""
    k = _ints(fn, "kernel_size", kernel_size, n)
    no_stride = stride is None or (isinstance(stride, Sequence) and len(stride) == 0)
    s = k if no_stride else _ints(fn, "stride", stride, n)
    p, d = _ints(fn, "padding", padding, n), _ints(fn, "dilation", dilation, n)
    _check_input(fn, input, n)
    for name, value, low in (("kernel_size", k, 1), ("stride", s, 1), ("dilation", d, 1), ("padding", p, 0)):
        if min(value) < low:
            expected = "greater than zero" if low else "non-negative"
            raise RuntimeError(f"{fn}: {name} must be {expected}, got {name}={value}")
    if any(p_ > k_ // 2 for k_, p_ in zip(k, p, strict=True)):  # (the kernel's size, dilation aside)
        raise RuntimeError(
            f"{fn}: padding should be at most half of kernel_size, got padding={p}, kernel_size={k}"
        )
    out = [pool_output_size(*a, ceil_mode) for a in zip(input.shape[-n:], k, s, p, d, strict=True)]
    if min(out) < 1:
        raise RuntimeError(
            f"{fn}: the output size {tuple(out)} is too small (expected at least 1 in every dim) for an "
            f"input of shape {tuple(input.shape)}, kernel_size={k}, stride={s}, padding={p}, dilation={d}"
        )
    return k, s, p, d


def _adaptive_output_size(fn: str, input: Tensor, n: int, output_size: Any) -> Ints:
    """Check an adaptive pooling's arguments; ``None`` entries (2-d only) keep the input's size."""
    if n == 2 and isinstance(output_size, Sequence) and len(output_size) == 2:
        output_size = [
            size if o is None else o for o, size in zip(output_size, input.shape[-2:], strict=True)
        ]
    out = _ints(fn, "output_size", output_size, n)
    _check_input(fn, input, n)
    if min(out) < 0:
        raise RuntimeError(f"{fn}: output_size must be non-negative in every dim, got output_size={out}")
    return out


# --------------------------------------------------------------------------------------------
# The public functions (torch.nn.functional's signatures)
# --------------------------------------------------------------------------------------------


def _max_pool(
    fn: str, n: int, input: Tensor, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
    ceil_mode: bool, return_indices: bool,
) -> Tensor | tuple[Tensor, Tensor]:  # fmt: skip
    k, s, p, d = _pool_args(fn, input, n, kernel_size, stride, padding, dilation, ceil_mode)
    output, indices = MaxPoolFunction.apply(input, k, s, p, d, bool(ceil_mode))
    return (output, indices) if return_indices else output


def max_pool1d(
    input: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``torch.nn.functional.max_pool1d`` with the explicit backward of :class:`MaxPoolFunction`.

    Shape ``(N, C, L)`` or ``(C, L)`` -> ``(N, C, L_out)`` or ``(C, L_out)``; with ``return_indices``
    also the argmax of each window (flat over ``L``, not differentiable), like native.
    """
    return _max_pool(
        "max_pool1d", 1, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices
    )


def max_pool2d(
    input: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``torch.nn.functional.max_pool2d`` with the explicit backward of :class:`MaxPoolFunction`.

    Shape ``(N, C, H, W)`` or ``(C, H, W)`` -> ``(N, C, H_out, W_out)`` or ``(C, H_out, W_out)``; with
    ``return_indices`` also the argmax of each window (flat over ``H·W``, not differentiable), like native.
    """
    return _max_pool(
        "max_pool2d", 2, input, kernel_size, stride, padding, dilation, ceil_mode, return_indices
    )


def _avg_pool(
    fn: str, n: int, input: Tensor, kernel_size: Any, stride: Any, padding: Any, ceil_mode: bool,
    count_include_pad: bool, divisor_override: int | None,
) -> Tensor:  # fmt: skip
    k, s, p, _ = _pool_args(fn, input, n, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None:
        if not isinstance(divisor_override, int) or isinstance(divisor_override, bool):
            raise TypeError(f"{fn}: divisor_override must be an int or None, got {divisor_override!r}")
        if divisor_override == 0:
            raise RuntimeError(f"{fn}: divisor_override must not be zero")
    return AvgPoolFunction.apply(input, k, s, p, bool(ceil_mode), bool(count_include_pad), divisor_override)


def avg_pool1d(
    input: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
) -> Tensor:
    """``torch.nn.functional.avg_pool1d`` with the explicit backward of :class:`AvgPoolFunction`.

    Shape ``(N, C, L)`` or ``(C, L)`` -> ``(N, C, L_out)`` or ``(C, L_out)``.
    """
    return _avg_pool("avg_pool1d", 1, input, kernel_size, stride, padding, ceil_mode, count_include_pad, None)


def avg_pool2d(
    input: Tensor,
    kernel_size: int | Sequence[int],
    stride: int | Sequence[int] | None = None,
    padding: int | Sequence[int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> Tensor:
    """``torch.nn.functional.avg_pool2d`` with the explicit backward of :class:`AvgPoolFunction`.

    Shape ``(N, C, H, W)`` or ``(C, H, W)`` -> ``(N, C, H_out, W_out)`` or ``(C, H_out, W_out)``.
    """
    return _avg_pool(
        "avg_pool2d", 2, input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    )


def adaptive_avg_pool1d(input: Tensor, output_size: int | Sequence[int]) -> Tensor:
    """``torch.nn.functional.adaptive_avg_pool1d`` with the explicit backward of
    :class:`AdaptiveAvgPoolFunction`: ``(N, C, L)`` or ``(C, L)`` -> ``(…, output_size)``."""
    out = _adaptive_output_size("adaptive_avg_pool1d", input, 1, output_size)
    return AdaptiveAvgPoolFunction.apply(input, out)


def adaptive_avg_pool2d(input: Tensor, output_size: int | None | Sequence[int | None]) -> Tensor:
    """``torch.nn.functional.adaptive_avg_pool2d`` with the explicit backward of
    :class:`AdaptiveAvgPoolFunction`: ``(N, C, H, W)`` or ``(C, H, W)`` -> ``(…, H_out, W_out)``
    (a ``None`` entry of ``output_size`` keeps the input's size)."""
    out = _adaptive_output_size("adaptive_avg_pool2d", input, 2, output_size)
    return AdaptiveAvgPoolFunction.apply(input, out)


def adaptive_max_pool1d(
    input: Tensor, output_size: int | Sequence[int], return_indices: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """``torch.nn.functional.adaptive_max_pool1d`` with the explicit backward of
    :class:`AdaptiveMaxPoolFunction`: ``(N, C, L)`` or ``(C, L)`` -> ``(…, output_size)``; with
    ``return_indices`` also the argmax of each window (not differentiable)."""
    out = _adaptive_output_size("adaptive_max_pool1d", input, 1, output_size)
    output, indices = AdaptiveMaxPoolFunction.apply(input, out)
    return (output, indices) if return_indices else output


def adaptive_max_pool2d(
    input: Tensor, output_size: int | None | Sequence[int | None], return_indices: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """``torch.nn.functional.adaptive_max_pool2d`` with the explicit backward of
    :class:`AdaptiveMaxPoolFunction`: ``(N, C, H, W)`` or ``(C, H, W)`` -> ``(…, H_out, W_out)``
    (a ``None`` entry keeps the input's size); with ``return_indices`` also the argmax of each
    window (flat over ``H·W``, not differentiable)."""
    out = _adaptive_output_size("adaptive_max_pool2d", input, 2, output_size)
    output, indices = AdaptiveMaxPoolFunction.apply(input, out)
    return (output, indices) if return_indices else output


# --------------------------------------------------------------------------------------------
# Modules: torch.nn's layers, forward calling the manual functions with their own attributes
# --------------------------------------------------------------------------------------------


class MaxPool1d(nn.MaxPool1d):
    """``torch.nn.MaxPool1d`` with the explicit backward of :func:`manual_bp.functional.max_pool1d`.

    >>> import torch, manual_bp
    >>> manual_bp.MaxPool1d(2)(torch.randn(1, 2, 6, requires_grad=True)).grad_fn.name()
    'MaxPoolFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return max_pool1d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
            self.return_indices,
        )


class MaxPool2d(nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` with the explicit backward of :func:`manual_bp.functional.max_pool2d`.

    >>> import torch, manual_bp
    >>> manual_bp.MaxPool2d(2)(torch.randn(1, 2, 4, 4, requires_grad=True)).grad_fn.name()
    'MaxPoolFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return max_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
            self.return_indices,
        )


class AvgPool1d(nn.AvgPool1d):
    """``torch.nn.AvgPool1d`` with the explicit backward of :func:`manual_bp.functional.avg_pool1d`.

    >>> import torch, manual_bp
    >>> manual_bp.AvgPool1d(2)(torch.randn(1, 2, 6, requires_grad=True)).grad_fn.name()
    'AvgPoolFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        return avg_pool1d(
            input, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad
        )


class AvgPool2d(nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` with the explicit backward of :func:`manual_bp.functional.avg_pool2d`.

    >>> import torch, manual_bp
    >>> manual_bp.AvgPool2d(2)(torch.randn(1, 2, 4, 4, requires_grad=True)).grad_fn.name()
    'AvgPoolFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        return avg_pool2d(
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )


class AdaptiveAvgPool1d(nn.AdaptiveAvgPool1d):
    """``torch.nn.AdaptiveAvgPool1d`` with the explicit backward of
    :func:`manual_bp.functional.adaptive_avg_pool1d`.

    >>> import torch, manual_bp
    >>> manual_bp.AdaptiveAvgPool1d(3)(torch.randn(1, 2, 7, requires_grad=True)).grad_fn.name()
    'AdaptiveAvgPoolFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        return adaptive_avg_pool1d(input, self.output_size)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``torch.nn.AdaptiveAvgPool2d`` with the explicit backward of
    :func:`manual_bp.functional.adaptive_avg_pool2d`.

    >>> import torch, manual_bp
    >>> manual_bp.AdaptiveAvgPool2d((2, None))(torch.randn(1, 2, 5, 5, requires_grad=True)).grad_fn.name()
    'AdaptiveAvgPoolFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        return adaptive_avg_pool2d(input, self.output_size)


class AdaptiveMaxPool1d(nn.AdaptiveMaxPool1d):
    """``torch.nn.AdaptiveMaxPool1d`` with the explicit backward of
    :func:`manual_bp.functional.adaptive_max_pool1d`.

    >>> import torch, manual_bp
    >>> manual_bp.AdaptiveMaxPool1d(3)(torch.randn(1, 2, 7, requires_grad=True)).grad_fn.name()
    'AdaptiveMaxPoolFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return adaptive_max_pool1d(input, self.output_size, self.return_indices)


class AdaptiveMaxPool2d(nn.AdaptiveMaxPool2d):
    """``torch.nn.AdaptiveMaxPool2d`` with the explicit backward of
    :func:`manual_bp.functional.adaptive_max_pool2d`.

    >>> import torch, manual_bp
    >>> manual_bp.AdaptiveMaxPool2d(2)(torch.randn(1, 2, 5, 5, requires_grad=True)).grad_fn.name()
    'AdaptiveMaxPoolFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        return adaptive_max_pool2d(input, self.output_size, self.return_indices)


# --------------------------------------------------------------------------------------------
# Samples and the registry
# --------------------------------------------------------------------------------------------


def _sample_maker(cases: Sequence[tuple[tuple[int, ...], dict[str, Any], str]]) -> Any:
    """``samples(dtype, device)`` of a pooling: ``(input shape, keyword arguments, label)`` per case,
    and the first case's input non-contiguous (continuous random inputs: no ties in a window)."""

    def make(dtype: torch.dtype, device: torch.device) -> list[Sample]:
        out = [Sample((tensor(shape, dtype, device),), kwargs, label) for shape, kwargs, label in cases]
        shape, kwargs, _ = cases[0]
        out.append(Sample((noncontiguous(shape, dtype, device),), kwargs, "non-contiguous"))
        return out

    return make


def _case(shape: tuple[int, ...], label: str, **kwargs: Any) -> tuple[tuple[int, ...], dict[str, Any], str]:
    return shape, kwargs, label


_MAX_POOL1D = (
    _case((2, 2, 7), "kernel 2", kernel_size=2),
    _case((2, 2, 7), "stride, padding", kernel_size=3, stride=2, padding=1),
    _case((2, 2, 7), "dilation", kernel_size=2, stride=1, dilation=2),
    _case((2, 2, 7), "ceil_mode", kernel_size=2, stride=2, ceil_mode=True),
    _case((2, 6), "unbatched, tuples", kernel_size=(3,), stride=(1,), padding=(1,)),
    _case((0, 2, 6), "empty batch", kernel_size=2),
)
_MAX_POOL2D = (
    _case((2, 2, 5, 5), "kernel 2", kernel_size=2),
    _case((1, 2, 5, 5), "stride, padding", kernel_size=3, stride=2, padding=1),
    _case((1, 2, 5, 5), "dilation, rectangular", kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1)),
    _case((2, 1, 5, 5), "ceil_mode", kernel_size=2, stride=2, ceil_mode=True),
    _case(
        (1, 2, 6, 5),
        "ceil_mode, padding, dilation",
        kernel_size=2,
        stride=2,
        padding=1,
        dilation=2,
        ceil_mode=True,
    ),
    _case((2, 5, 5), "unbatched", kernel_size=3, stride=1, padding=1),
    _case((0, 2, 4, 4), "empty batch", kernel_size=2),
)
# ceil_mode windows past the padded input: torch counts them only up to its end
_AVG_POOL1D = (
    _case((2, 2, 7), "kernel 2", kernel_size=2),
    _case((2, 2, 7), "padding counted", kernel_size=3, stride=2, padding=1),
    _case((2, 2, 7), "padding not counted", kernel_size=3, stride=2, padding=1, count_include_pad=False),
    _case((2, 2, 6), "ceil_mode past the padding", kernel_size=3, stride=2, padding=1, ceil_mode=True),
    _case(
        (2, 2, 6), "ceil_mode, padding not counted", kernel_size=3, stride=2, padding=1, ceil_mode=True,
        count_include_pad=False,
    ),
    _case((2, 6), "unbatched, ceil_mode, no padding", kernel_size=(4,), stride=(3,), ceil_mode=True),
)  # fmt: skip
_AVG_POOL2D = (
    _case((2, 2, 5, 5), "kernel 2", kernel_size=2),
    _case((1, 2, 5, 5), "padding counted", kernel_size=3, stride=2, padding=1),
    _case(
        (1, 2, 5, 5), "padding not counted, rectangular", kernel_size=(3, 2), stride=(2, 1), padding=(1, 1),
        count_include_pad=False,
    ),
    _case((1, 2, 6, 5), "ceil_mode past the padding", kernel_size=3, stride=2, padding=1, ceil_mode=True),
    _case(
        (1, 2, 6, 5), "ceil_mode, padding not counted", kernel_size=3, stride=2, padding=1, ceil_mode=True,
        count_include_pad=False,
    ),
    _case((2, 1, 5, 5), "divisor_override", kernel_size=2, stride=1, divisor_override=3),
    _case((2, 6, 5), "unbatched, ceil_mode", kernel_size=(4, 2), stride=(3, 2), ceil_mode=True),
    _case((0, 2, 4, 4), "empty batch", kernel_size=2),
)  # fmt: skip
_ADAPTIVE_1D = (
    _case((2, 2, 7), "overlapping windows", output_size=3),
    _case((2, 2, 6), "uneven windows", output_size=4),
    _case((2, 2, 4), "output larger than input", output_size=6),
    _case((2, 7), "unbatched, global", output_size=(1,)),
    _case((0, 2, 5), "empty batch", output_size=2),
)
_ADAPTIVE_2D = (
    _case((2, 2, 5, 5), "overlapping windows", output_size=3),
    _case((1, 2, 5, 5), "None keeps a size", output_size=(2, None)),
    _case((1, 2, 4, 5), "rectangular", output_size=(3, 2)),
    _case((2, 2, 3, 3), "output larger than input", output_size=(4, 5)),
    _case((2, 5, 5), "unbatched, global", output_size=1),
    _case((0, 2, 4, 4), "empty batch", output_size=2),
)

_MAX_FORMULA = (
    r"BP2: $\delta_x[\operatorname{argmax}_w] \mathrel{+}= \delta_y[w]$ (scatter-add to each window's argmax)"
)
_AVG_FORMULA = (
    r"BP2: $\delta_x[j] = \sum_{w \ni j} \delta_y[w] / d_w$, $d_w$ the window's divisor "
    r"(entries, padding counted or not, or divisor_override)"
)
_ADAPTIVE_AVG_FORMULA = (
    r"$y = A_h x A_w^\top$; BP2: $\delta_x = A_h^\top \delta_y A_w$, $A$ the row-normalised windows"
)

POOLING_OPS: tuple[Op, ...] = (
    Op(
        "max_pool1d",
        max_pool1d,
        F.max_pool1d,
        _sample_maker(_MAX_POOL1D),
        MaxPoolFunction,
        modules=((nn.MaxPool1d, MaxPool1d),),
        torch_functions=(F.max_pool1d, torch.max_pool1d),
        formula=_MAX_FORMULA,
    ),
    Op(
        "max_pool2d",
        max_pool2d,
        F.max_pool2d,
        _sample_maker(_MAX_POOL2D),
        MaxPoolFunction,
        modules=((nn.MaxPool2d, MaxPool2d),),
        torch_functions=(F.max_pool2d, torch.max_pool2d),
        formula=_MAX_FORMULA,
    ),
    Op(
        "avg_pool1d",
        avg_pool1d,
        F.avg_pool1d,
        _sample_maker(_AVG_POOL1D),
        AvgPoolFunction,
        modules=((nn.AvgPool1d, AvgPool1d),),
        torch_functions=(F.avg_pool1d,),
        formula=_AVG_FORMULA,
    ),
    Op(
        "avg_pool2d",
        avg_pool2d,
        F.avg_pool2d,
        _sample_maker(_AVG_POOL2D),
        AvgPoolFunction,
        modules=((nn.AvgPool2d, AvgPool2d),),
        torch_functions=(F.avg_pool2d,),
        formula=_AVG_FORMULA,
    ),
    Op(
        "adaptive_avg_pool1d",
        adaptive_avg_pool1d,
        F.adaptive_avg_pool1d,
        _sample_maker(_ADAPTIVE_1D),
        AdaptiveAvgPoolFunction,
        modules=((nn.AdaptiveAvgPool1d, AdaptiveAvgPool1d),),
        torch_functions=(F.adaptive_avg_pool1d,),
        formula=_ADAPTIVE_AVG_FORMULA,
    ),
    Op(
        "adaptive_avg_pool2d",
        adaptive_avg_pool2d,
        F.adaptive_avg_pool2d,
        _sample_maker(_ADAPTIVE_2D),
        AdaptiveAvgPoolFunction,
        modules=((nn.AdaptiveAvgPool2d, AdaptiveAvgPool2d),),
        torch_functions=(F.adaptive_avg_pool2d,),
        formula=_ADAPTIVE_AVG_FORMULA,
    ),
    Op(
        "adaptive_max_pool1d",
        adaptive_max_pool1d,
        F.adaptive_max_pool1d,
        _sample_maker(_ADAPTIVE_1D),
        AdaptiveMaxPoolFunction,
        modules=((nn.AdaptiveMaxPool1d, AdaptiveMaxPool1d),),
        torch_functions=(F.adaptive_max_pool1d,),
        formula=_MAX_FORMULA,
    ),
    Op(
        "adaptive_max_pool2d",
        adaptive_max_pool2d,
        F.adaptive_max_pool2d,
        _sample_maker(_ADAPTIVE_2D),
        AdaptiveMaxPoolFunction,
        modules=((nn.AdaptiveMaxPool2d, AdaptiveMaxPool2d),),
        torch_functions=(F.adaptive_max_pool2d,),
        formula=_MAX_FORMULA,
    ),
)
