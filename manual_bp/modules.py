"""Drop-in ``torch.nn`` layers whose forward calls :mod:`manual_bp.functional`.

Each class subclasses its ``torch.nn`` counterpart, so constructor arguments, parameter names,
initialisation, ``state_dict`` keys and ``repr`` are exactly the native ones; only ``forward``
changes. ``inplace=True`` is accepted for compatibility and computed out of place (a manual
backward needs the saved tensors intact). The classes come from the op registry
(:func:`manual_bp.ops.manual_modules`); ``HalfSquaredError`` is the seed's error, which has no
``torch.nn`` twin.
"""

from __future__ import annotations

from torch import nn

from manual_bp.ops import manual_modules

_EXPORTS: dict[str, type[nn.Module]] = {cls.__name__: cls for cls in manual_modules()}
globals().update(_EXPORTS)

__all__ = sorted(_EXPORTS)  # noqa: PLE0605 (built from the registry)
