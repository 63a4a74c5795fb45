"""``manual-bp train``: LightningCLI's ``fit``, then ``test`` on the best checkpoint, then the accuracy.

Run ``manual-bp train --help`` for every option (``--model.*``, ``--data.*``, every ``--trainer.*``
flag, ``--checkpoint.*``, ``--gradient_check.*``, ``--gradient_flow.*``, ``--alignment.*``,
``--optimizer``),
``--config file.yaml`` to read them from YAML and ``--print_config`` to print the resolved
configuration. The defaults train the seed's network (``MLP([64, 64, 10])``, sigmoid at every
layer, half squared error, plain SGD) on scikit-learn's digits; ``python -m
manual_bp.lightning.cli`` is the same command.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import shutil
import sys
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from jsonargparse import lazy_instance
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.utilities import rank_zero_warn

from manual_bp._errors import CheckpointError, SetupError
from manual_bp.lightning.callbacks import FeedbackAlignment, GradientCheck, GradientFlow
from manual_bp.lightning.data import DigitsDataModule
from manual_bp.lightning.module import ManualBPModule

__all__ = [
    "DEFAULTS",
    "CheckpointError",
    "EpochCheckpoint",
    "SetupError",
    "ManualBPCLI",
    "check_checkpoint",
    "default_loggers",
    "main",
    "resolve_last_checkpoint",
]

#: The defaults of ``manual-bp train`` that differ from Lightning's (see docs/training.md for how they
#: were chosen: >= 97% test accuracy on digits in well under a minute on two CPU cores).
DEFAULTS: dict[str, Any] = {
    "seed_everything": 0,
    "max_epochs": 80,
    "threads": 1,
}


def default_loggers(save_dir: str) -> list[Logger]:
    """CSV logs in ``save_dir/lightning_logs/version_N``; TensorBoard too, in ``save_dir/tensorboard``,
    when the ``tensorboard`` package is installed."""
    loggers: list[Logger] = [CSVLogger(save_dir=save_dir)]
    if importlib.util.find_spec("tensorboard") is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=save_dir, name="tensorboard"))
    return loggers


def resolve_last_checkpoint(trainer: pl.Trainer, checkpoint: ModelCheckpoint) -> str | None:
    """The newest ``last*.ckpt`` of earlier runs of this configuration, or ``None``.

    Looked up in ``--checkpoint.dirpath`` when set, otherwise in every run directory of the logger
    (``<save_dir>/lightning_logs/version_*/checkpoints``) or, without a logger, in
    ``<default_root_dir>/checkpoints``: each run writes to a new version directory, so Lightning's
    own ``"last"`` (which looks in the current run's directory only) would find nothing.
    """
    if checkpoint.dirpath:
        patterns = [os.path.join(checkpoint.dirpath, "last*.ckpt")]
    elif trainer.loggers:
        patterns = []
        for logger in trainer.loggers:
            root = getattr(logger, "root_dir", None) or logger.save_dir
            if root:
                patterns.append(os.path.join(root, "*", "checkpoints", "last*.ckpt"))
    else:
        patterns = [os.path.join(trainer.default_root_dir, "checkpoints", "last*.ckpt")]
    found = [path for pattern in patterns for path in glob.glob(pattern)]
    return max(found, key=os.path.getmtime) if found else None


class EpochCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` holds the end of every training epoch and the last step.

    Lightning's writes ``last.ckpt`` only together with a top-k checkpoint, so with a monitored
    metric it lags behind at the last improvement, and a run stopped by ``max_steps`` mid-epoch
    leaves its final steps nowhere. Here ``last.ckpt`` is written at the end of every epoch and at
    the end of fitting whenever it does not hold that step yet; the top-k checkpoints are Lightning's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_written_step = -1  # the global step last.ckpt holds (-1: none yet)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        if self.save_last:
            self._last_written_step = trainer.global_step

    def _save_last_if_behind(self, trainer: pl.Trainer) -> None:
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking and not trainer.fast_dev_run
        if self.save_last and fitting and self._last_written_step != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_behind(trainer)  # (the epoch's validation has run by now)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._save_last_if_behind(trainer)  # max_steps may stop mid-epoch


class ManualBPCLI(LightningCLI):
    """LightningCLI with the always-on callbacks of ``manual-bp train`` and its ``--ckpt_path``."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"data": lazy_instance(DigitsDataModule)})
        parser.add_lightning_class_args(EpochCheckpoint, "checkpoint")
        parser.set_defaults(
            {"checkpoint.save_last": True, "checkpoint.monitor": "val/loss", "checkpoint.mode": "min"}
        )
        parser.add_lightning_class_args(GradientCheck, "gradient_check")
        parser.add_lightning_class_args(GradientFlow, "gradient_flow")
        parser.add_lightning_class_args(FeedbackAlignment, "alignment")
        parser.add_argument(
            "--ckpt_path",
            type=str | None,
            default=None,
            help="Resume fitting from this checkpoint; 'last' takes the newest last.ckpt of earlier runs.",
        )
        parser.add_argument(
            "--resume_changed",
            type=bool,
            default=False,
            help=(
                "Resume from --ckpt_path even where the checkpoint was written with other --model "
                "settings, or mid-epoch without the position of the training data (an older manual-bp), "
                "so that the resume is not exact (by default such a resume stops and says why)."
            ),
        )
        parser.add_argument(
            "--threads",
            type=int,
            default=DEFAULTS["threads"],
            help=(
                "Intra-op CPU threads per process (torch.set_num_threads; also OMP_NUM_THREADS for the "
                "processes DDP starts); 0 keeps torch's default (one per core). Default 1: the small "
                "networks trained here lose time to threading (see docs/training.md)."
            ),
        )
        parser.add_argument(
            "--test",
            type=bool,
            default=True,
            help="After fitting, test the best checkpoint (by --checkpoint.monitor) and print the result.",
        )

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        config = self._get(self.config_init, "trainer", default={})
        if config.get("logger") in (None, True) and "logger" not in kwargs:
            kwargs["logger"] = default_loggers(config.get("default_root_dir") or os.getcwd())
        return super().instantiate_trainer(**kwargs)


class _DropTips(logging.Filter):
    """Drops Lightning's advertisements ("💡 Tip: ... try installing litlogger / litmodels")."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


#: The loggers Lightning's ``rank_zero_info`` writes to (Fabric's and the Trainer's).
_RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


def quiet_console() -> None:
    """Silence what Lightning prints that says nothing about this run: its tips, and the
    ``isinstance(treespec, LeafSpec)`` deprecation that its own ``_pytree`` triggers in torch >= 2.10."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropTips) for f in logger.filters):
            logger.addFilter(_DropTips())


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op CPU threads in this process and in the processes it starts (DDP's
    launcher and ``ddp_spawn`` read ``OMP_NUM_THREADS``); ``0`` leaves torch's default."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"--threads must be 0 (torch's default) or a positive number, got {threads!r}")
    if threads == 0:
        return
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def check_checkpoint(path: str, hparams: Any, allow_changed: bool = False) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a readable checkpoint of ``manual-bp train``
    with finite weights and the model settings ``hparams`` of this run (``allow_changed`` skips that
    last comparison). Read with ``weights_only=True``: nothing in the file is executed."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (truncated, corrupt or foreign: each its own exception)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "no details"
        raise CheckpointError(
            f"checkpoint {path} cannot be read: it is truncated, damaged or not a checkpoint written by "
            f"manual-bp train ({type(error).__name__}: {reason[:200]})"
        ) from error
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {path} is not a Lightning checkpoint: it holds no state_dict")
    for key, value in state["state_dict"].items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(value.isfinite().all()):
            bad = int((~value.isfinite()).sum())
            raise CheckpointError(
                f"checkpoint {path} holds non-finite values in {key} ({bad} of {value.numel()}): the file "
                "is damaged or the run had diverged; resume from an earlier checkpoint"
            )
    if allow_changed:
        return
    _check_resumable_mid_epoch(path, state)
    saved, now = dict(state.get("hyper_parameters") or {}), dict(hparams)
    changed = [
        f"{key}: {saved.get(key, '(not set)')!r} in the checkpoint, {now.get(key, '(not set)')!r} now"
        for key in sorted(set(saved) | set(now))
        if saved.get(key, "(not set)") != now.get(key, "(not set)")
    ]
    if changed:
        raise CheckpointError(
            f"checkpoint {path} was written with other model settings: {'; '.join(changed)}. Resume with "
            "the checkpoint's settings (its run directory holds config.yaml), or pass "
            "--resume_changed true to resume with these"
        )


def _check_resumable_mid_epoch(path: str, state: dict[str, Any]) -> None:
    """Raise :class:`CheckpointError` when ``state`` was written mid-epoch without the position of the
    training data in that epoch (an older manual_bp, or a DataModule whose training loader has no
    ``state_dict``): resuming would not go on where that epoch stopped."""
    loop = (state.get("loops") or {}).get("fit_loop") or {}
    batches = loop.get("epoch_loop.batch_progress") or {}
    trained = (batches.get("current") or {}).get("processed", 0)
    position = (loop.get("state_dict") or {}).get("combined_loader")
    if trained and not batches.get("is_last_batch", True) and not position:
        raise CheckpointError(
            f"checkpoint {path} was written mid-epoch (after {trained} batches of epoch "
            f"{state.get('epoch')}) without the position of the training data in that epoch (written by "
            "an older manual-bp, or with a DataModule whose training DataLoader has no state_dict), so "
            "resuming from it would not be exact. Resume from a checkpoint written at the end of an "
            "epoch, or pass --resume_changed true to resume anyway"
        )


def _debug() -> bool:
    """``MANUAL_BP_DEBUG=1``: let errors through with their tracebacks."""
    return os.environ.get("MANUAL_BP_DEBUG", "") not in ("", "0")


def _drop_empty_runs(trainer: pl.Trainer) -> None:
    """Remove the run directories a failed start created that hold nothing but its configuration."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        run = getattr(logger, "log_dir", None)
        if run and os.path.isdir(run):
            files = {os.path.relpath(os.path.join(d, f), run) for d, _, fs in os.walk(run) for f in fs}
            if files <= {"config.yaml", "hparams.yaml"}:
                shutil.rmtree(run, ignore_errors=True)
                parent = os.path.dirname(run)
                if os.path.isdir(parent) and not os.listdir(parent):  # lightning_logs made for it alone
                    os.rmdir(parent)


def _checkpoint_callback(trainer: pl.Trainer) -> ModelCheckpoint:
    return next(cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint))  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> None:
    """Run ``manual-bp train`` with the arguments ``argv`` (default: ``sys.argv[1:]``)."""
    quiet_console()
    with warnings.catch_warnings():
        # `manual-bp train ARGS` passes ARGS while sys.argv still holds "train ARGS" (DDP re-runs it)
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        cli = ManualBPCLI(
            ManualBPModule,
            pl.LightningDataModule,
            subclass_mode_data=True,
            args=argv,
            run=False,
            seed_everything_default=DEFAULTS["seed_everything"],
            trainer_defaults={"max_epochs": DEFAULTS["max_epochs"]},
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "manual-bp train", "description": __doc__.split("\n\n")[0]},
        )
    set_threads(cli.config.get("threads", DEFAULTS["threads"]))
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    checkpoint = _checkpoint_callback(trainer)
    ckpt_path = cli.config.get("ckpt_path")
    if ckpt_path == "last":
        ckpt_path = resolve_last_checkpoint(trainer, checkpoint)
        if ckpt_path is None:
            rank_zero_warn("--ckpt_path last: no last checkpoint found; training from the start.")
    if ckpt_path is not None:
        check_checkpoint(ckpt_path, model.hparams, cli.config.get("resume_changed", False))
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except CheckpointError as error:  # raised while restoring: the training data's position
        _drop_empty_runs(trainer)
        raise CheckpointError(f"checkpoint {ckpt_path}: {error}") from error
    except (ValueError, OSError) as error:  # bad data or a network that does not fit it, before a step
        if trainer.global_step > 0 or _debug():
            raise
        _drop_empty_runs(trainer)
        raise SetupError(f"{error} (MANUAL_BP_DEBUG=1 shows the traceback)") from error
    if not cli.config.get("test", True) or trainer.interrupted:
        return
    tested = checkpoint.best_model_path or checkpoint.last_model_path or None
    results = trainer.test(model, datamodule=datamodule, ckpt_path=tested, verbose=False)
    if trainer.is_global_zero and results:
        metrics = results[0]
        count = len(datamodule.test_dataloader().dataset) if hasattr(datamodule, "test_dataloader") else "?"
        source = f"checkpoint {tested}" if tested else "final weights"
        if "test/acc" in metrics:
            print(f"test accuracy: {metrics['test/acc']:.4f} ({count} held-out samples, {source})")
        else:
            print(f"test mse: {metrics['test/mse']:.6g} ({count} held-out samples, {source})")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
