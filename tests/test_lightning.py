"""Lightning integration: DataModules, the LightningModule, the callbacks, DDP, resume and bf16.

Fits are tiny (a few batches, logger and progress bar off) so the file runs in well under a minute.
"""

from __future__ import annotations

import math
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import manual_bp
from manual_bp.lightning import (
    DigitsDataModule,
    FileDataModule,
    GradientCheck,
    GradientCheckError,
    GradientFlow,
    ManualBPModule,
    TeacherRegressionDataModule,
    compare_gradients,
    native_twin,
)
from manual_bp.lightning import callbacks as callbacks_module

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")


def _trainer(**kwargs: object) -> pl.Trainer:
    options: dict[str, object] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
    }
    options.update(kwargs)
    return pl.Trainer(**options)  # type: ignore[arg-type]


def _weights(module: ManualBPModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.net.state_dict().items()}


# -- DataModules -----------------------------------------------------------------------------------
def test_digits_split_is_stratified_seeded_and_scaled() -> None:
    data = DigitsDataModule(seed=3)
    data.setup("fit")
    sizes = data.split_sizes()
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == 360 and sizes["val"] == 180  # 20% and 10%
    assert (data.task, data.num_features, data.num_outputs, data.num_classes) == (
        "classification",
        64,
        10,
        10,
    )
    x, y = data._stage_data("train").tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() == 1  # 0..16 scaled by 1/16
    for name in ("train", "val", "test"):  # stratified: every class holds its share of the split
        labels = data._stage_data(name).tensors[1]
        counts = torch.bincount(labels, minlength=10).float()
        assert counts.min() >= 0.8 * counts.mean() and counts.max() <= 1.2 * counts.mean()
    again = DigitsDataModule(seed=3)
    again.setup("fit")
    assert torch.equal(again._stage_data("test").tensors[0], data._stage_data("test").tensors[0])
    other = DigitsDataModule(seed=4)
    other.setup("fit")
    assert not torch.equal(other._stage_data("test").tensors[0], data._stage_data("test").tensors[0])


def _order(data: DigitsDataModule, epoch: int) -> list[int]:
    loader = data.train_dataloader()
    loader.sampler.set_epoch(epoch)  # what Lightning calls before every epoch
    return [int(i) for batch in loader.sampler for i in batch]  # (the sampler yields whole batches)


def test_training_order_depends_on_seed_and_epoch_only() -> None:
    data = DigitsDataModule(seed=1)
    first, second = _order(data, 0), _order(data, 1)
    assert sorted(first) == list(range(data.split_sizes()["train"]))
    assert second != first
    torch.manual_seed(123)  # the global RNG plays no part
    assert _order(DigitsDataModule(seed=1), 1) == second
    assert _order(DigitsDataModule(seed=2), 1) != second
    assert _order(DigitsDataModule(seed=1, shuffle=False), 1) == sorted(first)


def test_teacher_regression_is_seeded_and_realisable() -> None:
    data = TeacherRegressionDataModule(sizes=[5, 7, 3], num_samples=100, data_seed=2)
    x, y = data.load()
    assert x.shape == (100, 5) and y.shape == (100, 3)
    assert torch.equal(
        TeacherRegressionDataModule(sizes=[5, 7, 3], num_samples=100, data_seed=2).load()[1], y
    )
    assert not torch.equal(
        TeacherRegressionDataModule(sizes=[5, 7, 3], num_samples=100, data_seed=3).load()[1], y
    )
    data.setup("fit")
    assert (data.task, data.num_features, data.num_outputs, data.num_classes) == ("regression", 5, 3, None)


def _table(n: int = 40, features: int = 3, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, features)), np.arange(n) % classes


def test_file_data_csv_npz_pt_load_the_same_samples(tmp_path) -> None:  # noqa: ANN001
    x, y = _table()
    csv_path = tmp_path / "data.csv"
    rows = "\n".join(
        ",".join([*(f"{v:.17g}" for v in xs), str(label)]) for xs, label in zip(x, y, strict=True)
    )
    csv_path.write_text("a,b,c,label\n" + rows + "\n")
    np.savez(tmp_path / "data.npz", x=x, y=y)
    torch.save({"x": torch.tensor(x), "y": torch.tensor(y)}, tmp_path / "data.pt")
    loaded = []
    for name in ("data.csv", "data.npz", "data.pt"):
        data = FileDataModule(str(tmp_path / name))
        data.setup("fit")
        assert (data.num_features, data.num_classes, data.num_outputs) == (3, 3, 3)
        loaded.append(torch.cat([data._stage_data(s).tensors[0] for s in ("train", "val", "test")]))
    torch.testing.assert_close(loaded[0], loaded[1])
    torch.testing.assert_close(loaded[0], loaded[2])


def test_file_data_regression_with_several_target_columns(tmp_path) -> None:  # noqa: ANN001
    x = np.random.default_rng(1).random((30, 6))
    np.savetxt(tmp_path / "r.csv", x, delimiter=";")
    data = FileDataModule(str(tmp_path / "r.csv"), task="regression", num_targets=2, delimiter=";")
    data.setup("fit")
    assert (data.num_features, data.num_outputs) == (4, 2)
    train_y = data._stage_data("train").tensors[1]
    assert train_y.shape[1] == 2 and train_y.dtype == torch.float32


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        ("1,2,0\n3,4\n5,6,1\n", {}, r"expected 3 columns .*got 2 in data row 2"),
        (
            "1,2,0\n" * 12,
            {"num_features": 3},
            r"expected 4 columns per row \(3 features \+ 1 target\), got 3 in data row 1",
        ),
        (
            "1,2,0\n1,2,1\n" * 6 + "1,2,3\n",
            {"num_classes": 3},
            r"labels must lie in 0\.\.2 \(num_classes=3\), got .* to 3",
        ),
        ("1,2,0\n1,2,1\n" * 6 + "1,2,-1\n", {}, r"labels must lie in 0\.\.C-1, got labels from -1 to 1"),
        ("1,2,0\n1,2,1.5\n" * 6, {}, r"whole numbers 0\.\.C-1, got 1\.5"),
        ("1,x,0\n" * 12, {}, r"every field must be a number"),
        ("1\n" * 12, {}, r"expected at least 2 columns"),
    ],
    ids=[
        "ragged-row",
        "num-features",
        "label-too-large",
        "label-negative",
        "label-not-whole",
        "text",
        "one-column",
    ],
)
def test_file_data_errors_name_expected_and_got(tmp_path, content: str, kwargs: dict, message: str) -> None:  # noqa: ANN001
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        FileDataModule(str(path), **kwargs).setup("fit")


def test_file_data_missing_file_and_bad_containers(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(FileNotFoundError, match=r"data file not found: .*nowhere\.csv"):
        FileDataModule(str(tmp_path / "nowhere.csv")).setup("fit")
    np.savez(tmp_path / "d.npz", features=np.zeros((20, 2)), y=np.zeros(20))
    with pytest.raises(ValueError, match=r"expected arrays 'x' and 'y', missing \['x'\]"):
        FileDataModule(str(tmp_path / "d.npz")).setup("fit")
    torch.save([torch.zeros(3)], tmp_path / "d.pt")
    with pytest.raises(ValueError, match=r"expected a dict with tensors 'x' and 'y', found list"):
        FileDataModule(str(tmp_path / "d.pt")).setup("fit")
    (tmp_path / "d.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"unknown file type '\.txt'"):
        FileDataModule(str(tmp_path / "d.txt")).setup("fit")
    torch.save({"x": torch.zeros(20, 2), "y": torch.zeros(19, dtype=torch.long)}, tmp_path / "n.pt")
    with pytest.raises(ValueError, match=r"x has 20 samples but y has 19"):
        FileDataModule(str(tmp_path / "n.pt")).setup("fit")


def test_digits_as_images_are_the_rows_of_pixels() -> None:
    rows, images = DigitsDataModule(), DigitsDataModule(images=True)
    rows.setup("fit")
    images.setup("fit")
    x_rows, x_images = rows._stage_data("train").tensors[0], images._stage_data("train").tensors[0]
    assert x_rows.shape[1:] == (64,) and x_images.shape[1:] == (1, 8, 8)
    assert (images.sample_shape, images.num_features, images.num_classes) == ((1, 8, 8), 64, 10)
    torch.testing.assert_close(x_images[:, 0, 2, :], x_rows[:, 16:24], rtol=0, atol=0)  # row 2 of each image
    assert rows.split_sizes() == images.split_sizes()


@pytest.mark.parametrize("suffix", ["npz", "pt"])
def test_file_data_takes_any_sample_shape(tmp_path, suffix: str) -> None:  # noqa: ANN001
    x = np.random.default_rng(0).random((40, 3, 4, 5)).astype(np.float32)
    y = np.arange(40) % 4
    path = tmp_path / f"images.{suffix}"
    if suffix == "npz":
        np.savez(path, x=x, y=y)
    else:
        torch.save({"x": torch.tensor(x), "y": torch.tensor(y)}, path)
    data = FileDataModule(str(path))
    data.setup("fit")
    assert (data.sample_shape, data.num_features, data.num_classes) == ((3, 4, 5), 60, 4)
    batch_x, batch_y = next(iter(data.train_dataloader()))
    assert batch_x.shape == (16, 3, 4, 5) and batch_x.dtype == torch.float32 and batch_y.shape == (16,)
    loaded = torch.cat([data._stage_data(s).tensors[0] for s in ("train", "val", "test")])
    assert sorted(loaded.sum((1, 2, 3)).tolist()) == pytest.approx(sorted(x.sum((1, 2, 3)).tolist()))


def test_samples_without_a_feature_dim_are_refused(tmp_path) -> None:  # noqa: ANN001
    torch.save({"x": torch.zeros(20), "y": torch.zeros(20, dtype=torch.long)}, tmp_path / "flat.pt")
    with pytest.raises(
        ValueError, match=r"x must have a sample dim and at least one more.*got shape \(20,\)"
    ):
        FileDataModule(str(tmp_path / "flat.pt")).setup("fit")
    with pytest.raises(TypeError, match=r"images must be True or False, got 'yes'"):
        DigitsDataModule(images="yes")  # type: ignore[arg-type]


def test_datamodule_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\), got 0"):
        DigitsDataModule(val_fraction=0)
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction must be below 1, got 0.5 \+ 0.5"):
        DigitsDataModule(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match=r"classification takes one label column"):
        FileDataModule("x.csv", num_targets=2)
    with pytest.raises(ValueError, match=r"activation must be one of .*got 'swish'"):
        TeacherRegressionDataModule(activation="swish")


# -- the LightningModule and short fits --------------------------------------------------------------
@pytest.mark.slow
def test_short_fit_on_digits_learns_and_logs_metric_objects() -> None:
    torch.manual_seed(0)
    module = ManualBPModule()
    data = DigitsDataModule()
    trainer = _trainer(max_epochs=5)
    trainer.fit(module, data)
    assert isinstance(module.net, manual_bp.MLP) and module.net.sizes == (64, 64, 10)
    metrics = trainer.callback_metrics
    assert {"train/loss_epoch", "train/acc", "val/loss", "val/acc"} <= set(metrics)
    assert metrics["val/acc"] > 0.6  # five epochs of plain SGD beat chance (0.1) by far
    assert metrics["train/loss_epoch"] < 0.3  # it starts near ½ · 10 · 0.5² = 1.25
    assert type(module.val_metric).__name__ == "MulticlassAccuracy" and module.val_metric.average == "micro"
    (result,) = trainer.test(module, data, verbose=False)
    assert 0.5 < result["test/acc"] <= 1.0


def test_short_fit_on_teacher_regression_lowers_the_mse() -> None:
    torch.manual_seed(0)
    module = ManualBPModule(sizes=[8, 32, 2], activation="tanh", output_activation="identity", lr=0.1)
    data = TeacherRegressionDataModule(num_samples=500)
    trainer = _trainer(max_epochs=1)
    (before,) = trainer.validate(module, data, verbose=False)
    trainer.fit(module, data)
    (after,) = trainer.validate(module, data, verbose=False)
    assert type(module.val_metric).__name__ == "MeanSquaredError"
    assert after["val/mse"] < 0.5 * before["val/mse"]


def test_short_fit_on_a_csv_file_with_cross_entropy_and_adam(tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int)  # 3 classes
    np.savetxt(tmp_path / "mine.csv", np.column_stack([x, y]), delimiter=",", fmt="%.6f")
    torch.manual_seed(0)
    module = ManualBPModule(sizes=[4, 16, 3], activation="tanh", output_activation="identity",
                            loss="cross_entropy", optimizer="adam", lr=0.05)  # fmt: skip
    trainer = _trainer(max_epochs=3)
    trainer.fit(module, FileDataModule(str(tmp_path / "mine.csv"), batch_size=8))
    assert isinstance(trainer.optimizers[0], torch.optim.Adam)
    assert trainer.callback_metrics["val/acc"] > 0.6


def test_a_converted_model_trains(tmp_path) -> None:  # noqa: ANN001
    native = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    net = manual_bp.convert(native)
    assert isinstance(net[0], manual_bp.Linear)
    module = ManualBPModule(net=net, loss="cross_entropy", lr=0.1)
    trainer = _trainer(limit_train_batches=5, limit_val_batches=1, callbacks=[GradientCheck()])
    trainer.fit(module, DigitsDataModule())
    assert trainer.callbacks[0].max_rel_error < 1e-12
    assert not torch.equal(net[0].weight, native[0].weight)


@pytest.mark.parametrize(
    ("sizes", "data", "message"),
    [
        ([10, 16, 10], DigitsDataModule, r"expects 10 input features .* but the data has 64"),
        ([64, 16, 3], DigitsDataModule, r"gives 3 outputs but the data has 10 classes"),
        ([8, 16, 5], TeacherRegressionDataModule, r"gives 5 outputs but the data has 2 target columns"),
    ],
    ids=["inputs", "classes", "targets"],
)
def test_network_that_does_not_fit_the_data_fails_before_training(sizes, data, message: str) -> None:  # noqa: ANN001
    module = ManualBPModule(sizes=sizes)
    before = _weights(module)
    with pytest.raises(ValueError, match=message):
        _trainer().fit(module, data())
    for key, value in _weights(module).items():
        assert torch.equal(value, before[key])


def test_module_argument_errors() -> None:
    with pytest.raises(ValueError, match=r"loss must be one of .*got 'mse'"):
        ManualBPModule(loss="mse")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"optimizer must be one of .*got 'lbfgs2'"):
        ManualBPModule(optimizer="lbfgs2")
    with pytest.raises(ValueError, match=r"lr must be a positive finite number, got -1"):
        ManualBPModule(lr=-1.0)
    with pytest.raises(ValueError, match=r"cross_entropy' needs classification data"):
        _trainer().fit(
            ManualBPModule(sizes=[8, 4, 2], loss="cross_entropy"), TeacherRegressionDataModule(num_samples=50)
        )


def test_half_squared_error_targets_are_one_hot_and_accuracy_is_argmax() -> None:
    module = ManualBPModule(sizes=[3, 4], task="classification", num_classes=4)
    output = torch.tensor([[0.1, 0.9, 0.2, 0.0], [0.8, 0.1, 0.0, 0.3]])
    y = torch.tensor([1, 2])
    target = module.targets(y, output)
    torch.testing.assert_close(target, torch.tensor([[0.0, 1, 0, 0], [0, 0, 1, 0]]))
    torch.testing.assert_close(module.compute_loss(output, y), 0.5 * ((output - target) ** 2).sum(-1).mean())
    module.test_metric(output, y)
    assert module.test_metric.compute() == 0.5


# -- gradient check ----------------------------------------------------------------------------------
def test_compare_gradients_agrees_for_mlp_and_converted_models() -> None:
    torch.manual_seed(0)
    x, y = torch.rand(16, 64), torch.randint(0, 10, (16,))
    for module in (
        ManualBPModule(sizes=[64, 20, 10], task="classification", num_classes=10),
        ManualBPModule(
            net=manual_bp.MLP([64, 20, 10], "gelu", "identity"),
            loss="cross_entropy",
            task="classification",
            num_classes=10,
        ),  # fmt: skip
        ManualBPModule(
            net=manual_bp.convert(torch.nn.Sequential(torch.nn.Linear(64, 10), torch.nn.Sigmoid())),
            task="classification",
            num_classes=10,
        ),  # fmt: skip
    ):
        errors = compare_gradients(module, x, y)
        assert len(errors) == len(list(module.net.parameters()))
        assert max(errors.values()) < 1e-12
        assert all(p.grad is None for p in module.net.parameters())  # copies only
    mlp = manual_bp.MLP([3, 4, 2])
    twin = native_twin(mlp)
    x = torch.randn(5, 3)
    torch.testing.assert_close(twin(x), mlp(x))
    assert twin(x).grad_fn.name() == "SigmoidBackward0"  # native autograd all the way
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in mlp.named_parameters()]


def test_gradient_check_stops_training_when_gradients_disagree(monkeypatch) -> None:  # noqa: ANN001
    def wrong_loss(name: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 1.01 * 0.5 * (output - target).pow(2).sum(-1).mean()  # a 1% error in the "native" side

    monkeypatch.setattr(callbacks_module, "native_loss", wrong_loss)
    module = ManualBPModule(sizes=[64, 8, 10])
    before = _weights(module)
    with pytest.raises(GradientCheckError, match=r"largest relative error 9\.9\d+e-03 > tolerance 1e-06"):
        _trainer(callbacks=[GradientCheck()]).fit(module, DigitsDataModule())
    for key, value in _weights(module).items():
        assert torch.equal(value, before[key])  # stopped before the first step


# -- gradient flow -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_gradient_flow_logs_norms_and_writes_readable_pngs(tmp_path) -> None:  # noqa: ANN001
    flow = GradientFlow()
    module = ManualBPModule(sizes=[64, 16, 16, 16, 10])
    trainer = _trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=1, callbacks=[flow],
                       default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(module, DigitsDataModule())
    assert flow.steps == list(range(8))
    assert list(flow.norms) == ["layers.0", "layers.1", "layers.2", "layers.3"]
    # the recorded norm is the weight gradient's norm at that step: check the last step directly
    assert all(len(v) == 8 and all(math.isfinite(n) and n > 0 for n in v) for v in flow.norms.values())
    assert "grad_norm/layers.0" in trainer.callback_metrics
    assert [e["epoch"] for e in flow.epochs] == [0.0, 1.0]
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(flow.epochs[-1])
    from PIL import Image

    for name in ("curves.png", "gradient_flow.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 300
    state = flow.state_dict()
    restored = GradientFlow()
    restored.load_state_dict(state)
    assert restored.norms == flow.norms and restored.epochs == flow.epochs


def test_gradient_flow_records_the_weight_gradient_norm() -> None:
    class Probe(pl.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
            self.norm = pl_module.net.layers[0].weight.grad.norm().item()

    flow, probe = GradientFlow(log_norms=False, plot=False), Probe()
    _trainer(limit_train_batches=3, limit_val_batches=0, callbacks=[flow, probe]).fit(
        ManualBPModule(sizes=[64, 8, 10]), DigitsDataModule()
    )
    assert flow.norms["layers.0"][-1] == pytest.approx(probe.norm, rel=1e-6)


# -- DDP, resume, bf16 -------------------------------------------------------------------------------
def _fit_for_ddp(devices: int, batch_size: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    # float64 parameters from the start: ddp_spawn copies rank 0's weights back into this module
    module = ManualBPModule(net=manual_bp.MLP([64, 12, 10], dtype=torch.float64), lr=2.0)
    data = DigitsDataModule(batch_size=batch_size)  # shuffle=True: the per-epoch seeded order
    strategy = "ddp_spawn" if devices > 1 else "auto"
    trainer = _trainer(devices=devices, strategy=strategy, precision="64-true", max_epochs=2,
                       limit_train_batches=6, limit_val_batches=0)  # fmt: skip
    trainer.fit(module, data)
    return _weights(module)


@pytest.mark.slow
def test_ddp_spawn_two_processes_equal_one_process_with_the_same_global_batch() -> None:
    one = _fit_for_ddp(devices=1, batch_size=16)
    two = _fit_for_ddp(devices=2, batch_size=8)
    torch.manual_seed(0)
    initial = _weights(ManualBPModule(net=manual_bp.MLP([64, 12, 10], dtype=torch.float64)))
    for key in one:
        assert one[key].dtype == torch.float64
        assert not torch.allclose(one[key], initial[key])  # training moved the weights
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-10)


def _resumable_run(root, max_epochs: int, ckpt_path: str | None = None) -> tuple[dict, str]:  # noqa: ANN001
    torch.manual_seed(0 if ckpt_path is None else 99)  # a resumed run must not depend on its init
    module = ManualBPModule(sizes=[64, 16, 10], optimizer="sgd", momentum=0.5, lr=0.5)
    checkpoint = ModelCheckpoint(dirpath=str(root), save_last=True, monitor="val/loss")
    callbacks = [checkpoint, GradientFlow(plot=False)]
    trainer = _trainer(max_epochs=max_epochs, limit_train_batches=5, limit_val_batches=1,
                       enable_checkpointing=True, callbacks=callbacks)  # fmt: skip
    trainer.fit(module, DigitsDataModule(), ckpt_path=ckpt_path)
    return _weights(module), checkpoint.last_model_path


@pytest.mark.slow
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path) -> None:  # noqa: ANN001
    straight, _ = _resumable_run(tmp_path / "straight", max_epochs=3)
    _, last = _resumable_run(tmp_path / "stopped", max_epochs=2)
    resumed, _ = _resumable_run(tmp_path / "stopped", max_epochs=3, ckpt_path=last)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=0, atol=0)
    # the resumed run wrote its own last.ckpt over the stopped run's; it loads with plain types only
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 15 and checkpoint["hyper_parameters"]["sizes"] == [64, 16, 10]
    for key, value in checkpoint["state_dict"].items():
        torch.testing.assert_close(value, straight[key.removeprefix("net.")], rtol=0, atol=0)
    flow_state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("GradientFlow"))
    assert flow_state["steps"] == list(range(15))  # the stopped run's history came back with the weights


def test_bf16_mixed_precision_fits_with_finite_loss() -> None:
    torch.manual_seed(0)
    module = ManualBPModule(sizes=[64, 32, 10])
    trainer = _trainer(precision="bf16-mixed", limit_train_batches=10, limit_val_batches=1,
                       callbacks=[GradientCheck()])  # fmt: skip
    before = _weights(module)
    trainer.fit(module, DigitsDataModule())
    assert math.isfinite(trainer.callback_metrics["train/loss_epoch"])
    assert math.isfinite(trainer.callback_metrics["val/loss"])
    for key, value in _weights(module).items():
        assert value.dtype == torch.float32 and not torch.equal(value, before[key])


def _fit_one_epoch(devices: int, batch_size: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    module = ManualBPModule(net=manual_bp.MLP([64, 12, 10], dtype=torch.float64), lr=2.0)
    strategy = "ddp_spawn" if devices > 1 else "auto"
    trainer = _trainer(devices=devices, strategy=strategy, precision="64-true", max_epochs=1,
                       limit_val_batches=0)  # fmt: skip
    trainer.fit(module, DigitsDataModule(batch_size=batch_size))  # 1,257 training images: odd
    return _weights(module)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("devices", "batch_size"),
    [(2, 8), (3, 5), (2, 314)],
    ids=["2 ranks, last batch 9 = 5 + 4", "3 ranks, last batch 12", "2 ranks, last batch 1 = 1 + 0"],
)
def test_ddp_equals_one_process_for_any_data_and_batch_size(devices: int, batch_size: int) -> None:
    # the sampler used to pad the last batch with a repeat of sample 0 (4.9e-2 apart after an epoch)
    one = _fit_one_epoch(1, batch_size * devices)
    many = _fit_one_epoch(devices, batch_size)
    for key in one:
        torch.testing.assert_close(many[key], one[key], rtol=0, atol=1e-10)


def test_global_batch_sampler_splits_every_global_batch_without_padding() -> None:
    from manual_bp.lightning.data import GlobalBatchSampler

    data = torch.utils.data.TensorDataset(torch.arange(11.0))
    ranks = [GlobalBatchSampler(data, 2, 3, rank, shuffle=True, seed=4) for rank in range(3)]
    for sampler in ranks:
        sampler.set_epoch(1)
    batches = [list(sampler) for sampler in ranks]
    assert [len(b) for b in batches] == [2, 2, 2] and all(len(s) == 2 for s in ranks)  # same steps
    assert [len(part) for part in batches[0]] == [2, 2] and [len(batches[2][1])] == [1]  # 6, then 5
    seen = sorted(i for b in batches for part in b for i in part)
    assert seen == list(range(11))  # every sample once: none repeated, none dropped
    one = GlobalBatchSampler(data, 6, 1, 0, shuffle=True, seed=4)
    one.set_epoch(1)
    for step, whole in enumerate(one):
        assert sorted(whole) == sorted(i for b in batches for i in b[step])  # the same global batches
