"""Attention: scaled_dot_product_attention's options and errors, MultiheadAttention against native for
each option, and whole Transformers converted (coverage, float64 gradients, exact revert, SGD).

What the generic op tests (tests/test_ops.py) do not cover. Every comparison is float64 to 1e-10.
Dropout runs in training mode: both twins reseed before each forward and draw the same numbers.
"""

from __future__ import annotations

import copy
import doctest
import itertools
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import manual_bp
import manual_bp.functional as MF
from manual_bp.convert import conversion_report
from manual_bp.ops.attention import ATTENTION_OPS, ScaledDotProductAttentionFunction

D = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-10}


def _x(*shape: int, grad: bool = True) -> Tensor:
    return torch.randn(*shape, dtype=D).requires_grad_(grad)


def _weighted(out: Tensor) -> Tensor:
    """A scalar whose gradient is a fixed, non-uniform δ for ``out``."""
    return (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum()


# --------------------------------------------------------------------------------------------
# scaled_dot_product_attention
# --------------------------------------------------------------------------------------------


def test_sdpa_dropout_draws_native_math_paths_numbers() -> None:
    """Seeded, the manual dropout drops the same weights as native's: the output and every gradient
    agree (a mask drawn differently would differ by O(1))."""
    q, k, v = _x(2, 3, 4, 5), _x(2, 3, 6, 5), _x(2, 3, 6, 4)
    results = []
    for fn in (MF.scaled_dot_product_attention, F.scaled_dot_product_attention):
        torch.manual_seed(7)
        out = fn(q, k, v, dropout_p=0.4)
        results.append([out, *torch.autograd.grad(_weighted(out), (q, k, v))])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, **TOL)
    torch.manual_seed(8)  # another seed, other draws
    assert not torch.allclose(MF.scaled_dot_product_attention(q, k, v, dropout_p=0.4), results[1][0])


def test_sdpa_dropout_one_and_zero() -> None:
    q, k, v = _x(2, 3, 4), _x(2, 5, 4), _x(2, 5, 3)
    assert torch.equal(MF.scaled_dot_product_attention(q, k, v, dropout_p=1.0), torch.zeros(2, 3, 3, dtype=D))
    torch.testing.assert_close(
        MF.scaled_dot_product_attention(q, k, v, dropout_p=0.0),
        F.scaled_dot_product_attention(q, k, v),
        **TOL,
    )


def test_sdpa_fully_masked_row_attends_to_nothing() -> None:
    """A query whose mask is False everywhere gets output 0 and gradient 0, as native."""
    q, k, v = _x(3, 4), _x(5, 4), _x(5, 2)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    out = MF.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    (grad_q,) = torch.autograd.grad(_weighted(out), q)
    assert torch.equal(out[1], torch.zeros(2, dtype=D)) and torch.equal(grad_q[1], torch.zeros(4, dtype=D))
    assert not out.isnan().any()


def test_sdpa_gqa_sums_key_and_value_gradients_over_each_group() -> None:
    """enable_gqa equals attention with key and value heads repeated, and their gradients are the
    repeated heads' gradients summed per group."""
    q, k, v = _x(2, 6, 3, 4), _x(2, 3, 5, 4), _x(2, 2, 5, 3)
    out = MF.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    grads = torch.autograd.grad(_weighted(out), (q, k, v))
    k_rep, v_rep = k.repeat_interleave(2, 1), v.repeat_interleave(3, 1)
    ref = MF.scaled_dot_product_attention(q, k_rep, v_rep)
    ref_grads = torch.autograd.grad(_weighted(ref), (q, k, v))
    for got, want in zip((out, *grads), (ref, *ref_grads), strict=True):
        torch.testing.assert_close(got, want, **TOL)


def test_sdpa_float_mask_gets_its_gradient_summed_over_broadcast_dims() -> None:
    q, k, v, mask = _x(2, 2, 3, 4), _x(2, 2, 5, 4), _x(2, 2, 5, 3), _x(3, 5)
    results = []
    for fn in (MF.scaled_dot_product_attention, F.scaled_dot_product_attention):
        out = fn(q, k, v, attn_mask=mask)
        results.append([out, *torch.autograd.grad(_weighted(out), (q, k, v, mask))])
    assert results[0][-1].shape == (3, 5)
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, **TOL)


def test_sdpa_returns_the_weights_for_multihead_attention_and_skips_unneeded_work() -> None:
    q, k, v = _x(2, 3, 4), _x(2, 5, 4), _x(2, 5, 3, grad=False)
    out, weights = ScaledDotProductAttentionFunction.apply(q, k, v, None, None, 0.5, 1, 1)
    torch.testing.assert_close(weights, torch.softmax(q @ k.transpose(-2, -1) * 0.5, -1), **TOL)
    grads = torch.autograd.grad(_weighted(out) + _weighted(weights), (q, k))
    ref = torch.softmax(q @ k.transpose(-2, -1) * 0.5, -1)
    ref_grads = torch.autograd.grad(_weighted(ref @ v) + _weighted(ref), (q, k))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, **TOL)


def _q() -> tuple[Tensor, Tensor, Tensor]:
    return _x(2, 3, 4), _x(2, 5, 4), _x(2, 5, 3)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: MF.scaled_dot_product_attention(_x(4), _x(4), _x(4)), RuntimeError, "at least 2-D"),
        (
            lambda: MF.scaled_dot_product_attention(_x(3, 4), _x(5, 3), _x(5, 3)),
            RuntimeError,
            "key's last dim",
        ),
        (
            lambda: MF.scaled_dot_product_attention(_x(3, 4), _x(5, 4), _x(6, 3)),
            RuntimeError,
            "value's length",
        ),
        (
            lambda: MF.scaled_dot_product_attention(_x(3, 4), _x(5, 4).float(), _x(5, 3)),
            TypeError,
            "same dtype",
        ),
        (
            lambda: MF.scaled_dot_product_attention(torch.ones(3, 4, dtype=torch.long), _x(5, 4), _x(5, 3)),
            TypeError,
            "floating-point",
        ),
        (
            lambda: MF.scaled_dot_product_attention(
                *_q(), attn_mask=torch.ones(3, 5, dtype=torch.bool), is_causal=True
            ),
            RuntimeError,
            "is_causal",
        ),
        (
            lambda: MF.scaled_dot_product_attention(*_q(), attn_mask=torch.ones(3, 4, dtype=torch.bool)),
            RuntimeError,
            "attn_mask to broadcast",
        ),
        (
            lambda: MF.scaled_dot_product_attention(
                *_q(), attn_mask=torch.ones(3, 2, 3, 5, dtype=torch.bool)
            ),
            RuntimeError,
            "attn_mask to broadcast",
        ),
        (
            lambda: MF.scaled_dot_product_attention(*_q(), attn_mask=torch.ones(3, 5, dtype=torch.long)),
            RuntimeError,
            "bool, float32",
        ),
        (
            lambda: MF.scaled_dot_product_attention(
                _x(1, 4, 3, 4), _x(1, 3, 5, 4), _x(1, 3, 5, 2), enable_gqa=True
            ),
            RuntimeError,
            "divide",
        ),
        (
            lambda: MF.scaled_dot_product_attention(_x(1, 4, 3, 4), _x(1, 2, 5, 4), _x(1, 2, 5, 2)),
            RuntimeError,
            "enable_gqa=True",
        ),
        (lambda: MF.scaled_dot_product_attention(*_q(), dropout_p=1.5), ValueError, "between 0 and 1"),
        (lambda: MF.scaled_dot_product_attention(*_q(), scale="big"), TypeError, "scale must be a number"),
    ],
    ids=[
        "1-d",
        "E mismatch",
        "S mismatch",
        "dtypes",
        "integer",
        "causal and mask",
        "mask shape",
        "mask bigger than scores",
        "mask dtype",
        "gqa not divisible",
        "heads without gqa",
        "dropout_p",
        "scale",
    ],
)
def test_sdpa_errors(call: Callable[[], Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


# --------------------------------------------------------------------------------------------
# MultiheadAttention
# --------------------------------------------------------------------------------------------

E, H, L, S, N = 4, 2, 3, 5, 2


def _mha_case(
    batch_first: bool = False,
    kdim: int | None = None,
    bias: bool = True,
    add_bias_kv: bool = False,
    add_zero_attn: bool = False,
    dropout: float = 0.0,
    self_attention: bool = False,
    unbatched: bool = False,
) -> tuple[nn.MultiheadAttention, tuple[Tensor, ...]]:
    torch.manual_seed(0)
    native = nn.MultiheadAttention(
        E,
        H,
        dropout=dropout,
        bias=bias,
        add_bias_kv=add_bias_kv,
        add_zero_attn=add_zero_attn,
        kdim=kdim,
        vdim=kdim,
        batch_first=batch_first,
        dtype=D,
    )
    s = L if self_attention else S

    def seq(length: int, dim: int) -> Tensor:
        if unbatched:
            return _x(length, dim, grad=False)
        return _x(N, length, dim, grad=False) if batch_first else _x(length, N, dim, grad=False)

    q = seq(L, E)
    if self_attention:
        return native, (q, q, q)
    return native, (q, seq(s, kdim or E), seq(s, kdim or E))


def _mha_run(module: nn.Module, inputs: tuple[Tensor, ...], **kwargs: Any) -> list[Tensor | None]:
    """Output, weights, then the gradient of every distinct input and of every parameter."""
    module.zero_grad()
    distinct = list({id(t): t.detach().clone().requires_grad_() for t in inputs}.values())
    by_id = {id(t): d for t, d in zip(dict.fromkeys(inputs), distinct, strict=True)}
    args = [by_id[id(t)] for t in inputs]
    torch.manual_seed(5)
    out, weights = module(*args, **kwargs)
    loss = _weighted(out) + (_weighted(weights) if weights is not None else 0)
    loss.backward()
    return [out, weights, *(d.grad for d in distinct), *(p.grad for p in module.parameters())]


def _assert_mha_like_native(native: nn.MultiheadAttention, inputs: tuple[Tensor, ...], **kwargs: Any) -> None:
    ours = manual_bp.convert(native)
    assert type(ours) is manual_bp.MultiheadAttention
    for training in (True, False):
        native.train(training), ours.train(training)
        want, got = _mha_run(native, inputs, **kwargs), _mha_run(ours, inputs, **kwargs)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert (g is None) == (w is None)
            if g is not None:
                torch.testing.assert_close(g, w, **TOL, equal_nan=True)


MHA_OPTIONS = {
    "default": {},
    "batch_first": {"batch_first": True},
    "kdim/vdim (separate projections)": {"kdim": 6},
    "no bias": {"bias": False},
    "add_bias_kv": {"add_bias_kv": True},
    "add_zero_attn": {"add_zero_attn": True},
    "dropout": {"dropout": 0.3},
    "self-attention": {"self_attention": True},
    "unbatched": {"unbatched": True},
    "everything": {
        "kdim": 6,
        "add_bias_kv": True,
        "add_zero_attn": True,
        "dropout": 0.3,
        "batch_first": True,
    },
}


@pytest.mark.parametrize("need_weights", [True, False], ids=["need_weights", "no weights"])
@pytest.mark.parametrize("options", MHA_OPTIONS.values(), ids=MHA_OPTIONS.keys())
def test_multihead_attention_like_native(options: dict[str, Any], need_weights: bool) -> None:
    native, inputs = _mha_case(**options)
    _assert_mha_like_native(native, inputs, need_weights=need_weights)


def _masks(unbatched: bool, kind: str, mask_dtype: str) -> dict[str, Tensor]:
    torch.manual_seed(1)
    s = S
    pad = torch.rand((s,) if unbatched else (N, s)) > 0.5
    pad[..., 0] = False  # every query attends somewhere
    attn = torch.rand(L, s) > 0.6
    attn[:, 0] = False

    def as_float(m: Tensor) -> Tensor:
        return torch.zeros(m.shape, dtype=D).masked_fill(m, float("-inf"))

    out: dict[str, Tensor] = {}
    if "padding" in kind:
        out["key_padding_mask"] = pad if mask_dtype == "bool" else as_float(pad)
    if "2-D" in kind:
        out["attn_mask"] = attn if mask_dtype == "bool" else as_float(attn)
    if "3-D" in kind:
        out["attn_mask"] = torch.randn(H if unbatched else N * H, L, s, dtype=D)
        if "key_padding_mask" in out:
            out["key_padding_mask"] = as_float(pad)  # torch warns on mixed mask types
    return out


@pytest.mark.parametrize("average", [True, False], ids=["averaged", "per head"])
@pytest.mark.parametrize("unbatched", [False, True], ids=["batched", "unbatched"])
@pytest.mark.parametrize("mask_dtype", ["bool", "float"])
@pytest.mark.parametrize("kind", ["padding", "2-D", "3-D", "padding + 2-D", "padding + 3-D"])
def test_multihead_attention_masks_like_native(
    kind: str, mask_dtype: str, unbatched: bool, average: bool
) -> None:
    native, inputs = _mha_case(unbatched=unbatched, dropout=0.2)
    _assert_mha_like_native(
        native, inputs, average_attn_weights=average, **_masks(unbatched, kind, mask_dtype)
    )


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("padding", [False, True])
def test_multihead_attention_is_causal_like_native(need_weights: bool, padding: bool) -> None:
    native, inputs = _mha_case(self_attention=True, batch_first=True)
    mask = nn.Transformer.generate_square_subsequent_mask(L, dtype=D)
    kwargs: dict[str, Any] = {"attn_mask": mask, "is_causal": True, "need_weights": need_weights}
    if padding:
        kwargs["key_padding_mask"] = torch.tensor([[False, False, True], [False, False, False]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: mismatched mask types are deprecated
        _assert_mha_like_native(native, inputs, **kwargs)


def test_multihead_attention_is_a_drop_in_with_the_same_state_dict() -> None:
    for kwargs in ({}, {"kdim": 6, "vdim": 3, "add_bias_kv": True}, {"bias": False}):
        torch.manual_seed(0)
        ours = manual_bp.MultiheadAttention(E, H, **kwargs)
        torch.manual_seed(0)
        theirs = nn.MultiheadAttention(E, H, **kwargs)
        assert repr(ours) == repr(theirs) and list(ours.state_dict()) == list(theirs.state_dict())
        for (name, p), (_, t) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert torch.equal(p, t), name
        theirs.load_state_dict(ours.state_dict())
    assert isinstance(ours, nn.MultiheadAttention)


def test_multihead_attention_every_parameter_gets_an_explicit_gradient() -> None:
    for options in ({}, {"kdim": 6}, {"self_attention": True}):
        native, inputs = _mha_case(batch_first=True, **options)
        cov = manual_bp.coverage(manual_bp.convert(native), *inputs, need_weights=False)
        assert cov.parameter_share == 1.0, cov


def test_multihead_attention_errors_as_native() -> None:
    ours = manual_bp.MultiheadAttention(E, H, dtype=D)
    q = _x(L, N, E)
    with pytest.raises(AssertionError, match="key_padding_mask"):
        ours(q, q, q, key_padding_mask=torch.zeros(N, S + 1, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="attn_mask is"):
        ours(q, q, q, attn_mask=torch.zeros(L, L + 1, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        ours(q, q, q, is_causal=True)
    with pytest.raises(AssertionError, match="query should be unbatched 2D or batched 3D"):
        ours(_x(1, L, N, E), q, q)
    with pytest.raises(AssertionError, match="was expecting embedding dimension"):
        ours(_x(L, N, E + 1), q, q)


# --------------------------------------------------------------------------------------------
# Transformers: converted whole
# --------------------------------------------------------------------------------------------

ACTIVATIONS: dict[str, Callable[[], Any]] = {
    "relu string": lambda: "relu",
    "gelu string": lambda: "gelu",
    "GELU module": lambda: nn.GELU(),
    "silu function": lambda: F.silu,
}


def _transformer(activation: Any, norm_first: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Transformer(
        8, 2, 2, 2, 16, dropout=0.1, activation=activation, norm_first=norm_first, batch_first=True, dtype=D
    )


def _transformer_inputs() -> tuple[tuple[Tensor, ...], dict[str, Any]]:
    torch.manual_seed(1)
    src, tgt = _x(2, 5, 8, grad=False), _x(2, 4, 8, grad=False)
    kwargs = {
        "tgt_mask": nn.Transformer.generate_square_subsequent_mask(4, dtype=D),
        "tgt_is_causal": True,
        "src_key_padding_mask": torch.tensor([[False] * 5, [False] * 3 + [True] * 2]),
        "memory_key_padding_mask": torch.tensor([[False] * 5, [False] * 3 + [True] * 2]),
    }
    return (src, tgt), kwargs


class CausalDecoder(nn.Module):
    """A GPT-style stack from torch.nn pieces: token and position embeddings (as GPT-2's ``wte`` and
    ``wpe``), causal encoder layers with key padding, a final norm and a head."""

    def __init__(self, vocab: int = 11, d: int = 8, layers: int = 2, norm_first: bool = True) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(6, d)
        layer = nn.TransformerEncoderLayer(d, 2, 16, dropout=0.1, batch_first=True, norm_first=norm_first)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: Tensor, padding: Tensor) -> Tensor:
        x = self.embed(tokens) + self.pos(torch.arange(tokens.shape[1]))
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1], dtype=x.dtype)
        return self.head(self.norm(self.blocks(x, mask=mask, src_key_padding_mask=padding, is_causal=True)))


def _decoder_inputs() -> tuple[tuple[Tensor, ...], dict[str, Any]]:
    torch.manual_seed(2)
    tokens = torch.randint(0, 11, (3, 6))
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[1, 4:], padding[2, 5:] = True, True
    return (tokens, padding), {}


def _decoder(norm_first: bool) -> nn.Module:
    torch.manual_seed(0)
    return CausalDecoder(norm_first=norm_first).to(D)


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[tuple[Tensor, ...], dict[str, Any]]]]] = {
    **{
        f"transformer, {name}, norm_first={nf}": (
            lambda a=act, nf=nf: _transformer(a(), nf),  # type: ignore[misc]
            _transformer_inputs,
        )
        for (name, act), nf in itertools.product(ACTIVATIONS.items(), (False, True))
    },
    "causal decoder, post-norm": (lambda: _decoder(False), _decoder_inputs),
    "causal decoder, pre-norm": (lambda: _decoder(True), _decoder_inputs),
}


def _loss(out: Tensor) -> Tensor:
    return _weighted(out)


def _grads(model: nn.Module, args: tuple[Tensor, ...], kwargs: dict[str, Any]) -> list[Tensor]:
    model.zero_grad()
    torch.manual_seed(3)  # the same dropout draws for both twins
    out = model(*args, **kwargs)
    _loss(out).backward()
    return [out.detach()] + [p.grad for p in model.parameters()]  # type: ignore[misc]


@pytest.mark.parametrize("name", MODELS)
def test_transformer_converts_completely_with_native_gradients(name: str) -> None:
    make, inputs = MODELS[name]
    native = make()
    args, kwargs = inputs()
    ours = manual_bp.convert(native)
    report = conversion_report(ours)
    assert report.native == [] and report.functions == [] and report.parameter_share == 1.0
    torch.manual_seed(3)
    cov = manual_bp.coverage(ours, *args, loss_fn=_loss, **kwargs)
    assert cov.parameter_share >= 0.99, cov
    assert cov.parameter_share == 1.0  # measured: every parameter element
    # native nodes left: the test's loss (a weighted sum) and the decoder's own embedding sum
    assert {n.name for n in cov.native} <= {"MulBackward0", "SumBackward0", "AddBackward0"}
    for got, want in zip(_grads(ours, args, kwargs), _grads(native, args, kwargs), strict=True):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("name", ["transformer, gelu string, norm_first=False", "causal decoder, pre-norm"])
def test_transformer_revert_is_bit_exact(name: str) -> None:
    make, inputs = MODELS[name]
    native = make()
    args, kwargs = inputs()
    classes = [type(m) for m in native.modules()]
    activations = [getattr(m, "activation", None) for m in native.modules()]
    back = manual_bp.revert(manual_bp.convert(native))
    assert [type(m) for m in back.modules()] == classes
    assert [getattr(m, "activation", None) for m in back.modules()] == activations
    assert list(back.state_dict()) == list(native.state_dict())
    for (k, a), b in zip(back.state_dict().items(), native.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    for got, want in zip(_grads(back, args, kwargs), _grads(native, args, kwargs), strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["transformer, relu string, norm_first=True", "causal decoder, post-norm"])
def test_transformer_sgd_follows_native(name: str) -> None:
    make, inputs = MODELS[name]
    native = make()
    args, kwargs = inputs()
    ours = manual_bp.convert(native)
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (ours, native)]
    for step in range(5):
        for model, opt in zip((ours, native), opts, strict=True):
            opt.zero_grad()
            torch.manual_seed(10 + step)
            _loss(model(*args, **kwargs)).backward()
            opt.step()
        for (n, p), q in zip(ours.named_parameters(), native.parameters(), strict=True):
            torch.testing.assert_close(p, q, **TOL, msg=lambda m, n=n, s=step: f"step {s}, {n}: {m}")


def test_encoder_never_takes_the_fused_fast_path() -> None:
    """In eval mode without grad, torch's encoder packs a padded batch into a nested tensor and runs
    ``torch._transformer_encoder_layer_fwd``; the converted one runs its manual layers (the same
    numbers at the positions that are not padding)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, dtype=D)
    native = nn.TransformerEncoder(layer, 2).eval()
    ours = manual_bp.convert(native)
    x = _x(2, 5, 8, grad=False)
    padding = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    calls: list[str] = []
    fused = torch._transformer_encoder_layer_fwd

    def spy(*args: Any, **kwargs: Any) -> Tensor:
        calls.append("fused")
        return fused(*args, **kwargs)

    torch._transformer_encoder_layer_fwd = spy  # type: ignore[assignment]
    try:
        with torch.no_grad():
            want = native(x, src_key_padding_mask=padding)
            assert calls, "the native encoder should take its fast path here"
            calls.clear()
            got = ours(x, src_key_padding_mask=padding)
            got_layer = ours.layers[0](x)
    finally:
        torch._transformer_encoder_layer_fwd = fused  # type: ignore[assignment]
    assert calls == [] and not got.is_nested and got_layer.shape == x.shape
    torch.testing.assert_close(got[~padding], want[~padding], **TOL)
    with torch.enable_grad():
        assert ours(x.requires_grad_()).grad_fn.name() == "LayerNormFunctionBackward"


def test_converted_layers_keep_their_activation_attribute() -> None:
    layer = nn.TransformerDecoderLayer(8, 2, 16, activation="gelu")
    ours = manual_bp.convert(layer)
    assert ours.activation is F.gelu and type(ours) is manual_bp.TransformerDecoderLayer
    assert type(ours.self_attn) is manual_bp.MultiheadAttention
    assert type(ours.multihead_attn) is manual_bp.MultiheadAttention
    assert type(manual_bp.revert(ours)) is nn.TransformerDecoderLayer
    pickled = copy.deepcopy(ours)
    assert pickled.activation is F.gelu


@pytest.mark.parametrize("cls", [m for _, m in ATTENTION_OPS[0].modules], ids=lambda c: c.__name__)
def test_module_doctests(cls: type[nn.Module]) -> None:
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    tests = finder.find(cls, cls.__name__, globs={})
    assert tests and all(runner.run(t).failed == 0 for t in tests)
