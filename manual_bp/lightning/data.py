"""DataModules for ``manual-bp train``: the digits that scikit-learn ships, a teacher network, your files.

Every DataModule here yields batches ``(x, y)`` with ``x (N, D) float32`` (or any sample shape,
``x (N, C, H, W)`` for images: ``DigitsDataModule(images=True)``, ``FileDataModule``) and

- classification: ``y (N,) int64`` class labels in ``[0, num_classes)``; the LightningModule turns them
  into one-hot targets for the half squared error (or passes them to the cross-entropy);
- regression: ``y (N, T) float32`` targets.

Loading happens in ``setup(stage)`` (nothing is downloaded). After ``setup`` a DataModule knows
``task``, ``sample_shape`` (``x.shape[1:]``), ``num_features`` (its number of elements),
``num_outputs`` (classes, or target columns) and ``num_classes``.

Splits are seeded (and stratified by label for classification) with scikit-learn's
``train_test_split``. The training order is a seeded permutation per epoch (``seed + epoch``), and
the training loader's state is its position in the epoch (:class:`ResumableLoader`), so a run
resumed from a checkpoint, even one written mid-epoch, sees the same batches as an uninterrupted one;
no loader draws from the global random state (each has its own generator); under DDP that same
order is sharded across processes (rank ``r`` of ``k`` takes positions ``r, r + k, ...``), so ``k``
processes with batch ``B / k`` see exactly the global batches one process with batch ``B`` sees.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from manual_bp._errors import CheckpointError
from manual_bp.ops import ACTIVATION_NAMES, get_activation

__all__ = [
    "ArrayDataModule",
    "DigitsDataModule",
    "FileDataModule",
    "GlobalBatchSampler",
    "ResumableLoader",
    "TeacherRegressionDataModule",
]

Task = Literal["classification", "regression"]


class GlobalBatchSampler(DistributedSampler):
    """Whole batches of indices: the seeded order of the epoch cut into global batches of
    ``batch_size × world`` samples, each split over the ranks without padding (rank ``r`` of ``k``
    takes positions ``r, r + k, …`` of the global batch; the last one may be smaller, and a rank may
    get an empty batch). Every rank runs the same number of steps, and the global batches are the ones
    one process with batch ``batch_size × k`` sees: no sample repeated, none dropped. Used with
    ``DataLoader(batch_size=None)``, each item a list of indices; a ``DistributedSampler`` so that
    Lightning keeps it (its permutation: ``randperm(N)`` seeded with ``seed + epoch``, as
    ``DistributedSampler``'s). After :meth:`resume_at` a checkpoint's position, the resumed epoch
    starts at the first batch not yet trained."""

    def __init__(
        self, data: TensorDataset, batch_size: int, world: int, rank: int, shuffle: bool, seed: int
    ) -> None:
        super().__init__(data, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = batch_size  # per process
        self.size = len(data)
        self._resume: tuple[int, int] | None = None  # (epoch, its batches trained before the checkpoint)

    def __iter__(self):  # type: ignore[override]
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        step = self.batch_size * self.num_replicas
        done = self._resume[1] if self._resume is not None and self._resume[0] == self.epoch else 0
        for start in range(done * step, self.size, step):
            yield order[start : start + step][self.rank :: self.num_replicas]

    def __len__(self) -> int:
        return -(-self.size // (self.batch_size * self.num_replicas))

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self._resume is not None and self._resume[0] != epoch:
            self._resume = None  # the resumed epoch is over: the next ones start at their first batch

    def position(self, batches_done: int) -> dict[str, int | bool]:
        """Where training stands: ``batches_done`` global batches of epoch ``epoch`` trained, and the
        settings that fix the order (a position means nothing in another order)."""
        return {
            "epoch": self.epoch,
            "batches_done": batches_done,
            "samples": self.size,
            "global_batch_size": self.batch_size * self.num_replicas,
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    def resume_at(self, position: dict[str, int | bool]) -> None:
        """Go on from ``position`` (:meth:`position` of the interrupted run): iterating epoch
        ``position["epoch"]`` skips its first ``batches_done`` global batches. Raises
        :class:`~manual_bp._errors.CheckpointError` when the position lies inside an epoch whose order
        differs here (other data, global batch size, seed or shuffling)."""
        epoch, done = int(position["epoch"]), int(position["batches_done"])
        self.set_epoch(epoch)
        if not 0 < done < len(self):
            self._resume = None  # at an epoch's start or end: nothing to skip
            return
        now = self.position(done)
        changed = [
            f"{key} {position.get(key)!r} then, {now[key]!r} now"
            for key in now
            if position.get(key) != now[key]
        ]
        if changed:
            raise CheckpointError(
                f"it was written mid-epoch (after {done} batches of epoch {epoch}) and the training data's "
                f"order differs now: {'; '.join(changed)}. Resume with the data settings of that run, or "
                "from a checkpoint written at the end of an epoch"
            )
        self._resume = (epoch, done)


class ResumableLoader(DataLoader):
    """The training ``DataLoader`` of :class:`GlobalBatchSampler` batches, resumable mid-epoch.

    Its ``state_dict`` (which Lightning saves in every checkpoint, and loads back when a fit resumes
    from one) is the sampler's :meth:`~GlobalBatchSampler.position` with ``batches_trained()``, the
    batches of the epoch trained so far, counted by the trainer (the loader itself runs ahead of
    training: Lightning fetches one batch in advance). Batches draw nothing from the global random
    state: the loader's own ``generator`` seeds worker processes.
    """

    def __init__(
        self,
        dataset: TensorDataset,
        sampler: GlobalBatchSampler,
        batches_trained: Callable[[], int],
        num_workers: int = 0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            dataset, batch_size=None, sampler=sampler, num_workers=num_workers, generator=generator
        )
        self.batches_trained = batches_trained

    def state_dict(self) -> dict[str, int | bool]:
        return self.sampler.position(self.batches_trained())  # type: ignore[union-attr]

    def load_state_dict(self, state_dict: dict[str, int | bool]) -> None:
        self.sampler.resume_at(state_dict)  # type: ignore[union-attr]


def _generator(seed: int) -> torch.Generator:
    """A DataLoader's own generator: creating its iterator draws a seed for worker processes, which
    would otherwise come from the global random state and shift the draws of training (dropout) by one
    at every epoch and every validation, so that no checkpoint could hold the state training resumes
    with."""
    return torch.Generator().manual_seed(seed)


def _world() -> tuple[int, int]:
    """``(world size, rank)`` of the default process group, ``(1, 0)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class ArrayDataModule(pl.LightningDataModule):
    """Base class: splits arrays ``(x, y)`` from :meth:`load` into train / validation / test loaders.

    Args:
        batch_size: samples per training batch (per process under DDP).
        eval_batch_size: samples per validation / test batch (default: 256).
        val_fraction: fraction of all samples held out for validation, in ``(0, 1)``.
        test_fraction: fraction of all samples held out for the final test, in ``(0, 1)``.
        seed: seeds the split and the per-epoch training order.
        shuffle: reshuffle the training set every epoch (seeded); ``False`` keeps the split's order.
        num_workers: DataLoader worker processes (0 loads in the main process; the data is small).
    """

    task: Task = "classification"

    def __init__(
        self,
        batch_size: int = 16,
        eval_batch_size: int = 256,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(
                f"batch_size and eval_batch_size must be positive, got {batch_size} and {eval_batch_size}"
            )
        for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 < fraction < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {fraction}")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}"
            )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.seed = seed
        self.shuffle = shuffle
        self.num_workers = num_workers
        self.sample_shape: tuple[int, ...] | None = None
        self.num_features: int | None = None
        self.num_outputs: int | None = None
        self.num_classes: int | None = None
        self._splits: dict[str, TensorDataset] | None = None

    # -- what subclasses write ---------------------------------------------------------------------
    def load(self) -> tuple[Tensor, Tensor]:
        """Return all samples: ``x (N, D)`` or ``(N, *sample_shape)`` numbers, ``y (N,)`` labels or
        ``(N, T)`` targets."""
        raise NotImplementedError

    # -- LightningDataModule -----------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self._splits is not None:
            return
        x, y = self.load()
        x, y = self._validate(x, y)
        self._splits = self._split(x, y)

    def train_dataloader(self) -> DataLoader:
        """Batches of ``batch_size`` in a seeded order per epoch (``seed + epoch``), sharded by rank.

        The batches come from a :class:`GlobalBatchSampler` built here even for one process, so
        Lightning keeps it: its permutation depends only on ``(seed, epoch)``, and each global batch
        of ``batch_size × k`` samples is split over the ``k`` ranks without padding. One process with
        batch ``B`` and ``k`` processes with batch ``B / k`` therefore see the same global batches,
        the last, partial one included (``ManualBPModule`` weights each rank's loss by its share of
        the global batch, so the gradient is one process's).
        """
        data = self._stage_data("train")
        world, rank = _world()
        sampler = GlobalBatchSampler(data, self.batch_size, world, rank, self.shuffle, self.seed)
        return ResumableLoader(data, sampler, self._batches_trained, self.num_workers, _generator(self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def _eval_loader(self, name: str) -> DataLoader:
        """Batches of ``eval_batch_size`` in the split's order, sharded by rank without padding:
        under DDP every sample is evaluated exactly once (Lightning's own ``DistributedSampler``
        would repeat samples to even out the shards, and warns about it)."""
        data = self._stage_data(name)
        world, rank = _world()
        sampler = UnrepeatedDistributedSampler(data, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(
            data,
            batch_size=self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            generator=_generator(self.seed),
        )

    def _batches_trained(self) -> int:
        """The batches of the current epoch trained so far (0 outside a ``Trainer``)."""
        trainer = self.trainer
        return 0 if trainer is None else int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def split_sizes(self) -> dict[str, int]:
        """Samples per split (after ``setup``)."""
        if self._splits is None:
            raise RuntimeError("call setup() first")
        return {name: len(data) for name, data in self._splits.items()}

    # -- helpers -----------------------------------------------------------------------------------
    def _stage_data(self, name: str) -> TensorDataset:
        if self._splits is None:
            self.setup()
        assert self._splits is not None
        return self._splits[name]

    def _validate(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Check shapes, dtypes and labels; set ``num_features``, ``num_outputs``, ``num_classes``."""
        source = self._source()
        if x.dim() < 2:
            raise ValueError(
                f"{source}: x must have a sample dim and at least one more, (N, D) or e.g. (N, C, H, W), "
                f"got shape {tuple(x.shape)}"
            )
        if not (x.is_floating_point() or _is_integer(x)):
            raise TypeError(f"{source}: x must hold numbers, got dtype {x.dtype}")
        x = x.to(torch.float32)
        if len(y) != len(x):
            raise ValueError(f"{source}: x has {len(x)} samples but y has {len(y)}; they must match")
        if len(x) < 10:
            raise ValueError(f"{source}: need at least 10 samples to split, got {len(x)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{source}: x holds NaN or infinite values")
        self.sample_shape = tuple(x.shape[1:])
        self.num_features = math.prod(self.sample_shape)
        if self.task == "classification":
            y = self._validate_labels(y, source)
            self.num_outputs = self.num_classes
        else:
            if y.dim() == 1:
                y = y.unsqueeze(1)
            if y.dim() != 2:
                raise ValueError(f"{source}: regression targets must be (N,) or (N, T), got {tuple(y.shape)}")
            y = y.to(torch.float32)
            if not torch.isfinite(y).all():
                raise ValueError(f"{source}: the targets hold NaN or infinite values")
            self.num_outputs = y.shape[1]
            self.num_classes = None
        return x, y

    def _validate_labels(self, y: Tensor, source: str) -> Tensor:
        if y.dim() == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.dim() != 1:
            raise ValueError(
                f"{source}: classification needs one label per sample, shape (N,), got {tuple(y.shape)}"
            )
        if y.is_floating_point():
            if not torch.isfinite(y).all() or (y != y.round()).any():
                bad = y[~torch.isfinite(y) | (y != y.round())][0].item()
                raise ValueError(
                    f"{source}: class labels must be whole numbers 0..C-1, got {bad} "
                    "(for real-valued targets use task='regression')"
                )
        elif not _is_integer(y):
            raise TypeError(f"{source}: class labels must be integers, got dtype {y.dtype}")
        y = y.to(torch.int64)
        expected = getattr(self, "expected_classes", None)
        low, high = int(y.min()), int(y.max())
        if low < 0 or (expected is not None and high >= expected):
            upper = f"{expected - 1}" if expected is not None else "C-1"
            raise ValueError(
                f"{source}: class labels must lie in 0..{upper}"
                + (f" (num_classes={expected})" if expected is not None else "")
                + f", got labels from {low} to {high}"
            )
        if expected is None:
            _check_every_class_occurs(y, source)
        self.num_classes = expected if expected is not None else high + 1
        if self.num_classes < 2:
            raise ValueError(f"{source}: classification needs at least 2 classes, got {self.num_classes}")
        return y

    def _split(self, x: Tensor, y: Tensor) -> dict[str, TensorDataset]:
        from sklearn.model_selection import train_test_split

        stratify = y.numpy() if self.task == "classification" else None
        index = np.arange(len(x))
        try:
            rest, test = train_test_split(
                index, test_size=self.test_fraction, random_state=self.seed, stratify=stratify
            )
            val_of_rest = self.val_fraction / (1.0 - self.test_fraction)
            train, val = train_test_split(
                rest,
                test_size=val_of_rest,
                random_state=self.seed,
                stratify=None if stratify is None else stratify[rest],
            )
        except ValueError as error:
            raise ValueError(
                f"{self._source()}: cannot split {len(x)} samples into train/val/test "
                f"(val_fraction={self.val_fraction}, test_fraction={self.test_fraction}): {error}"
            ) from error
        return {
            name: TensorDataset(x[torch.as_tensor(part)], y[torch.as_tensor(part)])
            for name, part in (("train", train), ("val", val), ("test", test))
        }

    def _source(self) -> str:
        return type(self).__name__


def _is_integer(tensor: Tensor) -> bool:
    return not tensor.is_floating_point() and not tensor.is_complex() and tensor.dtype != torch.bool


def _check_every_class_occurs(y: Tensor, source: str) -> None:
    """Without ``num_classes`` the classes are ``0..max(y)``: each of them must occur in ``y``, or the
    labels are likely wrong (1-based, or a stray value); the error lists the labels found and those
    missing."""
    labels, counts = (t.tolist() for t in torch.unique(y, return_counts=True))
    high = labels[-1]
    gaps = [(a + 1, b - 1) for a, b in zip([-1, *labels[:-1]], labels, strict=True) if b - a > 1]
    if not gaps:
        return
    missing = ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in gaps)
    several = len(gaps) > 1 or gaps[0][0] != gaps[0][1]
    shown = [f"{label} ({count})" for label, count in zip(labels, counts, strict=True)]
    shown[0] = f"{labels[0]} ({counts[0]} samples)"
    found = ", ".join(shown[:12]) + (f", ... ({len(labels)} labels in all)" if len(shown) > 12 else "")
    raise ValueError(
        f"{source}: classes inferred from the largest label ({high}) as 0..{high}, but "
        f"label{'s' if several else ''} {missing} never occur{'' if several else 's'}; found labels {found}. "
        "Expected labels 0..C-1; give num_classes (--data.num_classes) if classes are absent on purpose"
    )


class DigitsDataModule(ArrayDataModule):
    """The 8×8 digits that scikit-learn ships (1,797 images, 10 classes): no download.

    Inputs are the 64 pixel intensities scaled from 0..16 to [0, 1], as 64 features (``images=False``)
    or as 1×8×8 images for convolutional networks (``images=True``); labels are 0..9. The split is
    stratified and seeded: by default 70% train, 10% validation, 20% test.

    Args:
        images: give ``x`` as ``(N, 1, 8, 8)`` images instead of ``(N, 64)`` rows.
    """

    task: Task = "classification"

    def __init__(
        self,
        images: bool = False,
        batch_size: int = 16,
        eval_batch_size: int = 256,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, val_fraction, test_fraction, seed, shuffle, num_workers)
        if not isinstance(images, bool):
            raise TypeError(f"images must be True or False, got {images!r}")
        self.images = images

    def load(self) -> tuple[Tensor, Tensor]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.as_tensor(digits.data, dtype=torch.float32) / 16.0  # (1797, 64) in [0, 1]
        if self.images:
            x = x.reshape(-1, 1, 8, 8)  # (1797, 64) -> (1797, 1, 8, 8): rows of 8 pixels, top first
        y = torch.as_tensor(digits.target, dtype=torch.int64)  # (1797,)
        return x, y


class TeacherRegressionDataModule(ArrayDataModule):
    """A synthetic regression: targets are a random, seeded teacher network's outputs.

    ``x ~ N(0, 1)``; the teacher has layer sizes ``sizes`` with weights ``N(0, 1 / fan_in)``, biases
    ``N(0, 0.1²)``, ``activation`` after every hidden layer and ``output_activation`` at the end;
    ``y = teacher(x) + noise · N(0, 1)``. A student network with the same sizes can fit it exactly.

    Args:
        sizes: the teacher's layer widths, input first, outputs last.
        activation: an activation name of the op registry (``"tanh"``, ``"sigmoid"``, ``"relu"``,
            ``"identity"``, ...: :data:`manual_bp.ops.ACTIVATION_NAMES`).
        output_activation: as ``activation``, applied to the teacher's output.
        num_samples: samples drawn.
        noise: standard deviation of Gaussian noise added to the targets.
        data_seed: seeds the teacher and the inputs (``seed`` seeds the split and order).
    """

    task: Task = "regression"

    def __init__(
        self,
        sizes: list[int] = [8, 32, 2],  # noqa: B006 (read only; a list for the CLI)
        activation: str = "tanh",
        output_activation: str = "identity",
        num_samples: int = 2000,
        noise: float = 0.0,
        data_seed: int = 0,
        batch_size: int = 16,
        eval_batch_size: int = 256,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, val_fraction, test_fraction, seed, shuffle, num_workers)
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise ValueError(f"sizes must hold at least two positive widths, got {list(sizes)}")
        for name, value in (("activation", activation), ("output_activation", output_activation)):
            if value not in ACTIVATION_NAMES:
                raise ValueError(f"{name} must be one of {sorted(ACTIVATION_NAMES)}, got {value!r}")
        if num_samples < 10:
            raise ValueError(f"num_samples must be at least 10, got {num_samples}")
        if noise < 0 or not math.isfinite(noise):
            raise ValueError(f"noise must be a finite number >= 0, got {noise}")
        self.sizes = list(sizes)
        self.activation = activation
        self.output_activation = output_activation
        self.num_samples = num_samples
        self.noise = noise
        self.data_seed = data_seed

    def load(self) -> tuple[Tensor, Tensor]:
        generator = torch.Generator().manual_seed(self.data_seed)
        x = torch.randn(self.num_samples, self.sizes[0], generator=generator)  # (N, D_0)
        h = x
        last = len(self.sizes) - 2
        for n, (d_in, d_out) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True)):
            w = torch.randn(d_out, d_in, generator=generator) / math.sqrt(d_in)  # (D_out, D_in)
            b = 0.1 * torch.randn(d_out, generator=generator)
            h = h @ w.T + b  # (N, D_in) @ (D_in, D_out) -> (N, D_out)
            h = get_activation(self.output_activation if n == last else self.activation).f(h)
        y = h + self.noise * torch.randn(h.shape, generator=generator)  # (N, D_last)
        return x, y


class FileDataModule(ArrayDataModule):
    """Your own data from a ``.csv``, ``.npz`` or ``.pt`` file.

    Layouts:

    - ``.csv``: one sample per row, the feature columns first and the ``num_targets`` target columns
      last (for classification one last column of integer labels ``0..C-1``). A first row is taken
      as a header (and logged) only when none of its cells is a number; any other cell that is not a
      number is an error naming its line and column. ``delimiter`` sets the separator.
    - ``.npz`` (``numpy.savez``): arrays ``x`` of shape ``(N, D)``, or any sample shape such as
      ``(N, C, H, W)`` images, and ``y`` of shape ``(N,)`` (labels, or one target) or ``(N, T)``
      (targets).
    - ``.pt`` (``torch.save``): a dict ``{"x": Tensor (N, ...), "y": Tensor (N,) or (N, T)}``; loaded
      with ``weights_only=True``.

    Args:
        path: the file.
        task: ``"classification"`` (integer labels) or ``"regression"`` (float targets).
        num_targets: target columns at the end of each csv row (classification: 1).
        num_classes: the number of classes; labels must lie in ``0..num_classes-1``. Default: the
            largest label + 1, and then every label ``0..C-1`` must occur (the error lists those found).
        num_features: if given, the number of feature columns the file must have (2-D ``x`` only).
        delimiter: csv field separator.
    """

    def __init__(
        self,
        path: str,
        task: Task = "classification",
        num_targets: int = 1,
        num_classes: int | None = None,
        num_features: int | None = None,
        delimiter: str = ",",
        batch_size: int = 16,
        eval_batch_size: int = 256,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, val_fraction, test_fraction, seed, shuffle, num_workers)
        if task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
        if num_targets < 1:
            raise ValueError(f"num_targets must be at least 1, got {num_targets}")
        if task == "classification" and num_targets != 1:
            raise ValueError(
                f"classification takes one label column (num_targets=1), got num_targets={num_targets}"
            )
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if num_features is not None and num_features < 1:
            raise ValueError(f"num_features must be at least 1, got {num_features}")
        self.path = path
        self.task = task
        self.num_targets = num_targets
        self.expected_classes = num_classes
        self.expected_features = num_features
        self.delimiter = delimiter

    def _source(self) -> str:
        return f"data file {self.path}"

    def load(self) -> tuple[Tensor, Tensor]:
        path = Path(self.path)
        if not path.is_file():
            raise FileNotFoundError(
                f"data file not found: {path} (expected a .csv, .npz or .pt file; see FileDataModule)"
            )
        suffix = path.suffix.lower()
        if suffix == ".csv":
            x, y = self._load_csv(path)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as arrays:
                missing = [key for key in ("x", "y") if key not in arrays.files]
                if missing:
                    raise ValueError(
                        f"{self._source()}: expected arrays 'x' and 'y', missing {missing} "
                        f"(found {arrays.files})"
                    )
                x, y = torch.as_tensor(arrays["x"]), torch.as_tensor(arrays["y"])
        elif suffix == ".pt":
            data = torch.load(path, weights_only=True)
            if not isinstance(data, dict) or not all(isinstance(data.get(k), Tensor) for k in ("x", "y")):
                found = sorted(data) if isinstance(data, dict) else type(data).__name__
                raise ValueError(f"{self._source()}: expected a dict with tensors 'x' and 'y', found {found}")
            x, y = data["x"], data["y"]
        else:
            raise ValueError(f"{self._source()}: unknown file type {suffix!r}; expected .csv, .npz or .pt")
        if self.expected_features is not None and (x.dim() != 2 or x.shape[1] != self.expected_features):
            got = x.shape[1] if x.dim() == 2 else f"shape {tuple(x.shape)}"
            raise ValueError(
                f"{self._source()}: expected {self.expected_features} feature columns, got {got}"
            )
        return x, y

    def _load_csv(self, path: Path) -> tuple[Tensor, Tensor]:
        """Rows of numbers; a first row is a header only when none of its cells is a number (logged)."""
        with path.open(newline="") as handle:
            reader = csv.reader(handle, delimiter=self.delimiter)
            lines = [(reader.line_num, row) for row in reader if row]  # (line in the file, cells)
        header = bool(lines) and not any(_is_number(cell) for cell in lines[0][1])
        if header:
            line, names = lines.pop(0)
            rank_zero_info(
                f"{self._source()}: line {line} taken as a header (no cell is a number): {', '.join(names)}"
            )
        rows = [row for _, row in lines]
        if not rows:
            raise ValueError(f"{self._source()}: no data rows")
        width = len(rows[0])
        expected = None if self.expected_features is None else self.expected_features + self.num_targets
        for line, row in enumerate(rows, start=1):
            if len(row) != (expected or width):
                raise ValueError(
                    f"{self._source()}: expected {expected or width} columns per row"
                    + (
                        f" ({self.expected_features} features + {self.num_targets} target)"
                        if expected
                        else " (as in the first row)"
                    )
                    + f", got {len(row)} in data row {line}"
                )
        if width <= self.num_targets:
            raise ValueError(
                f"{self._source()}: expected at least {self.num_targets + 1} columns "
                f"(features, then {self.num_targets} target column(s)), got {width}"
            )
        values = self._numbers(lines, header)
        x = torch.as_tensor(values[:, : width - self.num_targets], dtype=torch.float32)
        y = torch.as_tensor(values[:, width - self.num_targets :])
        return x, y

    def _numbers(self, lines: list[tuple[int, list[str]]], header: bool) -> np.ndarray:
        """The cells of ``lines`` as a float64 array; a cell that is not a number is an error naming
        its line and column."""
        try:
            return np.asarray([row for _, row in lines], dtype=np.float64)
        except ValueError as error:
            for n, (line, row) in enumerate(lines):
                column = next((c for c, cell in enumerate(row, start=1) if not _is_number(cell)), None)
                if column is not None:
                    hint = (
                        " (a header is taken only when none of its cells is a number)"
                        if n == 0 and not header
                        else ""
                    )
                    raise ValueError(
                        f"{self._source()}: every field must be a number; line {line}, column {column} "
                        f"is {row[column - 1]!r}{hint}"
                    ) from error
            raise ValueError(f"{self._source()}: every field must be a number: {error}") from error


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True
