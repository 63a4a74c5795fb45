"""Feedback rules (manual_bp.feedback): each rule's update against the update written out by hand,
on every path that runs it (fused MLP, per-layer layers, a converted model, the engine), plus
seeding, checkpoints, DDP, alignment metrics, the Lightning integration and the errors."""

from __future__ import annotations

import copy
import functools
import io
import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import manual_bp
from manual_bp import feedback
from manual_bp.engine import sgd_step
from manual_bp.lightning import DigitsDataModule, FeedbackAlignment, ManualBPModule

RULES = ("fa", "dfa", "sign", "brsf", "frsf")


def _matrix(layer: nn.Module, rule: str) -> torch.Tensor:
    """B_n of the rule, from the layer's buffers, written out as the rule's definition says."""
    w = layer.weight.detach()
    if rule == "backprop":
        return w
    if rule in ("fa", "dfa"):
        return layer.feedback_weight
    if rule == "sign":
        return w.sign()
    return layer.feedback_weight.abs() * w.sign()  # brsf, frsf: |R| ⊙ sign(W)


def _by_hand(layers: list[nn.Module], rule: str, x: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
    """∂c/∂W_n of the rule for a sigmoid network and c = mean ½‖y_N − t‖²: FF, BP1, then BP2
    through B_n (dfa: e B_n with e = δ_N), BP3 δ_{n+1}ᵀ y_n unchanged."""
    ys, n_layers = [x], len(layers)
    for layer in layers:
        ys.append(torch.sigmoid(ys[-1] @ layer.weight.detach().T + layer.bias.detach()))
    fprime = [y * (1 - y) for y in ys]
    deltas: list[torch.Tensor | None] = [None] * (n_layers + 1)
    deltas[n_layers] = (ys[-1] - t) / x.shape[0] * fprime[-1]  # BP1
    grads: list[torch.Tensor] = [torch.empty(0)] * n_layers
    for n in range(n_layers - 1, -1, -1):
        grads[n] = deltas[n + 1].T @ ys[n]  # BP3
        if n > 0:
            source = deltas[n_layers] if rule == "dfa" else deltas[n + 1]
            deltas[n] = (source @ _matrix(layers[n], rule)) * fprime[n]  # BP2 of the rule
    return grads


def _data(sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(7, sizes[0], generator=gen, dtype=torch.float64)
    return x, torch.rand(7, sizes[-1], generator=gen, dtype=torch.float64)


def _grads(net: nn.Module, layers: list[nn.Module], loss: torch.Tensor) -> list[torch.Tensor]:
    net.zero_grad()
    loss.backward()
    return [layer.weight.grad.clone() for layer in layers]


@pytest.mark.parametrize("sizes", [[4, 5, 3], [4, 5, 6, 3]], ids=["2 layers", "3 layers"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("path", ["fused", "fused loss", "per layer", "converted"])
def test_rule_update_equals_the_one_written_out_by_hand(rule: str, path: str, sizes: list[int]) -> None:
    # (with three layers dfa's e B_1 differs from fa's δ_2 B_1)
    x, t = _data(sizes)
    torch.manual_seed(0)
    net = manual_bp.MLP(sizes, feedback=rule, fused=path != "per layer", dtype=torch.float64, feedback_seed=3)
    model, layers = net, list(net.layers)
    if path == "converted":
        seq = nn.Sequential(*(m for layer in net.layers for m in (copy.deepcopy(layer), nn.Sigmoid())))
        model = manual_bp.convert(manual_bp.revert(seq), feedback=rule, feedback_seed=3)
        layers = list(model[::2])
        model(x)  # dfa: the (D_N, D_n) matrices are drawn after the first forward
    if path == "fused loss":
        got = _grads(model, layers, net.loss(x, t))
    else:
        got = _grads(model, layers, 0.5 * (model(x) - t).pow(2).sum(-1).mean())
    expected = _by_hand(layers, rule, x, t)  # (brsf: with the R this forward drew)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)
    backprop = _by_hand(layers, "backprop", x, t)
    assert not torch.allclose(got[0], backprop[0])  # the rule changed the lower layer's update
    torch.testing.assert_close(got[-1], backprop[-1], rtol=1e-12, atol=1e-14)  # BP3 of the top: unchanged


def test_dfa_feeds_every_layer_from_the_output_error_not_from_the_layer_above() -> None:
    sizes = [4, 5, 6, 3]
    x, t = _data(sizes)
    net = manual_bp.MLP(sizes, feedback="dfa", dtype=torch.float64)
    before = _grads(net, list(net.layers), net.loss(x, t))
    with torch.no_grad():
        net.layers[2].feedback_weight.mul_(-3.0)  # B_2 feeds layer 1 only: δ_2 = (e B_2) ⊙ f′(x_2)
    after = _grads(net, list(net.layers), net.loss(x, t))
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)  # δ_1 = (e B_1) ⊙ f′(x_1): unchanged
    assert not torch.allclose(after[1], before[1])
    torch.testing.assert_close(after[2], before[2], rtol=0, atol=0)


@pytest.mark.parametrize("rule", RULES)
def test_engine_step_applies_the_rule_update(rule: str) -> None:
    sizes = [4, 5, 6, 3]
    x, t = _data(sizes)
    net = manual_bp.MLP(sizes, feedback=rule, dtype=torch.float64)
    twin = copy.deepcopy(net)  # brsf: draws the same R (draw k is seeded by k)
    grads = _grads(twin, list(twin.layers), twin.loss(x, t))
    sgd_step(net, x, t, lr=0.5)
    for layer, before, g in zip(net.layers, twin.layers, grads, strict=True):
        torch.testing.assert_close(layer.weight, before.weight - 0.5 * g, rtol=1e-12, atol=1e-14)


def test_engine_sign_rule_reads_the_current_weights_every_step() -> None:
    sizes = [3, 4, 2]
    x, t = _data(sizes)
    net = manual_bp.MLP(sizes, feedback="sign", dtype=torch.float64)
    for _ in range(3):
        twin = copy.deepcopy(net)
        grads = _grads(twin, list(twin.layers), twin.loss(x, t))
        expected = [layer.weight - 4.0 * g for layer, g in zip(twin.layers, grads, strict=True)]
        manual_bp.engine.sgd_epoch(net, x, t, lr=4.0, batch_size=7, shuffle=False)
        for layer, e in zip(net.layers, expected, strict=True):
            torch.testing.assert_close(layer.weight, e, rtol=1e-12, atol=1e-14)


# -- convolutions ------------------------------------------------------------------------------------
def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect"),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(2 * 5 * 5, 4),
    ).double()


def _through(native, x, weight, bias, matrix, **kw):  # noqa: ANN001, ANN202
    """The layer's output, whose input gradient is BP2 through ``matrix``: native ops only."""
    out = native(x.detach(), weight, bias, **kw)  # BP3 from the layer's δ
    probe = native(x, matrix, None, **kw)  # its x-gradient is δ read through the matrix
    return out + probe - probe.detach()


@pytest.mark.parametrize("rule", ["fa", "sign", "frsf"])
def test_convert_a_cnn_with_a_rule_matches_native_ops_reading_b(rule: str) -> None:
    model = manual_bp.convert(_cnn(), feedback=rule, feedback_seed=1)
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([1, 3])
    F.cross_entropy(model(x), target).backward()
    c1, c2, lin = model[0], model[2], model[5]
    ref_x = x.detach().clone().requires_grad_(True)
    params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
    w1, b1, w2, b2, w3, b3 = params
    h = torch.tanh(_through(F.conv2d, ref_x, w1, b1, _matrix(c1, rule), padding=1))
    h = F.pad(h, (1, 1, 1, 1), mode="reflect")
    h = torch.tanh(_through(F.conv2d, h, w2, b2, _matrix(c2, rule)))
    out = _through(F.linear, h.flatten(1), w3, b3, _matrix(lin, rule))
    F.cross_entropy(out, target).backward()
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-12, atol=1e-14)
    for p, q in zip(model.parameters(), params, strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-14)
    assert c1.feedback_weight.shape == c1.weight.shape if rule != "sign" else True


def test_dfa_on_a_cnn_hands_each_layer_e_times_its_matrix() -> None:
    model = manual_bp.convert(_cnn(), feedback="dfa")
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    out = model(x)
    assert model[0].feedback_weight.shape == (4, 1 * 5 * 5)  # (D_N, C·H·W of its input)
    assert model[2].feedback_weight.shape == (4, 3 * 5 * 5)
    assert model[5].feedback_weight.shape == (4, 50)
    F.cross_entropy(out, torch.tensor([0, 2])).backward()
    e = model._feedback_hub.last.error  # δ_N = ∂c/∂x_N of the top layer (the logits), rows: samples
    expected = torch.softmax(out.detach(), -1) - F.one_hot(torch.tensor([0, 2]), 4)
    torch.testing.assert_close(e, expected / 2)
    torch.testing.assert_close(x.grad, (e @ model[0].feedback_weight).view_as(x))


def test_dfa_model_runs_without_a_graph_before_its_matrices_are_drawn() -> None:
    model = manual_bp.convert(_cnn(), feedback="dfa")
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        plain = model(x)  # e.g. a shape probe before training: no BP2, nothing drawn
    assert model[5].feedback_weight is None
    torch.testing.assert_close(plain, manual_bp.revert(model)(x))
    model(x.requires_grad_(True)).sum().backward()
    assert model[5].feedback_weight.shape == (4, 50)


def test_conv_transpose_rule_reads_b_in_bp2() -> None:
    layer = manual_bp.convert(nn.ConvTranspose2d(2, 3, 2, stride=2).double(), feedback="fa")
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    layer(x).backward(grad)
    ref_x = x.detach().clone().requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    _through(F.conv_transpose2d, ref_x, w, layer.bias.detach(), layer.feedback_weight, stride=2).backward(
        grad
    )
    torch.testing.assert_close(x.grad, ref_x.grad)
    torch.testing.assert_close(layer.weight.grad, w.grad)


# -- seeding, checkpoints, revert ------------------------------------------------------------------
def test_feedback_matrices_are_seeded_apart_from_the_global_random_state() -> None:
    torch.manual_seed(0)
    a = manual_bp.MLP([4, 5, 3], feedback="fa", feedback_seed=7)
    torch.manual_seed(1)
    b = manual_bp.MLP([4, 5, 3], feedback="fa", feedback_seed=7)
    c = manual_bp.MLP([4, 5, 3], feedback="fa", feedback_seed=8)
    for la, lb, lc in zip(a.layers, b.layers, c.layers, strict=True):
        torch.testing.assert_close(la.feedback_weight, lb.feedback_weight, rtol=0, atol=0)
        assert not torch.equal(la.feedback_weight, lc.feedback_weight)
    assert not torch.equal(a.layers[0].weight, b.layers[0].weight)  # the weights follow the global seed
    # Kaiming-uniform as torch.nn, times the scale: within ±1/√fan_in
    bound = 1 / math.sqrt(4)
    assert a.layers[0].feedback_weight.abs().max() <= bound
    assert a.layers[0].feedback_weight.abs().max() > 0.8 * bound
    scaled = manual_bp.MLP([4, 5, 3], feedback="fa", feedback_seed=7, feedback_scale=0.5)
    torch.testing.assert_close(scaled.layers[0].feedback_weight, 0.5 * a.layers[0].feedback_weight)


def test_brsf_redraws_every_training_batch_and_resumes_the_same_draws() -> None:
    net = manual_bp.MLP([4, 5, 3], feedback="brsf")
    x = torch.randn(3, 4)
    net(x)
    first = net.layers[1].feedback_weight.clone()
    state = copy.deepcopy(net.state_dict())
    net(x)
    second = net.layers[1].feedback_weight.clone()
    assert not torch.equal(first, second)
    with torch.no_grad():
        net(x)  # not a training step: no new draw
    torch.testing.assert_close(net.layers[1].feedback_weight, second, rtol=0, atol=0)
    resumed = manual_bp.MLP([4, 5, 3], feedback="brsf")
    resumed.load_state_dict(state)
    resumed(x)
    torch.testing.assert_close(resumed.layers[1].feedback_weight, second, rtol=0, atol=0)
    assert int(resumed.layers[1].feedback_draws) == 2


@pytest.mark.parametrize("rule", ["fa", "dfa", "frsf"])
def test_checkpoint_round_trip_keeps_the_feedback_matrices(rule: str) -> None:
    model = manual_bp.convert(_cnn(), feedback=rule, feedback_seed=4)
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    model(x)  # dfa: drawn now
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert {k for k in state if k.endswith("feedback_weight")} == {"0.feedback_weight", "2.feedback_weight",
                                                                    "5.feedback_weight"}  # fmt: skip
    fresh = manual_bp.convert(_cnn(), feedback=rule, feedback_seed=99)  # other matrices until loaded
    fresh.load_state_dict(state)  # dfa: before any forward too
    for key, value in state.items():
        torch.testing.assert_close(fresh.state_dict()[key], value, rtol=0, atol=0)
    target = torch.tensor([1, 2])
    grads = []
    for m in (model, fresh):
        m.zero_grad()
        F.cross_entropy(m(x.clone().requires_grad_(True)), target).backward()
        grads.append([p.grad for p in m.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_revert_removes_rule_buffers_and_hook() -> None:
    native = _cnn()
    model = manual_bp.convert(native, feedback="dfa")
    model(torch.randn(2, 1, 5, 5, dtype=torch.float64))
    back = manual_bp.revert(model)
    assert list(back.state_dict()) == list(native.state_dict())
    assert not back._forward_hooks and all(type(m).__module__.startswith("torch") for m in back.modules())
    assert "feedback_rule" not in back[0].__dict__


def test_gradient_check_of_a_rule_checks_the_seeds_bp2() -> None:
    from manual_bp.lightning.callbacks import compare_gradients

    module = ManualBPModule(sizes=[64, 8, 10], feedback="fa")
    module.task = "classification"
    x, y = torch.randn(5, 64), torch.randint(0, 10, (5,))
    assert max(compare_gradients(module, x, y).values()) < 1e-12
    assert module.net.layers[0].feedback_rule == "fa"  # the network keeps its rule


# -- alignment -------------------------------------------------------------------------------------
def test_weight_alignment_is_the_angle_between_w_and_b() -> None:
    net = manual_bp.MLP([4, 5, 3], feedback="sign")
    got = feedback.weight_alignment(net)
    for n, layer in enumerate(net.layers):
        w, s = layer.weight.detach().flatten(), layer.weight.detach().sign().flatten()
        expected = math.degrees(math.acos(float(w @ s / (w.norm() * s.norm()))))
        assert got[f"layers.{n}"] == pytest.approx(expected)
    assert 0 < got["layers.0"] < 90  # sign-concordant: less than a right angle
    dfa = manual_bp.MLP([4, 5, 3], feedback="dfa")
    assert list(feedback.weight_alignment(dfa)) == ["layers.1"]  # B_0 is (3, 4), W_0 (5, 4)


def test_gradient_alignment_is_zero_when_b_equals_w_and_leaves_grads_alone() -> None:
    net = manual_bp.MLP([4, 5, 6, 3], feedback="fa", dtype=torch.float64)
    x, t = _data([4, 5, 6, 3])

    def loss_of() -> torch.Tensor:
        return net.loss(x, t)

    far = feedback.gradient_alignment(net, loss_of)
    assert set(far) == {"layers.0", "layers.1", "layers.2"}
    assert far["layers.2"] == pytest.approx(0.0, abs=1e-5)  # BP3 of the top layer is unchanged
    assert far["layers.0"] > 1
    for layer in net.layers:
        layer.feedback_weight.copy_(layer.weight.detach())  # B = W: the rule is backprop
        assert layer.weight.grad is None
    for value in feedback.gradient_alignment(net, loss_of).values():
        assert value == pytest.approx(0.0, abs=1e-5)


def test_lightning_logs_and_plots_alignment(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    module = ManualBPModule(sizes=[64, 8, 10], feedback="fa", lr=1.0)
    align = FeedbackAlignment(every_n_steps=2)
    trainer = pl.Trainer(accelerator="cpu", max_steps=4, logger=pl.loggers.CSVLogger(str(tmp_path)),
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         num_sanity_val_steps=0, limit_val_batches=0, callbacks=[align],
                         default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(module, DigitsDataModule())
    assert align.steps == [0, 2]
    assert set(align.angles) == {"weight/layers.0", "weight/layers.1", "grad/layers.0", "grad/layers.1"}
    logged = open(tmp_path / "lightning_logs" / "version_0" / "metrics.csv").readline()
    assert "align/grad/layers.0" in logged and "align/weight/layers.1" in logged
    assert (tmp_path / "lightning_logs" / "version_0" / "alignment.png").stat().st_size > 1000


@pytest.mark.slow
def test_ddp_spawn_with_a_rule_equals_one_process(tmp_path) -> None:  # noqa: ANN001
    def fit(devices: int, batch_size: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        net = manual_bp.MLP([64, 12, 10], dtype=torch.float64)
        module = ManualBPModule(net=net, lr=2.0, feedback="fa", feedback_seed=3)
        strategy = "ddp_spawn" if devices > 1 else "auto"
        trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy=strategy,
                             precision="64-true", max_epochs=2, limit_train_batches=6, limit_val_batches=0,
                             logger=False, enable_progress_bar=False, enable_model_summary=False,
                             enable_checkpointing=False, num_sanity_val_steps=0,
                             callbacks=[FeedbackAlignment(every_n_steps=2, plot=False)])  # fmt: skip
        trainer.fit(module, DigitsDataModule(batch_size=batch_size))
        return {k: v.detach().clone() for k, v in module.net.state_dict().items()}

    one, two = fit(1, 16), fit(2, 8)
    assert "layers.0.feedback_weight" in one
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-10)


# -- errors ----------------------------------------------------------------------------------------
def test_errors_name_what_was_expected_and_what_came() -> None:
    with pytest.raises(ValueError, match=r"feedback must be one of 'backprop', 'fa'.*got 'fb'"):
        manual_bp.MLP([3, 2], feedback="fb")
    with pytest.raises(ValueError, match="feedback must be one of"):
        manual_bp.convert(nn.Linear(2, 2), feedback="FA")
    with pytest.raises(ValueError, match="feedback_scale must be positive and finite, got -1"):
        manual_bp.MLP([3, 2], feedback="fa", feedback_scale=-1.0)
    with pytest.raises(TypeError, match="feedback_seed must be an int, got float"):
        manual_bp.MLP([3, 2], feedback="fa", feedback_seed=1.5)
    with pytest.raises(ValueError, match=r"no manual Linear or convolution layer \(its torch.nn layers"):
        feedback.set_feedback(nn.Sequential(nn.Linear(2, 2)), "fa")
    with pytest.raises(ValueError, match="feedback must be one of"):
        ManualBPModule(feedback="dfa2")

    class TwoHeads(nn.Module):  # the loss below reads the first head only: the top layer never runs
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.first(x), self.second(x)

    heads = manual_bp.convert(TwoHeads(), feedback="dfa")
    heads(torch.randn(2, 3, requires_grad=True))  # draws the matrices
    first, _ = heads(torch.randn(2, 3, requires_grad=True))
    with pytest.raises(RuntimeError, match="this layer's backward ran before the top layer's"):
        first.sum().backward()
    w = torch.randn(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match=r"feedback must have the weight's shape \(2, 3\), got \(3, 2\)"):
        manual_bp.ops.linear.linear_feedback(torch.randn(4, 3), w, feedback=torch.randn(3, 2))
    with pytest.raises(ValueError, match=r"feedback must have the weight's shape \(2, 1, 3\)"):
        manual_bp.ops.conv.conv_feedback(
            torch.randn(1, 1, 5), torch.randn(2, 1, 3), feedback=torch.randn(2, 3)
        )
    net = manual_bp.MLP([3, 4, 2], feedback="fa")
    net.layers[1].feedback_rule = "dfa"
    with pytest.raises(
        ValueError, match=r"one feedback rule in every layer, or dfa in none; its layers have"
    ):
        net(torch.randn(2, 3))


def test_cli_trains_with_a_rule_checkpoints_its_matrices_and_resumes(tmp_path, capsys) -> None:  # noqa: ANN001
    from manual_bp.lightning.cli import main

    tiny = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2",
            "--trainer.limit_test_batches", "2", "--trainer.default_root_dir", str(tmp_path),
            "--model.feedback", "frsf", "--model.feedback_scale", "0.5",
            "--alignment.every_n_steps", "2"]  # fmt: skip
    main([*tiny, "--trainer.max_epochs", "1"])
    out = capsys.readouterr()
    assert "test accuracy:" in out.out
    run = tmp_path / "lightning_logs" / "version_0"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    matrix = state["state_dict"]["net.layers.0.feedback_weight"]
    assert state["hyper_parameters"]["feedback"] == "frsf"
    assert matrix.abs().max() <= 0.5 / 8  # the scale: 0.5 / √fan_in, fan_in 64
    assert (run / "alignment.png").is_file()
    with pytest.raises(ValueError, match="feedback_seed: 0 in the checkpoint, 5 now"):  # a changed setting
        main([*tiny, "--trainer.max_epochs", "2", "--ckpt_path", "last", "--model.feedback_seed", "5"])
    main([*tiny, "--trainer.max_epochs", "2", "--ckpt_path", "last", "--model.feedback_seed", "5",
          "--resume_changed", "true"])  # fmt: skip
    resumed = torch.load(
        tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True
    )
    # the matrix comes from the checkpoint, not from the new run's seed
    torch.testing.assert_close(resumed["state_dict"]["net.layers.0.feedback_weight"], matrix, rtol=0, atol=0)


def test_check_command_reports_a_rule_against_its_own_update(capsys) -> None:  # noqa: ANN001
    from manual_bp.cli import main

    assert main(["check", "--feedback", "sign", "--op", "linear", "--op", "conv2d"]) == 0
    out = capsys.readouterr().out
    assert (
        "gradcheck does not apply" in out and "sign: BP2 through B" in out and "4 of 4 checks passed" in out
    )


def test_feedback_check_fails_when_bp2_ignores_b(monkeypatch) -> None:  # noqa: ANN001
    import dataclasses

    from manual_bp.check import OPS, run_feedback_suite

    linear = next(op for op in OPS if op.name == "linear")
    wrong = dataclasses.replace(linear, feedback=lambda x, w, b=None, feedback=None: F.linear(x, w, b))
    rows = run_feedback_suite("fa", [wrong])
    assert rows and not any(r.passed for r in rows)
    assert all(r.passed for r in run_feedback_suite("fa", [linear]))


def _feedback_call(op: manual_bp.ops.Op, b: torch.Tensor, kwargs: dict, *args: object) -> torch.Tensor:
    return op.feedback(*args, feedback=b, **kwargs)  # type: ignore[misc]


@pytest.mark.parametrize("name", [op.name for op in manual_bp.ops.OPS if op.feedback is not None])
def test_feedback_functions_with_b_equal_to_w_pass_gradcheck_and_gradgradcheck(name: str) -> None:
    # with B = W the rule is backprop: the Function's written-out backward must then be the exact
    # gradient, and differentiable again (B is a detached copy: it gets no gradient)
    op = next(o for o in manual_bp.ops.OPS if o.name == name)
    torch.manual_seed(0)
    for sample in op.samples(torch.float64, torch.device("cpu"))[:4]:
        x, w, *rest = sample.args
        b = w.detach().clone()

        fn = functools.partial(_feedback_call, op, b, dict(sample.kwargs))
        inputs = (x, w, *rest)
        assert torch.autograd.gradcheck(fn, inputs), sample.label
        assert torch.autograd.gradgradcheck(fn, inputs), sample.label
        native = op.native(x, w, *rest, **sample.kwargs)
        torch.testing.assert_close(fn(*inputs), native, rtol=1e-12, atol=1e-12)
        assert fn(*inputs).grad_fn.name().startswith("Feedback")
