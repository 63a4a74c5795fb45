"""Side-by-side speed and memory of one SGD training step: native PyTorch vs manual_bp.

Run (the docs' performance page, docs/performance.md, renders this command's JSON):

    python scripts/bench.py --out benchmarks/cpu.json
    python scripts/bench.py --quick                 # a small smoke subset (CI)
    python scripts/bench.py --full                  # every batch x width x depth x activation
    python scripts/bench.py --config 64x128x2:sigmoid  # one configuration (repeatable)
    python scripts/bench.py --device cuda --dtype bfloat16
    python scripts/bench.py --models                # only: the converted real models vs native
    OMP_NUM_THREADS=1 python scripts/bench.py --models --model lstm_lm  # one of them
    OMP_NUM_THREADS=1 python scripts/bench.py --functional  # only: convert(functional=True) overhead

A step is: zero grads, forward, half squared error c = ½‖y − t‖² averaged over samples, backward,
plain SGD update. Paths, timed interleaved (each repetition times every path once, in turn) and
reported as medians over repetitions:

* ``native``   — ``nn.Linear`` + native activation modules, autograd, ``torch.optim.SGD``
* ``compiled`` — the same with ``torch.compile`` on the forward and loss
* ``manual``   — manual_bp per-layer modules (``manual_bp.Linear`` + activation modules)
* ``fused``    — ``manual_bp.MLP(fused=True).loss(x, t)``: the whole network and its error as one
  Function (the saved-activation memory is also given for ``mlp(x)`` then a separate
  ``HalfSquaredError``, as ``fused_hse``)
* ``engine``   — ``manual_bp.engine.sgd_step``: no autograd at all

Ratios to native are medians over repetitions of (path time / native time in that repetition).
Each configuration runs in ``--procs`` fresh processes, one after the other (default 3;
``--same-process`` runs everything in this one), and its ratios are the medians over the
repetitions of all of them; the JSON also keeps each process's median (``ratio_by_process``).
Fresh processes: a long run otherwise carries the allocator's state from one configuration to the
next (glibc malloc raises its mmap and trim thresholds as large blocks come and go), which
measurably changed later configurations' times depending on which ones ran before. Several: on a
shared machine one configuration's ratio moves by 5–10 % from one fresh process to the next, more
than between the repetitions inside one. The digits epoch is pooled the same way.

It also prints GFLOP/s and the share of this machine's matrix-multiply throughput (best of several
large GEMMs, measured in the same run), the saved-activation memory of each autograd path relative
to native (bytes packed by ``torch.autograd.graph.saved_tensors_hooks``; parameters, input and
target excluded, since the caller holds them anyway), and
one epoch over scikit-learn's digits with ``engine.sgd_step`` against ``MLPClassifier`` /
``MLPRegressor`` (same network, plain SGD).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import manual_bp
from manual_bp import engine
from manual_bp._function import ManualFunction
from manual_bp.ops import get_activation

# ----------------------------------------------------------------------------- configuration
BATCHES = (32, 64, 256, 1024)
WIDTHS = (64, 128, 256, 1024, 2048)
DEPTHS = (2, 4, 8)
ACTIVATIONS = ("sigmoid", "relu", "gelu")
# The default grid: every value of every axis, without the full product (which takes hours on
# two cores). (batch, width) pairs, each run at every depth and activation.
DEFAULT_SIZES = ((32, 64), (64, 64), (64, 128), (256, 256), (256, 1024), (1024, 1024), (256, 2048))
QUICK_SIZES = ((64, 64), (256, 256))
PATHS = ("native", "compiled", "manual", "fused", "engine")
LR = 0.01
TARGET_SECONDS = 0.05  # each timed block runs about this long
TARGETS = {  # size class -> path -> largest allowed ratio to native (issue 6)
    "small": {"manual": 1.15, "fused": 1.0, "engine": 0.5},
    "medium": {"manual": 1.05, "fused": 1.0, "engine": 0.8},
    "large": {"manual": 1.03, "fused": 1.0, "engine": 1.0},
}
# activations by name, from the op registry (--config accepts any parameter-free one)
ACTIVATION_NAMES = [name for name in manual_bp.ops.ACTIVATION_NAMES if name != "identity"]


def size_class(batch: int, width: int) -> str:
    """small = batch 64, widths up to 128; medium = batch 256, widths up to 784; large = 1024 and up."""
    if width >= 1024:
        return "large"
    if batch == 64 and width <= 128:
        return "small"
    if batch == 256 and width <= 784:
        return "medium"
    return "other"


# ----------------------------------------------------------------------------- models and steps
def native_model(sizes: list[int], act: str, device: str, dtype: torch.dtype) -> nn.Sequential:
    layers: list[nn.Module] = []
    for d_in, d_out in itertools.pairwise(sizes):
        layers += [nn.Linear(d_in, d_out, device=device, dtype=dtype), get_activation(act).native_module()]
    return nn.Sequential(*layers)


def manual_layers(native: nn.Sequential, act: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for module in native:
        if isinstance(module, nn.Linear):
            lin = manual_bp.Linear(
                module.in_features,
                module.out_features,
                device=module.weight.device,
                dtype=module.weight.dtype,
            )
            lin.load_state_dict(module.state_dict())
            layers.append(lin)
        else:
            act_ = get_activation(act)
            layers.append(type(act_).Module(**act_.params()))
    return nn.Sequential(*layers)


def fused_mlp(native: nn.Sequential, sizes: list[int], act: str) -> manual_bp.MLP:
    w = native[0].weight
    mlp = manual_bp.MLP(sizes, activation=act, fused=True, device=w.device, dtype=w.dtype)
    mlp.load_state_dict(
        {
            f"layers.{i // 2}.{k}": v
            for i, m in enumerate(native)
            if isinstance(m, nn.Linear)
            for k, v in m.state_dict().items()
        }
    )
    return mlp


def native_loss(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(y, t, reduction="sum") * (0.5 / y.shape[0])  # = ½‖y − t‖² averaged over rows


def autograd_step(
    model: nn.Module, loss_fn: Callable, x: torch.Tensor, t: torch.Tensor
) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=LR)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), t).backward()
        opt.step()

    return step


def fused_loss_step(mlp: manual_bp.MLP, x: torch.Tensor, t: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(mlp.parameters(), lr=LR)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        mlp.loss(x, t).backward()  # network and error in one Function
        opt.step()

    return step


def compiled_step(model: nn.Module, x: torch.Tensor, t: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    torch.compiler.reset()  # a fresh cache per configuration (the lambda below would hit the recompile limit)
    forward = torch.compile(lambda x, t: native_loss(model(x), t), fullgraph=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        forward(x, t).backward()
        opt.step()

    return step


def engine_step(mlp: manual_bp.MLP, x: torch.Tensor, t: torch.Tensor) -> Callable[[], None]:
    return lambda: engine.sgd_step(mlp, x, t, LR)


# ----------------------------------------------------------------------------- measurement
def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def calibrate(step: Callable[[], None], device: str) -> int:
    """Iterations per timed block so that one block lasts about TARGET_SECONDS."""
    step()
    sync(device)
    start = time.perf_counter()
    step()
    sync(device)
    one = max(time.perf_counter() - start, 1e-6)
    return max(2, min(2000, int(TARGET_SECONDS / one)))


def time_block(step: Callable[[], None], iters: int, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return (time.perf_counter() - start) / iters


def interleaved_times(steps: dict[str, Callable[[], None]], reps: int, device: str) -> dict[str, list[float]]:
    """Each path's time per step in each of ``reps`` repetitions; a repetition times every path
    once, in turn, so the paths see the same state of the machine."""
    iters = {name: calibrate(step, device) for name, step in steps.items()}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            times[name].append(time_block(step, iters[name], device))
    return times


def rep_ratios(times: dict[str, list[float]], base: str = "native") -> dict[str, list[float]]:
    """Each path's time divided by ``base``'s time in the same repetition (drifts of the machine's
    speed between repetitions cancel in these ratios)."""
    return {name: [t / b for t, b in zip(ts, times[base], strict=True)] for name, ts in times.items()}


def saved_bytes(run: Callable[[], torch.Tensor], held: list[torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for backward that the step itself allocated.

    ``held`` are the tensors the caller keeps anyway (parameters, input, target): not counted.
    """
    param_ptrs = {p.untyped_storage().data_ptr() for p in held}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = run()
    del loss
    return sum(storages.values())


def gemm_peak(device: str, dtype: torch.dtype) -> float:
    """Best GFLOP/s of a few large square matrix multiplies."""
    best = 0.0
    for n in (1024, 2048, 3072):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        torch.mm(a, b, out=out)
        for _ in range(3):
            t = time_block(lambda: torch.mm(a, b, out=out), 2, device)  # noqa: B023
            best = max(best, 2 * n**3 / t / 1e9)
    return best


def step_flops(batch: int, sizes: list[int]) -> float:
    """Matrix-multiply FLOPs of one step.

    Forward 2BΣd_in·d_out, backward twice that, less the first layer's grad_input.
    """
    macs = sum(a * b for a, b in itertools.pairwise(sizes))
    return 2 * batch * (3 * macs - sizes[0] * sizes[1])


def bench_config(
    batch: int, width: int, depth: int, act: str, args: argparse.Namespace, dtype: torch.dtype
) -> dict[str, Any]:
    torch.manual_seed(0)
    device = args.device
    sizes = [width] * (depth + 1)
    x = torch.randn(batch, width, device=device, dtype=dtype)
    t = torch.rand(batch, width, device=device, dtype=dtype)
    nat = native_model(sizes, act, device, dtype)
    man = manual_layers(nat, act)
    fused = fused_mlp(nat, sizes, act)
    eng = fused_mlp(nat, sizes, act)
    hse = manual_bp.HalfSquaredError()
    steps: dict[str, Callable[[], None]] = {
        "native": autograd_step(nat, native_loss, x, t),
        "manual": autograd_step(man, hse, x, t),
        "fused": fused_loss_step(fused, x, t),
        "engine": engine_step(eng, x, t),
    }
    if not args.no_compile:
        comp = native_model(sizes, act, device, dtype)
        comp.load_state_dict(nat.state_dict())
        steps["compiled"] = compiled_step(comp, x, t)
    steps = {name: steps[name] for name in PATHS if name in steps}
    # bf16 runs as autocast over the float32 parameters (``dtype``): the autocast dtype is bfloat16
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=args.autocast):
        rep_seconds = interleaved_times(steps, args.reps, device)
        memory = {
            "native": saved_bytes(lambda: native_loss(nat(x), t), [*nat.parameters(), x, t]),
            "manual": saved_bytes(lambda: hse(man(x), t), [*man.parameters(), x, t]),
            "fused": saved_bytes(lambda: fused.loss(x, t), [*fused.parameters(), x, t]),
            "fused_hse": saved_bytes(lambda: hse(fused(x), t), [*fused.parameters(), x, t]),
        }
    return {
        "batch": batch,
        "width": width,
        "depth": depth,
        "activation": act,
        "class": size_class(batch, width),
        "rep_seconds": rep_seconds,
        "saved_bytes": memory,
        "memory_ratio": {k: v / memory["native"] for k, v in memory.items()},
    }


def in_fresh_process(args: argparse.Namespace, fn: Callable[..., Any], *fn_args: Any) -> Any:
    """``fn(*fn_args)`` in a fresh process (in this one with ``--same-process``)."""
    if args.same_process:
        return fn(*fn_args)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *fn_args).result()


def pooled(
    parts: list[dict[str, list[float]]], base: str = "native"
) -> tuple[dict[str, float], dict[str, float], dict[str, list[float]]]:
    """Per-repetition times of several processes (a path may be missing from some): the median
    time and the median ratio to ``base`` over all repetitions of all processes, and each
    process's median ratio (the spread between processes)."""
    times: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    by_process: dict[str, list[float]] = {}
    for part in parts:
        for name, rs in rep_ratios(part, base).items():
            times.setdefault(name, []).extend(part[name])
            ratios.setdefault(name, []).extend(rs)
            by_process.setdefault(name, []).append(statistics.median(rs))
    return (
        {name: statistics.median(ts) for name, ts in times.items()},
        {name: statistics.median(rs) for name, rs in ratios.items()},
        by_process,
    )


def run_config(
    batch: int, width: int, depth: int, act: str, args: argparse.Namespace, dtype: torch.dtype
) -> dict[str, Any]:
    """:func:`bench_config` in ``--procs`` fresh processes, one after the other, pooled.

    A fresh process per run, so that no earlier configuration's allocator state or compile cache
    affects this one's times; several, because on this shared machine one configuration's ratio
    moves by 5–10 % from one fresh process to the next (fused 64 × 64 × 2 sigmoid: 0.92–1.03 in
    four processes), more than between the repetitions inside one. The ``compiled`` path
    (informational, and the slowest to set up) runs in the first process only.
    """
    parts = []
    for i in range(args.procs):
        sub = argparse.Namespace(**vars(args))
        sub.no_compile = args.no_compile or i > 0
        parts.append(in_fresh_process(args, bench_config, batch, width, depth, act, sub, dtype))
    row = {k: v for k, v in parts[0].items() if k != "rep_seconds"}
    times, ratios, by_process = pooled([part["rep_seconds"] for part in parts])
    flops = step_flops(batch, [width] * (depth + 1))
    row.update(
        seconds=times,
        ratio=ratios,
        ratio_by_process=by_process,
        gflops={k: flops / v / 1e9 for k, v in times.items()},
    )
    return row


def memory_config(act: str, depth: int, args: argparse.Namespace, dtype: torch.dtype) -> dict[str, Any]:
    """Saved-activation memory alone (cheap), for activations outside the timed grid."""
    torch.manual_seed(0)
    sizes = [256] * (depth + 1)
    x = torch.randn(256, 256, device=args.device, dtype=dtype)
    t = torch.rand(256, 256, device=args.device, dtype=dtype)
    nat = native_model(sizes, act, args.device, dtype)
    fused = fused_mlp(nat, sizes, act)
    man = manual_layers(nat, act)
    hse = manual_bp.HalfSquaredError()
    mem = {
        "native": saved_bytes(lambda: native_loss(nat(x), t), [*nat.parameters(), x, t]),
        "manual": saved_bytes(lambda: hse(man(x), t), [*man.parameters(), x, t]),
        "fused": saved_bytes(lambda: fused.loss(x, t), [*fused.parameters(), x, t]),
        "fused_hse": saved_bytes(lambda: hse(fused(x), t), [*fused.parameters(), x, t]),
    }
    return {
        "activation": act,
        "batch": 256,
        "width": 256,
        "depth": depth,
        "memory_ratio": {k: v / mem["native"] for k, v in mem.items()},
    }


def digits_epoch(args: argparse.Namespace, reps: int) -> list[dict[str, Any]]:
    """One epoch over digits: ``engine.sgd_epoch`` against scikit-learn's MLPClassifier / MLPRegressor.

    Both check their arguments once per epoch and take one plain SGD step per batch of 32.
    """
    import warnings

    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    x_np, y_np = load_digits(return_X_y=True)
    x_np = (x_np / 16.0).astype(np.float32)
    onehot = np.eye(10, dtype=np.float32)[y_np]
    hidden, batch, lr = 64, 32, 0.1
    x = torch.from_numpy(x_np)
    labels = torch.from_numpy(y_np).long()
    targets = torch.from_numpy(onehot)
    # the same network and plain SGD: no momentum, no L2 penalty, no shuffling, one pass
    sgd = dict(hidden_layer_sizes=(hidden,), activation="logistic", solver="sgd", learning_rate_init=lr,
               momentum=0.0, alpha=0.0, batch_size=batch, shuffle=False, max_iter=1)  # fmt: skip
    rows = []
    for task in ("classifier", "regressor"):
        if task == "classifier":
            sk = MLPClassifier(**sgd)
            fit = lambda sk=sk: sk.partial_fit(x_np, y_np, classes=np.arange(10))  # noqa: E731
            loss, t_all = "cross_entropy", labels
        else:
            sk = MLPRegressor(**sgd)
            fit = lambda sk=sk: sk.partial_fit(x_np, onehot)  # noqa: E731
            loss, t_all = "half_squared_error", targets
        mlp = manual_bp.MLP([64, hidden, 10], activation="sigmoid", output_activation="identity")

        def epoch(mlp: manual_bp.MLP = mlp, t_all: torch.Tensor = t_all, loss: str = loss) -> None:
            engine.sgd_epoch(mlp, x, t_all, lr, batch_size=batch, loss=loss)  # in order, like shuffle=False

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fit()
            epoch()
            times = interleaved_times({"sklearn": fit, "engine": epoch}, reps, "cpu")
        rows.append({"task": task, "rep_seconds": times})
    return rows


def run_digits(args: argparse.Namespace, reps: int) -> list[dict[str, Any]]:
    """:func:`digits_epoch` in ``--procs`` fresh processes, pooled as :func:`run_config` pools."""
    parts = [in_fresh_process(args, digits_epoch, args, reps) for _ in range(args.procs)]
    rows = []
    for i, task in enumerate(p["task"] for p in parts[0]):
        times, ratios, by_process = pooled([part[i]["rep_seconds"] for part in parts], "sklearn")
        row = {"task": task, "seconds": times, "ratio": ratios["engine"]}
        rows.append({**row, "ratio_by_process": by_process["engine"]})
    return rows


# ----------------------------------------------------------------------------- cross-entropy
CE_SIZES = ((64, 10), (1024, 1000))  # (batch, classes); the target: manual <= 1.1x native at each
CE_LIMIT = 1.1


class _OneOpEachWay(ManualFunction):
    """The floor of a manual_bp Function (its fast C++ ``apply``, a Python ``setup_context`` and
    ``backward``): one op forward (``Σ x``), one op backward (``δ`` expanded), called as
    ``cross_entropy(x, t)`` is (``t`` unused)."""

    @staticmethod
    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x.sum()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
        ctx.shape = inputs[0].shape

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.expand(ctx.shape), None


def cross_entropy_bench(args: argparse.Namespace, dtype: torch.dtype) -> list[dict[str, Any]]:
    """Forward + backward of ``cross_entropy(logits, labels)`` (class indices, ``'mean'``): native
    ``F.cross_entropy`` against ``manual_bp.functional.cross_entropy``, timed interleaved in this
    process; the ratio is the median over repetitions of manual / native in the same repetition."""
    from manual_bp import functional as MF

    rows = []
    for batch, classes in CE_SIZES:
        torch.manual_seed(0)
        x = torch.randn(batch, classes, device=args.device, dtype=dtype, requires_grad=True)
        t = torch.randint(0, classes, (batch,), device=args.device)

        def step(fn: Callable[..., torch.Tensor], x: torch.Tensor = x, t: torch.Tensor = t) -> None:
            x.grad = None
            fn(x, t).backward()

        steps = {
            "native": lambda: step(F.cross_entropy),
            "manual": lambda: step(MF.cross_entropy),
            "floor": lambda: step(_OneOpEachWay.apply),  # what any Python backward costs at least
        }
        times = interleaved_times(steps, args.reps, args.device)
        ratios = rep_ratios(times)
        rows.append(
            {
                "batch": batch,
                "classes": classes,
                "seconds": {k: statistics.median(v) for k, v in times.items()},
                "ratio": statistics.median(ratios["manual"]),
                "floor_ratio": statistics.median(ratios["floor"]),
                "rep_seconds": times,
                "limit": CE_LIMIT,
            }
        )
    return rows


def print_cross_entropy(rows: list[dict[str, Any]]) -> None:
    print("cross_entropy forward + backward (class indices, 'mean'), median over repetitions:")
    for r in rows:
        s, ok = r["seconds"], r["ratio"] <= r["limit"]
        print(
            f"  {r['batch']:>5} x {r['classes']:<5}: native {fmt_time(s['native'])}, manual "
            f"{fmt_time(s['manual'])}, ratio {r['ratio']:.2f} (target <= {r['limit']:.2f}) "
            f"{'ok' if ok else 'MISSED'}; a Function doing one op each way: {r['floor_ratio']:.2f}"
        )


FEEDBACK_NETS = ((16, [64, 64, 10]), (128, [784, 256, 256, 10]))  # the default recipe's, and a larger one
FEEDBACK_LIMIT = 1.1  # fa's step at most 1.1x backprop's (issue: feedback rules)


def feedback_bench(args: argparse.Namespace, dtype: torch.dtype) -> list[dict[str, Any]]:
    """A training step of the seed's sigmoid network under every feedback rule against the same
    step under backprop: the autograd path (fused ``MLP.loss``, ``backward``, SGD) and the engine
    (``engine.sgd_step``), timed interleaved in this process; ratios are medians over repetitions
    of rule / backprop in the same repetition."""
    from manual_bp.feedback import RULES

    rows = []
    for batch, sizes in FEEDBACK_NETS:
        torch.manual_seed(0)
        x = torch.randn(batch, sizes[0], device=args.device, dtype=dtype)
        t = torch.rand(batch, sizes[-1], device=args.device, dtype=dtype)
        for path, make in (("autograd", fused_loss_step), ("engine", engine_step)):
            steps = {}
            for rule in RULES:
                mlp = manual_bp.MLP(sizes, feedback=rule, device=args.device, dtype=dtype)
                steps[rule] = make(mlp, x, t)
            times = interleaved_times(steps, args.reps, args.device)
            ratios = rep_ratios(times, base="backprop")
            rows.append(
                {
                    "batch": batch,
                    "sizes": sizes,
                    "path": path,
                    "seconds": {k: statistics.median(v) for k, v in times.items()},
                    "ratio": {k: statistics.median(v) for k, v in ratios.items()},
                    "rep_seconds": times,
                    "limit_fa": FEEDBACK_LIMIT,
                }
            )
    return rows


def print_feedback(rows: list[dict[str, Any]]) -> None:
    print("training step per feedback rule / backprop's (same path, median over repetitions):")
    for r in rows:
        ratios = ", ".join(f"{k} {v:.2f}" for k, v in r["ratio"].items() if k != "backprop")
        ok = "ok" if r["ratio"]["fa"] <= r["limit_fa"] else "MISSED"
        print(
            f"  batch {r['batch']:>4} {r['sizes']} {r['path']:>8}: backprop "
            f"{fmt_time(r['seconds']['backprop'])}; {ratios} (fa target <= {r['limit_fa']:.2f}: {ok})"
        )


# ----------------------------------------------------------------------------- reporting
def fmt_time(s: float) -> str:
    return f"{s * 1e6:9.0f}us" if s < 0.01 else f"{s * 1e3:9.1f}ms"


def parse_config(parser: argparse.ArgumentParser, text: str) -> tuple[int, int, int, str]:
    """``"64x128x2:sigmoid"`` -> ``(64, 128, 2, "sigmoid")``; a clear parser error otherwise."""
    sizes, _, act = text.partition(":")
    parts = sizes.lower().split("x")
    sizes_ok = len(parts) == 3 and all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts)
    if not sizes_ok or act not in ACTIVATION_NAMES:
        parser.error(
            f"--config must be BATCHxWIDTHxDEPTH:ACT with positive sizes and ACT one of "
            f"{', '.join(ACTIVATION_NAMES)}, e.g. 64x128x2:sigmoid; got {text!r}"
        )
    batch, width, depth = (int(p) for p in parts)
    return batch, width, depth, act


# ----------------------------------------------------------------------------- real models
# name -> (constructor in scripts/_bench_models.py, batch, input shape, classes); --quick: tiny ones
# ResNet-18 twice: at 32x32 its last stage sees 1x1 feature maps, where 8 of a 3x3 kernel's 9 offsets
# read only padding; at 64x64 (2x2 maps there) every offset reads data
MODELS = {
    "resnet18": ("resnet18", 8, (3, 32, 32), 10),
    "resnet18_64": ("resnet18", 8, (3, 64, 64), 10),
    "vit": ("vit_small", 16, (3, 32, 32), 10),
    # a language model: input (batch, 35) token ids, classes = vocabulary (one target per token)
    "lstm_lm": ("lstm_lm", 20, (35,), 1000),
    "transformer": ("sequence_transformer", 16, (32, 16), 10),
}
QUICK_MODELS = {
    "resnet18": ("tiny_resnet", 2, (3, 32, 32), 5),
    "resnet18_64": ("tiny_resnet", 2, (3, 16, 16), 5),
    "vit": ("tiny_vit", 2, (3, 8, 8), 5),
    "transformer": ("tiny_sequence_transformer", 2, (8, 4), 5),
    "lstm_lm": ("tiny_lstm_lm", 2, (5,), 20),
}
MODELS_LIMIT = 1.15  # converted / native training step, issue 14
# issue 15: torch.nn's Transformer layers (attention converted whole), and recurrent models, whose
# native CPU kernels are fused C++ (oneDNN's LSTM)
MODEL_LIMITS = {"transformer": 1.2, "lstm_lm": 1.5}


def model_step_times(name: str, args: argparse.Namespace, dtype: torch.dtype) -> dict[str, Any]:
    """One SGD training step (zero grads, forward, ``CrossEntropyLoss``, backward, ``SGD.step``) of a
    real model: native against ``manual_bp.convert`` of the same model, timed interleaved; also the
    converted model's explicit-backward coverage and the saved-activation memory of both."""
    scripts = os.path.dirname(os.path.abspath(__file__))
    if scripts not in sys.path:  # (loaded by path, e.g. from the tests)
        sys.path.insert(0, scripts)
    import _bench_models

    factory, batch, shape, classes = (QUICK_MODELS if args.quick else MODELS)[name]
    torch.manual_seed(0)
    native = getattr(_bench_models, factory)(num_classes=classes).to(device=args.device, dtype=dtype)
    manual = manual_bp.convert(native)
    native_loss, manual_loss = nn.CrossEntropyLoss(), manual_bp.convert(nn.CrossEntropyLoss())
    if getattr(native, "takes_tokens", False):  # token ids in, a prediction per token
        x = torch.randint(0, classes, (batch, *shape), device=args.device)
        t = torch.randint(0, classes, (batch * math.prod(shape),), device=args.device)
    else:
        x = torch.randn(batch, *shape, device=args.device, dtype=dtype)
        t = torch.randint(0, classes, (batch,), device=args.device)
    steps = {
        "native": autograd_step(native, native_loss, x, t),
        "manual": autograd_step(manual, manual_loss, x, t),
    }
    with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.autocast):
        times = interleaved_times(steps, args.reps, args.device)
        memory = {
            "native": saved_bytes(lambda: native_loss(native(x), t), [*native.parameters(), x]),
            "manual": saved_bytes(lambda: manual_loss(manual(x), t), [*manual.parameters(), x]),
        }
        cov = manual_bp.coverage(manual, x, loss_fn=lambda y: manual_loss(y, t))
    return {
        "model": name,
        "factory": factory,
        "batch": batch,
        "input": list(shape),
        "parameters": sum(p.numel() for p in native.parameters()),
        "rep_seconds": times,
        "memory_ratio": memory["manual"] / memory["native"],
        "parameter_share": cov.parameter_share,
        "node_share": cov.node_share,
        "native_nodes": {n.name: n.count for n in cov.native},
    }


def bench_models(args: argparse.Namespace, dtype: torch.dtype) -> list[dict[str, Any]]:
    """:func:`model_step_times` of each model in ``--procs`` fresh processes, pooled as
    :func:`run_config` pools; prints a line per model."""
    print(
        f"training step of real models, manual_bp.convert vs native (target <= {MODELS_LIMIT:.2f}x, "
        f"{', '.join(f'{k} <= {v:.2f}x' for k, v in MODEL_LIMITS.items())}); "
        "explicit backward's share of parameter elements and of graph nodes:"
    )
    rows = []
    for name in args.model or MODELS:
        parts = [in_fresh_process(args, model_step_times, name, args, dtype) for _ in range(args.procs)]
        times, ratios, by_process = pooled([part["rep_seconds"] for part in parts])
        row = {k: v for k, v in parts[0].items() if k != "rep_seconds"}
        row.update(seconds=times, ratio=ratios["manual"], ratio_by_process=by_process["manual"])
        limit = MODEL_LIMITS.get(name, MODELS_LIMIT)
        row.update(limit=limit, ok=ratios["manual"] <= limit)
        rows.append(row)
        shape = "x".join(map(str, row["input"]))
        share = math.floor(1000 * row["parameter_share"]) / 10  # never rounded up to 100%
        what = f"{row['factory']} ({row['parameters'] / 1e6:.2f} M params, batch {row['batch']}, {shape})"
        print(
            f"  {what}: native {fmt_time(times['native'])}, manual {fmt_time(times['manual'])}, "
            f"ratio {row['ratio']:.2f} {'ok' if row['ok'] else 'MISSED'} (target <= {row['limit']:.2f}x); "
            f"memory {row['memory_ratio']:.2f}; "
            f"explicit {share:.1f}% of parameters, {100 * row['node_share']:.0f}% of nodes",
            flush=True,
        )
    return rows


# ----------------------------------------------------------------------------- functional=True
FUNCTIONAL_LIMIT = 1.3  # a training step of convert(model, functional=True) / native, issue 16
# (batch, tokens, width, heads, layers) of the GPT-2-style classifier (tests/_hf_style.py)
FUNCTIONAL_SIZES = ((8, 32, 64, 4, 2), (16, 64, 128, 4, 2))
QUICK_FUNCTIONAL_SIZES = ((2, 8, 16, 2, 1),)


class _PassOn(TorchFunctionMode):
    """A torch function mode that passes every call on unchanged: what any such mode costs."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return func(*args, **(kwargs or {}))


class _InPassOnMode(nn.Module):
    """``model`` run under :class:`_PassOn`: native ops, plus the cost of a mode seeing every call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _PassOn():
            return self.model(x)


def _functional_calls(args: argparse.Namespace, dtype: torch.dtype) -> dict[str, Any]:
    """Per call: ``torch.tanh`` of a small tensor, natively, inside a mode that passes every call
    on, and routed by :class:`manual_bp.routing.FunctionalMode`; and a view (never routed: what the
    mode costs every call it passes on)."""
    from manual_bp.routing import FunctionalMode

    x = torch.randn(8, 64, device=args.device, dtype=dtype, requires_grad=True)
    routed, passing = FunctionalMode(), _PassOn()

    def calls(fn: Callable[[], Any], mode: Any = None) -> Callable[[], None]:
        def step() -> None:
            if mode is None:
                for _ in range(100):
                    fn()
            else:
                with mode:
                    for _ in range(100):
                        fn()

        return step

    steps = {
        "native": calls(lambda: torch.tanh(x)),
        "pass_on": calls(lambda: torch.tanh(x), passing),
        "routed": calls(lambda: torch.tanh(x), routed),
        "view_native": calls(lambda: x.view(64, 8)),
        "view_in_mode": calls(lambda: x.view(64, 8), routed),
    }
    times = interleaved_times(steps, args.reps, args.device)
    return {name: statistics.median(ts) / 100 for name, ts in times.items()}


def _functional_step(size: tuple[int, ...], args: argparse.Namespace, dtype: torch.dtype) -> dict[str, Any]:
    """A training step of the GPT-2-style classifier: native, ``convert`` and ``convert(functional=True)``."""
    tests = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import _hf_style

    batch, tokens, width, heads, layers = size
    torch.manual_seed(0)
    native = _hf_style.GPT2Classifier(10, width, heads, layers).to(device=args.device, dtype=dtype)
    modules = manual_bp.convert(native)
    functional = manual_bp.convert(native, functional=True)
    loss = nn.CrossEntropyLoss()
    x = torch.randn(batch, tokens, width, device=args.device, dtype=dtype)
    t = torch.randint(0, 10, (batch,), device=args.device)
    steps = {
        "native": autograd_step(native, loss, x, t),
        "pass_on": autograd_step(_InPassOnMode(native), loss, x, t),
        "modules": autograd_step(modules, loss, x, t),
        "functional": autograd_step(functional, loss, x, t),
    }
    times = interleaved_times(steps, args.reps, args.device)
    cov = manual_bp.coverage(functional, x, loss_fn=lambda y: loss(y, t))
    return {
        "size": list(size),
        "rep_seconds": times,
        "parameter_share": cov.parameter_share,
        "node_share": cov.node_share,
    }


def functional_bench(args: argparse.Namespace, dtype: torch.dtype) -> dict[str, Any]:
    """The cost of ``convert(model, functional=True)``: per call, and per training step of a GPT-2-style
    model (each size in ``--procs`` fresh processes, pooled as :func:`run_config` pools)."""
    per_call = _functional_calls(args, dtype)
    print("per call (torch.tanh of an 8x64 tensor; a view, which the mode passes on):")
    print(
        f"  native {per_call['native'] * 1e6:.1f} us, in a mode that passes it on "
        f"{per_call['pass_on'] * 1e6:.1f} us, routed {per_call['routed'] * 1e6:.1f} us; view native "
        f"{per_call['view_native'] * 1e6:.1f} us, in the mode {per_call['view_in_mode'] * 1e6:.1f} us"
    )
    print(
        "training step of a GPT-2-style classifier (tests/_hf_style.py GPT2Classifier; SGD, cross-entropy): "
        f"native, native under a mode that passes every call on, convert (modules), "
        f"convert(functional=True) (target <= {FUNCTIONAL_LIMIT:.2f}x native)"
    )
    rows = []
    for size in QUICK_FUNCTIONAL_SIZES if args.quick else FUNCTIONAL_SIZES:
        parts = [in_fresh_process(args, _functional_step, size, args, dtype) for _ in range(args.procs)]
        times, ratios, by_process = pooled([part["rep_seconds"] for part in parts])
        row = {k: v for k, v in parts[0].items() if k != "rep_seconds"}
        row.update(seconds=times, ratio=ratios["functional"], ratio_modules=ratios["modules"])
        row.update(ratio_pass_on=ratios["pass_on"])
        row.update(ratio_by_process=by_process["functional"], limit=FUNCTIONAL_LIMIT)
        row.update(ok=ratios["functional"] <= FUNCTIONAL_LIMIT)
        rows.append(row)
        b, n, w, h, depth = size
        print(
            f"  batch {b}, {n} tokens, width {w}, {h} heads, {depth} blocks: "
            f"native {fmt_time(times['native'])}, native in a pass-on mode {fmt_time(times['pass_on'])} "
            f"({row['ratio_pass_on']:.2f}x), "
            f"modules {fmt_time(times['modules'])} ({row['ratio_modules']:.2f}x), functional "
            f"{fmt_time(times['functional'])} ({row['ratio']:.2f}x {'ok' if row['ok'] else 'MISSED'}); "
            f"explicit {math.floor(1000 * row['parameter_share']) / 10:.1f}% of parameters, "
            f"{100 * row['node_share']:.0f}% of nodes",
            flush=True,
        )
    return {"per_call_seconds": per_call, "steps": rows}


def write_json(args: argparse.Namespace, argv: list[str] | None, results: dict[str, Any]) -> None:
    """Write ``results`` to ``--out`` with the command and the set-up, as ``scripts/bench_report.py``
    reads them (every section: the grid, ``--models``, ``--cross-entropy``)."""
    if not args.out:
        return
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(
            {
                "command": " ".join(["python", "scripts/bench.py", *(argv or sys.argv[1:])]),
                "torch": torch.__version__,
                "device": args.device,
                "dtype": args.dtype,
                "threads": torch.get_num_threads(),
                **results,
            },
            fh,
            indent=1,
        )
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small smoke subset")
    parser.add_argument(
        "--full", action="store_true", help="the full batch x width x depth x activation product"
    )
    parser.add_argument(
        "--models",
        action="store_true",
        help="only the real-model section: a training step of the converted ResNet-18, ViT, Transformer "
        "and LSTM language model against native (with --quick: tiny versions)",
    )
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        choices=list(MODELS),
        help="with --models: only this model (repeatable)",
    )
    parser.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="BATCHxWIDTHxDEPTH:ACT",
        help="only this configuration of the grid, e.g. 64x128x2:sigmoid (repeatable); the GEMM peak "
        "and the extra memory table still run, the digits epoch does not",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions (default 7, quick 3)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile path")
    parser.add_argument("--out", default=None, help="write all results as JSON here")
    parser.add_argument(
        "--procs",
        type=int,
        default=None,
        help="fresh processes per configuration, pooled (default 3, quick 1)",
    )
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="run every configuration in this process (default: each in a fresh one)",
    )
    parser.add_argument(
        "--cross-entropy",
        action="store_true",
        help="only the cross-entropy forward + backward section (native vs manual, this process)",
    )
    parser.add_argument(
        "--functional",
        action="store_true",
        help="only the convert(model, functional=True) section: per-call overhead of the routing and a "
        "training step of a GPT-2-style model against native (run with OMP_NUM_THREADS=1)",
    )
    parser.add_argument(
        "--feedback",
        action="store_true",
        help="only the feedback-rule section: a training step under each rule against backprop's",
    )
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    # bf16 runs as autocast over float32 parameters (mixed precision), as users train with it.
    args.autocast = dtype == torch.bfloat16
    param_dtype = torch.float32 if args.autocast else dtype
    args.reps = (3 if args.quick else 7) if args.reps is None else args.reps
    if args.procs is None:  # one run per configuration with --same-process, unless asked for more
        args.procs = 1 if args.quick or args.same_process else 3
    if args.procs < 1 or args.reps < 1:
        parser.error(f"--procs and --reps must be at least 1, got {args.procs} and {args.reps}")
    try:
        device_type = torch.device(args.device).type
    except RuntimeError:
        device_type = None
    if device_type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda (or cuda:N), got {args.device!r}")
    if device_type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here (torch {torch.__version__})")
    if args.functional:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, {args.dtype}")
        write_json(args, argv, {"functional": functional_bench(args, param_dtype)})
        return 0
    if args.feedback:
        feedback_rows = feedback_bench(args, param_dtype)
        print_feedback(feedback_rows)
        write_json(args, argv, {"feedback": feedback_rows})
        return 0
    if args.cross_entropy:
        ce_rows = cross_entropy_bench(args, param_dtype)
        print_cross_entropy(ce_rows)
        write_json(args, argv, {"cross_entropy": ce_rows})
        return 0
    if args.config:
        grid = [parse_config(parser, c) for c in args.config]
    elif args.quick:
        grid = [(b, w, 2, a) for b, w in QUICK_SIZES for a in ("sigmoid", "gelu")]
    elif args.full:
        grid = list(itertools.product(BATCHES, WIDTHS, DEPTHS, ACTIVATIONS))
    else:
        grid = [(b, w, d, a) for b, w in DEFAULT_SIZES for d in DEPTHS for a in ACTIVATIONS]
    if args.models:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.device}, {args.dtype}")
        model_rows = bench_models(args, param_dtype)
        write_json(args, argv, {"models": model_rows})
        return 0

    peak = gemm_peak(args.device, dtype)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {args.device}, dtype {args.dtype}"
    )
    print(f"matrix-multiply throughput (best large GEMM): {peak:.1f} GFLOP/s")
    header = (
        f"{'batch':>5} {'width':>5} {'depth':>5} {'act':>8} {'class':>6} | "
        + " ".join(f"{p:>11}" for p in PATHS)
        + " | ratio: "
        + " ".join(f"{p[:6]:>6}" for p in PATHS[1:])
        + " | %peak fused engine | mem manual fused"
    )
    print(header)
    rows = []
    for i, (b, w, d, a) in enumerate(grid):
        row = run_config(b, w, d, a, args, param_dtype)
        rows.append(row)
        s, r = row["seconds"], row["ratio"]
        pct = {k: 100 * row["gflops"][k] / peak for k in ("fused", "engine")}
        print(
            f"{b:>5} {w:>5} {d:>5} {a:>8} {row['class']:>6} | "
            + " ".join(fmt_time(s[p]) if p in s else f"{'-':>11}" for p in PATHS)
            + " | ratio: "
            + " ".join(f"{r[p]:6.2f}" if p in r else f"{'-':>6}" for p in PATHS[1:])
            + f" | {pct['fused']:5.0f}% {pct['engine']:5.0f}%"
            + f" | {row['memory_ratio']['manual']:5.2f} {row['memory_ratio']['fused']:5.2f}"
            + f"   [{i + 1}/{len(grid)}]",
            flush=True,
        )

    memory_extra = [
        memory_config(a, d, args, param_dtype) for a in ("silu", "softplus", "tanh") for d in DEPTHS
    ]
    print("\nsaved-activation memory relative to native (batch 256, width 256):")
    for m in memory_extra:
        ratio = m["memory_ratio"]
        name = f"{m['activation']} depth {m['depth']}"
        print(f"  {name:>16}: manual {ratio['manual']:.2f}, fused {ratio['fused']:.2f}")

    digits = [] if device_type != "cpu" or args.config else run_digits(args, 3 if args.quick else 7)
    if digits:
        print("\none epoch over digits (1797 samples, 64-64-10 sigmoid net, batch 32, plain SGD):")
        for d_row in digits:
            s = d_row["seconds"]
            print(
                f"  {d_row['task']:>10}: sklearn {fmt_time(s['sklearn'])}, engine {fmt_time(s['engine'])}, "
                f"ratio {d_row['ratio']:.2f}"
            )

    print("\ntargets (worst ratio to native in each size class):")
    verdicts = []
    for cls, targets in TARGETS.items():
        in_cls = [r for r in rows if r["class"] == cls]
        for path, limit in targets.items():
            vals = [r["ratio"][path] for r in in_cls if path in r["ratio"]]
            if vals:
                worst = max(vals)
                ok = worst <= limit
                verdicts.append({"class": cls, "path": path, "worst": worst, "limit": limit, "ok": ok})
                print(
                    f"  {cls:>6} {path:>7}: worst {worst:5.2f}, median {statistics.median(vals):5.2f} "
                    f"(target <= {limit:.2f}) {'ok' if ok else 'MISSED'}"
                )
    large = [r for r in rows if r["class"] == "large"]
    if large:
        for path in ("fused", "engine"):
            pct = min(100 * r["gflops"][path] / peak for r in large)
            print(f"   large {path:>7}: lowest share of GEMM throughput {pct:.0f}% (target >= 90%)")
    fused_mem = [r["memory_ratio"]["fused"] for r in rows] + [
        m["memory_ratio"]["fused"] for m in memory_extra
    ]
    print(f"  memory fused: worst {max(fused_mem):.2f} of native (target <= 1.0)")
    for act in ("gelu", "silu"):
        by_depth = {}
        for r in rows + memory_extra:
            if r["activation"] == act:
                by_depth[r["depth"]] = max(by_depth.get(r["depth"], 0.0), r["memory_ratio"]["fused"])
        if by_depth:
            detail = ", ".join(f"depth {d}: {v:.2f}" for d, v in sorted(by_depth.items()))
            print(f"  memory fused {act}: {detail} of native (target <= 0.6)")
    for d_row in digits:
        print(f"  digits epoch {d_row['task']}: engine/sklearn {d_row['ratio']:.2f} (target <= 0.5)")

    results = {"gemm_gflops": peak, "rows": rows, "memory_extra": memory_extra, "digits": digits}
    write_json(args, argv, {**results, "targets": verdicts})
    return 0


if __name__ == "__main__":
    sys.exit(main())
