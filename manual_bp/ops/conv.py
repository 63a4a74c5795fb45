r"""Convolution: ``conv1d/2d/3d``, ``conv_transpose1d/2d`` (and padding modes): the seed's linear layer
applied to patches. BP3 is δ against the input's patches, BP2 is ``δ W`` folded back.

A convolution is the linear layer ``x' = y Wᵀ + b`` applied at every output position ``m`` to the
patch of the input that the kernel covers there: ``x'_m = patch_m(y) Wᵀ + b``, with ``W`` seen as
``(C_out, C_in·K)`` (``K`` kernel offsets, ``W``'s own memory order). Its backward is the linear
layer's, position by position:

* BP3: ``∂c/∂W = Σ_m δ_mᵀ patch_m(y)`` — δ against the input's patches (im2col);
* BP2: ``∂c/∂y = fold(δ W)`` — each position's ``δ_m W`` is a patch of input gradient, added back
  where the patch came from (col2im): kernel offset by kernel offset, ``δ W_k`` is added onto the
  strided window of the (zero-padded) input that offset ``k`` reads;
* ``∂c/∂b = Σ_m δ_m``.

Everything runs channels first, for any number of spatial dims, so that ``W`` and ``∂c/∂W`` keep
their own layout (no weight-sized copies): δ is ``(C_out, N·L)``, the patches are the columns of
``(C_in·K, N·L)``, cut from strided ``unfold`` views of the zero-padded input in one copy
(:meth:`_Reader.patches`), and BP2's ``δᵀ W`` ``(N·L, C_in·K)`` is added offset by offset onto the
windows ``[.., o] = padded[.., o·stride + k·dilation]`` of a zero buffer (:meth:`_Reader.fold`).
Kernel offsets whose windows lie in the padding (a 3x3 kernel on a 1x1 map) have no weight gradient
and are skipped when they are most of the kernel. Groups are the batch dim of the matmuls. A
transposed convolution is the same layer read backwards: its forward is a conv's BP2, so its BP2 is
the convolution of δ's patches with ``W`` and its BP3 is the input against δ's patches: the same
windows and products with input and δ swapped.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manual_bp._function import (
    ManualFunction,
    autocast_cast,
    autocast_dtype,
    check_feedback,
    check_floating,
    check_same,
)
from manual_bp.ops._op import Op, Sample, noncontiguous, tensor
from manual_bp.ops.linear import FeedbackLayer
from manual_bp.ops.padding import pad

__all__ = [
    "CONV_OPS",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvFunction",
    "ConvTranspose1d",
    "ConvTranspose2d",
    "ConvTransposeFunction",
    "FeedbackConvFunction",
    "FeedbackConvTransposeFunction",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_feedback",
    "conv_transpose2d",
    "conv_transpose_feedback",
]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}

Pads = tuple[tuple[int, int], ...]  # (before, after) per spatial dim


# --------------------------------------------------------------------------------------------
# Patches (im2col) and fold (col2im), channels first
# --------------------------------------------------------------------------------------------


class _Reader:
    """How a convolution reads a tensor ``(N, C, *S)``: kernel, stride, dilation, the padding
    ``before`` each dim, and the output size ``out``; ``after`` pads the end so that every window fits."""

    def __init__(
        self,
        size: Sequence[int],
        out: Sequence[int],
        kernel: Sequence[int],
        stride: Sequence[int],
        before: Sequence[int],
        dilation: Sequence[int],
    ) -> None:
        self.size, self.out, self.kernel = tuple(size), tuple(out), tuple(kernel)
        self.stride, self.dilation = tuple(stride), tuple(dilation)
        self.spans = [dil * (k - 1) + 1 for k, dil in zip(kernel, dilation, strict=True)]
        self.pads: Pads = tuple(
            (b, max(0, (o - 1) * s + span - b - n))
            for n, o, s, b, span in zip(size, out, stride, before, self.spans, strict=True)
        )
        self.padded_size = tuple(n + b + a for n, (b, a) in zip(size, self.pads, strict=True))

    def live(self) -> tuple[slice, ...]:
        """Per kernel dim, a range of offsets outside which every offset reads only padding (no weight
        gradient; its share of ``δ W`` falls on the padding): from the first offset whose last read is
        past the padding before (kept at most ``before / dilation``, so that a cut kernel needs no
        negative padding) to the last whose first read is before the padding after."""
        return tuple(
            slice(max(0, min(-(-(b - s * (o - 1)) // dil), b // dil)), min(k, (b + n - 1) // dil + 1))
            for n, o, k, s, dil, (b, _) in zip(
                self.size, self.out, self.kernel, self.stride, self.dilation, self.pads, strict=True
            )
        )

    def cropped(self, live: tuple[slice, ...]) -> _Reader:
        """The same reads with the kernel cut to ``live`` offsets (the padding before shifts with it)."""
        return _Reader(
            self.size,
            self.out,
            [s.stop - s.start for s in live],
            self.stride,
            [b - s.start * dil for (b, _), s, dil in zip(self.pads, live, self.dilation, strict=True)],
            self.dilation,
        )

    def offsets(self) -> list[tuple[int, ...]]:
        """Every kernel offset ``k``, row-major (the order of ``W``'s flattened kernel dims)."""
        return list(itertools.product(*map(range, self.kernel)))

    def window(self, padded: Tensor, offset: Sequence[int]) -> Tensor:
        """What kernel offset ``k`` reads at every output position: the strided view ``(G, N, *O, C)`` of
        ``padded (G, N, *S_padded, C)`` with ``[g, n, o, c] = padded[g, n, o·stride + k·dilation, c]``."""
        return padded[
            (
                slice(None),
                slice(None),
                *(
                    slice(k * dil, k * dil + s * (o - 1) + 1, s)
                    for k, dil, s, o in zip(offset, self.dilation, self.stride, self.out, strict=True)
                ),
            )
        ]

    def patches(self, t: Tensor, groups: int) -> Tensor:
        """im2col: ``(N, C, *S) -> (G, C/G·K, N·L)``, the patch of every output position as a column
        (rows ordered channel, then kernel offset: ``W``'s flattened order; one copy)."""
        d = len(self.kernel)
        windows = F.pad(t, _pad_arg(self.pads))  # (N, C, *S_padded), zeros in the padding
        for i, (span, s, dil, o) in enumerate(
            zip(self.spans, self.stride, self.dilation, self.out, strict=True)
        ):
            windows = windows.unfold(2 + i, span, s).narrow(2 + i, 0, o)[..., ::dil]
        # (N, C, *O, *K) -> (C, *K, N, *O) -> (G, C/G·K, N·L)
        columns = windows.permute(1, *range(2 + d, 2 + 2 * d), 0, *range(2, 2 + d))
        return columns.reshape(groups, t.shape[1] // groups * math.prod(self.kernel), -1)

    def fold(self, rows: Tensor, n: int) -> Tensor:
        """col2im: ``(G, N·L, C/G·K) -> (N, C, *S)``, each position's row split by kernel offset and each
        offset's share added onto the window of the zero-padded input that offset reads (channels last:
        the share's channels are contiguous there; 2-3x faster than channels first at 2x2 to 4x4 maps)."""
        d, k = len(self.kernel), math.prod(self.kernel)
        g, _, width = rows.shape
        shares = rows.view(g, n, *self.out, width // k, k)  # -> (G, N, *O, C/G, K)
        grad = rows.new_zeros(g, n, *self.padded_size, width // k)  # (G, N, *S_padded, C/G)
        for i, offset in enumerate(self.offsets()):
            self.window(grad, offset).add_(shares[..., i])
        crop = [slice(b, b + s) for (b, _), s in zip(self.pads, self.size, strict=True)]
        inner = grad[(slice(None), slice(None), *crop)]  # the padding dropped
        # (G, N, *S, C/G) -> (N, G, C/G, *S) -> (N, C, *S), contiguous (one copy)
        return inner.permute(1, 0, 2 + d, *range(2, 2 + d)).flatten(1, 2).contiguous()


def _channels(t: Tensor, groups: int) -> Tensor:
    """``(N, C, *S) -> (G, C/G, N·P)``: a row per channel, a column per batch entry and position (a copy)."""
    return t.movedim(1, 0).reshape(groups, t.shape[1] // groups, -1)


def _batched(tensors: tuple[Tensor | None, ...], d: int) -> tuple[bool, list[Tensor | None]]:
    """Unbatched ``(C, *S)`` tensors get a batch dim of 1."""
    unbatched = tensors[0] is not None and tensors[0].dim() == d + 1
    return unbatched, [t.unsqueeze(0) if unbatched and t is not None else t for t in tensors]


# --------------------------------------------------------------------------------------------
# The Functions
# --------------------------------------------------------------------------------------------


class ConvFunction(ManualFunction):
    r"""An N-d convolution ``x'_m = patch_m(y) Wᵀ + b`` (cross-correlation, as in torch).

    .. math::
        \frac{\partial c}{\partial y} = \operatorname{fold}(\delta W), \quad
        \frac{\partial c}{\partial W} = \textstyle\sum_m \delta_m^\top \operatorname{patch}_m(y), \quad
        \frac{\partial c}{\partial b} = \textstyle\sum_m \delta_m
    """

    @staticmethod
    def forward(
        input: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: tuple[int, ...],
        padding: Pads,
        dilation: tuple[int, ...],
        groups: int,
    ) -> Tensor:
        conv = _CONV[len(stride)]
        if all(b == a for b, a in padding):
            return conv(input, weight, bias, stride, tuple(b for b, _ in padding), dilation, groups)
        # asymmetric ('same' with an even span): zeros padded first, as native does
        return conv(F.pad(input, _pad_arg(padding)), weight, bias, stride, 0, dilation, groups)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, weight, bias, stride, padding, dilation, groups = inputs
        needs = ctx.needs_input_grad
        ctx.save_for_backward(input if needs[1] else None, weight if needs[0] else None)
        ctx.input_shape, ctx.weight_shape, ctx.kernel = input.shape, weight.shape, weight.shape[2:]
        ctx.has_bias = bias is not None
        ctx.geometry = (stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        needs = ctx.needs_input_grad
        unbatched, (grad_output, input) = _batched((grad_output, input), len(stride))
        n, size, out = grad_output.shape[0], ctx.input_shape[-len(stride) :], grad_output.shape[2:]
        reader = _Reader(size, out, ctx.kernel, stride, [b for b, _ in padding], dilation)
        # kernel offsets that read only padding have no weight gradient and their δ W lands on the padding:
        # skipped when they are at least 3/4 of the kernel (3x3 on a 1x1 map: 8/9; 512 ch, batch 8: backward
        # 21 -> 6 ms); at 5/9 (stride 2 on 2x2) the copies of the cut weight and padded gradient cost more
        live, full = reader.live(), reader.kernel
        if 4 * math.prod([s.stop - s.start for s in live]) <= math.prod(full):
            reader = reader.cropped(live)
        else:
            live = tuple(slice(0, k) for k in full)
        delta = _channels(grad_output, groups)  # δ: (N, C_out, *O) -> (G, C_out/G, N·L)
        grad_input = grad_weight = grad_bias = None
        if needs[0]:
            w = weight[(slice(None), slice(None), *live)]  # W at the live offsets
            w = w.reshape(groups, delta.shape[1], -1)  # (C_out, C_in/G, *K) -> (G, C_out/G, C_in/G·K)
            # BP2: ∂c/∂y = fold(δ W); (G, N·L, C_out/G) x (G, C_out/G, C_in/G·K) -> (G, N·L, C_in/G·K)
            grad_input = reader.fold(delta.transpose(1, 2) @ w, n)  # -> (N, C_in, *S)
            if unbatched:
                grad_input = grad_input.squeeze(0)
        if needs[1]:
            patches = reader.patches(input, groups)  # y: (N, C_in, *S) -> (G, C_in/G·K, N·L)
            # BP3: ∂c/∂W = Σ_m δ_mᵀ patch_m(y);
            # (G, C_out/G, N·L) x (G, N·L, C_in/G·K) -> (G, C_out/G, C_in/G·K) -> (C_out, C_in/G, *K)
            grad_weight = (delta @ patches.transpose(1, 2)).view(-1, ctx.weight_shape[1], *reader.kernel)
            if reader.kernel != full:  # zeros for the offsets that read only padding
                zeros = tuple((s.start, k - s.stop) for s, k in zip(live, full, strict=True))
                grad_weight = F.pad(grad_weight, _pad_arg(zeros))
        if ctx.has_bias and needs[2]:
            grad_bias = delta.sum(2).flatten()  # BP3: ∂c/∂b = Σ_m δ_m; (G, C_out/G, N·L) -> (C_out,)
        return grad_input, grad_weight, grad_bias, None, None, None, None


class ConvTransposeFunction(ManualFunction):
    r"""An N-d transposed convolution: a conv's BP2 as a layer, ``x' = fold(y W) + b``.

    .. math::
        \frac{\partial c}{\partial y_m} = \operatorname{patch}_m(\delta) W^\top, \quad
        \frac{\partial c}{\partial W} = \textstyle\sum_m y_m^\top \operatorname{patch}_m(\delta), \quad
        \frac{\partial c}{\partial b} = \textstyle\sum \delta
    """

    @staticmethod
    def forward(
        input: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: tuple[int, ...],
        padding: tuple[int, ...],
        output_padding: tuple[int, ...],
        groups: int,
        dilation: tuple[int, ...],
    ) -> Tensor:
        conv_transpose = _CONV_TRANSPOSE[len(stride)]
        return conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, weight, bias, stride, padding, _, groups, dilation = inputs
        needs = ctx.needs_input_grad
        ctx.save_for_backward(input if needs[1] else None, weight if needs[0] else None)
        ctx.input_shape, ctx.weight_shape, ctx.kernel = input.shape, weight.shape, weight.shape[2:]
        ctx.has_bias = bias is not None
        ctx.geometry = (stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        needs = ctx.needs_input_grad
        unbatched, (grad_output, input) = _batched((grad_output, input), len(stride))
        n, size = grad_output.shape[0], ctx.input_shape[-len(stride) :]
        grad_input = grad_weight = grad_bias = None
        if needs[0] or needs[1]:
            # the convolution that reads δ with this geometry has the layer's input size as output size
            reader = _Reader(grad_output.shape[2:], size, ctx.kernel, stride, padding, dilation)
            patches = reader.patches(grad_output, groups)  # δ: (N, C_out, *S') -> (G, C_out/G·K, N·L)
        if needs[0]:
            # BP2: ∂c/∂y_m = patch_m(δ) Wᵀ; (G, C_in/G, C_out/G·K) x (G, C_out/G·K, N·L) -> (G, C_in/G, N·L)
            rows = weight.reshape(groups, -1, weight[0].numel()) @ patches
            grad_input = rows.view(weight.shape[0], n, *size).movedim(0, 1).contiguous()  # -> (N, C_in, *S)
            if unbatched:
                grad_input = grad_input.squeeze(0)
        if needs[1]:
            values = _channels(input, groups)  # y: (N, C_in, *S) -> (G, C_in/G, N·L)
            # BP3: ∂c/∂W = Σ_m y_mᵀ patch_m(δ);
            # (G, C_in/G, N·L) x (G, N·L, C_out/G·K) -> (G, C_in/G, C_out/G·K) -> (C_in, C_out/G, *K)
            grad_weight = (values @ patches.transpose(1, 2)).view(-1, *ctx.weight_shape[1:])
        if ctx.has_bias and needs[2]:
            # BP3: ∂c/∂b = Σ δ over batch and positions; (N, C_out, *S') -> (C_out,)
            grad_bias = grad_output.sum([0, *range(2, grad_output.dim())])
        return grad_input, grad_weight, grad_bias, None, None, None, None, None


class FeedbackConvFunction(ConvFunction):
    r""":class:`ConvFunction` whose BP2 folds back ``δ B`` with a feedback tensor ``B`` (the kernel's
    shape) instead of ``δ W``; BP3 unchanged. ``B`` is kept where :class:`ConvFunction` keeps ``W``,
    so the backward is the same written-out formula, read with ``B`` (:mod:`manual_bp.feedback`).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        input: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: tuple[int, ...],
        padding: Pads,
        dilation: tuple[int, ...],
        groups: int,
        feedback: Tensor,
    ) -> Tensor:
        return ConvFunction.forward(input, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, _, bias, *geometry, feedback = inputs
        ConvFunction.setup_context(ctx, (input, feedback, bias, *geometry), output)  # B where W would be

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return (*ConvFunction.backward(ctx, grad_output), None)  # BP2: fold(δ B); BP3 unchanged


class FeedbackConvTransposeFunction(ConvTransposeFunction):
    r""":class:`ConvTransposeFunction` whose BP2 is ``patch_m(δ) Bᵀ`` with a feedback tensor ``B``
    (the kernel's shape) instead of ``W``; BP3 unchanged (see :class:`FeedbackConvFunction`)."""

    @staticmethod
    def forward(  # type: ignore[override]
        input: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: tuple[int, ...],
        padding: tuple[int, ...],
        output_padding: tuple[int, ...],
        groups: int,
        dilation: tuple[int, ...],
        feedback: Tensor,
    ) -> Tensor:
        return ConvTransposeFunction.forward(
            input, weight, bias, stride, padding, output_padding, groups, dilation
        )

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, _, bias, *geometry, feedback = inputs
        ConvTransposeFunction.setup_context(ctx, (input, feedback, bias, *geometry), output)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        return (*ConvTransposeFunction.backward(ctx, grad_output), None)  # BP2 through B; BP3 unchanged


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _pad_arg(padding: Pads) -> list[int]:
    """``((before, after), ...)`` per dim, first dim first -> ``F.pad``'s list (last dim first)."""
    return [p for pair in reversed(padding) for p in pair]


def _ints(value: Any, d: int, name: str, op: str, minimum: int) -> tuple[int, ...]:
    """An int or a sequence of ``d`` ints (or one), each ``>= minimum``, as a ``d``-tuple."""
    values = (value,) if isinstance(value, int) else value
    if not isinstance(values, Sequence) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise TypeError(f"{op}: {name} must be an int or a tuple of {d} ints, got {value!r}")
    if len(values) == 1:
        values = tuple(values) * d
    if len(values) != d:
        raise ValueError(f"{op}: {name} must be an int or a tuple of {d} ints, got {value!r}")
    if any(v < minimum for v in values):
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{op}: {name} must be {what}, got {value!r}")
    return tuple(values)


def _check_tensors(op: str, d: int, input: Any, weight: Any, bias: Any) -> None:
    check_floating("input", input)
    check_floating("weight", weight)
    if bias is not None:
        check_floating("bias", bias)
    if weight.dim() != d + 2:
        raise ValueError(f"{op} expected a {d + 2}-D weight, got shape {tuple(weight.shape)}")
    if input.dim() not in (d + 1, d + 2):
        raise ValueError(
            f"Expected {d + 1}D (unbatched) or {d + 2}D (batched) input to {op}, "
            f"but got input of shape {tuple(input.shape)}"
        )


def _check_groups(op: str, groups: Any, channels: int, what: str) -> None:
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive integer, got {groups!r}")
    if channels % groups:
        raise ValueError(f"{op}: {what} ({channels}) must be divisible by groups ({groups})")


def _check_same_device_dtype(input: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    check_same("weight", weight, "input", input)
    if bias is not None:
        check_same("bias", bias, "input", input)


def _resolve_padding(
    op: str, padding: Any, d: int, kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> Pads:
    """``padding`` (int, tuple, ``'same'``, ``'valid'``) as ``(before, after)`` per dim; ``'same'`` puts
    the odd one of an even span ``dilation·(k − 1)`` after, as native does."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * d
        if padding != "same":
            raise ValueError(f"{op}: invalid padding string {padding!r}, expected 'same' or 'valid'")
        if any(s != 1 for s in stride):
            raise ValueError(
                f"{op}: padding='same' is not supported for strided convolutions (stride={stride})"
            )
        spans = [dil * (k - 1) for k, dil in zip(kernel, dilation, strict=True)]
        return tuple((s // 2, s - s // 2) for s in spans)
    return tuple((p, p) for p in _ints(padding, d, "padding", op, 0))


def _conv(
    d: int,
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
    feedback: Tensor | None = None,
) -> Tensor:
    op = f"conv{d}d"
    _check_tensors(op, d, input, weight, bias)
    stride = _ints(stride, d, "stride", op, 1)
    dilation = _ints(dilation, d, "dilation", op, 1)
    out_channels, kernel = weight.shape[0], tuple(weight.shape[2:])
    _check_groups(op, groups, out_channels, "out_channels (weight.shape[0])")
    channels = input.shape[-d - 1]
    if channels != weight.shape[1] * groups:
        raise ValueError(
            f"{op} expected input with {weight.shape[1] * groups} channels "
            f"(weight.shape[1]={weight.shape[1]} x groups={groups}), "
            f"got {channels} channels (input of shape {tuple(input.shape)})"
        )
    if bias is not None and bias.shape != (out_channels,):
        raise ValueError(f"{op}: bias must have shape ({out_channels},), got shape {tuple(bias.shape)}")
    pads = _resolve_padding(op, padding, d, kernel, stride, dilation)
    size = input.shape[-d:]
    padded = [s + b + a for s, (b, a) in zip(size, pads, strict=True)]
    span = [dil * (k - 1) + 1 for k, dil in zip(kernel, dilation, strict=True)]
    if any(p < k for p, k in zip(padded, span, strict=True)):
        raise ValueError(
            f"{op}: the padded input size per channel {tuple(padded)} is smaller than the (dilated) "
            f"kernel size {tuple(span)}"
        )
    input, weight, bias, feedback = _cast(input, weight, bias, feedback)
    if feedback is None:
        return ConvFunction.apply(input, weight, bias, stride, pads, dilation, groups)
    return FeedbackConvFunction.apply(input, weight, bias, stride, pads, dilation, groups, feedback)


def _cast(
    input: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The tensors cast as autocast casts a convolution's, checked to share a device and dtype."""
    if feedback is not None:
        check_feedback(feedback, weight)
    cast = autocast_dtype(input)
    if cast is not None:
        input, weight, bias, feedback = (autocast_cast(t, cast) for t in (input, weight, bias, feedback))  # type: ignore[assignment]
    _check_same_device_dtype(input, weight, bias)
    if feedback is not None:
        check_same("feedback", feedback, "weight", weight)
    return input, weight, bias, feedback


def _conv_transpose(
    d: int,
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: Any,
    padding: Any,
    output_padding: Any,
    groups: int,
    dilation: Any,
    feedback: Tensor | None = None,
) -> Tensor:
    op = f"conv_transpose{d}d"
    _check_tensors(op, d, input, weight, bias)
    stride = _ints(stride, d, "stride", op, 1)
    dilation = _ints(dilation, d, "dilation", op, 1)
    if isinstance(padding, str):
        raise ValueError(f"{op}: padding must be an int or a tuple of {d} ints, got {padding!r}")
    padding = _ints(padding, d, "padding", op, 0)
    output_padding = _ints(output_padding, d, "output_padding", op, 0)
    in_channels, kernel = weight.shape[0], tuple(weight.shape[2:])
    _check_groups(op, groups, in_channels, "in_channels (weight.shape[0])")
    channels = input.shape[-d - 1]
    if channels != in_channels:
        raise ValueError(
            f"{op} expected input with {in_channels} channels (weight.shape[0]), "
            f"got {channels} channels (input of shape {tuple(input.shape)})"
        )
    out_channels = weight.shape[1] * groups
    if bias is not None and bias.shape != (out_channels,):
        raise ValueError(f"{op}: bias must have shape ({out_channels},), got shape {tuple(bias.shape)}")
    if any(o >= s and o >= dil for o, s, dil in zip(output_padding, stride, dilation, strict=True)):
        raise ValueError(
            f"{op}: output_padding must be smaller than either stride or dilation, got "
            f"output_padding={output_padding}, stride={stride}, dilation={dilation}"
        )
    size = input.shape[-d:]
    out = [
        (s - 1) * st - 2 * p + dil * (k - 1) + op_ + 1
        for s, st, p, dil, k, op_ in zip(size, stride, padding, dilation, kernel, output_padding, strict=True)
    ]
    if any(o < 1 for o in out):
        raise ValueError(
            f"{op}: the output size {tuple(out)} is too small (input of shape {tuple(input.shape)})"
        )
    input, weight, bias, feedback = _cast(input, weight, bias, feedback)
    args = (input, weight, bias, stride, padding, output_padding, groups, dilation)
    if feedback is None:
        return ConvTransposeFunction.apply(*args)
    return FeedbackConvTransposeFunction.apply(*args, feedback)


# --------------------------------------------------------------------------------------------
# Public functions (torch.nn.functional's signatures)
# --------------------------------------------------------------------------------------------

_IntOrTuple = int | Sequence[int]


def conv1d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple | str = 0,
    dilation: _IntOrTuple = 1,
    groups: int = 1,
) -> Tensor:
    """``F.conv1d`` with the explicit backward of :class:`ConvFunction`.

    Shape: ``input (N, C_in, L)`` or ``(C_in, L)``, ``weight (C_out, C_in/groups, k)``.
    """
    return _conv(1, input, weight, bias, stride, padding, dilation, groups)


def conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple | str = 0,
    dilation: _IntOrTuple = 1,
    groups: int = 1,
) -> Tensor:
    """``F.conv2d`` with the explicit backward of :class:`ConvFunction`.

    Shape: ``input (N, C_in, H, W)`` or ``(C_in, H, W)``, ``weight (C_out, C_in/groups, kH, kW)``.
    """
    return _conv(2, input, weight, bias, stride, padding, dilation, groups)


def conv3d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple | str = 0,
    dilation: _IntOrTuple = 1,
    groups: int = 1,
) -> Tensor:
    """``F.conv3d`` with the explicit backward of :class:`ConvFunction`.

    Shape: ``input (N, C_in, D, H, W)`` or ``(C_in, D, H, W)``, ``weight (C_out, C_in/groups, kD, kH, kW)``.
    """
    return _conv(3, input, weight, bias, stride, padding, dilation, groups)


def conv_transpose1d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple = 0,
    output_padding: _IntOrTuple = 0,
    groups: int = 1,
    dilation: _IntOrTuple = 1,
) -> Tensor:
    """``F.conv_transpose1d`` with the explicit backward of :class:`ConvTransposeFunction`.

    Shape: ``input (N, C_in, L)`` or ``(C_in, L)``, ``weight (C_in, C_out/groups, k)``.
    """
    return _conv_transpose(1, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_transpose2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple = 0,
    output_padding: _IntOrTuple = 0,
    groups: int = 1,
    dilation: _IntOrTuple = 1,
) -> Tensor:
    """``F.conv_transpose2d`` with the explicit backward of :class:`ConvTransposeFunction`.

    Shape: ``input (N, C_in, H, W)`` or ``(C_in, H, W)``, ``weight (C_in, C_out/groups, kH, kW)``.
    """
    return _conv_transpose(2, input, weight, bias, stride, padding, output_padding, groups, dilation)


def conv_feedback(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple | str = 0,
    dilation: _IntOrTuple = 1,
    groups: int = 1,
    *,
    feedback: Tensor,
) -> Tensor:
    """``conv1d``/``2d``/``3d`` (by ``weight``'s dimension) whose BP2 folds back ``δ feedback``
    (:class:`FeedbackConvFunction`): ``feedback`` has the kernel's shape and stands in for it."""
    d = weight.dim() - 2 if isinstance(weight, Tensor) else 0
    if d not in (1, 2, 3):
        raise ValueError(
            f"conv_feedback expected a 3-D to 5-D weight (C_out, C_in/groups, *K), got {d + 2}-D"
        )
    return _conv(d, input, weight, bias, stride, padding, dilation, groups, feedback)


def conv_transpose_feedback(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: _IntOrTuple = 1,
    padding: _IntOrTuple = 0,
    output_padding: _IntOrTuple = 0,
    groups: int = 1,
    dilation: _IntOrTuple = 1,
    *,
    feedback: Tensor,
) -> Tensor:
    """``conv_transpose1d``/``2d`` whose BP2 reads ``feedback`` (the kernel's shape) in place of
    the kernel (:class:`FeedbackConvTransposeFunction`)."""
    d = weight.dim() - 2 if isinstance(weight, Tensor) else 0
    if d not in (1, 2):
        raise ValueError(
            f"conv_transpose_feedback expected a 3-D or 4-D weight (C_in, C_out/groups, *K), got {d + 2}-D"
        )
    return _conv_transpose(
        d, input, weight, bias, stride, padding, output_padding, groups, dilation, feedback
    )


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class _ConvForward(FeedbackLayer):
    """``_conv_forward`` of the drop-in conv modules (what ``torch.nn``'s ``forward`` calls)."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        if self.feedback_rule == "backprop":
            return self.manual_forward(input, weight, bias, None)
        from manual_bp.feedback import feedback_forward

        return feedback_forward(self, input, weight, bias)

    def manual_forward(
        self, input: Tensor, weight: Tensor, bias: Tensor | None, feedback: Tensor | None
    ) -> Tensor:
        """The layer with BP2 through ``feedback`` (``weight`` itself when ``None``)."""
        m: Any = self
        d = len(m.kernel_size)
        if m.padding_mode != "zeros":
            # as native: the mode's padding first, then the convolution without padding
            padded = pad(input, m._reversed_padding_repeated_twice, m.padding_mode)
            return _conv(d, padded, weight, bias, m.stride, 0, m.dilation, m.groups, feedback)
        return _conv(d, input, weight, bias, m.stride, m.padding, m.dilation, m.groups, feedback)


class Conv1d(_ConvForward, nn.Conv1d):
    """``torch.nn.Conv1d`` with the explicit backward of :func:`manual_bp.functional.conv1d`.

    >>> import torch, manual_bp
    >>> layer = manual_bp.Conv1d(2, 3, 3, padding="same", padding_mode="circular")
    >>> layer(torch.randn(4, 2, 5)).grad_fn.name()
    'ConvFunctionBackward'
    """

    __module__ = "manual_bp.modules"


class Conv2d(_ConvForward, nn.Conv2d):
    """``torch.nn.Conv2d`` with the explicit backward of :func:`manual_bp.functional.conv2d`.

    >>> import torch, manual_bp
    >>> layer = manual_bp.Conv2d(3, 8, 3, stride=2, padding=1)
    >>> layer(torch.randn(4, 3, 8, 8)).grad_fn.name()
    'ConvFunctionBackward'
    """

    __module__ = "manual_bp.modules"


class Conv3d(_ConvForward, nn.Conv3d):
    """``torch.nn.Conv3d`` with the explicit backward of :func:`manual_bp.functional.conv3d`.

    >>> import torch, manual_bp
    >>> layer = manual_bp.Conv3d(2, 4, 3, padding=1)
    >>> layer(torch.randn(1, 2, 4, 4, 4)).grad_fn.name()
    'ConvFunctionBackward'
    """

    __module__ = "manual_bp.modules"


class _ConvTransposeForward(FeedbackLayer):
    """``forward`` of the drop-in transposed conv modules (``torch.nn``'s, with the manual function)."""

    _dims: int

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        m: Any = self
        if m.padding_mode != "zeros":
            raise ValueError(f"Only `zeros` padding mode is supported for {type(self).__name__}")
        if self.feedback_rule == "backprop":
            return self.manual_forward(input, m.weight, m.bias, None, output_size)
        from manual_bp.feedback import feedback_forward

        return feedback_forward(self, input, m.weight, m.bias, output_size)

    def manual_forward(
        self,
        input: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        feedback: Tensor | None,
        output_size: list[int] | None = None,
    ) -> Tensor:
        """The layer with BP2 through ``feedback`` (``weight`` itself when ``None``)."""
        m: Any = self
        output_padding = m._output_padding(
            input, output_size, m.stride, m.padding, m.kernel_size, self._dims, m.dilation
        )
        return _conv_transpose(
            self._dims,
            input,
            weight,
            bias,
            m.stride,
            m.padding,
            output_padding,
            m.groups,
            m.dilation,
            feedback,
        )


class ConvTranspose1d(_ConvTransposeForward, nn.ConvTranspose1d):
    """``torch.nn.ConvTranspose1d`` with the explicit backward of
    :func:`manual_bp.functional.conv_transpose1d`.

    >>> import torch, manual_bp
    >>> layer = manual_bp.ConvTranspose1d(2, 3, 3, stride=2)
    >>> layer(torch.randn(4, 2, 5)).grad_fn.name()
    'ConvTransposeFunctionBackward'
    """

    __module__ = "manual_bp.modules"
    _dims = 1


class ConvTranspose2d(_ConvTransposeForward, nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` with the explicit backward of
    :func:`manual_bp.functional.conv_transpose2d`.

    >>> import torch, manual_bp
    >>> layer = manual_bp.ConvTranspose2d(3, 2, 2, stride=2)
    >>> layer(torch.randn(4, 3, 5, 5), output_size=[11, 11]).grad_fn.name()
    'ConvTransposeFunctionBackward'
    """

    __module__ = "manual_bp.modules"
    _dims = 2


# --------------------------------------------------------------------------------------------
# Samples and the registry
# --------------------------------------------------------------------------------------------


def _conv_samples(d: int) -> Any:
    """Samples of ``conv{d}d``: every option, small enough for a full Jacobian (N=2 or 1, C_in 2..4)."""
    size = {1: (5,), 2: (4, 4), 3: (3, 3, 3)}[d]
    n = 1 if d == 3 else 2

    def make(dtype: torch.dtype, device: torch.device) -> list[Sample]:
        def t(*shape: int) -> Tensor:
            return tensor(shape, dtype, device)

        def k(k: int) -> tuple[int, ...]:
            return (k,) * d

        one = (1,) * d
        out = [
            Sample((t(n, 2, *size), t(3, 2, *k(2)), t(3)), {}, "bias"),
            Sample(
                (t(n, 2, *size), t(2, 2, *k(3)), None), {"stride": 2, "padding": 1}, "stride 2, padding 1"
            ),
            Sample(
                (t(n, 2, *size), t(2, 2, *k(2)), t(2)),
                {"dilation": 2, "padding": one},
                "dilation 2, tuple padding",
            ),
            Sample((t(n, 4, *size), t(4, 2, *k(2)), t(4)), {"groups": 2}, "groups 2"),
            Sample(
                (t(n, 3, *size), t(3, 1, *k(2)), None),
                {"groups": 3, "padding": "same"},
                "depthwise, 'same' (even kernel)",
            ),
            Sample(
                (t(n, 2, *size), t(2, 2, *k(3)), t(2)),
                {"padding": "same", "dilation": 2 if d < 3 else 1},
                "'same', dilation",
            ),
            Sample((t(n, 2, *size), t(2, 2, *k(3)), None), {"padding": "valid"}, "'valid', no bias"),
            Sample((t(2, *size), t(3, 2, *k(2)), t(3)), {"stride": 1, "padding": 1}, "unbatched"),
            Sample(
                (noncontiguous((n, 2, *size), dtype, device), t(2, 2, *k(2)), t(2)),
                {},
                "non-contiguous input",
            ),
            Sample((t(0, 2, *size), t(2, 2, *k(2)), t(2)), {}, "empty batch"),
        ]
        if d == 2:
            out.append(
                Sample(
                    (t(n, 2, 4, 5), t(2, 2, 2, 3), t(2)),
                    {"stride": (1, 2), "padding": (1, 0), "dilation": (2, 1)},
                    "per-dim stride, padding, dilation",
                )
            )
        return out

    return make


def _conv_transpose_samples(d: int) -> Any:
    """Samples of ``conv_transpose{d}d``: every option; outputs of at most ~60 elements."""
    size = {1: (4,), 2: (3, 3)}[d]

    def make(dtype: torch.dtype, device: torch.device) -> list[Sample]:
        def t(*shape: int) -> Tensor:
            return tensor(shape, dtype, device)

        def k(k: int) -> tuple[int, ...]:
            return (k,) * d

        n = 2 if d == 1 else 1
        out = [
            Sample((t(n, 2, *size), t(2, 3, *k(2)), t(3)), {}, "bias"),
            Sample(
                (t(n, 2, *size), t(2, 1, *k(3)), None),
                {"stride": 2, "padding": 1, "output_padding": 1},
                "stride 2, padding 1, output_padding 1",
            ),
            Sample(
                (t(n, 2, *size), t(2, 2, *k(2)), t(2)),
                {"dilation": 2, "padding": (1,) * d},
                "dilation 2, tuple padding",
            ),
            Sample((t(n, 4, *size), t(4, 1, *k(2)), t(2)), {"groups": 2}, "groups 2"),
            Sample(
                (t(n, 2, *size), t(2, 1, *k(2)), None),
                {"groups": 2, "stride": 2},
                "depthwise, stride 2, no bias",
            ),
            Sample((t(2, *size), t(2, 2, *k(2)), t(2)), {}, "unbatched"),
            Sample(
                (noncontiguous((n, 2, *size), dtype, device), t(2, 2, *k(2)), t(2)),
                {},
                "non-contiguous input",
            ),
        ]
        if d == 2:
            out.append(
                Sample(
                    (t(1, 2, 2, 3), t(2, 1, 2, 3), t(1)),
                    {"stride": (2, 1), "padding": (0, 1), "output_padding": (1, 0), "dilation": (1, 2)},
                    "per-dim stride, padding, output_padding, dilation",
                )
            )
        return out

    return make


_CONV_FORMULA = (
    r"BP2: $\delta_y = \mathrm{fold}(\delta W)$; BP3: $\partial c/\partial W = \sum_m \delta_m^\top "
    r"\mathrm{patch}_m(y)$, $\partial c/\partial b = \sum_m \delta_m$"
)
_CONV_TRANSPOSE_FORMULA = (
    r"BP2: $\delta_{y,m} = \mathrm{patch}_m(\delta) W^\top$; BP3: $\partial c/\partial W = \sum_m "
    r"y_m^\top \mathrm{patch}_m(\delta)$, $\partial c/\partial b = \sum \delta$"
)

CONV_OPS: tuple[Op, ...] = (
    *(
        Op(
            f"conv{d}d",
            fn,
            _CONV[d],
            _conv_samples(d),
            ConvFunction,
            modules=((native, module),),
            torch_functions=(_CONV[d], getattr(torch, f"conv{d}d")),
            formula=_CONV_FORMULA,
            feedback=conv_feedback,
        )
        for d, fn, native, module in (
            (1, conv1d, nn.Conv1d, Conv1d),
            (2, conv2d, nn.Conv2d, Conv2d),
            (3, conv3d, nn.Conv3d, Conv3d),
        )
    ),
    *(
        Op(
            f"conv_transpose{d}d",
            fn,
            _CONV_TRANSPOSE[d],
            _conv_transpose_samples(d),
            ConvTransposeFunction,
            modules=((native, module),),
            torch_functions=(_CONV_TRANSPOSE[d], getattr(torch, f"conv_transpose{d}d")),
            formula=_CONV_TRANSPOSE_FORMULA,
            feedback=conv_transpose_feedback,
        )
        for d, fn, native, module in (
            (1, conv_transpose1d, nn.ConvTranspose1d, ConvTranspose1d),
            (2, conv_transpose2d, nn.ConvTranspose2d, ConvTranspose2d),
        )
    ),
)
