"""On an NVIDIA GPU: every op's checks, autocast, the fused MLP and engine, training and two-process DDP.

Every CUDA test carries ``@pytest.mark.cuda``: ``python -m pytest -m cuda`` runs them (on a GPU
machine ``scripts/gpu_check.sh`` does), and without CUDA the conftest hook skips them. Where a test
runs on the CPU too (parametrized over ``DEVICES``), the CPU case runs here and proves the test
itself; the CUDA case is the same code on ``cuda``.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from _distributed import free_port, gloo_group
from torch import nn
from torch.testing import assert_close

import manual_bp
from manual_bp import check, engine
from manual_bp.check._tolerances import tolerances
from manual_bp.convert import native_twin

ROOT = Path(__file__).resolve().parent.parent
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]
SLOW_ON_CPU = [
    pytest.param("cpu", id="cpu", marks=pytest.mark.slow),
    pytest.param("cuda", id="cuda", marks=pytest.mark.cuda),
]


@pytest.mark.cuda
@pytest.mark.parametrize("op", check.OPS, ids=[op.name for op in check.OPS])
def test_op_checks_pass_on_cuda(op: check.OpSpec) -> None:
    """gradcheck and gradgradcheck in float64 and the native comparison in float64 and float32."""
    rows = check.run_suite([op], device="cuda")
    assert len(rows) == 4
    failed = [f"{r.check} {r.dtype}: error {r.error:.2e} {r.detail}" for r in rows if not r.passed]
    assert not failed, f"{op.name} on cuda: " + "; ".join(failed)


def _model() -> nn.Module:
    """Conv, norm, pooling, activations, dropout-free linear head: the layers a GPU user converts."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),  # (N, 3, 8, 8) -> (N, 8, 8, 8); BatchNorm has the bias
        nn.BatchNorm2d(8),
        nn.GELU(),
        nn.MaxPool2d(2),  # -> (N, 8, 4, 4)
        nn.Flatten(),  # -> (N, 128)
        nn.LayerNorm(128),
        nn.Linear(128, 32),
        nn.SiLU(),
        nn.Linear(32, 5),
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16-autocast"])
def test_converted_model_matches_native_under_autocast(device: str, dtype: torch.dtype) -> None:
    """float32: plain; bfloat16: under ``torch.autocast`` (manual layers follow autocast like native:
    the same output dtype, gradients in the parameters' float32)."""
    torch.manual_seed(0)
    native = _model().to(device)
    manual = manual_bp.convert(native)
    x = torch.randn(6, 3, 8, 8, device=device)
    target = torch.randint(0, 5, (6,), device=device)
    results = []
    for model in (manual, native):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = model(x)
            loss = nn.functional.cross_entropy(out.float(), target)
        loss.backward()
        results.append((out, [p.grad for p in model.parameters()]))
    (out, grads), (ref, ref_grads) = results
    assert out.dtype == ref.dtype == dtype
    rtol, atol = tolerances(dtype)
    scale = 8 if dtype == torch.bfloat16 else 1  # two bf16 roundings of different op orders
    assert_close(out, ref, rtol=rtol * scale, atol=atol * scale)
    for g, r in zip(grads, ref_grads, strict=True):
        assert g.dtype == r.dtype == torch.float32
        assert_close(g, r, rtol=rtol * scale, atol=max(atol, 1e-3 * r.abs().max().item()) * scale)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_mlp_and_engine(device: str) -> None:
    """The fused MLP's gradients equal its native twin's; one engine step equals autograd + SGD."""
    torch.manual_seed(0)
    mlp = manual_bp.MLP([16, 32, 32, 4], "tanh", fused=True, device=device, dtype=torch.float64)
    x = torch.randn(10, 16, device=device, dtype=torch.float64)
    target = torch.rand(10, 4, device=device, dtype=torch.float64)
    twin = native_twin(mlp)
    for net in (mlp, twin):
        (0.5 * (net(x) - target).pow(2).sum(-1).mean()).backward()
    for (name, p), q in zip(mlp.named_parameters(), twin.parameters(), strict=True):
        assert p.grad is not None and p.grad.device.type == device, name
        assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")
    stepped = copy.deepcopy(mlp)
    loss = engine.sgd_step(stepped, x, target, lr=0.5)
    assert loss.device.type == device
    for (name, p), s in zip(mlp.named_parameters(), stepped.parameters(), strict=True):
        assert_close(s, p.detach() - 0.5 * p.grad, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("device", SLOW_ON_CPU)
def test_train_the_example_cnn_with_bf16_mixed_precision_from_the_command_line(
    device: str, tmp_path: Path
) -> None:
    accelerator = "gpu" if device == "cuda" else "cpu"
    command = [sys.executable, "-m", "manual_bp", "train", "--config", "configs/digits_cnn.yaml",
               "--trainer.accelerator", accelerator, "--trainer.devices", "1",
               "--trainer.precision", "bf16-mixed", "--trainer.max_epochs", "2",
               "--trainer.enable_progress_bar", "false",
               "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"GPU available: {device == 'cuda'}, used: {device == 'cuda'}" in done.stderr
    assert "explicit backward: 100% of parameter elements" in done.stderr
    accuracy = float(done.stdout.split("test accuracy: ")[1].split()[0])
    assert accuracy > 0.8  # two epochs of the example CNN: 0.953 in float32, 0.958 in bf16-mixed on the CPU


# -- two processes on one device (gloo: NCCL refuses two ranks on one GPU) ---------------------------
STEPS, BATCH, LR = 3, 12, 0.1


def _ddp_case(device: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = manual_bp.convert(nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))).to(device)
    x = torch.randn(BATCH, 6, device=device)
    target = torch.randint(0, 3, (BATCH,), device=device)
    return model, x, target


def _train(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = manual_bp.CrossEntropyLoss()
    for _ in range(STEPS):
        optimizer.zero_grad()
        loss_fn(model(x), target).backward()
        optimizer.step()


def _ddp_worker(rank: int, world: int, port: int, device: str, out_dir: str) -> None:
    with gloo_group(rank, world, port):
        model, x, target = _ddp_case(device)
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[0] if device == "cuda" else None)
        rows = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        _train(ddp, x[rows], target[rows])
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.parametrize("device", SLOW_ON_CPU)
def test_ddp_two_processes_on_one_device_equal_one_process(device: str, tmp_path: Path) -> None:
    """Two ranks on the same device, each on half the batch: DDP's averaged gradients (per-sample mean
    loss) give the weights one process reaches on the whole batch."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_ddp_worker, args=(2, free_port(), device, str(tmp_path)), nprocs=2, join=True)
    model, x, target = _ddp_case(device)
    before = copy.deepcopy(model.state_dict())
    _train(model, x, target)
    for rank in range(2):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for key, value in model.state_dict().items():
            assert not torch.equal(value, before[key])  # training moved the weights
            assert_close(state[key], value.cpu(), rtol=1e-5, atol=1e-6)
