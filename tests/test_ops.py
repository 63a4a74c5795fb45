"""Every op of the registry, tested the same way from its own samples (:data:`manual_bp.ops.OPS`).

For each op and each of its samples (``Op.samples``: batched and unbatched inputs, non-contiguous
ones, every option):

* its output's ``grad_fn`` is its own Function's backward;
* gradcheck and gradgradcheck in float64 (fast mode; ``manual-bp check`` and the slow suite test run
  the full Jacobian);
* agreement with the native op in float64 (rtol 1e-10, atol 1e-12: both sides are exact to
  rounding) and in float32 (``torch.testing.assert_close`` defaults), outputs and every gradient;
* under ``torch.autocast("cpu", bfloat16)``: the native output dtype and gradient dtypes, and values
  within 8 bfloat16 eps (see ``BF16_TOL``);
* ``torch.compile(fullgraph=True)`` gives eager's output and gradients (slow: compiling takes seconds);
* ``torch.func``: ``vmap(grad(...))`` over a stack of two samples equals native's.

An op leaves a transform out only through ``Op.skips``, which holds the written reason.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck
from torch.func import grad, vmap

from manual_bp.check.suite import _as_function, _run_native
from manual_bp.ops import OPS, Op, Sample

IDS = [op.name for op in OPS]
BF16 = torch.bfloat16
# Under bfloat16 autocast both sides compute in bfloat16; the manual backward rounds after each of
# its few ops where a native kernel may round once: allow 8 bfloat16 eps, relative and absolute (the
# figure test_transforms.py uses for the first layers, see test_modules.LOW_PRECISION_TOL).
BF16_TOL = 8 * torch.finfo(BF16).eps


def _samples(op: Op, dtype: torch.dtype, seed: int = 0) -> list[Sample]:
    """The op's samples, seeded per op (as ``manual-bp check`` does)."""
    torch.manual_seed(seed + zlib.crc32(op.name.encode()))
    return op.samples(dtype, torch.device("cpu"))


def _skip(op: Op, transform: str) -> None:
    if transform in op.skips:
        pytest.skip(f"{op.name} under {transform}: {op.skips[transform]}")


def _diff(sample: Sample) -> list[Tensor]:
    return [a for a in sample.args if isinstance(a, Tensor) and a.requires_grad]


def _fresh(inputs: list[Tensor]) -> list[Tensor]:
    return [x.detach().clone().requires_grad_(True) for x in inputs]


def _first(out: Any) -> Tensor:
    """The differentiable output (ops that also return indices give a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def _grads(out: Tensor, inputs: list[Tensor], grad_output: Tensor) -> list[Tensor | None]:
    if not inputs or out.numel() == 0:
        return []
    return list(torch.autograd.grad(out, inputs, grad_output, allow_unused=True))


_RESHAPES = (
    "ViewBackward",
    "UnsafeViewBackward",
    "ReshapeAliasBackward",
    "SqueezeBackward",
    "UnsqueezeBackward",
)


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_grad_fn_is_the_ops_own_backward(op: Op) -> None:
    if op.function_class is None:
        pytest.skip(f"{op.name} has no Function of its own")
    for s in _samples(op, torch.float64):
        fn, inputs = _as_function(op.manual, s, op.random)
        if not inputs:
            continue
        node = _first(fn(*inputs)).grad_fn
        while node is not None and node.name().startswith(_RESHAPES):  # mlp reshapes an unbatched input
            node = node.next_functions[0][0]
        assert type(node) is op.function_class._backward_cls, f"{s.label}: grad_fn is {node}"


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_gradcheck_and_gradgradcheck(op: Op) -> None:
    for s in _samples(op, torch.float64):
        if not s.finite:
            continue
        fn, inputs = _as_function(op.manual, s, op.random)
        if not inputs:
            continue
        assert gradcheck(fn, inputs, fast_mode=True), s.label
        if op.double_backward:
            assert gradgradcheck(fn, inputs, fast_mode=True), s.label


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_matches_native(op: Op, dtype: torch.dtype) -> None:
    """Outputs and every input's gradient, against the native op, on every sample (``manual-bp
    check``'s comparison: float64 to 1e-10, float32 with assert_close's defaults)."""
    row = _run_native(op, [_to_dtype(s, dtype) for s in _samples(op, torch.float64)], dtype)
    assert row.passed, f"{row.detail} (largest error {row.error:.2e})"


def _to_dtype(s: Sample, dtype: torch.dtype) -> Sample:
    """``s`` with its floating tensors in ``dtype`` (values and ``requires_grad`` kept)."""

    def conv(a: Any) -> Any:
        if isinstance(a, Tensor) and a.is_floating_point():
            return a.detach().to(dtype).requires_grad_(a.requires_grad)
        return a

    return Sample(
        tuple(conv(a) for a in s.args), {k: conv(v) for k, v in s.kwargs.items()}, s.label, s.finite
    )


def _error(got: Tensor, truth: Tensor) -> float:
    diff = (got.double() - truth).abs()
    diff = torch.where(got.isnan() & truth.isnan(), 0.0, diff)  # NaN where the truth is NaN is right
    return diff.max().item() if diff.numel() else 0.0


def _as_accurate(got: Tensor, ref: Tensor, truth: Tensor, what: str) -> None:
    """``got`` is about as accurate as native's ``ref``: its largest error from the float64 ``truth``
    is at most four times native's plus one bfloat16 eps of the tensor's scale.

    Not a fixed tolerance against native: both round differently (a deep op such as ``mlp`` differed
    from native by 0.21 on a gradient entry of 0.33 whose terms are about 3, where native itself
    was 0.15 off). Four times: a manual backward's ``f′`` rounds to bfloat16 after each of its few
    ops where a native kernel computes in float32 and rounds once; measured up to 3.3 times native's
    error (``mlp_loss`` with GELU, the input's gradient)."""
    scale = max(truth.abs().nan_to_num(0.0).max().item(), 1.0) if truth.numel() else 1.0
    err, ref_err = _error(got, truth), _error(ref, truth)
    assert err <= 4 * ref_err + torch.finfo(BF16).eps * scale, (
        f"{what}: largest error {err:.3g} from float64, native's {ref_err:.3g}"
    )


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_autocast_bf16_like_native(op: Op) -> None:
    """The native output dtype and gradient dtypes under CPU bfloat16 autocast, and as accurate as
    native (see ``_as_accurate``)."""
    _skip(op, "autocast")
    for s in _samples(op, torch.float32):
        results = []
        for impl, autocast in ((op.manual, True), (op.native, True), (op.native, False)):
            fn, inputs = _as_function(impl, s, op.random)
            xs = _fresh(inputs) if autocast else [x.detach().double().requires_grad_(True) for x in inputs]
            if not autocast:  # the float64 truth: every floating argument in float64
                fn, _ = _as_function(impl, _to_dtype(s, torch.float64), op.random)
            with torch.autocast("cpu", dtype=BF16, enabled=autocast):
                out = _first(fn(*xs))
            if not results:
                grad_output = torch.testing.make_tensor(out.shape, dtype=out.dtype, device="cpu")
            results.append((out, _grads(out, xs, grad_output.to(out.dtype))))
        (out, grads), (ref, ref_grads), (truth, true_grads) = results
        assert out.dtype == ref.dtype, f"{s.label}: output {out.dtype}, native {ref.dtype}"
        _as_accurate(out, ref, truth.detach(), f"{s.label}: output")
        for i, (g, r, t) in enumerate(zip(grads, ref_grads, true_grads, strict=True)):
            assert (g is None) == (r is None), s.label
            if g is not None:
                assert g.dtype == r.dtype, f"{s.label}: gradient {g.dtype}, native {r.dtype}"
                _as_accurate(g, r, t, f"{s.label}: gradient {i}")


def _representative(op: Op, dtype: torch.dtype, seed: int = 0) -> Sample:
    """The op's first sample with a non-empty differentiable input (the one the transforms run)."""
    for s in _samples(op, dtype, seed):
        if s.finite and _diff(s) and all(x.numel() for x in _diff(s)):
            return s
    pytest.skip(f"{op.name} has no sample with non-empty differentiable inputs")


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_compile_fullgraph_like_eager(op: Op) -> None:
    _skip(op, "compile")
    s = _representative(op, torch.float32)
    fn, inputs = _as_function(op.manual, s)  # a random op: seeded below, outside the compiled code
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    results = []
    for f in (fn, compiled):
        xs = _fresh(inputs)
        torch.manual_seed(0)  # the same draws for both
        out = _first(f(*xs))
        if not results:
            grad_output = torch.testing.make_tensor(out.shape, dtype=out.dtype, device="cpu")
        results.append([out.detach(), *_grads(out, xs, grad_output)])
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want)


def _per_sample_loss(
    impl: Callable[..., Any], sample: Sample, random: bool, weights: Tensor
) -> Callable[..., Tensor]:
    """``(diff inputs...) -> Σ out ⊙ weights``: a scalar whose gradient is one backward of ``impl``."""
    fn, _ = _as_function(impl, sample, random)
    return lambda *xs: (_first(fn(*xs)) * weights).sum()


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_vmap_grad_like_native(op: Op) -> None:
    """``vmap(grad(f))`` over a stack of two samples (the same call with other values): the batched
    forward and backward of the manual Function (its generated vmap rule) against native's."""
    _skip(op, "vmap")
    a, b = _representative(op, torch.float64), _representative(op, torch.float64, seed=1)
    stacked = [torch.stack([x.detach(), y.detach()]) for x, y in zip(_diff(a), _diff(b), strict=True)]
    out = _first(_as_function(op.native, a, op.random)[0](*_diff(a)))
    weights = torch.testing.make_tensor(out.shape, dtype=out.dtype, device="cpu")
    argnums = tuple(range(len(stacked)))
    got, want = (
        vmap(grad(_per_sample_loss(impl, a, op.random, weights), argnums=argnums), randomness="same")(
            *stacked
        )
        for impl in (op.manual, op.native)
    )
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("op", OPS, ids=IDS)
def test_has_its_backward_formula_for_the_docs(op: Op) -> None:
    """The docs' op table (docs/ops.md) is generated from ``Op.formula``: every op states its backward
    in the derivation's step names."""
    assert any(step in op.formula for step in ("BP1", "BP2", "BP3")), op.formula
    assert op.formula.count("$") % 2 == 0, f"unbalanced $…$ math: {op.formula}"
