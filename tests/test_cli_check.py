"""The ``manual-bp`` command: ``check`` (suite and ``--model``), errors, and the ``train`` hand-off.

A few runs go through a real subprocess (``python -m manual_bp``) to prove the exit codes; the
error cases call ``manual_bp.cli.main`` in-process, which returns the same exit code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from manual_bp import check, cli

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "manual_bp", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
def test_check_suite_prints_the_table_and_exits_zero() -> None:
    # a few ops of each kind: test_check.py runs the whole suite in-process (over a minute)
    names = ["linear", "sigmoid", "conv2d", "batch_norm", "cross_entropy", "half_squared_error", "mlp"]
    proc = _run("check", *(a for name in names for a in ("--op", name)))
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["op", "dtype", "check", "error", "pass", "samples", "detail"]
    rows = [line.split() for line in lines[2:-1]]
    assert {r[0] for r in rows} == set(names)
    assert {r[2] for r in rows} == {"gradcheck", "gradgradcheck", "native"}
    failed = [r for r in rows if "FAIL" in r]
    assert proc.returncode == (1 if failed else 0), proc.stdout + proc.stderr
    assert lines[-1].startswith(f"{len(rows) - len(failed)} of {len(rows)} checks passed")
    assert not failed, proc.stdout  # the real suite passes


@pytest.mark.slow
def test_check_model_passes_and_reports() -> None:
    proc = _run("check", "--model", "tests._factories:cnn")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "conversion report for SmallCNN: 8 manual, 0 native" in out
    assert "parameters in manual layers: 100% (1,267 of 1,267 elements)" in out
    assert "manual vs native in float64" in out and "grad head.0.weight" in out
    assert "relu" in out and "tests/_factories.py:" in out  # the F.relu call convert cannot swap
    assert out.rstrip().endswith("PASS: manual gradients match native autograd")


@pytest.mark.slow
def test_check_model_fails_on_wrong_gradients() -> None:
    proc = _run("check", "--model", "tests/_factories.py:broken_backward")  # file-path form
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL: manual gradients differ" in proc.stdout
    fails = {
        line.split()[1] for line in proc.stdout.splitlines() if line.startswith("grad ") and "FAIL" in line
    }
    assert fails == {"0.weight", "2.weight"}  # exactly the sabotaged weight gradients


@pytest.mark.slow
def test_bad_model_path_in_a_subprocess() -> None:
    proc = _run("check", "--model", "no_such_package.models:make")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "manual-bp: error: --model: cannot import module 'no_such_package.models': "
        "No module named 'no_such_package'"
    ]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "tests._factories",
            "expects 'package.module:factory' or 'file.py:factory', got 'tests._factories' (no ':')",
        ),
        ("tests._factories:nope", "module 'tests._factories' has no attribute 'nope'"),
        ("tests/missing.py:f", "no such file 'tests/missing.py'"),
        ("tests._factories:NOT_CALLABLE", "is a int, expected a function returning (model, inputs)"),
        (
            "tests._factories:bad_raises",
            "tests._factories:bad_raises() raised RuntimeError: factory exploded",
        ),
        ("tests._factories:bad_returns_string", "returned a str; expected (model, inputs)"),
        ("tests._factories:bad_returns_four", "returned a tuple of 4 items; expected (model, inputs)"),
        ("tests._factories:bad_model_type", "returned a str as the model; expected a torch.nn.Module"),
        ("tests._factories:bad_inputs_type", "returned a float as the inputs; expected a Tensor"),
        ("tests._factories:bad_shape", "fails on its example inputs: RuntimeError: mat1 and mat2 shapes"),
    ],
)
def test_bad_model_is_one_line_and_exit_two(
    spec: str, message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    assert cli.main(["check", "--model", spec]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("manual-bp: error: --model"), err
    assert message in err


def test_other_factory_forms(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    assert cli.main(["check", "--model", "tests._factories:mlp_with_loss", "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "manual vs native in float32" in out and "PASS" in out
    assert cli.main(["check", "--model", "tests._factories:as_dict"]) == 0
    assert "PASS" in capsys.readouterr().out


def test_bad_device(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--device", "warp9"]) == 2
    assert capsys.readouterr().err.startswith("manual-bp: error: --device")


def test_help_lists_both_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "check" in out and "train" in out
    assert cli.main([]) == 2  # no command: help, and a usage exit code


def test_train_forwards_every_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("manual_bp.lightning.cli")
    fake.main = lambda argv: seen.append(list(argv)) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "manual_bp.lightning.cli", fake)
    args = ["--trainer.max_epochs", "2", "--help", "--model.lr=0.5"]
    assert cli.main(["train", *args]) == 0
    assert seen == [args]


def test_train_without_the_lightning_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "manual_bp.lightning.cli", None)  # import fails as if it were missing
    assert cli.main(["train"]) == 2
    assert "manual-bp train needs the Lightning integration" in capsys.readouterr().err


def test_check_one_op_and_its_progress(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--op", "relu", "--op", "conv1d"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:-1]]
    assert [r[0] for r in rows] == ["conv1d"] * 4 + ["relu"] * 4  # registry order, four checks each
    seen: list[tuple[int, int, str]] = []
    check_rows = check.run_suite([check.OPS[0]], progress=lambda *a: seen.append(a))
    assert seen == [(0, 1, "linear")] and len(check_rows) == 4


def test_check_unknown_op_names_the_ops(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--op", "convolution"]) == 2
    err = capsys.readouterr().err
    assert "no op named convolution" in err and "conv2d" in err and "layer_norm" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import manual_bp

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"manual-bp {manual_bp.__version__}"


def _fake_train_cli(monkeypatch: pytest.MonkeyPatch, text: str, code: int = 0) -> list[list[str]]:
    """Stand in for ``manual_bp.lightning.cli``: its ``main`` prints ``text`` and exits with ``code``."""
    calls: list[list[str]] = []

    def fake_main(argv: list[str]) -> None:
        calls.append(list(argv))
        print(text)
        raise SystemExit(code)

    monkeypatch.setitem(sys.modules, "manual_bp.lightning.cli", types.SimpleNamespace(main=fake_main))
    return calls


def test_train_help_is_built_once_then_read_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(cli, "SHIPPED_HELP", tmp_path / "none.txt")  # (the shipped help is tested below)
    calls = _fake_train_cli(monkeypatch, "usage: manual-bp train [-h] ...")
    assert cli.main(["train", "--help"]) == 0
    assert cli.main(["train", "--help"]) == 0
    assert calls == [["--help"]]  # the second time came from the cache
    assert capsys.readouterr().out == "usage: manual-bp train [-h] ...\n" * 2
    (cached,) = (tmp_path / "manual_bp").glob("train_help-*.txt")
    assert cached.read_text() == "usage: manual-bp train [-h] ...\n"
    assert cli.main(["train", "-h"]) == 0  # another argument: another cache file
    assert calls == [["--help"], ["-h"]] and len(list((tmp_path / "manual_bp").glob("*.txt"))) == 2


def test_train_help_cache_follows_the_sources_and_keeps_no_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    before = cli._help_cache_path(["--help"])
    source = tmp_path / "lightning_cli.py"
    source.write_text("x = 1\n")
    monkeypatch.setattr(cli, "_HELP_SOURCES", (*cli._HELP_SOURCES, str(source)))
    with_source = cli._help_cache_path(["--help"])
    source.write_text("x = 22\n")  # an edited source file: a new cache file
    assert len({before, with_source, cli._help_cache_path(["--help"])}) == 3
    calls = _fake_train_cli(monkeypatch, "error: something", code=2)
    monkeypatch.setattr(cli, "SHIPPED_HELP", tmp_path / "none.txt")
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert calls == [["--help"]] and not list(tmp_path.glob("manual_bp/*.txt"))


def test_first_train_help_on_a_fresh_install_prints_the_shipped_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # an empty cache
    header, _, body = cli.SHIPPED_HELP.read_text().partition("\n")
    if header + "\n" != cli.shipped_help_header():
        pytest.skip(
            f"manual_bp/train_help.txt was built with other versions ({header}); see scripts/train_help.py"
        )
    calls = _fake_train_cli(monkeypatch, "built")
    assert cli.main(["train", "--help"]) == 0
    assert calls == [] and capsys.readouterr().out == body
    other = tmp_path / "other.txt"
    other.write_text("# manual-bp 0.0 train --help, built with lightning==0.1\nstale\n")
    monkeypatch.setattr(cli, "SHIPPED_HELP", other)
    assert cli.main(["train", "--help"]) == 0
    assert calls == [["--help"]]  # built with other versions: not used


def test_shipped_train_help_equals_the_live_one() -> None:
    header, _, body = cli.SHIPPED_HELP.read_text().partition("\n")
    if header + "\n" != cli.shipped_help_header():
        pytest.skip(
            f"manual_bp/train_help.txt was built with other versions ({header}); see scripts/train_help.py"
        )
    # in a fresh process, as the command runs: the help lists the nn.Module subclasses imported so far
    code = "from manual_bp import cli; print(cli.render_train_help(['--help']), end='')"
    env = {**os.environ, "COLUMNS": "100"}
    live = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert live.stdout == body, "options changed: run python scripts/train_help.py"


# A model, inputs or loss_fn that make the check impossible is bad input, not a gradient difference:
# one line on stderr and exit code 2 (exit code 1 means only "the gradients differ").
_BROKEN_FACTORIES = """
import threading

import torch
from torch import nn


def loss_raises():
    def loss_fn(out):
        raise ValueError("no target for this output")

    return nn.Linear(3, 2), torch.randn(4, 3), loss_fn


def loss_returns_none():
    return nn.Linear(3, 2), torch.randn(4, 3), lambda out: None


class ReturnsNone(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        self.fc(x)


def model_returns_none():
    return ReturnsNone(), torch.randn(4, 3)


class Locked(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.lock = threading.Lock()

    def forward(self, x):
        return self.fc(x)


def uncopyable():
    return Locked(), torch.randn(4, 3)


class OnlyMatmul(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 2))

    def forward(self, x):
        return x @ self.w


def nothing_to_convert():
    return OnlyMatmul(), torch.randn(4, 3)
"""


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("loss_raises", "loss_fn raised ValueError: no target for this output"),
        ("loss_returns_none", "loss_fn must return a scalar Tensor, got NoneType"),
        ("model_returns_none", "the model returned no floating-point tensor (got NoneType)"),
        ("uncopyable", "cannot copy the model (Locked): TypeError: cannot pickle '_thread.lock' object"),
        (
            "nothing_to_convert",
            "nothing to check: convert found no layer with a manual backward in OnlyMatmul "
            "(modules that stay native: (model) OnlyMatmul;",
        ),
    ],
)
def test_check_that_cannot_run_is_one_line_and_exit_two(
    factory: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.py"
    path.write_text(_BROKEN_FACTORIES)
    assert cli.main(["check", "--model", f"{path}:{factory}"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("manual-bp: error: --model: "), err
    assert message in err, err
