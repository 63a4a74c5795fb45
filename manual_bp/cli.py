"""The ``manual-bp`` command (also ``python -m manual_bp``).

* ``manual-bp check`` runs the gradient-validation suite (:func:`manual_bp.check.run_suite`) and
  prints it as a table; the exit code is 1 if any check fails.
* ``manual-bp check --model package.module:factory`` (or ``path/to/file.py:factory``) calls the
  factory, converts a float64 copy of the model it returns and compares it with the native copy
  (:func:`manual_bp.check.check_model`), and prints the converted copy's coverage
  (:func:`manual_bp.coverage`); the exit code is 1 on a mismatch, 2 (one line on stderr) when the
  check cannot run (:class:`manual_bp.check.CheckError`: the model cannot be copied, returns no
  floating tensor or has no layer with a manual backward; ``loss_fn`` raises or returns no scalar
  Tensor), and 3 when the gradients match but the coverage is too low: no parameter gets its
  gradient from explicit backward (nothing converted), or less than ``--min-coverage F`` of the
  parameter elements do. ``--functional`` converts with ``functional=True``.
* ``manual-bp train ...`` hands every remaining argument to the Lightning CLI
  (``manual_bp.lightning.cli.main``). ``manual-bp train --help`` is kept in a cache file
  (:func:`_train_help`): building it imports Lightning, which alone takes 3-4 s.
* ``manual-bp --version`` prints the version.

A factory takes no arguments and returns ``(model, inputs)`` or ``(model, inputs, loss_fn)``, or a
dict with the keys ``model``, ``inputs`` and optionally ``loss_fn``: ``model`` a ``torch.nn.Module``;
``inputs`` a Tensor, a tuple or list of positional arguments, or a dict of keyword arguments;
``loss_fn`` maps the model's output to a scalar Tensor. Bad input (a path that does not import, no
such attribute, a factory that raises or returns something else) prints one line on stderr and
exits with code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import io
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from manual_bp._factory import FactoryError, call_factory, describe

__all__ = ["COVERAGE_EXIT", "main"]

_DTYPES = ("float64", "float32")


#: ``manual-bp check --model``'s exit code when the gradients match but too little is converted.
COVERAGE_EXIT = 3


class UsageError(Exception):
    """Bad input on the command line: reported as one line on stderr, exit code 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="manual-bp",
        description="Backpropagation written out by hand: validate the gradients, or train with Lightning.",
    )
    parser.add_argument("--version", action="version", version=f"manual-bp {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{check,train}")
    check = sub.add_parser(
        "check",
        help="gradcheck/gradgradcheck every manual Function, or compare a converted model with native",
        description=(
            "Without --model: run gradcheck and gradgradcheck (float64) and a comparison with the "
            "native op (float32) for every Function of manual_bp.functional and print a table. With "
            "--model: convert a copy of your model and compare its output and every gradient with "
            "the native copy's. Exit code 0 when everything passes, 1 on a failure, 2 on bad input, 3 "
            "when --model's coverage is below --min-coverage (or nothing is converted)."
        ),
    )
    check.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help=(
            "a factory 'package.module:function' or 'path/to/file.py:function' returning "
            "(model, inputs) or (model, inputs, loss_fn); the current directory is importable"
        ),
    )
    check.add_argument(
        "--functional",
        action="store_true",
        help="convert with functional=True: torch function calls in forward are routed to manual Functions",
    )
    check.add_argument(
        "--min-coverage",
        type=float,
        metavar="F",
        help=(
            "fail with exit code 3 when less than this share (0 to 1) of the parameter elements gets its "
            "gradient from explicit backward; exit code 3 also when nothing is converted"
        ),
    )
    check.add_argument(
        "--dtype", choices=_DTYPES, default="float64", help="dtype of the model comparison (default float64)"
    )
    check.add_argument(
        "--op",
        action="append",
        metavar="NAME",
        help="check only this op of the registry (repeatable; default: every op)",
    )
    check.add_argument(
        "--feedback",
        metavar="RULE",
        help=(
            "check a feedback rule (fa, dfa, sign, brsf, frsf) instead: a rule's update is no gradient, so "
            "gradcheck does not apply; each op's BP2 through B is compared with the rule's update "
            "written out with native ops"
        ),
    )
    check.add_argument("--device", default="cpu", help="device to run on (default cpu)")
    check.add_argument("--seed", type=int, default=0, help="seed for samples, dropout and the default loss")
    sub.add_parser(
        "train",
        help="train with Lightning (LightningCLI fit); all arguments pass on: see 'manual-bp train --help'",
        add_help=False,
    )
    return parser


def _version() -> str:
    """The installed version, read without importing manual_bp (and torch with it)."""
    try:
        return importlib.metadata.version("manual_bp")
    except importlib.metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
        from manual_bp import __version__

        return __version__


def _progress(i: int, n: int, name: str) -> None:
    """The suite's progress on stderr, one line rewritten in place on a terminal."""
    if sys.stderr.isatty():
        end = "\n" if i + 1 == n else ""
        print(f"\rchecking {i + 1}/{n}: {name}\033[K", end=end, file=sys.stderr, flush=True)


def _call_factory(spec: str) -> tuple[Any, Any, Any]:
    """``(model, inputs, loss_fn)`` from the user's factory, checked; ``UsageError`` if it is wrong."""
    import torch
    from torch import nn

    result = call_factory(spec)
    expected = "(model, inputs), (model, inputs, loss_fn) or a dict with keys 'model' and 'inputs'"
    if isinstance(result, Mapping):
        unknown = set(result) - {"model", "inputs", "loss_fn"}
        if "model" not in result or "inputs" not in result or unknown:
            raise UsageError(
                f"--model: {spec}() returned a dict with keys {sorted(result)}; expected {expected}"
            )
        model, inputs, loss_fn = result["model"], result["inputs"], result.get("loss_fn")
    elif isinstance(result, Sequence) and not isinstance(result, str) and len(result) in (2, 3):
        model, inputs, loss_fn = (*result, None)[:3]
    else:
        raise UsageError(f"--model: {spec}() returned {describe(result)}; expected {expected}")
    if not isinstance(model, nn.Module):
        raise UsageError(
            f"--model: {spec}() returned {describe(model)} as the model; expected a torch.nn.Module"
        )
    if not (
        isinstance(inputs, (torch.Tensor, Mapping))
        or (isinstance(inputs, (tuple, list)) and any(isinstance(a, torch.Tensor) for a in inputs))
    ):
        raise UsageError(
            f"--model: {spec}() returned {describe(inputs)} as the inputs; expected a Tensor, a tuple or "
            "list of positional arguments (with at least one Tensor), or a dict of keyword arguments"
        )
    if loss_fn is not None and not callable(loss_fn):
        raise UsageError(f"--model: {spec}() returned {describe(loss_fn)} as loss_fn; expected a callable")
    return model, inputs, loss_fn


def _check(args: argparse.Namespace) -> int:
    import torch

    from manual_bp import check

    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise UsageError(f"--device: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {args.device}: CUDA is not available on this machine")
    if args.model is None:
        ops = check.OPS
        if args.op:
            unknown = sorted(set(args.op) - {op.name for op in ops})
            if unknown:
                raise UsageError(
                    f"--op: no op named {', '.join(unknown)}; the ops are {', '.join(op.name for op in ops)}"
                )
            ops = tuple(op for op in ops if op.name in args.op)
        if args.feedback is not None:
            return _check_feedback(args.feedback, ops, device, args.seed)
        rows = check.run_suite(ops, device=device, seed=args.seed, progress=_progress)
        print(check.format_suite(rows))
        return 0 if all(r.passed for r in rows) else 1
    if args.feedback is not None:
        raise UsageError("--feedback checks the ops of the registry; it does not combine with --model")
    if args.min_coverage is not None and not 0.0 <= args.min_coverage <= 1.0:
        raise UsageError(f"--min-coverage: expected a share between 0 and 1, got {args.min_coverage}")
    model, inputs, loss_fn = _call_factory(args.model)
    model = model.to(device)
    inputs = _to(inputs, device)
    try:  # the native model must run on its own example inputs before anything is compared
        with torch.no_grad():
            if isinstance(inputs, Mapping):
                model(**inputs)
            else:
                model(*(inputs if isinstance(inputs, (tuple, list)) else (inputs,)))
    except Exception as error:
        raise UsageError(
            f"--model: the model from {args.model}() fails on its example inputs: "
            f"{type(error).__name__}: {error}"
        ) from error
    try:
        result = check.check_model(
            model,
            inputs,
            loss_fn,
            dtype=getattr(torch, args.dtype),
            seed=args.seed,
            functional=args.functional,
            min_coverage=args.min_coverage,
        )
    except check.CheckError as error:  # the check cannot run: bad input, not a gradient difference
        raise UsageError(f"--model: {error}") from error
    print(result)
    print(result.verdict())
    if not result.passed:
        return 1
    return 0 if result.coverage_ok else COVERAGE_EXIT


def _check_feedback(rule: str, ops: Any, device: Any, seed: int) -> int:
    from manual_bp import check
    from manual_bp.feedback import RULES

    if rule not in RULES[1:]:
        raise UsageError(f"--feedback: expected one of {', '.join(RULES[1:])}, got {rule!r}")
    with_rule = [op for op in ops if op.feedback is not None]
    if not with_rule:
        raise UsageError(
            f"--feedback {rule}: none of the chosen ops has a BP2 a rule changes; those that do: "
            + ", ".join(op.name for op in check.OPS if op.feedback is not None)
        )
    print(
        f"feedback rule {rule}: a rule's update is not a gradient, so gradcheck does not apply. Each op "
        "with B in place of its weight in BP2 is compared with the rule's update written out with "
        "native ops (BP2 through B, BP3 unchanged); `manual-bp check` without --feedback checks the "
        "gradients themselves."
    )
    rows = check.run_feedback_suite(rule, with_rule, device=device, seed=seed, progress=_progress)
    print(check.format_suite(rows))
    return 0 if all(r.passed for r in rows) else 1


def _to(obj: Any, device: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


#: What ``manual-bp train --help`` depends on besides the arguments: these packages' versions and
#: manual_bp's own Lightning code (the help lists the options of its classes).
_HELP_PACKAGES = ("lightning", "jsonargparse", "torch", "torchmetrics")
_HELP_SOURCES = ("cli.py", "lightning")


def _help_cache_path(argv: list[str]) -> Path:
    """The cache file of ``manual-bp train`` with ``argv`` (``--help`` or ``-h``): named by a hash of
    Python's and the packages' versions, the size and time of every source file of manual_bp's
    Lightning code and the terminal width, so that a change to any of them makes a new file."""
    package = Path(__file__).resolve().parent
    key = [sys.version, *argv, str(shutil.get_terminal_size().columns), str(package)]
    for name in _HELP_PACKAGES:
        try:
            key.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            key.append(f"{name}=none")
    for source in _HELP_SOURCES:
        for path in (
            sorted((package / source).rglob("*.py")) if (package / source).is_dir() else [package / source]
        ):
            stat = path.stat()
            key.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
    digest = hashlib.sha256("\n".join(key).encode()).hexdigest()[:16]
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "manual_bp" / f"train_help-{digest}.txt"


#: ``manual-bp train --help`` as shipped with the package (``scripts/train_help.py`` writes it; a test
#: checks it against the live one), for the first call on a fresh install: its first line names the
#: package versions it was built with, and it is used only where they are the installed ones.
SHIPPED_HELP = Path(__file__).resolve().parent / "train_help.txt"


def shipped_help_header() -> str:
    """The first line :data:`SHIPPED_HELP` must have to serve this installation."""
    versions = []
    for name in _HELP_PACKAGES:
        try:
            versions.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name}==none")
    return f"# manual-bp {_version()} train --help, built with {' '.join(versions)}\n"


def render_train_help(argv: list[str]) -> str:
    """What the Lightning CLI prints for ``manual-bp train ARGV`` (``--help``): 3-5 s of imports."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            _train(argv)
        except SystemExit as done:
            if done.code not in (0, None):
                raise
    return text.getvalue()


def _train_help(argv: list[str]) -> int:
    """Print ``manual-bp train --help``: from the cache file when there is one, else from the help
    shipped with the package when it was built with the installed versions, else built by the
    Lightning CLI (3-5 s of imports) and written to the cache file for the next time."""
    path = _help_cache_path(argv)
    if path.is_file():
        sys.stdout.write(path.read_text())
        return 0
    if argv == ["--help"] and SHIPPED_HELP.is_file():
        header, _, body = SHIPPED_HELP.read_text().partition("\n")
        if header + "\n" == shipped_help_header():
            sys.stdout.write(body)
            return 0
    text = render_train_help(argv)
    with contextlib.suppress(OSError):  # no cache where the home directory is read-only
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(text)
        partial.replace(path)
    sys.stdout.write(text)
    return 0


def _train(argv: list[str]) -> int:
    try:
        from manual_bp.lightning.cli import main as train_main
    except ModuleNotFoundError as error:
        if error.name is not None and (
            error.name.startswith("manual_bp") or error.name.startswith("lightning")
        ):
            raise UsageError(
                f"manual-bp train needs the Lightning integration (manual_bp.lightning.cli), which is not "
                f"available here: {error}"
            ) from error
        raise
    from manual_bp._errors import CheckpointError, SetupError, TrainingDiverged

    try:
        code = train_main(argv)
    except (CheckpointError, SetupError) as error:
        raise UsageError(str(error)) from error
    except TrainingDiverged as error:
        print(f"manual-bp: error: {error}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``manual-bp`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["train"] and argv[1:] in (["--help"], ["-h"]):
            return _train_help(argv[1:])
        if argv[:1] == ["train"]:
            return _train(argv[1:])  # LightningCLI parses the rest, --help included
        parser = _parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        return _check(args)
    except (UsageError, FactoryError) as error:
        print(f"manual-bp: error: {error}", file=sys.stderr)
        return 2
