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


def test_complex_refused_before_any_node() -> None:
    """A complex result that needs a gradient is refused up front (its gradients need conjugates):
    a TypeError, on which ``convert(functional=True)`` leaves the call native."""
    z = torch.randn(3, dtype=torch.complex128, requires_grad=True)
    for fn, args in ((MF.mul, (z, z)), (MF.exp, (z,)), (MF.matmul, (z, z)), (MF.einsum, ("i,i->", z, z))):
        with pytest.raises(TypeError, match="supports real dtypes only, got a result of torch.complex128"):
            fn(*args)
    with torch.no_grad():  # nothing to differentiate: the native op
        torch.testing.assert_close(MF.mul(z, z), z * z)


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


# ------------------------------------------------------------------------------------------------
# matmul family
# ------------------------------------------------------------------------------------------------

MATMUL_SHAPES = [  # every rank case of torch.matmul
    ((3,), (3,)),
    ((3,), (3, 4)),
    ((2, 3), (3,)),
    ((2, 3), (3, 4)),
    ((2, 2, 3), (3, 4)),
    ((2, 3), (2, 3, 4)),
    ((3,), (2, 3, 4)),
    ((2, 2, 3), (3,)),
    ((2, 1, 2, 3), (3, 3, 2)),
    ((1, 2, 3), (2, 3, 4)),
    ((2, 2, 3), (1, 3, 4)),
    ((0, 2, 3), (3, 4)),
]


@pytest.mark.parametrize("shapes", MATMUL_SHAPES, ids=str)
def test_matmul_every_rank_like_native(shapes: tuple[tuple[int, ...], ...]) -> None:
    _same_as_native(MF.matmul, torch.matmul, _x(*shapes[0]), _x(*shapes[1]))


def test_matmul_one_operand_without_grad() -> None:
    for a, b in ((_x(2, 2, 3), torch.randn(3, 4, dtype=F64)), (torch.randn(2, 2, 3, dtype=F64), _x(3, 4))):
        _same_as_native(MF.matmul, torch.matmul, a, b)


def test_matmul_errors_are_torchs() -> None:
    with pytest.raises(RuntimeError, match="both arguments to matmul need to be at least 1D"):
        MF.matmul(_x(), _x(3))
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        MF.matmul(_x(2, 3), _x(4, 2))
    with pytest.raises(TypeError, match="must be Tensor"):
        MF.matmul(_x(2, 3), 2)
    with pytest.raises(RuntimeError, match="same dtype"):
        MF.mm(_x(2, 3), _x(3, 2, dtype=torch.float32))
    with pytest.raises(RuntimeError, match="3D"):
        MF.bmm(_x(2, 3), _x(3, 2))


@pytest.mark.parametrize("kwargs", [{}, {"beta": 0.5, "alpha": -2.0}, {"beta": 0}, {"alpha": 0}], ids=str)
@pytest.mark.parametrize("input_shape", [(4,), (2, 4), (2, 1), (1, 4), ()], ids=str)
def test_addmm_like_native(input_shape: tuple[int, ...], kwargs: dict[str, float]) -> None:
    _same_as_native(MF.addmm, torch.addmm, _x(*input_shape), _x(2, 3), _x(3, 4), **kwargs)


@pytest.mark.parametrize("kwargs", [{}, {"beta": 0.5, "alpha": -2.0}], ids=str)
@pytest.mark.parametrize("input_shape", [(2, 2, 4), (4,), (2, 1, 4), (1, 2, 1)], ids=str)
def test_baddbmm_like_native(input_shape: tuple[int, ...], kwargs: dict[str, float]) -> None:
    _same_as_native(MF.baddbmm, torch.baddbmm, _x(*input_shape), _x(2, 2, 3), _x(2, 3, 4), **kwargs)


class _Conv1D(torch.nn.Module):
    """transformers' GPT-2 ``Conv1D`` (a linear layer with its weight transposed), ``addmm`` given."""

    def __init__(self, nf: int, nx: int, addmm: Callable[..., Tensor]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(nx, nf, dtype=F64) * 0.1)
        self.bias = torch.nn.Parameter(torch.randn(nf, dtype=F64))
        self.addmm = addmm

    def forward(self, x: Tensor) -> Tensor:
        size_out = x.size()[:-1] + (self.weight.size(-1),)
        x = self.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(size_out)


def test_gpt2_conv1d_with_manual_addmm_like_native() -> None:
    torch.manual_seed(0)
    manual = _Conv1D(4, 3, MF.addmm)
    native = _Conv1D(4, 3, torch.addmm)
    native.load_state_dict(manual.state_dict())
    x = torch.randn(2, 5, 3, dtype=F64)
    out, ref = manual(x), native(x)
    assert out.grad_fn.next_functions[0][0].name() == "AddmmFunctionBackward"
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(out.sin().sum(), list(manual.parameters()))
    ref_grads = torch.autograd.grad(ref.sin().sum(), list(native.parameters()))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_attention_with_matmul_and_softmax_like_native() -> None:
    def attention(ops: Any, softmax: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def f(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            scores = ops.div(ops.matmul(q, k.transpose(-1, -2)), 2.0)  # (b, h, q, d) @ (b, h, d, k)
            return ops.matmul(softmax(scores, dim=-1), v)

        return f

    q, k, v = _x(2, 2, 3, 4), _x(2, 2, 5, 4), _x(2, 2, 5, 4)
    _same_as_native(attention(MF, MF.softmax), attention(torch, torch.softmax), q, k, v)


# ------------------------------------------------------------------------------------------------
# einsum
# ------------------------------------------------------------------------------------------------

EINSUM_CALLS = [
    ("ij,jk->ik", (2, 3), (3, 4)),
    ("ij,jk", (2, 3), (3, 4)),
    ("Ab,bc", (2, 3), (3, 4)),  # implicit output with an uppercase label
    ("b i j , b j k -> b i k", (2, 2, 3), (2, 3, 4)),  # spaces
    ("bhqd,bhkd->bhqk", (1, 2, 3, 2), (1, 2, 4, 2)),
    ("i,j->ij", (3,), (4,)),
    ("i,i->", (3,), (3,)),
    ("ij->", (2, 3)),
    ("ij->ji", (2, 3)),
    ("ij->ij", (2, 3)),
    ("ij->j", (2, 3)),
    ("...ij,jk->...ik", (2, 2, 3), (3, 2)),
    ("...ij,...jk", (2, 2, 3), (3, 4)),  # ellipses of different widths broadcast
    ("...ij->ij", (4, 2, 3)),  # ellipsis dims not in the output: summed
    ("ij,ij->i", (1, 3), (2, 3)),  # a size-1 dim broadcast
    ("ij,j->", (2, 3), (1,)),  # a size-1 label broadcast, and a label in one operand only
    ("ijk,ik->j", (2, 3, 2), (2, 2)),
    ("ij,jk,kl->il", (2, 3), (3, 2), (2, 2)),
    ("bn,anm,bm->ba", (2, 3), (4, 3, 2), (2, 2)),  # a bilinear form
]


@pytest.mark.parametrize("call", EINSUM_CALLS, ids=lambda c: c[0])
def test_einsum_like_native(call: tuple[Any, ...]) -> None:
    equation, *shapes = call
    _same_as_native(MF.einsum, torch.einsum, equation, *(_x(*s) for s in shapes))


def test_einsum_operands_as_a_list_and_sublists() -> None:
    a, b = _x(2, 3), _x(3, 4)
    out = MF.einsum("ij,jk->ik", [a, b])
    assert out.grad_fn.name() == "EinsumFunctionBackward"
    torch.testing.assert_close(out, a @ b, rtol=1e-10, atol=1e-12)
    _same_as_native(MF.einsum, torch.einsum, a, [0, 1], b, [1, 2], [0, 2])
    _same_as_native(MF.einsum, torch.einsum, a, [0, 1], b, [1, 27])  # implicit; 27 is 'b'
    _same_as_native(MF.einsum, torch.einsum, _x(2, 2, 3), [..., 0, 1], b, [1, 2], [..., 0, 2])


def test_einsum_repeated_subscript_refused() -> None:
    with pytest.raises(ValueError, match=r"repeats the subscript\(s\) i \(a diagonal\)"):
        MF.einsum("ii->i", _x(3, 3))
    with pytest.raises(ValueError, match="diagonal"):
        MF.einsum("ij,kjj->ik", _x(2, 3), _x(2, 3, 3))


@pytest.mark.parametrize(
    "call, match",
    [
        (("ij,jk->ik", (2, 3)), "more operands were specified|operands"),
        (("ij->ik", (2, 3)), "output subscript k does not appear"),
        (("i1->i", (2, 3)), r"subscripts must be in \[a-zA-Z\]"),
        (("ijk->i", (2, 3)), "number of dimensions"),
        (("ij,jk->ik", (2, 3), (2, 3)), "does not broadcast"),
    ],
    ids=lambda v: v[0] if isinstance(v, tuple) else "",
)
def test_einsum_errors_are_torchs(call: tuple[Any, ...], match: str) -> None:
    equation, *shapes = call
    with pytest.raises(RuntimeError, match=match):
        MF.einsum(equation, *(_x(*s) for s in shapes))


def test_einsum_compiles_with_the_equation_as_a_constant() -> None:
    a, b = _x(2, 3, dtype=torch.float32), _x(3, 4, dtype=torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(lambda a, b: MF.einsum("ij,jk->ik", a, b), fullgraph=True)
    torch.testing.assert_close(compiled(a, b), a @ b)


@pytest.mark.parametrize(
    "call",
    [
        (MF.add, torch.add, (2, 3), (3,)),
        (MF.mul, torch.mul, (2, 3), (3,)),
        (MF.exp, torch.exp, (2, 3)),
        (MF.mean, torch.mean, (2, 3)),
        (MF.matmul, torch.matmul, (2, 3), (3, 4)),
        (MF.addmm, torch.addmm, (4,), (2, 3), (3, 4)),
    ],
    ids=lambda c: c[1].__name__,
)
def test_calls_without_gradient_are_the_native_op(call: tuple[Any, ...]) -> None:
    """Where nothing requires a gradient (no_grad, or plain tensors) no node is made: the native op
    is the whole call."""
    manual, native, *shapes = call
    args = [torch.randn(s) for s in shapes]
    out = manual(*args)
    assert out.grad_fn is None and torch.equal(out, native(*args))
    with torch.no_grad():
        out = manual(*(a.requires_grad_() for a in args))
    assert out.grad_fn is None and torch.equal(out, native(*args))


def test_einsum_diagonal_without_gradient_is_native() -> None:
    a = torch.randn(3, 3)
    assert torch.equal(MF.einsum("ii->i", a), torch.einsum("ii->i", a))
