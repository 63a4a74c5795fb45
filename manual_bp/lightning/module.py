"""The LightningModule: trains any network of manual layers with a manual loss.

The network is a plain ``nn.Module`` (by default the seed's :class:`manual_bp.MLP`; any model
passed through :func:`manual_bp.convert` works too) handed to a short LightningModule, which adds
the loss, the optimizer and the metrics. Batches are ``(x, y)`` as the DataModules of
:mod:`manual_bp.lightning.data` yield them.
"""

from __future__ import annotations

import math
import multiprocessing
import random
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanSquaredError, Metric
from torchmetrics.classification import MulticlassAccuracy

import manual_bp
from manual_bp._errors import TrainingDiverged
from manual_bp._factory import FactoryError, call_factory, describe
from manual_bp.convert import native_twin
from manual_bp.engine import LOSSES
from manual_bp.feedback import check_rule, set_feedback
from manual_bp.mlp import MLP

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "ManualBPModule",
    "TrainingDiverged",
    "native_twin",
    "network_from_factory",
]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adagrad": torch.optim.Adagrad,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "sgd": torch.optim.SGD,
}


class ManualBPModule(pl.LightningModule):
    """Train a network built from manual layers with a manual loss.

    Args:
        net: the network (an :class:`manual_bp.MLP`, a converted model, any ``nn.Module``); by
            default ``MLP(sizes, activation, output_activation)``.
        sizes: layer widths of the default MLP, input first (ignored when ``net`` is given).
        activation: hidden activation of the default MLP (a name ``MLP`` knows).
        output_activation: output activation of the default MLP; ``None`` repeats ``activation``
            at every layer, as the seed does.
        loss: ``"half_squared_error"`` (the seed's ``c = ½‖y − t‖²`` per sample, averaged over the
            batch; one-hot targets for classification) or ``"cross_entropy"`` (logits; use
            ``output_activation="identity"``).
        optimizer: ``"sgd"`` (plain SGD, the seed's ``Δw = −α ∂c/∂w`` when ``momentum=0``),
            ``"adam"``, ``"adamw"``, ``"rmsprop"`` or ``"adagrad"``. LightningCLI's ``--optimizer``
            replaces this choice entirely.
        lr: learning rate α.
        momentum: momentum of SGD / RMSprop (0: plain SGD).
        weight_decay: L2 penalty of the optimizer.
        task: ``"classification"`` or ``"regression"``; ``None`` takes the DataModule's ``task``.
        num_classes: the number of classes; ``None`` takes the DataModule's.
        feedback: the rule of BP2 in every ``Linear`` and convolution of the network
            (:mod:`manual_bp.feedback`): ``"backprop"`` (the seed's), ``"fa"``, ``"dfa"``,
            ``"sign"``, ``"brsf"`` or ``"frsf"``. Its matrices are in the checkpoint.
        feedback_scale: the factor on the rule's random matrices (and on ``sign(W)``).
        feedback_seed: the seed of the rule's random matrices (apart from ``seed_everything``: the
            same on every process).
        factory: ``"package.module:function"`` or ``"path/to/file.py:function"``, a function without
            arguments that returns your ``torch.nn.Module``; the network is
            ``manual_bp.convert(function())`` (``sizes`` and the activations are ignored). The path is
            saved in the checkpoint's hyperparameters, so ``load_from_checkpoint`` and resuming
            rebuild the network from it. Give ``net`` or ``factory``, not both.
        functional: also route the torch function calls the factory's model makes to manual
            Functions (``convert(..., functional=True)``).

    The loss is a per-sample *mean*, so under DDP the averaged gradient of ``k`` processes with
    batch ``B / k`` equals the gradient one process computes on the whole batch ``B``.

    Metrics (torchmetrics, one object per stage): multiclass accuracy (micro-averaged: the share
    of samples whose largest output is the label) for classification, mean squared error for
    regression. Logged: ``train/loss``, ``val/loss``, ``test/loss`` and ``{stage}/acc`` or
    ``{stage}/mse``.
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        sizes: list[int] = [64, 64, 10],  # noqa: B006 (read only; a list for the CLI)
        activation: str = "sigmoid",
        output_activation: str | None = None,
        loss: Literal["half_squared_error", "cross_entropy"] = "half_squared_error",
        optimizer: str = "sgd",
        lr: float = 4.0,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        task: Literal["classification", "regression"] | None = None,
        num_classes: int | None = None,
        feedback: Literal["backprop", "fa", "dfa", "sign", "brsf", "frsf"] = "backprop",
        feedback_scale: float = 1.0,
        feedback_seed: int = 0,
        factory: str | None = None,
        functional: bool = False,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {list(LOSSES)}, got {loss!r}")
        if optimizer.lower() not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {lr}")
        if task not in (None, "classification", "regression"):
            raise ValueError(f"task must be 'classification', 'regression' or None, got {task!r}")
        if task == "regression" and loss == "cross_entropy":
            raise ValueError("loss='cross_entropy' needs task='classification', got task='regression'")
        check_rule(feedback, feedback_scale, feedback_seed)
        self.save_hyperparameters(ignore=["net"])
        if net is not None and factory is not None:
            raise ValueError(f"give net or factory, not both (got a {type(net).__name__} and {factory!r})")
        if functional and factory is None:
            raise ValueError("functional=True converts the model of a factory: give factory too")
        if factory is not None:
            net = network_from_factory(factory, functional)
        self.net = net if net is not None else MLP(sizes, activation, output_activation)
        if feedback != "backprop":
            output_size = self.net.sizes[-1] if isinstance(self.net, MLP) else None
            set_feedback(self.net, feedback, feedback_scale, feedback_seed, output_size)
        self.loss_fn: nn.Module = (
            manual_bp.HalfSquaredError(reduction="mean")
            if loss == "half_squared_error"
            else manual_bp.CrossEntropyLoss(reduction="mean")
        )
        self.task = task
        self.num_classes = num_classes
        self.metric_name = "acc"
        self.train_metric: Metric | None = None
        self.val_metric: Metric | None = None
        self.test_metric: Metric | None = None
        self._random_state_to_restore: list[dict[str, Any]] | None = None  # resuming: set at train start
        if task is not None:
            self._make_metrics(task, num_classes)

    # -- set-up --------------------------------------------------------------------------------------
    def teardown(self, stage: str) -> None:
        """In a ``ddp_spawn`` worker, destroy the process group before the worker exits.

        Lightning leaves a gloo process group alive there (it destroys only NCCL ones at exit), and
        freeing it while the worker process shuts down aborted the worker now and then ("terminate
        called without an active exception", about 1 run in 8 here). Nothing after ``fit`` in a
        spawned worker needs the group: the results go back to the main process through a queue.
        """
        if (
            multiprocessing.parent_process() is not None
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
        ):
            torch.distributed.destroy_process_group()

    def setup(self, stage: str) -> None:
        """Take ``task`` / ``num_classes`` from the DataModule and check that the network fits it."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None  # set up already
        task = self.task or getattr(datamodule, "task", None)
        num_classes = self.num_classes or getattr(datamodule, "num_classes", None)
        if task is None:
            raise ValueError(
                "ManualBPModule needs task='classification' or 'regression' (none given and the "
                "DataModule has no `task` attribute)"
            )
        if datamodule is not None and getattr(datamodule, "task", task) != task:
            raise ValueError(f"the model is set up for {task} but the data is for {datamodule.task}")
        if task == "regression" and self.hparams.loss == "cross_entropy":
            raise ValueError("loss='cross_entropy' needs classification data, got a regression DataModule")
        self.task = task
        if datamodule is not None and getattr(datamodule, "num_features", None) is not None:
            shape = getattr(datamodule, "sample_shape", None)
            features = shape if shape is not None and len(shape) > 1 else datamodule.num_features
            self.check_network_fits(features, datamodule.num_outputs, task)
        if task == "classification" and num_classes is None:
            num_classes = self._output_size()
        if self.train_metric is None or self.num_classes != num_classes:
            self._make_metrics(task, num_classes)
        self.num_classes = num_classes

    def _make_metrics(self, task: str, num_classes: int | None) -> None:
        if task == "classification":
            if num_classes is None:
                return  # known in setup()
            self.metric_name = "acc"
            make: Any = lambda: MulticlassAccuracy(num_classes=num_classes, average="micro")  # noqa: E731
        else:
            self.metric_name = "mse"
            make = MeanSquaredError
        self.train_metric, self.val_metric, self.test_metric = make(), make(), make()

    def _probe(self, sample_shape: tuple[int, ...]) -> Tensor:
        """The network's output for a zero batch of two samples of shape ``sample_shape``."""
        param = next(self.net.parameters(), None)
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                return self.net(torch.zeros(2, *sample_shape, dtype=dtype, device=device))
        finally:
            self.net.train(was_training)

    def _output_size(self) -> int:
        first = _first_linear(self.net)
        if first is None:
            raise ValueError("cannot tell the network's number of outputs; pass num_classes")
        return int(self._probe((first.in_features,)).shape[-1])

    def check_network_fits(
        self, num_features: int | tuple[int, ...], num_outputs: int | None, task: str
    ) -> None:
        """Raise a ``ValueError`` unless the network takes samples of ``num_features`` features (or of
        the shape ``num_features``, e.g. ``(1, 8, 8)``) and gives ``num_outputs`` outputs (classes for
        classification, targets for regression)."""
        shape = (num_features,) if isinstance(num_features, int) else tuple(num_features)
        first = _first_linear(self.net)
        if (
            len(shape) == 1
            and first is not None
            and first.in_features != shape[0]
            and _takes_input_first(self.net, first)
        ):
            raise ValueError(
                f"the network expects {first.in_features} input features (its first layer is "
                f"{first.in_features} -> {first.out_features}) but the data has {shape[0]}; "
                f"set the first entry of --model.sizes to {shape[0]}"
            )
        try:
            out = self._probe(shape)
        except Exception as error:  # noqa: BLE001 (re-raised with the data's side of the story)
            what = f"{shape[0]} input features" if len(shape) == 1 else f"samples of shape {shape}"
            raise ValueError(f"the network does not accept the data's {what}: {error}") from error
        what = "classes" if task == "classification" else "target columns"
        if num_outputs is not None and out.shape[-1] != num_outputs:
            factory = self.hparams.get("factory")
            fix = (
                f"the model of {factory} must end in" if factory else "set the last entry of --model.sizes to"
            )
            raise ValueError(
                f"the network gives {out.shape[-1]} outputs but the data has {num_outputs} {what}; "
                f"{fix} {num_outputs}"
            )

    # -- loss ----------------------------------------------------------------------------------------
    def targets(self, y: Tensor, output: Tensor) -> Tensor:
        """What the loss compares the output with: one-hot labels for the half squared error on
        classification, labels for the cross-entropy, ``y`` itself for regression."""
        if self.task == "classification" and self.hparams.loss == "half_squared_error":
            return F.one_hot(y, output.shape[-1]).to(output.dtype)  # (N,) -> (N, C)
        if self.task == "regression":
            return y.to(output.dtype)
        return y

    def compute_loss(self, output: Tensor, y: Tensor) -> Tensor:
        """The manual loss of a batch (mean over samples)."""
        return self.loss_fn(output, self.targets(y, output))

    def training_loss(self, output: Tensor, y: Tensor) -> Tensor:
        """The loss a training step backpropagates: the batch mean with one process; under DDP this
        rank's sum times ``world / N``, with ``N`` the global batch's size (one ``all_reduce``), so that
        DDP's average over ranks is the mean over the global batch even when the ranks' shares
        differ (the last batch of an epoch) or one is empty."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return self.compute_loss(output, y)
        count = torch.tensor([float(len(y))], device=output.device)
        torch.distributed.all_reduce(count)  # N, the global batch
        self.loss_fn.reduction = "sum"
        try:
            total = self.loss_fn(output, self.targets(y, output))  # Σ_i c_i over this rank's samples
        finally:
            self.loss_fn.reduction = "mean"
        return total * (world / count.to(total.dtype)).squeeze(0)

    # -- steps ---------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str, metric: Metric | None) -> Tensor:
        x, y = batch
        output = self.net(x)  # (N, D_out)
        loss = self.training_loss(output, y) if stage == "train" else self.compute_loss(output, y)
        on_step = stage == "train"  # training also logs per step (train/loss_step)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=on_step,
            on_epoch=True,
            prog_bar=True,
            batch_size=max(len(x), 1),  # (a rank's share of the last global batch may be empty)
            sync_dist=True,
        )
        if metric is not None and len(x):
            metric(output.detach().float(), y if self.task == "classification" else y.float())
            self.log(f"{stage}/{self.metric_name}", metric, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._step(batch, "train", self.train_metric)
        if not bool(torch.isfinite(loss)):  # (one sync per step: a NaN step must not be taken)
            raise TrainingDiverged(
                f"training diverged at step {self.global_step} (epoch {self.current_epoch}): the loss is "
                f"{float(loss.detach())}; no update was made from it, and the checkpoints written so far "
                f"hold finite weights. Try a smaller learning rate (--model.lr {self.hparams.lr:g} now) or "
                "--trainer.gradient_clip_val"
            )
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val", self.val_metric)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "test", self.test_metric)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self.net(batch[0])

    # -- checkpoints: what an exact resume needs --------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add every process's random state (the draws of training, such as dropout, go on from it
        when resuming) and mark a fit stopped mid-epoch as mid-epoch.

        Lightning counts an epoch that ``max_steps`` stopped as processed, so a checkpoint written
        after that stop would resume at the next epoch, skipping the rest of the stopped one; here it
        reads as the mid-epoch checkpoint it is (as ``every_n_train_steps`` writes one).
        """
        checkpoint[RANDOM_STATE_KEY] = _all_processes(_random_state())
        loops = checkpoint.get("loops", {}).get("fit_loop")
        if self._trainer is None or not loops:
            return
        epochs, batches = loops["epoch_progress"], loops["epoch_loop.batch_progress"]
        trained = batches["current"]["processed"]
        if 0 < trained < self.trainer.num_training_batches and not batches["is_last_batch"]:
            for part in ("total", "current"):
                if epochs[part]["processed"] == epochs[part]["started"]:  # the stopped epoch, not done
                    epochs[part]["processed"] = epochs[part]["completed"] = epochs[part]["started"] - 1

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Give the network the precision of the run before Lightning copies the weights in, and keep
        the checkpoint's random states for :meth:`on_train_start` of a resumed fit.

        Lightning loads a checkpoint before its precision plugin converts the network: with
        ``--trainer.precision 64`` the float64 weights were rounded to the float32 network's
        parameters and then widened again (differences of about 1e-8 after resuming).
        """
        if self._trainer is not None:
            self.trainer.precision_plugin.convert_module(self)
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        self._random_state_to_restore = checkpoint.get(RANDOM_STATE_KEY) if fitting else None
        if fitting and self._random_state_to_restore is None:
            rank_zero_warn(
                "the checkpoint holds no random state (written by an older manual_bp): random draws "
                "after resuming (dropout) differ from an uninterrupted run's"
            )

    def on_train_start(self) -> None:
        """Resuming: set the random state to the one the checkpoint was written with, now that
        everything before the first step (sanity check, gradient check) has run."""
        states, self._random_state_to_restore = self._random_state_to_restore, None
        if not states:
            return
        rank, world = self.global_rank, self.trainer.world_size
        if len(states) != world:
            rank_zero_warn(
                f"the checkpoint was written by {len(states)} processes and resumes on {world}: random "
                "draws after resuming (dropout) differ from an uninterrupted run's"
            )
        _set_random_state(states[rank % len(states)])

    # -- optimizer -----------------------------------------------------------------------------------
    def configure_optimizers(self) -> torch.optim.Optimizer:
        name = self.hparams.optimizer.lower()
        kwargs: dict[str, Any] = {"lr": self.hparams.lr, "weight_decay": self.hparams.weight_decay}
        if name in ("sgd", "rmsprop"):
            kwargs["momentum"] = self.hparams.momentum
        elif self.hparams.momentum:
            raise ValueError(f"momentum applies to 'sgd' and 'rmsprop', not {name!r}")
        return OPTIMIZERS[name](self.parameters(), **kwargs)


#: The checkpoint key of the random states of every process (a list, rank 0 first).
RANDOM_STATE_KEY = "manual_bp_random_state"


def _random_state() -> dict[str, Any]:
    """This process's global random states (torch, CUDA, NumPy, Python), in types that
    ``torch.load(weights_only=True)`` reads."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "python": random.getstate(),
    }


def _set_random_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, values, gauss_next = state["python"]
    random.setstate((version, tuple(values), gauss_next))


def _all_processes(state: dict[str, Any]) -> list[dict[str, Any]]:
    """``state`` of every process of the default group (rank 0 first); ``[state]`` without DDP."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [state]
    states: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, state)
    return states


def network_from_factory(factory: str, functional: bool = False) -> nn.Module:
    """``manual_bp.convert(f())`` for the factory ``f`` that ``factory`` names (``"pkg.module:f"`` or
    ``"file.py:f"``, resolved as ``manual-bp check --model`` does; errors are
    :class:`~manual_bp._factory.FactoryError`, a ``ValueError``, naming ``--model.factory``)."""
    option = "--model.factory"
    model = call_factory(factory, option, returning="a torch.nn.Module")
    if not isinstance(model, nn.Module):
        raise FactoryError(
            f"{option}: {factory}() returned {describe(model)}; expected a torch.nn.Module "
            "(a factory for `manual-bp check --model` returns (model, inputs): train takes the model only)"
        )
    return manual_bp.convert(model, inplace=True, functional=functional)


def _first_linear(model: nn.Module) -> nn.Linear | None:
    return next((m for m in model.modules() if isinstance(m, nn.Linear)), None)


def _takes_input_first(model: nn.Module, first: nn.Linear) -> bool:
    """Whether ``first`` surely sees the raw input: an MLP, or a Sequential that starts with it."""
    if isinstance(model, MLP):
        return True
    return isinstance(model, nn.Sequential) and len(model) > 0 and model[0] is first


def native_loss(name: str, output: Tensor, target: Tensor) -> Tensor:
    """The native-autograd twin of the manual loss ``name`` (mean over samples)."""
    if name == "half_squared_error":
        return 0.5 * (output - target).pow(2).sum(-1).mean()
    return F.cross_entropy(output, target)
