"""The test models: scripts/_bench_models.py's ResNet, ViT, BERT and LSTM language model (written
once, there), with tiny constructors, their inputs and their loss for the tests."""

from __future__ import annotations

import sys
from pathlib import Path

_SCRIPTS = str(Path(__file__).resolve().parents[1] / "scripts")
if _SCRIPTS not in sys.path:
    sys.path.insert(0, _SCRIPTS)

from _bench_models import (  # noqa: E402 (after the path set-up)
    BasicBlock,
    Bert,
    LSTMLanguageModel,
    ResNet,
    SelfAttention,
    ViT,
    resnet18,
    tiny_bert,
    tiny_lstm_lm,
    tiny_resnet,
    tiny_vit,
    vit_small,
)

__all__ = [
    "BasicBlock",
    "Bert",
    "LSTMLanguageModel",
    "ResNet",
    "SelfAttention",
    "ViT",
    "resnet18",
    "tiny_bert",
    "tiny_lstm_lm",
    "tiny_resnet",
    "tiny_vit",
    "vit_small",
]
