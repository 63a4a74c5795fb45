"""softmax, log_softmax, flatten and unflatten beyond the generic tests of test_ops.py: the legacy
implicit dim and its warning, dtype=, autocast, the modules (Softmax, LogSoftmax, Softmax2d, Flatten,
Unflatten) against torch.nn's, views, vmap over logical dims, convert/revert, and the errors."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

import manual_bp
import manual_bp.functional as MF
from manual_bp.ops import shape as shape_ops

TOL = {"rtol": 1e-10, "atol": 1e-12}
SOFTMAXES = {"softmax": (MF.softmax, F.softmax), "log_softmax": (MF.log_softmax, F.log_softmax)}


def _out_and_grads(fn: Callable[..., Tensor], x: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
    xi = x.detach().requires_grad_(True)
    out = fn(xi, *args, **kwargs)
    g = torch.linspace(-1, 2, out.numel(), dtype=out.dtype).reshape(out.shape)
    (gx,) = torch.autograd.grad(out, xi, g)
    return out.detach(), gx


# ------------------------------------------------------------------------------------------------
# softmax and log_softmax
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (4,), (3, 4), (2, 3, 4), (2, 3, 2, 2)], ids=str)
@pytest.mark.parametrize("name", SOFTMAXES)
def test_implicit_dim_like_native(name: str, shape: tuple[int, ...]) -> None:
    """dim=None: torch's legacy choice (0 for 0-, 1- and 3-d inputs, else 1), with its warning,
    attributed to the caller's line as native's."""
    x = torch.randn(shape, dtype=torch.float64)
    results = []
    for fn in SOFTMAXES[name]:
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            results.append((_out_and_grads(fn, x), [(str(w.message), w.filename) for w in ws]))
    ((out, g), ours), ((ref, r), theirs) = results
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(g, r, **TOL)
    assert ours == theirs and len(ours) == 1
    assert f"Implicit dimension choice for {name} has been deprecated" in ours[0][0]


@pytest.mark.parametrize(
    ("in_dtype", "dtype"),
    [(torch.float32, torch.float64), (torch.bfloat16, torch.float32), (torch.int64, torch.float64)],
    ids=str,
)
@pytest.mark.parametrize("name", SOFTMAXES)
def test_dtype_argument_like_native(name: str, in_dtype: torch.dtype, dtype: torch.dtype) -> None:
    x = (10 * torch.randn(3, 5)).to(in_dtype)
    manual, native = SOFTMAXES[name]
    if not x.is_floating_point():  # no gradient for integers: the output alone
        out, ref = manual(x, 1, dtype=dtype), native(x, 1, dtype=dtype)
        assert out.dtype == ref.dtype == dtype
        torch.testing.assert_close(out, ref, **TOL)
        return
    (out, g), (ref, r) = (_out_and_grads(fn, x, 1, dtype=dtype) for fn in (manual, native))
    assert out.dtype == ref.dtype == dtype and g.dtype == r.dtype == in_dtype
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, r)


@pytest.mark.parametrize("name", SOFTMAXES)
def test_dtype_as_third_positional_like_torch_softmax(name: str) -> None:
    """torch.softmax(input, dim, dtype) and Tensor.softmax(dim, dtype) (torch_functions of the op)
    put dtype where F.softmax has _stacklevel: both spellings mean the same here."""
    manual, _ = SOFTMAXES[name]
    x = torch.randn(3, 4)
    out = manual(x, 1, torch.float64)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, getattr(torch, name)(x, 1, torch.float64), **TOL)
    assert torch.equal(out, getattr(x, name)(1, torch.float64))
    with pytest.raises(TypeError, match="got two dtypes"):
        manual(x, 1, torch.float64, dtype=torch.float32)


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("name", SOFTMAXES)
def test_cpu_autocast_keeps_the_input_dtype_like_native(name: str, in_dtype: torch.dtype) -> None:
    x = torch.randn(4, 6).to(in_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (out, g), (ref, r) = (_out_and_grads(fn, x, -1) for fn in SOFTMAXES[name])
    assert out.dtype == ref.dtype == in_dtype and g.dtype == r.dtype == in_dtype
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, r)


@pytest.mark.parametrize("name", SOFTMAXES)
def test_float32_under_autocast_rule(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where native autocast runs softmax in float32 (CUDA), float16/bfloat16 inputs are upcast unless
    dtype= is given; tested here by declaring the CPU such a device (no GPU on this machine)."""
    monkeypatch.setattr(shape_ops, "_FLOAT32_UNDER_AUTOCAST_ON", ("cpu",))
    manual, native = SOFTMAXES[name]
    x = torch.randn(4, 6).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, g = _out_and_grads(manual, x, -1)
        explicit = manual(x, -1, dtype=torch.bfloat16)
        wide = manual(x.double(), -1)
    ref, r = _out_and_grads(native, x.float(), -1)  # what native's float32 policy computes
    assert out.dtype == torch.float32 and g.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, r.bfloat16())
    assert explicit.dtype == torch.bfloat16 and wide.dtype == torch.float64


@pytest.mark.parametrize("name", SOFTMAXES)
def test_large_logits_stable(name: str) -> None:
    x = torch.tensor([[1000.0, 0.0, -1000.0], [1e4, 1e4, 1e4]], dtype=torch.float64)
    (out, g), (ref, r) = (_out_and_grads(fn, x, 1) for fn in SOFTMAXES[name])
    assert out.isfinite().all() and g.isfinite().all()
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(g, r, **TOL)


def test_softmax_function_is_public_and_direct() -> None:
    """SoftmaxFunction.apply(x, dim) is the clean entry point attention will use."""
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    out = manual_bp.functional.SoftmaxFunction.apply(x, -1)
    assert out.grad_fn.name() == "SoftmaxFunctionBackward"
    torch.testing.assert_close(out, torch.softmax(x, -1), **TOL)
    assert torch.autograd.gradgradcheck(lambda t: MF.SoftmaxFunction.apply(t, 1), (x,))


def test_backward_formulas() -> None:
    """BP2 written out: P ⊙ (δ − Σ δ ⊙ P) and δ − softmax(x) ⊙ Σ δ."""
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    delta = torch.randn(3, 5, dtype=torch.float64)
    p = torch.softmax(x, 1).detach()
    (g,) = torch.autograd.grad(MF.softmax(x, 1), x, delta)
    torch.testing.assert_close(g, p * (delta - (delta * p).sum(1, keepdim=True)), **TOL)
    (g,) = torch.autograd.grad(MF.log_softmax(x, 1), x, delta)
    torch.testing.assert_close(g, delta - p * delta.sum(1, keepdim=True), **TOL)


# ------------------------------------------------------------------------------------------------
# flatten and unflatten
# ------------------------------------------------------------------------------------------------


def test_flatten_is_a_view_like_native() -> None:
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    out = MF.flatten(x, 1)
    assert out._base is x and out.data_ptr() == x.data_ptr() and out.shape == (2, 12)
    y = MF.unflatten(x, 2, (2, 2))
    assert y._base is x and y.shape == (2, 3, 2, 2)


def test_inplace_on_the_view_refused_with_a_clear_error() -> None:
    """Documented limit: an in-place op on the output of a custom Function that is a view of its
    input is refused by autograd (it would bypass the explicit backward); clone first."""
    x = torch.randn(2, 3, 4, requires_grad=True)
    out = MF.flatten(x * 1, 1)
    with pytest.raises(RuntimeError, match="custom Function"):
        out.add_(1)
    cloned = MF.flatten(x * 1, 1).clone().add_(1)
    (g,) = torch.autograd.grad(cloned.sum(), x)
    assert torch.equal(g, torch.ones_like(x))


@pytest.mark.parametrize(
    ("shape", "start", "end"),
    [((2, 3, 4), 0, -1), ((2, 3, 4), 1, -1), ((2, 3, 4, 5), -3, 2), ((2, 3), 1, 1), ((), 0, -1)],
    ids=str,
)
def test_flatten_like_native(shape: tuple[int, ...], start: int, end: int) -> None:
    x = torch.randn(shape, dtype=torch.float64)
    (out, g), (ref, r) = (_out_and_grads(fn, x, start, end) for fn in (MF.flatten, torch.flatten))
    assert out.shape == ref.shape
    assert torch.equal(out, ref) and torch.equal(g, r)


@pytest.mark.parametrize(
    ("shape", "dim", "sizes"),
    [((2, 12), 1, (3, -1)), ((12,), 0, [2, 2, 3]), ((2, 0), 1, (0, 5)), ((3, 4), -2, (1, 3, 1))],
    ids=str,
)
def test_unflatten_like_native(shape: tuple[int, ...], dim: int, sizes: Any) -> None:
    x = torch.randn(shape, dtype=torch.float64)
    (out, g), (ref, r) = (_out_and_grads(fn, x, dim, sizes) for fn in (MF.unflatten, torch.unflatten))
    assert out.shape == ref.shape
    assert torch.equal(out, ref) and torch.equal(g, r)


@pytest.mark.parametrize("op", ["flatten", "unflatten", "softmax"])
def test_vmap_over_logical_dims_like_native(op: str) -> None:
    """Under vmap the dims are the sample's (logical) dims: dim 0 is the sample's first."""
    calls = {
        "flatten": (lambda t: MF.flatten(t, 0, 1), lambda t: torch.flatten(t, 0, 1)),
        "unflatten": (lambda t: MF.unflatten(t, 0, (2, 3)), lambda t: torch.unflatten(t, 0, (2, 3))),
        "softmax": (lambda t: MF.softmax(t, 0), lambda t: torch.softmax(t, 0)),
    }[op]
    x = torch.randn(4, 6, 5, dtype=torch.float64)
    w = torch.randn_like(calls[1](x[0]))
    got, want = (vmap(grad(lambda t, f=f: (f(t) * w).sum()))(x) for f in calls)
    torch.testing.assert_close(got, want, **TOL)


# ------------------------------------------------------------------------------------------------
# modules
# ------------------------------------------------------------------------------------------------

MODULES: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module], tuple[int, ...]]] = {
    "Softmax": (lambda: manual_bp.Softmax(dim=1), lambda: nn.Softmax(dim=1), (3, 4, 2)),
    "Softmax-dim-1": (lambda: manual_bp.Softmax(-1), lambda: nn.Softmax(-1), (3, 4)),
    "LogSoftmax": (lambda: manual_bp.LogSoftmax(dim=0), lambda: nn.LogSoftmax(dim=0), (3, 4)),
    "Softmax2d": (manual_bp.Softmax2d, nn.Softmax2d, (2, 3, 2, 2)),
    "Softmax2d-unbatched": (manual_bp.Softmax2d, nn.Softmax2d, (3, 2, 2)),
    "Flatten": (manual_bp.Flatten, nn.Flatten, (2, 3, 4)),
    "Flatten-0-1": (lambda: manual_bp.Flatten(0, 1), lambda: nn.Flatten(0, 1), (2, 3, 4)),
    "Unflatten": (lambda: manual_bp.Unflatten(1, (2, 3)), lambda: nn.Unflatten(1, (2, 3)), (4, 6)),
    "Unflatten-list": (lambda: manual_bp.Unflatten(-1, [3, 2]), lambda: nn.Unflatten(-1, [3, 2]), (4, 6)),
}


@pytest.mark.parametrize("case", MODULES)
def test_module_like_native(case: str) -> None:
    make_ours, make_theirs, shape = MODULES[case]
    ours, theirs = make_ours(), make_theirs()
    assert isinstance(ours, type(theirs)) and type(ours).__module__ == "manual_bp.modules"
    assert type(ours).__name__ == type(theirs).__name__
    assert repr(ours) == repr(theirs) and ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(shape, dtype=torch.float64)
    (out, g), (ref, r) = (_out_and_grads(m, x) for m in (ours, theirs))
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(g, r, **TOL)
    assert ours(x.requires_grad_()).grad_fn.name().removesuffix("Backward").endswith("Function")


def test_softmax_module_implicit_dim_warns_like_native() -> None:
    x = torch.randn(2, 3)
    caught = []
    for m in (manual_bp.Softmax(), nn.Softmax()):
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            out = m(x)
        caught.append((out, [(str(w.message), w.filename, w.lineno) for w in ws]))
    (out, ours), (ref, theirs) = caught
    torch.testing.assert_close(out, ref)
    assert [m for m, *_ in ours] == [m for m, *_ in theirs] and ours
    assert [f for _, f, _ in ours] == [f for _, f, _ in theirs]  # the same frame of the caller


def test_softmax2d_rank_error() -> None:
    with pytest.raises(ValueError, match="Softmax2d: expected input to be 3D or 4D, got 2D instead"):
        manual_bp.Softmax2d()(torch.randn(3, 4))


def test_convert_and_revert() -> None:
    torch.manual_seed(4)
    native = nn.Sequential(
        nn.Linear(6, 12),
        nn.Unflatten(1, (3, 2, 2)),
        nn.Softmax2d(),
        nn.Flatten(),
        nn.Linear(12, 4),
        nn.Softmax(dim=-1),
        nn.LogSoftmax(dim=1),
    ).double()
    converted = manual_bp.convert(native)
    assert [type(m).__module__ for m in converted] == ["manual_bp.modules"] * len(native)
    x = torch.randn(5, 6, dtype=torch.float64)
    results = []
    for model in (converted, native):
        out = model(x)
        out.square().sum().backward()
        results.append([out.detach()] + [p.grad for p in model.parameters()])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, **TOL)
    back = manual_bp.revert(copy.deepcopy(converted))
    assert [type(m) for m in back] == [type(m) for m in native]
    for k, v in native.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SOFTMAXES)
def test_softmax_dim_out_of_range(name: str) -> None:
    with pytest.raises(IndexError, match=r"expected to be in range of \[-2, 1\], but got 2"):
        SOFTMAXES[name][0](torch.randn(2, 3), 2)


@pytest.mark.parametrize("name", SOFTMAXES)
def test_softmax_dim_not_an_int(name: str) -> None:
    with pytest.raises(TypeError, match="dim must be an int, got float"):
        SOFTMAXES[name][0](torch.randn(2, 3), 1.0)


@pytest.mark.parametrize("name", SOFTMAXES)
def test_softmax_integer_input(name: str) -> None:
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        SOFTMAXES[name][0](torch.arange(3), 0)


def test_softmax_dtype_not_a_dtype() -> None:
    with pytest.raises(TypeError, match="dtype to be a torch.dtype or None, got str"):
        MF.softmax(torch.randn(3), 0, dtype="float64")


@pytest.mark.parametrize("fn", [MF.softmax, MF.log_softmax, MF.flatten], ids=lambda f: f.__name__)
def test_input_not_a_tensor(fn: Callable[..., Tensor]) -> None:
    with pytest.raises(TypeError, match="expected input to be a torch.Tensor, got list"):
        fn([1.0, 2.0], 0)


def test_flatten_start_after_end() -> None:
    with pytest.raises(RuntimeError, match="start_dim cannot come after end_dim"):
        MF.flatten(torch.randn(2, 3, 4), 2, 1)


def test_flatten_dim_out_of_range() -> None:
    with pytest.raises(IndexError, match=r"expected to be in range of \[-3, 2\], but got 3"):
        MF.flatten(torch.randn(2, 3, 4), 3)


def test_flatten_dim_not_an_int() -> None:
    with pytest.raises(TypeError, match="start_dim must be an int, got float"):
        MF.flatten(torch.randn(2, 3), 1.0)


@pytest.mark.parametrize("sizes", [(2, 2), (-1, -1), (-2, -3), (0, -1)], ids=str)
def test_unflatten_sizes_do_not_multiply_up(sizes: tuple[int, ...]) -> None:
    with pytest.raises(RuntimeError, match=r"don't multiply up to the size of dim 1 \(6\)"):
        MF.unflatten(torch.randn(2, 6), 1, sizes)


def test_unflatten_empty_sizes() -> None:
    with pytest.raises(RuntimeError, match="sizes must be non-empty"):
        MF.unflatten(torch.randn(2, 6), 1, ())


@pytest.mark.parametrize("sizes", [3, torch.tensor([2, 3]), (2.0, 3)], ids=["int", "tensor", "floats"])
def test_unflatten_sizes_not_ints(sizes: Any) -> None:
    with pytest.raises(TypeError, match="sizes to be a tuple or list of ints"):
        MF.unflatten(torch.randn(2, 6), 1, sizes)


def test_unflatten_0d() -> None:
    with pytest.raises(RuntimeError, match="0-d tensor, it has no dimension to split"):
        MF.unflatten(torch.tensor(1.0), 0, (1,))
