"""A manual model against its native twin: outputs, loss and every gradient, side by side."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from manual_bp.check._tolerances import TOLERANCES, close, errors, tolerances
from manual_bp.check.native_calls import NativeCall, as_call, find_native_calls
from manual_bp.convert import ConversionReport, _table, conversion_report, convert, native_twin
from manual_bp.coverage import Coverage, _percent, coverage

__all__ = ["CheckError", "Comparison", "ComparisonRow", "ModelCheck", "check_model", "compare"]


class CheckError(Exception):
    """The comparison cannot run: the model cannot be copied or returns no floating tensor, ``loss_fn``
    raises or returns no scalar Tensor, or nothing in the model has a manual backward.

    Not a gradient difference: ``manual-bp check`` reports it as bad input (exit code 2), where a
    difference is exit code 1.
    """


@dataclass(frozen=True)
class ComparisonRow:
    """One compared tensor: ``output``, ``loss``, ``grad <parameter name>`` or ``grad input[i]``."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    passed: bool
    note: str = ""


@dataclass
class Comparison:
    """The result of :func:`compare`; ``passed`` is true when every row passes."""

    rows: list[ComparisonRow]
    dtype: torch.dtype
    rtol: float
    atol: float

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def __str__(self) -> str:
        body = [
            (
                r.name,
                str(list(r.shape)),
                f"{r.max_abs:.1e}",
                f"{r.max_rel:.1e}",
                "ok" if r.passed else "FAIL",
                r.note,
            )
            for r in self.rows
        ]
        failed = sum(not r.passed for r in self.rows)
        head = (
            f"manual vs native in {str(self.dtype).removeprefix('torch.')} "
            f"(pass: |manual - native| <= {self.atol:g} + {self.rtol:g} |native|)"
        )
        tail = f"{len(self.rows) - failed} of {len(self.rows)} tensors agree" + (
            f", {failed} DIFFER" if failed else ""
        )
        return "\n".join(
            [head, _table(("tensor", "shape", "max abs", "max rel", "pass", "note"), body), tail]
        )


def _tensors(obj: Any) -> list[Tensor]:
    """The floating tensors in an output (a tensor, or nested tuples, lists, dicts of them)."""
    if isinstance(obj, Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    return []


def _leaf_inputs(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], list[Tensor]]:
    """Fresh leaf copies of the floating input tensors, with ``requires_grad`` so their grads compare."""
    leaves: list[Tensor] = []

    def leaf(a: Any) -> Any:
        if isinstance(a, Tensor) and a.is_floating_point():
            t = a.detach().clone().requires_grad_(True)
            leaves.append(t)
            return t
        return a

    return tuple(leaf(a) for a in args), {k: leaf(v) for k, v in kwargs.items()}, leaves


def _run(
    model: nn.Module,
    inputs: Any,
    loss_fn: Callable[[Any], Tensor] | None,
    seed: int,
    weights: list[Tensor] | None,
) -> tuple[list[Tensor], Tensor, dict[str, Tensor | None], list[Tensor | None], list[Tensor]]:
    args, kwargs = as_call(inputs)
    args, kwargs, leaves = _leaf_inputs(args, kwargs)
    model.zero_grad(set_to_none=True)
    devices = sorted({t.device for t in model.parameters() if t.device.type == "cuda"}, key=str)
    with torch.random.fork_rng(devices=devices):  # the same dropout masks for both models
        torch.manual_seed(seed)
        out = model(*args, **kwargs)
    outs = _tensors(out)
    if not outs:
        raise CheckError(f"the model returned no floating-point tensor (got {type(out).__name__})")
    if weights is None:  # the default loss: Σ w ⊙ output with fixed random w, so every output matters
        gen = torch.Generator().manual_seed(seed + 1)
        weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in outs]
    if loss_fn is not None:
        try:
            loss = loss_fn(out)
        except Exception as error:
            raise CheckError(f"loss_fn raised {type(error).__name__}: {error}") from error
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            shape = f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else ""
            raise CheckError(f"loss_fn must return a scalar Tensor, got {type(loss).__name__}{shape}")
    else:
        terms = [(o * w).sum() for o, w in zip(outs, weights, strict=True)]
        loss = terms[0]
        for t in terms[1:]:
            loss = loss + t
    loss.backward()
    grads = {
        name: (p.grad.detach().clone() if p.grad is not None else None)
        for name, p in model.named_parameters()
    }
    input_grads = [x.grad for x in leaves]
    return [o.detach() for o in outs], loss.detach(), grads, input_grads, weights


def compare(
    manual: nn.Module,
    native: nn.Module,
    inputs: Any,
    loss_fn: Callable[[Any], Tensor] | None = None,
    *,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> Comparison:
    """Run both models on ``inputs`` and compare outputs, loss and every gradient.

    Args:
        manual: the model with manual layers (e.g. ``manual_bp.convert(native)``).
        native: the same model with ``torch.nn`` layers; parameter names and shapes must match.
        inputs: a Tensor, a tuple/list of positional arguments or a dict of keyword arguments.
            Floating tensors are differentiated too (rows ``grad input[i]``); others (token ids,
            masks) pass through.
        loss_fn: maps the model's output to a scalar; by default ``Σ w ⊙ output`` with fixed random
            weights ``w`` (the same for both models), which exercises every output.
        rtol, atol: pass when ``|manual − native| ≤ atol + rtol |native|`` elementwise; defaults
            are ``torch.testing.assert_close``'s for ``dtype``.
        seed: the RNG seed set before each forward, so dropout draws the same masks in both.
        dtype: the dtype whose default tolerances apply and that the report names; by default the
            parameters' dtype, or the output's for a model without parameters.

    Raises:
        CheckError: the model returns no floating tensor, or ``loss_fn`` raises or returns no
            scalar Tensor.

    Both models are run in their current train/eval mode; their ``.grad`` fields are overwritten.
    """
    names_m = [(n, p.shape) for n, p in manual.named_parameters()]
    names_n = [(n, p.shape) for n, p in native.named_parameters()]
    if names_m != names_n:
        raise ValueError(
            "manual and native models must have the same parameter names and shapes, got "
            f"{len(names_m)} vs {len(names_n)} parameters; first difference: "
            f"{next((a, b) for a, b in zip(names_m + [None], names_n + [None], strict=False) if a != b)}"  # type: ignore[operator]
        )
    out_n, loss_n, grads_n, in_n, weights = _run(native, inputs, loss_fn, seed, None)
    out_m, loss_m, grads_m, in_m, _ = _run(manual, inputs, loss_fn, seed, weights)
    if dtype is None:
        params = list(native.parameters())
        dtype = params[0].dtype if params else out_n[0].dtype
    default_rtol, default_atol = tolerances(dtype) if dtype in TOLERANCES else (1e-7, 1e-7)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol

    rows: list[ComparisonRow] = []

    def add(name: str, a: Tensor | None, b: Tensor | None) -> None:
        if a is None and b is None:
            rows.append(ComparisonRow(name, (), 0.0, 0.0, True, "no gradient in either (unused)"))
            return
        if a is None or b is None:
            which = "manual" if a is None else "native"
            shape = tuple((b if a is None else a).shape)  # type: ignore[union-attr]
            rows.append(
                ComparisonRow(name, shape, math.inf, math.inf, False, f"no gradient in the {which} model")
            )
            return
        if a.shape != b.shape:
            rows.append(
                ComparisonRow(name, tuple(b.shape), math.inf, math.inf, False, f"shape {tuple(a.shape)}")
            )
            return
        abs_err, rel_err = errors(a, b, atol)
        rows.append(ComparisonRow(name, tuple(b.shape), abs_err, rel_err, close(a, b, rtol, atol)))

    for i, (a, b) in enumerate(zip(out_m, out_n, strict=False)):
        add("output" if len(out_n) == 1 else f"output[{i}]", a, b)
    if len(out_m) != len(out_n):
        rows.append(ComparisonRow("output", (), math.inf, math.inf, False, "different number of outputs"))
    add("loss", loss_m, loss_n)
    for name in grads_n:
        add(f"grad {name}", grads_m[name], grads_n[name])
    for i, (a, b) in enumerate(zip(in_m, in_n, strict=True)):
        add(f"grad input[{i}]", a, b)
    return Comparison(rows, dtype, rtol, atol)


@dataclass
class ModelCheck:
    """What :func:`check_model` found: the conversion report, the comparison, the native calls."""

    report: ConversionReport
    comparison: Comparison
    native_calls: list[NativeCall]
    coverage: Coverage | None = None
    min_coverage: float | None = None

    @property
    def passed(self) -> bool:
        """Whether every output and gradient matches native's (coverage aside)."""
        return self.comparison.passed

    @property
    def converted(self) -> bool:
        """Whether anything was converted: some parameter gets its gradient from explicit backward
        (for a model without parameters: some manual node ran)."""
        c = self.coverage
        return c is None or c.explicit_elements > 0 or (c.total_elements == 0 and c.manual_nodes > 0)

    @property
    def coverage_ok(self) -> bool:
        """Converted, and at least ``min_coverage`` of the parameter elements explicit."""
        if not self.converted:
            return False
        c = self.coverage
        return self.min_coverage is None or c is None or c.parameter_share >= self.min_coverage

    def verdict(self) -> str:
        """The last line ``manual-bp check --model`` prints: PASS, or what failed."""
        if not self.passed:
            return "FAIL: manual gradients differ"
        c = self.coverage
        if not self.converted:
            return (
                "NOT CONVERTED: no parameter gets its gradient from explicit backward (0% coverage): "
                "the gradients above are native autograd's on both sides"
                + ("" if self.report.functional else "; try --functional")
            )
        if not self.coverage_ok and c is not None:
            return (
                f"FAIL: coverage {_percent(c.explicit_elements, c.total_elements)} of parameter elements "
                f"is below --min-coverage {self.min_coverage:g} (manual gradients match native autograd)"
            )
        return "PASS: manual gradients match native autograd"

    def __str__(self) -> str:
        parts = [str(self.report), "", str(self.comparison)]
        if self.native_calls:
            rows = [(c.op, str(c.count), c.where) for c in self.native_calls]
            parts += [
                "",
                "native calls of ops manual_bp has twins for (not modules, so convert cannot swap them; "
                "their gradients come from native autograd):",
                _table(("op", "calls", "call site"), rows),
            ]
        else:
            parts += [
                "",
                "no native call of an op manual_bp has a twin for: every such op runs manual backward",
            ]
        return "\n".join(parts)


def check_model(
    model: nn.Module,
    inputs: Any,
    loss_fn: Callable[[Any], Tensor] | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    functional: bool = False,
    min_coverage: float | None = None,
) -> ModelCheck:
    """Convert a copy of ``model`` and compare it with a native copy in ``dtype`` (float64 by default).

    ``model`` is not changed: both twins are deep copies cast to ``dtype`` (floating inputs too);
    the native one is :func:`manual_bp.convert.native_twin` (every manual layer and every ``MLP``
    computed by ``torch.nn`` and autograd), so models built from manual layers work too.
    The result prints as the conversion report with the converted copy's
    :func:`~manual_bp.coverage`, the comparison table and the native calls that conversion could
    not reach.

    Args:
        functional: convert with ``functional=True`` (torch function calls routed too). ``loss_fn``
            stays as given, native unless it runs its code under :func:`manual_bp.functional_mode`.
        min_coverage: the share of parameter elements that must get their gradient from explicit
            backward (:attr:`ModelCheck.coverage_ok`); without it, any share above 0 will do.

    Raises:
        CheckError: ``model`` cannot be deep-copied, nothing in it has a manual backward (both copies
            would run native autograd), or the comparison cannot run (see :func:`compare`).
    """
    if min_coverage is not None and not 0.0 <= min_coverage <= 1.0:
        raise ValueError(f"min_coverage must be between 0 and 1, got {min_coverage}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"check_model expected a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = as_call(inputs)
    if args and kwargs:
        raise TypeError("inputs must be positional (Tensor, tuple, list) or keyword (dict), not both")

    def cast(a: Any) -> Any:
        return a.detach().to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a

    call: Any = {k: cast(v) for k, v in kwargs.items()} if kwargs else tuple(cast(a) for a in args)
    try:
        copies = copy.deepcopy(model).to(dtype), copy.deepcopy(model).to(dtype)
    except Exception as error:
        raise CheckError(
            f"cannot copy the model ({type(model).__name__}): {type(error).__name__}: {error}; the check "
            "converts a deep copy and compares it with another, leaving the model as it is"
        ) from error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "nothing to convert" is a CheckError instead
        # native even if built from manual layers (an MLP becomes a native Linear/activation stack)
        native = native_twin(copies[0])
        manual = convert(copies[1], inplace=True, functional=functional)  # an MLP stays as it is
    report = conversion_report(manual)
    if not report.manual and not functional:
        kept = ", ".join(f"{e.path or '(model)'} {e.kind}" for e in report.native) or "none"
        raise CheckError(
            f"nothing to check: convert found no layer with a manual backward in {report.model} "
            f"(modules that stay native: {kept}; the supported ones are in "
            "manual_bp.ops.MODULE_TWINS), so both copies would run native autograd"
        )
    comparison = compare(manual, native, call, loss_fn, rtol=rtol, atol=atol, seed=seed, dtype=dtype)
    # floating inputs require grad (as in the comparison), so a model without parameters has a graph
    cargs, ckwargs = as_call(call)
    grad = lambda a: a.detach().requires_grad_() if isinstance(a, Tensor) and a.is_floating_point() else a  # noqa: E731
    try:
        report.coverage = coverage(
            manual, *map(grad, cargs), loss_fn=loss_fn, **{k: grad(v) for k, v in ckwargs.items()}
        )
    except (TypeError, ValueError) as error:  # e.g. an output that needs no gradient at all
        raise CheckError(f"cannot measure the coverage: {error}") from error
    return ModelCheck(report, comparison, find_native_calls(manual, call), report.coverage, min_coverage)
