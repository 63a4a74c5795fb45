r"""Embedding: a row lookup ``W[i]``; BP3 adds each δ row into the row of W it came from."""

from __future__ import annotations

from manual_bp.ops._op import Op

__all__ = ["EMBEDDING_OPS"]

EMBEDDING_OPS: tuple[Op, ...] = ()
