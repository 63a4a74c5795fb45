r"""Convolution: ``conv1d/2d/3d``, ``conv_transpose1d/2d`` (and padding modes): the seed's linear layer
applied to patches. BP3 is δ against the input's patches, BP2 is ``δ W`` folded back."""

from __future__ import annotations

from manual_bp.ops._op import Op

__all__ = ["CONV_OPS"]

CONV_OPS: tuple[Op, ...] = ()
