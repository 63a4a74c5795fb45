"""Sample inputs and the table of ops shared by the tests of the explicit layers.

Samples are built with the public ``torch.testing.make_tensor``. ``sample`` can keep values a
margin away from the points where an op is not differentiable (the kink of ReLU-like functions,
softplus' switch to the identity), so finite differences and the native op see no kink, and can
lay the tensor out non-contiguously ("strided": every other element of a wider buffer;
"transposed": the first and last dims swapped in memory; "expanded": stride 0, one value).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from manual_bp.ops import ACTIVATIONS as REGISTRY_ACTIVATIONS
from manual_bp.ops import Elementwise
from manual_bp.ops.activations import Identity
from manual_bp.ops.losses import half_squared_error_reference

# Batch shapes the issue asks for: no batch dim, an empty batch, [8], [2, 3] and a 5-D input.
BATCH_SHAPES: dict[str, tuple[int, ...]] = {
    "nobatch": (),
    "empty": (0,),
    "b8": (8,),
    "b2x3": (2, 3),
    "5d": (2, 1, 3, 2),
}

LAYOUTS = ("contiguous", "strided", "transposed", "expanded")


def sample(
    shape: Sequence[int],
    *,
    dtype: torch.dtype = torch.float32,
    low: float = -3.0,
    high: float = 3.0,
    away_from: Sequence[float] = (),
    margin: float = 0.2,
    layout: str = "contiguous",
    requires_grad: bool = False,
) -> Tensor:
    """A tensor of ``shape`` with values in about ``[low, high]``, at least ``margin`` from ``away_from``."""
    shape = tuple(shape)
    if layout == "expanded":  # one value broadcast with stride 0
        one = torch.testing.make_tensor((1,) * len(shape), dtype=dtype, device="cpu", low=low, high=high)
        return one.expand(shape).requires_grad_(requires_grad)
    x = torch.testing.make_tensor(shape, dtype=dtype, device="cpu", low=low, high=high)
    for p in away_from:  # move values within `margin` of p out to p ± (margin + their distance)
        d = x - p
        x = torch.where(d.abs() < margin, p + torch.where(d >= 0, margin, -margin) + d, x).to(dtype)
    if layout == "strided":
        buf = torch.testing.make_tensor(shape, dtype=dtype, device="cpu", noncontiguous=True)
        x = buf.copy_(x)
    elif layout == "transposed" and len(shape) >= 2:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    elif layout != "contiguous" and layout != "transposed":
        raise ValueError(f"unknown layout {layout!r}")
    return x.requires_grad_(requires_grad)


def is_laid_out(x: Tensor, layout: str) -> bool:
    """Whether ``x`` really is non-contiguous when ``layout`` asks for it (so the case tests something)."""
    if layout == "contiguous" or x.numel() <= 1:
        return True
    if layout == "transposed" and (x.dim() < 2 or x.shape[0] == 1 or x.shape[-1] == 1):
        return True  # transposing a size-1 dim keeps the tensor contiguous
    return not x.is_contiguous()


@dataclass(frozen=True)
class Activation:
    """An activation as manual functional, native functional, manual module and native module."""

    id: str
    manual: Callable[[Tensor], Tensor]
    native: Callable[[Tensor], Tensor]
    function: type[torch.autograd.Function]
    module: Callable[[], nn.Module]
    native_module: Callable[[], nn.Module]
    away_from: tuple[float, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def _setting_id(name: str, setting: dict[str, Any]) -> str:
    """``leaky_relu-0.2``, ``elu-neg0.5``, ``gelu-tanh``: the op's name and its parameter values."""
    return "-".join([name, *(str(v).replace("-", "neg") for v in setting.values())])


def _act(cls: type[Elementwise], setting: dict[str, Any]) -> Activation:
    return Activation(
        id=_setting_id(cls.name, setting),
        manual=lambda x: cls.functional(x, **setting),
        native=lambda x: cls.native_function(x, **setting),
        function=cls.Function,
        module=lambda: cls.Module(**setting),
        native_module=lambda: cls.module(**setting),
        away_from=cls(**setting).kinks(),
        kwargs=setting,
    )


# every activation of the op registry (manual_bp.ops.ACTIVATIONS), in each of its parameter settings
ACTIVATIONS: list[Activation] = [
    _act(cls, setting) for cls in REGISTRY_ACTIVATIONS if cls is not Identity for setting in cls.settings
]
ACTIVATION_IDS = [a.id for a in ACTIVATIONS]


def by_id(id: str) -> Activation:
    """The activation case called ``id``."""
    return next(a for a in ACTIVATIONS if a.id == id)


#: The seed's c = ½‖y − t‖² per sample written with native ops, then reduced over samples.
half_squared_error_native = half_squared_error_reference


def saved_storage_bytes(run: Callable[[], Any], held: Sequence[Tensor]) -> int:
    """Bytes of the distinct storages autograd saves while ``run()`` runs, those of ``held`` (what
    the caller keeps anyway: parameters, input, target) excluded."""
    skip = {t.untyped_storage().data_ptr() for t in held}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in skip:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(seen.values())
