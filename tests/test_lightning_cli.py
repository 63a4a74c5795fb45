"""``manual-bp train``: configs, --print_config, fit + test, resume with --ckpt_path last, errors, DDP.

Most runs are in-process (``manual_bp.lightning.cli.main(argv)``) and tiny (a few batches); the DDP
run is a subprocess of ``python -m manual_bp train``, since DDP re-launches its command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from manual_bp._errors import SetupError
from manual_bp.lightning.cli import main

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))

warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")

TINY = [
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--trainer.limit_train_batches", "4",
    "--trainer.limit_val_batches", "2",
    "--trainer.limit_test_batches", "2",
    "--trainer.log_every_n_steps", "1",
]  # fmt: skip


def test_print_config_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for expected in (
        "seed_everything: 0",
        "max_epochs: 80",
        "activation: sigmoid",
        "loss: half_squared_error",
        "optimizer: sgd",
        "lr: 4.0",
        "class_path: manual_bp.lightning.DigitsDataModule",
        "save_last: true",
        "monitor: val/loss",
        "tolerance: 1.0e-06",
    ):
        assert expected in out


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_example_config_parses(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config), "--print_config"])
    assert exit_info.value.code == 0
    assert "model:" in capsys.readouterr().out


def _last_weights(root: Path) -> dict[str, torch.Tensor]:
    (last,) = root.glob("lightning_logs/version_*/checkpoints/last.ckpt")
    return torch.load(last, weights_only=True)["state_dict"]


@pytest.mark.slow
def test_fit_test_plots_and_resume_with_ckpt_path_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    main([*TINY, "--trainer.default_root_dir", str(straight), "--trainer.max_epochs", "3"])
    out = capsys.readouterr().out
    assert out.count("test accuracy: ") == 1 and "(360 held-out samples, checkpoint " in out
    run = straight / "lightning_logs" / "version_0"
    assert (run / "curves.png").stat().st_size > 10_000 and (
        run / "gradient_flow.png"
    ).stat().st_size > 10_000
    assert (run / "config.yaml").is_file()
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {
        "grad_check/max_rel_error",
        "grad_norm/layers.0",
        "train/loss_step",
        "val/acc",
        "test/acc",
    } <= set(header)

    main([*TINY, "--trainer.default_root_dir", str(stopped), "--trainer.max_epochs", "2"])
    main(
        [
            *TINY,
            "--trainer.default_root_dir",
            str(stopped),
            "--trainer.max_epochs",
            "3",
            "--ckpt_path",
            "last",
            "--seed_everything",
            "7",
        ]
    )  # fmt: skip (another init seed: the weights must come from the checkpoint)
    assert (stopped / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt").is_file()
    resumed = torch.load(stopped / "lightning_logs/version_1/checkpoints/last.ckpt", weights_only=True)
    assert resumed["global_step"] == 12
    expected = _last_weights(straight)
    for key, value in resumed["state_dict"].items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


@pytest.mark.slow
def test_yaml_config_with_a_regression_datamodule_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["--config", str(ROOT / "configs" / "teacher_regression.yaml"), *TINY, "--trainer.max_epochs", "1",
          "--trainer.default_root_dir", str(tmp_path), "--data.init_args.num_samples", "200"])  # fmt: skip
    assert "test mse: " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        (
            ["--data", "FileDataModule", "--data.path", "nowhere.csv"],
            SetupError,  # (the FileNotFoundError as one line; MANUAL_BP_DEBUG=1 lets it through)
            r"data file not found",
        ),
        (["--model.sizes", "[10, 16, 10]"], ValueError, r"expects 10 input features .* data has 64"),
        (["--model.sizes", "[64, 16, 4]"], ValueError, r"gives 4 outputs but the data has 10 classes"),
    ],
    ids=["missing-file", "input-size", "output-size"],
)
def test_bad_data_or_network_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], error: type, message: str
) -> None:
    monkeypatch.chdir(tmp_path)  # the missing file is relative
    with pytest.raises(error, match=message):
        main([*TINY, "--trainer.default_root_dir", str(tmp_path), *args])
    assert not list(tmp_path.glob("**/*.ckpt"))


def test_gradient_check_runs_in_float64(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the coverage line ran the float64 network on the loader's float32 batch: a dtype TypeError
    main([*TINY, "--trainer.max_epochs", "1", "--trainer.precision", "64", "--test", "false",
          "--gradient_flow.plot", "false", "--trainer.default_root_dir", str(tmp_path)])  # fmt: skip
    assert "gradient check (one batch of 16, float64" in caplog.text


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_through_the_command_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "manual_bp", "train", *TINY, "--trainer.max_epochs", "1",
               "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
               "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "distributed_backend=gloo" in done.stderr and "Starting with 2 processes" in done.stderr
    assert done.stdout.count("test accuracy: ") == 1  # printed by rank 0 only
    assert list(tmp_path.glob("lightning_logs/version_0/checkpoints/last.ckpt"))
    assert (tmp_path / "lightning_logs" / "version_0" / "gradient_flow.png").is_file()


def test_tensorboard_logs_when_installed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tensorboard")  # optional (the tensorboard extra): skipped where it is not installed
    main([*TINY, "--trainer.default_root_dir", str(tmp_path), "--trainer.max_epochs", "1", "--test", "false"])
    events = list((tmp_path / "tensorboard").glob("version_*/events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    assert (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").is_file()  # CSV logs as well


def test_quiet_console_drops_the_tips_and_the_pytree_deprecation(caplog: pytest.LogCaptureFixture) -> None:
    from lightning.pytorch.utilities import rank_zero_info
    from lightning.pytorch.utilities._pytree import _tree_flatten

    from manual_bp.lightning.cli import quiet_console

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _tree_flatten(1)  # Lightning's own LeafSpec(): the deprecation, before quiet_console
        assert any("LeafSpec" in str(w.message) for w in caught)
        caught.clear()
        quiet_console()
        _tree_flatten(1)
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    caplog.set_level("INFO")
    rank_zero_info("💡 Tip: try installing something")
    rank_zero_info("a message about this run")
    assert [r.getMessage() for r in caplog.records] == ["a message about this run"]


@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_shards_hold_every_sample_once(world: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from manual_bp.lightning import DigitsDataModule, data

    dm = DigitsDataModule(eval_batch_size=100)
    dm.setup()
    for stage, loader_of in (("val", dm.val_dataloader), ("test", dm.test_dataloader)):
        seen = []
        for rank in range(world):
            monkeypatch.setattr(data, "_world", lambda rank=rank: (world, rank))
            seen += [tuple(row.tolist()) for batch_x, _ in loader_of() for row in batch_x]
        expected = sorted(tuple(row.tolist()) for row in dm._splits[stage].tensors[0])
        assert sorted(seen) == expected  # no sample repeated, none left out


def test_threads_option_sets_the_threads_of_this_and_started_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from manual_bp.lightning.cli import DEFAULTS, set_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    before = torch.get_num_threads()
    try:
        set_threads(0)  # torch's default: nothing changes
        assert torch.get_num_threads() == before and os.environ["OMP_NUM_THREADS"] == "7"
        set_threads(2)
        assert torch.get_num_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"
    finally:
        torch.set_num_threads(before)
    for bad in (-1, 1.5, True):
        with pytest.raises(
            ValueError, match=r"--threads must be 0 \(torch's default\) or a positive number, got"
        ):
            set_threads(bad)  # type: ignore[arg-type]
    assert DEFAULTS["threads"] == 1


def test_threads_option_is_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--threads", "3", "--data.init_args.images", "true", "--print_config"])
    out = capsys.readouterr().out
    assert "threads: 3" in out and "images: true" in out
