"""Gradient validation: every manual Function against finite differences and native autograd, and a
converted model against its native twin.

Two entry points, both used by ``manual-bp check``:

* :func:`run_suite` runs, for every op of the registry (:data:`manual_bp.ops.OPS`),
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

The package, along its seams: :mod:`~manual_bp.check.suite` (the registry's ops; their samples
live with each op in :mod:`manual_bp.ops`), :mod:`~manual_bp.check.compare` (a model against its
native twin) and :mod:`~manual_bp.check.native_calls` (the native-call finder).
"""

from __future__ import annotations

from manual_bp.check._tolerances import tolerances
from manual_bp.check.compare import CheckError, Comparison, ComparisonRow, ModelCheck, check_model, compare
from manual_bp.check.native_calls import NativeCall, find_native_calls
from manual_bp.check.suite import OPS, SuiteRow, format_suite, run_feedback_suite, run_suite
from manual_bp.ops import Op, Sample

#: The suite's entry type: an op of the registry (``OpSpec(name, manual, native, samples)``).
OpSpec = Op

__all__ = [
    "OPS",
    "CheckError",
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
    "run_feedback_suite",
    "run_suite",
    "tolerances",
]
