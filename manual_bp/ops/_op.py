"""What one registry entry holds (:class:`Op`), and the sample inputs every op's checks draw from.

Samples are built with the public ``torch.testing.make_tensor`` in ``[-2, 2]`` (times an op's
``scale``), moved a margin away from an op's kinks (where ``f′`` jumps, so finite differences see
one side), over systematic batch shapes: no batch dim, an empty batch, ``[8]``, ``[2, 3]``, a 5-D
input, and non-contiguous inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import make_tensor

__all__ = ["BATCHES", "Op", "Sample", "callable_name", "noncontiguous", "tensor", "unary_samples"]


@dataclass(frozen=True)
class Sample:
    """Arguments of one call; tensors with ``requires_grad`` are the ones differentiated."""

    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    # False where the output is NaN by definition (reduction='mean' of an empty batch, 0/0): finite
    # differences are meaningless there (torch's own cross_entropy fails gradgradcheck on it), so
    # gradcheck and gradgradcheck skip the sample; the native comparison keeps it (NaN equals NaN)
    finite: bool = True


SampleFn = Callable[[torch.dtype, torch.device], list[Sample]]


@dataclass(frozen=True)
class Op:
    """One op of the registry: everything the rest of manual_bp needs to know about it.

    Attributes:
        name: its name in :mod:`manual_bp.functional` (``"sigmoid"``) and in ``manual-bp check``.
        function: the manual function (``manual_bp.functional.<name>``).
        native: the torch reference, called with the same arguments.
        samples: ``samples(dtype, device)`` gives the sample calls the checks and tests run.
        function_class: the ``torch.autograd.Function`` behind ``function`` (exported from
            :mod:`manual_bp.functional` by its class name), or ``None``.
        modules: ``(torch.nn class or None, manual module)`` pairs: the drop-in layers exported
            from :mod:`manual_bp` and what :func:`manual_bp.convert` swaps.
        torch_functions: the torch callables it stands for (``F.relu``, ``torch.relu``,
            ``Tensor.relu``, ...): what the native-call finder and the conversion report watch for.
        double_backward: ``False`` for a ``once_differentiable`` backward (the suite then checks
            that double backward raises instead of running ``gradgradcheck``).
        checked: what the checks call with a sample's arguments, where ``function`` takes them in
            another form (``mlp`` takes lists of weights; the samples pass them one by one).
        formula: the backward in the derivation's notation (δ = ∂c/∂output, BP2 for the input's
            gradient, BP3 for a parameter's), as Markdown with ``$…$`` math: the docs' op table.
        random: ``True`` for an op that draws random numbers (dropout): the checks seed the generator
            before every call, so that each call (manual, native, every finite difference) draws
            the same numbers.
        skips: transform (``"autocast"``, ``"compile"``, ``"vmap"``) -> the written reason this op's
            tests leave it out (native does not support it either, say, or it draws random numbers).
        feedback: for a layer whose BP2 a feedback rule may change (:mod:`manual_bp.feedback`), the
            function called as ``feedback(*args, feedback=B, **kwargs)``: the op with BP2 through
            ``B`` (a tensor of the weight's shape, ``args[1]``) instead of the weight, BP3 unchanged.
    """

    name: str
    function: Callable[..., Tensor]
    native: Callable[..., Tensor]
    samples: SampleFn
    function_class: type[torch.autograd.Function] | None = None
    modules: tuple[tuple[type[nn.Module] | None, type[nn.Module]], ...] = ()
    torch_functions: tuple[Callable[..., Any], ...] = ()
    double_backward: bool = True
    checked: Callable[..., Tensor] | None = None
    formula: str = ""
    random: bool = False
    skips: Mapping[str, str] = field(default_factory=dict)
    feedback: Callable[..., Tensor] | None = None

    @property
    def manual(self) -> Callable[..., Tensor]:
        """The callable the checks run: ``checked``, or ``function``."""
        return self.checked if self.checked is not None else self.function


def callable_name(fn: Any) -> str:
    """The public dotted name of a torch callable: ``torch.nn.functional.relu``, ``torch.relu``,
    ``torch.Tensor.relu``."""
    name = getattr(fn, "__name__", repr(fn))
    for prefix, namespace in (("torch.nn.functional", F), ("torch", torch), ("torch.Tensor", Tensor)):
        if getattr(namespace, name, None) is fn:
            return f"{prefix}.{name}"
    return f"{getattr(fn, '__module__', None) or 'torch'}.{name}"


# batch shapes: no batch dim, empty batch, [8], [2, 3], a 5-D input
BATCHES: tuple[tuple[int, ...], ...] = ((), (0,), (8,), (2, 3), (2, 1, 2, 1))


def _away_from(x: Tensor, kinks: Sequence[float], gap: float) -> Tensor:
    """Move entries within ``gap`` of a kink by ``2·gap``, so finite differences stay on one side."""
    for k in kinks:
        near = (x - k).abs() < gap
        x = torch.where(near, x + torch.where(x >= k, 2 * gap, -2 * gap), x)
    return x


def tensor(
    shape: Sequence[int],
    dtype: torch.dtype,
    device: torch.device | str,
    kinks: Sequence[float] = (),
    scale: float = 1.0,
) -> Tensor:
    """A sample tensor in ``[-2·scale, 2·scale]``, ``0.1·scale`` or more from ``kinks``, requiring grad."""
    x = make_tensor(tuple(shape), dtype=dtype, device=device, low=-2.0 * scale, high=2.0 * scale)
    return _away_from(x, kinks, 0.1 * scale).requires_grad_(True)


def noncontiguous(
    shape: Sequence[int],
    dtype: torch.dtype,
    device: torch.device | str,
    kinks: Sequence[float] = (),
    scale: float = 1.0,
) -> Tensor:
    """A non-contiguous sample tensor of ``shape`` (the transpose of a contiguous one)."""
    *lead, a, b = shape
    return tensor((*lead, b, a), dtype, device, kinks, scale).detach().transpose(-1, -2).requires_grad_(True)


def unary_samples(
    kinks: Sequence[float] = (), scale: float = 1.0, **kwargs: Any
) -> Callable[[torch.dtype, torch.device], list[Sample]]:
    """Samples of an elementwise op called as ``op(x, **kwargs)``: inputs ``(*batch, 3)`` for every
    batch shape of :data:`BATCHES`, and a non-contiguous ``(4, 3)``."""

    def make(dtype: torch.dtype, device: torch.device) -> list[Sample]:
        out = []
        for b in BATCHES:
            out.append(Sample((tensor((*b, 3), dtype, device, kinks, scale),), kwargs, f"batch {list(b)}"))
        out.append(Sample((noncontiguous((4, 3), dtype, device, kinks, scale),), kwargs, "non-contiguous"))
        return out

    return make
