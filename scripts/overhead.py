"""What one autograd node costs in a training step: a native op against a Python ``autograd.Function``.

Run:

    python scripts/overhead.py

At small sizes a training step is mostly fixed per-op and per-node costs, not arithmetic, so the
ratios of ``scripts/bench.py`` there follow from how many nodes and ops each path runs. This
script measures those costs side by side in one run (interleaved repetitions, medians, as
``bench.py`` does): the native network's step of ``bench.py`` (64 x 64, depth 2, sigmoid), then
the same step with ``k`` extra nodes appended to the network, each multiplying by 1:

* ``native op``   — ``y * 1.0``: a native op, its backward a native ``MulBackward0`` node
* ``Function``    — a ``manual_bp`` Function (the library's base class and its fast ``apply``)
  whose forward is the same ``y * 1.0`` and whose backward returns the incoming gradient

It prints the cost of one of each (step time difference / ``k``: the module call, the forward op,
the node, and for the native node its backward ``mul``) and the Function's cost over the native
node's. A smoke run with few repetitions can print noise, even negative costs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from manual_bp._function import ManualFunction

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py: the same step and the same interleaved timing)


class _Times1(ManualFunction):
    """``y = x · 1`` with the explicit backward ``∂c/∂x = ∂c/∂y``."""

    @staticmethod
    def forward(input: torch.Tensor) -> torch.Tensor:
        return input * 1.0

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output


class NativeTimes1(nn.Module):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return input * 1.0


class FunctionTimes1(nn.Module):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return _Times1.apply(input)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extra", type=int, default=10, help="nodes appended to the network (k)")
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    sizes = [64, 64, 64]
    x, t = torch.randn(64, 64), torch.rand(64, 64)
    base = bench.native_model(sizes, "sigmoid", "cpu", torch.float32)

    def with_extra(kind: type[nn.Module]) -> nn.Module:
        return nn.Sequential(*base, *(kind() for _ in range(args.extra)))

    steps: dict[str, Callable[[], None]] = {
        "network": bench.autograd_step(base, bench.native_loss, x, t),
        "native op": bench.autograd_step(with_extra(NativeTimes1), bench.native_loss, x, t),
        "Function": bench.autograd_step(with_extra(FunctionTimes1), bench.native_loss, x, t),
    }
    times = bench.pooled([bench.interleaved_times(steps, args.reps, "cpu")], "network")[0]  # medians
    per = {k: (times[k] - times["network"]) / args.extra for k in ("native op", "Function")}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 64 x 64 tensors")
    print(f"native step of the 64-64-64 sigmoid network: {times['network'] * 1e6:.1f} us")
    for name, cost in per.items():
        print(f"  one {name:>11}: {cost * 1e6:5.2f} us (forward and backward)")
    if per["native op"] > 0:
        print(f"a Function node over a native node: {per['Function'] / per['native op']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
