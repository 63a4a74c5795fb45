"""Tolerances and error figures shared by the suite and the model comparison."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["TOLERANCES", "close", "errors", "tolerances"]

# torch.testing.assert_close's defaults (rtol, atol), by dtype
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
}


def tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` of ``torch.testing.assert_close`` for a floating ``dtype``."""
    if dtype not in TOLERANCES:
        raise ValueError(f"no tolerance for dtype {dtype}; expected one of {list(TOLERANCES)}")
    return TOLERANCES[dtype]


def errors(actual: Tensor, expected: Tensor, floor: float = 0.0) -> tuple[float, float]:
    """``(max |a − b|, max |a − b| / max(max |b|, floor))``, both 0 for empty tensors.

    ``floor`` (the comparison's ``atol``) keeps the relative error of a gradient that is zero up to
    rounding (a conv bias before BatchNorm) from reading as a large number.
    """
    if actual.numel() == 0:
        return 0.0, 0.0
    diff = (actual.double() - expected.double()).abs().max().item()
    scale = max(expected.double().abs().max().item(), floor)
    return diff, (diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf))


def close(actual: Tensor, expected: Tensor, rtol: float, atol: float) -> bool:
    if actual.shape != expected.shape:
        return False
    return bool(torch.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True).all())
