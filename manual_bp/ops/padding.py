r"""Padding: ``F.pad`` with modes constant, reflect, replicate and circular; BP2 adds each padded
entry's δ back onto the input entry it was copied from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manual_bp._function import ManualFunction, autocast_dtype, check_floating
from manual_bp.ops._op import Op, Sample, noncontiguous, tensor
from manual_bp.ops.elementwise import to_float32

__all__ = [
    "PADDING_OPS",
    "CircularPad1d",
    "CircularPad2d",
    "CircularPad3d",
    "ConstantPad1d",
    "ConstantPad2d",
    "ConstantPad3d",
    "PadFunction",
    "ReflectionPad1d",
    "ReflectionPad2d",
    "ReflectionPad3d",
    "ReplicationPad1d",
    "ReplicationPad2d",
    "ReplicationPad3d",
    "ZeroPad1d",
    "ZeroPad2d",
    "ZeroPad3d",
    "pad",
]

_MODES = ("constant", "reflect", "replicate", "circular")


def source_index(mode: str, size: int, left: int, right: int, device: torch.device) -> Tensor:
    """For each output position ``j`` of one padded dim, the input position its value is copied
    from (``size`` input entries, ``left``/``right`` padded, negative ones crop): ``i = j − left``
    mirrored about the input's edges (reflect) or clamped to them (replicate); circular mode wraps
    around the part of the input that negative pads leave, ``[crop_left, size − crop_right)``."""
    i = torch.arange(-left, size + right, device=device)
    if mode == "reflect":
        return torch.where(i < 0, -i, torch.where(i >= size, 2 * (size - 1) - i, i))
    if mode == "replicate":
        return i.clamp(0, size - 1)
    crop_left, kept = max(-left, 0), size - max(-left, 0) - max(-right, 0)
    return (i - crop_left).remainder(kept) + crop_left  # circular


class PadFunction(ManualFunction):
    r"""``F.pad(input, pad, mode, value)``; ``pad`` is a tuple ``(left_last, right_last, left_2nd_last, …)``.

    Each padded output entry is a copy of one input entry (or the constant), so BP2 adds its δ back
    there, one padded dim at a time: constant mode crops δ (and puts zeros where a negative pad
    cropped the input); the other modes ``index_add`` δ onto the source positions
    :func:`source_index` gives (the mirrored, edge-replicated or wrapped-around strips).
    """

    @staticmethod
    def forward(input: Tensor, pad: tuple[int, ...], mode: str, value: float | None) -> Tensor:
        return F.pad(input, pad, mode, value)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, ctx.pad, ctx.mode, _ = inputs
        ctx.input_shape = input.shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None, None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        grad = grad_output
        for k in range(len(ctx.pad) // 2):  # pad pairs from the last dim backwards
            dim = grad.dim() - 1 - k
            size, (left, right) = ctx.input_shape[dim], ctx.pad[2 * k : 2 * k + 2]
            if ctx.mode == "constant":
                # BP2: δ_x = δ_y cropped to the input's entries; (…, L+l+r, …) -> (…, L, …)
                kept = grad.narrow(dim, max(left, 0), grad.shape[dim] - max(left, 0) - max(right, 0))
                if left < 0 or right < 0:  # entries a negative pad cropped get no gradient
                    zeros = [grad.new_zeros(_resized(grad.shape, dim, max(-n, 0))) for n in (left, right)]
                    # (…, L − crop_l − crop_r, …) -> (…, L, …)
                    kept = torch.cat([zeros[0], kept, zeros[1]], dim)
                grad = kept
            else:
                # BP2: δ_x[src(j)] += δ_y[j]: the mirrored / edge / wrapped strips added back onto
                # the entries they copy; (…, L+l+r, …) -> (…, L, …)
                src = source_index(ctx.mode, size, left, right, grad.device)
                grad = grad.new_zeros(_resized(grad.shape, dim, size)).index_add_(
                    dim, src, grad
                )  # (new zeros)
        return grad, None, None, None


def _resized(shape: torch.Size, dim: int, size: int) -> tuple[int, ...]:
    return (*shape[:dim], size, *shape[dim + 1 :])


def pad(input: Tensor, pad: Sequence[int], mode: str = "constant", value: float | None = None) -> Tensor:
    """``torch.nn.functional.pad`` with the explicit backward of :class:`PadFunction`.

    ``pad`` gives ``(left, right)`` pairs from the last dim backwards; negative pads crop. Modes
    ``constant`` (fill ``value``, default 0, any number of dims), ``reflect``, ``replicate`` and
    ``circular`` (the last 1, 2 or 3 dims of a batched or unbatched input). Under CPU autocast
    reflect (1-d, 2-d) and replicate pads run in float32, as native's do.
    """
    pad = _check_pad(input, pad, mode, value)
    if mode in ("reflect", "replicate") and input.device.type == "cpu" and autocast_dtype(input) is not None:
        if mode == "replicate" or len(pad) <= 4:  # the float32 list of CPU autocast
            input = to_float32(input)
    return PadFunction.apply(input, pad, mode, value)


def _check_pad(input: Tensor, pad: Sequence[int], mode: str, value: float | None) -> tuple[int, ...]:
    """Raise a clear error for arguments ``F.pad`` rejects; return ``pad`` as a tuple of ints."""
    check_floating("input", input)
    if not isinstance(pad, Sequence) or not all(isinstance(p, int) and not isinstance(p, bool) for p in pad):
        raise TypeError(f"pad must be a tuple or list of ints, got {pad!r}")
    pad = tuple(pad)
    if mode not in _MODES:
        raise NotImplementedError(f"Unrecognised padding mode {mode!r}: expected one of {', '.join(_MODES)}")
    if len(pad) % 2:
        raise RuntimeError(f"Padding length must be divisible by 2, got {len(pad)} entries {pad}")
    if len(pad) > 2 * input.dim():
        raise RuntimeError(
            "Padding length should be less than or equal to two times the input dimension, "
            f"got {len(pad)} entries for an input of {input.dim()} dims"
        )
    dims = len(pad) // 2
    if mode != "constant":
        if value is not None and value != 0:
            raise RuntimeError(f'Padding mode "{mode}" doesn\'t take in value argument, got value={value}')
        if not 1 <= dims <= 3 or input.dim() not in (dims + 1, dims + 2):
            raise NotImplementedError(
                f"{mode} padding of {len(pad)} entries pads the last {dims} dims of a "
                f"{dims + 1}-D (unbatched) or {dims + 2}-D (batched) input, got a {input.dim()}-D input"
            )
    for k in range(dims):
        dim = input.dim() - 1 - k
        size, (left, right) = input.shape[dim], pad[2 * k : 2 * k + 2]
        out = size + left + right
        if mode in ("reflect", "replicate") and any(s == 0 for s in input.shape[1:]):
            raise RuntimeError(
                f"{mode} padding expects non-zero sizes in all dims but the first, got shape "
                f"{tuple(input.shape)}"
            )
        if mode == "reflect" and (left >= size or right >= size):
            raise RuntimeError(
                "reflect padding must be less than the padded dim's size, got padding "
                f"({left}, {right}) for dim {dim} of size {size} (input shape {tuple(input.shape)})"
            )
        kept = size - max(-left, 0) - max(-right, 0)  # what negative pads leave of the dim
        if mode == "circular" and (left > size or right > size or (out > 0 and max(left, right) > kept)):
            raise RuntimeError(
                "circular padding must be at most the padded dim's size after negative pads crop it "
                f"(it wraps around once), got padding ({left}, {right}) for dim {dim} of size {size}"
            )
        if out < (1 if mode in ("reflect", "replicate") else 0):
            raise RuntimeError(
                f"padding ({left}, {right}) of dim {dim} (size {size}) gives an output size of {out}, "
                f"expected {'at least 1' if mode in ('reflect', 'replicate') else 'a non-negative size'}"
            )
    return pad


# --------------------------------------------------------------------------------------------
# Modules: torch.nn's padding layers all call F.pad(input, self.padding, mode, value) in forward
# --------------------------------------------------------------------------------------------


def _padding_module(native: type[nn.Module], mode: str) -> type[nn.Module]:
    """The drop-in twin of one of torch.nn's padding layers (``forward`` calls :func:`pad`)."""
    constant = mode == "constant"

    def forward(self: nn.Module, input: Tensor) -> Tensor:
        return pad(input, self.padding, mode, self.value if constant else None)

    name = native.__name__
    doc = f"""``torch.nn.{name}`` with the explicit backward of :func:`manual_bp.functional.pad`.

    >>> import torch, manual_bp
    >>> layer = manual_bp.{name}({"1, 0.5" if name.startswith("Constant") else "1"})
    >>> layer(torch.randn({", ".join(["2"] * (int(name[-2]) + 1))}, requires_grad=True)).grad_fn.name()
    'PadFunctionBackward'
    """
    return type(name, (native,), {"forward": forward, "__doc__": doc, "__module__": "manual_bp.modules"})


_NATIVE_MODULES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.ConstantPad1d, "constant"),
    (nn.ConstantPad2d, "constant"),
    (nn.ConstantPad3d, "constant"),
    (nn.ZeroPad1d, "constant"),
    (nn.ZeroPad2d, "constant"),
    (nn.ZeroPad3d, "constant"),
    (nn.ReflectionPad1d, "reflect"),
    (nn.ReflectionPad2d, "reflect"),
    (nn.ReflectionPad3d, "reflect"),
    (nn.ReplicationPad1d, "replicate"),
    (nn.ReplicationPad2d, "replicate"),
    (nn.ReplicationPad3d, "replicate"),
    (nn.CircularPad1d, "circular"),
    (nn.CircularPad2d, "circular"),
    (nn.CircularPad3d, "circular"),
)
_MODULES = {native: _padding_module(native, mode) for native, mode in _NATIVE_MODULES}
ConstantPad1d, ConstantPad2d, ConstantPad3d, ZeroPad1d, ZeroPad2d, ZeroPad3d = list(_MODULES.values())[:6]
ReflectionPad1d, ReflectionPad2d, ReflectionPad3d = list(_MODULES.values())[6:9]
ReplicationPad1d, ReplicationPad2d, ReplicationPad3d = list(_MODULES.values())[9:12]
CircularPad1d, CircularPad2d, CircularPad3d = list(_MODULES.values())[12:15]


def _samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def x(*shape: int) -> Tensor:
        return tensor(shape, dtype, device)

    return [
        Sample((x(2, 2, 5), (1, 2)), {}, "constant 1-d, zeros"),
        Sample((x(2, 3, 4), (2, -1, 1, 0)), {"mode": "constant", "value": 0.5}, "value, negative pad"),
        Sample((x(2, 3, 2), (1, 1, 0, 2, 1, 0)), {}, "constant, every dim of a 3-D input"),
        Sample((x(2, 2, 5), (2, 3)), {"mode": "reflect"}, "reflect 1-d"),
        Sample((x(2, 4, 5), (1, 2, 3, 1)), {"mode": "reflect"}, "reflect 2-d, unbatched"),
        Sample((x(1, 1, 3, 3, 2), (1, 0, 2, 1, 1, 1)), {"mode": "reflect"}, "reflect 3-d"),
        Sample((x(2, 2, 4), (3, 1)), {"mode": "replicate"}, "replicate 1-d"),
        Sample((noncontiguous((1, 2, 4, 3), dtype, device), (2, 1, -1, 2)), {"mode": "replicate"},
               "replicate 2-d, negative pad, non-contiguous"),
        Sample((x(2, 2, 5), (2, 5)), {"mode": "circular"}, "circular 1-d, a full wrap"),
        Sample((x(2, 3, 4), (1, 2, -1, 2)), {"mode": "circular"}, "circular 2-d, unbatched, negative pad"),
    ]  # fmt: skip


PADDING_OPS: tuple[Op, ...] = (
    Op(
        "pad",
        pad,
        F.pad,
        _samples,
        PadFunction,
        modules=tuple(_MODULES.items()),
        torch_functions=(F.pad,),
        formula=(
            r"BP2: $\delta_x[\mathrm{src}(j)] \mathrel{+}= \delta_y[j]$: each padded entry's δ goes back to "
            r"the entry it copies (constant: $\delta_y$ cropped; reflect, replicate, circular: the "
            r"mirrored, edge and wrapped strips added on)"
        ),
    ),
)
