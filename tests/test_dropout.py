"""Dropout beyond the generic tests of test_ops.py: seeded runs draw native's masks bit for bit
(every variant, dtype, p, unbatched inputs), the identity cases return the input itself as native,
the warnings and errors of native's feature dropouts, inplace=True, the modules, vmap's randomness
modes, torch.compile, convert/revert."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

import manual_bp
import manual_bp.functional as MF

VARIANTS = {
    "dropout": (MF.dropout, F.dropout),
    "dropout1d": (MF.dropout1d, F.dropout1d),
    "dropout2d": (MF.dropout2d, F.dropout2d),
    "dropout3d": (MF.dropout3d, F.dropout3d),
}
# shapes each variant takes without a warning: batched, and unbatched where native has it
SHAPES = {
    "dropout": [(), (7,), (4, 5), (2, 3, 4, 5)],
    "dropout1d": [(3, 6), (4, 3, 6)],
    "dropout2d": [(4, 3, 2, 5)],
    "dropout3d": [(3, 2, 2, 5), (4, 3, 2, 2, 5)],
}
CASES = [(name, shape) for name, shapes in SHAPES.items() for shape in shapes]
BATCHED = {"dropout": (4, 6), "dropout1d": (2, 4, 6), "dropout2d": (2, 4, 3, 3), "dropout3d": (2, 4, 2, 3, 3)}


def _seeded(fn: Callable[..., Tensor], x: Tensor, *args: object, seed: int = 7, **kwargs: object) -> Tensor:
    torch.manual_seed(seed)
    return fn(x, *args, **kwargs)


def _run(fn: Callable[..., Tensor], x: Tensor, p: float, training: bool = True) -> tuple[Tensor, Tensor]:
    xi = x.detach().requires_grad_(True)
    out = _seeded(fn, xi, p, training)
    g = torch.arange(out.numel(), dtype=x.dtype).reshape(out.shape) / 7  # a δ of distinct entries
    (gx,) = torch.autograd.grad(out, xi, g) if out.requires_grad else (g,)
    return out.detach(), gx


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("name", "shape"), CASES, ids=[f"{n}-{list(s)}" for n, s in CASES])
def test_seeded_masks_bit_exact(name: str, shape: tuple[int, ...], dtype: torch.dtype, p: float) -> None:
    manual, native = VARIANTS[name]
    x = torch.randn(shape).to(dtype)
    out, gx = _run(manual, x, p)
    ref, rx = _run(native, x, p)
    assert out.dtype == ref.dtype == dtype
    assert torch.equal(out, ref) and torch.equal(out.signbit(), ref.signbit())  # -0.0 where native has it
    assert torch.equal(gx, rx)
    if p == 0.5 and name == "dropout" and x.numel() >= 20:
        assert 0 < (out == 0).sum() < out.numel()  # some dropped, some kept: the test can see masks


def test_layouts_bit_exact() -> None:
    """A transposed input: the mask follows its memory layout (empty_like keeps strides), as native."""
    x = torch.randn(6, 5).t()
    assert torch.equal(_seeded(MF.dropout, x, 0.3), _seeded(F.dropout, x, 0.3))
    x = torch.randn(5, 3, 4).transpose(0, 1)  # (3, 5, 4): feature noise (3, 5, 1)
    assert torch.equal(_seeded(MF.dropout1d, x, 0.3), _seeded(F.dropout1d, x, 0.3))


def test_backward_is_the_scaled_mask() -> None:
    """BP2 = δ ⊙ m/(1 − p): with δ = 1, the gradient is the mask, 0 or 1/(1 − p)."""
    x = torch.randn(50, dtype=torch.float64, requires_grad=True)
    out = _seeded(MF.dropout, x, 0.2)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert set(g.unique().tolist()) == {0.0, 1 / 0.8}
    assert torch.equal(out, x.detach() * g)


def test_feature_mask_shared_over_spatial_dims() -> None:
    x = torch.ones(6, 5, 3, 4, dtype=torch.float64)
    out = _seeded(MF.dropout2d, x, 0.5)
    per_channel = out.flatten(2)
    assert torch.equal(per_channel, per_channel[..., :1].expand_as(per_channel))


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("case", ["p=0", "eval", "empty"])
def test_identity_cases_return_the_input(name: str, case: str) -> None:
    """As native: p=0, training=False and empty inputs give the input itself (no node, no draw)."""
    manual, native = VARIANTS[name]
    shape = BATCHED[name]
    if case == "empty":
        shape = (0, *shape[1:])
    x = torch.randn(shape, requires_grad=True)
    p, training = (0.0, True) if case == "p=0" else (0.5, case != "eval")
    state = torch.random.get_rng_state()
    out = manual(x, p, training)
    assert torch.equal(torch.random.get_rng_state(), state)  # nothing drawn
    ref = native(x, p, training)
    assert out is x and ref is x
    assert (out.grad_fn is None) == (ref.grad_fn is None)


def test_integer_input_in_eval_mode_like_native() -> None:
    x = torch.arange(6)
    assert MF.dropout(x, 0.5, training=False) is x is F.dropout(x, 0.5, training=False)


@pytest.mark.parametrize("name", VARIANTS)
def test_inplace_same_values_computed_out_of_place(name: str) -> None:
    manual, native = VARIANTS[name]
    base = torch.randn(BATCHED[name], dtype=torch.float64, requires_grad=True)
    results = []
    for fn in (manual, native):
        x = base * 1  # a non-leaf (native cannot write into a leaf that requires grad)
        before = x.detach().clone()
        out = _seeded(fn, x, 0.4, True, inplace=True)
        (g,) = torch.autograd.grad(out.square().sum(), base)
        results.append((out.detach(), g, torch.equal(x.detach(), before)))
    (out, g, untouched), (ref, r, native_untouched) = results
    assert torch.equal(out, ref) and torch.equal(g, r)
    assert untouched and not native_untouched  # ours leaves the input alone; native overwrote it


# ------------------------------------------------------------------------------------------------
# native's shape rules, warnings and errors for the feature variants
# ------------------------------------------------------------------------------------------------

WARNING_CASES = [
    ("dropout2d", (4, 6)),  # deprecated rank: feature dropout over (N, C)
    ("dropout2d", (2, 3, 4)),  # taken as (N, C, L)
    ("dropout2d", (2, 3, 2, 2, 2)),
    ("dropout3d", (4,)),
    ("dropout3d", (3, 4)),
    ("dropout3d", (2, 3, 4)),  # unbatched after an unsqueeze
    ("dropout3d", (1, 2, 3, 2, 2, 2)),
]


@pytest.mark.parametrize(("name", "shape"), WARNING_CASES, ids=[f"{n}-{list(s)}" for n, s in WARNING_CASES])
def test_warnings_and_masks_like_native(name: str, shape: tuple[int, ...]) -> None:
    manual, native = VARIANTS[name]
    x = torch.randn(shape)
    caught = []
    for fn in (manual, native):
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            out = _seeded(fn, x, 0.5)
        caught.append((out, [(str(w.message), w.filename) for w in ws]))
    (out, ours), (ref, theirs) = caught
    assert torch.equal(out, ref)
    assert [m for m, _ in ours] == [m for m, _ in theirs] and ours
    assert all(f == __file__ for _, f in ours)  # attributed to the caller, as native's


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5)], ids=str)
def test_dropout1d_rank_error(shape: tuple[int, ...]) -> None:
    with pytest.raises(
        RuntimeError, match=f"dropout1d: Expected 2D or 3D input, but received a {len(shape)}D"
    ):
        MF.dropout1d(torch.randn(shape))
    with pytest.raises(RuntimeError):
        F.dropout1d(torch.randn(shape))


def test_dropout2d_of_a_vector_error() -> None:
    with pytest.warns(UserWarning, match="Received a 1-D input"):
        with pytest.raises(
            RuntimeError, match=r"requires at least 2 dimensions \(N, C, ...\).*got shape \(5,\)"
        ):
            MF.dropout2d(torch.randn(5))


@pytest.mark.parametrize("p", [-0.1, 1.5])
@pytest.mark.parametrize("name", VARIANTS)
def test_p_out_of_range(name: str, p: float) -> None:
    with pytest.raises(ValueError, match=f"dropout probability has to be between 0 and 1, but got {p}"):
        VARIANTS[name][0](torch.randn(2, 3, 4, 4), p)


def test_p_not_a_number() -> None:
    with pytest.raises(TypeError, match="dropout probability must be a number, got str"):
        MF.dropout(torch.randn(3), "0.5")


@pytest.mark.parametrize("name", VARIANTS)
def test_input_not_a_tensor(name: str) -> None:
    with pytest.raises(TypeError, match="expected input to be a tensor, got list"):
        VARIANTS[name][0]([1.0, 2.0])


def test_integer_input_in_training() -> None:
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        MF.dropout(torch.arange(4), 0.5)


# ------------------------------------------------------------------------------------------------
# modules
# ------------------------------------------------------------------------------------------------

MODULES = {
    "Dropout": (manual_bp.Dropout, nn.Dropout, (4, 6)),
    "Dropout1d": (manual_bp.Dropout1d, nn.Dropout1d, (2, 4, 6)),
    "Dropout2d": (manual_bp.Dropout2d, nn.Dropout2d, (2, 4, 3, 3)),
    "Dropout3d": (manual_bp.Dropout3d, nn.Dropout3d, (2, 4, 2, 3, 3)),
}


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("name", MODULES)
def test_module_like_native(name: str, inplace: bool) -> None:
    manual, native, shape = MODULES[name]
    ours, theirs = manual(0.3, inplace=inplace), native(0.3, inplace=inplace)
    assert isinstance(ours, native) and type(ours).__module__ == "manual_bp.modules"
    assert repr(ours) == repr(theirs) and ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    base = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    for training in (True, False):
        ours.train(training)
        theirs.train(training)
        results = []
        for layer in (ours, theirs):
            out = _seeded(layer, base * 1)
            (g,) = torch.autograd.grad(out.square().sum(), base)
            results.append((out.detach(), g))
        (out, g), (ref, r) = results
        assert torch.equal(out, ref) and torch.equal(g, r)
    ours.train()
    assert ours(base).grad_fn.name() == "DropoutFunctionBackward"


def test_module_rejects_p_like_native() -> None:
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        manual_bp.Dropout(1.5)


def test_convert_and_revert() -> None:
    torch.manual_seed(2)
    native = nn.Sequential(
        nn.Linear(6, 8),
        nn.Dropout(0.3),
        nn.Unflatten(1, (2, 4)),
        nn.Dropout1d(0.5),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).double()
    converted = manual_bp.convert(native)
    assert [type(m).__module__ for m in converted] == ["manual_bp.modules"] * 6
    x = torch.randn(5, 6, dtype=torch.float64)
    results = []
    for model in (converted, native):
        out = _seeded(model, x)
        out.square().sum().backward()
        results.append([out.detach()] + [p.grad for p in model.parameters()])
    for got, want in zip(*results, strict=True):
        assert torch.equal(got, want)  # the same masks, the same arithmetic
    back = manual_bp.revert(copy.deepcopy(converted))
    assert [type(m) for m in back] == [type(m) for m in native]
    for k, v in native.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


# ------------------------------------------------------------------------------------------------
# torch.func and torch.compile
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("randomness", ["different", "same"])
@pytest.mark.parametrize("name", VARIANTS)
def test_vmap_grad_randomness_like_native(name: str, randomness: str) -> None:
    """vmap draws per sample ('different') or once ('same') exactly as native under the same seed."""
    manual, native = VARIANTS[name]
    x = torch.randn(3, *BATCHED[name], dtype=torch.float64)  # three samples of a batched input
    results = []
    for fn in (manual, native):

        def loss(t: Tensor, fn: Callable[..., Tensor] = fn) -> Tensor:
            return fn(t, 0.5).sin().sum()

        torch.manual_seed(0)
        out = vmap(lambda t, fn=fn: fn(t, 0.5), randomness=randomness)(x)
        torch.manual_seed(0)
        g = vmap(grad(loss), randomness=randomness)(x)
        results.append((out, g))
    (out, g), (ref, r) = results
    assert torch.equal(out, ref) and torch.equal(g, r)
    if randomness == "different":
        assert not torch.equal(out[0] == 0, out[1] == 0)  # the masks differ per sample


@pytest.mark.parametrize("name", VARIANTS)
def test_vmap_default_randomness_refused_like_native(name: str) -> None:
    for fn in VARIANTS[name]:
        with pytest.raises(RuntimeError, match="randomness error mode"):
            vmap(lambda t, fn=fn: fn(t, 0.5))(torch.randn(2, *BATCHED[name]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dropout", "dropout2d"])
def test_compile_fullgraph_draws_like_eager(name: str) -> None:
    """Compiled, the manual dropout draws eager's masks (its bernoulli_ runs as in eager; native's
    compiled dropout would not: inductor replaces its draws)."""
    manual, native = VARIANTS[name]
    x = torch.randn(4, 3, 2, 5, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: manual(t, 0.5), fullgraph=True)
    results = []
    for fn in (lambda t: native(t, 0.5), compiled):
        out = _seeded(fn, x)
        (g,) = torch.autograd.grad(out.square().sum(), x)
        results.append((out.detach(), g))
    (out, g), (ref, r) = results
    assert torch.equal(out, ref)
    torch.testing.assert_close(g, r)


@pytest.mark.cuda
@pytest.mark.parametrize("name", VARIANTS)
def test_cuda_masks_like_native(name: str) -> None:
    """On CUDA plain dropout takes native's fused kernel's mask; the feature variants draw as on CPU."""
    manual, native = VARIANTS[name]
    x = torch.randn(BATCHED[name], device="cuda")
    out, ref = _seeded(manual, x, 0.4), _seeded(native, x, 0.4)
    assert torch.equal(out == 0, ref == 0)
    torch.testing.assert_close(out, ref)
