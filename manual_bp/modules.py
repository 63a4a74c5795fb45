"""Drop-in ``torch.nn`` layers whose forward calls :mod:`manual_bp.functional`.

Each class subclasses its ``torch.nn`` counterpart, so constructor arguments, parameter names,
initialisation, ``state_dict`` keys and ``repr`` are exactly the native ones; only ``forward``
changes. ``inplace=True`` is accepted for compatibility and computed out of place (a manual
backward needs the saved tensors intact).
"""

from __future__ import annotations

from torch import Tensor, nn

from manual_bp import functional as MF
from manual_bp._function import check_reduction

__all__ = [
    "ELU",
    "GELU",
    "CrossEntropyLoss",
    "HalfSquaredError",
    "Identity",
    "LeakyReLU",
    "Linear",
    "ReLU",
    "SiLU",
    "Sigmoid",
    "Softplus",
    "Tanh",
]


class Linear(nn.Linear):
    """``torch.nn.Linear`` with the explicit backward of :func:`manual_bp.functional.linear`.

    Shape ``(*, in_features) -> (*, out_features)``; ``weight (out_features, in_features)`` and
    ``bias (out_features,)``, initialised as ``torch.nn.Linear`` does.

    >>> import torch, manual_bp
    >>> layer = manual_bp.Linear(3, 2)
    >>> layer(torch.randn(4, 3)).grad_fn.name()
    'LinearFunctionBackward'
    """

    def forward(self, input: Tensor) -> Tensor:
        return MF.linear(input, self.weight, self.bias)


class Sigmoid(nn.Sigmoid):
    """``torch.nn.Sigmoid`` with the explicit backward ``y (1 − y)``."""

    def forward(self, input: Tensor) -> Tensor:
        return MF.sigmoid(input)


class Tanh(nn.Tanh):
    """``torch.nn.Tanh`` with the explicit backward ``1 − y²``."""

    def forward(self, input: Tensor) -> Tensor:
        return MF.tanh(input)


class ReLU(nn.ReLU):
    """``torch.nn.ReLU`` with the explicit backward ``[x > 0]``."""

    def forward(self, input: Tensor) -> Tensor:
        return MF.relu(input)


class LeakyReLU(nn.LeakyReLU):
    """``torch.nn.LeakyReLU(negative_slope=0.01)`` with the explicit backward ``1 or slope``."""

    def forward(self, input: Tensor) -> Tensor:
        return MF.leaky_relu(input, self.negative_slope)


class ELU(nn.ELU):
    """``torch.nn.ELU(alpha=1.0)`` with the explicit backward ``1 or y + α``."""

    def forward(self, input: Tensor) -> Tensor:
        return MF.elu(input, self.alpha)


class Softplus(nn.Softplus):
    """``torch.nn.Softplus(beta=1.0, threshold=20.0)`` with the explicit backward ``σ(βx)``."""

    def forward(self, input: Tensor) -> Tensor:
        return MF.softplus(input, self.beta, self.threshold)


class GELU(nn.GELU):
    """``torch.nn.GELU(approximate='none')`` with an explicit backward (exact or tanh form)."""

    def forward(self, input: Tensor) -> Tensor:
        return MF.gelu(input, self.approximate)


class SiLU(nn.SiLU):
    """``torch.nn.SiLU`` with the explicit backward ``σ(x)(1 + x(1 − σ(x)))``."""

    def forward(self, input: Tensor) -> Tensor:
        return MF.silu(input)


class Identity(nn.Identity):
    """``torch.nn.Identity``: returns its input (its derivative is the identity; nothing to compute)."""


class HalfSquaredError(nn.modules.loss._Loss):
    """The seed's error ``c = ½‖y − t‖²`` per sample, averaged (``'mean'``) or summed over samples.

    Shape: ``input (*, D)``, ``target`` the same -> scalar, or ``(*)`` with ``reduction='none'``.
    """

    def __init__(self, reduction: str = "mean") -> None:
        check_reduction(reduction)
        super().__init__(reduction=reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return MF.half_squared_error(input, target, self.reduction)


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """``torch.nn.CrossEntropyLoss`` (logits and class indices or probabilities), explicit backward.

    ``label_smoothing`` other than 0 is not supported.
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        if label_smoothing != 0.0:
            raise ValueError(
                f"manual_bp.CrossEntropyLoss supports label_smoothing=0.0 only, got {label_smoothing}"
            )
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        check_reduction(self.reduction)  # at construction, as HalfSquaredError does

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return MF.cross_entropy(input, target, self.weight, self.ignore_index, self.reduction)
