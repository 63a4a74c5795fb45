r"""Shape layers: softmax, log-softmax, flatten and unflatten."""

from __future__ import annotations

from manual_bp.ops._op import Op

__all__ = ["SHAPE_OPS"]

SHAPE_OPS: tuple[Op, ...] = ()
