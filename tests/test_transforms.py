"""The manual layers under torch's transforms: autocast, torch.compile(fullgraph=True) and torch.func.

Autocast is tested on the CPU with bfloat16 (what this machine has). torch.compile tests are few and
small: compiling is slow.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from _samples import ACTIVATION_IDS, ACTIVATIONS, Activation, by_id, half_squared_error_native, sample
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

import manual_bp
import manual_bp.functional as MF

D_IN, D_OUT, C = 5, 3, 4
BF16 = torch.bfloat16


def _autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=BF16)


# ------------------------------------------------------------------------------------------------
# autocast: the same output dtype as the native layer, parameter gradients in the parameter dtype
# ------------------------------------------------------------------------------------------------

# Under bfloat16 autocast both sides compute in bfloat16 and, for the backward, round after each of
# the manual backward's few ops where the native kernel rounds once: allow 8 bfloat16 eps, relative
# and absolute (see test_modules.LOW_PRECISION_TOL for the measurement).
BF16_TOL = 8 * torch.finfo(BF16).eps


@pytest.mark.parametrize("input_dtype", [torch.float32, BF16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_autocast_linear(bias: bool, input_dtype: torch.dtype) -> None:
    ours = manual_bp.Linear(D_IN, D_OUT, bias=bias)
    theirs = nn.Linear(D_IN, D_OUT, bias=bias)
    theirs.load_state_dict(ours.state_dict())
    x = sample((2, 3, D_IN), dtype=input_dtype)
    results = []
    for layer in (ours, theirs):
        xi = x.detach().requires_grad_()
        with _autocast():
            out = layer(xi)
        out.float().square().sum().backward()
        results.append((out, xi.grad, [p.grad for p in layer.parameters()]))
    (out, gx, gp), (ref, rx, rp) = results
    assert out.dtype == ref.dtype == BF16
    assert gx.dtype == rx.dtype == input_dtype
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # the same bfloat16 matmul
    torch.testing.assert_close(gx, rx, rtol=BF16_TOL, atol=BF16_TOL)
    for p, g, r in zip(ours.parameters(), gp, rp, strict=True):
        assert g.dtype == r.dtype == p.dtype == torch.float32  # gradients back in the parameter dtype
        torch.testing.assert_close(g, r, rtol=BF16_TOL, atol=BF16_TOL)


@pytest.mark.parametrize("input_dtype", [torch.float32, BF16, torch.float64], ids=str)
@pytest.mark.parametrize("act", ACTIVATIONS, ids=ACTIVATION_IDS)
def test_autocast_activation(act: Activation, input_dtype: torch.dtype) -> None:
    x = sample((4, D_IN), dtype=input_dtype, away_from=act.away_from)
    results = []
    for f in (act.module(), act.native_module()):
        xi = x.detach().requires_grad_()
        with _autocast():
            out = f(xi)
        out.float().square().sum().backward()
        results.append((out, xi.grad))
    (out, gx), (ref, rx) = results
    assert out.dtype == ref.dtype and gx.dtype == rx.dtype == input_dtype
    tol = BF16_TOL if input_dtype == BF16 else None
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(gx, rx, rtol=tol, atol=tol)


LOSS_INPUT_DTYPES = [torch.float32, BF16, torch.float64]


@pytest.mark.parametrize("input_dtype", LOSS_INPUT_DTYPES, ids=str)
def test_autocast_half_squared_error(input_dtype: torch.dtype) -> None:
    """Under autocast it runs in float32 like mse_loss (float64 stays float64)."""
    x = sample((6, D_IN), dtype=input_dtype, requires_grad=True)
    t = sample((6, D_IN), dtype=input_dtype)
    with _autocast():
        out = MF.half_squared_error(x, t)
        native_dtype = F.mse_loss(x, t).dtype
    assert out.dtype == native_dtype
    (gx,) = torch.autograd.grad(out, x)
    assert gx.dtype == input_dtype
    ref = half_squared_error_native(x.to(native_dtype), t.to(native_dtype))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, torch.autograd.grad(ref, x)[0])


@pytest.mark.parametrize("input_dtype", LOSS_INPUT_DTYPES, ids=str)
@pytest.mark.parametrize("target_kind", ["indices", "probs"])
def test_autocast_cross_entropy(target_kind: str, input_dtype: torch.dtype) -> None:
    x = sample((6, C), dtype=input_dtype, requires_grad=True)
    if target_kind == "indices":
        target = torch.tensor([0, 1, 2, 3, 1, 0])
    else:
        target = torch.softmax(sample((6, C), dtype=torch.float32), -1).to(input_dtype)
    weight = sample((C,), low=0.5, high=1.5, dtype=input_dtype)
    with _autocast():
        out = MF.cross_entropy(x, target, weight)
        ref = F.cross_entropy(x, target, weight)
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out, ref)
    gx, rx = torch.autograd.grad(out, x)[0], torch.autograd.grad(ref, x)[0]
    assert gx.dtype == rx.dtype == input_dtype
    torch.testing.assert_close(gx, rx)


def test_autocast_model_parameter_grads_in_parameter_dtype() -> None:
    model = nn.Sequential(manual_bp.Linear(D_IN, 8), manual_bp.GELU(), manual_bp.Linear(8, C))
    x, y = sample((6, D_IN)), torch.tensor([0, 1, 2, 3, 1, 0])
    with _autocast():
        logits = model(x)
        assert logits.dtype == BF16
        loss = manual_bp.CrossEntropyLoss()(logits, y)
    assert loss.dtype == torch.float32
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True): the same gradients as eager mode
# ------------------------------------------------------------------------------------------------


def _small_model(hidden: str, output: str) -> nn.Module:
    return nn.Sequential(
        manual_bp.Linear(D_IN, 8), by_id(hidden).module(), manual_bp.Linear(8, C), by_id(output).module()
    )


COMPILE_CASES = {
    "tanh-sigmoid-hse": ("tanh", "sigmoid", "half_squared_error"),
    "gelu-leaky_relu-ce": ("gelu-tanh", "leaky_relu-0.2", "cross_entropy"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", COMPILE_CASES.values(), ids=COMPILE_CASES.keys())
def test_compile_fullgraph_same_gradients_as_eager(case: tuple[str, str, str]) -> None:
    hidden, output, loss_name = case
    model = _small_model(hidden, output)
    x = sample((6, D_IN))
    target = sample((6, C)) if loss_name == "half_squared_error" else torch.tensor([0, 1, 2, 3, 1, 0])
    loss_fn = getattr(MF, loss_name)

    def step(x: Tensor, target: Tensor) -> Tensor:
        return loss_fn(model(x), target)

    def grads(fn: Callable[[Tensor, Tensor], Tensor]) -> list[Tensor]:
        model.zero_grad()
        loss = fn(x, target)
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]

    torch._dynamo.reset()
    eager = grads(step)
    compiled = grads(torch.compile(step, fullgraph=True))
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------------------
# torch.func: vmap(grad(...)) gives per-sample gradients
# ------------------------------------------------------------------------------------------------

PER_SAMPLE_LOSSES = ["half_squared_error", "cross_entropy-indices", "cross_entropy-probs"]


def _per_sample_loss(model: nn.Module, loss: str) -> Callable[..., Tensor]:
    def f(params: dict[str, Tensor], x: Tensor, target: Tensor) -> Tensor:
        out = functional_call(model, params, (x,))
        if loss == "half_squared_error":
            return MF.half_squared_error(out, target)
        return MF.cross_entropy(out, target)

    return f


@pytest.mark.parametrize("loss", PER_SAMPLE_LOSSES)
@pytest.mark.parametrize("act_id", ["sigmoid", "relu", "elu-neg0.5", "softplus-2.0-1.0", "gelu", "silu"])
def test_vmap_grad_per_sample_gradients(act_id: str, loss: str) -> None:
    model = nn.Sequential(manual_bp.Linear(D_IN, 6), by_id(act_id).module(), manual_bp.Linear(6, C))
    native = nn.Sequential(nn.Linear(D_IN, 6), by_id(act_id).native_module(), nn.Linear(6, C))
    native.load_state_dict(model.state_dict())
    params = {k: v.detach() for k, v in model.named_parameters()}
    n = 5
    x = sample((n, D_IN))
    if loss == "cross_entropy-indices":
        target = torch.tensor([0, 3, 1, 2, 3])
    elif loss == "cross_entropy-probs":
        target = torch.softmax(sample((n, C)), -1)
    else:
        target = sample((n, C))
    f = _per_sample_loss(model, loss)
    per_sample = vmap(grad(f), in_dims=(None, 0, 0))(params, x, target)
    for i in range(n):  # each row equals the gradient of that sample alone
        alone = grad(f)(params, x[i], target[i])
        for k in params:
            assert per_sample[k].shape == (n, *params[k].shape)
            torch.testing.assert_close(per_sample[k][i], alone[k])

    def native_f(params: dict[str, Tensor], x: Tensor, target: Tensor) -> Tensor:
        out = functional_call(native, params, (x,))
        if loss == "half_squared_error":
            return half_squared_error_native(out, target)
        return F.cross_entropy(out, target)

    reference = vmap(grad(native_f), in_dims=(None, 0, 0))(params, x, target)
    for k in params:
        torch.testing.assert_close(per_sample[k], reference[k])


@pytest.mark.parametrize("act", ACTIVATIONS, ids=ACTIVATION_IDS)
def test_vmap_of_each_activation(act: Activation) -> None:
    x = sample((4, 3, D_IN), away_from=act.away_from)
    torch.testing.assert_close(vmap(act.manual)(x), act.native(x))
    per_row = vmap(grad(lambda r: act.manual(r).square().sum()))(x)
    torch.testing.assert_close(per_row, vmap(grad(lambda r: act.native(r).square().sum()))(x))


def test_vmap_of_linear_over_weights() -> None:
    """vmap over a stack of weights (an ensemble) as well as over inputs."""
    x = sample((6, D_IN))
    ws, bs = sample((3, D_OUT, D_IN)), sample((3, D_OUT))
    torch.testing.assert_close(
        vmap(MF.linear, in_dims=(None, 0, 0))(x, ws, bs), vmap(F.linear, in_dims=(None, 0, 0))(x, ws, bs)
    )
    g = vmap(grad(lambda w, b: MF.linear(x, w, b).square().sum(), argnums=(0, 1)))(ws, bs)
    r = vmap(grad(lambda w, b: F.linear(x, w, b).square().sum(), argnums=(0, 1)))(ws, bs)
    torch.testing.assert_close(g, r)


# ------------------------------------------------------------------------------------------------
# batched grad_outputs: autograd.grad(..., is_grads_batched=True) vmaps every backward
# ------------------------------------------------------------------------------------------------


def _batched_cases() -> dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]]:
    """Manual and native forms of each op as functions of one input ``(4, D_IN)``."""
    w = sample((D_OUT, D_IN))
    t = sample((4, D_IN))
    labels = torch.tensor([0, 1, 2, 0])
    cases: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
        "linear": (lambda x: MF.linear(x, w), lambda x: F.linear(x, w)),
        "half_squared_error": (
            lambda x: MF.half_squared_error(x, t, "none"),
            lambda x: half_squared_error_native(x, t, "none"),
        ),
        "cross_entropy": (
            lambda x: MF.cross_entropy(x, labels, reduction="none"),
            lambda x: F.cross_entropy(x, labels, reduction="none"),
        ),
        "mlp": (lambda x: MF.mlp(x, [w], activation="relu"), lambda x: torch.relu(F.linear(x, w))),
        "mlp_loss": (
            lambda x: MF.mlp_loss(x, t[:, :D_OUT], [w], activation="softplus", reduction="none"),
            lambda x: half_squared_error_native(F.softplus(F.linear(x, w)), t[:, :D_OUT], "none"),
        ),
    }
    for act in ACTIVATIONS:
        cases[act.id] = (act.manual, act.native)
    return cases


@pytest.mark.parametrize("op", list(_batched_cases()))
def test_batched_grad_outputs(op: str) -> None:
    """A backward that works in place on its temporaries must not do so on batched gradients."""
    manual, native = _batched_cases()[op]
    act = next((a for a in ACTIVATIONS if a.id == op), None)
    x = sample((4, D_IN), away_from=act.away_from if act else ()).requires_grad_(True)
    out = manual(x)
    vs = sample((3, *out.shape))
    (got,) = torch.autograd.grad(out, x, vs, is_grads_batched=True)
    (want,) = torch.autograd.grad(native(x), x, vs, is_grads_batched=True)
    torch.testing.assert_close(got, want)
