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
import torch.nn.functional as F
from torch import Tensor, nn

import manual_bp
import manual_bp.functional as MF

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


def _act(
    id: str,
    name: str,
    cls: str,
    function: type[torch.autograd.Function],
    away_from: tuple[float, ...] = (),
    **kwargs: Any,
) -> Activation:
    manual_fn = getattr(MF, name)
    native_fn = getattr(F, name)
    return Activation(
        id=id,
        manual=lambda x: manual_fn(x, **kwargs),
        native=lambda x: native_fn(x, **kwargs),
        function=function,
        module=lambda: getattr(manual_bp, cls)(**kwargs),
        native_module=lambda: getattr(nn, cls)(**kwargs),
        away_from=away_from,
        kwargs=kwargs,
    )


ACTIVATIONS: list[Activation] = [
    _act("sigmoid", "sigmoid", "Sigmoid", MF.SigmoidFunction),
    _act("tanh", "tanh", "Tanh", MF.TanhFunction),
    _act("relu", "relu", "ReLU", MF.ReLUFunction, away_from=(0.0,)),
    _act("leaky_relu", "leaky_relu", "LeakyReLU", MF.LeakyReLUFunction, away_from=(0.0,)),
    _act("leaky_relu-0.2", "leaky_relu", "LeakyReLU", MF.LeakyReLUFunction, (0.0,), negative_slope=0.2),
    _act("leaky_relu-neg0.3", "leaky_relu", "LeakyReLU", MF.LeakyReLUFunction, (0.0,), negative_slope=-0.3),
    _act("elu", "elu", "ELU", MF.ELUFunction, away_from=(0.0,)),
    _act("elu-2.0", "elu", "ELU", MF.ELUFunction, (0.0,), alpha=2.0),
    _act("elu-neg0.5", "elu", "ELU", MF.ELUFunction, (0.0,), alpha=-0.5),
    _act("softplus", "softplus", "Softplus", MF.SoftplusFunction),
    # β x > threshold for x > 0.5: half the samples take the linear branch; keep off the switch
    _act("softplus-b2-t1", "softplus", "Softplus", MF.SoftplusFunction, (0.5,), beta=2.0, threshold=1.0),
    _act(
        "softplus-b0.5-t0.25", "softplus", "Softplus", MF.SoftplusFunction, (0.5,), beta=0.5, threshold=0.25
    ),
    _act("gelu", "gelu", "GELU", MF.GELUFunction),
    _act("gelu-tanh", "gelu", "GELU", MF.GELUFunction, approximate="tanh"),
    _act("silu", "silu", "SiLU", MF.SiLUFunction),
]
ACTIVATION_IDS = [a.id for a in ACTIVATIONS]


def by_id(id: str) -> Activation:
    """The activation case called ``id``."""
    return next(a for a in ACTIVATIONS if a.id == id)


def half_squared_error_native(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """The seed's c = ½‖y − t‖² per sample written with native ops, then reduced over samples."""
    per_sample = 0.5 * ((input - target) ** 2).sum(-1)
    if reduction == "mean":
        return per_sample.mean()
    return per_sample.sum() if reduction == "sum" else per_sample


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
