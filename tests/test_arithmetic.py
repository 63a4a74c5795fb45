"""The arithmetic and matmul ops (``manual_bp/ops/arithmetic.py``, ``manual_bp/ops/matmul.py``) beyond
what tests/test_ops.py runs on every registry op: broadcasting of every operand pair, Python-number
operands, torch's type promotion and output dtypes, the special points where native defines a
gradient the formula does not (``pow`` at 0), hand-written layers made of these ops, and each clear
error."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

import manual_bp.functional as MF
from manual_bp.ops.arithmetic import sum_to

F64 = torch.float64


def _x(*shape: int, dtype: torch.dtype = F64, low: float = -2.0) -> Tensor:
    return torch.testing.make_tensor(shape, dtype=dtype, device="cpu", low=low, high=2.0, requires_grad=True)


def _pos(*shape: int, dtype: torch.dtype = F64) -> Tensor:
    return _x(*shape, dtype=dtype, low=0.5)


def _run(fn: Callable[..., Tensor], args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Tensor, list]:
    """``fn(*args)``'s output and the gradients of its tensor arguments that require grad (fresh
    copies of them, so that manual and native runs do not share ``.grad``)."""
    args = tuple(
        a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, Tensor) else a for a in args
    )
    out = fn(*args, **kwargs)
    diff = [a for a in args if isinstance(a, Tensor) and a.requires_grad]
    if not diff:
        return out, []
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
    return out, list(torch.autograd.grad((out * weights).sum(), diff))


def _same_as_native(
    manual: Callable[..., Tensor], native: Callable[..., Tensor], *args: Any, **kwargs: Any
) -> None:
    """Output (value and dtype) and every gradient (value and dtype) equal native's (float64: 1e-10)."""
    out, grads = _run(manual, args, kwargs)
    ref, ref_grads = _run(native, args, kwargs)
    assert out.dtype == ref.dtype and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    assert len(grads) == len(ref_grads)
    for g, r in zip(grads, ref_grads, strict=True):
        assert g.dtype == r.dtype and g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# sum_to, the one broadcast reduction
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(2, 3, 4), (3, 4), (4,), (1, 4), (3, 1), (1, 1), (), (2, 1, 4), (1, 3, 1)], ids=str
)
def test_sum_to_equals_torch_sum_to_size(shape: tuple[int, ...]) -> None:
    grad = torch.randn(2, 3, 4, dtype=F64)
    got = sum_to(grad, shape)
    assert got.shape == shape
    torch.testing.assert_close(got, grad.sum_to_size(shape) if shape else grad.sum(), rtol=0, atol=1e-14)


def test_sum_to_returns_an_unbroadcast_grad_itself() -> None:
    grad = torch.randn(2, 3)
    assert sum_to(grad, (2, 3)) is grad


# ------------------------------------------------------------------------------------------------
# binary ops: broadcasting, numbers, promotion
# ------------------------------------------------------------------------------------------------

BINARY = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div}
PAIRS = [  # (input shape, other shape): every way two operands broadcast
    ((2, 3), (2, 3)),
    ((2, 3), (3,)),
    ((3,), (2, 3)),
    ((2, 1), (1, 3)),
    ((2, 1, 3), (4, 1)),
    ((), (2, 3)),
    ((2, 3), ()),
    ((1,), (2, 3)),
    ((0, 3), (3,)),
]


@pytest.mark.parametrize("shapes", PAIRS, ids=str)
@pytest.mark.parametrize("name", BINARY)
def test_binary_broadcasting_like_native(name: str, shapes: tuple[tuple[int, ...], ...]) -> None:
    a, b = _x(*shapes[0]), _pos(*shapes[1])
    _same_as_native(getattr(MF, name), BINARY[name], a, b)


@pytest.mark.parametrize("name", BINARY)
def test_binary_python_numbers_either_side(name: str) -> None:
    x = _pos(2, 3)
    _same_as_native(getattr(MF, name), BINARY[name], x, 2.5)
    _same_as_native(getattr(MF, name), BINARY[name], -1.5, x)
    _same_as_native(getattr(MF, name), BINARY[name], x, 3)  # an int number with a float tensor


@pytest.mark.parametrize("name", ["add", "sub"])
def test_alpha(name: str) -> None:
    _same_as_native(getattr(MF, name), BINARY[name], _x(2, 3), _x(3), alpha=-0.25)
    _same_as_native(getattr(MF, name), BINARY[name], _x(2, 3), 2.0, alpha=3)


@pytest.mark.parametrize("name", BINARY)
def test_binary_type_promotion_like_native(name: str) -> None:
    """Mixed float dtypes give the wider output and each gradient in its operand's dtype; integer
    tensors promote with floats (and get no gradient); integer-only arithmetic stays integer."""
    fn, native = getattr(MF, name), BINARY[name]
    _same_as_native(fn, native, _pos(2, 3, dtype=torch.float32), _pos(3, dtype=F64))
    _same_as_native(
        fn, native, _pos(2, 3, dtype=torch.float32), torch.tensor(2.0, dtype=F64)
    )  # 0-d: lower rank
    ints = torch.tensor([[1, 2, 3], [4, 5, 6]])
    _same_as_native(fn, native, ints, _pos(3))
    _same_as_native(fn, native, ints, 1.5)
    out = fn(ints, 2)
    assert out.dtype == native(ints, 2).dtype and out.grad_fn is None
    torch.testing.assert_close(out, native(ints, 2))


def test_bool_and_int_outputs_need_no_gradient() -> None:
    flags = torch.tensor([True, False, True])
    for fn, native in ((MF.add, torch.add), (MF.mul, torch.mul)):
        assert fn(flags, flags).dtype == native(flags, flags).dtype == torch.bool
    assert MF.sum(flags).dtype == torch.int64 and MF.sum(flags).item() == 2


def test_div_rounding_mode_refused_with_a_gradient() -> None:
    with pytest.raises(ValueError, match="rounding_mode='floor' has no gradient"):
        MF.div(_x(2, 3), 2.0, rounding_mode="floor")
    with pytest.raises(ValueError, match="rounding_mode='trunc' has no gradient"):
        MF.div(torch.ones(3), _x(3), rounding_mode="trunc")


def test_div_rounding_mode_without_a_gradient_is_native() -> None:
    """Index arithmetic (integer floor division) passes through: nothing to differentiate."""
    a = torch.arange(-5, 5)
    assert torch.equal(MF.div(a, 3, rounding_mode="floor"), torch.div(a, 3, rounding_mode="floor"))
    x = _x(2, 3)
    with torch.no_grad():
        torch.testing.assert_close(
            MF.div(x, 0.7, rounding_mode="trunc"), torch.div(x, 0.7, rounding_mode="trunc")
        )


def test_native_argument_errors_pass_through() -> None:
    """Arguments torch rejects get torch's own error (the forward is the native op)."""
    with pytest.raises(RuntimeError, match="must match the size"):
        MF.add(_x(2, 3), _x(4))
    with pytest.raises(TypeError, match="add"):
        MF.add(_x(3), "1")
    with pytest.raises(RuntimeError, match="could not infer output dtype"):
        MF.mean(torch.arange(3))
    with pytest.raises(TypeError, match="pow"):
        MF.pow(2, 3)


def test_complex_backward_refused() -> None:
    z = torch.randn(3, dtype=torch.complex128, requires_grad=True)
    out = MF.mul(z, z)
    torch.testing.assert_close(out, z * z)  # the forward is fine
    with pytest.raises(TypeError, match="real dtypes only"):
        out.abs().sum().backward()


# ------------------------------------------------------------------------------------------------
# pow: tensor and number exponents and bases, native's values at 0
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("x", 2),
        ("x", 3.0),
        ("p", 0.5),
        ("p", -2),
        ("x", 0),
        ("p", "e"),
        ("p1", "e"),
        (2.0, "e"),
        (0.5, "e1"),
        ("p", "e0"),
    ],
    ids=str,
)
def test_pow_like_native(args: tuple[Any, Any]) -> None:
    make = {
        "x": lambda: _x(2, 3),
        "p": lambda: _pos(2, 3),
        "p1": lambda: _pos(3),
        "e": lambda: _x(2, 3),
        "e1": lambda: _x(3),
        "e0": lambda: torch.tensor(1.5, dtype=F64, requires_grad=True),
    }
    a, b = (make[v]() if isinstance(v, str) else v for v in args)
    _same_as_native(MF.pow, torch.pow, a, b)


def test_pow_at_zero_like_native() -> None:
    """Where the formulas read 0·∞, native defines the gradient as 0: x = 0 with e ≥ 0 (∂/∂e), e = 0
    (∂/∂x), and a base of 0."""
    x = torch.tensor([0.0, 0.0, 1.5, 0.0], dtype=F64, requires_grad=True)
    e = torch.tensor([0.0, 2.0, 0.0, 1.0], dtype=F64, requires_grad=True)
    _same_as_native(MF.pow, torch.pow, x, e)
    _same_as_native(MF.pow, torch.pow, x, 0)
    _same_as_native(MF.pow, torch.pow, 0.0, torch.tensor([0.0, 2.0, 0.5], dtype=F64, requires_grad=True))


def test_pow_int_tensor_promotes() -> None:
    ints = torch.tensor([1, 2, 3])
    _same_as_native(MF.pow, torch.pow, ints, _x(3))  # int base, float exponent: a float result
    assert MF.pow(ints, 2).dtype == torch.int64


# ------------------------------------------------------------------------------------------------
# unary ops and reductions
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["exp", "log", "sqrt", "rsqrt"])
def test_unary_like_native_and_int_input_promotes(name: str) -> None:
    _same_as_native(getattr(MF, name), getattr(torch, name), _pos(2, 3))
    ints = torch.tensor([1, 2, 3])
    out = getattr(MF, name)(ints)
    assert out.dtype == getattr(torch, name)(ints).dtype == torch.float32


@pytest.mark.parametrize("name", ["sum", "mean"])
@pytest.mark.parametrize(
    "call",
    [(), (0,), (-1, True), ((0, 2),), ([],), ([], True), ((1, -1), True), (None, True)],
    ids=str,
)
def test_reductions_like_native(name: str, call: tuple[Any, ...]) -> None:
    _same_as_native(getattr(MF, name), getattr(torch, name), _x(2, 3, 4), *call)


@pytest.mark.parametrize("name", ["sum", "mean"])
def test_reduction_dtype_and_tensor_method_spelling(name: str) -> None:
    x = _x(2, 3, dtype=torch.float32)
    _same_as_native(getattr(MF, name), getattr(torch, name), x, 1, dtype=F64)
    _same_as_native(getattr(MF, name), getattr(torch.Tensor, name), x, dim=1, keepdim=True)


# ------------------------------------------------------------------------------------------------
# layers written by hand from these ops
# ------------------------------------------------------------------------------------------------


def _rms_norm(x: Tensor, weight: Tensor, ops: Any, eps: float = 1e-6) -> Tensor:
    """Llama's RMSNorm as transformers writes it, with ``ops`` the namespace of ``pow``, ``mean``, ..."""
    variance = ops.mean(ops.pow(x, 2), -1, keepdim=True)
    return ops.mul(weight, ops.mul(x, ops.rsqrt(ops.add(variance, eps))))


def test_hand_written_rms_norm_and_layer_scale_like_native() -> None:
    x, w, gamma, pos = _x(2, 3, 4), _x(4), _x(4), _x(3, 4)

    def model(ops: Any) -> Callable[..., Tensor]:
        def f(x: Tensor, w: Tensor, gamma: Tensor, pos: Tensor) -> Tensor:
            h = ops.add(x, pos)  # a position embedding
            h = _rms_norm(h, w, ops)
            h = ops.mul(gamma, ops.exp(ops.div(h, 2.0)))  # a layer scale
            return ops.sum(
                ops.sub(ops.sqrt(ops.add(ops.mul(h, h), 1.0)), ops.log(ops.add(ops.pow(h, 2), 1.0)))
            )

        return f

    _same_as_native(model(MF), model(torch), x, w, gamma, pos)
    out = model(MF)(x, w, gamma, pos)
    assert out.grad_fn.name() == "SumFunctionBackward"
