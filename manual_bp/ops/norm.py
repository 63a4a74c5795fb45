r"""Normalisation: batch, layer, group, RMS and instance norm, with their explicit backwards."""

from __future__ import annotations

from manual_bp.ops._op import Op

__all__ = ["NORM_OPS"]

NORM_OPS: tuple[Op, ...] = ()
