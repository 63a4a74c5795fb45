"""Callbacks of ``manual-bp train``: a gradient check before the first step, and gradient-flow plots.

- :class:`GradientCheck` prints how much of the network's backward is explicit
  (:func:`manual_bp.coverage`), then compares, on one training batch and before any update, the
  manual gradients with native autograd's on a ``torch.nn`` twin of the network (same weights,
  float64) and stops training with :class:`GradientCheckError` when the largest relative error is
  above the tolerance.
- :class:`GradientFlow` logs the norm of every linear layer's weight gradient ``‖∂c/∂W_n‖ =
  ‖Δ_{n+1}ᵀ Y_n‖`` (BP3) at every optimizer step as ``grad_norm/<layer>``, and at the end of fitting
  writes two PNG files into the run directory: ``curves.png`` (loss and accuracy or MSE per epoch)
  and ``gradient_flow.png`` (the per-layer norms over the steps on a log scale; the first layers'
  curves lying far below the last ones is δ vanishing through a deep sigmoid network).
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from manual_bp.check._tolerances import errors as relative_error
from manual_bp.check._tolerances import tolerances
from manual_bp.coverage import Coverage, coverage
from manual_bp.feedback import feedback_rules, gradient_alignment, use_backprop, weight_alignment
from manual_bp.lightning.module import ManualBPModule, native_loss, native_twin

__all__ = ["FeedbackAlignment", "GradientCheck", "GradientCheckError", "GradientFlow", "compare_gradients"]


class GradientCheckError(RuntimeError):
    """The manual gradients disagree with native autograd's beyond the tolerance."""


def compare_gradients(
    module: ManualBPModule, x: Tensor, y: Tensor, dtype: torch.dtype = torch.float64
) -> dict[str, float]:
    """Relative error ``max|g_manual − g_native| / max(max|g_native|, atol)`` of every parameter's
    gradient (``atol`` of ``torch.testing.assert_close`` for ``dtype``: 1e-7 in float64, so that a
    gradient that is zero up to rounding, like a conv bias's before BatchNorm, does not read as a
    large relative error).

    Both networks are deep copies of ``module.net`` cast to ``dtype``: the manual one as it is, the
    native one through :func:`~manual_bp.lightning.module.native_twin`; both see the batch ``(x, y)``
    with the same random state (dropout masks agree). ``module.net`` itself is not touched.
    """
    manual = copy.deepcopy(module.net).to(dtype)
    native = native_twin(module.net).to(dtype)
    backprop = use_backprop(manual)  # a feedback rule's update is no gradient: check the seed's BP2
    device = next(manual.parameters()).device
    x = x.to(device=device, dtype=dtype)
    y = y.to(device)
    devices = [device] if device.type == "cuda" else []
    grads: list[dict[str, Tensor | None]] = []
    with torch.random.fork_rng(devices=devices), backprop:
        for net, loss_of in ((manual, module.compute_loss), (native, _native_loss_of(module))):
            torch.manual_seed(0)
            for p in net.parameters():
                p.grad = None
            output = net(x)
            loss_of(output, y).backward()
            grads.append({name: p.grad for name, p in net.named_parameters() if p.requires_grad})
    floor = tolerances(dtype)[1]  # a gradient that is zero up to rounding: conv bias before BatchNorm
    errors: dict[str, float] = {}
    for name, expected in grads[1].items():
        actual = grads[0].get(name)
        if expected is None and actual is None:
            continue
        if expected is None or actual is None:
            errors[name] = math.inf  # one side has a gradient, the other none
            continue
        errors[name] = relative_error(actual, expected, floor)[1]
    return errors


def _native_loss_of(module: ManualBPModule) -> Any:
    def loss(output: Tensor, y: Tensor) -> Tensor:
        return native_loss(module.hparams.loss, output, module.targets(y, output))

    return loss


class GradientCheck(pl.Callback):
    """Before the first optimizer step, say how much of the backward is explicit and compare one
    batch's manual gradients with native autograd.

    Prints the first line of :func:`manual_bp.coverage` on that batch and loss (``explicit
    backward: 100% of parameter elements (...)``) and logs its share as
    ``grad_check/explicit_share``. Logs ``grad_check/max_rel_error`` (to every logger, at step 0)
    and prints it; raises :class:`GradientCheckError`, naming the worst parameters, when it
    exceeds ``tolerance``.

    Args:
        tolerance: the largest relative error allowed (the comparison runs in float64, where
            agreement is at the level of 1e-15; float32 rounding would be about 1e-6).
        enabled: ``False`` skips the check and the coverage line.
    """

    def __init__(self, tolerance: float = 1e-6, enabled: bool = True) -> None:
        if not tolerance > 0:
            raise ValueError(f"tolerance must be positive, got {tolerance}")
        self.tolerance = tolerance
        self.enabled = enabled
        self.errors: dict[str, float] = {}
        self.max_rel_error: float | None = None
        self.coverage: Coverage | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.enabled:
            return
        if not isinstance(pl_module, ManualBPModule):
            raise TypeError(f"GradientCheck needs a ManualBPModule, got {type(pl_module).__name__}")
        loader = trainer.train_dataloader
        if isinstance(loader, (list, tuple)):
            loader = loader[0]
        elif isinstance(loader, dict):
            loader = next(iter(loader.values()))
        with torch.random.fork_rng(devices=[]):  # drawing a batch must not move the RNG of training
            x, y = next(iter(loader))[:2]
        x = trainer.precision_plugin.convert_input(x)  # as training sees it (float64 with precision 64)
        self._report_coverage(trainer, pl_module, x, y)
        self.errors = compare_gradients(pl_module, x, y)
        self.max_rel_error = max(self.errors.values(), default=0.0)
        for logger in trainer.loggers:
            logger.log_metrics({"grad_check/max_rel_error": self.max_rel_error}, step=trainer.global_step)
        rule = pl_module.hparams.get("feedback", "backprop")
        note = "" if rule == "backprop" else f"; the seed's BP2, as a feedback rule ({rule}) is no gradient"
        rank_zero_info(
            f"gradient check (one batch of {len(x)}, float64, manual vs native autograd{note}): largest "
            f"relative error {self.max_rel_error:.2e} over {len(self.errors)} parameters "
            f"(tolerance {self.tolerance:g})"
        )
        if not self.max_rel_error <= self.tolerance:
            worst = sorted(self.errors.items(), key=lambda kv: -kv[1])[:5]
            table = ", ".join(f"{name}: {err:.2e}" for name, err in worst)
            raise GradientCheckError(
                f"manual gradients differ from native autograd's: largest relative error "
                f"{self.max_rel_error:.3e} > tolerance {self.tolerance:g} (worst: {table}). "
                "Training stopped before the first step; run `manual-bp check` to find the faulty op."
            )

    def _report_coverage(self, trainer: pl.Trainer, module: ManualBPModule, x: Tensor, y: Tensor) -> None:
        param = next(module.net.parameters(), None)
        device = param.device if param is not None else x.device
        x, y = x.to(device), y.to(device)
        self.coverage = coverage(module.net, x, loss_fn=lambda output: module.compute_loss(output, y))
        for logger in trainer.loggers:
            logger.log_metrics(
                {"grad_check/explicit_share": self.coverage.parameter_share}, step=trainer.global_step
            )
        rank_zero_info(str(self.coverage).splitlines()[0])


class GradientFlow(pl.Callback):
    """Log per-layer weight-gradient norms while training; plot them and the learning curves.

    Every optimizer step it records ``‖∂c/∂W‖₂`` of every ``nn.Linear`` (manual layers included) in
    the network and logs it as ``grad_norm/<layer name>``. Per epoch it records the logged loss
    and metric. At the end of ``fit`` (global rank 0) it writes ``curves.png`` and
    ``gradient_flow.png`` into ``trainer.log_dir`` (the logger's run directory, or
    ``default_root_dir`` without a logger). The history is part of the checkpoint, so a resumed
    run plots the whole training.

    Args:
        log_norms: log the norms with ``self.log`` (to the trainer's loggers).
        plot: write the PNG files at the end of fitting.
    """

    def __init__(self, log_norms: bool = True, plot: bool = True) -> None:
        self.log_norms = log_norms
        self.plot = plot
        self.steps: list[int] = []
        self.norms: dict[str, list[float]] = {}
        self.epochs: list[dict[str, float]] = []
        self._layers: list[tuple[str, nn.Linear]] = []
        self._pending: list[tuple[int, Tensor]] = []
        self.files: list[str] = []

    # -- recording -----------------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = getattr(pl_module, "net", pl_module)
        self._layers = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
        for name, _ in self._layers:
            self.norms.setdefault(name, [])

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._layers:
            return
        norms = torch.stack(
            [
                m.weight.grad.detach().float().norm()
                if m.weight.grad is not None
                else torch.tensor(math.nan, device=m.weight.device)
                for _, m in self._layers
            ]
        )  # (layers,)
        self._pending.append((trainer.global_step, norms))
        if self.log_norms:
            for (name, _), value in zip(self._layers, norms, strict=True):
                pl_module.log(f"grad_norm/{name}", value, on_step=True, on_epoch=False)

    def _flush(self) -> None:
        if not self._pending:
            return
        values = torch.stack([n for _, n in self._pending]).cpu().tolist()  # (steps, layers)
        for (step, _), row in zip(self._pending, values, strict=True):
            self.steps.append(int(step))
            for (name, _), value in zip(self._layers, row, strict=True):
                self.norms[name].append(float(value))
        self._pending = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush()
        logged = trainer.callback_metrics
        metrics = {
            key.removesuffix("_epoch"): float(value)
            for key, value in logged.items()
            if key.split("/")[0] in ("train", "val")
            and not key.endswith("_step")
            and f"{key}_epoch" not in logged  # "train/loss" is the last step's; "train/loss_epoch" the mean
            and value.numel() == 1
        }
        self.epochs.append({"epoch": float(trainer.current_epoch), **metrics})

    # -- checkpoint state (plain Python types: loads with weights_only=True) -------------------------
    def state_dict(self) -> dict[str, Any]:
        self._flush()
        norms = {name: list(values) for name, values in self.norms.items()}
        return {"steps": list(self.steps), "norms": norms, "epochs": [dict(e) for e in self.epochs]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = list(state_dict["steps"])
        self.norms = {k: list(v) for k, v in state_dict["norms"].items()}
        self.epochs = [dict(e) for e in state_dict["epochs"]]

    # -- plots ---------------------------------------------------------------------------------------
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush()
        if not self.plot or trainer.fast_dev_run:
            return
        directory = trainer.log_dir or trainer.default_root_dir  # a collective under DDP: every rank
        if not trainer.is_global_zero:
            return
        os.makedirs(directory, exist_ok=True)
        self.files = plot_history(self.steps, self.norms, self.epochs, directory)
        rank_zero_info("plots: " + ", ".join(self.files))


class FeedbackAlignment(pl.Callback):
    """Under a feedback rule, log and plot how far each layer's update is from backprop's.

    Every ``every_n_steps`` optimizer steps, before the step, on the batch about to be trained on,
    for every layer with a rule (:mod:`manual_bp.feedback`):

    - ``align/weight/<layer>``: the angle in degrees between ``W_n`` and the ``B_n`` its BP2 uses
      (:func:`~manual_bp.feedback.weight_alignment`; for ``dfa`` only the top layer, where ``B_n``
      has ``W_n``'s shape);
    - ``align/grad/<layer>``: the angle between the rule's ``∂c/∂W_n`` and the true backprop
      gradient on the same batch and weights (:func:`~manual_bp.feedback.gradient_alignment`: one
      more forward and two backward passes on those steps).

    At the end of ``fit`` (global rank 0) it writes ``alignment.png`` next to ``gradient_flow.png``.
    The history is part of the checkpoint. Does nothing when no layer has a rule.

    Args:
        every_n_steps: how often to measure (the cost is about one training step each time).
        plot: write ``alignment.png`` at the end of fitting.
    """

    def __init__(self, every_n_steps: int = 10, plot: bool = True) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive int, got {every_n_steps!r}")
        self.every_n_steps = every_n_steps
        self.plot = plot
        self.steps: list[int] = []
        self.angles: dict[str, list[float]] = {}
        self.files: list[str] = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        net = getattr(pl_module, "net", None)
        if net is None or trainer.global_step % self.every_n_steps or not feedback_rules(net):
            return
        x, y = batch[:2]
        angles = {f"weight/{name}": value for name, value in weight_alignment(net).items()}
        loss_of = lambda: pl_module.compute_loss(net(x), y)  # noqa: E731
        angles.update({f"grad/{name}": value for name, value in gradient_alignment(net, loss_of).items()})
        self.steps.append(int(trainer.global_step))
        for key, value in angles.items():
            self.angles.setdefault(key, []).append(value)
        for logger in trainer.loggers:  # every measurement (self.log would keep every log_every_n_steps-th)
            logger.log_metrics({f"align/{k}": v for k, v in angles.items()}, step=trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "angles": {k: list(v) for k, v in self.angles.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = list(state_dict["steps"])
        self.angles = {k: list(v) for k, v in state_dict["angles"].items()}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.plot or not self.steps or trainer.fast_dev_run:
            return
        directory = trainer.log_dir or trainer.default_root_dir  # a collective under DDP: every rank
        if not trainer.is_global_zero:
            return
        os.makedirs(directory, exist_ok=True)
        self.files = [plot_alignment(self.steps, self.angles, directory, pl_module.hparams.get("feedback"))]
        rank_zero_info("plots: " + ", ".join(self.files))


def plot_alignment(steps: list[int], angles: dict[str, list[float]], directory: str, rule: Any = None) -> str:
    """Write ``alignment.png`` (weight and gradient angles per layer over the steps); return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0), squeeze=False)
    titles = {"weight": "angle(W_n, B_n)", "grad": "angle(rule's ∂c/∂W_n, backprop's)"}
    for ax, kind in zip(axes[0], ("weight", "grad"), strict=True):
        for color, (key, values) in enumerate(k for k in angles.items() if k[0].startswith(kind + "/")):
            ax.plot(
                steps[: len(values)],
                values,
                marker=".",
                markersize=3,
                color=f"C{color}",
                label=key[len(kind) + 1 :],
            )
        ax.axhline(90, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("degrees")
        ax.set_title(f"{titles[kind]}{f' ({rule})' if rule else ''}")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(directory, "alignment.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_history(
    steps: list[int], norms: dict[str, list[float]], epochs: list[dict[str, float]], directory: str
) -> list[str]:
    """Write ``curves.png`` and ``gradient_flow.png`` into ``directory``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    metrics = sorted(
        {key.split("/", 1)[1] for e in epochs for key in e if "/" in key}, key=lambda m: (m != "loss", m)
    )
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(5 * max(len(metrics), 1), 3.8), squeeze=False)
    for ax, base in zip(axes[0], metrics, strict=False):
        metric = base
        for stage in ("train", "val"):
            points = [(e["epoch"], e[f"{stage}/{metric}"]) for e in epochs if f"{stage}/{metric}" in e]
            if points:
                ax.plot(*zip(*points, strict=True), marker=".", label=stage)
        ax.set_xlabel("epoch")
        ax.set_ylabel(base)
        ax.set_title(
            {"loss": "loss (per-sample mean)", "acc": "accuracy", "mse": "mean squared error"}.get(base, base)
        )
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = os.path.join(directory, "curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    files.append(path)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    window = max(1, len(steps) // 100)  # a running mean over ~1% of the steps, over the raw values
    for color, (name, values) in enumerate(norms.items()):
        if not values:
            continue
        x = steps[: len(values)]
        ax.plot(x, values, linewidth=0.5, alpha=0.25, color=f"C{color}")
        ax.plot(x, _running_mean(values, window), linewidth=1.5, color=f"C{color}", label=f"{name}.weight")
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("‖∂c/∂W‖₂ (log scale)")
    ax.set_title(f"gradient flow: ‖∂c/∂W‖ per layer (thin: every step; bold: mean of {window})")
    ax.grid(alpha=0.3, which="both")
    if norms:
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(directory, "gradient_flow.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    files.append(path)
    return files


def _running_mean(values: list[float], window: int) -> list[float]:
    """The mean of the last ``window`` values at every position (fewer at the start)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    sums = torch.cat([torch.zeros(1, dtype=torch.float64), tensor.nan_to_num(0.0).cumsum(0)])
    ends = torch.arange(1, len(values) + 1)
    starts = (ends - window).clamp(min=0)
    return ((sums[ends] - sums[starts]) / (ends - starts)).tolist()
