"""How far 2 DDP processes drift from 1 process, in float64 and in float32.

Trains the default recipe's network (`ManualBPModule`, sigmoid MLP [64, 64, 10], plain SGD) on digits
for ``--steps`` optimizer steps, once as 1 process with batches of 16 and once as 2 ``ddp_spawn``
CPU processes with batches of 8 (the same global batches: the sampler shards one seeded order), with
78 batches an epoch (``limit_train_batches=78``: full batches only). Prints the largest weight
difference and the difference of the
training loss on the whole training set after the last step. docs/training.md quotes its output.

    python scripts/ddp_drift.py --steps 150
"""

from __future__ import annotations

import argparse
import warnings

import lightning.pytorch as pl
import torch

import manual_bp
from manual_bp.lightning import DigitsDataModule, ManualBPModule

warnings.filterwarnings("ignore")


def train(devices: int, dtype: torch.dtype, steps: int) -> dict[str, torch.Tensor]:
    """The network's state after ``steps`` steps with ``devices`` processes (global batch 16)."""
    torch.manual_seed(0)
    net = manual_bp.MLP([64, 64, 10], dtype=dtype)
    module = ManualBPModule(net=net, lr=4.0)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        precision="64-true" if dtype == torch.float64 else "32-true",
        max_steps=steps,
        limit_train_batches=78,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, DigitsDataModule(batch_size=16 // devices))
    return {k: v.detach().clone() for k, v in module.net.state_dict().items()}


def train_loss(state: dict[str, torch.Tensor]) -> float:
    """The mean half squared error over the whole training set with these weights (in float64)."""
    net = manual_bp.MLP([64, 64, 10], dtype=torch.float64)
    net.load_state_dict({k: v.double() for k, v in state.items()})
    data = DigitsDataModule()
    data.setup("fit")
    x, y = data._splits["train"].tensors  # type: ignore[index]
    target = torch.nn.functional.one_hot(y, 10).double()
    with torch.no_grad():
        return float(net.loss(x.double(), target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for dtype in (torch.float64, torch.float32):
        one, two = train(1, dtype, args.steps), train(2, dtype, args.steps)
        diff = max(float((one[k].double() - two[k].double()).abs().max()) for k in one)
        loss_one, loss_two = train_loss(one), train_loss(two)
        print(
            f"{str(dtype).removeprefix('torch.')}: after {args.steps} steps, largest weight difference "
            f"{diff:.1e}; training loss {loss_one:.6f} (1 process) vs {loss_two:.6f} (2 processes), "
            f"difference {abs(loss_one - loss_two):.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
