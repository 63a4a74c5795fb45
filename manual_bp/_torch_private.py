"""Every private torch API manual_bp uses, in one place, each with why it is needed.

Private APIs can change between torch releases without notice; keeping them here means one file to
look at when a new release breaks something. Everything else in the package uses public torch only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Loss",
    "autocast_on",
    "cpp_function_apply",
    "functorch_active",
    "is_batched_grad",
]

#: Whether autocast is on for any device: a 0.1 µs test, against 1.5 µs for the public per-device
#: ``torch.is_autocast_enabled(device_type)``; asked on every call of a layer.
autocast_on = torch._C._is_any_autocast_enabled

#: Whether a torch.func transform (vmap, grad, jvp) is active: the public API has no such test, and
#: a ``backward`` under vmap must use out-of-place ops (its temporaries are not batched).
functorch_active = torch._C._are_functorch_transforms_active


def is_batched_grad(grad: Tensor) -> bool:
    """Whether ``grad`` is a batched tensor of ``autograd.grad(..., is_grads_batched=True)`` (legacy
    vmap): a backward must not write into its unbatched temporaries then. No public test exists."""
    return torch._C._functorch.is_legacy_batchedtensor(grad)


def cpp_function_apply(cls: type[torch.autograd.Function], *args: Any) -> Any:
    """The C++ ``apply`` of an autograd Function, skipping ``Function.apply``'s Python wrapper, which
    re-binds default arguments with ``inspect.signature`` on every call (about 20 µs here). The C++
    entry point handles the ``setup_context`` style itself."""
    return super(torch.autograd.Function, cls).apply(*args)  # type: ignore[misc]


#: The base class of torch's loss modules (``reduction``, ``size_average``/``reduce`` handling):
#: :class:`manual_bp.HalfSquaredError` subclasses it so it behaves like every ``torch.nn`` loss.
Loss = nn.modules.loss._Loss
