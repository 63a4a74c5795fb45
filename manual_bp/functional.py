r"""Stateless ops, each one ``torch.autograd.Function`` whose ``backward`` is explicit math.

Notation (row-major, as in ``torch.nn``): a batch is ``(*, D)``; ``W`` is ``(D_out, D_in)``;
``x`` is a layer's pre-activation, ``y = f(x)`` its output, ``δ = ∂c/∂x``. The seed's steps:

* FF  — ``linear``: ``x_{n+1} = y_n Wᵀ + b``; activations: ``y_n = f(x_n)``
* BP1 — ``half_squared_error`` gives ``y_N − t``; the output activation multiplies by ``f′(x_N)``
* BP2 — ``linear`` backward gives ``δ_{n+1} W``; the activation backward multiplies by ``f′(x_n)``
* BP3 — ``linear`` backward gives ``∂c/∂W = δ_{n+1}ᵀ y_n`` and ``∂c/∂b = Σ_rows δ_{n+1}``

Every ``backward`` is written with differentiable torch ops on saved tensors, so double backward
(``gradgradcheck``) works; no ``backward`` asks autograd for a derivative.

Each public function has the signature of its ``torch.nn.functional`` counterpart (without
``inplace``), checks its arguments, and calls ``<Name>Function.apply``. The names come from the op
registry (:data:`manual_bp.ops.OPS`): every op's function, and its Function class by name.
"""

from __future__ import annotations

from typing import Any

from manual_bp.ops import OPS

_EXPORTS: dict[str, Any] = {}
for _op in OPS:
    _EXPORTS[_op.name] = _op.function
    if _op.function_class is not None:
        _EXPORTS[_op.function_class.__name__] = _op.function_class
globals().update(_EXPORTS)

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 (built from the registry)
