"""Model factories for ``manual-bp train --model.factory``: a small CNN and a small Transformer on digits.

Each function takes no arguments and returns a plain ``torch.nn`` model; ``manual-bp train`` converts
it with :func:`manual_bp.convert` and trains it. Run from the repository root (the current directory
is importable)::

    manual-bp train --config configs/digits_cnn.yaml
    manual-bp train --config configs/digits_transformer.yaml

Both read the digits as 1×8×8 images (``--data.init_args.images true``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def cnn() -> nn.Module:
    """Two conv blocks (Conv2d, BatchNorm2d, ReLU, MaxPool2d) and a linear head: 1×8×8 -> 10 logits.

    Every layer has a manual twin, so after conversion the backward of all 6,186 parameters is explicit.
    """
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),  # (N, 1, 8, 8) -> (N, 16, 8, 8)
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 16, 8, 8) -> (N, 16, 4, 4)
        nn.Conv2d(16, 32, kernel_size=3, padding=1),  # (N, 16, 4, 4) -> (N, 32, 4, 4)
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (N, 32, 4, 4) -> (N, 32, 2, 2)
        nn.Flatten(),  # (N, 32, 2, 2) -> (N, 128)
        nn.Linear(128, 10),  # (N, 128) -> (N, 10)
    )


class RowTransformer(nn.Module):
    """A digit as a sequence of its 8 rows (8 tokens of 8 pixels): embedding, Transformer encoder
    layers, mean over tokens, linear head.

    Args:
        d_model: token width.
        nhead: attention heads.
        layers: encoder layers.
        dim_feedforward: width of each layer's feed-forward block.
    """

    def __init__(self, d_model: int = 32, nhead: int = 4, layers: int = 2, dim_feedforward: int = 64) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d_model)
        self.position = nn.Embedding(8, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 10)

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.reshape(x.shape[0], 8, 8)  # (N, 1, 8, 8) -> (N, 8 rows, 8 pixels)
        positions = torch.arange(8, device=x.device)  # (8,)
        h = self.embed(tokens) + self.position(positions)  # (N, 8, 8) -> (N, 8, D)
        h = self.encoder(h)  # (N, 8, D)
        return self.head(self.norm(h.mean(dim=1)))  # (N, 8, D) -> (N, D) -> (N, 10)


def transformer() -> nn.Module:
    """:class:`RowTransformer` with its defaults (2 layers, width 32, 4 heads)."""
    return RowTransformer()
