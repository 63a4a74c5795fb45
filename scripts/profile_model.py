"""Where a converted model's training step spends its time, next to the native model's: the ops
that differ most, from ``torch.profiler``'s self CPU time over a few steps of each.

Run (the docs' performance page quotes its output for ResNet-18):

    OMP_NUM_THREADS=1 python scripts/profile_model.py resnet18
    OMP_NUM_THREADS=1 python scripts/profile_model.py vit_small --steps 5 --top 15

A step is what ``scripts/bench.py --models`` times: zero grads, forward, ``CrossEntropyLoss``,
backward, plain SGD. Models, batch and input sizes come from ``bench.py``'s ``MODELS`` table.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

import manual_bp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _bench_models  # noqa: E402
from bench import MODELS, autograd_step  # noqa: E402


def self_times(step: object, steps: int) -> dict[str, float]:
    """Self CPU time per op name, in milliseconds per step."""
    step()  # warm-up: allocator and first-call costs out of the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    out: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        out[event.key] += event.self_cpu_time_total / 1e3 / steps
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(MODELS), help="a model of scripts/bench.py --models")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps of each model (default 3)")
    parser.add_argument("--top", type=int, default=12, help="ops to list (default 12)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.top < 1:
        parser.error(f"--steps and --top must be at least 1, got {args.steps} and {args.top}")
    factory, batch, shape, classes = MODELS[args.model]
    torch.manual_seed(0)
    native = getattr(_bench_models, factory)(num_classes=classes)
    manual = manual_bp.convert(native)
    x, t = torch.randn(batch, *shape), torch.randint(0, classes, (batch,))
    times = {
        "native": self_times(autograd_step(native, nn.CrossEntropyLoss(), x, t), args.steps),
        "manual": self_times(
            autograd_step(manual, manual_bp.convert(nn.CrossEntropyLoss()), x, t), args.steps
        ),
    }
    totals = {k: sum(v.values()) for k, v in times.items()}
    print(
        f"{factory}, batch {batch}, input {'x'.join(map(str, shape))}, {torch.get_num_threads()} threads: "
        f"self CPU time per step, native {totals['native']:.1f} ms, converted {totals['manual']:.1f} ms "
        f"({totals['manual'] / totals['native']:.2f}x)"
    )
    names = set(times["native"]) | set(times["manual"])
    rows = sorted(names, key=lambda n: -abs(times["manual"].get(n, 0.0) - times["native"].get(n, 0.0)))
    print(f"{'op':<48} {'native ms':>10} {'converted ms':>13} {'difference':>11}")
    for name in rows[: args.top]:
        a, b = times["native"].get(name, 0.0), times["manual"].get(name, 0.0)
        print(f"{name[:48]:<48} {a:>10.1f} {b:>13.1f} {b - a:>+11.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
