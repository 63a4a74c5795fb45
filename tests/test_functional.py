"""manual_bp.functional against native autograd, and gradcheck / gradgradcheck of every Function.

Agreement with native autograd is checked in float32 with ``torch.testing.assert_close``'s default
tolerances: outputs and the gradient of every input, on the systematic cases of
``_samples.BATCH_SHAPES`` (no batch dim, empty batch, [8], [2, 3], 5-D) with contiguous and
non-contiguous inputs and grad_outputs. gradcheck and gradgradcheck run in float64, in fast mode on
every case and in the slow (full Jacobian) mode on small ones.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from _samples import (
    ACTIVATION_IDS,
    ACTIVATIONS,
    BATCH_SHAPES,
    Activation,
    by_id,
    half_squared_error_native,
    is_laid_out,
    sample,
)
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor
from torch.autograd import gradcheck, gradgradcheck

import manual_bp.functional as MF

D_IN, D_OUT, C = 5, 3, 4
REDUCTIONS = ("mean", "sum", "none")


def _grads(out: Tensor, inputs: list[Tensor], grad_output: Tensor) -> tuple[Tensor | None, ...]:
    return torch.autograd.grad(out, inputs, grad_output, allow_unused=True)


def _compare(
    manual: Callable[..., Tensor],
    native: Callable[..., Tensor],
    inputs: list[Tensor],
    grad_layout: str = "contiguous",
    equal_nan: bool = False,
) -> None:
    """Outputs, then the gradient of every input that requires one, manual against native."""
    out, ref = manual(*inputs), native(*inputs)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, equal_nan=equal_nan)
    diff = [t for t in inputs if t.requires_grad]
    grad_output = sample(out.shape, dtype=out.dtype, layout=grad_layout)
    assert is_laid_out(grad_output, grad_layout)
    got, want = _grads(out, diff, grad_output), _grads(ref, diff, grad_output)
    for t, g, w in zip(diff, got, want, strict=True):
        assert g is not None and w is not None
        assert g.shape == t.shape
        torch.testing.assert_close(g, w)


# ------------------------------------------------------------------------------------------------
# every op's output is made by its own Function: the grad_fn is that Function's backward node,
# and (with leaf inputs) nothing native sits between it and the leaves
# ------------------------------------------------------------------------------------------------


def _op_outputs() -> list:
    """One ``pytest.param(function, make_output)`` per op (and per activation setting)."""
    x = sample((3, D_IN), requires_grad=True)
    w = sample((D_OUT, D_IN), requires_grad=True)
    b = sample((D_OUT,), requires_grad=True)
    t = sample((3, D_IN), requires_grad=True)
    logits = sample((3, C), requires_grad=True)
    probs = torch.softmax(sample((3, C)), -1).requires_grad_()
    weight = sample((C,), low=0.1, high=2.0, requires_grad=True)
    cases = [
        pytest.param(MF.LinearFunction, lambda: MF.linear(x, w, b), id="linear"),
        pytest.param(MF.LinearFunction, lambda: MF.linear(x, w), id="linear-nobias"),
        pytest.param(
            MF.HalfSquaredErrorFunction, lambda: MF.half_squared_error(x, t), id="half_squared_error"
        ),
        pytest.param(
            MF.CrossEntropyFunction,
            lambda: MF.cross_entropy(logits, torch.tensor([0, 3, 1])),
            id="cross_entropy-indices",
        ),
        pytest.param(
            MF.CrossEntropyFunction, lambda: MF.cross_entropy(logits, probs, weight), id="cross_entropy-probs"
        ),
    ]
    cases += [pytest.param(a.function, lambda a=a: a.manual(x), id=a.id) for a in ACTIVATIONS]
    return cases


@pytest.mark.parametrize("function, make", _op_outputs())
def test_grad_fn_is_the_manual_backward(
    function: type[torch.autograd.Function], make: Callable[[], Tensor]
) -> None:
    out = make()
    assert type(out.grad_fn) is function._backward_cls, f"grad_fn is {out.grad_fn.name()}"
    assert out.grad_fn.name() == function.__name__ + "Backward"
    for node, _ in out.grad_fn.next_functions:  # straight to the leaves: no native op in between
        assert node is None or type(node).__name__ == "AccumulateGrad", node


# ------------------------------------------------------------------------------------------------
# agreement with native autograd, float32, assert_close defaults
# ------------------------------------------------------------------------------------------------

# (input layout, grad_output layout): contiguous; strided input, strided grad; transposed input,
# expanded (stride-0) grad
LAYOUT_PAIRS = {
    "contig": ("contiguous", "contiguous"),
    "strided": ("strided", "strided"),
    "transposed-expandedgrad": ("transposed", "expanded"),
}


@pytest.mark.parametrize("layouts", LAYOUT_PAIRS.values(), ids=LAYOUT_PAIRS.keys())
@pytest.mark.parametrize("batch", BATCH_SHAPES.values(), ids=BATCH_SHAPES.keys())
@pytest.mark.parametrize("act", ACTIVATIONS, ids=ACTIVATION_IDS)
def test_activation_matches_native(act: Activation, batch: tuple[int, ...], layouts: tuple[str, str]) -> None:
    x = sample((*batch, D_IN), away_from=act.away_from, layout=layouts[0], requires_grad=True)
    assert is_laid_out(x, layouts[0])
    _compare(act.manual, act.native, [x], grad_layout=layouts[1])


@pytest.mark.parametrize("layouts", LAYOUT_PAIRS.values(), ids=LAYOUT_PAIRS.keys())
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch", BATCH_SHAPES.values(), ids=BATCH_SHAPES.keys())
def test_linear_matches_native(batch: tuple[int, ...], bias: bool, layouts: tuple[str, str]) -> None:
    x = sample((*batch, D_IN), layout=layouts[0], requires_grad=True)
    w = sample((D_OUT, D_IN), layout=layouts[0], requires_grad=True)  # laid out like the input
    inputs = [x, w] + ([sample((D_OUT,), requires_grad=True)] if bias else [])
    _compare(MF.linear, F.linear, inputs, grad_layout=layouts[1])


def test_linear_skips_unneeded_grads() -> None:
    """With a frozen input only the parameter gradients are computed, and they still match."""
    x = sample((4, D_IN))
    w, b = sample((D_OUT, D_IN), requires_grad=True), sample((D_OUT,), requires_grad=True)
    _compare(MF.linear, F.linear, [x, w, b])
    x.requires_grad_()
    w.requires_grad_(False)
    _compare(MF.linear, F.linear, [x, w, b])


@pytest.mark.parametrize("layouts", LAYOUT_PAIRS.values(), ids=LAYOUT_PAIRS.keys())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("batch", BATCH_SHAPES.values(), ids=BATCH_SHAPES.keys())
def test_half_squared_error_matches_native(
    batch: tuple[int, ...], reduction: str, layouts: tuple[str, str]
) -> None:
    x = sample((*batch, D_IN), layout=layouts[0], requires_grad=True)
    t = sample((*batch, D_IN), layout=layouts[0], requires_grad=True)
    # the mean over an empty batch is nan for both (0 / 0)
    _compare(
        lambda a, b: MF.half_squared_error(a, b, reduction),
        lambda a, b: half_squared_error_native(a, b, reduction),
        [x, t],
        grad_layout=layouts[1],
        equal_nan=batch == (0,),
    )


CE_BATCHES = {"nobatch": (), "empty": (0,), "b8": (8,)}
CE_OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "ignore": {"ignore_index": 2},
    "weight-ignore": {"weight": True, "ignore_index": 1},
}


def _ce_index_target(batch: tuple[int, ...], ignore_index: int | None) -> Tensor:
    target = torch.testing.make_tensor(batch, dtype=torch.long, device="cpu", low=0, high=C)
    if ignore_index is not None and target.numel():
        kept = (ignore_index + 1) % C  # at least one sample kept: all ignored makes the mean 0 / 0
        if target.dim() == 0:
            target.fill_(kept)
        else:
            target[-1] = kept
            target[: min(2, target.numel() - 1)] = ignore_index  # and one or two ignored
    return target


@pytest.mark.parametrize("grad_layout", ["contiguous", "expanded"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", CE_OPTIONS.values(), ids=CE_OPTIONS.keys())
@pytest.mark.parametrize("batch", CE_BATCHES.values(), ids=CE_BATCHES.keys())
def test_cross_entropy_indices_matches_native(
    batch: tuple[int, ...], options: dict, reduction: str, grad_layout: str
) -> None:
    x = sample((*batch, C), requires_grad=True)
    ignore_index = options.get("ignore_index", -100)
    target = _ce_index_target(batch, options.get("ignore_index"))
    weight = sample((C,), low=0.1, high=2.0) if options.get("weight") else None
    _compare(
        lambda a: MF.cross_entropy(a, target, weight, ignore_index=ignore_index, reduction=reduction),
        lambda a: F.cross_entropy(a, target, weight, ignore_index=ignore_index, reduction=reduction),
        [x],
        grad_layout=grad_layout,
        equal_nan=batch == (0,),
    )


def test_cross_entropy_ignored_target_equals_ignore_index_of_a_real_class() -> None:
    """ignore_index may name a real class; those samples drop out of the sum and of the mean's count."""
    x = sample((6, C), requires_grad=True)
    target = torch.tensor([0, 1, 1, 3, 2, 1])
    _compare(
        lambda a: MF.cross_entropy(a, target, None, ignore_index=1),
        lambda a: F.cross_entropy(a, target, ignore_index=1),
        [x],
    )


@pytest.mark.parametrize("layouts", LAYOUT_PAIRS.values(), ids=LAYOUT_PAIRS.keys())
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("batch", CE_BATCHES.values(), ids=CE_BATCHES.keys())
def test_cross_entropy_probabilities_matches_native(
    batch: tuple[int, ...], weighted: bool, reduction: str, layouts: tuple[str, str]
) -> None:
    x = sample((*batch, C), layout=layouts[0], requires_grad=True)
    probs = torch.softmax(sample((*batch, C)), -1)
    q = sample((*batch, C), layout=layouts[0])
    q = q.copy_(probs).requires_grad_()  # probabilities, laid out like x
    inputs = [x, q] + ([sample((C,), low=0.1, high=2.0, requires_grad=True)] if weighted else [])
    _compare(
        lambda a, b, w=None: MF.cross_entropy(a, b, w, reduction=reduction),
        lambda a, b, w=None: F.cross_entropy(a, b, w, reduction=reduction),
        inputs,
        grad_layout=layouts[1],
        equal_nan=batch == (0,),
    )


# ------------------------------------------------------------------------------------------------
# gradcheck and gradgradcheck in float64
# ------------------------------------------------------------------------------------------------


def _check(fn: Callable[..., Tensor], inputs: list[Tensor], slow: bool) -> None:
    assert gradcheck(fn, inputs, fast_mode=True)
    assert gradgradcheck(fn, inputs, fast_mode=True)
    if slow:
        assert gradcheck(fn, inputs)
        assert gradgradcheck(fn, inputs)


F64 = torch.float64
GC_BATCHES = {"nobatch": (), "b2x3": (2, 3), "5d": (2, 1, 3, 2)}  # slow mode on the first two


# b2x3 adds the slow (full Jacobian) mode on a 2x3 batch: marked slow, out of the quick subset
# (-m "not slow"), which keeps the slow mode on nobatch and the fast mode on 5d.
@pytest.mark.parametrize(
    "batch",
    [pytest.param(b, id=k, marks=[pytest.mark.slow] if k == "b2x3" else []) for k, b in GC_BATCHES.items()],
)
@pytest.mark.parametrize("act", ACTIVATIONS, ids=ACTIVATION_IDS)
def test_gradcheck_activation(act: Activation, batch: tuple[int, ...]) -> None:
    x = sample((*batch, D_IN), dtype=F64, away_from=act.away_from, requires_grad=True)
    _check(act.manual, [x], slow=len(batch) < 3)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch", GC_BATCHES.values(), ids=GC_BATCHES.keys())
def test_gradcheck_linear(batch: tuple[int, ...], bias: bool) -> None:
    x = sample((*batch, D_IN), dtype=F64, requires_grad=True)
    w = sample((D_OUT, D_IN), dtype=F64, requires_grad=True)
    inputs = [x, w] + ([sample((D_OUT,), dtype=F64, requires_grad=True)] if bias else [])
    _check(MF.linear, inputs, slow=len(batch) < 3)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("batch", GC_BATCHES.values(), ids=GC_BATCHES.keys())
def test_gradcheck_half_squared_error(batch: tuple[int, ...], reduction: str) -> None:
    x = sample((*batch, D_IN), dtype=F64, requires_grad=True)
    t = sample((*batch, D_IN), dtype=F64, requires_grad=True)
    _check(lambda a, b: MF.half_squared_error(a, b, reduction), [x, t], slow=len(batch) < 3)


GC_CE_BATCHES = {"nobatch": (), "b3": (3,)}  # an empty batch has an empty Jacobian: nothing to check


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("options", CE_OPTIONS.values(), ids=CE_OPTIONS.keys())
@pytest.mark.parametrize("batch", GC_CE_BATCHES.values(), ids=GC_CE_BATCHES.keys())
def test_gradcheck_cross_entropy_indices(batch: tuple[int, ...], options: dict, reduction: str) -> None:
    x = sample((*batch, C), dtype=F64, requires_grad=True)
    ignore_index = options.get("ignore_index", -100)
    target = _ce_index_target(batch, options.get("ignore_index"))
    weight = sample((C,), dtype=F64, low=0.1, high=2.0) if options.get("weight") else None
    _check(
        lambda a: MF.cross_entropy(a, target, weight, ignore_index=ignore_index, reduction=reduction),
        [x],
        slow=True,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
@pytest.mark.parametrize("batch", GC_CE_BATCHES.values(), ids=GC_CE_BATCHES.keys())
def test_gradcheck_cross_entropy_probabilities(
    batch: tuple[int, ...], weighted: bool, reduction: str
) -> None:
    x = sample((*batch, C), dtype=F64, requires_grad=True)
    q = torch.softmax(sample((*batch, C), dtype=F64), -1).requires_grad_()
    if weighted:  # the class weights are differentiable here, as in torch
        w = sample((C,), dtype=F64, low=0.1, high=2.0, requires_grad=True)
        _check(lambda a, b, c: MF.cross_entropy(a, b, c, reduction=reduction), [x, q, w], slow=True)
    else:
        _check(lambda a, b: MF.cross_entropy(a, b, None, reduction=reduction), [x, q], slow=True)


# ------------------------------------------------------------------------------------------------
# property-based: random batch shapes and feature sizes
# ------------------------------------------------------------------------------------------------

batch_shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
features = st.integers(1, 6)


@given(batch=batch_shapes, d_in=features, d_out=features, bias=st.booleans())
def test_linear_random_shapes(batch: tuple[int, ...], d_in: int, d_out: int, bias: bool) -> None:
    x = sample((*batch, d_in), requires_grad=True)
    w = sample((d_out, d_in), requires_grad=True)
    inputs = [x, w] + ([sample((d_out,), requires_grad=True)] if bias else [])
    _compare(MF.linear, F.linear, inputs)


@given(batch=batch_shapes, d=features, act_id=st.sampled_from(ACTIVATION_IDS))
def test_activation_random_shapes(batch: tuple[int, ...], d: int, act_id: str) -> None:
    act = by_id(act_id)
    _compare(act.manual, act.native, [sample((*batch, d), away_from=act.away_from, requires_grad=True)])


@given(batch=batch_shapes, d=features, reduction=st.sampled_from(REDUCTIONS))
def test_half_squared_error_random_shapes(batch: tuple[int, ...], d: int, reduction: str) -> None:
    x, t = sample((*batch, d), requires_grad=True), sample((*batch, d), requires_grad=True)
    _compare(
        lambda a, b: MF.half_squared_error(a, b, reduction),
        lambda a, b: half_squared_error_native(a, b, reduction),
        [x, t],
        equal_nan=0 in batch,
    )


@given(
    n=st.integers(1, 6),
    c=st.integers(1, 6),
    reduction=st.sampled_from(REDUCTIONS),
    weighted=st.booleans(),
    data=st.data(),
)
def test_cross_entropy_random_shapes(
    n: int, c: int, reduction: str, weighted: bool, data: st.DataObject
) -> None:
    x = sample((n, c), requires_grad=True)
    target = torch.tensor(data.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    weight = sample((c,), low=0.1, high=2.0) if weighted else None
    _compare(
        lambda a: MF.cross_entropy(a, target, weight, reduction=reduction),
        lambda a: F.cross_entropy(a, target, weight, reduction=reduction),
        [x],
    )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["indices", "indices-weight-ignore", "probabilities"])
def test_cross_entropy_with_extra_dims_matches_native(kind: str, reduction: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 5, 2, dtype=torch.float64, requires_grad=True)  # (N, C, d_1, d_2)
    weight = ignore = None
    if kind == "probabilities":
        target = torch.rand(3, 4, 5, 2, dtype=torch.float64).softmax(1)
    else:
        target = torch.randint(0, 4, (3, 5, 2))
        if kind == "indices-weight-ignore":
            weight, ignore = torch.rand(4, dtype=torch.float64), 2
    kwargs = {
        "reduction": reduction,
        **({"weight": weight, "ignore_index": ignore} if ignore is not None else {}),
    }
    got = MF.cross_entropy(logits, target, **kwargs)
    want = F.cross_entropy(logits, target, **kwargs)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)
    grad_out = torch.randn_like(want)
    (g_got,) = torch.autograd.grad(got, logits, grad_out)
    (g_want,) = torch.autograd.grad(want, logits, grad_out)
    torch.testing.assert_close(g_got, g_want)
    assert torch.autograd.gradcheck(
        lambda z: MF.cross_entropy(z, target, **kwargs), (logits,), fast_mode=True
    )


def test_cross_entropy_with_extra_dims_checks_the_target_shape() -> None:
    with pytest.raises(ValueError, match=r"class-index target must have shape \(3, 5\)"):
        MF.cross_entropy(torch.randn(3, 4, 5), torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"class-probability target must have the input's shape \(3, 4, 5\)"):
        MF.cross_entropy(torch.randn(3, 4, 5), torch.rand(3, 5, 4))
