"""Bad input gets a clear error that names what was expected and what came.

A second device is simulated with the 'meta' device (tensors with shapes and dtypes but no data).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

import manual_bp
import manual_bp.functional as MF

X = torch.randn(3, 4)
W = torch.randn(2, 4)
LABELS = torch.tensor([0, 1, 3])


def _raises(error: type[Exception], match: str, call: Callable[[], object]) -> None:
    with pytest.raises(error, match=match):
        call()


# ---- wrong feature size: the message names the expected and the received sizes -----------------


def test_linear_wrong_feature_size() -> None:
    _raises(
        ValueError,
        r"expected input of shape \(\*, 5\).*got shape \(3, 4\)",
        lambda: manual_bp.Linear(5, 2)(X),
    )
    _raises(
        ValueError,
        r"expected input of shape \(\*, 4\).*got shape \(\)",
        lambda: MF.linear(torch.tensor(1.0), W),
    )


def test_linear_wrong_parameter_shapes() -> None:
    _raises(ValueError, r"weight must be 2-D .*got shape \(4,\)", lambda: MF.linear(X, torch.randn(4)))
    _raises(
        ValueError, r"bias must have shape \(2,\), got shape \(3,\)", lambda: MF.linear(X, W, torch.randn(3))
    )


# ---- losses: the target's shape must equal the output's (no silent broadcasting) ----------------


@pytest.mark.parametrize("target_shape", [(4,), (1, 4), (3, 1), (3, 5)], ids=str)
def test_half_squared_error_target_shape(target_shape: tuple[int, ...]) -> None:
    t = torch.randn(target_shape)
    match = re.escape(f"target shape {target_shape} must equal input shape (3, 4)")
    _raises(ValueError, match, lambda: MF.half_squared_error(X, t))
    _raises(ValueError, match, lambda: manual_bp.HalfSquaredError()(X, t))


def test_half_squared_error_needs_a_feature_dim() -> None:
    one = torch.tensor(1.0)
    _raises(
        ValueError,
        r"expected input of shape \(\*, D\), got a 0-d tensor",
        lambda: MF.half_squared_error(one, one),
    )


def test_cross_entropy_target_shapes() -> None:
    _raises(
        ValueError,
        r"class-index target must have shape \(3,\) for input of shape \(3, 4\), got \(2,\)",
        lambda: MF.cross_entropy(X, torch.tensor([0, 1])),
    )
    _raises(
        ValueError,
        r"class-index target must have shape \(3,\).*got \(3, 1\)",
        lambda: manual_bp.CrossEntropyLoss()(X, LABELS[:, None]),
    )
    _raises(
        ValueError,
        r"class-probability target must have the input's shape \(3, 4\), got \(3, 5\)",
        lambda: MF.cross_entropy(X, torch.rand(3, 5)),
    )
    _raises(
        ValueError,
        r"class-probability target must have the input's shape \(3, 4\), got \(4,\)",
        lambda: MF.cross_entropy(X, torch.rand(4)),
    )
    _raises(  # (N, C, d_1) takes targets (N, d_1), as torch does
        ValueError,
        r"class-index target must have shape \(2, 4\) for input of shape \(2, 3, 4\), got \(2, 3\)",
        lambda: MF.cross_entropy(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)),
    )
    _raises(
        ValueError,
        r"expected input of shape \(N, C\), \(C,\) or \(N, C, d_1, ..., d_K\), got a 0-d tensor",
        lambda: MF.cross_entropy(torch.tensor(1.0), torch.tensor(0)),
    )


def test_cross_entropy_weight_shape() -> None:
    _raises(
        ValueError,
        r"weight must have shape \(4,\), got \(5,\)",
        lambda: manual_bp.CrossEntropyLoss(weight=torch.rand(5))(X, LABELS),
    )


# ---- out-of-range class index -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [4, -1, 100])
def test_cross_entropy_class_index_out_of_range(bad: int) -> None:
    target = torch.tensor([0, bad, 1])
    _raises(
        ValueError,
        rf"must lie in \[0, 4\) or equal ignore_index=-100, got {bad}",
        lambda: MF.cross_entropy(X, target),
    )
    _raises(ValueError, rf"got {bad}", lambda: manual_bp.CrossEntropyLoss()(X, target))


def test_cross_entropy_class_index_out_of_range_under_vmap() -> None:
    """Under vmap the range cannot be checked in Python; the Function's scatter still refuses it."""
    per_sample = torch.func.vmap(torch.func.grad(MF.cross_entropy))
    _raises(RuntimeError, r"index 4 is out of bounds", lambda: per_sample(X, torch.tensor([0, 4, 1])))


def test_cross_entropy_ignore_index_is_not_out_of_range() -> None:
    out = MF.cross_entropy(X, torch.tensor([0, -1, 1]), ignore_index=-1)
    torch.testing.assert_close(
        out, torch.nn.functional.cross_entropy(X, torch.tensor([0, -1, 1]), ignore_index=-1)
    )


# ---- unknown reduction and other bad options ----------------------------------------------------


@pytest.mark.parametrize("reduction", ["avg", "elementwise_mean", "", "MEAN"])
def test_unknown_reduction(reduction: str) -> None:
    match = rf"reduction must be 'mean', 'sum' or 'none', got '{reduction}'"
    _raises(ValueError, match, lambda: MF.half_squared_error(X, X, reduction))
    _raises(ValueError, match, lambda: MF.cross_entropy(X, LABELS, reduction=reduction))
    _raises(ValueError, match, lambda: manual_bp.HalfSquaredError(reduction=reduction))
    _raises(ValueError, match, lambda: manual_bp.CrossEntropyLoss(reduction=reduction))


def test_unknown_gelu_approximation() -> None:
    _raises(ValueError, r"approximate must be 'none' or 'tanh', got 'fast'", lambda: MF.gelu(X, "fast"))
    _raises(
        ValueError, r"approximate must be 'none' or 'tanh', got 'fast'", lambda: manual_bp.GELU("fast")(X)
    )


def test_label_smoothing_outside_0_1_is_refused() -> None:
    """label_smoothing is supported (it used to be refused); outside [0, 1] it is refused, as in torch."""
    match = r"label_smoothing must be between 0.0 and 1.0, got {}"
    _raises(RuntimeError, match.format(1.5), lambda: MF.cross_entropy(X, LABELS, label_smoothing=1.5))
    _raises(
        RuntimeError, match.format(-0.1), lambda: manual_bp.CrossEntropyLoss(label_smoothing=-0.1)(X, LABELS)
    )


def test_ignore_index_with_probabilities_is_refused() -> None:
    """torch refuses ignore_index with class probabilities; silently dropping it would mislead."""
    probs = torch.softmax(torch.randn(3, 4), -1)
    _raises(
        ValueError,
        r"ignore_index is not supported with class-probability targets.*got ignore_index=2",
        lambda: MF.cross_entropy(X, probs, ignore_index=2),
    )
    _raises(ValueError, r"ignore_index", lambda: manual_bp.CrossEntropyLoss(ignore_index=2)(X, probs))
    # a negative ignore_index names no class: accepted, as in torch
    torch.testing.assert_close(
        MF.cross_entropy(X, probs, ignore_index=-1),
        torch.nn.functional.cross_entropy(X, probs, ignore_index=-1),
    )


def test_class_index_weight_that_needs_grad_is_refused() -> None:
    """As in torch, the class weights are differentiable with class probabilities only."""
    weight = torch.rand(4, requires_grad=True)
    _raises(
        ValueError, r"not differentiable with respect to weight", lambda: MF.cross_entropy(X, LABELS, weight)
    )
    with torch.no_grad():  # no graph, nothing to refuse
        MF.cross_entropy(X, LABELS, weight)


# ---- integer (and other non-floating) inputs ----------------------------------------------------

INT = torch.tensor([[1, 2, 3, 4]])
FLOATING = (
    r"must be a floating-point tensor \(float16, bfloat16, float32 or float64\), got dtype torch\.int64"
)


@pytest.mark.parametrize(
    "call",
    [
        lambda: MF.linear(INT, W),
        lambda: manual_bp.Linear(4, 2)(INT),
        lambda: MF.sigmoid(INT),
        lambda: MF.tanh(INT),
        lambda: MF.relu(INT),
        lambda: manual_bp.ReLU()(INT),
        lambda: MF.leaky_relu(INT),
        lambda: MF.elu(INT),
        lambda: MF.softplus(INT),
        lambda: MF.gelu(INT),
        lambda: MF.silu(INT),
        lambda: MF.half_squared_error(INT, INT.float()),
        lambda: MF.cross_entropy(INT, torch.tensor([0])),
    ],
    ids=[
        "linear",
        "Linear",
        "sigmoid",
        "tanh",
        "relu",
        "ReLU",
        "leaky_relu",
        "elu",
        "softplus",
        "gelu",
        "silu",
        "half_squared_error",
        "cross_entropy",
    ],
)
def test_integer_input(call: Callable[[], Tensor]) -> None:
    _raises(TypeError, r"^input " + FLOATING, call)


def test_integer_parameters_and_targets() -> None:
    _raises(TypeError, r"^weight " + FLOATING.replace("int64", "int32"), lambda: MF.linear(X, W.int()))
    _raises(TypeError, r"^bias " + FLOATING, lambda: MF.linear(X, W, torch.tensor([1, 2])))
    _raises(TypeError, r"^target " + FLOATING, lambda: MF.half_squared_error(X, X.long()))
    _raises(
        TypeError,
        r"int64 class indices or float class probabilities, got torch\.bool",
        lambda: MF.cross_entropy(X, LABELS > 0),
    )
    _raises(TypeError, r"must be a torch\.Tensor, got list", lambda: MF.linear([[1.0, 2.0, 3.0, 4.0]], W))  # type: ignore[arg-type]


# ---- input and weight on different devices ('meta' stands in for a second device) or dtypes -----


def test_different_devices() -> None:
    meta = torch.device("meta")
    msg = r"must be on the same device, got {} on {} and {} on {}"
    _raises(ValueError, msg.format("input", "cpu", "weight", "meta"), lambda: MF.linear(X, W.to(meta)))
    _raises(
        ValueError, msg.format("input", "meta", "weight", "cpu"), lambda: manual_bp.Linear(4, 2)(X.to(meta))
    )
    _raises(
        ValueError,
        msg.format("bias", "meta", "weight", "cpu"),
        lambda: MF.linear(X, W, torch.zeros(2, device=meta)),
    )
    _raises(
        ValueError, msg.format("target", "meta", "input", "cpu"), lambda: MF.half_squared_error(X, X.to(meta))
    )
    _raises(
        ValueError, msg.format("target", "meta", "input", "cpu"), lambda: MF.cross_entropy(X, LABELS.to(meta))
    )
    _raises(
        ValueError,
        msg.format("weight", "meta", "input", "cpu"),
        lambda: MF.cross_entropy(X, LABELS, torch.ones(4, device=meta)),
    )


def test_different_dtypes() -> None:
    msg = r"must have the same dtype, got {} of torch\.{} and {} of torch\.{}"
    layer = manual_bp.Linear(4, 2, dtype=torch.float64)
    _raises(TypeError, msg.format("input", "float32", "weight", "float64"), lambda: layer(X))
    _raises(TypeError, msg.format("input", "float16", "weight", "float32"), lambda: MF.linear(X.half(), W))
    _raises(
        TypeError,
        msg.format("bias", "float64", "weight", "float32"),
        lambda: MF.linear(X, W, torch.zeros(2, dtype=torch.float64)),
    )
    _raises(
        TypeError,
        msg.format("target", "float64", "input", "float32"),
        lambda: MF.half_squared_error(X, X.double()),
    )
    _raises(
        TypeError,
        msg.format("target", "bfloat16", "input", "float32"),
        lambda: MF.cross_entropy(X, torch.rand(3, 4).bfloat16()),
    )
    _raises(
        TypeError,
        msg.format("weight", "float64", "input", "float32"),
        lambda: MF.cross_entropy(X, LABELS, torch.ones(4).double()),
    )


def test_prelu_weight_and_channels() -> None:
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"expected a 1-D weight \(num_parameters,\), got shape \(3, 1\)"):
        MF.prelu(x, torch.rand(3, 1))
    with pytest.raises(ValueError, match=r"prelu with 5 parameters expected input with 5 channels at dim 1"):
        MF.prelu(x, torch.rand(5))
    with pytest.raises(ValueError, match=r"5 channels at dim 1, got input of shape \(5,\)"):
        MF.prelu(torch.randn(5), torch.rand(5))  # a 1-D input has one channel, as in torch
    with pytest.raises(TypeError, match="weight and input must have the same dtype"):
        MF.prelu(x, torch.rand(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="weight must be a floating-point tensor"):
        MF.prelu(x, torch.ones(3, dtype=torch.long))


def test_activation_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match=r"hardtanh needs max_val > min_val, got min_val=1.0, max_val=-1.0"):
        MF.hardtanh(torch.randn(3), 1.0, -1.0)
    with pytest.raises(TypeError, match="leaky_relu: negative_slope must be a number, got str"):
        MF.leaky_relu(torch.randn(3), "0.2")
    with pytest.raises(TypeError, match="elu: alpha must be a number, got bool"):
        manual_bp.ELU(alpha=True)(torch.randn(3))
    assert MF.leaky_relu(torch.tensor([-2.0]), 1).item() == -2.0  # an int slope is taken as a float
