"""manual_bp.check: the gradient suite passes on the real ops and fails on broken ones; model comparison."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import manual_bp
from manual_bp import check
from manual_bp._function import ManualFunction
from manual_bp.ops._op import unary_samples
from manual_bp.ops.linear import _samples as linear_samples

# --------------------------------------------------------------------------------------------
# The suite
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_suite_covers_every_function_and_passes() -> None:
    rows = check.run_suite()
    ops = {r.op for r in rows}
    public = {"linear", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "softplus", "gelu", "silu"}
    assert public | {"half_squared_error", "cross_entropy", "mlp"} <= ops
    for op in ops:
        assert [(r.dtype, r.check) for r in rows if r.op == op] == [
            ("float64", "gradcheck"),
            ("float64", "gradgradcheck"),
            ("float64", "native"),
            ("float32", "native"),
        ]
    assert all(r.samples >= 6 for r in rows)
    failed = [r for r in rows if not r.passed]
    assert not failed, check.format_suite(failed)
    assert all(0 <= r.error < 1e-4 for r in rows)


class _WrongDerivative(ManualFunction):
    """sigmoid whose backward forgets the (1 − y) factor."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return grad_output * y


class _WrongSecondDerivative(_WrongDerivative):
    """sigmoid with the right first derivative, computed from a detached y: double backward is wrong."""

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        y = y.detach()
        return grad_output * y * (1 - y)


class _Float32Slope(ManualFunction):
    """leaky_relu whose backward builds the slope in float32: right to 1e-8, wrong in float64."""

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return F.leaky_relu(x, 0.1)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return grad_output * torch.where(y > 0, 1.0, 0.1).to(grad_output.dtype)


def _spec(name: str, fn: Any, native: Any) -> check.OpSpec:
    return check.OpSpec(name, fn.apply, native, unary_samples(kinks=(0.0,)))


def test_suite_fails_a_wrong_derivative() -> None:
    rows = {r.check + r.dtype: r for r in check.run_suite([_spec("bad", _WrongDerivative, torch.sigmoid)])}
    assert not rows["gradcheckfloat64"].passed and rows["gradcheckfloat64"].error > 0.01
    assert not rows["nativefloat32"].passed and not rows["nativefloat64"].passed
    assert "failed on" in rows["gradcheckfloat64"].detail
    assert "FAIL" in check.format_suite(list(rows.values()))


def test_suite_fails_a_wrong_double_backward() -> None:
    rows = {
        r.check + r.dtype: r for r in check.run_suite([_spec("bad2", _WrongSecondDerivative, torch.sigmoid)])
    }
    assert rows["gradcheckfloat64"].passed and rows["nativefloat32"].passed and rows["nativefloat64"].passed
    assert not rows["gradgradcheckfloat64"].passed and rows["gradgradcheckfloat64"].error > 0.01


def test_float64_native_row_catches_a_float32_constant() -> None:
    leaky = lambda x: F.leaky_relu(x, 0.1)  # noqa: E731
    rows = {r.check + r.dtype: r for r in check.run_suite([_spec("bad3", _Float32Slope, leaky)])}
    assert rows["gradcheckfloat64"].passed and rows["nativefloat32"].passed  # too loose to see it
    assert not rows["nativefloat64"].passed and 1e-10 < rows["nativefloat64"].error < 1e-7


def test_suite_reports_a_crash_as_a_failure() -> None:
    def crash(x: Tensor) -> Tensor:
        raise RuntimeError("boom")

    spec = check.OpSpec("crash", crash, torch.sigmoid, unary_samples())
    with pytest.raises(RuntimeError, match="boom"):  # the first call, to find grad_output's shape, raises
        check.run_suite([spec])


def test_once_differentiable_op_must_refuse_double_backward() -> None:
    class Once(_WrongSecondDerivative):
        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx: Any, grad_output: Tensor) -> Tensor:
            (y,) = ctx.saved_tensors
            return grad_output * y * (1 - y)

    good = check.OpSpec("once", Once.apply, torch.sigmoid, unary_samples(), double_backward=False)
    silent = check.OpSpec(
        "silent", _WrongSecondDerivative.apply, torch.sigmoid, unary_samples(), double_backward=False
    )
    assert all(r.passed for r in check.run_suite([good]))
    rows = {r.check: r for r in check.run_suite([silent])}
    assert not rows["double backward raises"].passed


def test_samples_are_systematic() -> None:
    samples = unary_samples()(torch.float64, torch.device("cpu"))
    shapes = [tuple(s.args[0].shape) for s in samples]
    assert shapes == [(3,), (0, 3), (8, 3), (2, 3, 3), (2, 1, 2, 1, 3), (4, 3)]
    assert not samples[-1].args[0].is_contiguous()
    linear = linear_samples(torch.float64, torch.device("cpu"))
    assert any(s.args[2] is None for s in linear) and any(not s.args[1].is_contiguous() for s in linear)


def test_tolerances() -> None:
    assert check.tolerances(torch.float32) == (1.3e-6, 1e-5)
    assert check.tolerances(torch.float64) == (1e-7, 1e-7)
    with pytest.raises(ValueError, match="no tolerance for dtype torch.int64"):
        check.tolerances(torch.int64)


# --------------------------------------------------------------------------------------------
# Model comparison
# --------------------------------------------------------------------------------------------


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def test_compare_passes_for_a_converted_model() -> None:
    native = _model()
    result = check.compare(manual_bp.convert(native), native, torch.randn(5, 4, dtype=torch.float64))
    names = [r.name for r in result.rows]
    assert names == [
        "output",
        "loss",
        "grad 0.weight",
        "grad 0.bias",
        "grad 2.weight",
        "grad 2.bias",
        "grad input[0]",
    ]
    assert result.passed and all(r.max_abs < 1e-12 for r in result.rows)
    assert (result.rtol, result.atol) == (1e-7, 1e-7)
    text = str(result)
    assert "7 of 7 tensors agree" in text and "max rel" in text


def test_compare_fails_when_weights_differ() -> None:
    native = _model()
    manual = manual_bp.convert(native)
    with torch.no_grad():
        manual[2].weight[0, 0] += 1e-3
    result = check.compare(manual, native, torch.randn(5, 4, dtype=torch.float64))
    failed = {r.name for r in result.rows if not r.passed}
    # the default loss Σ w ⊙ output fixes δ at the output, so layer 2's own gradients do not change
    assert failed == {"output", "loss", "grad 0.weight", "grad 0.bias", "grad input[0]"}
    assert not result.passed and "DIFFER" in str(result)


def test_compare_with_loss_kwargs_and_integer_inputs() -> None:
    class Tagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.fc = nn.Linear(4, 3)
            self.unused = nn.Linear(2, 2)

        def forward(self, tokens: Tensor, scale: Tensor) -> Tensor:
            return self.fc(self.emb(tokens)) * scale

    native = Tagger().double()
    manual = manual_bp.convert(native)
    target = torch.tensor([0, 2, 1])
    inputs = {"tokens": torch.tensor([1, 5, 7]), "scale": torch.tensor(2.0, dtype=torch.float64)}
    result = check.compare(
        manual, native, inputs, lambda out: F.cross_entropy(out, target), rtol=0, atol=1e-12
    )
    rows = {r.name: r for r in result.rows}
    assert result.passed and "grad emb.weight" in rows and "grad input[0]" in rows  # input[0]: scale
    assert rows["grad unused.weight"].note == "no gradient in either (unused)"
    assert (result.rtol, result.atol) == (0, 1e-12)


def test_compare_same_dropout_masks() -> None:
    native = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)).double()
    result = check.compare(manual_bp.convert(native), native, torch.randn(6, 4, dtype=torch.float64))
    assert result.passed


def test_compare_errors() -> None:
    native = _model()
    with pytest.raises(ValueError, match="same parameter names and shapes"):
        check.compare(nn.Linear(4, 3).double(), native, torch.randn(2, 4, dtype=torch.float64))
    scalar = r"loss_fn must return a scalar Tensor, got Tensor of shape \(2, 3\)"
    with pytest.raises(check.CheckError, match=scalar):
        check.compare(
            manual_bp.convert(native), native, torch.randn(2, 4, dtype=torch.float64), lambda out: out
        )
    with pytest.raises(TypeError, match="inputs must be a Tensor, a tuple or list .* got float"):
        check.compare(manual_bp.convert(native), native, 1.5)


class _FunctionalNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 5)
        self.fc2 = nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.relu(self.fc1(x))).sigmoid()  # neither call is a module


def test_check_model_lists_native_calls_convert_cannot_reach() -> None:
    model = _FunctionalNet()
    result = check.check_model(model, torch.randn(4, 3))
    assert result.passed and result.comparison.dtype == torch.float64
    assert type(model.fc1) is nn.Linear and model.fc1.weight.dtype == torch.float32  # the model is untouched
    calls = {(c.op, c.where.split(":")[0]) for c in result.native_calls}
    assert calls == {("relu", "tests/test_check.py"), ("sigmoid", "tests/test_check.py")}
    text = str(result)
    assert "conversion report" in text and "native calls" in text and "F.relu" in text


def test_check_model_converts_attention_whole_and_works_on_manual_models() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="relu", batch_first=True).eval()
    result = check.check_model(layer, torch.randn(2, 3, 8))
    assert result.passed
    assert result.native_calls == []  # the projections, the attention and F.relu all run manual
    built = nn.Sequential(manual_bp.Linear(3, 4), manual_bp.ReLU(), manual_bp.Linear(4, 1))
    result = check.check_model(built, torch.randn(5, 3))
    assert result.passed and len(result.report.manual) == 3 and result.native_calls == []


def test_check_model_in_float32() -> None:
    result = check.check_model(_model().float(), torch.randn(3, 4), dtype=torch.float32)
    assert result.passed and (result.comparison.rtol, result.comparison.atol) == (1.3e-6, 1e-5)


def test_native_twin_has_no_manual_layer_left() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(manual_bp.MLP([3, 5, 4], activation="gelu"), nn.Linear(4, 2), manual_bp.Tanh())
    twin = manual_bp.native_twin(model)
    manual_types = (manual_bp.MLP, *(getattr(manual_bp, name) for name in manual_bp.modules.__all__))
    assert not any(isinstance(m, manual_types) for m in twin.modules())
    assert list(dict(twin.named_parameters())) == list(dict(model.named_parameters()))
    x = torch.randn(6, 3)
    torch.testing.assert_close(twin(x), model(x))


def test_check_model_compares_an_mlp_with_native_autograd(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(manual_bp.MLP([3, 5, 4], activation="tanh"), nn.Linear(4, 2))
    x = torch.randn(6, 3)
    assert check.check_model(model, x).passed
    backward = manual_bp.functional.MLPFunction.backward

    def doubled(ctx: Any, *grads: Tensor | None) -> Any:  # a wrong fused backward
        return tuple(None if g is None else 2 * g for g in backward(ctx, *grads))

    monkeypatch.setattr(manual_bp.functional.MLPFunction, "backward", staticmethod(doubled))
    assert not check.check_model(model, x).passed  # the MLP is not compared with itself


def test_check_model_without_parameters_uses_the_dtype_asked_for() -> None:
    model = nn.Sequential(nn.ReLU(), nn.Tanh())  # converts, and has no parameter to read a dtype from
    for dtype in (torch.float64, torch.float32):
        result = check.check_model(model, torch.randn(4, 3), dtype=dtype)
        assert result.passed and result.comparison.dtype == dtype
        assert (result.comparison.rtol, result.comparison.atol) == check.tolerances(dtype)
    assert "manual vs native in float64 (pass: |manual - native| <= 1e-07 + 1e-07 |native|)" in str(
        check.check_model(model, torch.randn(4, 3))
    )
