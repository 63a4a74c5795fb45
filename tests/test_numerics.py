"""Numerics at the edges of each dtype, against native (issue 18): every activation's ``f′`` at
±max finite, ±1e4, ±700, tiny, 0 and ±inf, and at NaN; cross-entropy at huge logits; the engine's
frozen parameters and its ``lr`` argument."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import manual_bp
import manual_bp.functional as MF
from manual_bp.engine import sgd_step
from manual_bp.ops.activations import ACTIVATIONS, Identity
from manual_bp.ops.elementwise import Elementwise

DTYPES = (torch.float16, torch.bfloat16, torch.float32)

#: (activation, x) where native's own gradient is NaN at a non-NaN input (an ``inf · 0`` in its
#: formula: GELU-tanh's ``x (1 − t²)(1 + 3cx²)``, softsign's ``inf/inf``): manual_bp gives the
#: limit of ``f′`` there instead, checked as such
LIMITS = {("gelu_tanh", math.inf): 1.0, ("gelu_tanh", -math.inf): 0.0}
LIMITS |= {("softsign", math.inf): 0.0, ("softsign", -math.inf): 0.0}


def _extremes(dtype: torch.dtype) -> Tensor:
    info = torch.finfo(dtype)
    values = [info.max, 1e4, 700.0, 100.0, 89.0, 30.0, 20.0, 17.5, info.tiny, info.tiny * info.eps]
    values = [v for magnitude in values for v in (magnitude, -magnitude)]
    return torch.tensor([*values, 0.0, -0.0, math.inf, -math.inf], dtype=torch.float64).to(dtype)


def _activations() -> list[Elementwise]:
    return [cls(**setting) for cls in ACTIVATIONS if cls is not Identity for setting in cls.settings]


def _grad(function, x: Tensor) -> Tensor:  # type: ignore[no-untyped-def]
    x = x.detach().clone().requires_grad_()
    function(x).backward(torch.ones_like(x))
    return x.grad  # type: ignore[return-value]


def _native(act: Elementwise, x: Tensor) -> Tensor:
    """Native's gradient through the torch function the activation stands for (``F.hardsigmoid``
    itself, not the float64-exact reference the registry compares with elsewhere)."""
    function = type(act).torch_functions[0]
    return _grad(lambda t: function(t, **act.params()), x)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", _activations(), ids=str)
def test_activation_gradient_at_extremes_matches_native(act: Elementwise, dtype: torch.dtype) -> None:
    """``g ⊙ f′`` at the dtype's extremes equals native's, up to 4 ulps (NaN where native's is NaN).

    Where native rounds in the dtype step by step (softsign is a composite ``x / (1 + |x|)``) the
    more exact value is accepted too: native's gradient in float64, rounded to the dtype.
    """
    x = _extremes(dtype)
    manual = _grad(act.manual, x)
    assert manual.dtype == dtype and manual.shape == x.shape
    native, exact = _native(act, x), _native(act, x.double()).to(dtype)
    for (name, at), limit in LIMITS.items():
        if name == act.name:
            native[x == at] = exact[x == at] = limit
    info = torch.finfo(dtype)
    tol = {"rtol": 4 * info.eps, "atol": info.tiny * info.eps * 2, "equal_nan": True}
    ok = torch.isclose(manual, native, **tol) | torch.isclose(manual, exact, **tol)
    bad = [(x[i].item(), manual[i].item(), native[i].item()) for i in (~ok).nonzero().flatten().tolist()]
    assert not bad, f"{act} {dtype}: (x, manual, native) {bad}"


@pytest.mark.parametrize("dtype", (torch.float16, torch.float32), ids=str)
def test_gelu_tanh_backward_finite_far_out(dtype: torch.dtype) -> None:
    """Issue 18: float16 gelu-tanh backward was NaN for |x| ≥ 700 (3cx² overflowed times 1 − t² = 0)."""
    x = torch.tensor([700.0, -700.0, 1e4, -1e4, torch.finfo(dtype).max, -torch.finfo(dtype).max], dtype=dtype)
    grad = _grad(lambda t: MF.gelu(t, approximate="tanh"), x)
    torch.testing.assert_close(grad, torch.tensor([1.0, 0.0] * 3, dtype=dtype), rtol=0, atol=0)


def _gelu_tanh_net(dtype: torch.dtype, fused: bool) -> manual_bp.MLP:
    torch.manual_seed(0)
    net = manual_bp.MLP([2, 3, 1], activation="gelu_tanh", fused=fused).to(dtype)
    with torch.no_grad():
        net.layers[0].weight.mul_(1000)  # pre-activations of ±700 and beyond
    return net


def test_gelu_tanh_float16_fused_loss_and_engine_finite() -> None:
    """Issue 18: the fused MLP.loss gave NaN layer-0 gradients, and sgd_step wrote NaN weights."""
    x = torch.tensor([[1.0, -1.0], [0.5, 2.0]], dtype=torch.float16)
    target = torch.zeros(2, 1, dtype=torch.float16)
    net, reference = _gelu_tanh_net(torch.float16, True), _gelu_tanh_net(torch.float16, False)
    net.loss(x, target).backward()
    reference.loss(x, target).backward()
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        assert p.grad is not None and torch.isfinite(p.grad).all()
        torch.testing.assert_close(p.grad, q.grad)
    stepped = _gelu_tanh_net(torch.float16, True)
    sgd_step(stepped, x, target, lr=1e-3)
    assert all(torch.isfinite(p).all() for p in stepped.parameters())


def test_elu_gradient_far_left_float32() -> None:
    """Issue 18: ELU's f′ was 0 for x < −17 in float32 (y + α rounds to 0); native gives α eˣ."""
    x = torch.tensor([-20.0, -50.0, -100.0])
    grad = _grad(MF.elu, x)
    assert (grad > 0).all()
    torch.testing.assert_close(grad, _grad(F.elu, x), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", _activations(), ids=str)
def test_activation_gradient_at_nan_matches_native(act: Elementwise, dtype: torch.dtype) -> None:
    """Issue 18: at NaN, relu's gradient was 0 where native's is 1, and hardswish's 1 where native's is NaN.

    Native's answer at NaN depends on the kernel path for elu, selu, hardtanh, relu6 and hardswish:
    its vectorised body gives NaN or 0 and its scalar tail (the last few elements, or a short
    tensor) gives 1. The reference is the vectorised body's, which nearly every element of a layer
    gets: 64 elements, all NaN.
    """
    x = torch.full((64,), math.nan, dtype=dtype)
    torch.testing.assert_close(_grad(act.manual, x), _native(act, x), rtol=0, atol=0, equal_nan=True)
