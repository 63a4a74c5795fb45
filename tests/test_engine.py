"""The autograd-free engine against autograd + ``torch.optim.SGD`` on a native twin."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _samples import half_squared_error_native
from torch import nn
from torch.testing import assert_close, make_tensor

import manual_bp
from manual_bp import engine
from manual_bp.engine import epoch as engine_epoch
from manual_bp.engine import losses as engine_losses
from manual_bp.engine import step as engine_step
from manual_bp.ops import ACTIVATION_NAMES as ACTIVATIONS

F64 = torch.float64
TIGHT = {"atol": 1e-12, "rtol": 1e-12}


def native_twin(net: manual_bp.MLP) -> nn.Sequential:
    mods: list[nn.Module] = []
    for layer, act in zip(net.layers, net.activations, strict=True):
        mods += [
            nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, dtype=F64),
            act.native_module(),
        ]
    twin = nn.Sequential(*mods)
    with torch.no_grad():
        for i, layer in enumerate(net.layers):
            twin[2 * i].weight.copy_(layer.weight)
            if layer.bias is not None:
                twin[2 * i].bias.copy_(layer.bias)
    return twin


def native_loss(out: torch.Tensor, target: torch.Tensor, loss: str, reduction: str) -> torch.Tensor:
    if loss == "half_squared_error":
        return half_squared_error_native(out, target, reduction)
    return F.cross_entropy(out, target, reduction=reduction)


def make_target(kind: str, batch: int, classes: int) -> torch.Tensor:
    if kind == "half_squared_error":
        return torch.rand(batch, classes, dtype=F64)
    if kind == "ce-index":
        return torch.randint(0, classes, (batch,))
    return torch.softmax(torch.randn(batch, classes, dtype=F64), -1)  # class probabilities


def assert_same_weights(net: manual_bp.MLP, twin: nn.Sequential, rtol: float = TIGHT["rtol"]) -> None:
    for i, layer in enumerate(net.layers):
        assert_close(layer.weight, twin[2 * i].weight, atol=TIGHT["atol"], rtol=rtol)
        if layer.bias is not None:
            assert_close(layer.bias, twin[2 * i].bias, atol=TIGHT["atol"], rtol=rtol)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("target_kind", ["half_squared_error", "ce-index", "ce-prob"])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_k_steps_equal_autograd_sgd(activation: str, target_kind: str, reduction: str) -> None:
    torch.manual_seed(0)
    net = manual_bp.MLP([5, 7, 6, 4], activation, dtype=F64)
    twin = native_twin(net)
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.2)
    loss = "half_squared_error" if target_kind == "half_squared_error" else "cross_entropy"
    x = make_tensor((9, 5), dtype=F64, device="cpu", low=-2, high=2)
    target = make_target(target_kind, 9, 4)
    for _ in range(4):
        got = engine.sgd_step(net, x, target, lr=0.2, loss=loss, reduction=reduction)
        optimizer.zero_grad()
        want = native_loss(twin(x), target, loss, reduction)
        want.backward()
        optimizer.step()
        assert got.shape == () and got.grad_fn is None and not got.requires_grad
        assert_close(got, want.detach(), **TIGHT)
    if activation == "selu" and reduction == "sum":
        # selu is unbounded with slope λ > 1: with 'sum' over 9 rows and lr 0.2 the weights grow to
        # ~1e7 in four steps, where the engine's and autograd's orders of summation differ by
        # 2.6e-12 relative (measured): rounding, amplified, not a formula
        assert_same_weights(net, twin, rtol=1e-11)
    else:
        assert_same_weights(net, twin)
    assert not torch.equal(net.layers[0].weight, twin[0].weight.detach() * 0)  # sanity: weights are real


@pytest.mark.parametrize(
    ("activation", "output_activation", "bias"),
    [
        ("tanh", "identity", True),
        ("gelu", "identity", False),
        ("relu", "sigmoid", False),
        ("silu", None, True),
    ],
)
@pytest.mark.parametrize("loss", ["half_squared_error", "cross_entropy"])
def test_output_activation_and_no_bias(
    activation: str, output_activation: str | None, bias: bool, loss: str
) -> None:
    torch.manual_seed(1)
    net = manual_bp.MLP([4, 6, 5, 3], activation, output_activation, bias=bias, dtype=F64)
    twin = native_twin(net)
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.1)
    x = make_tensor((8, 4), dtype=F64, device="cpu")
    target = make_target("ce-index" if loss == "cross_entropy" else loss, 8, 3)
    for _ in range(3):
        got = engine.sgd_step(net, x, target, 0.1, loss)
        optimizer.zero_grad()
        want = native_loss(twin(x), target, loss, "mean")
        want.backward()
        optimizer.step()
        assert_close(got, want.detach(), **TIGHT)
    assert_same_weights(net, twin)


@pytest.mark.parametrize("activation", ["sigmoid", "gelu", "identity"])
def test_single_layer_network(activation: str) -> None:
    torch.manual_seed(8)
    net = manual_bp.MLP([4, 3], activation, dtype=F64)
    twin = native_twin(net)
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.4)
    x, target = torch.randn(6, 4, dtype=F64), torch.rand(6, 3, dtype=F64)
    for _ in range(3):
        got = engine.sgd_step(net, x, target, 0.4)
        optimizer.zero_grad()
        want = native_loss(twin(x), target, "half_squared_error", "mean")
        want.backward()
        optimizer.step()
        assert_close(got, want.detach(), **TIGHT)
    assert_same_weights(net, twin)


def test_deltas_are_the_gradients_of_every_pre_activation() -> None:
    torch.manual_seed(2)
    net = manual_bp.MLP([4, 6, 5, 3], "softplus", dtype=F64)
    twin = native_twin(net)
    x = make_tensor((7, 4), dtype=F64, device="cpu", requires_grad=True)
    target = torch.rand(7, 3, dtype=F64)
    before = copy.deepcopy(net.state_dict())
    trace = engine.deltas(net, x.detach(), target, reduction="sum")
    for key, value in net.state_dict().items():  # no update
        assert torch.equal(value, before[key])
    # autograd reference: keep the gradient of every pre-activation x_n
    pre: list[torch.Tensor] = []
    y: torch.Tensor = x
    ys = [x]
    for i in range(0, len(twin), 2):
        x_n = twin[i](y)
        x_n.retain_grad()
        pre.append(x_n)
        y = twin[i + 1](x_n)
        ys.append(y)
    want = native_loss(y, target, "half_squared_error", "sum")
    want.backward()
    assert_close(trace.loss, want.detach(), **TIGHT)
    assert len(trace.xs) == len(trace.ys) == len(trace.deltas) == 4
    assert_close(trace.deltas[0], x.grad, **TIGHT)  # ∂C/∂y_0, the input gradient
    for n in range(1, 4):
        assert_close(trace.xs[n], pre[n - 1].detach(), **TIGHT)
        assert_close(trace.ys[n], ys[n].detach(), **TIGHT)
        assert_close(trace.deltas[n], pre[n - 1].grad, **TIGHT)
    for n in range(3):
        assert_close(trace.weight_grads[n], twin[2 * n].weight.grad, **TIGHT)
        assert_close(trace.bias_grads[n], twin[2 * n].bias.grad, **TIGHT)


def test_deltas_shrink_through_a_deep_sigmoid_net() -> None:
    torch.manual_seed(3)
    net = manual_bp.MLP([16, *[32] * 9, 4], dtype=F64)
    trace = engine.deltas(net, torch.randn(64, 16, dtype=F64), torch.rand(64, 4, dtype=F64))
    norms = [float(d.norm()) for d in trace.deltas[1:]]
    # σ′ ≤ ¼: each step of BP2 shrinks δ by about ‖W‖/4 < 1 at nn.Linear's initialisation
    assert all(lower < upper for lower, upper in zip(norms, norms[1:], strict=False))
    assert norms[0] < 1e-3 * norms[-1]


def test_cross_entropy_on_an_activated_output_matches_autograd() -> None:
    """With a sigmoid output, cross_entropy sees σ(x_N) as logits, as ``cross_entropy(mlp(x), t)`` does."""
    torch.manual_seed(4)
    net = manual_bp.MLP([3, 5, 4], "sigmoid", dtype=F64)
    x, t = torch.randn(6, 3, dtype=F64), torch.randint(0, 4, (6,))
    trace = engine.deltas(net, x, t, loss="cross_entropy")
    net.zero_grad()
    F.cross_entropy(net(x), t).backward()
    for layer, grad in zip(net.layers, trace.weight_grads, strict=True):
        assert_close(grad, layer.weight.grad, **TIGHT)


def test_leading_dims_equal_flattened_batch() -> None:
    torch.manual_seed(5)
    net = manual_bp.MLP([4, 5, 3], "tanh", dtype=F64)
    flat = copy.deepcopy(net)
    x, t = torch.randn(2, 3, 4, dtype=F64), torch.randint(0, 3, (2, 3))
    got = engine.sgd_step(net, x, t, 0.3, "cross_entropy")
    want = engine.sgd_step(flat, x.reshape(6, 4), t.reshape(6), 0.3, "cross_entropy")
    assert_close(got, want, rtol=0, atol=0)
    for a, b in zip(net.parameters(), flat.parameters(), strict=True):
        assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empty_batch_changes_nothing(reduction: str) -> None:
    net = manual_bp.MLP([3, 4, 2], dtype=F64)
    before = copy.deepcopy(net.state_dict())
    loss = engine.sgd_step(
        net, torch.empty(0, 3, dtype=F64), torch.empty(0, 2, dtype=F64), 0.1, reduction=reduction
    )
    want = manual_bp.functional.half_squared_error(torch.empty(0, 2), torch.empty(0, 2), reduction)
    assert math.isnan(loss) if reduction == "mean" else float(loss) == 0.0
    assert math.isnan(want) if reduction == "mean" else float(want) == 0.0  # as torch reduces
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key])


def test_no_autograd_involved() -> None:
    net = manual_bp.MLP([3, 4, 2])  # parameters require grad
    x = torch.randn(5, 3, requires_grad=True)
    with torch.enable_grad():
        loss = engine.sgd_step(net, x, torch.rand(5, 2), 0.5)
    assert loss.grad_fn is None and not loss.requires_grad
    assert all(p.grad is None for p in net.parameters()) and x.grad is None
    assert all(p.requires_grad for p in net.parameters())


def test_autocast_is_switched_off_inside() -> None:
    torch.manual_seed(7)
    net = manual_bp.MLP([3, 4, 2], "gelu")
    other = copy.deepcopy(net)
    x, t = torch.randn(5, 3), torch.rand(5, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = engine.sgd_step(net, x, t, 0.1)
        trace = engine.deltas(net, x, t)
    assert got.dtype == torch.float32 and all(y.dtype == torch.float32 for y in trace.ys)
    assert_close(got, engine.sgd_step(other, x, t, 0.1), rtol=0, atol=0)
    for a, b in zip(net.parameters(), other.parameters(), strict=True):
        assert_close(a, b, rtol=0, atol=0)


def test_unfused_mlp_trains_the_same() -> None:
    torch.manual_seed(6)
    net = manual_bp.MLP([3, 4, 2], "elu", dtype=F64)
    other = copy.deepcopy(net)
    other.fused = False
    x, t = torch.randn(5, 3, dtype=F64), torch.rand(5, 2, dtype=F64)
    assert_close(engine.sgd_step(net, x, t, 0.1), engine.sgd_step(other, x, t, 0.1), rtol=0, atol=0)
    for a, b in zip(net.parameters(), other.parameters(), strict=True):
        assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------- errors


@pytest.fixture
def net() -> manual_bp.MLP:
    return manual_bp.MLP([3, 4, 2])


def test_not_an_mlp(net: manual_bp.MLP) -> None:
    x, t = torch.randn(5, 3), torch.rand(5, 2)
    with pytest.raises(TypeError, match="trains a manual_bp.MLP, got Sequential"):
        engine.sgd_step(nn.Sequential(nn.Linear(3, 2)), x, t, 0.1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got Linear"):
        engine.deltas(manual_bp.Linear(3, 2), x, t)  # type: ignore[arg-type]


@pytest.mark.parametrize("lr", [0.0, -0.1, math.nan, math.inf, -math.inf])
def test_bad_learning_rate(net: manual_bp.MLP, lr: float) -> None:
    with pytest.raises(ValueError, match="lr must be positive and finite"):
        engine.sgd_step(net, torch.randn(5, 3), torch.rand(5, 2), lr)


@pytest.mark.parametrize("lr", ["0.1", None, True, torch.tensor([0.1])])
def test_learning_rate_of_wrong_type(net: manual_bp.MLP, lr: object) -> None:
    with pytest.raises(TypeError, match="lr must be a real number"):
        engine.sgd_step(net, torch.randn(5, 3), torch.rand(5, 2), lr)  # type: ignore[arg-type]


def test_target_shape_must_match(net: manual_bp.MLP) -> None:
    with pytest.raises(ValueError, match=r"target shape \(5, 3\) must equal the output shape \(5, 2\)"):
        engine.sgd_step(net, torch.randn(5, 3), torch.rand(5, 3), 0.1)
    with pytest.raises(ValueError, match=r"target shape \(5,\) must equal"):
        engine.deltas(net, torch.randn(5, 3), torch.rand(5))
    with pytest.raises(ValueError, match=r"class-index target must have shape \(5,\)"):
        engine.sgd_step(net, torch.randn(5, 3), torch.zeros(5, 1, dtype=torch.long), 0.1, "cross_entropy")
    with pytest.raises(ValueError, match=r"class indices must lie in \[0, 2\)"):
        engine.sgd_step(net, torch.randn(2, 3), torch.tensor([0, 2]), 0.1, "cross_entropy")
    with pytest.raises(TypeError, match="class-index targets must be int64"):
        engine.sgd_step(net, torch.randn(2, 3), torch.tensor([0, 1], dtype=torch.int32), 0.1, "cross_entropy")
    with pytest.raises(TypeError, match="floating-point"):
        engine.sgd_step(net, torch.randn(2, 3), torch.tensor([0, 1]), 0.1)


def test_unknown_loss_and_reduction(net: manual_bp.MLP) -> None:
    x, t = torch.randn(5, 3), torch.rand(5, 2)
    with pytest.raises(
        ValueError, match="loss must be one of 'half_squared_error', 'cross_entropy', got 'mse'"
    ):
        engine.sgd_step(net, x, t, 0.1, loss="mse")
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum', got 'none'"):
        engine.sgd_step(net, x, t, 0.1, reduction="none")


def test_input_checks(net: manual_bp.MLP) -> None:
    with pytest.raises(ValueError, match=r"x must have shape \(\*, 3\).*got \(5, 4\)"):
        engine.sgd_step(net, torch.randn(5, 4), torch.rand(5, 2), 0.1)
    with pytest.raises(TypeError, match="same dtype"):
        engine.sgd_step(net, torch.randn(5, 3, dtype=F64), torch.rand(5, 2, dtype=F64), 0.1)
    with pytest.raises(TypeError, match="floating-point"):
        engine.sgd_step(net, torch.ones(5, 3, dtype=torch.long), torch.rand(5, 2), 0.1)


@pytest.mark.parametrize("chunk", [None, 1, 16], ids=["one-chunk", "chunk-per-batch", "chunks-of-2"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shuffle", [False, True], ids=["in-order", "shuffled"])
@pytest.mark.parametrize("loss", ["half_squared_error", "cross_entropy", "cross_entropy_probabilities"])
def test_sgd_epoch_is_sgd_step_over_the_batches(
    loss: str, shuffle: bool, reduction: str, chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the epoch computes its losses from the kept outputs once per chunk of output elements (15
    # per batch of 5 here: 16 makes chunks of two batches, the last chunk the odd batch of 3 rows)
    if chunk is not None:
        monkeypatch.setattr(engine_epoch, "_CHUNK", chunk)
    torch.manual_seed(0)
    a = manual_bp.MLP([5, 7, 3], activation="tanh", output_activation="identity", dtype=torch.float64)
    b = copy.deepcopy(a)
    x = torch.randn(23, 5, dtype=torch.float64)
    t = torch.randint(0, 3, (23,)) if loss == "cross_entropy" else torch.rand(23, 3, dtype=torch.float64)
    if loss == "cross_entropy_probabilities":
        loss, t = "cross_entropy", t.softmax(-1)
    gen = torch.Generator().manual_seed(7)
    mean_loss = engine.sgd_epoch(
        a, x, t, 0.3, batch_size=5, loss=loss, reduction=reduction, shuffle=shuffle, generator=gen
    )
    order = torch.randperm(23, generator=torch.Generator().manual_seed(7)) if shuffle else torch.arange(23)
    losses = [
        engine.sgd_step(b, x[order[i : i + 5]], t[order[i : i + 5]], 0.3, loss=loss, reduction=reduction)
        for i in range(0, 23, 5)
    ]
    assert len(losses) == 5  # the last batch holds 3 rows
    assert_close(mean_loss, torch.stack(losses).mean(), rtol=1e-12, atol=1e-12)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert_close(p, q, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_sgd_epoch_loss_in_float16_keeps_the_per_batch_scales_exact() -> None:
    # 30000 batches of one row: each batch's 'mean' scale 0.5 / 1 / 30000 is subnormal in float16
    # (rounded by 0.14 %), so scaling in float16 returned 0.5005; every batch's loss here is
    # exactly 0.5 (output 0, target 1, and an lr so small that no weight moves), so the mean is too.
    net = manual_bp.MLP([1, 1], output_activation="identity", dtype=torch.float16)
    with torch.no_grad():
        net.layers[0].weight.zero_()
        net.layers[0].bias.zero_()
    rows = 30000
    x = torch.ones(rows, 1, dtype=torch.float16)
    t = torch.ones(rows, 1, dtype=torch.float16)
    loss = engine.sgd_epoch(net, x, t, 1e-30, batch_size=1)
    assert loss.dtype == torch.float16
    assert loss.item() == 0.5
    assert net.layers[0].weight.abs().max().item() == 0.0  # the premise: nothing moved


@pytest.mark.parametrize("batch_size", [0, -2, 2.5, True])
def test_sgd_epoch_rejects_a_bad_batch_size(net: manual_bp.MLP, batch_size: object) -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        engine.sgd_epoch(net, torch.randn(4, net.sizes[0]), torch.rand(4, net.sizes[-1]), 0.1, batch_size)  # type: ignore[arg-type]


@pytest.mark.parametrize("loss", ["half_squared_error", "cross_entropy"])
def test_results_are_ordinary_tensors(loss: str) -> None:
    """The steps run in inference mode; the losses the caller gets must not be inference tensors
    (autograd can use them afterwards), and the caches built there serve ``deltas`` after it."""
    torch.manual_seed(21)
    engine_losses.ones.cache_clear()  # so that the steps below make them
    engine_losses.minus_ones.cache_clear()
    net = manual_bp.MLP([3, 4, 2], output_activation="identity")
    x = torch.randn(6, 3)
    t = torch.randint(0, 2, (6,)) if loss == "cross_entropy" else torch.rand(6, 2)
    step_loss = engine.sgd_step(net, x, t, 0.1, loss=loss)
    epoch_loss = engine.sgd_epoch(net, x, t, 0.1, batch_size=4, loss=loss)
    assert not step_loss.is_inference() and not epoch_loss.is_inference()
    w = torch.tensor(2.0, requires_grad=True)
    (step_loss * w + epoch_loss * w).backward()  # usable in a graph
    assert_close(w.grad, step_loss + epoch_loss)
    # the cached constants were first made during those steps, in inference mode: still ordinary
    assert not engine_losses.ones(4, torch.float32, x.device).is_inference()
    assert not engine_losses.minus_ones(4, torch.float32, x.device).is_inference()
    trace = engine.deltas(net, torch.randn(4, 3), t[:4], loss=loss)
    assert torch.isfinite(trace.loss)


@pytest.mark.parametrize("step", ["sgd_step", "sgd_epoch"])
def test_updates_bump_the_version_of_saved_weights(step: str) -> None:
    """A graph recorded before a step saved the weights: backward through it afterwards must raise
    (the in-place update is seen), as after an in-place update under no_grad."""
    net = manual_bp.MLP([3, 4, 2])
    x, t = torch.randn(5, 3), torch.rand(5, 2)
    out = net(x)  # saves W_1 for backward
    if step == "sgd_step":
        engine.sgd_step(net, x, t, 0.1)
    else:
        engine.sgd_epoch(net, x, t, 0.1, batch_size=2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def _count_full_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Wrap the engine's full argument checks; the list returned grows by one per call."""
    calls: list[int] = []
    real_check = engine_step.check_call

    def counting_check(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real_check(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine_step, "check_call", counting_check)
    return calls


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sgd_step_fast_path_equals_the_checked_path(reduction: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual call (a float lr, a 2-D batch) skips the full argument checks; the step it takes
    must be the one the checked path takes, bit for bit, and the checked path must still run for
    anything else (here the fast test is forced off)."""
    torch.manual_seed(5)
    fast = manual_bp.MLP([4, 6, 3], activation="tanh")
    checked = copy.deepcopy(fast)
    x, t = torch.randn(9, 4), torch.rand(9, 3)
    calls = _count_full_checks(monkeypatch)
    fast_losses = [engine.sgd_step(fast, x, t, 0.2, reduction=reduction) for _ in range(3)]
    assert calls == []  # the fast path took them
    monkeypatch.setattr(engine_step, "_common_call", lambda *args: False)
    checked_losses = [engine.sgd_step(checked, x, t, 0.2, reduction=reduction) for _ in range(3)]
    assert len(calls) == 3
    for a, b in zip(fast_losses, checked_losses, strict=True):
        assert torch.equal(a, b)
    for p, q in zip(fast.parameters(), checked.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    "case",
    ["int-lr", "3-d-input", "float64-target", "cross_entropy", "autocast"],
)
def test_sgd_step_unusual_calls_take_the_checked_path(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    net = manual_bp.MLP([4, 5, 3], output_activation="identity")
    x, t = torch.randn(6, 4), torch.rand(6, 3)
    kwargs: dict[str, object] = {}
    lr: object = 0.1
    if case == "int-lr":
        lr = 1
    elif case == "3-d-input":
        x, t = x.reshape(2, 3, 4), t.reshape(2, 3, 3)
    elif case == "float64-target":
        t = t.double()
    elif case == "cross_entropy":
        t = torch.randint(0, 3, (6,))
        kwargs["loss"] = "cross_entropy"
    calls = _count_full_checks(monkeypatch)
    if case == "float64-target":
        with pytest.raises(TypeError, match="same dtype"):
            engine.sgd_step(net, x, t, lr, **kwargs)  # type: ignore[arg-type]
    elif case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            engine.sgd_step(net, x, t, lr, **kwargs)  # type: ignore[arg-type]
    else:
        engine.sgd_step(net, x, t, lr, **kwargs)  # type: ignore[arg-type]
    assert calls == [1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("loss", ["half_squared_error", "cross_entropy"])
def test_sgd_epoch_in_half_precision_takes_sgd_steps(loss: str, dtype: torch.dtype) -> None:
    # the steps are the same ops either way: parameters equal bit for bit; the epoch's loss comes
    # from the kept outputs (per sample, summed in float32) and the steps' from per-batch sums in
    # the dtype, so the two agree to the dtype's rounding (a few eps of the loss)
    torch.manual_seed(3)
    a = manual_bp.MLP([5, 7, 3], activation="tanh", output_activation="identity", dtype=dtype)
    b = copy.deepcopy(a)
    x = torch.randn(23, 5, dtype=dtype)
    t = torch.randint(0, 3, (23,)) if loss == "cross_entropy" else torch.rand(23, 3, dtype=dtype)
    mean_loss = engine.sgd_epoch(a, x, t, 0.3, batch_size=5, loss=loss)
    losses = [engine.sgd_step(b, x[i : i + 5], t[i : i + 5], 0.3, loss=loss) for i in range(0, 23, 5)]
    assert mean_loss.dtype == dtype
    eps = torch.finfo(dtype).eps
    assert_close(mean_loss.float(), torch.stack(losses).float().mean(), rtol=4 * eps, atol=0.0)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)
