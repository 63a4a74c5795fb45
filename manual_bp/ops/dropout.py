r"""Dropout: ``y = x ⊙ m / (1 − p)`` with native's random draws; BP2 is ``δ ⊙ m / (1 − p)``.

The mask is drawn outside the Function with the very calls ATen's CPU dropout makes
(``Dropout.cpp``: ``noise = empty_like(x).bernoulli_(1 − p); noise.div_(1 − p); x * noise``, the
feature variants with noise of shape ``(N, C, 1, …)``), so a seeded run draws native's masks bit
for bit; the Function itself is the deterministic product with the scaled mask. On CUDA native
``dropout`` runs the fused ``native_dropout`` kernel instead: its mask is taken from that kernel
(the same draws; float16/bfloat16 outputs may differ from native's by an ulp, since the scaled
mask is rounded to the input's dtype where the fused kernel scales in float32).
"""

from __future__ import annotations

import numbers
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manual_bp._function import ManualFunction, check_floating
from manual_bp.ops._op import Op, Sample, noncontiguous, tensor

__all__ = [
    "DROPOUT_OPS",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "DropoutFunction",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "scaled_mask",
]


class DropoutFunction(ManualFunction):
    r"""``y = x ⊙ s`` for the scaled mask ``s = m / (1 − p)`` (``m`` Bernoulli(1 − p), drawn by the
    caller; broadcast over the spatial dims for feature dropout).

    .. math::
        \frac{\partial c}{\partial x} = \delta \odot \frac{m}{1 - p}

    The mask is a constant: it gets no gradient.
    """

    @staticmethod
    def forward(input: Tensor, scaled_mask: Tensor) -> Tensor:
        return input * scaled_mask  # FF: (*) ⊙ (*, broadcast) -> (*)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _, scaled_mask = inputs
        ctx.save_for_backward(scaled_mask)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, None]:
        (scaled_mask,) = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            grad_input = grad_output * scaled_mask  # BP2: δ ⊙ m / (1 − p); (*) ⊙ (*, broadcast) -> (*)
        return grad_input, None


def _check_p(p: Any) -> None:
    if isinstance(p, Tensor) or not isinstance(p, numbers.Real):
        raise TypeError(f"dropout probability must be a number, got {type(p).__name__}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


# device types where native dropout (not the feature variants) runs ATen's fused native_dropout
# kernel, whose draws differ from bernoulli_'s (Dropout.cpp, is_fused_kernel_acceptable)
_FUSED_ON = ("cuda", "xpu")


def _warn(message: str) -> None:
    """Warn as native does, from the caller of the public function (not while compiling: dynamo
    cannot trace ``warnings.warn``)."""
    if not torch.compiler.is_compiling():
        warnings.warn(message, stacklevel=3)


def _dropout(input: Tensor, p: float, training: bool, feature: bool) -> Tensor:
    """Native's ``_dropout_impl``: the same early returns and the same random draws."""
    if not isinstance(input, Tensor):
        raise TypeError(f"dropout expected input to be a tensor, got {type(input).__name__}")
    if not training or p == 0 or input.numel() == 0:
        return input  # as native: the input itself
    check_floating("input", input)
    if feature and input.dim() < 2:
        raise RuntimeError(
            f"feature dropout requires at least 2 dimensions (N, C, ...) in the input, got shape "
            f"{tuple(input.shape)}"
        )
    return DropoutFunction.apply(input, scaled_mask(input, p, feature))


def scaled_mask(input: Tensor, p: float, feature: bool = False) -> Tensor:
    """The scaled mask ``m / (1 − p)`` that native dropout of ``input`` draws (``0 < p ≤ 1``), with
    native's very calls: for ``p = 1`` no draw and a 0-d zero; else one Bernoulli(1 − p) draw per
    element (per (sample, channel) for feature dropout, shape ``(N, C, 1, …)``)."""
    if p == 1:
        return torch.zeros((), dtype=input.dtype, device=input.device)  # native: x * 0
    if not feature and input.device.type in _FUSED_ON:
        # native runs its fused kernel there: take its mask (the same draws), scale it ourselves
        _, keep = torch.native_dropout(input.detach(), p, True)
        return keep.to(input.dtype) * (1.0 / (1 - p))  # m / (1 − p)
    if feature:  # one draw per (sample, channel), broadcast over the rest
        mask = input.new_empty((*input.shape[:2], *(1,) * (input.dim() - 2)))
    else:
        mask = torch.empty_like(input)
    mask.bernoulli_(1 - p)  # m ~ Bernoulli(1 − p)
    return mask.div_(1 - p)  # m / (1 − p)


def dropout(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by ``1/(1 − p)``, with the explicit
    backward of :class:`DropoutFunction`.

    Shape ``(*) -> (*)``. A seeded CPU run draws the same mask as ``torch.nn.functional.dropout``.
    ``training=False``, ``p=0`` and empty inputs return ``input`` itself, as native does.
    ``inplace=True`` is computed out of place (the values are the same; ``input`` is left alone).
    """
    _check_p(p)
    return _dropout(input, p, training, feature=False)


def dropout1d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero whole channels of ``(N, C, L)`` or unbatched ``(C, L)`` inputs with probability ``p``
    (the rest scaled by ``1/(1 − p)``), with the explicit backward of :class:`DropoutFunction`.

    Native's mask for a seeded CPU run; ``inplace=True`` is computed out of place.
    """
    _check_p(p)
    if not isinstance(input, Tensor):
        raise TypeError(f"dropout1d expected input to be a tensor, got {type(input).__name__}")
    if input.dim() not in (2, 3):
        raise RuntimeError(
            f"dropout1d: Expected 2D or 3D input, but received a {input.dim()}D input. "
            "Note that dropout1d exists to provide channel-wise dropout on inputs with 1 "
            "spatial dimension, a channel dimension, and an optional batch dimension "
            "(i.e. 2D or 3D inputs)."
        )
    if input.dim() == 2:  # unbatched (C, L)
        return _dropout(input.unsqueeze(0), p, training, feature=True).squeeze(0)
    return _dropout(input, p, training, feature=True)


def dropout2d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero whole channels of ``(N, C, H, W)`` inputs with probability ``p`` (the rest scaled by
    ``1/(1 − p)``), with the explicit backward of :class:`DropoutFunction`.

    As native (and with its warnings): a 3-D input is taken as ``(N, C, L)`` (1-D channel dropout),
    other ranks are deprecated. Native's mask for a seeded CPU run; ``inplace=True`` is computed
    out of place.
    """
    _check_p(p)
    if not isinstance(input, Tensor):
        raise TypeError(f"dropout2d expected input to be a tensor, got {type(input).__name__}")
    ndim = input.dim()
    if ndim not in (3, 4):
        _warn(
            f"dropout2d: Received a {ndim}-D input to dropout2d, which is deprecated "
            "and will result in an error in a future release. To retain the behavior "
            "and silence this warning, please use dropout instead. Note that dropout2d "
            "exists to provide channel-wise dropout on inputs with 2 spatial dimensions, "
            "a channel dimension, and an optional batch dimension (i.e. 3D or 4D inputs).",
        )
    if ndim == 3:
        _warn(
            "dropout2d: Received a 3D input to dropout2d and assuming that channel-wise "
            "1D dropout behavior is desired - input is interpreted as shape (N, C, L), where C "
            "is the channel dim. This behavior will change in a future release to interpret the "
            "input as one without a batch dimension, i.e. shape (C, H, W). To maintain the 1D "
            "channel-wise dropout behavior, please switch to using dropout1d instead.",
        )
    return _dropout(input, p, training, feature=True)


def dropout3d(input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> Tensor:
    """Zero whole channels of ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)`` inputs with
    probability ``p`` (the rest scaled by ``1/(1 − p)``), with the explicit backward of
    :class:`DropoutFunction`.

    As native (and with its warning), other ranks are deprecated and taken as unbatched unless 5-D.
    Native's mask for a seeded CPU run; ``inplace=True`` is computed out of place.
    """
    _check_p(p)
    if not isinstance(input, Tensor):
        raise TypeError(f"dropout3d expected input to be a tensor, got {type(input).__name__}")
    ndim = input.dim()
    if ndim not in (4, 5):
        _warn(
            f"dropout3d: Received a {ndim}-D input to dropout3d, which is deprecated "
            "and will result in an error in a future release. To retain the behavior "
            "and silence this warning, please use dropout instead. Note that dropout3d "
            "exists to provide channel-wise dropout on inputs with 3 spatial dimensions, "
            "a channel dimension, and an optional batch dimension (i.e. 4D or 5D inputs).",
        )
    if ndim != 5:  # unbatched
        return _dropout(input.unsqueeze(0), p, training, feature=True).squeeze(0)
    return _dropout(input, p, training, feature=True)


class Dropout(nn.Dropout):
    """``torch.nn.Dropout`` with the explicit backward of :func:`manual_bp.functional.dropout` (only
    ``forward`` differs; ``inplace=True`` is computed out of place).

    >>> import torch, manual_bp
    >>> manual_bp.Dropout(0.5)(torch.randn(4, 3, requires_grad=True)).grad_fn.name()
    'DropoutFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        return dropout(input, self.p, self.training, self.inplace)


class Dropout1d(nn.Dropout1d):
    """``torch.nn.Dropout1d`` with the explicit backward of :func:`manual_bp.functional.dropout1d`
    (only ``forward`` differs; ``inplace=True`` is computed out of place).

    >>> import torch, manual_bp
    >>> manual_bp.Dropout1d(0.5)(torch.randn(2, 3, 4, requires_grad=True)).grad_fn.name()
    'DropoutFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        return dropout1d(input, self.p, self.training, self.inplace)


class Dropout2d(nn.Dropout2d):
    """``torch.nn.Dropout2d`` with the explicit backward of :func:`manual_bp.functional.dropout2d`
    (only ``forward`` differs; ``inplace=True`` is computed out of place).

    >>> import torch, manual_bp
    >>> manual_bp.Dropout2d(0.5)(torch.randn(2, 3, 4, 4, requires_grad=True)).grad_fn.name()
    'DropoutFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        return dropout2d(input, self.p, self.training, self.inplace)


class Dropout3d(nn.Dropout3d):
    """``torch.nn.Dropout3d`` with the explicit backward of :func:`manual_bp.functional.dropout3d`
    (only ``forward`` differs; ``inplace=True`` is computed out of place).

    >>> import torch, manual_bp
    >>> manual_bp.Dropout3d(0.5)(torch.randn(2, 3, 4, 4, 4, requires_grad=True)).grad_fn.name()
    'DropoutFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Tensor) -> Tensor:
        return dropout3d(input, self.p, self.training, self.inplace)


# p=0, training=False and empty inputs return the input itself (no node, nothing computed), as
# native does: they are tested in tests/test_dropout.py, not sampled here
def _dropout_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def x(*shape: int) -> Tensor:
        return tensor(shape, dtype, device)

    return [
        Sample((x(8, 3),), label="batch [8]"),
        Sample((x(2, 3, 4), 0.2), label="batch [2, 3], p=0.2"),
        Sample((x(),), label="0-d"),
        # every other column: a transposed input would do too, but its mask follows its memory
        # layout (empty_like keeps the strides), which the suite's finite differences do not keep
        Sample((x(4, 6).detach()[:, ::2].requires_grad_(True),), label="non-contiguous"),
        Sample((x(4, 3), 1.0), label="p=1"),
        Sample((x(2, 1, 3, 2), 0.7, True, False), label="4-d, p=0.7, every argument"),
    ]


def _feature_samples(spatial: int) -> Any:
    def make(dtype: torch.dtype, device: torch.device) -> list[Sample]:
        size = (2,) * spatial

        def x(*shape: int) -> Tensor:
            return tensor(shape, dtype, device)

        return [
            Sample((x(2, 3, *size),), label="batched"),
            # unbatched (C, *spatial); a 3-D input to dropout2d is taken as (N, C, L), with a warning
            Sample((x(4, *size) if spatial != 2 else x(1, 4, 3, 2), 0.3), label="unbatched / N=1, p=0.3"),
            Sample((noncontiguous((2, 2, *size[:-1], 3), dtype, device),), label="non-contiguous"),
            Sample((x(2, 3, *size), 1.0), label="p=1"),
            Sample((x(3, 4, *size), 0.7), label="batched, p=0.7"),
            Sample((x(1, 5, *size), 0.5, True, False), label="N=1, every argument"),
        ]

    return make


_FORMULA = r"BP2: $\delta \odot m / (1 - p)$ (the saved scaled mask{})"

DROPOUT_OPS: tuple[Op, ...] = (
    Op(
        "dropout",
        dropout,
        F.dropout,
        _dropout_samples,
        DropoutFunction,
        modules=((nn.Dropout, Dropout),),
        torch_functions=(F.dropout, torch.dropout),
        formula=_FORMULA.format(""),
        random=True,
    ),
    *(
        Op(
            f"dropout{k}d",
            function,
            native,
            _feature_samples(k),
            DropoutFunction,
            modules=((module, manual),),
            torch_functions=(native,),
            formula=_FORMULA.format(", one draw per channel"),
            random=True,
        )
        for k, function, native, module, manual in (
            (1, dropout1d, F.dropout1d, nn.Dropout1d, Dropout1d),
            (2, dropout2d, F.dropout2d, nn.Dropout2d, Dropout2d),
            (3, dropout3d, F.dropout3d, nn.Dropout3d, Dropout3d),
        )
    ),
)
