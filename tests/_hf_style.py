"""Small models written the way Hugging Face ``transformers`` writes its layers, from torch pieces only.

No package is downloaded: each class copies the shape of one transformers layer, at toy sizes, so
that ``convert(model, functional=True)`` can be tested on the code such models actually run:

* :class:`Conv1D` — GPT-2's projection: ``torch.addmm(bias, x, weight)`` with the weight ``(nx, nf)``;
* :class:`NewGELUActivation` — GPT-2's GELU, written with ``torch.tanh`` and ``torch.pow``;
* :class:`RMSNorm` — Llama's ``LlamaRMSNorm``: ``pow``, ``mean``, ``rsqrt``, times the weight;
* :class:`ViTEmbeddings` — a class token and a position-embedding ``Parameter`` added in forward;
* :class:`ConvNeXtLayer` — a layer-scale ``Parameter`` multiplied in forward;
* :class:`Attention` — ``torch.matmul`` + ``softmax`` (``sdpa=True``: ``F.scaled_dot_product_attention``).

One deviation from transformers: ``RMSNorm`` upcasts only float16/bfloat16 to float32 (transformers
upcasts every dtype), so that a float64 model stays float64 and its gradients can be compared with
native's to 1e-10.

The factories at the end return ``(model, inputs, loss_fn)`` for ``manual-bp check --model`` and a
bare model (``digits_*``) for ``manual-bp train --model.factory`` on the digits (``(N, 64)`` inputs,
10 classes).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Conv1D(nn.Module):
    """GPT-2's ``Conv1D``: a linear layer with the weight transposed, ``addmm(b, x, W)``."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.empty(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))
        nn.init.normal_(self.weight, std=0.02 * 10)

    def forward(self, x: Tensor) -> Tensor:
        size_out = x.size()[:-1] + (self.nf,)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)  # (N, nx) @ (nx, nf) -> (N, nf)
        return x.view(size_out)


class NewGELUActivation(nn.Module):
    """GPT-2's GELU (the tanh approximation), written out with ``torch.tanh`` and ``torch.pow``."""

    def forward(self, input: Tensor) -> Tensor:
        inner = math.sqrt(2.0 / math.pi) * (input + 0.044715 * torch.pow(input, 3.0))
        return 0.5 * input * (1.0 + torch.tanh(inner))


class RMSNorm(nn.Module):
    """Llama's ``LlamaRMSNorm``: ``weight * x / sqrt(mean(x²) + eps)``, written by hand."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: Tensor) -> Tensor:
        input_dtype = hidden_states.dtype
        if input_dtype in (torch.float16, torch.bfloat16):
            hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class Attention(nn.Module):
    """Multi-head self-attention in transformers' eager style: ``matmul`` + ``softmax`` (+ a causal
    mask by ``torch.where``); ``sdpa=True`` calls ``F.scaled_dot_product_attention`` instead.

    ``conv1d=True`` projects with one GPT-2 :class:`Conv1D` (``c_attn``, ``c_proj``); otherwise with
    Llama's ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (``nn.Linear`` without bias).
    """

    def __init__(self, dim: int, heads: int, causal: bool, conv1d: bool, sdpa: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim, self.causal, self.sdpa = heads, dim // heads, causal, sdpa
        self.conv1d = conv1d
        if conv1d:
            self.c_attn = Conv1D(3 * dim, dim)
            self.c_proj = Conv1D(dim, dim)
        else:
            self.q_proj = nn.Linear(dim, dim, bias=False)
            self.k_proj = nn.Linear(dim, dim, bias=False)
            self.v_proj = nn.Linear(dim, dim, bias=False)
            self.o_proj = nn.Linear(dim, dim, bias=False)
        self.attn_dropout = nn.Dropout(0.0)

    def _heads(self, x: Tensor) -> Tensor:
        return x.view(*x.shape[:-1], self.heads, self.head_dim).transpose(1, 2)  # (B, H, T, Dh)

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        if self.conv1d:
            q, k, v = self.c_attn(x).split(D, dim=2)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)
        if self.sdpa:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, H, T, T)
            if self.causal:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
                scores = torch.where(mask, scores, torch.finfo(scores.dtype).min)
            weights = self.attn_dropout(F.softmax(scores, dim=-1))
            out = weights @ v  # (B, H, T, T) @ (B, H, T, Dh) -> (B, H, T, Dh)
        out = out.transpose(1, 2).reshape(B, T, D)
        return self.c_proj(out) if self.conv1d else self.o_proj(out)


class GPT2Block(nn.Module):
    """GPT-2's block: pre-LayerNorm attention and MLP (``Conv1D``, ``NewGELUActivation``), residuals."""

    def __init__(self, dim: int, heads: int, sdpa: bool = False) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, causal=True, conv1d=True, sdpa=sdpa)
        self.ln_2 = nn.LayerNorm(dim)
        self.c_fc = Conv1D(4 * dim, dim)
        self.act = NewGELUActivation()
        self.c_proj = Conv1D(dim, 4 * dim)
        self.dropout = nn.Dropout(0.0)

    def forward(self, hidden_states: Tensor) -> Tensor:
        hidden_states = self.attn(self.ln_1(hidden_states)) + hidden_states
        mlp = self.dropout(self.c_proj(self.act(self.c_fc(self.ln_2(hidden_states)))))
        return hidden_states + mlp


class GPT2Model(nn.Module):
    """A GPT-2 language model: token and position embeddings, blocks, final LayerNorm, tied head."""

    def __init__(
        self,
        vocab: int = 11,
        dim: int = 8,
        heads: int = 2,
        layers: int = 2,
        positions: int = 6,
        sdpa: bool = False,
    ) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(positions, dim)
        self.h = nn.ModuleList(GPT2Block(dim, heads, sdpa) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as in transformers

    def forward(self, input_ids: Tensor) -> Tensor:
        position_ids = torch.arange(input_ids.shape[-1], device=input_ids.device)
        hidden_states = self.wte(input_ids) + self.wpe(position_ids)
        for block in self.h:
            hidden_states = block(hidden_states)
        return self.lm_head(self.ln_f(hidden_states))


class LlamaModel(nn.Module):
    """A Llama language model: ``RMSNorm``, attention with ``q/k/v/o_proj``, a gated SiLU MLP."""

    def __init__(self, vocab: int = 11, dim: int = 8, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(_LlamaLayer(dim, heads) for _ in range(layers))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        hidden_states = self.embed_tokens(input_ids)
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        return self.lm_head(self.norm(hidden_states))


class _LlamaLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = Attention(dim, heads, causal=True, conv1d=False)
        self.post_attention_layernorm = RMSNorm(dim)
        self.gate_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.up_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.down_proj = nn.Linear(2 * dim, dim, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, hidden_states: Tensor) -> Tensor:
        residual = hidden_states
        hidden_states = residual + self.self_attn(self.input_layernorm(hidden_states))
        residual = hidden_states
        h = self.post_attention_layernorm(hidden_states)
        return residual + self.down_proj(self.act_fn(self.gate_proj(h)) * self.up_proj(h))


class ViTEmbeddings(nn.Module):
    """ViT's embeddings: a patch convolution, a class token and position embeddings (``Parameter``\\ s)."""

    def __init__(self, channels: int, image: int, patch: int, dim: int) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.projection = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        self.position_embeddings = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim))

    def forward(self, pixel_values: Tensor) -> Tensor:
        embeddings = self.projection(pixel_values).flatten(2).transpose(1, 2)  # (B, patches, dim)
        cls_tokens = self.cls_token.expand(embeddings.shape[0], -1, -1)
        embeddings = torch.cat((cls_tokens, embeddings), dim=1)
        return embeddings + self.position_embeddings


class ViTModel(nn.Module):
    """A ViT classifier: embeddings, one pre-LayerNorm encoder layer (``NewGELUActivation`` MLP), head."""

    def __init__(
        self, channels: int = 1, image: int = 8, patch: int = 4, dim: int = 8, classes: int = 10
    ) -> None:
        super().__init__()
        self.embeddings = ViTEmbeddings(channels, image, patch, dim)
        self.layernorm_before = nn.LayerNorm(dim)
        self.attention = Attention(dim, 2, causal=False, conv1d=False)
        self.layernorm_after = nn.LayerNorm(dim)
        self.intermediate = nn.Linear(dim, 2 * dim)
        self.act = NewGELUActivation()
        self.output = nn.Linear(2 * dim, dim)
        self.classifier = nn.Linear(dim, classes)

    def forward(self, pixel_values: Tensor) -> Tensor:
        h = self.embeddings(pixel_values)
        h = self.attention(self.layernorm_before(h)) + h
        h = self.output(self.act(self.intermediate(self.layernorm_after(h)))) + h
        return self.classifier(h[:, 0])  # the class token's output


class ConvNeXtLayer(nn.Module):
    """ConvNeXt's block: depthwise conv, channels-last LayerNorm, MLP, a layer-scale ``Parameter``."""

    def __init__(self, dim: int = 4) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.layernorm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.layer_scale_parameter = nn.Parameter(0.5 * torch.ones(dim))

    def forward(self, hidden_states: Tensor) -> Tensor:
        x = self.dwconv(hidden_states).permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.pwconv2(self.act(self.pwconv1(self.layernorm(x))))
        x = self.layer_scale_parameter * x
        return hidden_states + x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)


# ------------------------------------------------------------------------------------------------
# Factories: (model, inputs, loss_fn) for `manual-bp check --model`, bare models for training
# ------------------------------------------------------------------------------------------------


def _lm_loss(vocab: int, tokens: Tensor) -> Any:
    target = tokens.roll(-1, dims=-1)
    return lambda logits: F.cross_entropy(logits.reshape(-1, vocab), target.reshape(-1).to(logits.device))


def gpt2(sdpa: bool = False) -> tuple[nn.Module, Tensor, Any]:
    torch.manual_seed(0)
    tokens = torch.randint(0, 11, (2, 6))
    return GPT2Model(sdpa=sdpa), tokens, _lm_loss(11, tokens)


def gpt2_sdpa() -> tuple[nn.Module, Tensor, Any]:
    return gpt2(sdpa=True)


def llama() -> tuple[nn.Module, Tensor, Any]:
    torch.manual_seed(0)
    tokens = torch.randint(0, 11, (2, 5))
    return LlamaModel(), tokens, _lm_loss(11, tokens)


def vit() -> tuple[nn.Module, Tensor, Any]:
    torch.manual_seed(0)
    labels = torch.tensor([1, 7, 3])
    return ViTModel(), torch.randn(3, 1, 8, 8), lambda out: F.cross_entropy(out, labels.to(out.device))


def convnext() -> tuple[nn.Module, Tensor, Any]:
    torch.manual_seed(0)
    return ConvNeXtLayer(), torch.randn(2, 4, 3, 3), lambda out: out.pow(2).mean()


class _Tokens(nn.Module):
    """The digits' 64 pixels as 8 tokens of 8, for a transformer that classifies them."""

    def __init__(self, body: nn.Module, dim: int = 8) -> None:
        super().__init__()
        self.body = body
        self.head = Conv1D(10, dim)

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x.reshape(x.shape[0], 8, 8))  # (N, 64) -> (N, 8 tokens, 8)
        return self.head(h.mean(1))  # (N, 8) -> (N, 10)


def digits_gpt2() -> nn.Module:
    """A GPT-2 block over the digits' pixel rows, for ``manual-bp train --model.factory``."""
    torch.manual_seed(0)
    return _Tokens(GPT2Block(8, 2))


class GPT2Classifier(nn.Module):
    """GPT-2 blocks over a sequence of feature vectors, mean-pooled into a ``Conv1D`` head: the
    model of ``scripts/bench.py --functional``."""

    def __init__(self, num_classes: int = 10, dim: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.h = nn.ModuleList(GPT2Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = Conv1D(num_classes, dim)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.h:
            x = block(x)
        return self.head(self.ln_f(x).mean(1))  # (N, T, dim) -> (N, classes)
