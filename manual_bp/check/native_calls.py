"""The native-call finder: torch function calls made while a model runs, which no module swap reaches."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from manual_bp.ops import TORCH_FUNCTIONS

__all__ = ["NativeCall", "as_call", "find_native_calls"]


def as_call(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A model's call ``(args, kwargs)`` from a tensor, a mapping of keyword arguments or a tuple."""
    if isinstance(inputs, Tensor):
        return (inputs,), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    raise TypeError(
        "inputs must be a Tensor, a tuple or list of positional arguments, or a dict of keyword "
        f"arguments, got {type(inputs).__name__}"
    )


# the torch functions of the registry's ops, and attention, which no module swap reaches
_WATCHED: dict[Any, str] = {**TORCH_FUNCTIONS, F.multi_head_attention_forward: "multi_head_attention_forward"}
_TORCH_DIR = os.path.dirname(torch.__file__)
_MANUAL_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the manual_bp package
# torch's own dispatch wrappers between a call site and the mode
_WRAPPERS = tuple(
    os.path.join(_TORCH_DIR, f)
    for f in ("overrides.py", "nn/functional.py", "_tensor.py", "functional.py", "_jit_internal.py")
) + tuple(  # manual_bp's functional=True routing, when it passes a call on natively
    os.path.join(_MANUAL_DIR, f) for f in ("routing.py", "convert.py")
)


@dataclass(frozen=True)
class NativeCall:
    """A native op that manual_bp has a twin for, called outside any converted module."""

    op: str
    where: str
    count: int


class _NativeCallLog(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[tuple[str, str], int] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        try:
            name = _WATCHED.get(func)
        except TypeError:
            name = None
        if name is not None:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(_WRAPPERS):
                frame = frame.f_back  # type: ignore[assignment]
            if frame is not None and not frame.f_code.co_filename.startswith(_MANUAL_DIR):
                path = frame.f_code.co_filename
                short = (
                    os.path.relpath(path, os.path.dirname(_TORCH_DIR))
                    if path.startswith(_TORCH_DIR)
                    else path
                )
                if not path.startswith(_TORCH_DIR):
                    try:
                        short = os.path.relpath(path)
                    except ValueError:
                        pass
                key = (name, f"{short}:{frame.f_lineno} in {frame.f_code.co_name}")
                self.calls[key] = self.calls.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


def find_native_calls(model: nn.Module, inputs: Any) -> list[NativeCall]:
    """Run ``model`` once and list native calls of ops manual_bp has twins for, with their call sites.

    These are what :func:`manual_bp.convert` cannot swap: ``F.relu(x)`` or ``torch.tanh(x)`` inside
    a ``forward``, activations stored as functions, and the projections that an unconverted
    ``nn.MultiheadAttention`` computes inside ``F.multi_head_attention_forward``. Calls made by
    manual Functions themselves are not listed.
    """
    args, kwargs = as_call(inputs)
    log = _NativeCallLog()
    with log:  # with grad enabled: under no_grad, eval-mode attention takes a fused fast path
        model(*args, **kwargs)
    return [NativeCall(op, where, n) for (op, where), n in log.calls.items()]


# --------------------------------------------------------------------------------------------
# One call for a user's model
# --------------------------------------------------------------------------------------------
