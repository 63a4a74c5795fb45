"""Pooling beyond the registry's samples: return_indices, grids of options against native (every
average-pooling divisor torch uses), the pooling modules, convert/revert, autocast, each error."""

from __future__ import annotations

import doctest
import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import manual_bp
import manual_bp.functional as MF
from manual_bp.ops.pooling import pool_output_size

TOL = {"rtol": 1e-10, "atol": 1e-12}


def _run(
    fn: Callable[..., Any], x: Tensor, g: Tensor | None, *args: Any, **kwargs: Any
) -> tuple[Any, Tensor, Tensor]:
    """``(fn's result, its output, the input's gradient for grad_output g)`` (g random when None)."""
    xi = x.clone().requires_grad_(True)
    result = fn(xi, *args, **kwargs)
    out = result[0] if isinstance(result, tuple) else result
    g = torch.randn_like(out) if g is None else g
    return result, g, torch.autograd.grad(out, xi, g)[0]


def _compare(
    manual: Callable[..., Any], native: Callable[..., Any], x: Tensor, *args: Any, **kwargs: Any
) -> None:
    res, g, grad = _run(manual, x, None, *args, **kwargs)
    ref, _, ref_grad = _run(native, x, g, *args, **kwargs)
    for a, b in zip(
        res if isinstance(res, tuple) else (res,), ref if isinstance(ref, tuple) else (ref,), strict=True
    ):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)


# --------------------------------------------------------------------------------------------
# return_indices
# --------------------------------------------------------------------------------------------

_WITH_INDICES = [
    (MF.max_pool1d, F.max_pool1d, (2, 3, 9), {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 1}),
    (MF.max_pool1d, F.max_pool1d, (3, 8), {"kernel_size": 2, "dilation": 2, "ceil_mode": True}),
    (MF.max_pool2d, F.max_pool2d, (2, 3, 7, 6), {"kernel_size": (3, 2), "stride": (2, 1), "padding": (1, 0)}),
    (
        MF.max_pool2d,
        F.max_pool2d,
        (3, 6, 6),
        {"kernel_size": 2, "stride": 2, "dilation": 2, "ceil_mode": True},
    ),
    (MF.adaptive_max_pool1d, F.adaptive_max_pool1d, (2, 3, 7), {"output_size": 3}),
    (MF.adaptive_max_pool2d, F.adaptive_max_pool2d, (2, 3, 7, 5), {"output_size": (3, None)}),
    (MF.adaptive_max_pool2d, F.adaptive_max_pool2d, (3, 4, 4), {"output_size": (5, 2)}),
]


@pytest.mark.parametrize(("manual", "native", "shape", "kwargs"), _WITH_INDICES)
def test_return_indices_like_native(manual: Callable, native: Callable, shape: tuple, kwargs: dict) -> None:
    """``(output, indices)`` equal native's, the indices are not differentiable, and the gradient
    through the output equals native's."""
    x = torch.randn(shape, dtype=torch.float64)
    (out, idx), g, grad = _run(manual, x, None, return_indices=True, **kwargs)
    (ref, ref_idx), _, ref_grad = _run(native, x, g, return_indices=True, **kwargs)
    assert idx.dtype == ref_idx.dtype == torch.long and not idx.requires_grad
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)
    assert isinstance(manual(x, **kwargs), Tensor)  # return_indices=False: one tensor


def test_return_indices_positionally_like_native() -> None:
    """``max_pool2d``'s seventh positional argument is ``return_indices`` (native's boolean dispatch)."""
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    out, idx = MF.max_pool2d(x, 2, None, 0, 1, False, True)
    ref, ref_idx = F.max_pool2d(x, 2, None, 0, 1, False, True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    out, idx = MF.adaptive_max_pool2d(x, 2, True)
    assert torch.equal(idx, F.adaptive_max_pool2d(x, 2, True)[1])


def test_torch_namespace_spellings() -> None:
    """``torch.max_pool2d``'s default stride is ``[]`` (the kernel size), and its arguments are ours."""
    x = torch.randn(2, 2, 6, 5, dtype=torch.float64)
    _compare(MF.max_pool2d, torch.max_pool2d, x, (3, 2), [], 1, 1, True)
    _compare(MF.max_pool1d, torch.max_pool1d, x[0], 3, [], 1, 2)


# --------------------------------------------------------------------------------------------
# Grids of options against native
# --------------------------------------------------------------------------------------------


def _avg_cases() -> list[tuple[int, int, int, int, bool, bool]]:
    """Every valid (size, kernel, stride, padding, ceil_mode, count_include_pad) of a small grid:
    ceil_mode windows that run past the padded input, and windows that end in the padding."""
    cases = []
    for size, k, s in itertools.product((4, 5, 6, 7), (1, 2, 3, 4), (1, 2, 3)):
        for p, ceil, count in itertools.product(range(k // 2 + 1), (False, True), (True, False)):
            if pool_output_size(size, k, s, p, 1, ceil) >= 1:
                cases.append((size, k, s, p, ceil, count))
    return cases


AVG_CASES = _avg_cases()


def test_the_avg_grid_has_windows_past_the_padded_input() -> None:
    """The grid reaches torch's special case: ceil_mode windows that end past the padded input."""
    past = [
        (size, k, s, p)
        for size, k, s, p, ceil, _ in AVG_CASES
        if ceil and (pool_output_size(size, k, s, p, 1, True) - 1) * s + k > size + 2 * p
    ]
    assert len(past) > 20 and len(AVG_CASES) > 200


def test_avg_pool1d_grid_like_native() -> None:
    x = torch.randn(2, 2, 7, dtype=torch.float64)
    for size, k, s, p, ceil, count in AVG_CASES:
        _compare(MF.avg_pool1d, F.avg_pool1d, x[..., :size], k, s, p, ceil, count)


def test_avg_pool2d_grid_like_native() -> None:
    """The grid along H (with another window along W), and divisor_override on a few cases."""
    x = torch.randn(2, 1, 7, 6, dtype=torch.float64)
    for size, k, s, p, ceil, count in AVG_CASES:
        _compare(MF.avg_pool2d, F.avg_pool2d, x[..., :size, :], (k, 3), (s, 2), (p, 1), ceil, count)
    for size, k, s, p, ceil, count in AVG_CASES[::17]:
        for divisor in (1, 5, -2):
            _compare(
                MF.avg_pool2d, F.avg_pool2d, x[..., :size, :], (k, 2), (s, 1), (p, 0), ceil, count, divisor
            )


def test_max_pool_grid_like_native() -> None:
    """max_pool1d and max_pool2d over kernels, strides, paddings, dilations and ceil_mode (random
    float64 inputs: no ties)."""
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64)
    for size, k, s, d, ceil in itertools.product((5, 7), (1, 2, 3), (1, 2, 3), (1, 2), (False, True)):
        for p in range(k // 2 + 1):
            if pool_output_size(size, k, s, p, d, ceil) < 1:
                continue
            _compare(MF.max_pool1d, F.max_pool1d, x[0, :, :size, 0], k, s, p, d, ceil)
            _compare(MF.max_pool2d, F.max_pool2d, x[..., :size, :], (k, 2), (s, 1), (p, 1), (d, 1), ceil)


@pytest.mark.parametrize("output_size", [1, 2, 3, 5, 7, 8, 11])
def test_adaptive_pools_like_native(output_size: int) -> None:
    x = torch.randn(2, 2, 7, 5, dtype=torch.float64)
    _compare(MF.adaptive_avg_pool1d, F.adaptive_avg_pool1d, x[0], output_size)
    _compare(MF.adaptive_max_pool1d, F.adaptive_max_pool1d, x[0], output_size)
    for size in (output_size, (output_size, 3), (None, output_size)):
        _compare(MF.adaptive_avg_pool2d, F.adaptive_avg_pool2d, x, size)
        _compare(MF.adaptive_max_pool2d, F.adaptive_max_pool2d, x, size)


def test_adaptive_output_size_zero_like_native() -> None:
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    for manual, native in (
        (MF.adaptive_avg_pool2d, F.adaptive_avg_pool2d),
        (MF.adaptive_max_pool2d, F.adaptive_max_pool2d),
    ):
        out = manual(x, (0, 2))
        assert out.shape == native(x, (0, 2)).shape == (2, 2, 0, 2)
        (grad,) = torch.autograd.grad(out.sum(), x)
        assert torch.equal(grad, torch.zeros_like(x))


# --------------------------------------------------------------------------------------------
# Autocast: pooling keeps the input's dtype, as native's does (it is on no autocast list)
# --------------------------------------------------------------------------------------------

_AUTOCAST_CALLS = [
    ("max_pool1d", (2, 2, 6), {"kernel_size": 2}),
    ("max_pool2d", (2, 2, 4, 4), {"kernel_size": 2}),
    ("avg_pool1d", (2, 2, 6), {"kernel_size": 3, "padding": 1}),
    ("avg_pool2d", (2, 2, 4, 4), {"kernel_size": 2, "divisor_override": 3}),
    ("adaptive_avg_pool1d", (2, 2, 6), {"output_size": 4}),
    ("adaptive_avg_pool2d", (2, 2, 5, 5), {"output_size": 3}),
    ("adaptive_max_pool1d", (2, 2, 6), {"output_size": 4}),
    ("adaptive_max_pool2d", (2, 2, 5, 5), {"output_size": 3}),
]


@pytest.mark.parametrize(("name", "shape", "kwargs"), _AUTOCAST_CALLS, ids=[c[0] for c in _AUTOCAST_CALLS])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_autocast_keeps_the_dtype_like_native(
    name: str, shape: tuple, kwargs: dict, dtype: torch.dtype
) -> None:
    x = torch.randn(shape).to(dtype)
    results = []
    for fn in (getattr(MF, name), getattr(F, name)):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(xi, **kwargs)
        results.append((out, torch.autograd.grad(out, xi, torch.ones_like(out))[0]))
    (out, grad), (ref, ref_grad) = results
    assert out.dtype == ref.dtype == dtype and grad.dtype == ref_grad.dtype == dtype
    torch.testing.assert_close(out, ref)
    # bf16 sums of ones over windows: the same few roundings both ways
    torch.testing.assert_close(grad, ref_grad)


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------

_MODULES: list[tuple[str, tuple, dict, tuple[int, ...]]] = [
    ("MaxPool1d", (3,), {"stride": 2, "padding": 1, "dilation": 1, "ceil_mode": True}, (2, 3, 8)),
    ("MaxPool1d", (2,), {"return_indices": True}, (3, 7)),
    ("MaxPool2d", ((3, 2),), {"stride": 1, "padding": (1, 0), "dilation": (1, 2)}, (2, 2, 5, 6)),
    ("MaxPool2d", (2,), {"return_indices": True, "ceil_mode": True}, (2, 5, 5)),
    (
        "AvgPool1d",
        (3,),
        {"stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False},
        (2, 3, 8),
    ),
    ("AvgPool2d", (3,), {"stride": 2, "padding": 1, "ceil_mode": True}, (2, 2, 6, 5)),
    ("AvgPool2d", (2,), {"divisor_override": 3}, (2, 5, 5)),
    ("AdaptiveAvgPool1d", (3,), {}, (2, 3, 7)),
    ("AdaptiveAvgPool2d", ((2, None),), {}, (2, 2, 5, 6)),
    ("AdaptiveMaxPool1d", (4,), {"return_indices": True}, (2, 3, 7)),
    ("AdaptiveMaxPool2d", ((3, 2),), {}, (2, 5, 6)),
]


@pytest.mark.parametrize(("name", "args", "kwargs", "shape"), _MODULES, ids=[m[0] for m in _MODULES])
def test_module_matches_native(name: str, args: tuple, kwargs: dict, shape: tuple[int, ...]) -> None:
    ours, theirs = getattr(manual_bp, name)(*args, **kwargs), getattr(nn, name)(*args, **kwargs)
    assert isinstance(ours, getattr(nn, name)) and type(ours).__module__ == "manual_bp.modules"
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(shape, dtype=torch.float64)
    res, g, grad = _run(ours, x, None)
    ref, _, ref_grad = _run(theirs, x, g)
    assert type(res) is type(ref)  # a tuple with return_indices, like native
    out = res[0] if isinstance(res, tuple) else res
    assert out.grad_fn.name().endswith("PoolFunctionBackward")
    for a, b in zip(
        res if isinstance(res, tuple) else (res,), ref if isinstance(ref, tuple) else (ref,), strict=True
    ):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(grad, ref_grad, **TOL)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2, ceil_mode=True),
            nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), nn.AdaptiveMaxPool2d((3, None)),
            nn.AdaptiveAvgPool2d(2),
        )  # fmt: skip
        self.seq = nn.Sequential(nn.MaxPool1d(2), nn.AvgPool1d(2, ceil_mode=True), nn.AdaptiveAvgPool1d(3))
        self.head = nn.Linear(4 * 4 + 2 * 3, 3)

    def forward(self, x: Tensor) -> Tensor:
        a = self.features(x).flatten(1)  # (N, 4, 2, 2) -> (N, 16)
        b = self.seq(x.flatten(2)).flatten(1)  # (N, 2, 49) -> (N, 2, 3) -> (N, 6)
        return self.head(torch.cat([a, b], 1))


def test_convert_and_revert_a_cnn_with_pooling() -> None:
    torch.manual_seed(0)
    native = SmallCNN().double()
    manual = manual_bp.convert(native)
    pools = [m for m in manual.modules() if "Pool" in type(m).__name__]
    assert len(pools) == 7 and all(type(m).__module__ == "manual_bp.modules" for m in pools)
    x = torch.randn(2, 2, 7, 7, dtype=torch.float64)
    outs = [m(x) for m in (native, manual)]
    torch.testing.assert_close(outs[1], outs[0], **TOL)
    for out in outs:
        out.square().sum().backward()
    for (name, p), q in zip(native.named_parameters(), manual.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, **TOL, msg=name)
    back = manual_bp.revert(manual)
    assert [type(m) for m in back.modules()] == [type(m) for m in native.modules()]
    assert back.state_dict().keys() == native.state_dict().keys()
    assert all(
        torch.equal(a, b)
        for a, b in zip(back.state_dict().values(), native.state_dict().values(), strict=True)
    )


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

X1, X2 = torch.randn(2, 3, 7), torch.randn(2, 3, 5, 5)

ERRORS: list[tuple[Callable[[], Any], type[Exception], str]] = [
    (lambda: MF.max_pool2d(X2.long(), 2), TypeError, "floating-point"),
    (lambda: MF.avg_pool1d(X1.int(), 2), TypeError, "floating-point"),
    (lambda: MF.adaptive_max_pool2d(X2.long(), 2), TypeError, "floating-point"),
    (lambda: MF.max_pool2d(X2, 2.0), TypeError, "kernel_size must be an int or a tuple of 2 ints, got 2.0"),
    (lambda: MF.max_pool2d(X2, (1, 2, 3)), TypeError, r"kernel_size must be an int or a tuple of 2 ints"),
    (lambda: MF.max_pool1d(X1, (2, 2)), TypeError, r"max_pool1d: kernel_size must be an int or a tuple of 1"),
    (
        lambda: MF.max_pool2d(X2, 0),
        RuntimeError,
        r"kernel_size must be greater than zero, got kernel_size=\(0, 0\)",
    ),
    (lambda: MF.max_pool1d(X1, 2, 0), RuntimeError, "stride must be greater than zero"),
    (
        lambda: MF.avg_pool2d(X2, 2, (1, -1)),
        RuntimeError,
        r"stride must be greater than zero, got stride=\(1, -1\)",
    ),
    (lambda: MF.max_pool2d(X2, 2, 1, 1, 0), RuntimeError, "dilation must be greater than zero"),
    (lambda: MF.avg_pool1d(X1, 3, 1, -1), RuntimeError, "padding must be non-negative"),
    (
        lambda: MF.max_pool2d(X2, 2, 1, 2),
        RuntimeError,
        r"padding should be at most half of kernel_size, got padding=\(2, 2\)",
    ),
    (lambda: MF.avg_pool2d(X2, 3, 1, 2), RuntimeError, "padding should be at most half"),
    (lambda: MF.max_pool1d(X1, 3, 1, 2, 2), RuntimeError, "padding should be at most half"),  # dilation aside
    (lambda: MF.max_pool2d(X2, 6), RuntimeError, r"output size \(0, 0\) is too small"),
    (lambda: MF.avg_pool1d(X1, 8), RuntimeError, r"output size \(0,\) is too small"),
    (
        lambda: MF.max_pool2d(X2[0, 0], 2),
        RuntimeError,
        r"3-D \(unbatched\) or 4-D \(batched\) input, got shape",
    ),
    (lambda: MF.max_pool1d(X2, 2), RuntimeError, r"2-D \(unbatched\) or 3-D \(batched\) input, got shape"),
    (lambda: MF.avg_pool2d(X2[:, :0], 2), RuntimeError, "non-zero sizes in every dim but the batch dim"),
    (lambda: MF.avg_pool2d(X2, 2, divisor_override=0), RuntimeError, "divisor_override must not be zero"),
    (
        lambda: MF.avg_pool2d(X2, 2, divisor_override=2.5),
        TypeError,
        "divisor_override must be an int or None",
    ),
    (lambda: MF.adaptive_avg_pool2d(X2, -1), RuntimeError, "output_size must be non-negative"),
    (lambda: MF.adaptive_max_pool1d(X1, (2, 3)), TypeError, "output_size must be an int or a tuple of 1"),
    (lambda: MF.adaptive_avg_pool1d(X1, None), TypeError, "output_size must be an int"),
    (lambda: MF.adaptive_avg_pool2d(X2, (1, 2, 3)), TypeError, "output_size must be an int or a tuple of 2"),
    (lambda: MF.adaptive_avg_pool2d(X2[0, 0], 2), RuntimeError, r"3-D \(unbatched\) or 4-D"),
    (lambda: MF.adaptive_max_pool2d(X2[:, :, :0], 2), RuntimeError, "non-zero sizes"),
]


@pytest.mark.parametrize(("call", "error", "match"), ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_clear_errors(call: Callable[[], Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("name", sorted({m[0] for m in _MODULES}))
def test_module_docstring_example_runs(name: str) -> None:
    """Each module's doctest (its class lives in manual_bp.modules, where pytest's doctest finder
    does not look) shows the manual grad_fn."""
    tests = doctest.DocTestFinder().find(getattr(manual_bp, name), name)
    results = [doctest.DocTestRunner().run(t) for t in tests]
    assert sum(r.attempted for r in results) >= 2 and not any(r.failed for r in results)
