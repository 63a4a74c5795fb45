"""The base class of every manual Function, and the argument checks they share."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from manual_bp._torch_private import autocast_on, cpp_function_apply, functorch_active, is_batched_grad

__all__: list[str] = []


class ManualFunction(torch.autograd.Function):
    """A ``torch.autograd.Function`` written in the ``setup_context`` style.

    The ``setup_context`` style is what ``torch.func`` (vmap, grad) needs. Its stock ``apply`` binds
    default arguments with ``inspect.signature`` on every call, which costs about 20 µs per call
    here (measured with ``scripts/bench.py``'s per-op timings). Outside functorch transforms and
    ``torch.compile`` this ``apply`` goes straight to the C++ entry point, which handles the
    ``setup_context`` style itself; every subclass therefore must be called with all its
    arguments positional and none omitted.
    """

    generate_vmap_rule = True

    @classmethod
    def apply(cls, *args: Any) -> Any:  # type: ignore[override]
        if functorch_active() or torch.compiler.is_compiling():
            return super().apply(*args)
        return cpp_function_apply(cls, *args)  # no re-binding


_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def in_place_ok(grad: Tensor | None) -> bool:
    """Whether a ``backward`` receiving ``grad`` may do arithmetic in place on its own temporaries.

    Not while a graph is recorded (double backward needs the out-of-place, differentiable ops), and
    not when ``grad`` is batched (``torch.func.vmap``, ``autograd.grad(..., is_grads_batched=True)``):
    a temporary computed from saved tensors is not batched, and vmap cannot write a batched result
    into an unbatched tensor.
    """
    if torch.is_grad_enabled() or functorch_active():
        return False
    if grad is None or torch.compiler.is_compiling():  # (dynamo cannot trace the test below)
        return True
    return not is_batched_grad(grad)


def check_floating(name: str, tensor: Tensor) -> None:
    """Raise a ``TypeError`` unless ``tensor`` is a Tensor of a supported floating dtype."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype not in _FLOATING:
        raise TypeError(
            f"{name} must be a floating-point tensor (float16, bfloat16, float32 or float64), "
            f"got dtype {tensor.dtype}"
        )


def check_same(name: str, tensor: Tensor, ref_name: str, ref: Tensor) -> None:
    """Raise a ``ValueError`` unless ``tensor`` lives on ``ref``'s device with ``ref``'s dtype."""
    if tensor.device != ref.device:
        raise ValueError(
            f"{name} and {ref_name} must be on the same device, "
            f"got {name} on {tensor.device} and {ref_name} on {ref.device}"
        )
    if tensor.dtype != ref.dtype:
        raise TypeError(
            f"{name} and {ref_name} must have the same dtype, "
            f"got {name} of {tensor.dtype} and {ref_name} of {ref.dtype} "
            "(cast one of them, or use torch.autocast for mixed precision)"
        )


def check_feedback(feedback: Any, weight: Tensor) -> None:
    """Raise unless ``feedback`` (the matrix a feedback rule's BP2 multiplies by) is a floating
    tensor of ``weight``'s shape."""
    check_floating("feedback", feedback)
    if feedback.shape != weight.shape:
        raise ValueError(
            f"feedback must have the weight's shape {tuple(weight.shape)}, got {tuple(feedback.shape)}"
        )


def check_target(target: Any, input: Tensor, input_name: str, d_out: int, same_dtype: bool = True) -> None:
    """Raise unless ``target`` is a floating tensor of the output's shape ``(*, d_out)`` (the leading
    dims of ``input``), on ``input``'s device and, with ``same_dtype``, of its dtype."""
    check_floating("target", target)
    out_shape = (*input.shape[:-1], d_out)
    if target.shape != out_shape:
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal the output shape {out_shape} (no broadcasting)"
        )
    if same_dtype:
        check_same("target", target, input_name, input)


def check_reduction(reduction: str) -> None:
    """Raise a ``ValueError`` unless ``reduction`` is ``'mean'``, ``'sum'`` or ``'none'``."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def autocast_enabled() -> bool:
    """Whether autocast is on for any device (a 0.1 µs test, against 1.5 µs for a per-device one)."""
    return autocast_on()


def autocast_cast(tensor: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """Cast like autocast does for a lower-precision op: float16/32 and bfloat16, not float64."""
    if tensor is None or tensor.dtype in (dtype, torch.float64):
        return tensor
    return tensor.to(dtype)


def autocast_dtype(tensor: Tensor) -> torch.dtype | None:
    """The lower-precision dtype autocast would run a matmul in for ``tensor``, or ``None``."""
    if not autocast_enabled():
        return None
    device_type = tensor.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None
