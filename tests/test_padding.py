"""pad beyond the registry's samples: every mode against native over many pads (negative ones,
3-d, unbatched), the padding modules, convert/revert, CPU autocast's float32 pads, and each error."""

from __future__ import annotations

import doctest
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import gradcheck, gradgradcheck

import manual_bp
import manual_bp.functional as MF
from manual_bp.ops.padding import PadFunction, source_index

TOL = {"rtol": 1e-10, "atol": 1e-12}


def _compare(shape: tuple[int, ...], pad: tuple[int, ...], mode: str, value: float | None = None) -> None:
    """Output and gradient of manual and native pad, float64, one grad_output for both."""
    x = torch.randn(shape, dtype=torch.float64)
    outs, grads = [], []
    for fn in (MF.pad, F.pad):
        xi = x.clone().requires_grad_(True)
        out = fn(xi, pad, mode, value)
        if not outs:
            g = torch.randn_like(out)
        outs.append(out)
        grads.append(torch.autograd.grad(out, xi, g)[0] if out.numel() else torch.zeros_like(x))
    assert outs[0].grad_fn is not None and type(outs[0].grad_fn) is PadFunction._backward_cls
    torch.testing.assert_close(outs[0], outs[1], **TOL)
    torch.testing.assert_close(grads[0], grads[1], **TOL)


# pads of every sign and size torch accepts, per padded dim
_PAIRS_1D = [(0, 0), (1, 0), (0, 3), (2, 2), (4, 4), (-1, 2), (2, -1), (-2, -1), (3, -4), (-4, 1)]


@pytest.mark.parametrize("pair", _PAIRS_1D, ids=str)
@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate"])
def test_1d_pads_match_native(mode: str, pair: tuple[int, int]) -> None:
    _compare((2, 3, 5), pair, mode)
    _compare((3, 5), pair, mode)  # unbatched


@pytest.mark.parametrize(
    "pair", [(0, 0), (1, 0), (2, 2), (5, 5), (-1, 2), (2, -1), (-2, -1), (1, -3)], ids=str
)
def test_circular_1d_pads_match_native(pair: tuple[int, int]) -> None:
    """Circular wraps what the negative pads leave (native's copy order), up to a whole wrap."""
    _compare((2, 3, 5), pair, "circular")


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    "pad", [(1, 2, 2, 1), (-1, 2, 3, 0), (2, 2, 2, 2, 1, 1), (1, -1, 0, 2, -1, 1)], ids=str
)
def test_2d_and_3d_pads_match_native(mode: str, pad: tuple[int, ...]) -> None:
    batched = (2, 2, 3, 4, 3) if len(pad) == 6 else (2, 2, 4, 3)
    _compare(batched, pad, mode)
    _compare(batched[1:], pad, mode)  # unbatched


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_empty_batch(mode: str) -> None:
    _compare((0, 3, 5), (2, 1), mode)
    _compare((0, 2, 4, 3), (1, 1, 2, 0), mode)


def test_constant_pads_any_dim_with_value() -> None:
    _compare((2, 3, 4), (1, 1, -1, 2, 2, 0), "constant", 1.5)  # every dim, the batch dim too
    _compare((2, 3, 4), (-2, -2), "constant")  # cropped to nothing
    _compare((2, 3, 4), (), "constant")  # no padding at all


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate", "circular"])
def test_gradgradcheck_3d(mode: str) -> None:
    x = torch.randn(1, 2, 3, 3, 2, dtype=torch.float64, requires_grad=True)
    pad = (1, 1, 2, 0, -1, 2)
    assert gradcheck(lambda t: MF.pad(t, pad, mode), (x,))
    assert gradgradcheck(lambda t: MF.pad(t, pad, mode), (x,))


def test_source_index_is_the_copied_entry() -> None:
    """What native copies where, read off a padded ``arange``: the map BP2 adds δ back along."""
    x = torch.arange(5.0).view(1, 1, 5)
    for mode in ("reflect", "replicate", "circular"):
        for pair in [(2, 3), (-1, 2), (3, -2), (4, 0)]:
            want = F.pad(x, pair, mode).flatten().long()
            assert torch.equal(source_index(mode, 5, *pair, torch.device("cpu")), want), (mode, pair)


def test_skips_the_input_gradient_nobody_needs() -> None:
    ctx = type("Ctx", (), {"needs_input_grad": (False, False, False, False)})()
    assert PadFunction.backward(ctx, torch.ones(3)) == (None, None, None, None)


def test_the_default_value_is_zero_and_a_list_pad_works() -> None:
    x = torch.randn(2, 3)
    assert torch.equal(MF.pad(x, [1, 1]), F.pad(x, [1, 1]))
    assert torch.equal(MF.pad(x, torch.Size([1, 2])), F.pad(x, (1, 2)))


def test_autocast_bf16_like_native() -> None:
    """CPU autocast runs reflect (1-d, 2-d) and replicate pads in float32 (its float32 list); the
    other pads keep the input's dtype. The gradient comes back in the input's dtype."""
    cases = [
        ((1, 2, 5), (1, 2), "reflect"),
        ((1, 2, 4, 5), (1, 2, 1, 1), "reflect"),
        ((1, 2, 3, 4, 5), (1, 1, 1, 1, 1, 1), "reflect"),
        ((1, 2, 5), (1, 2), "replicate"),
        ((1, 2, 3, 4, 5), (1, 1, 1, 1, 1, 1), "replicate"),
        ((1, 2, 5), (1, 2), "circular"),
        ((1, 2, 5), (1, 2), "constant"),
    ]
    seen = set()
    for shape, pad, mode in cases:
        for dtype in (torch.bfloat16, torch.float32, torch.float64):
            x = torch.randn(shape, dtype=dtype)
            results = []
            for fn in (MF.pad, F.pad):
                xi = x.clone().requires_grad_(True)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = fn(xi, pad, mode)
                (g,) = torch.autograd.grad(out, xi, torch.ones_like(out))
                results.append((out, g))
            (out, g), (ref, ref_g) = results
            assert out.dtype == ref.dtype, (shape, mode, dtype)
            assert g.dtype == ref_g.dtype == dtype
            torch.testing.assert_close(out, ref, rtol=0, atol=0)  # copies: exact
            torch.testing.assert_close(g, ref_g, rtol=0, atol=0)  # sums of ones: exact
            seen.add(out.dtype)
    assert torch.float32 in seen and torch.bfloat16 in seen  # both behaviours were exercised


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------

_MODULES: list[tuple[str, tuple, tuple[int, ...]]] = [
    ("ConstantPad1d", ((1, 2), 0.5), (2, 3, 4)),
    ("ConstantPad2d", (1, -0.5), (2, 3, 4)),
    ("ConstantPad3d", ((1, 0, 2, 1, 0, 1), 2.0), (2, 2, 3, 4)),
    ("ZeroPad1d", (2,), (3, 4)),
    ("ZeroPad2d", ((1, 0, -1, 2),), (2, 3, 4)),
    ("ZeroPad3d", (1,), (1, 2, 2, 3, 2)),
    ("ReflectionPad1d", ((2, 1),), (2, 3, 4)),
    ("ReflectionPad2d", (1,), (3, 4, 4)),
    ("ReflectionPad3d", ((1, 0, 1, 1, 0, 1),), (1, 2, 2, 3, 2)),
    ("ReplicationPad1d", (3,), (3, 4)),
    ("ReplicationPad2d", ((2, 0, 1, 3),), (2, 2, 3, 4)),
    ("ReplicationPad3d", (1,), (2, 2, 3, 2)),
    ("CircularPad1d", ((4, 1),), (2, 3, 4)),
    ("CircularPad2d", (1,), (2, 2, 3, 4)),
    ("CircularPad3d", ((1, 0, 2, 1, 0, 1),), (1, 2, 2, 3, 2)),
]


@pytest.mark.parametrize(("name", "args", "shape"), _MODULES, ids=[m[0] for m in _MODULES])
def test_module_matches_native(name: str, args: tuple, shape: tuple[int, ...]) -> None:
    ours, theirs = getattr(manual_bp, name)(*args), getattr(nn, name)(*args)
    assert isinstance(ours, getattr(nn, name)) and type(ours).__module__ == "manual_bp.modules"
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(shape, dtype=torch.float64)
    outs, grads = [], []
    for m in (ours, theirs):
        xi = x.clone().requires_grad_(True)
        out = m(xi)
        if not outs:
            g = torch.randn_like(out)
        outs.append(out)
        grads.append(torch.autograd.grad(out, xi, g)[0])
    assert outs[0].grad_fn.name() == "PadFunctionBackward"
    torch.testing.assert_close(outs[0], outs[1], **TOL)
    torch.testing.assert_close(grads[0], grads[1], **TOL)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.ReflectionPad2d(1), nn.Conv2d(2, 3, 3), nn.Tanh(), nn.ZeroPad2d((1, 0, 0, 1)),
        nn.ReplicationPad2d(2), nn.CircularPad2d(1), nn.Flatten(), nn.Linear(3 * 12 * 12, 2),
    ).double()  # fmt: skip


def test_convert_and_revert_a_model_with_padding_layers() -> None:
    native = _model()
    manual = manual_bp.convert(native)
    assert type(manual[0]) is manual_bp.ReflectionPad2d and type(manual[3]) is manual_bp.ZeroPad2d
    assert type(manual[4]) is manual_bp.ReplicationPad2d and type(manual[5]) is manual_bp.CircularPad2d
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    for m in (native, manual):
        m(x).square().sum().backward()
    for (name, p), q in zip(native.named_parameters(), manual.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, **TOL, msg=name)
    back = manual_bp.revert(manual)
    assert [type(m) for m in back] == [type(m) for m in native]
    assert all(
        torch.equal(a, b)
        for a, b in zip(back.state_dict().values(), native.state_dict().values(), strict=True)
    )
    assert back.state_dict().keys() == native.state_dict().keys()


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

X = torch.randn(2, 3, 5)

ERRORS: list[tuple[Callable[[], Tensor], type[Exception], str]] = [
    (lambda: MF.pad(X.long(), (1, 1)), TypeError, "floating-point"),
    (lambda: MF.pad(X, (1.5, 1)), TypeError, "tuple or list of ints"),
    (lambda: MF.pad(X, torch.tensor([1, 1])), TypeError, "tuple or list of ints"),
    (lambda: MF.pad(X, (1, 1), "wrap"), NotImplementedError, "Unrecognised padding mode 'wrap'"),
    (lambda: MF.pad(X, (1,)), RuntimeError, "divisible by 2"),
    (lambda: MF.pad(X, (1,) * 8), RuntimeError, "two times the input dimension"),
    (lambda: MF.pad(X, (1, 1), "reflect", 1.0), RuntimeError, "doesn't take in value"),
    (lambda: MF.pad(X, (1, 1, 1, 1, 1, 1), "reflect"), NotImplementedError, r"4-D \(unbatched\) or 5-D"),
    (lambda: MF.pad(X[0, 0], (1, 1), "replicate"), NotImplementedError, "got a 1-D input"),
    (
        lambda: MF.pad(X, (5, 1), "reflect"),
        RuntimeError,
        r"less than the padded dim's size, got padding \(5, 1\)",
    ),
    (lambda: MF.pad(X, (6, 1), "circular"), RuntimeError, "wraps around once"),
    (lambda: MF.pad(X, (-3, 3), "circular"), RuntimeError, "after negative pads crop it"),
    (lambda: MF.pad(X[:, :, :0], (1, 1), "replicate"), RuntimeError, "non-zero sizes"),
    (lambda: MF.pad(X, (-4, -1), "reflect"), RuntimeError, "output size of 0, expected at least 1"),
    (lambda: MF.pad(X, (-4, -2)), RuntimeError, "output size of -1, expected a non-negative size"),
]


@pytest.mark.parametrize(("call", "error", "match"), ERRORS, ids=[e[2][:30] for e in ERRORS])
def test_clear_errors(call: Callable[[], Tensor], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("name", [m[0] for m in _MODULES])
def test_module_docstring_example_runs(name: str) -> None:
    """Each module's doctest (its class lives in manual_bp.modules, where pytest's doctest finder
    does not look) shows the manual grad_fn."""
    tests = doctest.DocTestFinder().find(getattr(manual_bp, name), name)
    results = [doctest.DocTestRunner().run(t) for t in tests]
    assert sum(r.attempted for r in results) >= 3 and not any(r.failed for r in results)
