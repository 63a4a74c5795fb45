"""scripts/bench.py rejects bad arguments with a clear message before measuring anything."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
    spec = importlib.util.spec_from_file_location("manual_bp_bench_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "64x128:relu"], "--config must be BATCHxWIDTHxDEPTH:ACT"),
        (["--config", "64x128x2:swish"], "ACT one of sigmoid"),
        (["--config", "6²x1x1:relu"], "got '6²x1x1:relu'"),
        (["--config", "0x8x2:relu"], "positive sizes"),
        (["--procs", "0"], "--procs and --reps must be at least 1, got 0 and 7"),
        (["--reps", "-1"], "--procs and --reps must be at least 1, got 3 and -1"),
        (["--device", "foo"], "--device must be cpu or cuda (or cuda:N), got 'foo'"),
        (["--device", "meta"], "--device must be cpu or cuda (or cuda:N), got 'meta'"),
    ],
)
def test_bad_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _bench().main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _bench().main(["--device", "cuda:0", "--quick"])
    assert "--device cuda:0: CUDA is not available here" in capsys.readouterr().err
