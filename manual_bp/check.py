"""Gradient validation: every manual Function against finite differences and native autograd, and a
converted model against its native twin.

Two entry points, both used by ``manual-bp check``:

* :func:`run_suite` runs, for every op of :mod:`manual_bp.functional` (the registry :data:`OPS`),
  ``torch.autograd.gradcheck`` and ``gradgradcheck`` in float64 and a comparison with the native
  op's output and gradients in float32 (``torch.testing.assert_close`` defaults), over systematic
  samples: no batch dim, an empty batch, batch ``[8]``, batch ``[2, 3]``, a 5-D input and
  non-contiguous inputs and ``grad_output``\\ s, plus op parameters (bias or none, slopes, ``beta``,
  reductions, ...). It returns one :class:`SuiteRow` per (op, dtype, check).
* :func:`compare` runs a manual model and a native one (same weights) on the same inputs and loss
  and reports, for the output, the loss, every parameter gradient and every floating input's
  gradient, the largest absolute and relative error and pass/fail; :func:`check_model` makes the
  float64 twin pair from any model with :func:`manual_bp.convert` and also lists the native calls
  (``F.relu(x)`` in a ``forward``) that conversion could not reach.

Errors in the suite: for ``gradcheck`` the largest ``|J_analytic − J_numeric|`` over the samples
(every Jacobian entry, central differences with ``eps = 1e-6``), for ``gradgradcheck`` the same
for the Jacobian of the backward (with respect to the inputs and ``grad_output``), for ``native``
the largest ``|manual − native|`` over outputs and gradients.

Pass/fail: a ``gradcheck``/``gradgradcheck`` row passes when ``torch.autograd.gradcheck`` /
``gradgradcheck`` (fast mode) pass *and* every entry of the full Jacobian satisfies their default
tolerance ``|J_a − J_n| ≤ 1e-5 + 1e-3 |J_n|`` (a slow-mode check that also yields the error
figure). A ``native`` row passes when ``|a − b| ≤ atol + rtol |b|`` elementwise: in float64 with
a tight ``rtol = 1e-10``, ``atol = 1e-12`` (both sides are exact to rounding, so this row catches
precision bugs that gradcheck's tolerance lets through), in float32 with
``torch.testing.assert_close``'s defaults (``rtol = 1.3e-6``, ``atol = 1e-5``). A model
comparison uses ``assert_close``'s defaults for the model's dtype (float64: ``rtol = atol =
1e-7``) unless given others. The relative error of a tensor is ``max|a − b| / max|b|`` (in a
model comparison ``max(max|b|, atol)`` in the denominator, so a gradient that is zero up to
rounding does not show a large relative error).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.testing import make_tensor

import manual_bp.functional as MF
from manual_bp.convert import ConversionReport, _table, conversion_report, convert, native_twin

__all__ = [
    "OPS",
    "Comparison",
    "ComparisonRow",
    "ModelCheck",
    "NativeCall",
    "OpSpec",
    "Sample",
    "SuiteRow",
    "check_model",
    "compare",
    "find_native_calls",
    "format_suite",
    "run_suite",
    "tolerances",
]

# torch.testing.assert_close's defaults (rtol, atol), by dtype
_TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float16: (1e-3, 1e-5),
    torch.bfloat16: (1.6e-2, 1e-5),
    torch.float32: (1.3e-6, 1e-5),
    torch.float64: (1e-7, 1e-7),
}


def tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` of ``torch.testing.assert_close`` for a floating ``dtype``."""
    if dtype not in _TOLERANCES:
        raise ValueError(f"no tolerance for dtype {dtype}; expected one of {list(_TOLERANCES)}")
    return _TOLERANCES[dtype]


def _errors(actual: Tensor, expected: Tensor, floor: float = 0.0) -> tuple[float, float]:
    """``(max |a − b|, max |a − b| / max(max |b|, floor))``, both 0 for empty tensors.

    ``floor`` (the comparison's ``atol``) keeps the relative error of a gradient that is zero up to
    rounding (a conv bias before BatchNorm) from reading as a large number.
    """
    if actual.numel() == 0:
        return 0.0, 0.0
    diff = (actual.double() - expected.double()).abs().max().item()
    scale = max(expected.double().abs().max().item(), floor)
    return diff, (diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf))


def _close(actual: Tensor, expected: Tensor, rtol: float, atol: float) -> bool:
    if actual.shape != expected.shape:
        return False
    return bool(torch.isclose(actual, expected, rtol=rtol, atol=atol, equal_nan=True).all())


# --------------------------------------------------------------------------------------------
# The op registry and its samples
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """Arguments of one call; tensors with ``requires_grad`` are the ones differentiated."""

    args: tuple[Any, ...]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    # False where the output is NaN by definition (reduction='mean' of an empty batch, 0/0): finite
    # differences are meaningless there (torch's own cross_entropy fails gradgradcheck on it), so
    # gradcheck and gradgradcheck skip the sample; the native comparison keeps it (NaN equals NaN)
    finite: bool = True


@dataclass(frozen=True)
class OpSpec:
    """One entry of the suite: a manual op, its native reference and a sample generator.

    ``samples(dtype, device)`` returns the samples; ``double_backward=False`` marks an op whose
    backward is ``once_differentiable``, for which ``gradgradcheck`` is replaced by a check that
    double backward raises.
    """

    name: str
    manual: Callable[..., Tensor]
    native: Callable[..., Tensor]
    samples: Callable[[torch.dtype, torch.device], list[Sample]]
    double_backward: bool = True


def _away_from(x: Tensor, kinks: Sequence[float], gap: float = 0.1) -> Tensor:
    """Move entries within ``gap`` of a kink by ``2·gap``, so finite differences stay on one side."""
    for k in kinks:
        near = (x - k).abs() < gap
        x = torch.where(near, x + torch.where(x >= k, 2 * gap, -2 * gap), x)
    return x


def _t(shape: Sequence[int], dtype: torch.dtype, device: torch.device, kinks: Sequence[float] = ()) -> Tensor:
    x = make_tensor(tuple(shape), dtype=dtype, device=device, low=-2.0, high=2.0)
    return _away_from(x, kinks).requires_grad_(True)


def _noncontig(
    shape: Sequence[int], dtype: torch.dtype, device: torch.device, kinks: Sequence[float] = ()
) -> Tensor:
    """A non-contiguous tensor of ``shape`` (the transpose of a contiguous one)."""
    *lead, a, b = shape
    x = make_tensor((*lead, b, a), dtype=dtype, device=device, low=-2.0, high=2.0)
    return _away_from(x, kinks).transpose(-1, -2).detach().requires_grad_(True)


# batch shapes: no batch dim, empty batch, [8], [2, 3], a 5-D input
_BATCHES: tuple[tuple[int, ...], ...] = ((), (0,), (8,), (2, 3), (2, 1, 2, 1))


def _unary_samples(
    kinks: Sequence[float] = (), **kwargs: Any
) -> Callable[[torch.dtype, torch.device], list[Sample]]:
    def make(dtype: torch.dtype, device: torch.device) -> list[Sample]:
        out = [Sample((_t((*b, 3), dtype, device, kinks),), kwargs, f"batch {list(b)}") for b in _BATCHES]
        out.append(Sample((_noncontig((4, 3), dtype, device, kinks),), kwargs, "non-contiguous"))
        return out

    return make


def _unary(
    name: str, manual: Callable[..., Tensor], native: Callable[..., Tensor], params: Sequence[dict[str, Any]]
) -> OpSpec:
    """An elementwise op with several parameter settings; ``kinks`` maps a setting to its kinks."""

    def samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
        out: list[Sample] = []
        for p in params:
            kw = {k: v for k, v in p.items() if k != "kinks"}
            out += _unary_samples(p.get("kinks", ()), **kw)(dtype, device)
        return out

    return OpSpec(name, manual, native, samples)


def _linear_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    out = []
    for bias in (True, False):
        tag = "bias" if bias else "no bias"
        for b in _BATCHES:
            w = _t((2, 3), dtype, device)
            x = _t((*b, 3), dtype, device)
            out.append(
                Sample((x, w, _t((2,), dtype, device) if bias else None), label=f"{tag}, batch {list(b)}")
            )
        w = _noncontig((2, 3), dtype, device)
        x = _noncontig((5, 3), dtype, device)
        out.append(Sample((x, w, _t((2,), dtype, device) if bias else None), label=f"{tag}, non-contiguous"))
    return out


def _hse_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    out = []
    for reduction in ("mean", "sum", "none"):
        kw = {"reduction": reduction}
        for b in _BATCHES:
            pair = (_t((*b, 3), dtype, device), _t((*b, 3), dtype, device))
            nan = reduction == "mean" and 0 in b
            out.append(Sample(pair, kw, f"{reduction}, batch {list(b)}", finite=not nan))
        pair = (_noncontig((4, 3), dtype, device), _noncontig((4, 3), dtype, device))
        out.append(Sample(pair, kw, f"{reduction}, non-contiguous"))
    return out


def _native_hse(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    per_sample = 0.5 * ((input - target) ** 2).sum(-1)
    return {"mean": per_sample.mean, "sum": per_sample.sum, "none": lambda: per_sample}[reduction]()


def _ce_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    def idx(shape: tuple[int, ...]) -> Tensor:
        return torch.randint(0, 4, shape, device=device)

    def probs(n: int) -> Tensor:
        return torch.softmax(make_tensor((n, 4), dtype=dtype, device=device), -1).requires_grad_(True)

    weight = make_tensor((4,), dtype=dtype, device=device, low=0.5, high=2.0)
    out = []
    for reduction in ("mean", "sum", "none"):
        kw = {"reduction": reduction}
        out += [
            Sample((_t((5, 4), dtype, device), idx((5,))), kw, f"{reduction}, indices"),
            Sample((_t((4,), dtype, device), idx(())), kw, f"{reduction}, no batch dim"),
            Sample(
                (_t((0, 4), dtype, device), idx((0,))), kw, f"{reduction}, empty batch", reduction != "mean"
            ),
            Sample(
                (_noncontig((5, 4), dtype, device), idx((5,))),
                {**kw, "weight": weight},
                f"{reduction}, weight",
            ),
            Sample(
                (_t((5, 4), dtype, device), torch.tensor([0, -100, 3, 1, -100], device=device)),
                kw,
                f"{reduction}, ignore_index",
            ),
            Sample((_t((5, 4), dtype, device), probs(5)), kw, f"{reduction}, probabilities"),
        ]
    return out


_NATIVE_ACT: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "gelu": F.gelu,
    "silu": F.silu,
    "softplus": F.softplus,
    "relu": torch.relu,
    "leaky_relu": F.leaky_relu,
    "identity": lambda x: x,
}


def _manual_mlp(
    input: Tensor, *params: Tensor, activation: str, output_activation: str | None, bias: bool
) -> Tensor:
    from manual_bp.mlp import mlp

    weights, biases = (params[0::2], params[1::2]) if bias else (params, None)
    return mlp(input, list(weights), None if biases is None else list(biases), activation, output_activation)


def _native_mlp(
    input: Tensor, *params: Tensor, activation: str, output_activation: str | None, bias: bool
) -> Tensor:
    weights, biases = (params[0::2], params[1::2]) if bias else (params, [None] * len(params))
    y = input
    for n, (w, b) in enumerate(zip(weights, biases, strict=True)):
        last = n == len(weights) - 1
        y = _NATIVE_ACT[output_activation if last and output_activation else activation](F.linear(y, w, b))
    return y


def _mlp_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    """Networks 3 → 4 → 2 with every kind of activation (smooth ones, relu-like, identity output)."""
    out = []
    settings = [
        ("sigmoid", None, True),
        ("tanh", "identity", True),
        ("gelu", None, False),
        ("leaky_relu", "identity", True),  # kinks: a pre-activation within eps of 0 is improbable
        ("relu", "sigmoid", False),
        ("silu", "softplus", True),
    ]
    for activation, output_activation, bias in settings:
        kw = {"activation": activation, "output_activation": output_activation, "bias": bias}
        tag = f"{activation}/{output_activation or activation}{'' if bias else ', no bias'}"
        for b in _BATCHES:
            params = [
                _t((4, 3), dtype, device),
                _t((4,), dtype, device),
                _t((2, 4), dtype, device),
                _t((2,), dtype, device),
            ]
            out.append(
                Sample(
                    (_t((*b, 3), dtype, device), *(params if bias else params[0::2])),
                    kw,
                    f"{tag}, batch {list(b)}",
                )
            )
        params = [
            _noncontig((4, 3), dtype, device),
            _t((4,), dtype, device),
            _noncontig((2, 4), dtype, device),
            _t((2,), dtype, device),
        ]
        out.append(
            Sample(
                (_noncontig((5, 3), dtype, device), *(params if bias else params[0::2])),
                kw,
                f"{tag}, non-contiguous",
            )
        )
    return out


def _manual_mlp_loss(input: Tensor, target: Tensor, *params: Tensor, reduction: str, **net: Any) -> Tensor:
    from manual_bp.mlp import mlp_loss

    weights, biases = (params[0::2], params[1::2]) if net["bias"] else (params, None)
    return mlp_loss(
        input,
        target,
        list(weights),
        None if biases is None else list(biases),
        net["activation"],
        net["output_activation"],
        reduction,
    )


def _native_mlp_loss(input: Tensor, target: Tensor, *params: Tensor, reduction: str, **net: Any) -> Tensor:
    return _native_hse(_native_mlp(input, *params, **net), target, reduction)


def _mlp_loss_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    """The networks of ``_mlp_samples`` with a target and each reduction (the error inside the Function)."""
    out = []
    for i, net in enumerate(_mlp_samples(dtype, device)):
        reduction = ("mean", "sum", "none")[(i + i // 6) % 3]  # each batch shape meets each reduction
        input, *params = net.args
        target = _t((*input.shape[:-1], 2), dtype, device)
        if not input.is_contiguous():
            target = _noncontig(tuple(target.shape), dtype, device)
        nan = reduction == "mean" and input.shape[:-1].numel() == 0
        out.append(
            Sample(
                (input, target, *params),
                {**net.kwargs, "reduction": reduction},
                f"{net.label}, {reduction}",
                finite=not nan,
            )
        )
    return out


#: The suite: one entry per op (and op setting). To add an op, append one ``OpSpec``.
OPS: list[OpSpec] = [
    OpSpec("linear", MF.linear, F.linear, _linear_samples),
    _unary("sigmoid", MF.sigmoid, torch.sigmoid, [{}]),
    _unary("tanh", MF.tanh, torch.tanh, [{}]),
    _unary("relu", MF.relu, torch.relu, [{"kinks": (0.0,)}]),
    _unary(
        "leaky_relu",
        MF.leaky_relu,
        F.leaky_relu,
        [
            {"kinks": (0.0,)},
            {"negative_slope": 0.2, "kinks": (0.0,)},
            {"negative_slope": -0.1, "kinks": (0.0,)},
        ],
    ),
    _unary("elu", MF.elu, F.elu, [{"kinks": (0.0,)}, {"alpha": 0.5, "kinks": (0.0,)}]),
    _unary(
        "softplus",
        MF.softplus,
        F.softplus,
        [{}, {"beta": 2.0, "threshold": 1.0, "kinks": (0.5,)}],
    ),
    _unary("gelu", MF.gelu, F.gelu, [{}, {"approximate": "tanh"}]),
    _unary("silu", MF.silu, F.silu, [{}]),
    OpSpec("half_squared_error", MF.half_squared_error, _native_hse, _hse_samples),
    OpSpec("cross_entropy", MF.cross_entropy, F.cross_entropy, _ce_samples),
    # the fused network (manual_bp.mlp.MLPFunction: the seed's whole BP1-BP2-BP3 loop in one backward)
    OpSpec("mlp", _manual_mlp, _native_mlp, _mlp_samples),
    # the network and its error as one Function (manual_bp.mlp.MLPLossFunction: BP1 inside)
    OpSpec("mlp_loss", _manual_mlp_loss, _native_mlp_loss, _mlp_loss_samples),
]


# --------------------------------------------------------------------------------------------
# Running the suite
# --------------------------------------------------------------------------------------------


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
    spec_fn: Callable[..., Tensor], sample: Sample
) -> tuple[Callable[..., Tensor], list[Tensor]]:
    """``fn(*diff_inputs)`` calling ``spec_fn`` with the sample's other arguments fixed."""
    positions = [i for i, a in enumerate(sample.args) if isinstance(a, Tensor) and a.requires_grad]

    def fn(*diff: Tensor) -> Tensor:
        args = list(sample.args)
        for i, d in zip(positions, diff, strict=True):
            args[i] = d
        return spec_fn(*args, **sample.kwargs)

    return fn, [sample.args[i] for i in positions]


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


def _run_gradcheck(spec: OpSpec, samples: list[Sample], second: bool) -> SuiteRow:
    error, passed, detail = 0.0, True, ""
    samples = [s for s in samples if s.finite]
    for sample in samples:
        fn, inputs = _as_function(spec.manual, sample)
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


def _run_refuses_double_backward(spec: OpSpec, samples: list[Sample]) -> SuiteRow:
    """For a ``once_differentiable`` op: a second backward must raise instead of returning zeros."""
    passed, detail = True, ""
    for sample in samples:
        fn, inputs = _as_function(spec.manual, sample)
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


def _run_native(spec: OpSpec, samples: list[Sample], dtype: torch.dtype) -> SuiteRow:
    rtol, atol = _NATIVE64_TOLERANCE if dtype == torch.float64 else tolerances(dtype)
    error, passed, detail = 0.0, True, ""
    for sample in samples:
        results = []
        for impl in (spec.manual, spec.native):
            fn, inputs = _as_function(impl, sample)
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
            err = _errors(a, b)[0]
            error = max(error, err)
            if not _close(a, b, rtol, atol):
                passed = False
                detail = detail or f"failed on {sample.label or 'a sample'}"
    return SuiteRow(
        spec.name, str(dtype).removeprefix("torch."), "native", error, passed, len(samples), detail
    )


def run_suite(
    ops: Sequence[OpSpec] | None = None, device: str | torch.device = "cpu", seed: int = 0
) -> list[SuiteRow]:
    """Run gradcheck, gradgradcheck and the native comparison (float64, float32) for every op.

    Args:
        ops: the entries to run (default: all of :data:`OPS`).
        device: where to run.
        seed: seeds the sample generator, so that a run is reproducible.

    Returns:
        Rows ``(op, dtype, check, error, passed)``, four per op (gradcheck, gradgradcheck, native in
        float64, native in float32); see the module docstring for what the errors mean.
    """
    device = torch.device(device)
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny samples: extra intra-op threads only contend (3x slower on a busy box)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for spec in OPS if ops is None else ops:
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
# A manual model against its native twin
# --------------------------------------------------------------------------------------------


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


def _as_call(inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(inputs, Tensor):
        return (inputs,), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    raise TypeError(
        "inputs must be a Tensor, a tuple or list of positional arguments, or a dict of keyword "
        f"arguments, got {type(inputs).__name__}"
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
    args, kwargs = _as_call(inputs)
    args, kwargs, leaves = _leaf_inputs(args, kwargs)
    model.zero_grad(set_to_none=True)
    devices = sorted({t.device for t in model.parameters() if t.device.type == "cuda"}, key=str)
    with torch.random.fork_rng(devices=devices):  # the same dropout masks for both models
        torch.manual_seed(seed)
        out = model(*args, **kwargs)
    outs = _tensors(out)
    if not outs:
        raise TypeError(f"the model returned no floating-point tensor (got {type(out).__name__})")
    if weights is None:  # the default loss: Σ w ⊙ output with fixed random w, so every output matters
        gen = torch.Generator().manual_seed(seed + 1)
        weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in outs]
    if loss_fn is not None:
        loss = loss_fn(out)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise TypeError(f"loss_fn must return a scalar Tensor, got {type(loss).__name__}")
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
            are ``torch.testing.assert_close``'s for the parameters' dtype.
        seed: the RNG seed set before each forward, so dropout draws the same masks in both.

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
    params = list(native.parameters())
    dtype = params[0].dtype if params else torch.float32
    default_rtol, default_atol = tolerances(dtype) if dtype in _TOLERANCES else (1e-7, 1e-7)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    out_n, loss_n, grads_n, in_n, weights = _run(native, inputs, loss_fn, seed, None)
    out_m, loss_m, grads_m, in_m, _ = _run(manual, inputs, loss_fn, seed, weights)

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
        abs_err, rel_err = _errors(a, b, atol)
        rows.append(ComparisonRow(name, tuple(b.shape), abs_err, rel_err, _close(a, b, rtol, atol)))

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


# --------------------------------------------------------------------------------------------
# Native calls that conversion cannot reach
# --------------------------------------------------------------------------------------------


def _watched() -> dict[Any, str]:
    named = {
        "linear": [F.linear],
        "relu": [F.relu, torch.relu, Tensor.relu, torch.relu_, Tensor.relu_],
        "sigmoid": [torch.sigmoid, Tensor.sigmoid, F.sigmoid],
        "tanh": [torch.tanh, Tensor.tanh, F.tanh],
        "leaky_relu": [F.leaky_relu],
        "elu": [F.elu],
        "softplus": [F.softplus],
        "gelu": [F.gelu],
        "silu": [F.silu],
        "cross_entropy": [F.cross_entropy],
        "multi_head_attention_forward": [F.multi_head_attention_forward],
    }
    out: dict[Any, str] = {}
    for name, funcs in named.items():
        for f in funcs:
            out[f] = name
    return out


_WATCHED = _watched()
_TORCH_DIR = os.path.dirname(torch.__file__)
_MANUAL_DIR = os.path.dirname(os.path.abspath(__file__))
# torch's own dispatch wrappers between a call site and the mode
_WRAPPERS = tuple(
    os.path.join(_TORCH_DIR, f)
    for f in ("overrides.py", "nn/functional.py", "_tensor.py", "functional.py", "_jit_internal.py")
)


@dataclass(frozen=True)
class NativeCall:
    """A native op that manual_bp has a twin for, called outside any converted module."""

    op: str
    where: str
    count: int


class _NativeCallLog(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[tuple[str, str], int] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        try:
            name = _WATCHED.get(func)
        except TypeError:
            name = None
        if name is not None:
            frame = sys._getframe(1)
            while frame is not None and frame.f_code.co_filename.startswith(_WRAPPERS):
                frame = frame.f_back  # type: ignore[assignment]
            if frame is not None and not frame.f_code.co_filename.startswith(_MANUAL_DIR):
                path = frame.f_code.co_filename
                short = (
                    os.path.relpath(path, os.path.dirname(_TORCH_DIR))
                    if path.startswith(_TORCH_DIR)
                    else path
                )
                if not path.startswith(_TORCH_DIR):
                    try:
                        short = os.path.relpath(path)
                    except ValueError:
                        pass
                key = (name, f"{short}:{frame.f_lineno} in {frame.f_code.co_name}")
                self.calls[key] = self.calls.get(key, 0) + 1
        return func(*args, **(kwargs or {}))


def find_native_calls(model: nn.Module, inputs: Any) -> list[NativeCall]:
    """Run ``model`` once and list native calls of ops manual_bp has twins for, with their call sites.

    These are what :func:`manual_bp.convert` cannot swap: ``F.relu(x)`` or ``torch.tanh(x)`` inside
    a ``forward``, activations stored as functions, and the projections that
    ``nn.MultiheadAttention`` computes inside ``F.multi_head_attention_forward``. Calls made by
    manual Functions themselves are not listed.
    """
    args, kwargs = _as_call(inputs)
    log = _NativeCallLog()
    with log:  # with grad enabled: under no_grad, eval-mode attention takes a fused fast path
        model(*args, **kwargs)
    return [NativeCall(op, where, n) for (op, where), n in log.calls.items()]


# --------------------------------------------------------------------------------------------
# One call for a user's model
# --------------------------------------------------------------------------------------------


@dataclass
class ModelCheck:
    """What :func:`check_model` found: the conversion report, the comparison, the native calls."""

    report: ConversionReport
    comparison: Comparison
    native_calls: list[NativeCall]

    @property
    def passed(self) -> bool:
        return self.comparison.passed

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
) -> ModelCheck:
    """Convert a copy of ``model`` and compare it with a native copy in ``dtype`` (float64 by default).

    ``model`` is not changed: both twins are deep copies cast to ``dtype`` (floating inputs too);
    the native one is :func:`manual_bp.convert.native_twin` (every manual layer and every ``MLP``
    computed by ``torch.nn`` and autograd), so models built from manual layers work too.
    The result prints as the conversion report, the comparison table and the native calls that
    conversion could not reach.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"check_model expected a torch.nn.Module, got {type(model).__name__}")
    args, kwargs = _as_call(inputs)
    if args and kwargs:
        raise TypeError("inputs must be positional (Tensor, tuple, list) or keyword (dict), not both")

    def cast(a: Any) -> Any:
        return a.detach().to(dtype) if isinstance(a, Tensor) and a.is_floating_point() else a

    call: Any = {k: cast(v) for k, v in kwargs.items()} if kwargs else tuple(cast(a) for a in args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "nothing to convert" shows in the report instead
        # native even if built from manual layers (an MLP becomes a native Linear/activation stack)
        native = native_twin(copy.deepcopy(model).to(dtype))
        manual = convert(copy.deepcopy(model).to(dtype), inplace=True)  # an MLP stays as it is
    comparison = compare(manual, native, call, loss_fn, rtol=rtol, atol=atol, seed=seed)
    return ModelCheck(conversion_report(manual), comparison, find_native_calls(manual, call))
