"""The drop-in modules: torch.nn's constructor arguments, parameter names, state_dict keys and repr,
the same outputs and gradients as the native layers in every supported dtype, double backward."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch
from _samples import (
    ACTIVATION_IDS,
    ACTIVATIONS,
    Activation,
    half_squared_error_native,
    sample,
    saved_storage_bytes,
)
from torch import Tensor, nn
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call

import manual_bp
import manual_bp.functional as MF
from manual_bp.ops import MODULE_TWINS

D_IN, D_OUT, C = 5, 3, 4

# modules with a native twin of the same name in torch.nn: every one of the op registry
TWINS = sorted(cls.__name__ for cls in MODULE_TWINS.values())


def test_every_module_is_exported() -> None:
    for name in TWINS + ["HalfSquaredError"]:
        assert name in manual_bp.__all__
        assert issubclass(getattr(manual_bp, name), nn.Module)
        assert getattr(manual_bp, name).__module__ == "manual_bp.modules"


@pytest.mark.parametrize("name", TWINS)
def test_constructor_signature_matches_native(name: str) -> None:
    ours = inspect.signature(getattr(manual_bp, name).__init__).parameters
    theirs = inspect.signature(getattr(nn, name).__init__).parameters
    assert list(ours) == list(theirs)
    assert [p.default for p in ours.values()] == [p.default for p in theirs.values()]
    assert issubclass(getattr(manual_bp, name), getattr(nn, name))


MODULE_CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module]]] = {
    "Linear": (lambda: manual_bp.Linear(D_IN, D_OUT), lambda: nn.Linear(D_IN, D_OUT)),
    "Linear-nobias": (
        lambda: manual_bp.Linear(D_IN, D_OUT, bias=False),
        lambda: nn.Linear(D_IN, D_OUT, bias=False),
    ),
    **{a.id: (a.module, a.native_module) for a in ACTIVATIONS},
    "CrossEntropyLoss-weight": (
        lambda: manual_bp.CrossEntropyLoss(weight=torch.rand(C), ignore_index=1, reduction="sum"),
        lambda: nn.CrossEntropyLoss(weight=torch.rand(C), ignore_index=1, reduction="sum"),
    ),
}


@pytest.mark.parametrize("case", MODULE_CASES.values(), ids=MODULE_CASES.keys())
def test_names_state_dict_and_repr_match_native(case: tuple[Callable[[], nn.Module], ...]) -> None:
    ours, theirs = case[0](), case[1]()
    assert repr(ours) == repr(theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert p.shape == q.shape and p.dtype == q.dtype and p.requires_grad == q.requires_grad
    # each loads the other's state_dict, strictly, and then holds the same values
    ours.load_state_dict(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=0, atol=0)
    fresh = case[1]()
    fresh.load_state_dict(case[0]().state_dict())


def test_linear_initialisation_matches_native() -> None:
    """Same seed, same initial weights: the manual Linear initialises exactly as torch.nn.Linear."""
    torch.manual_seed(1)
    ours = manual_bp.Linear(D_IN, D_OUT, dtype=torch.float64)
    torch.manual_seed(1)
    theirs = nn.Linear(D_IN, D_OUT, dtype=torch.float64)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def _twins(case: tuple[Callable[[], nn.Module], ...], dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    ours = case[0]().to(dtype)
    theirs = case[1]().to(dtype)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def _run(module: nn.Module, x: Tensor, grad_output: Tensor) -> list[Tensor]:
    """The output, then the gradient of the input and of every parameter."""
    x = x.detach().requires_grad_()
    module.zero_grad()
    out = module(x)
    out.backward(grad_output)
    return [out, x.grad] + [p.grad for p in module.parameters()]  # type: ignore[list-item]


ELEMENTWISE_CASES = {k: v for k, v in MODULE_CASES.items() if not k.startswith("CrossEntropy")}


def _away_from(case_id: str) -> tuple[float, ...]:
    return next((a.away_from for a in ACTIVATIONS if a.id == case_id), ())


@pytest.mark.parametrize("case_id", ELEMENTWISE_CASES)
def test_module_matches_native(case_id: str) -> None:
    ours, theirs = _twins(MODULE_CASES[case_id], torch.float32)
    x = sample((2, 3, D_IN), away_from=_away_from(case_id))
    out = ours(x.requires_grad_())
    assert type(out.grad_fn).__name__.endswith("FunctionBackward")
    grad_output = sample(out.shape, layout="strided")
    for got, want in zip(_run(ours, x, grad_output), _run(theirs, x, grad_output), strict=True):
        torch.testing.assert_close(got, want)


# Low precision: the forward is the same native kernel in both (equal results), but a manual backward
# is a few elementwise torch ops, each rounding to the dtype, where the native backward is one fused
# kernel that computes in float32 and rounds once. Results may so differ by a few units in the last
# place, and by as much in absolute terms where f′ sums terms of opposite sign (GELU, SiLU near their
# minimum). Measured over 20 seeds: at most 3.1 eps·(1 + |native|) (GELU's tanh form in float16, about
# ten rounded ops), at most 1 eps for every other op. Allowed: 8 eps of the dtype, relative and
# absolute. float32 and float64 use assert_close's defaults.
LOW_PRECISION_TOL = {
    torch.float16: 8 * torch.finfo(torch.float16).eps,
    torch.bfloat16: 8 * torch.finfo(torch.bfloat16).eps,
}
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case_id", ELEMENTWISE_CASES)
def test_module_dtypes(case_id: str, dtype: torch.dtype) -> None:
    ours, theirs = _twins(MODULE_CASES[case_id], dtype)
    x = sample((4, D_IN), dtype=dtype, away_from=_away_from(case_id))
    grad_output = sample((4, D_OUT if case_id.startswith("Linear") else D_IN), dtype=dtype)
    tol = LOW_PRECISION_TOL.get(dtype)
    for got, want in zip(_run(ours, x, grad_output), _run(theirs, x, grad_output), strict=True):
        assert got.dtype == want.dtype == dtype
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_half_squared_error_module(reduction: str, dtype: torch.dtype) -> None:
    loss = manual_bp.HalfSquaredError(reduction=reduction)
    assert loss.reduction == reduction and list(loss.state_dict()) == []
    x, t = (
        sample((6, D_IN), dtype=dtype, requires_grad=True),
        sample((6, D_IN), dtype=dtype, requires_grad=True),
    )
    out, ref = loss(x, t), half_squared_error_native(x, t, reduction)
    assert type(out.grad_fn) is MF.HalfSquaredErrorFunction._backward_cls
    g = sample(out.shape, dtype=dtype)
    got = torch.autograd.grad(out, [x, t], g)
    want = torch.autograd.grad(ref, [x, t], g)
    tol = LOW_PRECISION_TOL.get(dtype)  # the sums over features round differently in low precision
    for a, b in zip([out, *got], [ref, *want], strict=True):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("target_kind", ["indices", "probs"])
def test_cross_entropy_module(target_kind: str, weighted: bool, reduction: str, dtype: torch.dtype) -> None:
    weight = sample((C,), low=0.1, high=2.0, dtype=dtype) if weighted else None
    ignore_index = 2 if target_kind == "indices" else -100  # torch refuses it with probabilities
    ours = manual_bp.CrossEntropyLoss(weight=weight, ignore_index=ignore_index, reduction=reduction)
    theirs = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index, reduction=reduction)
    x = sample((7, C), dtype=dtype, requires_grad=True)
    if target_kind == "indices":
        target = torch.tensor([0, 2, 1, 3, 2, 0, 1])
    else:
        target = torch.softmax(sample((7, C)), -1).to(dtype)
    out, ref = ours(x, target), theirs(x, target)
    assert type(out.grad_fn) is MF.CrossEntropyFunction._backward_cls
    assert out.dtype == ref.dtype == dtype
    tol = LOW_PRECISION_TOL.get(dtype)  # softmax and its sums round differently in low precision
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    g = sample(out.shape, dtype=dtype)
    got, want = torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_inplace_flag_is_accepted_and_computes_out_of_place() -> None:
    for ours, theirs in [
        (manual_bp.ReLU(inplace=True), nn.ReLU()),
        (manual_bp.LeakyReLU(0.1, inplace=True), nn.LeakyReLU(0.1)),
        (manual_bp.ELU(inplace=True), nn.ELU()),
        (manual_bp.SiLU(inplace=True), nn.SiLU()),
    ]:
        x = sample((3, D_IN), away_from=(0.0,))
        before = x.clone()
        torch.testing.assert_close(ours(x), theirs(x))
        torch.testing.assert_close(x, before, rtol=0, atol=0)


def test_identity_passes_through() -> None:
    x = sample((3, D_IN), requires_grad=True)
    assert manual_bp.Identity(54, unused="ok")(x) is x


@pytest.mark.parametrize("act", ACTIVATIONS, ids=ACTIVATION_IDS)
def test_double_backward_through_modules(act: Activation) -> None:
    """gradgradcheck through a small model of modules, with its parameters as inputs (float64)."""
    model = nn.Sequential(manual_bp.Linear(D_IN, 4), act.module(), manual_bp.Linear(4, 2)).double()
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().requires_grad_() for p in model.parameters()]
    # inputs away from the kinks after the first layer are hard to arrange; keep the first layer's
    # outputs off 0 (and 0.5 for softplus' switch) by a large bias shift, checked below
    x = sample((3, D_IN), dtype=torch.float64, low=-0.5, high=0.5, requires_grad=True)
    with torch.no_grad():
        params[1].copy_(torch.tensor([-2.0, -1.5, 1.5, 2.0]))  # first layer's bias
        params[0].mul_(0.5)
        hidden = x @ params[0].T + params[1]
    for p in act.away_from:
        assert (hidden - p).abs().min() > 0.1

    def f(x: Tensor, *ps: Tensor) -> Tensor:
        return functional_call(model, dict(zip(names, ps, strict=True)), (x,))

    assert gradcheck(f, (x, *params), fast_mode=True)
    assert gradgradcheck(f, (x, *params), fast_mode=True)


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("grads", ["input-weight-bias", "weight-bias", "input-bias", "bias"], ids=lambda g: g)
def test_linear_keeps_what_native_keeps(grads: str, autocast: bool) -> None:
    """``W`` is kept only for ``∂c/∂x``, ``x`` only for ``∂c/∂W``, as native autograd keeps them:
    under autocast both are casts (new memory), so the manual layer saves at most what
    ``nn.Linear`` saves; the gradients equal native's, also when only the bias needs one and the
    input has leading dims."""
    torch.manual_seed(31)
    native = nn.Linear(6, 4)
    layer = manual_bp.Linear(6, 4)
    layer.load_state_dict(native.state_dict())
    for lin in (native, layer):
        lin.weight.requires_grad_("weight" in grads)
    x = torch.randn(2, 3, 6, requires_grad="input" in grads)
    x_native = x.detach().clone().requires_grad_(x.requires_grad)
    held = [*native.parameters(), *layer.parameters(), x, x_native]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        mine = saved_storage_bytes(lambda: layer(x), held)
        theirs = saved_storage_bytes(lambda: native(x_native), held)
        out, want = layer(x), native(x_native)
    assert mine <= theirs
    grad_out = torch.randn_like(want)
    out.backward(grad_out)
    want.backward(grad_out)
    tol = 8 * torch.finfo(torch.bfloat16).eps if autocast else None  # as the other autocast tests
    for a, b in ((layer.bias, native.bias), (layer.weight, native.weight), (x, x_native)):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("grads", ["weight-bias", "input-bias", "bias"], ids=lambda g: g)
def test_linear_gradcheck_with_parts_that_need_no_gradient(grads: str) -> None:
    """gradcheck and gradgradcheck in float64 when only some of x, W, b need a gradient (what is
    kept for backward depends on it), with leading dims."""
    torch.manual_seed(32)
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad="input" in grads)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad="weight" in grads)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(MF.linear, (x, w, b))
    assert gradgradcheck(MF.linear, (x, w, b))
