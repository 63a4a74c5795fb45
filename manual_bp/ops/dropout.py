r"""Dropout: ``y = x ⊙ m / (1 − p)`` with native's random draws; BP2 is ``δ ⊙ m / (1 − p)``."""

from __future__ import annotations

from manual_bp.ops._op import Op

__all__ = ["DROPOUT_OPS"]

DROPOUT_OPS: tuple[Op, ...] = ()
