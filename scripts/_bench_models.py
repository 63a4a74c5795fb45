"""Real architectures written from ``torch.nn`` pieces only: a ResNet, a ViT, a BERT-like encoder, an
LSTM language model and a classifier on ``torch.nn``'s own Transformer layers.

Used by ``scripts/bench.py --models`` (a training step of the converted model against the native
one) and by ``tests/test_models.py`` (coverage, gradients and revert after ``manual_bp.convert``),
which imports this file through ``tests/_models.py``. Nothing here imports manual_bp: these are
the models a user brings. Every layer is a module (no ``F.relu`` inside ``forward``), so that
``manual_bp.convert`` can swap all of them; the one exception is the ViT's class token and position
embedding, raw ``nn.Parameter``\\ s added in ``forward`` (as in every ViT implementation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "BasicBlock",
    "Bert",
    "ResNet",
    "SelfAttention",
    "LSTMLanguageModel",
    "SequenceTransformer",
    "ViT",
    "lstm_lm",
    "resnet18",
    "sequence_transformer",
    "tiny_bert",
    "tiny_lstm_lm",
    "tiny_resnet",
    "tiny_sequence_transformer",
    "tiny_vit",
    "vit_small",
]


# ----------------------------------------------------------------------------- ResNet (torchvision)
class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: two 3x3 convolutions with batch norm, and a residual."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ``ResNet`` with ``BasicBlock``: a 7x7 stride-2 stem and 3x3 max pool, four
    stages (the first at stride 1, the others at stride 2, with a 1x1 convolution + batch norm
    downsample where the shape changes), global average pooling and a linear classifier."""

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = [
            self._make_layer(w, n, stride=1 if i == 0 else 2)
            for i, (w, n) in enumerate(zip(widths, layers, strict=True))
        ]
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def resnet18(num_classes: int = 10) -> ResNet:
    """ResNet-18's layout: [2, 2, 2, 2] basic blocks of widths 64, 128, 256, 512 (11.2 M parameters)."""
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), num_classes)


def tiny_resnet(num_classes: int = 5) -> ResNet:
    """The same architecture, one block per stage and widths 4, 8, 8, 12 (for tests, on 3x32x32 input)."""
    return ResNet((1, 1, 1, 1), (4, 8, 8, 12), num_classes)


# ----------------------------------------------------------------------------- attention
class SelfAttention(nn.Module):
    """Multi-head self-attention written out: Linear q/k/v projections, softmax(q kᵀ / √d) with
    dropout, the weighted sum of v, and a Linear output projection."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim} and heads={heads}")
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.softmax = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, H, T, D/H)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, t, d = x.shape
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, T, T)
        if mask is not None:  # additive: 0 where attended, -inf (or large negative) where masked
            scores = scores + mask
        weights = self.dropout(self.softmax(scores))
        context = (weights @ v).transpose(1, 2).reshape(b, t, d)  # (B, T, D)
        return self.out(context)


def _mlp(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
    )


# ----------------------------------------------------------------------------- ViT
class ViTBlock(nn.Module):
    """A pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _mlp(dim, hidden, dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A vision transformer: a Conv2d patch embedding, a class token and learned position embedding
    (raw parameters), pre-norm blocks, a final LayerNorm and a linear head on the class token."""

    def __init__(
        self,
        image_size: int = 32,
        patch_size: int = 4,
        dim: int = 192,
        depth: int = 4,
        heads: int = 4,
        mlp_dim: int = 384,
        num_classes: int = 10,
        dropout: float = 0.1,
        channels: int = 3,
    ) -> None:
        super().__init__()
        patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(channels, dim, patch_size, stride=patch_size)
        self.flatten = nn.Flatten(2)  # (B, D, H', W') -> (B, D, P)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, patches + 1, dim) * 0.02)
        self.pos_drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads, mlp_dim, dropout) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.flatten(self.patch_embed(images)).transpose(1, 2)  # (B, P, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, x], dim=1) + self.pos_embed)  # (B, P + 1, D)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit_small(num_classes: int = 10) -> ViT:
    """The benchmark's ViT: 32x32 images in 4x4 patches, dim 192, 4 layers of 4 heads, MLP 384."""
    return ViT(32, 4, dim=192, depth=4, heads=4, mlp_dim=384, num_classes=num_classes)


def tiny_vit(num_classes: int = 5, dropout: float = 0.1) -> ViT:
    """For tests: 8x8 images in 4x4 patches, dim 32, 2 layers of 2 heads, MLP 128 (27 k parameters, of
    which the class token and position embedding are 0.7 %)."""
    return ViT(8, 4, dim=32, depth=2, heads=2, mlp_dim=128, num_classes=num_classes, dropout=dropout)


# ----------------------------------------------------------------------------- BERT
class BertLayer(nn.Module):
    """A post-norm encoder layer: LN(x + dropout(attention(x))), then LN(x + MLP(x))."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.attn = SelfAttention(dim, heads, dropout)
        self.drop = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim, eps=1e-12)
        self.mlp = _mlp(dim, hidden, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = self.norm1(x + self.drop(self.attn(x, mask)))
        return self.norm2(x + self.mlp(x))


class Bert(nn.Module):
    """A BERT-like encoder classifier: word, position and token-type embeddings summed, LayerNorm
    and dropout, post-norm layers, then BERT's pooler (Linear + Tanh on the first token) and a
    dropout + Linear classification head. Train with ``nn.CrossEntropyLoss`` on the logits."""

    def __init__(
        self,
        vocab_size: int = 1000,
        max_positions: int = 64,
        type_vocab_size: int = 2,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_dim: int = 512,
        num_classes: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position_embeddings = nn.Embedding(max_positions, dim)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, dim)
        self.embed_norm = nn.LayerNorm(dim, eps=1e-12)
        self.embed_drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList(BertLayer(dim, heads, mlp_dim, dropout) for _ in range(depth))
        self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, attention_mask: Tensor | None = None
    ) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_type_ids)
        )
        x = self.embed_drop(self.embed_norm(x))
        mask = None
        if attention_mask is not None:  # (B, T) of 1 = attend, 0 = padding -> additive (B, 1, 1, T)
            mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, mask)
        return self.classifier(self.pooler(x[:, 0]))


def tiny_bert(num_classes: int = 3, dropout: float = 0.1) -> Bert:
    """For tests: vocabulary 20, 8 positions, dim 8, 2 layers of 2 heads, MLP 16."""
    return Bert(20, 8, 2, dim=8, depth=2, heads=2, mlp_dim=16, num_classes=num_classes, dropout=dropout)


# ----------------------------------------------------------------------------- LSTM language model
class LSTMLanguageModel(nn.Module):
    """A word-level LSTM language model (Zaremba et al.'s PTB model, smaller): embedding, a stacked
    LSTM with dropout between layers, and a linear decoder predicting the next token at every step.
    Takes token ids ``(N, T)`` (batch first) and returns logits ``(N·T, vocab)`` for
    ``nn.CrossEntropyLoss`` against the next tokens flattened to ``(N·T,)``."""

    takes_tokens = True  # scripts/bench.py feeds token ids and one target per token

    def __init__(
        self, vocab_size: int = 1000, dim: int = 256, hidden: int = 256, layers: int = 2, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.lstm = nn.LSTM(dim, hidden, num_layers=layers, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        output, _ = self.lstm(self.drop(self.embed(tokens)))
        return self.decoder(self.drop(output)).flatten(0, 1)


def lstm_lm(num_classes: int = 1000) -> LSTMLanguageModel:
    """Vocabulary ``num_classes``, embedding and hidden size 256, 2 layers."""
    return LSTMLanguageModel(num_classes)


def tiny_lstm_lm(num_classes: int = 20) -> LSTMLanguageModel:
    """For tests: vocabulary 20, size 8, 2 layers."""
    return LSTMLanguageModel(num_classes, dim=8, hidden=8)


# ----------------------------------------------------------------------------- torch.nn.Transformer pieces


class SequenceTransformer(nn.Module):
    """A sequence classifier from ``torch.nn``'s own Transformer: a ``Linear`` embedding of each
    step's features, learned positions (``nn.Embedding``), ``nn.TransformerEncoder`` of pre-norm
    ``nn.TransformerEncoderLayer``\\ s (GELU given as the string ``"gelu"``, so stored as ``F.gelu``),
    a final ``LayerNorm``, the mean over the steps and a ``Linear`` head. Input ``(N, T, features)``."""

    def __init__(
        self,
        features: int = 16,
        length: int = 32,
        dim: int = 128,
        depth: int = 2,
        heads: int = 4,
        mlp_dim: int = 512,
        num_classes: int = 10,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.positions = nn.Embedding(length, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, mlp_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        x = self.encoder(self.embed(x) + self.positions(positions))
        return self.head(self.norm(x).mean(dim=1))


def sequence_transformer(num_classes: int = 10) -> SequenceTransformer:
    """2 pre-norm layers of dim 128, 4 heads, MLP 512, over 32 steps of 16 features."""
    return SequenceTransformer(num_classes=num_classes)


def tiny_sequence_transformer(num_classes: int = 5) -> SequenceTransformer:
    """For tests: 8 steps of 4 features, dim 8, 2 layers of 2 heads, MLP 16."""
    return SequenceTransformer(4, 8, dim=8, depth=2, heads=2, mlp_dim=16, num_classes=num_classes)
