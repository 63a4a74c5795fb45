r"""Pooling: max, average and adaptive pooling; BP2 routes δ back to the window entries it came from."""

from __future__ import annotations

from manual_bp.ops._op import Op

__all__ = ["POOLING_OPS"]

POOLING_OPS: tuple[Op, ...] = ()
