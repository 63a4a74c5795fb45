r"""Attention: ``scaled_dot_product_attention``, ``nn.MultiheadAttention`` and the Transformer layers.

Scaled dot-product attention of queries ``Q (*, L, E)``, keys ``K (*, S, E)`` and values
``V (*, S, E_v)``, with an additive mask ``M`` (``−∞`` where a bool mask is ``False``) and the scaled
dropout mask ``D = m / (1 − p)``:

.. math::
    S = Q K^\top \cdot \text{scale} + M, \quad P = \operatorname{softmax}(S), \quad O = (P \odot D)\, V

Backward, for ``δ = ∂c/∂O``:

.. math::
    \partial c/\partial V = (P \odot D)^\top \delta, \quad
    \partial c/\partial P = (\delta V^\top) \odot D, \quad
    \partial c/\partial S = P \odot (\partial c/\partial P - \textstyle\sum_{\text{row}}
        \partial c/\partial P \odot P),

    \partial c/\partial Q = \text{scale} \cdot (\partial c/\partial S)\, K, \quad
    \partial c/\partial K = \text{scale} \cdot (\partial c/\partial S)^\top Q, \quad
    \partial c/\partial M = \partial c/\partial S

(each summed back over the dims it was broadcast along; with grouped query heads the key's and
value's gradients are summed over each group). The softmax step is
:func:`manual_bp.ops.shape.softmax_grad`, the one copy of that formula.

``nn.MultiheadAttention`` is converted as a whole (:class:`MultiheadAttention`): its input
projections and ``out_proj`` run :func:`manual_bp.functional.linear`, the attention runs
:class:`ScaledDotProductAttentionFunction`, dropout of the returned weights runs
:class:`~manual_bp.ops.dropout.DropoutFunction`. The Transformer layers' twins
(:class:`TransformerEncoderLayer`, :class:`TransformerDecoderLayer`, :class:`TransformerEncoder`) run
torch's own layer code without its fused inference fast path, with an activation stored as a
function (``F.relu`` for ``activation="relu"``) swapped for its manual twin at call time.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manual_bp._function import (
    ManualFunction,
    autocast_cast,
    autocast_dtype,
    check_floating,
    check_same,
)
from manual_bp._torch_private import canonical_mask, detect_is_causal_mask, mha_shape_check, sequence_length
from manual_bp.ops._op import Op, Sample, noncontiguous, tensor
from manual_bp.ops.activations import ACTIVATION_OPS
from manual_bp.ops.arithmetic import add, sum_to
from manual_bp.ops.dropout import DropoutFunction, _check_p, scaled_mask
from manual_bp.ops.elementwise import to_float32
from manual_bp.ops.linear import linear
from manual_bp.ops.shape import softmax_grad

__all__ = [
    "ATTENTION_OPS",
    "MultiheadAttention",
    "ScaledDotProductAttentionFunction",
    "TransformerDecoderLayer",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "multi_head_attention_forward",
    "scaled_dot_product_attention",
]


def _repeat_heads(x: Tensor, groups: int) -> Tensor:
    """Each head (dim -3) ``groups`` times in a row: key/value head ``j`` serves query heads
    ``j·groups … j·groups + groups − 1`` (grouped-query attention)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=-3)  # (*, H, S, E) -> (*, H·g, S, E)


def _sum_heads(grad: Tensor, groups: int) -> Tensor:
    """The inverse of :func:`_repeat_heads` for gradients: the sum over each group of heads."""
    return grad if groups == 1 else grad.unflatten(-3, (-1, groups)).sum(-3)  # (*, H·g, S, E) -> (*, H, S, E)


class ScaledDotProductAttentionFunction(ManualFunction):
    r"""``O = (softmax(Q Kᵀ·scale + M) ⊙ D) V``; returns ``(O, P)`` (``P`` before dropout).

    .. math::
        \partial c/\partial V = (P \odot D)^\top \delta, \quad
        \partial c/\partial S = P \odot (\partial c/\partial P - \textstyle\sum_{\text{row}}
        \partial c/\partial P \odot P), \quad
        \partial c/\partial Q = \text{scale}\,(\partial c/\partial S) K, \quad
        \partial c/\partial K = \text{scale}\,(\partial c/\partial S)^\top Q

    with ``∂c/∂P = (δ Vᵀ) ⊙ D`` plus the gradient that reaches ``P`` itself (the attention weights
    that ``nn.MultiheadAttention`` returns). Arguments: ``query, key, value, mask, dropout_mask,
    scale, groups_k, groups_v``; ``mask`` is additive (float, or ``None``), ``dropout_mask`` the scaled
    mask ``m / (1 − p)`` (or ``None``), ``groups_*`` the query heads per key/value head. Float16
    and bfloat16 inputs are computed in float32 and rounded once, as native's kernels do. A row
    whose mask is ``−∞`` everywhere attends to nothing: ``P = 0`` there, as native.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor | None,
        dropout_mask: Tensor | None,
        scale: float,
        groups_k: int,
        groups_v: int,
    ) -> tuple[Tensor, Tensor]:
        q, k, v = to_float32(query), to_float32(key), to_float32(value)  # float16/bfloat16: float32
        k, v = _repeat_heads(k, groups_k), _repeat_heads(v, groups_v)
        s = (q * scale).matmul(k.transpose(-2, -1))  # FF: (Q·scale) Kᵀ; (*, L, E) @ (*, E, S) -> (*, L, S)
        if mask is not None:
            s = s + mask
        p = torch.softmax(s, -1)  # FF: P = softmax(S) along the keys
        if mask is not None and s.shape[-1]:
            p = p.masked_fill(s.amax(-1, keepdim=True) == -math.inf, 0.0)  # fully masked rows: 0
        p_kept = p if dropout_mask is None else p * dropout_mask  # P ⊙ D
        out = p_kept.matmul(v)  # FF: (*, L, S) @ (*, S, E_v) -> (*, L, E_v)
        return out.to(query.dtype), p.to(query.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        query, key, value, mask, dropout_mask, scale, groups_k, groups_v = inputs
        ctx.save_for_backward(query, key, value, output[1], dropout_mask)
        ctx.scale, ctx.groups_k, ctx.groups_v = scale, groups_k, groups_v
        ctx.mask_shape = mask.shape if mask is not None else None
        ctx.mask_dtype = mask.dtype if mask is not None else None
        ctx.set_materialize_grads(False)  # P's gradient is None unless the weights are used

    @staticmethod
    def backward(
        ctx: Any, grad_output: Tensor | None, grad_weights: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        query, key, value, p, dropout_mask = ctx.saved_tensors
        needs = ctx.needs_input_grad
        scale = ctx.scale
        q, k, v, p = to_float32(query), to_float32(key), to_float32(value), to_float32(p)
        delta = to_float32(grad_output) if grad_output is not None else None
        grad_query = grad_key = grad_value = grad_mask = None
        if needs[2] and delta is not None:
            p_kept = p if dropout_mask is None else p * dropout_mask
            # BP3-like: ∂c/∂V = (P ⊙ D)ᵀ δ; (*, S, L) @ (*, L, E_v) -> (*, S, E_v)
            grad_v = _sum_heads(p_kept.transpose(-2, -1).matmul(delta), ctx.groups_v)
            grad_value = sum_to(grad_v, value.shape).to(value.dtype)
        if (needs[0] or needs[1] or needs[3]) and (delta is not None or grad_weights is not None):
            grad_p = None
            if delta is not None:
                v_rep = _repeat_heads(v, ctx.groups_v)
                grad_p = delta.matmul(v_rep.transpose(-2, -1))  # δ Vᵀ; (*, L, E_v) @ (*, E_v, S) -> (*, L, S)
                if dropout_mask is not None:
                    grad_p = grad_p * dropout_mask  # ⊙ D: dropped weights get no gradient
            if grad_weights is not None:
                grad_w = to_float32(grad_weights)
                grad_p = grad_w if grad_p is None else grad_p + grad_w  # the returned weights' own δ
            assert grad_p is not None
            grad_s = softmax_grad(p, grad_p, -1)  # BP2 through softmax: P ⊙ (∂P − Σ_row ∂P ⊙ P)
            if needs[0]:
                k_rep = _repeat_heads(k, ctx.groups_k)
                # BP2: ∂c/∂Q = scale · ∂S K; (*, L, S) @ (*, S, E) -> (*, L, E)
                grad_query = sum_to(grad_s.matmul(k_rep) * scale, query.shape).to(query.dtype)
            if needs[1]:
                # BP2: ∂c/∂K = scale · ∂Sᵀ Q; (*, S, L) @ (*, L, E) -> (*, S, E)
                grad_k = _sum_heads(grad_s.transpose(-2, -1).matmul(q) * scale, ctx.groups_k)
                grad_key = sum_to(grad_k, key.shape).to(key.dtype)
            if needs[3]:
                grad_mask = sum_to(grad_s, ctx.mask_shape).to(ctx.mask_dtype)  # ∂c/∂M = ∂c/∂S
        return grad_query, grad_key, grad_value, grad_mask, None, None, None, None


# ------------------------------------------------------------------------------------------------
# the function
# ------------------------------------------------------------------------------------------------


def _additive_mask(attn_mask: Tensor | None, is_causal: bool, query: Tensor, s: int) -> Tensor | None:
    """The mask added to ``S``: a float mask as it is, ``−∞`` where a bool mask (or the causal
    lower triangle, aligned top-left as torch's) is ``False``."""
    if is_causal:
        attn_mask = torch.ones(query.shape[-2], s, dtype=torch.bool, device=query.device).tril()
    if attn_mask is None or attn_mask.dtype != torch.bool:
        return attn_mask
    return torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill_(
        attn_mask.logical_not(), -math.inf
    )


def _check_attention(
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any,
    dropout_p: Any,
    is_causal: bool,
    scale: Any,
    enable_gqa: bool,
) -> tuple[int, int]:
    """Raise a clear error for arguments ``scaled_dot_product_attention`` cannot take; return the
    query heads per key head and per value head."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        check_floating(name, t)
        if t.dim() < 2:
            raise RuntimeError(
                f"scaled_dot_product_attention expected {name} to be at least 2-D (*, length, features), "
                f"got shape {tuple(t.shape)}"
            )
    if key.shape[-1] != query.shape[-1]:
        raise RuntimeError(
            f"scaled_dot_product_attention expected key's last dim to equal query's ({query.shape[-1]}), "
            f"got key {tuple(key.shape)} and query {tuple(query.shape)}"
        )
    if value.shape[-2] != key.shape[-2]:
        raise RuntimeError(
            f"scaled_dot_product_attention expected value's length (dim -2) to equal key's "
            f"({key.shape[-2]}), got value {tuple(value.shape)} and key {tuple(key.shape)}"
        )
    _check_p(dropout_p)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)):
        raise TypeError(f"scale must be a number or None, got {type(scale).__name__}")
    if is_causal and attn_mask is not None:
        raise RuntimeError(
            "scaled_dot_product_attention: an explicit attn_mask must not be set when is_causal=True "
            "(torch rejects both together: pass one of them)"
        )
    groups_k = groups_v = 1
    if enable_gqa and query.dim() >= 3:
        hq, hk, hv = query.shape[-3], key.shape[-3], value.shape[-3]
        if hk == 0 or hv == 0 or hq % hk or hq % hv:
            raise RuntimeError(
                "scaled_dot_product_attention with enable_gqa=True expected the number of heads (dim -3) "
                f"of key ({hk}) and value ({hv}) to divide the query's ({hq})"
            )
        groups_k, groups_v = hq // hk, hq // hv
    k_batch = (*key.shape[:-3], key.shape[-3] * groups_k) if groups_k > 1 else key.shape[:-2]
    v_batch = (*value.shape[:-3], value.shape[-3] * groups_v) if groups_v > 1 else value.shape[:-2]
    try:
        torch.broadcast_shapes(query.shape[:-2], k_batch, v_batch)
    except RuntimeError:
        raise RuntimeError(
            "scaled_dot_product_attention expected the batch dims (all but the last two) of query, "
            f"key and value to broadcast, got query {tuple(query.shape)}, key {tuple(key.shape)} and "
            f"value {tuple(value.shape)}"
            + ("" if enable_gqa else " (different head counts need enable_gqa=True)")
        ) from None
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
        if attn_mask.dtype != torch.bool and attn_mask.dtype not in (torch.float32, query.dtype):
            raise RuntimeError(
                "scaled_dot_product_attention expected attn_mask to be bool, float32 or of the query's dtype "
                f"({query.dtype}), got {attn_mask.dtype}"
            )
        scores = (*torch.broadcast_shapes(query.shape[:-2], k_batch), query.shape[-2], key.shape[-2])
        try:
            fits = torch.broadcast_shapes(attn_mask.shape, scores) == scores
        except RuntimeError:
            fits = False
        if not fits:
            raise RuntimeError(
                f"scaled_dot_product_attention expected attn_mask to broadcast to the scores' shape "
                f"{scores} (*batch, L, S), got {tuple(attn_mask.shape)}"
            )
    return groups_k, groups_v


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``softmax(Q Kᵀ·scale + mask) V`` with dropout on the weights, with the explicit backward of
    :class:`ScaledDotProductAttentionFunction`.

    Shape: ``query (*, L, E)``, ``key (*, S, E)``, ``value (*, S, E_v)`` -> ``(*, L, E_v)``, the
    batch dims ``*`` broadcast; ``attn_mask`` (bool: ``True`` attends; float: added) broadcasts
    to ``(*, L, S)``. As ``torch.nn.functional.scaled_dot_product_attention``: ``is_causal`` masks
    the upper triangle (and excludes ``attn_mask``), ``scale`` defaults to ``1/√E``,
    ``enable_gqa`` lets ``H_q`` query heads (dim -3) share ``H_k`` key and ``H_v`` value heads.
    ``dropout_p > 0`` always drops (there is no training flag), drawing the same numbers as
    native's math path: one Bernoulli(1 − p) per weight, after the softmax.

    >>> import torch
    >>> q = torch.randn(2, 3, 4, requires_grad=True)
    >>> scaled_dot_product_attention(q, q, q).grad_fn.name()
    'ScaledDotProductAttentionFunctionBackward'
    """
    groups_k, groups_v = _check_attention(
        query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa
    )
    cast = autocast_dtype(query)
    if cast is not None:  # as native's autocast: every floating argument in the lower precision
        query, key, value = (autocast_cast(t, cast) for t in (query, key, value))  # type: ignore[assignment]
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = autocast_cast(attn_mask, cast)
    check_same("key", key, "query", query)
    check_same("value", value, "query", query)
    if attn_mask is not None and attn_mask.device != query.device:
        raise ValueError(f"attn_mask must be on the query's device {query.device}, got {attn_mask.device}")
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    mask = _additive_mask(attn_mask, is_causal, query, key.shape[-2])
    return _attention(query, key, value, mask, dropout_p, scale, groups_k, groups_v)[0]


def _attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    dropout_p: float,
    scale: float,
    groups_k: int = 1,
    groups_v: int = 1,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The checked call: ``(O, P, D)`` with the dropout mask ``D`` drawn as native's math path does
    (one draw per score of shape ``(*, L, S)``, after the softmax).

    On the CPU that is the path native takes whenever ``dropout_p > 0``, so a seeded call draws
    native's numbers. On CUDA native picks a fused kernel (flash, memory-efficient) where it can,
    which draws from the generator's Philox state in its own order; only its math path (float64,
    say) uses ``native_dropout``, as :func:`~manual_bp.ops.dropout.scaled_mask` does there. So on
    CUDA the mask has native's statistics but, in general, not its draws."""
    dropout_mask = None
    if dropout_p > 0:
        k_batch = (
            query.shape[:-2] if groups_k > 1 else torch.broadcast_shapes(query.shape[:-2], key.shape[:-2])
        )
        scores = query.new_empty((*k_batch, query.shape[-2], key.shape[-2]))
        dropout_mask = scaled_mask(scores, dropout_p)
    out, p = ScaledDotProductAttentionFunction.apply(
        query, key, value, mask, dropout_mask, scale, groups_k, groups_v
    )
    return out, p, dropout_mask


# ------------------------------------------------------------------------------------------------
# multi-head attention
# ------------------------------------------------------------------------------------------------


def _in_projection_packed(
    q: Tensor, k: Tensor, v: Tensor, w: Tensor, b: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The q, k, v projections with the packed ``in_proj_weight`` ``(3E, E)``, split as native does:
    one ``linear`` for self-attention, two when key is value, three otherwise."""
    e = q.size(-1)
    if k is v:
        if q is k:  # self-attention: x [W_q; W_k; W_v]ᵀ at once; (L, N, E) -> (L, N, 3E) -> 3 × (L, N, E)
            proj = (
                linear(q, w, b).unflatten(-1, (3, e)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
            )
            return proj[0], proj[1], proj[2]
        w_q, w_kv = w.split([e, 2 * e])  # encoder-decoder attention: key is value
        b_q, b_kv = b.split([e, 2 * e]) if b is not None else (None, None)
        kv = (
            linear(k, w_kv, b_kv).unflatten(-1, (2, e)).unsqueeze(0).transpose(0, -2).squeeze(-2).contiguous()
        )
        return linear(q, w_q, b_q), kv[0], kv[1]
    w_q, w_k, w_v = w.chunk(3)
    b_q, b_k, b_v = b.chunk(3) if b is not None else (None, None, None)
    return linear(q, w_q, b_q), linear(k, w_k, b_k), linear(v, w_v, b_v)


def multi_head_attention_forward(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    embed_dim_to_check: int,
    num_heads: int,
    in_proj_weight: Tensor | None,
    in_proj_bias: Tensor | None,
    bias_k: Tensor | None,
    bias_v: Tensor | None,
    add_zero_attn: bool,
    dropout_p: float,
    out_proj_weight: Tensor,
    out_proj_bias: Tensor | None,
    training: bool = True,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    use_separate_proj_weight: bool = False,
    q_proj_weight: Tensor | None = None,
    k_proj_weight: Tensor | None = None,
    v_proj_weight: Tensor | None = None,
    static_k: Tensor | None = None,
    static_v: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``torch.nn.functional.multi_head_attention_forward`` with every step's backward explicit:
    the input projections and the output projection run :func:`manual_bp.functional.linear`, the
    attention :class:`ScaledDotProductAttentionFunction`, the returned weights' dropout
    :class:`~manual_bp.ops.dropout.DropoutFunction` (the same mask the attention used).

    Same arguments, shapes (sequence first: ``(L, N, E)``, or unbatched ``(L, E)``), checks, mask
    handling and random draws as native. ``bias_k``/``bias_v`` are broadcast (``expand``, which
    moves numbers) where native repeats them.
    """
    is_batched = mha_shape_check(query, key, value, key_padding_mask, attn_mask, num_heads)
    if not is_batched:  # one sequence: a batch of one in dim 1
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    tgt_len, bsz, embed_dim = query.shape
    key_padding_mask = canonical_mask(
        mask=key_padding_mask,
        mask_name="key_padding_mask",
        other_type=None if attn_mask is None else attn_mask.dtype,
        other_name="attn_mask",
        target_type=query.dtype,
    )
    if is_causal and attn_mask is None:
        raise RuntimeError(
            "Need attn_mask if specifying the is_causal hint. You may use the Transformer module method "
            "`generate_square_subsequent_mask` to create this mask."
        )
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None  # the attention builds the causal mask itself
    else:
        attn_mask = canonical_mask(
            mask=attn_mask,
            mask_name="attn_mask",
            other_type=None,
            other_name="",
            target_type=query.dtype,
            check_other=False,
        )
        if key_padding_mask is not None:
            is_causal = False  # the hint is dropped: attn_mask holds the causal mask
    if embed_dim != embed_dim_to_check:
        raise AssertionError(
            f"was expecting embedding dimension of {embed_dim_to_check}, but got {embed_dim}"
        )
    head_dim = embed_dim // num_heads
    if head_dim * num_heads != embed_dim:
        raise AssertionError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
    if use_separate_proj_weight:
        if key.shape[:2] != value.shape[:2]:
            raise AssertionError(
                f"key's sequence and batch dims {key.shape[:2]} do not match value's {value.shape[:2]}"
            )
        if q_proj_weight is None or k_proj_weight is None or v_proj_weight is None:
            raise AssertionError("use_separate_proj_weight is True but q/k/v_proj_weight is None")
        b_q, b_k, b_v = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
        q, k, v = (
            linear(query, q_proj_weight, b_q),
            linear(key, k_proj_weight, b_k),
            linear(value, v_proj_weight, b_v),
        )
    else:
        if key.shape != value.shape:
            raise AssertionError(f"key shape {key.shape} does not match value shape {value.shape}")
        if in_proj_weight is None:
            raise AssertionError("use_separate_proj_weight is False but in_proj_weight is None")
        q, k, v = _in_projection_packed(query, key, value, in_proj_weight, in_proj_bias)
    src_len = key.shape[0]
    if attn_mask is not None:
        want = (tgt_len, src_len) if attn_mask.dim() == 2 else (bsz * num_heads, tgt_len, src_len)
        if attn_mask.shape != want:
            raise RuntimeError(
                f"The shape of the {attn_mask.dim()}D attn_mask is {attn_mask.shape}, but should be {want}."
            )
        if attn_mask.dim() == 2:
            attn_mask = attn_mask.unsqueeze(0)  # (L, S) -> (1, L, S): the same for every head
    if bias_k is not None and bias_v is not None:
        if static_k is not None or static_v is not None:
            raise AssertionError("bias cannot be added to static key or value.")
        k = torch.cat([k, bias_k.expand(1, bsz, embed_dim)])  # one more key: (S, N, E) -> (S + 1, N, E)
        v = torch.cat([v, bias_v.expand(1, bsz, embed_dim)])
        attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
        key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
    elif bias_k is not None or bias_v is not None:
        raise AssertionError("bias_k and bias_v must be both set or both None")
    # heads into the batch: (L, N, E) -> (N·H, L, E/H)
    q = q.view(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = static_k if static_k is not None else k.view(k.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    v = static_v if static_v is not None else v.view(v.shape[0], bsz * num_heads, head_dim).transpose(0, 1)
    if add_zero_attn:  # one more key and value, zeros: (N·H, S, E/H) -> (N·H, S + 1, E/H)
        zeros = torch.zeros((bsz * num_heads, 1, head_dim), dtype=k.dtype, device=k.device)
        k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros.to(v.dtype)], dim=1)
        attn_mask = F.pad(attn_mask, (0, 1)) if attn_mask is not None else None
        key_padding_mask = F.pad(key_padding_mask, (0, 1)) if key_padding_mask is not None else None
    src_len = k.size(1)
    if key_padding_mask is not None:
        if key_padding_mask.shape != (bsz, src_len):
            raise AssertionError(
                f"Expected key_padding_mask of shape {(bsz, src_len)} (batch, source length), "
                f"but got {tuple(key_padding_mask.shape)}"
            )
        # (N, S) -> (N·H, 1, S), added to attn_mask
        key_padding_mask = key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, num_heads, -1, -1)
        key_padding_mask = key_padding_mask.reshape(bsz * num_heads, 1, src_len)
        attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
    if not training:
        dropout_p = 0.0
    if is_causal and attn_mask is None:
        if need_weights:
            raise AssertionError("FIXME: is_causal not implemented for need_weights")
        attn_mask = _additive_mask(None, True, q, src_len)
    out, weights, dropout_mask = _attention(q, k, v, attn_mask, dropout_p, 1.0 / math.sqrt(head_dim))
    # heads back into the features: (N·H, L, E/H) -> (L·N, E), then out_proj
    out = out.transpose(0, 1).reshape(tgt_len * bsz, embed_dim)
    out = linear(out, out_proj_weight, out_proj_bias).view(tgt_len, bsz, -1)
    if not is_batched:
        out = out.squeeze(1)
    if not need_weights:
        return out, None
    if dropout_mask is not None:  # native returns the weights after dropout
        weights = DropoutFunction.apply(weights, dropout_mask)
    weights = weights.view(bsz, num_heads, tgt_len, src_len)
    if average_attn_weights:
        weights = weights.mean(dim=1)
    return out, (weights if is_batched else weights.squeeze(0))


def _canonical_masks(
    padding: Tensor | None, padding_name: str, mask: Tensor | None, mask_name: str, dtype: torch.dtype
) -> tuple[Tensor | None, Tensor | None]:
    """A key padding mask and an attention mask as torch's layers canonicalise them (bool masks to
    float ``-inf``/``0`` of ``dtype``, with torch's checks and messages), as their forwards do first."""
    padding = canonical_mask(
        mask=padding,
        mask_name=padding_name,
        other_type=None if mask is None else mask.dtype,
        other_name=mask_name,
        target_type=dtype,
    )
    mask = canonical_mask(
        mask=mask, mask_name=mask_name, other_type=None, other_name="", target_type=dtype, check_other=False
    )
    return padding, mask


class MultiheadAttention(nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention`` whose projections, attention and ``out_proj`` all run an
    explicit backward (:func:`multi_head_attention_forward`).

    Same constructor, parameters (``in_proj_weight`` or ``q/k/v_proj_weight``, ``in_proj_bias``,
    ``bias_k``, ``bias_v``, ``out_proj.*``) and ``state_dict`` as native; ``forward`` takes the same
    arguments and never the fused inference fast path (``torch._native_multi_head_attention``).

    >>> import torch, manual_bp
    >>> mha = manual_bp.MultiheadAttention(4, 2)
    >>> x = torch.randn(5, 3, 4)  # (L, N, E): sequence first, as native's default
    >>> out, weights = mha(x, x, x)
    >>> out.grad_fn.next_functions[0][0].name()  # out_proj, under the reshape back to (L, N, E)
    'LinearFunctionBackward'
    >>> weights.shape  # averaged over the heads: (N, L, S)
    torch.Size([3, 5, 5])
    """

    __module__ = "manual_bp.modules"

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        if query.is_nested or key.is_nested or value.is_nested:
            raise RuntimeError(
                "manual_bp.MultiheadAttention does not take nested tensors (native's fast path)"
            )
        key_padding_mask, attn_mask = _canonical_masks(
            key_padding_mask, "key_padding_mask", attn_mask, "attn_mask", query.dtype
        )
        is_batched = query.dim() == 3
        if self.batch_first and is_batched:  # (N, L, E) -> (L, N, E), keeping which inputs are one
            if key is value:
                if query is key:
                    query = key = value = query.transpose(1, 0)
                else:
                    query, key = (x.transpose(1, 0) for x in (query, key))
                    value = key
            else:
                query, key, value = (x.transpose(1, 0) for x in (query, key, value))
        separate = not self._qkv_same_embed_dim
        out, weights = multi_head_attention_forward(
            query,
            key,
            value,
            self.embed_dim,
            self.num_heads,
            self.in_proj_weight,
            self.in_proj_bias,
            self.bias_k,
            self.bias_v,
            self.add_zero_attn,
            self.dropout,
            self.out_proj.weight,
            self.out_proj.bias,
            training=self.training,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            use_separate_proj_weight=separate,
            q_proj_weight=self.q_proj_weight if separate else None,
            k_proj_weight=self.k_proj_weight if separate else None,
            v_proj_weight=self.v_proj_weight if separate else None,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )
        if self.batch_first and is_batched:
            out = out.transpose(1, 0)
        return out, weights


# ------------------------------------------------------------------------------------------------
# Transformer layers: torch's code without the fused fast path, activations made manual
# ------------------------------------------------------------------------------------------------


# torch activation function (F.relu, F.gelu, torch.tanh, ...) -> its manual function
_MANUAL_ACTIVATIONS: dict[Callable[..., Any], Callable[..., Tensor]] = {
    fn: op.function for op in ACTIVATION_OPS for fn in op.torch_functions
}


def _manual_activation(activation: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """The manual twin of an activation stored as a torch function (``F.relu``, ``F.gelu``,
    ``torch.tanh``, ...); a module or any other callable as it is (``convert`` swaps modules)."""
    try:
        return _MANUAL_ACTIVATIONS.get(activation, activation)
    except TypeError:  # unhashable
        return activation


class TransformerEncoderLayer(nn.TransformerEncoderLayer):
    """``torch.nn.TransformerEncoderLayer`` with every backward explicit: its attention is a
    :class:`MultiheadAttention` once converted, its activation the manual twin of ``self.activation``
    (``F.relu`` for ``activation="relu"`` stays the stored attribute; the manual ``relu`` runs).

    ``forward`` is torch's own code path for training, also in eval mode and without grad (never
    the fused ``torch._transformer_encoder_layer_fwd``), with the residual connections through the
    manual :func:`~manual_bp.ops.arithmetic.add`.

    >>> import torch, manual_bp
    >>> layer = manual_bp.convert(torch.nn.TransformerEncoderLayer(4, 2, 8, batch_first=True))
    >>> layer(torch.randn(3, 5, 4)).grad_fn.name()
    'LayerNormFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(
        self,
        src: Tensor,
        src_mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        src_key_padding_mask, src_mask = _canonical_masks(
            src_key_padding_mask, "src_key_padding_mask", src_mask, "src_mask", src.dtype
        )
        x = src
        if self.norm_first:  # the residual connections through the manual add
            x = add(x, self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal))
            x = add(x, self._ff_block(self.norm2(x)))
        else:
            x = self.norm1(add(x, self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal)))
            x = self.norm2(add(x, self._ff_block(x)))
        return x

    def _ff_block(self, x: Tensor) -> Tensor:
        x = self.linear2(self.dropout(_manual_activation(self.activation)(self.linear1(x))))
        return self.dropout2(x)


class TransformerDecoderLayer(nn.TransformerDecoderLayer):
    """``torch.nn.TransformerDecoderLayer`` with every backward explicit: its two attentions are
    :class:`MultiheadAttention` once converted, its activation the manual twin of
    ``self.activation`` (the stored attribute is left as it is), its residual connections the
    manual :func:`~manual_bp.ops.arithmetic.add`.

    >>> import torch, manual_bp
    >>> layer = manual_bp.convert(torch.nn.TransformerDecoderLayer(4, 2, 8, batch_first=True))
    >>> layer(torch.randn(3, 5, 4), torch.randn(3, 6, 4)).grad_fn.name()
    'LayerNormFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        tgt_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
        tgt_key_padding_mask: Tensor | None = None,
        memory_key_padding_mask: Tensor | None = None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
    ) -> Tensor:
        x = tgt
        if self.norm_first:  # torch's code, the residual connections through the manual add
            x = add(x, self._sa_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal))
            x = add(
                x,
                self._mha_block(
                    self.norm2(x), memory, memory_mask, memory_key_padding_mask, memory_is_causal
                ),
            )
            x = add(x, self._ff_block(self.norm3(x)))
        else:
            x = self.norm1(add(x, self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal)))
            x = self.norm2(
                add(x, self._mha_block(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal))
            )
            x = self.norm3(add(x, self._ff_block(x)))
        return x

    def _ff_block(self, x: Tensor) -> Tensor:
        x = self.linear2(self.dropout(_manual_activation(self.activation)(self.linear1(x))))
        return self.dropout3(x)


class TransformerEncoder(nn.TransformerEncoder):
    """``torch.nn.TransformerEncoder`` that never packs its input into a nested tensor for the fused
    inference path: its layers (converted: :class:`TransformerEncoderLayer`) always run their
    explicit backward code.

    >>> import torch, manual_bp
    >>> layer = torch.nn.TransformerEncoderLayer(4, 2, 8, batch_first=True)
    >>> encoder = manual_bp.convert(torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False))
    >>> encoder(torch.randn(3, 5, 4)).grad_fn.name()
    'LayerNormFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(
        self,
        src: Tensor,
        mask: Tensor | None = None,
        src_key_padding_mask: Tensor | None = None,
        is_causal: bool | None = None,
    ) -> Tensor:
        src_key_padding_mask, mask = _canonical_masks(
            src_key_padding_mask, "src_key_padding_mask", mask, "mask", src.dtype
        )
        seq_len = sequence_length(src, self.layers[0].self_attn.batch_first)
        is_causal = detect_is_causal_mask(mask, is_causal, seq_len)
        output = src
        for layer in self.layers:
            output = layer(
                output, src_mask=mask, is_causal=is_causal, src_key_padding_mask=src_key_padding_mask
            )
        if self.norm is not None:
            output = self.norm(output)
        return output


# ------------------------------------------------------------------------------------------------
# samples and registry entry
# ------------------------------------------------------------------------------------------------


def _samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def x(*shape: int) -> Tensor:
        return tensor(shape, dtype, device)

    def qkv(batch: tuple[int, ...], e_v: int = 2) -> tuple[Tensor, Tensor, Tensor]:
        return x(*batch, 3, 4), x(*batch, 5, 4), x(*batch, 5, e_v)  # L = 3, S = 5, E = 4

    masked = torch.rand(3, 5, device=device) > 0.3
    masked[:, 0], masked[1] = True, False  # every row attends somewhere, but row 1 attends nowhere
    return [
        Sample(qkv(()), label="unbatched (L, E)"),
        Sample(qkv((2,)), label="batch [2]"),
        Sample(qkv((1, 2)), {"attn_mask": masked}, label="heads, bool mask (L, S), a row fully masked"),
        Sample((*qkv((2,)), x(1, 3, 5)), label="float mask (1, L, S), differentiated"),
        Sample(qkv((2,)), {"is_causal": True}, label="is_causal (L < S)"),
        Sample(qkv((2,)), {"scale": 0.7}, label="scale=0.7"),
        Sample(
            (x(1, 4, 3, 4), x(1, 2, 5, 4), x(1, 1, 5, 3)),
            {"enable_gqa": True},
            label="enable_gqa 4:2:1 heads",
        ),
        # on CPU native's dropout is its math path's, drawn as here; not on CUDA (see _attention)
        *([Sample(qkv((2,)), {"dropout_p": 0.3}, label="dropout_p=0.3")] if device.type == "cpu" else []),
        Sample((x(2, 3, 4), x(1, 5, 4), x(1, 5, 2)), label="key and value broadcast over the batch"),
        Sample(
            (noncontiguous((2, 3, 4), dtype, device), noncontiguous((2, 5, 4), dtype, device), x(2, 5, 2)),
            label="non-contiguous",
        ),
        Sample(qkv((0,)), label="empty batch"),
    ]


ATTENTION_OPS: tuple[Op, ...] = (
    Op(
        "scaled_dot_product_attention",
        scaled_dot_product_attention,
        F.scaled_dot_product_attention,
        _samples,
        ScaledDotProductAttentionFunction,
        modules=(
            (nn.MultiheadAttention, MultiheadAttention),
            (nn.TransformerEncoderLayer, TransformerEncoderLayer),
            (nn.TransformerDecoderLayer, TransformerDecoderLayer),
            (nn.TransformerEncoder, TransformerEncoder),
        ),
        torch_functions=(F.scaled_dot_product_attention,),
        random=True,
        formula=(
            r"BP2: $\partial S = P \odot (\partial P - \sum_{\text{row}} \partial P \odot P)$ with "
            r"$\partial P = (\delta V^\top) \odot D$; $\partial Q = \text{scale}\,\partial S\, K$, "
            r"$\partial K = \text{scale}\,\partial S^\top Q$; $\partial V = (P \odot D)^\top \delta$"
        ),
    ),
)
