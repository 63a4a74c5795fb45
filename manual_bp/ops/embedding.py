r"""Embedding: a row lookup ``W[i]``; BP3 adds each δ row into the row of W it came from."""

from __future__ import annotations

import numbers
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manual_bp._function import ManualFunction, check_floating
from manual_bp._torch_private import functorch_active
from manual_bp.ops._op import Op, Sample, noncontiguous, tensor
from manual_bp.ops.elementwise import to_float32

__all__ = ["EMBEDDING_OPS", "Embedding", "EmbeddingFunction", "embedding"]

_INDEX_DTYPES = (torch.int64, torch.int32)


class EmbeddingFunction(ManualFunction):
    r"""``y = W[i]``: row ``i`` of the table ``W (num_embeddings, D)`` for every index ``i``.

    .. math::
        \frac{\partial c}{\partial W_k} = \sum_{n:\, i_n = k} \frac{\delta_n}{\text{count}(k)}

    (``count(k)`` is 1 unless ``scale_grad_by_freq``; the ``padding_idx`` row gets no gradient.)
    The indices are integers: they get no gradient.
    """

    @staticmethod
    def forward(input: Tensor, weight: Tensor, padding_idx: int, scale_grad_by_freq: bool) -> Tensor:
        return torch.embedding(weight, input)  # FF: (num_embeddings, D)[(*)] -> (*, D)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, weight, padding_idx, scale_grad_by_freq = inputs
        ctx.save_for_backward(input)  # W itself is not needed: ∂c/∂W depends on δ and the indices only
        ctx.num_embeddings = weight.shape[0]
        ctx.padding_idx, ctx.scale_grad_by_freq = padding_idx, scale_grad_by_freq

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        (input,) = ctx.saved_tensors
        grad_weight = None
        if ctx.needs_input_grad[1]:
            index = input.reshape(-1)  # (*) -> (N,)
            # float16/bfloat16 summed in float32, as native's CUDA kernel does (in bfloat16 a running
            # sum of ones stops at 256, as native's CPU kernel's does: see test_embedding.py)
            delta = to_float32(grad_output).reshape(index.shape[0], grad_output.shape[-1])  # (*, D) -> (N, D)
            num = ctx.num_embeddings
            if ctx.scale_grad_by_freq:  # δ_n / count(i_n), the count over the whole batch
                ones = torch.ones_like(index, dtype=torch.int64)  # integers: bfloat16 stops counting at 256
                count = ones.new_zeros(num).index_add(0, index, ones)  # (N,) -> (num_embeddings,)
                delta = delta / count[index].unsqueeze(1)  # (N, D) / (N, 1)
            if ctx.padding_idx >= 0:  # the padding row gets no gradient
                delta = delta * (index != ctx.padding_idx).unsqueeze(1).to(delta.dtype)  # (N, D) ⊙ (N, 1)
            # BP3: ∂c/∂W_k = Σ_{n: i_n = k} δ_n; (N, D) -> (num_embeddings, D)
            grad_weight = delta.new_zeros(num, delta.shape[1]).index_add(0, index, delta)
            grad_weight = grad_weight.to(grad_output.dtype)  # (a no-op unless float16/bfloat16)
        return None, grad_weight, None, None


def embedding(
    input: Tensor,
    weight: Tensor,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> Tensor:
    """Look up rows of ``weight`` with the explicit backward of :class:`EmbeddingFunction`.

    Shape: ``input (*)`` integer indices (int64 or int32) in ``[0, num_embeddings)``, ``weight
    (num_embeddings, D)`` -> ``(*, D)``. As in torch: the ``padding_idx`` row (negative counts from
    the end) gets no gradient; ``max_norm`` renormalises the looked-up rows of ``weight`` in place
    (under ``no_grad``, as the native op) before the lookup; ``scale_grad_by_freq`` divides each
    row's gradient by its index's count in ``input``. ``sparse=True`` is refused: manual_bp computes
    dense gradients. The index range is checked (one min/max pass over ``input``; outside
    ``torch.compile`` and ``torch.func`` transforms, where data-dependent checks cannot run).
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"embedding expected input to be a tensor of indices, got {type(input).__name__}")
    if input.dtype not in _INDEX_DTYPES:
        raise TypeError(
            f"embedding expected input of integer indices (int64 or int32), got dtype {input.dtype}"
        )
    check_floating("weight", weight)
    if weight.dim() != 2:
        raise ValueError(
            "embedding expected weight of shape (num_embeddings, embedding_dim), "
            f"got shape {tuple(weight.shape)}"
        )
    if input.device != weight.device:
        raise ValueError(
            f"input and weight must be on the same device, got input on {input.device} "
            f"and weight on {weight.device}"
        )
    if sparse:
        raise NotImplementedError(
            "embedding(sparse=True): manual_bp computes dense gradients; pass sparse=False "
            "(or use torch.nn.functional.embedding for sparse gradients)"
        )
    num = weight.shape[0]
    padding_idx = _padding_index(padding_idx, num)
    if not (torch.compiler.is_compiling() or functorch_active()) and input.numel():
        low, high = torch.aminmax(input)
        if low < 0 or high >= num:
            raise IndexError(
                f"embedding index out of range: indices must be in [0, {num}) (num_embeddings={num}), "
                f"got indices from {int(low)} to {int(high)}"
            )
    if max_norm is not None:
        if isinstance(max_norm, bool) or not isinstance(max_norm, numbers.Real):
            raise TypeError(f"max_norm must be a number or None, got {type(max_norm).__name__}")
        if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real):
            raise TypeError(f"norm_type must be a number, got {type(norm_type).__name__}")
        input = input.contiguous()
        with torch.no_grad():  # native's forward: rows of norm > max_norm scaled in place, not differentiated
            torch.embedding_renorm_(weight, input, max_norm, norm_type)
    return EmbeddingFunction.apply(input, weight, padding_idx, bool(scale_grad_by_freq))


def _padding_index(padding_idx: int | None, num: int) -> int:
    """``padding_idx`` as a row in ``[0, num)``, or ``-1`` for none (a negative one counts from the end)."""
    if padding_idx is None:
        return -1
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, numbers.Integral):
        raise TypeError(f"padding_idx must be an int or None, got {type(padding_idx).__name__}")
    if not -num <= padding_idx < num:
        raise ValueError(f"padding_idx must be within num_embeddings: in [{-num}, {num}), got {padding_idx}")
    return int(padding_idx) % num


class Embedding(nn.Embedding):
    """``torch.nn.Embedding`` with the explicit backward of :func:`manual_bp.functional.embedding`.

    Shape ``(*) -> (*, embedding_dim)``; ``weight (num_embeddings, embedding_dim)``, initialised as
    ``torch.nn.Embedding`` does (``Embedding.from_pretrained`` works too). ``sparse=True`` is refused
    on the first call: manual_bp computes dense gradients.

    >>> import torch, manual_bp
    >>> layer = manual_bp.Embedding(10, 3)
    >>> layer(torch.tensor([[1, 2], [4, 9]])).grad_fn.name()
    'EmbeddingFunctionBackward'
    """

    __module__ = "manual_bp.modules"  # its public home (the drop-in layers)

    def forward(self, input: Tensor) -> Tensor:
        return embedding(
            input,
            self.weight,
            self.padding_idx,
            self.max_norm,
            self.norm_type,
            self.scale_grad_by_freq,
            self.sparse,
        )


def _indices(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype = torch.int64) -> Tensor:
    return torch.randint(0, 5, shape, device=device, dtype=dtype)  # rows of a (5, 3) weight


def _samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def w() -> Tensor:
        return tensor((5, 3), dtype, device)

    repeated = torch.tensor([[1, 3, 1], [0, 1, 3]], device=device)  # 1 three times, 3 twice
    # padding_idx and scale_grad_by_freq define the gradient as something else than the derivative
    # (0 for the padding row, which the output holds; δ over the count): finite differences disagree
    # for native too, so gradcheck and gradgradcheck skip these samples (finite=False) and the
    # native comparison checks them
    pad = {"finite": False}
    return [
        Sample((_indices((), device), w()), label="0-d indices"),
        Sample((_indices((4,), device), w()), label="indices [4]"),
        Sample((_indices((2, 3), device), w()), label="indices [2, 3]"),
        Sample((_indices((0,), device), w()), label="no indices"),
        Sample((_indices((2, 3), device, torch.int32), w()), label="int32 indices"),
        Sample((_indices((3, 2), device).t(), noncontiguous((5, 3), dtype, device)), label="non-contiguous"),
        Sample((repeated, w()), {"padding_idx": 3}, label="padding_idx", **pad),
        Sample((repeated, w()), {"padding_idx": -2}, label="negative padding_idx", **pad),
        Sample((repeated, w()), {"scale_grad_by_freq": True}, label="scale_grad_by_freq", **pad),
        Sample(
            (repeated, w(), 0), {"scale_grad_by_freq": True}, label="scale_grad_by_freq, padding_idx", **pad
        ),
    ]


EMBEDDING_OPS: tuple[Op, ...] = (
    Op(
        "embedding",
        embedding,
        F.embedding,
        _samples,
        EmbeddingFunction,
        modules=((nn.Embedding, Embedding),),
        torch_functions=(F.embedding,),
        formula=(
            r"BP3: $\partial c/\partial W_k = \sum_{n:\,i_n=k} \delta_n$ (÷ count$(k)$ with "
            r"`scale_grad_by_freq`; 0 for the `padding_idx` row)"
        ),
    ),
)
