"""``scripts/gpu_check.sh``: its dry run (the CPU-safe part) here, and its usage error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="a bash script")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONWARNINGS": "ignore"}
    env.pop("GPU_CHECK_PYTHON", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300, env=env)


def test_dry_run_prints_every_step_and_collects_the_cuda_tests(tmp_path: Path) -> None:
    done = _run(str(tmp_path / "out"), "--dry-run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (tmp_path / "out" / "gpu_check.txt").read_text()
    assert report == done.stdout  # everything printed is in the one file
    for command in (
        "-m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cu",
        "-m pip install -q -e .[dev]",
        "-m pytest -m cuda",
        "-m manual_bp check --device cuda",
        "-m manual_bp train --trainer.accelerator gpu --trainer.devices 1",
        "scripts/bench.py --device cuda --quick --out",
    ):
        assert f" {command}" in report, command
    assert report.count("(dry run: not run)") == 8 and "failed steps: 0" in report
    collected = re.search(r"(\d+) (?:skipped|passed)", report.split("CUDA tests collected")[1])
    assert collected and int(collected.group(1)) >= 10, report
    assert not (tmp_path / "out" / "venv").exists()  # nothing installed


@pytest.mark.parametrize("args", [[], ["--dry-run"], ["out", "--fast"]], ids=["none", "no-outdir", "unknown"])
def test_usage_error(args: list[str], tmp_path: Path) -> None:
    done = _run(*args)
    assert done.returncode == 2 and done.stderr.startswith("usage: scripts/gpu_check.sh OUTDIR [--dry-run]")


def test_dry_run_fails_when_its_python_cannot_run_the_tests(tmp_path: Path) -> None:
    fake = tmp_path / "python3"
    body = 'if [[ "$1" == "-m" && "$2" == "pytest" ]]; then exit 4; fi\nexec "$0.real" "$@"\n'
    fake.write_text("#!/usr/bin/env bash\n" + body)  # a python that cannot run pytest
    fake.chmod(0o755)
    (tmp_path / "python3.real").symlink_to(sys.executable)
    env = {**os.environ, "PYTHON": str(fake), "PYTHONWARNINGS": "ignore"}
    env.pop("GPU_CHECK_PYTHON", None)
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out"), "--dry-run"], capture_output=True,
                          text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 1 and "CUDA tests collected: exit code 4" in done.stdout
    assert "failed steps: 1" in done.stdout
