"""Exact resume of ``manual-bp train`` from a checkpoint written mid-epoch.

A run stopped mid-epoch (``--trainer.max_steps``) or saved mid-epoch
(``--checkpoint.every_n_train_steps``) and resumed with ``--ckpt_path`` must end with exactly the
weights and optimizer state of an uninterrupted run: the resumed epoch goes on from the batch where
the checkpoint was written (the sampler's position), random draws (dropout) continue where they
stopped, and the optimizer's state is restored. All in float64; the comparison is for equality.

Each exactness test failed before resuming took the sampler position and the random state from the
checkpoint: after ``max_steps`` the rest of the interrupted epoch was skipped (the weights differed by
0.26 after two epochs here), after ``every_n_train_steps`` the interrupted epoch restarted from its
first batch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from manual_bp import cli

warnings.filterwarnings("ignore", ".*does not have many workers.*")

#: The default digits run in float64, two epochs (79 steps each), without the plots and the test.
RUN = ["train", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
       "--gradient_check.enabled", "false", "--gradient_flow.plot", "false", "--test", "false",
       "--trainer.precision", "64",
       "--trainer.max_epochs", "2", "--trainer.logger", "false"]  # fmt: skip
STEPS = 158  # 2 epochs of ceil(1257 / 16) = 79 batches


def dropout_net() -> nn.Module:
    """A factory for ``--model.factory``: an MLP with dropout, so that the random state matters."""
    return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Dropout(0.3), nn.Linear(32, 10))


DROPOUT = ["--model.factory", f"{__file__}:dropout_net", "--model.loss", "cross_entropy",
           "--model.lr", "0.1", "--model.momentum", "0.9"]  # fmt: skip


def _run(root: Path, *args: str) -> None:
    assert cli.main([*RUN, "--trainer.default_root_dir", str(root), *args]) == 0


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _assert_same_training_state(resumed: dict, uninterrupted: dict) -> None:
    assert resumed["global_step"] == uninterrupted["global_step"] == STEPS
    assert resumed["state_dict"].keys() == uninterrupted["state_dict"].keys()
    for key, value in uninterrupted["state_dict"].items():
        assert value.dtype == torch.float64 or not value.is_floating_point(), key
        assert torch.equal(resumed["state_dict"][key], value), (
            f"{key}: largest difference {(resumed['state_dict'][key] - value).abs().max().item():.3g}"
        )
    for saved, expected in zip(resumed["optimizer_states"], uninterrupted["optimizer_states"], strict=True):
        for index, state in expected["state"].items():
            for name, value in state.items():
                assert torch.equal(torch.as_tensor(saved["state"][index][name]), torch.as_tensor(value)), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run; it also keeps a checkpoint every 100 steps (step 100 is mid-epoch 1)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    _run(root, "--checkpoint.every_n_train_steps", "100", "--checkpoint.save_top_k", "-1")
    return root / "checkpoints"


@pytest.mark.slow
def test_resume_after_max_steps_mid_epoch_is_exact(tmp_path: Path, uninterrupted: Path) -> None:
    # with the gradient check, whose batch (drawn before the first step) must not move the position
    check = ["--gradient_check.enabled", "true"]
    _run(tmp_path, *check, "--trainer.max_steps", "130")  # stops in epoch 1, after 51 of its 79 batches
    stopped = _checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert (stopped["epoch"], stopped["global_step"]) == (1, 130)
    _run(tmp_path, *check, "--ckpt_path", "last")
    _assert_same_training_state(
        _checkpoint(tmp_path / "checkpoints" / "last.ckpt"), _checkpoint(uninterrupted / "last.ckpt")
    )


@pytest.mark.slow
def test_resume_from_an_every_n_train_steps_checkpoint_is_exact(tmp_path: Path, uninterrupted: Path) -> None:
    (mid_epoch,) = uninterrupted.glob("epoch=1-step=100*.ckpt")  # as if the run had been killed after it
    _run(tmp_path, "--ckpt_path", str(mid_epoch))
    _assert_same_training_state(
        _checkpoint(tmp_path / "checkpoints" / "last.ckpt"), _checkpoint(uninterrupted / "last.ckpt")
    )


@pytest.mark.slow
def test_resume_from_a_checkpoint_of_a_validation_mid_epoch_is_exact(tmp_path: Path) -> None:
    # --trainer.val_check_interval 40: the top-k checkpoint at step 119 is written by the validation
    # after batch 40 of epoch 1
    every_40 = ["--trainer.val_check_interval", "40", "--checkpoint.save_top_k", "-1"]
    _run(tmp_path / "full", *every_40)
    (mid_epoch,) = (tmp_path / "full" / "checkpoints").glob("epoch=1-step=119*.ckpt")
    _run(tmp_path / "resumed", *every_40, "--ckpt_path", str(mid_epoch))
    _assert_same_training_state(
        _checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt"),
        _checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt"),
    )


@pytest.mark.slow
@pytest.mark.parametrize("stop", [["--trainer.max_steps", "130"], ["--trainer.max_epochs", "1"]],
                         ids=["mid-epoch", "epoch end"])  # fmt: skip
def test_resume_continues_the_random_draws_and_the_optimizer_state(tmp_path: Path, stop: list[str]) -> None:
    # dropout draws from the global random state, SGD with momentum keeps a buffer per parameter
    _run(tmp_path / "full", *DROPOUT)
    _run(tmp_path / "stop", *DROPOUT, *stop)
    _run(tmp_path / "stop", *DROPOUT, "--ckpt_path", "last")
    _assert_same_training_state(
        _checkpoint(tmp_path / "stop" / "checkpoints" / "last.ckpt"),
        _checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt"),
    )


def _ddp(root: Path, *args: str) -> None:
    command = [sys.executable, "-m", "manual_bp", *RUN, "--trainer.accelerator", "cpu",
               "--trainer.devices", "2", "--trainer.strategy", "ddp", "--data.batch_size", "8",
               "--trainer.default_root_dir", str(root), *args]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_resume_mid_epoch_under_ddp_is_exact(tmp_path: Path) -> None:
    # two processes with batch 8 each: the global batches of one process with batch 16; dropout draws
    # differ per process (the last batch's shares differ), so each process's random state is restored
    _ddp(tmp_path / "full", *DROPOUT)
    _ddp(tmp_path / "stop", *DROPOUT, "--trainer.max_steps", "130")
    _ddp(tmp_path / "stop", *DROPOUT, "--ckpt_path", "last")
    _assert_same_training_state(
        _checkpoint(tmp_path / "stop" / "checkpoints" / "last.ckpt"),
        _checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt"),
    )


# -- checkpoints that cannot be resumed exactly: one line, exit code 2 ---------------------------------
TINY = ["train", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2", "--test", "false",
        "--gradient_check.enabled", "false", "--gradient_flow.plot", "false", "--trainer.logger", "false",
        "--trainer.max_epochs", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def mid_epoch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint written after 2 of an epoch's 4 batches."""
    root = tmp_path_factory.mktemp("mid_epoch")
    assert cli.main([*TINY, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "2"]) == 0
    return root / "checkpoints" / "last.ckpt"


def _resume(root: Path, path: Path, *extra: str) -> int:
    return cli.main([*TINY, "--trainer.default_root_dir", str(root), "--ckpt_path", str(path), *extra])


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("manual-bp: error: checkpoint ") and "Traceback" not in "\n".join(err)
    return err[-1]


def test_mid_epoch_checkpoint_without_the_data_position_is_refused(  # noqa: ANN001
    tmp_path: Path, mid_epoch: Path, capsys
) -> None:
    # as an older manual-bp wrote it: no position of the training data in the interrupted epoch
    state = _checkpoint(mid_epoch)
    del state["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    assert _resume(tmp_path, old) == 2
    line = _error_line(capsys)
    assert f"checkpoint {old} was written mid-epoch (after 2 batches of epoch 0)" in line
    assert "resuming from it would not be exact" in line and "--resume_changed true" in line
    assert _resume(tmp_path, old, "--resume_changed", "true") == 0  # asked for: resumed anyway


def test_mid_epoch_checkpoint_with_other_data_order_is_refused(  # noqa: ANN001
    tmp_path: Path, mid_epoch: Path, capsys
) -> None:
    assert _resume(tmp_path, mid_epoch, "--data.batch_size", "8") == 2
    line = _error_line(capsys)
    assert f"checkpoint {mid_epoch}: it was written mid-epoch (after 2 batches of epoch 0)" in line
    assert "global_batch_size 16 then, 8 now" in line
    assert not (tmp_path / "checkpoints").exists()  # nothing trained, nothing written


def test_checkpoint_without_random_state_warns(tmp_path: Path, mid_epoch: Path) -> None:
    state = _checkpoint(mid_epoch)
    del state["manual_bp_random_state"]
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    with pytest.warns(UserWarning, match="holds no random state .* differ from an uninterrupted run's"):
        assert _resume(tmp_path, old) == 0
