"""Two gloo processes running ``engine.sgd_step`` on shards end with one process's whole-batch weights."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _distributed import free_port, gloo_group
from torch.testing import assert_close

import manual_bp
from manual_bp import engine

pytestmark = pytest.mark.skipif(
    not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo"
)

F64 = torch.float64
STEPS = 3
LR = 0.3
BATCH = 10
# (name, loss, target kind, reduction, rows of rank 0: the rest go to rank 1)
CASES = [
    ("hse-mean", "half_squared_error", "dense", "mean", 5),
    ("hse-sum", "half_squared_error", "dense", "sum", 5),
    ("ce-index-mean", "cross_entropy", "index", "mean", 5),
    ("ce-prob-sum", "cross_entropy", "prob", "sum", 5),
    ("hse-mean-unequal", "half_squared_error", "dense", "mean", 7),  # 7 + 3 rows
    ("ce-index-mean-unequal", "cross_entropy", "index", "mean", 2),  # 2 + 8 rows
    ("hse-mean-bfloat16", "half_squared_error", "dense", "mean", 5),  # reduced in a float32 buffer
]


def make_case(name: str, loss: str, kind: str) -> tuple[manual_bp.MLP, torch.Tensor, torch.Tensor]:
    """The same network and batch in every process (seeded)."""
    torch.manual_seed(0)
    dtype = torch.bfloat16 if name.endswith("bfloat16") else F64
    net = manual_bp.MLP([4, 6, 5, 3], "tanh", "identity" if loss == "cross_entropy" else None, dtype=dtype)
    x = torch.randn(BATCH, 4, dtype=dtype)
    if kind == "dense":
        target = torch.rand(BATCH, 3, dtype=dtype)
    elif kind == "index":
        target = torch.randint(0, 3, (BATCH,))
    else:
        target = torch.softmax(torch.randn(BATCH, 3, dtype=dtype), -1)
    return net, x, target


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    with gloo_group(rank, world, port):
        results = {}
        for name, loss, kind, reduction, split in CASES:
            net, x, target = make_case(name, loss, kind)
            rows = slice(0, split) if rank == 0 else slice(split, BATCH)
            losses = [engine.sgd_step(net, x[rows], target[rows], LR, loss, reduction) for _ in range(STEPS)]
            results[name] = (net.state_dict(), torch.stack(losses))
        # sgd_epoch on shards of 7 and 3 rows in batches of 2: 4 batches on rank 0, 2 on rank 1
        net, x, target = make_case("epoch", "half_squared_error", "dense")
        rows = slice(0, 7) if rank == 0 else slice(7, BATCH)
        mean_loss = engine.sgd_epoch(net, x[rows], target[rows], LR, batch_size=2)
        results["epoch"] = (net.state_dict(), mean_loss)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.slow
def test_two_processes_on_shards_equal_one_process_on_the_batch(tmp_path: Path) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, loss, kind, reduction, _ in CASES:
        net, x, target = make_case(name, loss, kind)
        # bfloat16: the shards' gradients are summed in another order than one process sums its
        # batch, and each shard's products round to bfloat16 (eps 2**-8) before the float32 sum
        tol = {"atol": 2e-2, "rtol": 2e-2} if name.endswith("bfloat16") else {"atol": 1e-12, "rtol": 1e-12}
        before = copy.deepcopy(net.state_dict())
        want_losses = torch.stack(
            [engine.sgd_step(net, x, target, LR, loss, reduction) for _ in range(STEPS)]
        )
        for rank in ranks:
            state, losses = rank[name]
            assert_close(losses, want_losses, **tol, msg=lambda m, n=name: f"{n}: {m}")
            for key, value in net.state_dict().items():
                assert not torch.equal(value, before[key])  # the step did move the weights
                assert_close(state[key], value, **tol, msg=lambda m, n=name: f"{n}: {m}")

    # sgd_epoch: batch b of the global run is batch b of every shard (a shard out of batches adds none)
    net, x, target = make_case("epoch", "half_squared_error", "dense")
    global_batches = [[0, 1, 7, 8], [2, 3, 9], [4, 5], [6]]
    want = torch.stack([engine.sgd_step(net, x[rows], target[rows], LR) for rows in global_batches]).mean()
    for rank in ranks:
        state, mean_loss = rank["epoch"]
        assert_close(mean_loss, want, atol=1e-12, rtol=1e-12)
        for key, value in net.state_dict().items():
            assert_close(state[key], value, atol=1e-12, rtol=1e-12)
