"""Numerics at the edges of each dtype, against native (issue 18): every activation's ``f′`` at
±max finite, ±1e4, ±700, tiny, 0 and ±inf, and at NaN; cross-entropy at huge logits; the engine's
frozen parameters and its ``lr`` argument."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from _distributed import free_port
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


def _frozen_first_layer() -> manual_bp.MLP:
    torch.manual_seed(0)
    net = manual_bp.MLP([3, 4, 2])
    net.layers[0].requires_grad_(False)
    return net


@pytest.mark.parametrize("loss", ["half_squared_error", "cross_entropy"])
def test_sgd_step_skips_frozen_parameters(loss: str) -> None:
    """Issue 18: sgd_step updated parameters with requires_grad=False; torch.optim skips them."""
    net = _frozen_first_layer()
    frozen = [p.clone() for p in net.layers[0].parameters()]
    trained = [p.clone() for p in net.layers[1].parameters()]
    x = torch.randn(5, 3)
    target = torch.rand(5, 2) if loss == "half_squared_error" else torch.tensor([0, 1, 1, 0, 1])
    sgd_step(net, x, target, lr=0.5, loss=loss)
    for before, after in zip(frozen, net.layers[0].parameters(), strict=True):
        assert torch.equal(before, after)
    for before, after in zip(trained, net.layers[1].parameters(), strict=True):
        assert not torch.equal(before, after)
    # the trained layer took the step torch.optim.SGD takes with the first layer frozen
    reference = _frozen_first_layer()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.5)
    out = reference(x)
    native_loss = (
        0.5 * ((out - target) ** 2).sum(-1).mean()
        if loss != "cross_entropy"
        else F.cross_entropy(out, target)
    )
    native_loss.backward()
    optimizer.step()
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)


def test_distributed_sgd_step_skips_frozen_parameters() -> None:
    """The same under torch.distributed (one gloo process in this one: the collective path)."""
    net = _frozen_first_layer()
    frozen = [p.clone() for p in net.layers[0].parameters()]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        sgd_step(net, torch.randn(5, 3), torch.rand(5, 2), lr=0.5)
    finally:
        dist.destroy_process_group()
    for before, after in zip(frozen, net.layers[0].parameters(), strict=True):
        assert torch.equal(before, after)


def test_sgd_epoch_skips_frozen_parameters() -> None:
    net = _frozen_first_layer()
    frozen = [p.clone() for p in net.layers[0].parameters()]
    manual_bp.engine.sgd_epoch(net, torch.randn(10, 3), torch.rand(10, 2), lr=0.5, batch_size=4)
    for before, after in zip(frozen, net.layers[0].parameters(), strict=True):
        assert torch.equal(before, after)


@pytest.mark.parametrize(
    "lr", [np.float32(0.1), np.float64(0.1), torch.tensor(0.1), torch.tensor(0.1).double()], ids=repr
)
def test_sgd_step_takes_numpy_and_tensor_learning_rates(lr: object) -> None:
    """Issue 18: a numpy.float32 lr was refused ("got float32"); torch.optim takes it, and 0-d tensors."""
    torch.manual_seed(0)
    net, reference = manual_bp.MLP([3, 2]), manual_bp.MLP([3, 2])
    reference.load_state_dict(net.state_dict())
    x, target = torch.randn(5, 3), torch.rand(5, 2)
    sgd_step(net, x, target, lr=lr)  # type: ignore[arg-type]
    sgd_step(reference, x, target, lr=float(lr))  # type: ignore[arg-type]
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_sgd_step_learning_rate_overflowing_the_dtype(dtype: torch.dtype) -> None:
    """Issue 18: lr=1e308 gave "value cannot be converted to type float without overflow"."""
    net = manual_bp.MLP([3, 2]).to(dtype)
    x, target = torch.randn(5, 3, dtype=dtype), torch.rand(5, 2, dtype=dtype)
    largest = re.escape(f"{torch.finfo(dtype).max:g}")
    with pytest.raises(
        ValueError, match=rf"^lr=1e\+308 overflows the parameters' {dtype}: .* lr ≤ {largest}"
    ):
        sgd_step(net, x, target, lr=1e308)
    with pytest.raises(ValueError, match=rf"^lr=1e\+308 overflows the parameters' {dtype}"):
        manual_bp.engine.sgd_epoch(net, x, target, lr=1e308, batch_size=2)


def test_sgd_step_learning_rate_of_a_wrong_type_says_what_is_expected() -> None:
    net = manual_bp.MLP([3, 2])
    expected = r"^lr must be a real number \(a float, an int, a NumPy scalar or a 0-d tensor\), got "
    with pytest.raises(TypeError, match=expected + r"a tensor of shape \(1,\) and dtype torch.float32$"):
        sgd_step(net, torch.randn(5, 3), torch.rand(5, 2), lr=torch.tensor([0.1]))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=expected + "str$"):
        sgd_step(net, torch.randn(5, 3), torch.rand(5, 2), lr="0.1")  # type: ignore[arg-type]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True], ids=["no weight", "weight"])
def test_cross_entropy_ignored_row_with_huge_logits_is_finite(reduction: str, weighted: bool) -> None:
    """Issue 18: with label smoothing, an ignored row whose logits are ±3e38 (log p = −inf) made
    the loss NaN (its smoothing term −Σ log p = inf times keep = 0); native masks the row: finite."""
    logits = torch.tensor([[3e38, -3e38, 0.0], [0.0, 1.0, 2.0], [-3e38, 3e38, 1.0]])
    target = torch.tensor([-100, 1, -100])
    weight = torch.tensor([1.0, 2.0, 3.0]) if weighted else None
    kwargs = {"weight": weight, "reduction": reduction, "label_smoothing": 0.1}
    manual = _grad_and_loss(MF.cross_entropy, logits, target, kwargs)
    native = _grad_and_loss(F.cross_entropy, logits, target, kwargs)
    assert torch.isfinite(manual[0]).all() and torch.isfinite(manual[1]).all()
    torch.testing.assert_close(manual, native)


def _grad_and_loss(function, logits: Tensor, target: Tensor, kwargs: dict) -> tuple[Tensor, Tensor]:  # type: ignore[no-untyped-def]
    z = logits.clone().requires_grad_()
    loss = function(z, target, **kwargs)
    loss.sum().backward()
    return loss.detach(), z.grad  # type: ignore[return-value]
