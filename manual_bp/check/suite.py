"""The suite: every op of the registry under gradcheck, gradgradcheck and the native comparison."""

from __future__ import annotations

import functools
import math
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.testing import make_tensor

from manual_bp.check._tolerances import close, errors, tolerances
from manual_bp.convert import _table
from manual_bp.ops import OPS, Op, Sample

__all__ = ["OPS", "SuiteRow", "format_suite", "run_feedback_suite", "run_suite"]


@dataclass(frozen=True)
class SuiteRow:
    """One line of the suite's table."""

    op: str
    dtype: str
    check: str
    error: float
    passed: bool
    samples: int
    detail: str = ""


def _diff_inputs(sample: Sample) -> list[Tensor]:
    return [a for a in sample.args if isinstance(a, Tensor) and a.requires_grad]


def _fresh(sample: Sample, dtype: torch.dtype) -> Sample:
    """A copy of ``sample`` with its floating tensors cast to ``dtype`` (layout kept)."""

    def conv(a: Any) -> Any:
        if not isinstance(a, Tensor):
            return a
        b = a.detach()
        if b.is_floating_point():
            b = b.to(dtype)
            if not a.is_contiguous():  # keep the sample non-contiguous
                b = b.transpose(-1, -2).contiguous().transpose(-1, -2)
        return b.requires_grad_(a.requires_grad)

    return Sample(
        tuple(conv(a) for a in sample.args), {k: conv(v) for k, v in sample.kwargs.items()}, sample.label
    )


def _as_function(
    spec_fn: Callable[..., Tensor], sample: Sample, random: bool = False
) -> tuple[Callable[..., Tensor], list[Tensor]]:
    """``fn(*diff_inputs)`` calling ``spec_fn`` with the sample's other arguments fixed; for a
    ``random`` op every call runs from the same seed, so that every call draws the same numbers."""
    positions = [i for i, a in enumerate(sample.args) if isinstance(a, Tensor) and a.requires_grad]

    def fn(*diff: Tensor) -> Tensor:
        args = list(sample.args)
        for i, d in zip(positions, diff, strict=True):
            args[i] = d
        if not random:
            return spec_fn(*args, **sample.kwargs)
        with torch.random.fork_rng(devices=[d.device for d in diff if d.device.type == "cuda"][:1]):
            torch.manual_seed(_RANDOM_SEED)
            return spec_fn(*args, **sample.kwargs)

    return fn, [sample.args[i] for i in positions]


_RANDOM_SEED = 1234  # the seed every call of a random op runs from


def _jacobian_error(
    fn: Callable[..., Tensor | tuple[Tensor, ...]],
    inputs: list[Tensor],
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
) -> tuple[float, bool]:
    """A slow-mode gradcheck of our own that also measures the error.

    Returns ``max |J_analytic − J_numeric|`` (the backward of each output unit vector against
    central differences) and whether every entry satisfies ``gradcheck``'s default tolerance
    ``|J_a − J_n| ≤ atol + rtol |J_n|``.
    """

    def flat_out(*xs: Tensor) -> Tensor:
        out = fn(*xs)
        outs = out if isinstance(out, tuple) else (out,)
        return torch.cat([o.reshape(-1) for o in outs if o is not None])

    base = [x.detach().clone() for x in inputs]
    n_in = sum(x.numel() for x in base)
    xs = [x.clone().requires_grad_(True) for x in base]
    y = flat_out(*xs)
    if n_in == 0 or y.numel() == 0:
        return 0.0, True
    analytic = torch.zeros(y.numel(), n_in, dtype=torch.float64)
    for i in range(y.numel()):
        grads = torch.autograd.grad(y[i], xs, retain_graph=True, allow_unused=True)
        row = [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, xs, strict=True)]
        analytic[i] = torch.cat([r.reshape(-1) for r in row]).double().cpu()
    numeric = torch.zeros_like(analytic)
    col = 0
    for k, x in enumerate(base):
        for j in range(x.numel()):
            shifted = []
            for sign in (1.0, -1.0):
                xk = x.detach().contiguous().clone()  # the layout does not change the values
                xk.view(-1)[j] += sign * eps
                args = [
                    t.detach().requires_grad_(True) for t in (*base[:k], xk, *base[k + 1 :])
                ]  # g differentiates
                shifted.append(flat_out(*args).detach().double().cpu())
            numeric[:, col] = (shifted[0] - shifted[1]) / (2 * eps)
            col += 1
    close = bool(((analytic - numeric).abs() <= atol + rtol * numeric.abs()).all())
    return (analytic - numeric).abs().max().item(), close


def _backward_fn(fn: Callable[..., Tensor], n_inputs: int) -> Callable[..., tuple[Tensor, ...]]:
    """``(inputs..., grad_output) -> grads of the inputs``: the map gradgradcheck differentiates."""

    def g(*xs: Tensor) -> tuple[Tensor, ...]:
        inputs, grad_output = xs[:n_inputs], xs[n_inputs]
        out = fn(*inputs)
        return torch.autograd.grad(out, inputs, grad_output, create_graph=True, allow_unused=True)

    return g


def _run_gradcheck(spec: Op, samples: list[Sample], second: bool) -> SuiteRow:
    error, passed, detail = 0.0, True, ""
    samples = [s for s in samples if s.finite]
    for sample in samples:
        fn, inputs = _as_function(spec.manual, sample, spec.random)
        out = fn(*inputs)
        grad_output = make_tensor(out.shape, dtype=out.dtype, device=out.device).requires_grad_(True)
        try:
            if second:
                ok = torch.autograd.gradgradcheck(
                    fn, inputs, (grad_output,), raise_exception=False, fast_mode=True
                )
                err, close = _jacobian_error(_backward_fn(fn, len(inputs)), [*inputs, grad_output])
            else:
                ok = torch.autograd.gradcheck(fn, inputs, raise_exception=False, fast_mode=True)
                err, close = _jacobian_error(fn, inputs)
            ok = ok and close
        except Exception as e:  # a crash is a failure of this sample, reported, not raised
            ok, err, detail = False, math.nan, f"{sample.label}: {type(e).__name__}: {e}"
        if not ok and not detail:
            detail = f"failed on {sample.label or 'a sample'}"
        error = max(error, err) if not math.isnan(err) else math.nan
        passed = passed and ok
    return SuiteRow(
        spec.name, "float64", "gradgradcheck" if second else "gradcheck", error, passed, len(samples), detail
    )


def _run_refuses_double_backward(spec: Op, samples: list[Sample]) -> SuiteRow:
    """For a ``once_differentiable`` op: a second backward must raise instead of returning zeros."""
    passed, detail = True, ""
    for sample in samples:
        fn, inputs = _as_function(spec.manual, sample, spec.random)
        xs = [x.detach().clone().requires_grad_(True) for x in inputs]
        out = fn(*xs)
        if out.numel() == 0 or not xs:
            continue
        grad_output = torch.ones_like(out, requires_grad=True)
        grads = torch.autograd.grad(out, xs, grad_output, create_graph=True, allow_unused=True)
        first = sum(g.sum() for g in grads if g is not None)
        try:
            # a full backward, not autograd.grad(..., inputs): once_differentiable's error node hangs
            # on aliases of the first backward's outputs, which no chosen input reaches
            first.backward()  # type: ignore[union-attr]
        except RuntimeError:
            continue
        passed = False
        detail = detail or f"double backward did not raise on {sample.label or 'a sample'}"
    return SuiteRow(spec.name, "float64", "double backward raises", 0.0, passed, len(samples), detail)


# The float64 native comparison is tight: both sides are exact to rounding, so anything above a few
# ulps is a formula or precision bug (e.g. a float32 constant inside a float64 backward), which
# gradcheck's 1e-3 relative tolerance would let through.
_NATIVE64_TOLERANCE = (1e-10, 1e-12)


def _run_native(spec: Op, samples: list[Sample], dtype: torch.dtype) -> SuiteRow:
    rtol, atol = _NATIVE64_TOLERANCE if dtype == torch.float64 else tolerances(dtype)
    error, passed, detail = 0.0, True, ""
    for sample in samples:
        results = []
        for impl in (spec.manual, spec.native):
            fn, inputs = _as_function(impl, sample, spec.random)
            xs = [x.detach().clone().requires_grad_(True) for x in inputs]
            out = fn(*xs)
            if not results:  # one grad_output for both, non-contiguous when it has 2 dims or more
                g = make_tensor(out.shape[::-1], dtype=out.dtype, device=out.device)
                grad_output = g.permute(list(reversed(range(g.dim()))))
            grads = torch.autograd.grad(out, xs, grad_output, allow_unused=True) if xs and out.numel() else ()
            results.append([out.detach(), *(g for g in grads if g is not None)])
        manual, native = results
        if len(manual) != len(native):
            passed, detail = (
                False,
                f"{sample.label}: manual gives {len(manual) - 1} gradients, native {len(native) - 1}",
            )
            continue
        for a, b in zip(manual, native, strict=True):
            err = errors(a, b)[0]
            error = max(error, err)
            if not close(a, b, rtol, atol):
                passed = False
                detail = detail or f"failed on {sample.label or 'a sample'}"
    return SuiteRow(
        spec.name, str(dtype).removeprefix("torch."), "native", error, passed, len(samples), detail
    )


def run_suite(
    ops: Sequence[Op] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[SuiteRow]:
    """Run gradcheck, gradgradcheck and the native comparison (float64, float32) for every op.

    The warnings torch gives on purpose for some samples (a target broadcast against the input,
    ``padding='same'`` with an even kernel, a variance of one value) are not shown: the samples
    exercise those cases deliberately.

    Args:
        ops: the entries to run (default: all of :data:`OPS`).
        device: where to run.
        seed: seeds the sample generator, so that a run is reproducible.
        progress: called as ``progress(i, n, name)`` before the ``i``-th of ``n`` ops (from 0).

    Returns:
        Rows ``(op, dtype, check, error, passed)``, four per op (gradcheck, gradgradcheck, native in
        float64, native in float32); see the module docstring for what the errors mean.
    """
    device = torch.device(device)
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny samples: extra intra-op threads only contend (3x slower on a busy box)
    try:
        specs = list(OPS if ops is None else ops)
        rng = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
        with rng, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for i, spec in enumerate(specs):
                if progress is not None:
                    progress(i, len(specs), spec.name)
                # seeded per op, so that one op's samples do not depend on the ops before it
                torch.manual_seed(seed + zlib.crc32(spec.name.encode()))
                samples64 = spec.samples(torch.float64, device)
                rows.append(_run_gradcheck(spec, samples64, second=False))
                if spec.double_backward:
                    rows.append(_run_gradcheck(spec, samples64, second=True))
                else:
                    rows.append(_run_refuses_double_backward(spec, samples64))
                rows.append(_run_native(spec, [_fresh(s, torch.float64) for s in samples64], torch.float64))
                rows.append(_run_native(spec, [_fresh(s, torch.float32) for s in samples64], torch.float32))
    finally:
        torch.set_num_threads(threads)
    return rows


def format_suite(rows: Sequence[SuiteRow]) -> str:
    """The suite as a table: op, dtype, check, error, pass (and the failing sample, if any)."""
    body = [
        (r.op, r.dtype, r.check, f"{r.error:.1e}", "ok" if r.passed else "FAIL", str(r.samples), r.detail)
        for r in rows
    ]
    failed = sum(not r.passed for r in rows)
    summary = f"{len(rows) - failed} of {len(rows)} checks passed" + (f", {failed} FAILED" if failed else "")
    return _table(("op", "dtype", "check", "error", "pass", "samples", "detail"), body) + "\n" + summary


# --------------------------------------------------------------------------------------------
# Feedback rules: each against its own update written out with native ops (not gradcheck)
# --------------------------------------------------------------------------------------------


def _rule_matrix(rule: str, weight: Tensor, generator: torch.Generator) -> Tensor:
    """A ``B`` of the rule for a sample's weight: random (fa, dfa), ``sign(W)``, ``|R| ⊙ sign(W)``."""
    random = torch.rand(weight.shape, generator=generator, dtype=torch.float64).to(weight) * 2 - 1
    if rule in ("fa", "dfa"):
        return random
    signs = weight.detach().sign()
    return signs if rule == "sign" else random.abs() * signs


def _with_b(function: Callable[..., Tensor], matrix: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """The op's feedback variant, BP2 through ``matrix``."""
    return function(*args, feedback=matrix, **kwargs)


def _through_b(native: Callable[..., Tensor], matrix: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    """The rule's layer written with native ops: the output of ``native`` from the detached input
    (so its weight and bias get BP3 from the layer's δ), plus a zero-valued probe ``native(x, B)``
    whose input gradient is δ read through ``B`` (BP2 of the rule). The bias is ``args[2]``."""
    x, *rest = args
    out = native(x.detach(), *rest, **kwargs)
    probe_rest = [matrix, None, *(a.detach() if isinstance(a, Tensor) else a for a in rest[2:])]
    probe = native(x, *probe_rest, **kwargs)
    return out + probe - probe.detach()


def run_feedback_suite(
    rule: str,
    ops: Sequence[Op] | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[SuiteRow]:
    """Check a feedback rule's BP2 in every op that has one (``Op.feedback``: linear, convolutions).

    A rule's update is not a gradient, so ``gradcheck`` does not apply: each op with ``B`` in place of
    its weight in BP2 is compared, in float64 and float32, with the rule's update written out with
    native ops (:func:`_through_b`: the native op on the detached input, plus a zero-valued native
    probe ``op(x, B)`` that carries the input's gradient), one ``B`` of the rule per sample. Per
    layer, ``dfa``'s BP2 reads its matrix as this check does, applied to the output error; the
    whole-network dfa is tested against the loop written out by hand in ``tests/test_feedback.py``.
    Rows are named ``"<rule>: BP2 through B"``.
    """
    from manual_bp.feedback import check_rule

    check_rule(rule)
    device = torch.device(device)
    specs = [op for op in (OPS if ops is None else ops) if op.feedback is not None]
    rows = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for i, spec in enumerate(specs):
            if progress is not None:
                progress(i, len(specs), spec.name)
            torch.manual_seed(seed + zlib.crc32(spec.name.encode()))
            generator = torch.Generator().manual_seed(seed)
            samples64 = spec.samples(torch.float64, device)
            for dtype in (torch.float64, torch.float32):
                per_sample = []
                for sample in (_fresh(s, dtype) for s in samples64):
                    matrix = _rule_matrix(rule, sample.args[1], generator)
                    pair = Op(
                        spec.name,
                        functools.partial(_with_b, spec.feedback, matrix),  # type: ignore[arg-type]
                        functools.partial(_through_b, spec.native, matrix),
                        spec.samples,
                    )
                    per_sample.append(_run_native(pair, [sample], dtype))
                failed = [r for r in per_sample if not r.passed]
                rows.append(
                    SuiteRow(
                        spec.name,
                        per_sample[0].dtype,
                        f"{rule}: BP2 through B",
                        max(r.error for r in per_sample),
                        not failed,
                        len(per_sample),
                        failed[0].detail if failed else "",
                    )
                )
    return rows
