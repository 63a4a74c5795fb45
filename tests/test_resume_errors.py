"""``manual-bp train`` and its checkpoints: ``last.ckpt`` holds the end of every epoch and the last
step; a checkpoint that cannot be resumed from (missing, truncated, garbage, non-finite, written with
other settings) stops the command with one line naming the file and the fault, exit code 2. Each test
reproduces a fault the previous code had (traceback, or a silent wrong resume)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from manual_bp import cli

warnings.filterwarnings("ignore", ".*does not have many workers.*")


def _tiny(root: Path) -> list[str]:
    return ["train", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2",
            "--trainer.limit_test_batches", "2", "--trainer.default_root_dir", str(root),
            "--gradient_check.enabled", "false", "--gradient_flow.plot", "false"]  # fmt: skip


def _last(root: Path, version: int = 0) -> dict:
    path = root / "lightning_logs" / f"version_{version}" / "checkpoints" / "last.ckpt"
    return torch.load(path, weights_only=True)


def test_last_checkpoint_holds_the_last_epoch_even_without_an_improvement(tmp_path: Path) -> None:
    # mode=max on val/loss: the falling loss never "improves" after the first epoch, so Lightning's
    # own ModelCheckpoint left last.ckpt at epoch 0
    assert cli.main([*_tiny(tmp_path), "--trainer.max_epochs", "3", "--checkpoint.mode", "max"]) == 0
    state = _last(tmp_path)
    assert (state["epoch"], state["global_step"]) == (2, 12)


def test_last_checkpoint_holds_the_final_step_of_a_run_stopped_mid_epoch(tmp_path: Path) -> None:
    assert cli.main([*_tiny(tmp_path), "--trainer.max_steps", "6", "--trainer.max_epochs", "5"]) == 0
    assert _last(tmp_path)["global_step"] == 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    assert cli.main([*_tiny(root), "--trainer.max_epochs", "1", "--test", "false"]) == 0
    return root / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def _resume(tmp_path: Path, path: Path, *extra: str) -> int:
    return cli.main(
        [*_tiny(tmp_path), "--trainer.max_epochs", "2", "--test", "false", "--ckpt_path", str(path), *extra]
    )


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("manual-bp: error: checkpoint ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_truncated_checkpoint_is_one_line_exit_2(tmp_path: Path, checkpoint: Path, capsys) -> None:  # noqa: ANN001
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[:2000])
    assert _resume(tmp_path, truncated) == 2
    line = _one_line(capsys)
    assert str(truncated) in line and "cannot be read: it is truncated, damaged or not a checkpoint" in line


def test_garbage_file_does_not_suggest_weights_only_false(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all\n" * 10)
    assert _resume(tmp_path, garbage) == 2
    line = _one_line(capsys)
    assert "cannot be read" in line and "weights_only=False" not in line


def test_missing_checkpoint(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    assert _resume(tmp_path, tmp_path / "nope.ckpt") == 2
    assert "nope.ckpt: no such file" in _one_line(capsys)


def test_non_finite_weights_are_named_not_blamed_on_the_gradients(
    tmp_path: Path, checkpoint: Path, capsys
) -> None:  # noqa: ANN001
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"]["net.layers.0.weight"][3, 5] = float("nan")
    flipped = tmp_path / "nan.ckpt"
    torch.save(state, flipped)
    assert _resume(tmp_path, flipped) == 2
    line = _one_line(capsys)
    assert "non-finite values in net.layers.0.weight (1 of 4096)" in line


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--model.activation", "tanh", "activation: 'sigmoid' in the checkpoint, 'tanh' now"),
        ("--model.optimizer", "adam", "optimizer: 'sgd' in the checkpoint, 'adam' now"),
    ],
)
def test_changed_settings_are_listed_and_an_explicit_flag_overrides(  # noqa: ANN001
    tmp_path: Path, checkpoint: Path, capsys, flag: str, value: str, expected: str
) -> None:
    assert _resume(tmp_path, checkpoint, flag, value) == 2
    line = _one_line(capsys)
    assert expected in line and "--resume_changed true" in line
    if flag == "--model.activation":  # the same weights, another f: allowed when asked for
        assert _resume(tmp_path, checkpoint, flag, value, "--resume_changed", "true") == 0


def test_divergence_stops_with_one_line_naming_the_step(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    # a linear network at lr 1000 overflows within a few steps; the run used to go on with NaN weights
    code = cli.main([*_tiny(tmp_path), "--model.activation", "identity", "--model.lr", "1000",
                     "--trainer.max_epochs", "3"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("manual-bp: error: training diverged at step ")
    assert "--model.lr 1000 now" in err[-1] and "Traceback" not in "\n".join(err)
    for path in (tmp_path / "lightning_logs").glob("version_*/checkpoints/*.ckpt"):  # none non-finite
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(bool(v.isfinite().all()) for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--data", "manual_bp.lightning.FileDataModule", "--data.init_args.path", "missing.csv"],
         "data file not found: missing.csv"),
        (["--model.sizes", "[10, 5, 10]"], "the network expects 10 input features"),
    ],
    ids=["bad file", "network does not fit"],
)  # fmt: skip
def test_start_errors_are_one_line_exit_2_and_leave_no_run_directory(  # noqa: ANN001
    tmp_path: Path, capsys, monkeypatch, args: list[str], expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MANUAL_BP_DEBUG", raising=False)
    assert cli.main([*_tiny(tmp_path), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("manual-bp: error: ") and expected in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "lightning_logs").exists()  # no empty version_N left behind
    monkeypatch.setenv("MANUAL_BP_DEBUG", "1")  # the traceback, for a bug report
    with pytest.raises((ValueError, OSError), match=expected):
        cli.main([*_tiny(tmp_path), *args])
