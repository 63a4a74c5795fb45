"""Model factories for ``manual-bp check --model tests._factories:<name>`` (used by the CLI tests).

Each returns what the CLI accepts: ``(model, inputs)``, ``(model, inputs, loss_fn)`` or a dict;
the ``bad_*`` ones return something wrong, on purpose, to test the error messages.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """Conv2d, BatchNorm, ReLU, Dropout, LayerNorm and a linear head (all convert); one ``F.relu`` in
    forward (a function: it stays native)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.25)
        )
        self.norm = nn.LayerNorm(4 * 4 * 4)
        self.head = nn.Sequential(nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 3))

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x).flatten(1)  # (N, 4, 4, 4) -> (N, 64)
        return self.head(F.relu(self.norm(h)))  # F.relu is a function: it stays native


def cnn() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    return SmallCNN(), torch.randn(5, 1, 4, 4)


def mlp_with_loss() -> tuple[nn.Module, tuple[Tensor], Any]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    target = torch.tensor([0, 2, 1, 1, 0, 2])
    return model, (torch.randn(6, 4),), lambda out: F.cross_entropy(out, target.to(out.device))


def as_dict() -> dict[str, Any]:
    torch.manual_seed(0)
    return {"model": nn.Sequential(nn.Linear(3, 2), nn.Sigmoid()), "inputs": torch.randn(4, 3)}


def broken_backward() -> tuple[nn.Module, Tensor]:
    """A model whose manual Linear backward is sabotaged (the weight gradient doubled): check must fail.

    Only for the CLI test, which runs it in a subprocess, so the patch never leaks into other tests.
    """
    from manual_bp.functional import LinearFunction

    correct = LinearFunction.backward

    def doubled(ctx: Any, grad_output: Tensor) -> Any:
        grad_input, grad_weight, grad_bias = correct(ctx, grad_output)
        return grad_input, None if grad_weight is None else 2 * grad_weight, grad_bias

    LinearFunction.backward = staticmethod(doubled)  # type: ignore[method-assign]
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(5, 3)


def bad_returns_string() -> str:
    return "not a model"


def bad_returns_four() -> tuple[Any, ...]:
    return nn.Linear(2, 2), torch.randn(1, 2), None, None


def bad_model_type() -> tuple[Any, Tensor]:
    return "model", torch.randn(1, 2)


def bad_inputs_type() -> tuple[nn.Module, Any]:
    return nn.Linear(2, 2), 3.0


def bad_raises() -> Any:
    raise RuntimeError("factory exploded")


def bad_shape() -> tuple[nn.Module, Tensor]:
    return nn.Linear(2, 2), torch.randn(3, 5)


NOT_CALLABLE = 42
