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
    "canonical_mask",
    "cpp_function_apply",
    "detect_is_causal_mask",
    "functorch_active",
    "is_batched_grad",
    "mha_shape_check",
    "sequence_length",
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


#: ``nn.MultiheadAttention`` and the Transformer layers turn a bool mask into an additive float mask
#: (``−∞`` where ``True``) with this helper, warning on mismatched mask types: their manual twins
#: call the same one, so that masks mean and warn exactly as native.
canonical_mask = torch.nn.functional._canonical_mask

#: ``nn.TransformerEncoder``/``Decoder`` detect a causal ``mask`` with this helper (``is_causal=None``):
#: the twin of ``TransformerEncoder`` passes its layers the same flag.
detect_is_causal_mask = torch.nn.modules.transformer._detect_is_causal_mask

#: The batch dim's place in a Transformer's input (``None`` for nested tensors): what
#: ``nn.TransformerEncoder`` hands :func:`detect_is_causal_mask`.
sequence_length = torch.nn.modules.transformer._get_seq_len

#: ``multi_head_attention_forward``'s argument check (batched or not, with native's messages).
mha_shape_check = torch.nn.functional._mha_shape_check
