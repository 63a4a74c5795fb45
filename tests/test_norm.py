"""The normalisation family beyond the registry's generic tests (tests/test_ops.py): the modules
against ``torch.nn`` (state, outputs, gradients, running statistics over several steps, every
option), convert/revert, mixed precision and autocast, compile with in-place running statistics,
and one test per clear error.

Every comparison is float64 to 1e-10 (outputs, gradients) and 1e-12 (running statistics): both
sides are exact to rounding.
"""

from __future__ import annotations

import copy
import doctest
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import manual_bp
from manual_bp.ops import norm

TOL = {"rtol": 1e-10, "atol": 1e-10}
STATS_TOL = {"rtol": 0.0, "atol": 1e-12}
D64 = torch.float64

# (torch.nn class, constructor arguments, input shape) for every module twin and its options
MODULE_CASES: list[tuple[type[nn.Module], dict[str, Any], tuple[int, ...]]] = [
    (nn.BatchNorm1d, {"num_features": 3}, (5, 3)),
    (nn.BatchNorm1d, {"num_features": 3}, (4, 3, 6)),
    (nn.BatchNorm1d, {"num_features": 3, "momentum": None}, (4, 3, 6)),
    (nn.BatchNorm1d, {"num_features": 3, "affine": False}, (4, 3, 6)),
    (nn.BatchNorm1d, {"num_features": 3, "track_running_stats": False}, (4, 3, 6)),
    (nn.BatchNorm2d, {"num_features": 4, "momentum": 0.3, "eps": 1e-3}, (3, 4, 5, 5)),
    (nn.BatchNorm2d, {"num_features": 4, "momentum": None, "affine": False}, (3, 4, 5, 5)),
    (nn.BatchNorm3d, {"num_features": 2}, (2, 2, 3, 3, 3)),
    (nn.InstanceNorm1d, {"num_features": 3}, (4, 3, 6)),
    (nn.InstanceNorm1d, {"num_features": 3, "affine": True}, (3, 6)),  # unbatched
    (nn.InstanceNorm1d, {"num_features": 3, "affine": True, "track_running_stats": True}, (4, 3, 6)),
    (nn.InstanceNorm1d, {"num_features": 3, "track_running_stats": True, "momentum": None}, (4, 3, 6)),
    (nn.InstanceNorm2d, {"num_features": 3, "affine": True, "track_running_stats": True}, (2, 3, 4, 4)),
    (nn.InstanceNorm2d, {"num_features": 3, "affine": True}, (3, 4, 4)),  # unbatched
    (nn.InstanceNorm3d, {"num_features": 2, "affine": True}, (2, 2, 3, 3, 3)),
    (nn.LayerNorm, {"normalized_shape": 6}, (4, 6)),
    (nn.LayerNorm, {"normalized_shape": (3, 6)}, (2, 4, 3, 6)),
    (nn.LayerNorm, {"normalized_shape": 6, "elementwise_affine": False}, (4, 6)),
    (nn.LayerNorm, {"normalized_shape": 6, "bias": False}, (6,)),  # unbatched
    (nn.GroupNorm, {"num_groups": 2, "num_channels": 6}, (3, 6, 4)),
    (nn.GroupNorm, {"num_groups": 3, "num_channels": 6, "affine": False, "eps": 1e-3}, (2, 6, 3, 3)),
    (nn.RMSNorm, {"normalized_shape": 6}, (4, 6)),
    (nn.RMSNorm, {"normalized_shape": (3, 6), "eps": 1e-4}, (2, 3, 6)),
    (nn.RMSNorm, {"normalized_shape": 6, "elementwise_affine": False}, (6,)),
]
CASE_IDS = [f"{cls.__name__}-{kw}-{list(shape)}" for cls, kw, shape in MODULE_CASES]


def _twins(cls: type[nn.Module], kwargs: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    native = cls(**kwargs, dtype=D64)
    with torch.no_grad():  # parameters away from their initial ones and 1
        for p in native.parameters():
            p.copy_(torch.randn_like(p))
    manual = manual_bp.modules.__dict__[cls.__name__](**kwargs, dtype=D64)
    manual.load_state_dict(native.state_dict())
    return native, manual


def _step(module: nn.Module, x: Tensor, grad_output: Tensor) -> list[Tensor]:
    """Output and the gradients of the input and every parameter after one backward."""
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    params = list(module.parameters())
    grads = torch.autograd.grad(out, [x, *params], grad_output)
    return [out.detach(), *grads]


@pytest.mark.parametrize(("cls", "kwargs", "shape"), MODULE_CASES, ids=CASE_IDS)
def test_module_state_like_native(
    cls: type[nn.Module], kwargs: dict[str, Any], shape: tuple[int, ...]
) -> None:
    native, manual = _twins(cls, kwargs)
    twin = type(manual)
    assert issubclass(twin, cls) and twin.__module__ == "manual_bp.modules"
    assert repr(manual) == repr(native)
    assert [n for n, _ in manual.named_parameters()] == [n for n, _ in native.named_parameters()]
    assert [n for n, _ in manual.named_buffers()] == [n for n, _ in native.named_buffers()]
    assert list(manual.state_dict()) == list(native.state_dict())
    fresh_native, fresh_manual = cls(**kwargs, dtype=D64), twin(**kwargs, dtype=D64)
    fresh_native.load_state_dict(manual.state_dict())
    fresh_manual.load_state_dict(native.state_dict())
    for a, b in zip(fresh_native.state_dict().values(), fresh_manual.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("cls", "kwargs", "shape"), MODULE_CASES, ids=CASE_IDS)
def test_module_steps_like_native(
    cls: type[nn.Module], kwargs: dict[str, Any], shape: tuple[int, ...]
) -> None:
    """Three training steps, then eval: outputs, gradients, running statistics and
    ``num_batches_tracked`` as native after every step."""
    native, manual = _twins(cls, kwargs)
    for step, training in enumerate((True, True, True, False)):
        native.train(training)
        manual.train(training)
        x = torch.randn(shape, dtype=D64) * 2 + step
        grad_output = torch.randn(shape, dtype=D64)
        for got, want in zip(_step(manual, x, grad_output), _step(native, x, grad_output), strict=True):
            torch.testing.assert_close(got, want, **TOL)
        for (name, got), want in zip(manual.named_buffers(), native.buffers(), strict=True):
            if name == "num_batches_tracked":
                assert torch.equal(got, want), f"step {step}: {got} != {want}"
            else:
                torch.testing.assert_close(got, want, **STATS_TOL, msg=f"step {step}: {name}")
    if isinstance(native, nn.modules.batchnorm._BatchNorm) and native.track_running_stats:
        assert int(manual.num_batches_tracked) == 3  # (instance norm keeps it at 0, as native)


def test_module_grad_fn_is_manual() -> None:
    for cls, kwargs, shape in MODULE_CASES:
        _, manual = _twins(cls, kwargs)
        node = manual(torch.randn(shape, dtype=D64, requires_grad=True)).grad_fn
        while node.name().startswith(("ViewBackward", "SqueezeBackward")):
            node = node.next_functions[0][0]
        assert node.name().endswith("FunctionBackward"), f"{cls.__name__}: {node.name()}"


def test_docstring_examples() -> None:
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    for cls in {m for op in norm.NORM_OPS for _, m in op.modules}:
        for test in finder.find(cls, cls.__name__, globs={}):
            runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    assert runner.summarize(verbose=False).attempted >= 18


def test_batch_norm_running_stats_several_steps_functional() -> None:
    """The functional's in-place update, bit-for-bit-ish over five steps with changing momentum."""
    rm, rv = torch.randn(3, dtype=D64), torch.rand(3, dtype=D64) + 0.5
    nrm, nrv = rm.clone(), rv.clone()
    for momentum in (0.1, 0.5, 1.0, 1 / 3, 0.0):
        x = torch.randn(4, 3, 5, dtype=D64) * 3 + 1
        manual_bp.functional.batch_norm(x, rm, rv, training=True, momentum=momentum)
        F.batch_norm(x, nrm, nrv, training=True, momentum=momentum)
        torch.testing.assert_close(rm, nrm, **STATS_TOL)
        torch.testing.assert_close(rv, nrv, **STATS_TOL)


def test_instance_norm_running_stats_used_and_updated() -> None:
    rm, rv = torch.randn(2, dtype=D64), torch.rand(2, dtype=D64) + 0.5
    nrm, nrv = rm.clone(), rv.clone()
    x = torch.randn(3, 2, 5, dtype=D64, requires_grad=True)
    for use_input_stats in (True, False):
        a = manual_bp.functional.instance_norm(x, rm, rv, use_input_stats=use_input_stats, momentum=0.4)
        b = F.instance_norm(x, nrm, nrv, use_input_stats=use_input_stats, momentum=0.4)
        torch.testing.assert_close(a, b, **TOL)
        torch.testing.assert_close(rm, nrm, **STATS_TOL)
        torch.testing.assert_close(rv, nrv, **STATS_TOL)
        g = torch.randn_like(a)
        torch.testing.assert_close(*(torch.autograd.grad(y, x, g)[0] for y in (a, b)), **TOL)


def test_batch_norm_eval_backward_is_a_per_channel_scale() -> None:
    """In eval mode ∂c/∂x = δ γ/σ_running (BP2 without the batch terms)."""
    x = torch.randn(4, 3, 5, dtype=D64, requires_grad=True)
    rm, rv, w = torch.randn(3, dtype=D64), torch.rand(3, dtype=D64) + 0.5, torch.randn(3, dtype=D64)
    y = manual_bp.functional.batch_norm(x, rm, rv, w, None, training=False, eps=1e-3)
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(grad, g * (w / (rv + 1e-3).sqrt()).view(1, 3, 1), **TOL)


def test_double_backward_through_weights_and_statistics() -> None:
    """gradgradcheck of every op with every input differentiable (weights included), float64."""
    x = torch.randn(3, 4, 5, dtype=D64, requires_grad=True)
    w, b = torch.randn(4, dtype=D64, requires_grad=True), torch.randn(4, dtype=D64, requires_grad=True)
    w5 = torch.randn(5, dtype=D64, requires_grad=True)
    b5 = torch.randn(5, dtype=D64, requires_grad=True)
    fns: list[tuple[Callable[..., Tensor], tuple[Tensor, ...]]] = [
        (lambda x, w, b: manual_bp.functional.batch_norm(x, None, None, w, b, True), (x, w, b)),
        (lambda x, w, b: manual_bp.functional.instance_norm(x, None, None, w, b), (x, w, b)),
        (lambda x, w, b: manual_bp.functional.group_norm(x, 2, w, b), (x, w, b)),
        (lambda x, w, b: manual_bp.functional.layer_norm(x, (5,), w, b), (x, w5, b5)),
        (lambda x, w: manual_bp.functional.rms_norm(x, (5,), w), (x, w5)),
    ]
    for fn, inputs in fns:
        assert torch.autograd.gradgradcheck(fn, inputs)


def test_non_contiguous_grad_output() -> None:
    x = torch.randn(4, 3, 5, dtype=D64, requires_grad=True)
    g = torch.randn(5, 3, 4, dtype=D64).permute(2, 1, 0)
    for manual, native in (
        (
            lambda t: manual_bp.functional.batch_norm(t, None, None, training=True),
            lambda t: F.batch_norm(t, None, None, training=True),
        ),
        (lambda t: manual_bp.functional.layer_norm(t, (3, 5)), lambda t: F.layer_norm(t, (3, 5))),
        (lambda t: manual_bp.functional.group_norm(t, 3), lambda t: F.group_norm(t, 3)),
    ):
        got, want = (torch.autograd.grad(f(x), x, g)[0] for f in (manual, native))
        torch.testing.assert_close(got, want, **TOL)


# --- mixed precision and autocast ---------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["batch_norm", "batch_norm eval", "instance_norm", "group_norm", "layer_norm", "rms_norm"]
)
@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "cpu-autocast"])
@pytest.mark.parametrize("input_dtype", [torch.bfloat16, torch.float32], ids=["bf16-input", "f32-input"])
def test_mixed_precision_and_autocast_like_native(
    name: str, autocast: bool, input_dtype: torch.dtype
) -> None:
    """A bfloat16 input with float32 parameters (native's mixed precision), and CPU bfloat16
    autocast (which leaves every norm alone): output dtype and each gradient's dtype as native's,
    values within bfloat16 rounding."""
    calls: dict[str, Callable[..., Tensor]] = {
        "batch_norm": lambda m, x, w, b: m.batch_norm(x, torch.zeros(4), torch.ones(4), w, b, True),
        "batch_norm eval": lambda m, x, w, b: m.batch_norm(x, torch.randn(4), torch.rand(4) + 1, w, b, False),
        "instance_norm": lambda m, x, w, b: m.instance_norm(x, None, None, w, b),
        "group_norm": lambda m, x, w, b: m.group_norm(x, 2, w, b),
        "layer_norm": lambda m, x, w, b: m.layer_norm(x, (6,), w.repeat(2)[:6], b.repeat(2)[:6]),
        "rms_norm": lambda m, x, w, b: m.rms_norm(x, (6,), w.repeat(2)[:6]),
    }
    torch.manual_seed(1)
    base = torch.randn(3, 4, 6) * 2
    params = torch.randn(4), torch.randn(4)
    results = []
    for impl in (manual_bp.functional, F):
        torch.manual_seed(2)  # the same running statistics for both
        x = base.to(input_dtype).requires_grad_(True)
        w, b = (p.clone().requires_grad_(True) for p in params)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = calls[name](impl, x, w, b)
        torch.manual_seed(3)
        grad_output = torch.randn(out.shape).to(out.dtype)
        grads = torch.autograd.grad(out, [x, w, b], grad_output, allow_unused=True)
        results.append((out, grads))
    (out, grads), (ref, ref_grads) = results
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=1.6e-2, atol=2e-2)
    for g, r in zip(grads, ref_grads, strict=True):
        assert (g is None) == (r is None)
        if g is not None:
            assert g.dtype == r.dtype
            torch.testing.assert_close(g.float(), r.float(), rtol=5e-2, atol=5e-2 * r.abs().max().item())


def test_rms_norm_default_eps_as_native() -> None:
    """eps=None: float64's machine epsilon for a float64 input, float32's for bfloat16 (native
    computes a half input in float32 with its epsilon)."""
    x = torch.randn(5, 3, dtype=D64) * 1e-8  # mean(x²) ≈ 1e-16: eps decides the output
    torch.testing.assert_close(manual_bp.functional.rms_norm(x, (3,)), F.rms_norm(x, (3,)), **TOL)
    xb = (torch.randn(5, 3) * 1e-4).bfloat16()
    torch.testing.assert_close(manual_bp.functional.rms_norm(xb, (3,)), F.rms_norm(xb, (3,)))


# --- compile -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_batch_norm_module_updates_running_stats() -> None:
    native, manual = _twins(nn.BatchNorm2d, {"num_features": 3})
    compiled = torch.compile(manual, fullgraph=True)
    for _ in range(2):
        x = torch.randn(2, 3, 4, 4, dtype=D64)
        g = torch.randn_like(x)
        for got, want in zip(_step(compiled, x, g), _step(native, x, g), strict=True):
            torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(manual.running_mean, native.running_mean, **STATS_TOL)
    torch.testing.assert_close(manual.running_var, native.running_var, **STATS_TOL)
    assert torch.equal(manual.num_batches_tracked, native.num_batches_tracked)


# --- convert / revert ----------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.inorm = nn.InstanceNorm2d(4, affine=True, track_running_stats=True)
        self.bn1 = nn.BatchNorm1d(36, momentum=None)
        self.ln = nn.LayerNorm(36)
        self.rms = nn.RMSNorm(36)

    def forward(self, x: Tensor) -> Tensor:
        y = self.inorm(self.gn(self.bn(x))).flatten(1)  # (N, 4, 3, 3) -> (N, 36)
        return self.rms(self.ln(self.bn1(y)))


def test_convert_and_revert() -> None:
    native = _Net().to(D64)
    with torch.no_grad():
        for p in native.parameters():
            p.copy_(torch.randn_like(p))
    converted = manual_bp.convert(native)
    for name, module in converted.named_modules():
        if name:
            assert type(module).__module__ == "manual_bp.modules", name
    for _ in range(2):
        x = torch.randn(5, 4, 3, 3, dtype=D64)
        g = torch.randn(5, 36, dtype=D64)
        for got, want in zip(_step(converted, x, g), _step(native, x, g), strict=True):
            torch.testing.assert_close(got, want, **TOL)
    for (name, got), want in zip(converted.state_dict().items(), native.state_dict().values(), strict=True):
        torch.testing.assert_close(got, want, **STATS_TOL, msg=name)
    reverted = manual_bp.revert(converted)
    for name, a in reverted.named_modules():
        assert type(a) is type(getattr(native, name) if name else native)
    assert list(reverted.state_dict()) == list(converted.state_dict())
    for a, b in zip(reverted.state_dict().values(), converted.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    x = torch.randn(5, 4, 3, 3, dtype=D64)
    reverted.eval()
    native_copy = copy.deepcopy(reverted)
    assert torch.equal(reverted(x), native_copy(x))


# --- clear errors --------------------------------------------------------------------------------

fn = manual_bp.functional


def test_error_batch_norm_channels_mismatch() -> None:
    x = torch.randn(4, 3, 5)
    with pytest.raises(ValueError, match=r"running_mean must have shape \(3,\).*got shape \(4,\)"):
        fn.batch_norm(x, torch.zeros(4), torch.ones(4), training=True)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\).*got shape \(2,\)"):
        fn.batch_norm(x, None, None, torch.ones(2), training=True)


def test_error_batch_norm_one_value_per_channel() -> None:
    with pytest.raises(
        ValueError, match=r"Expected more than 1 value per channel when training, got input size"
    ):
        fn.batch_norm(torch.randn(1, 3), None, None, training=True)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        manual_bp.BatchNorm2d(3)(torch.randn(1, 3, 1, 1))


def test_error_batch_norm_eval_without_running_stats() -> None:
    with pytest.raises(ValueError, match="training=False normalises with running_mean and running_var"):
        fn.batch_norm(torch.randn(4, 3), None, None, training=False)
    with pytest.raises(ValueError, match="running_mean and running_var together"):
        fn.batch_norm(torch.randn(4, 3), torch.zeros(3), None, training=True)


def test_error_batch_norm_input_dims() -> None:
    with pytest.raises(
        ValueError, match=r"batch_norm expected input of shape \(N, C, \*\), got shape \(3,\)"
    ):
        fn.batch_norm(torch.randn(3), None, None, training=True)
    with pytest.raises(ValueError, match="expected 2D or 3D input"):  # the module's own check
        manual_bp.BatchNorm1d(3)(torch.randn(2, 3, 4, 5))


def test_error_layer_norm_shape() -> None:
    with pytest.raises(
        ValueError, match=r"given normalized_shape=\[4\], expected input with shape \[\*, 4\]"
    ):
        fn.layer_norm(torch.randn(2, 3), (4,))
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\).*got shape \(4,\)"):
        fn.layer_norm(torch.randn(2, 3), (3,), torch.ones(4))
    with pytest.raises(ValueError, match=r"rms_norm: given normalized_shape=\[2, 3\]"):
        fn.rms_norm(torch.randn(3, 2), (2, 3))


def test_error_group_norm_groups() -> None:
    with pytest.raises(
        ValueError, match=r"divisible by num_groups, but got input of shape \[2, 3, 4\] and num_groups=2"
    ):
        fn.group_norm(torch.randn(2, 3, 4), 2)
    with pytest.raises(ValueError, match="num_groups must be a positive int, got 0"):
        fn.group_norm(torch.randn(2, 3, 4), 0)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        fn.group_norm(torch.randn(2, 3, 4), 3, torch.ones(4))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        fn.group_norm(torch.randn(1, 3), 3)  # one value per group, as torch refuses


def test_error_instance_norm() -> None:
    with pytest.raises(ValueError, match="Expected more than 1 spatial element when training"):
        fn.instance_norm(torch.randn(2, 3, 1))
    with pytest.raises(ValueError, match="use_input_stats=False normalises with running_mean"):
        fn.instance_norm(torch.randn(2, 3, 4), use_input_stats=False)


def test_error_non_floating_input() -> None:
    x = torch.ones(4, 3, 5, dtype=torch.long)
    with pytest.raises(TypeError, match="input must be a floating-point tensor.*got dtype torch.int64"):
        fn.batch_norm(x, None, None, training=True)
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        fn.layer_norm(x, (5,))
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        fn.group_norm(x, 1)
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        fn.rms_norm(x, (5,))
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        fn.instance_norm(x)
    with pytest.raises(TypeError, match="input must be a torch.Tensor, got list"):
        fn.layer_norm([1.0, 2.0], (2,))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="weight must be a floating-point tensor"):
        fn.layer_norm(torch.randn(2, 3), (3,), torch.ones(3, dtype=torch.long))


def test_error_dtype_mismatch() -> None:
    x = torch.randn(4, 3, 5)
    with pytest.raises(
        TypeError, match=r"weight must have the input's dtype torch.float32.*got torch.float64"
    ):
        fn.batch_norm(x, None, None, torch.ones(3, dtype=D64), training=True)
    with pytest.raises(TypeError, match=r"running_var must have the input's dtype torch.float64"):
        fn.batch_norm(x.double(), torch.zeros(3, dtype=D64), torch.ones(3), training=True)
    with pytest.raises(TypeError, match=r"bias must have the input's dtype torch.float32.*bfloat16"):
        fn.layer_norm(torch.randn(2, 3), (3,), None, torch.ones(3, dtype=torch.bfloat16))


def test_error_device_mismatch() -> None:
    x = torch.randn(4, 3, 5)
    with pytest.raises(ValueError, match="weight and input must be on the same device, got weight on meta"):
        fn.group_norm(x, 3, torch.ones(3, device="meta"))
    with pytest.raises(ValueError, match="running_mean and input must be on the same device"):
        fn.instance_norm(x, torch.zeros(3, device="meta"), torch.ones(3, device="meta"))


def test_error_momentum_none_in_the_functional() -> None:
    with pytest.raises(TypeError, match="momentum must be a float, got NoneType"):
        fn.batch_norm(torch.randn(4, 3), None, None, training=True, momentum=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="momentum must be a float, got NoneType"):
        fn.instance_norm(torch.randn(4, 3, 2), momentum=None)  # type: ignore[arg-type]


def test_error_bad_normalized_shape_and_eps() -> None:
    with pytest.raises(TypeError, match="normalized_shape must be an int or a sequence of ints, got float"):
        fn.layer_norm(torch.randn(2, 3), 3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"normalized_shape must name at least one dimension"):
        fn.rms_norm(torch.randn(2, 3), ())
    with pytest.raises(ValueError, match="eps must be a non-negative number, got -1"):
        fn.layer_norm(torch.randn(2, 3), 3, eps=-1)
