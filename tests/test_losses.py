"""torch's losses with explicit backward (manual_bp.ops.losses): what the generic tests/test_ops.py
cannot cover — the modules against torch.nn's, options outside the samples, autocast with
low-precision inputs, torch's warnings, convert/revert, and one test per clear error."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import gradcheck, gradgradcheck

import manual_bp
import manual_bp.functional as MF

torch.manual_seed(0)
X = torch.randn(4, 3, dtype=torch.float64)
T = torch.randn(4, 3, dtype=torch.float64)
P = torch.rand(4, 3, dtype=torch.float64) * 0.9 + 0.05  # probabilities away from 0 and 1
LOGITS = torch.randn(5, 4, dtype=torch.float64)
LABELS = torch.tensor([0, 3, 1, 2, 1])
C_WEIGHT = torch.rand(4, dtype=torch.float64) + 0.5


def _raises(error: type[Exception], match: str, call: Callable[[], object]) -> None:
    with pytest.raises(error, match=match):
        call()


def _leaves(*tensors: Tensor) -> list[Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def _same_as_native(
    manual: Callable[..., Tensor], native: Callable[..., Tensor], *inputs: Tensor, grad_fn: str | None = None
) -> None:
    """Outputs and the gradient of every input equal native's (float64, rtol 1e-10, atol 1e-12)."""
    ours, theirs = _leaves(*inputs), _leaves(*inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation and broadcasting warnings
        out, ref = manual(*ours), native(*theirs)
    if grad_fn is not None:
        assert out.grad_fn.name() == grad_fn
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12, equal_nan=True)
    if out.numel():
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, ours, g, allow_unused=True)
        ref_grads = torch.autograd.grad(ref, theirs, g, allow_unused=True)
        for a, b in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, equal_nan=True)


# ---- modules ------------------------------------------------------------------------------------

W43 = torch.rand(4, 3, dtype=torch.float64) + 0.5
MODULES: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module], tuple[Tensor, ...]]] = {
    "MSELoss": (lambda: manual_bp.MSELoss(), lambda: nn.MSELoss(), (X, T)),
    "MSELoss-sum": (lambda: manual_bp.MSELoss(reduction="sum"), lambda: nn.MSELoss(reduction="sum"), (X, T)),
    "L1Loss-none": (lambda: manual_bp.L1Loss(reduction="none"), lambda: nn.L1Loss(reduction="none"), (X, T)),
    "L1Loss-legacy": (
        lambda: manual_bp.L1Loss(size_average=False),
        lambda: nn.L1Loss(size_average=False),
        (X, T),
    ),
    "SmoothL1Loss": (lambda: manual_bp.SmoothL1Loss(beta=0.5), lambda: nn.SmoothL1Loss(beta=0.5), (X, T)),
    "SmoothL1Loss-beta0": (
        lambda: manual_bp.SmoothL1Loss(beta=0.0),
        lambda: nn.SmoothL1Loss(beta=0.0),
        (X, T),
    ),
    "HuberLoss": (lambda: manual_bp.HuberLoss(delta=0.7), lambda: nn.HuberLoss(delta=0.7), (X, T)),
    "NLLLoss": (
        lambda: manual_bp.NLLLoss(weight=C_WEIGHT, ignore_index=1),
        lambda: nn.NLLLoss(weight=C_WEIGHT, ignore_index=1),
        (LOGITS, LABELS),
    ),
    "BCELoss": (
        lambda: manual_bp.BCELoss(weight=W43[0], reduction="sum"),
        lambda: nn.BCELoss(weight=W43[0], reduction="sum"),
        (P, P.flip(0)),
    ),
    "BCEWithLogitsLoss": (
        lambda: manual_bp.BCEWithLogitsLoss(weight=W43[:, :1], pos_weight=W43[0]),
        lambda: nn.BCEWithLogitsLoss(weight=W43[:, :1], pos_weight=W43[0]),
        (X, P),
    ),
    "KLDivLoss": (
        lambda: manual_bp.KLDivLoss(reduction="batchmean"),
        lambda: nn.KLDivLoss(reduction="batchmean"),
        (X.log_softmax(-1), P.softmax(-1)),
    ),
    "KLDivLoss-log_target": (
        lambda: manual_bp.KLDivLoss(reduction="sum", log_target=True),
        lambda: nn.KLDivLoss(reduction="sum", log_target=True),
        (X.log_softmax(-1), T.log_softmax(-1)),
    ),
    "CrossEntropyLoss": (
        lambda: manual_bp.CrossEntropyLoss(weight=C_WEIGHT, ignore_index=2, label_smoothing=0.15),
        lambda: nn.CrossEntropyLoss(weight=C_WEIGHT, ignore_index=2, label_smoothing=0.15),
        (LOGITS, LABELS),
    ),
    "CrossEntropyLoss-probabilities": (
        lambda: manual_bp.CrossEntropyLoss(weight=C_WEIGHT, reduction="none", label_smoothing=0.3),
        lambda: nn.CrossEntropyLoss(weight=C_WEIGHT, reduction="none", label_smoothing=0.3),
        (LOGITS, LOGITS.flip(0).softmax(-1)),
    ),
}


@pytest.mark.parametrize("case", MODULES.values(), ids=MODULES.keys())
def test_module_state_dict_repr_and_values_equal_native(case: Any) -> None:
    make_ours, make_theirs, inputs = case
    ours, theirs = make_ours(), make_theirs()
    assert type(ours).__mro__[1] is type(theirs)
    assert repr(ours) == repr(theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for k, v in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=0, atol=0)
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    # the target is differentiable where torch's is (not class indices)
    diff = inputs if inputs[1].is_floating_point() else inputs[:1]
    rest = inputs[len(diff) :]
    _same_as_native(
        lambda *xs: ours(*xs, *rest),
        lambda *xs: theirs(*xs, *rest),
        *diff,
        grad_fn=None,
    )
    out = ours(*inputs)
    assert out.grad_fn is None or "Function" in out.grad_fn.name()


def test_modules_follow_the_module_reduction_after_construction() -> None:
    """Changing ``.reduction`` (or ``.label_smoothing``) on a module is what forward uses, as in torch."""
    ours, theirs = manual_bp.CrossEntropyLoss(), nn.CrossEntropyLoss()
    for m in (ours, theirs):
        m.reduction, m.label_smoothing = "sum", 0.2
    torch.testing.assert_close(ours(LOGITS, LABELS), theirs(LOGITS, LABELS), rtol=1e-10, atol=1e-12)


# ---- options outside the samples ----------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.25, 1.0])
def test_cross_entropy_4d_input(reduction: str, label_smoothing: float) -> None:
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 3, 2))
    labels[0, 1, 1] = -100
    kw = {"weight": C_WEIGHT, "reduction": reduction, "label_smoothing": label_smoothing}
    _same_as_native(
        lambda z: MF.cross_entropy(z, labels, **kw), lambda z: F.cross_entropy(z, labels, **kw), x
    )
    probs = torch.randn(2, 4, 3, 2, dtype=torch.float64).softmax(1)
    kw["weight"] = C_WEIGHT
    _same_as_native(
        lambda z, q, w: MF.cross_entropy(z, q, w, reduction=reduction, label_smoothing=label_smoothing),
        lambda z, q, w: F.cross_entropy(z, q, w, reduction=reduction, label_smoothing=label_smoothing),
        x,
        probs,
        C_WEIGHT,
    )


def test_cross_entropy_every_target_ignored_is_nan_as_native() -> None:
    labels = torch.full((5,), -100)
    for ls in (0.0, 0.1):
        _same_as_native(
            lambda z, ls=ls: MF.cross_entropy(z, labels, label_smoothing=ls),
            lambda z, ls=ls: F.cross_entropy(z, labels, label_smoothing=ls),
            LOGITS,
        )


def test_cross_entropy_ignore_index_of_a_real_class_with_smoothing() -> None:
    kw = {"ignore_index": 1, "label_smoothing": 0.2, "weight": C_WEIGHT}
    _same_as_native(
        lambda z: MF.cross_entropy(z, LABELS, **kw), lambda z: F.cross_entropy(z, LABELS, **kw), LOGITS
    )


def test_cross_entropy_uint8_targets_as_torch() -> None:
    labels = LABELS.to(torch.uint8)
    _same_as_native(lambda z: MF.cross_entropy(z, labels), lambda z: F.cross_entropy(z, labels), LOGITS)


def test_cross_entropy_backward_twice_with_retain_graph() -> None:
    """The backward edits its own softmax in place, never the saved log p: a second backward
    through the same graph gives the same gradient."""
    x = LOGITS.clone().requires_grad_(True)
    loss = MF.cross_entropy(x, LABELS)
    (first,) = torch.autograd.grad(loss, x, retain_graph=True)
    (second,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.3])
def test_cross_entropy_double_backward_and_log_p_output(label_smoothing: float) -> None:
    """Second derivatives flow through the saved log p (the Function's second output)."""
    w = C_WEIGHT
    assert gradgradcheck(
        lambda z: MF.cross_entropy(z, LABELS, w, label_smoothing=label_smoothing, reduction="none"),
        (LOGITS.clone().requires_grad_(True),),
    )
    x = LOGITS.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(
        MF.cross_entropy(x, LABELS, label_smoothing=label_smoothing), x, create_graph=True
    )
    x2 = LOGITS.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(
        F.cross_entropy(x2, LABELS, label_smoothing=label_smoothing), x2, create_graph=True
    )
    v = torch.randn_like(g)
    torch.testing.assert_close(
        torch.autograd.grad((g * v).sum(), x)[0],
        torch.autograd.grad((g2 * v).sum(), x2)[0],
        rtol=1e-10,
        atol=1e-12,
    )


def test_cross_entropy_vmap_over_probabilities_and_weight() -> None:
    def per_sample(fn: Callable[..., Tensor]) -> Any:
        return torch.func.vmap(
            torch.func.grad(lambda z, q, w: fn(z, q, w, label_smoothing=0.1), argnums=(0, 1, 2))
        )

    z = torch.randn(3, 4, dtype=torch.float64)
    q = torch.randn(3, 4, dtype=torch.float64).softmax(-1)
    w = torch.rand(3, 4, dtype=torch.float64) + 0.5
    for a, b in zip(per_sample(MF.cross_entropy)(z, q, w), per_sample(F.cross_entropy)(z, q, w), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_nll_loss_4d_and_unbatched() -> None:
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 3, 2))
    for red in ("mean", "sum", "none"):
        _same_as_native(
            lambda z, red=red: MF.nll_loss(z, labels, C_WEIGHT, reduction=red),
            lambda z, red=red: F.nll_loss(z, labels, C_WEIGHT, reduction=red),
            x,
        )
    _same_as_native(lambda z: MF.nll_loss(z, LABELS[0]), lambda z: F.nll_loss(z, LABELS[0]), LOGITS[0])


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss", "huber_loss"])
def test_elementwise_weight_with_a_broadcast_target(name: str) -> None:
    """The weight has the input's shape; the target broadcasts; every gradient as native."""
    ours, theirs = getattr(MF, name), getattr(F, name)
    for red in ("mean", "sum", "none"):
        _same_as_native(
            lambda x, t, w, red=red: ours(x, t, reduction=red, weight=w),
            lambda x, t, w, red=red: theirs(x, t, reduction=red, weight=w),
            X,
            T[:1],
            W43,
        )


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("mse_loss", {"reduce": False}),
        ("l1_loss", {"size_average": False, "reduce": True}),
        ("smooth_l1_loss", {"size_average": True}),
        ("kl_div", {"reduce": False}),
        ("binary_cross_entropy_with_logits", {"size_average": False}),
    ],
)
def test_legacy_size_average_and_reduce(name: str, kwargs: dict[str, bool]) -> None:
    """The deprecated arguments map onto ``reduction`` as torch maps them, with torch's warning."""
    target = P.softmax(-1) if name == "kl_div" else P
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        getattr(MF, name)(X, target, **kwargs)
    _same_as_native(
        lambda x: getattr(MF, name)(x, target, **kwargs), lambda x: getattr(F, name)(x, target, **kwargs), X
    )


def test_broadcasting_warns_as_torch() -> None:
    with pytest.warns(UserWarning, match=r"Using a target size \(torch.Size\(\[1, 3\]\)\) that is different"):
        MF.mse_loss(X, T[:1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MF.mse_loss(X, T)  # same shapes: no warning


def test_kl_div_mean_warns_as_torch() -> None:
    with pytest.warns(UserWarning, match="'batchmean' divides only by the batch size"):
        MF.kl_div(X.log_softmax(-1), P.softmax(-1))


def test_smooth_l1_beta_zero_is_l1() -> None:
    out = MF.smooth_l1_loss(X.clone().requires_grad_(True), T, beta=0.0)
    assert out.grad_fn.name() == "L1LossFunctionBackward"
    torch.testing.assert_close(out, F.smooth_l1_loss(X, T, beta=0.0), rtol=1e-10, atol=1e-12)


def test_bce_log_clamp_at_the_ends() -> None:
    """At y = 0 or 1 the log is clamped at −100, as torch does: a finite loss."""
    y = torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64)
    t = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(
        MF.binary_cross_entropy(y, t, reduction="none"), F.binary_cross_entropy(y, t, reduction="none")
    )


@pytest.mark.parametrize("name", ["binary_cross_entropy_with_logits", "kl_div", "mse_loss"])
def test_gradcheck_with_large_values(name: str) -> None:
    """Stable forms: logits of ±30 and log-targets (kl) keep the gradient exact."""
    x = (torch.randn(3, 4, dtype=torch.float64) * 30).requires_grad_(True)
    t = P[:3].repeat(1, 2)[:, :4].clone().requires_grad_(True)
    assert gradcheck(lambda a, b: getattr(MF, name)(a, b, reduction="sum"), (x, t))


# ---- autocast with low-precision inputs ---------------------------------------------------------

BF16 = torch.bfloat16


def _autocast_case(name: str, *args: Any, **kwargs: Any) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
    return name, args, kwargs


AUTOCAST_CASES = [
    _autocast_case("mse_loss", X, T),
    _autocast_case("mse_loss", X, T, weight=W43),
    _autocast_case("l1_loss", X, T, weight=W43),
    _autocast_case("huber_loss", X, T, weight=W43),
    _autocast_case("smooth_l1_loss", X, T),
    _autocast_case("binary_cross_entropy", P, P.flip(0)),
    _autocast_case("binary_cross_entropy_with_logits", X, P, pos_weight=W43[0].detach()),
    _autocast_case("kl_div", X.log_softmax(-1), P.softmax(-1), reduction="batchmean"),
    _autocast_case("nll_loss", LOGITS, LABELS),
    _autocast_case("cross_entropy", LOGITS, LABELS, label_smoothing=0.1),
    _autocast_case("cross_entropy", LOGITS, LOGITS.softmax(-1), weight=C_WEIGHT),
]


@pytest.mark.parametrize("dtype", [BF16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize(("name", "args", "kwargs"), AUTOCAST_CASES, ids=[c[0] for c in AUTOCAST_CASES])
def test_autocast_dtypes_like_native(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], dtype: torch.dtype
) -> None:
    """Under CPU bfloat16 autocast, with bfloat16 or float32 inputs: native's output dtype and each
    gradient's dtype (some losses are autocast float32 ops, the weighted mse/l1 are not)."""
    results = []
    for fn in (getattr(MF, name), getattr(F, name)):
        inputs = [a.detach().to(dtype).requires_grad_(True) if a.is_floating_point() else a for a in args]
        kw = {k: v.to(dtype) if isinstance(v, Tensor) else v for k, v in kwargs.items()}
        if name == "cross_entropy" and "weight" in kw:
            kw["weight"].requires_grad_(True)
        with torch.autocast("cpu", dtype=BF16), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn(*inputs, **kw)
        diff = [a for a in [*inputs, *kw.values()] if isinstance(a, Tensor) and a.requires_grad]
        grads = torch.autograd.grad(out.sum(), diff)
        results.append((out, grads))
    (out, grads), (ref, ref_grads) = results
    assert out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)  # bfloat16 rounding of the inputs
    for g, r in zip(grads, ref_grads, strict=True):
        assert g.dtype == r.dtype
        torch.testing.assert_close(g, r, rtol=2e-2, atol=2e-2)


# ---- convert / revert ---------------------------------------------------------------------------


class _Heads(nn.Module):
    """A small model whose losses are modules: a regression head and a classification head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 4)
        self.mse = nn.MSELoss()
        self.huber = nn.HuberLoss(delta=0.5)
        self.bce = nn.BCEWithLogitsLoss(pos_weight=torch.full((4,), 2.0))
        self.ce = nn.CrossEntropyLoss(weight=torch.rand(4) + 0.5)
        self.nll = nn.NLLLoss()
        self.kl = nn.KLDivLoss(reduction="batchmean")

    def forward(self, x: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        z = self.body(x)
        log_p = z.log_softmax(-1)
        return (
            self.mse(z, t)
            + self.huber(z, t)
            + self.bce(z, t.sigmoid())
            + self.ce(z, labels)
            + self.nll(log_p, labels)
            + self.kl(log_p, t.softmax(-1))
        )


def test_convert_and_revert_a_model_with_losses() -> None:
    torch.manual_seed(1)
    native = _Heads()
    manual = manual_bp.convert(native)
    for name in ("mse", "huber", "bce", "ce", "nll", "kl"):
        assert type(getattr(manual, name)).__module__ == "manual_bp.modules", name
        assert type(getattr(manual, name)).__mro__[1] is type(getattr(native, name))
    x, t, labels = torch.randn(6, 3), torch.randn(6, 4), torch.randint(0, 4, (6,))
    out, ref = manual(x, t, labels), native(x, t, labels)
    torch.testing.assert_close(out, ref)
    grads = torch.autograd.grad(out, list(manual.parameters()))
    ref_grads = torch.autograd.grad(ref, list(native.parameters()))
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)
    back = manual_bp.revert(manual)
    for name, module in native.named_modules():
        assert type(dict(back.named_modules())[name]) is type(module)
    assert list(back.state_dict()) == list(native.state_dict())
    for k, v in native.state_dict().items():
        assert torch.equal(back.state_dict()[k], v)


# ---- clear errors -------------------------------------------------------------------------------


def test_shape_mismatch_names_both_shapes() -> None:
    _raises(
        RuntimeError,
        r"mse_loss: target shape \(4, 2\) does not broadcast with input shape \(4, 3\)",
        lambda: MF.mse_loss(X, T[:, :2]),
    )
    _raises(RuntimeError, r"target shape \(2, 3\) does not broadcast", lambda: MF.l1_loss(X, T[:2]))
    _raises(
        ValueError,
        r"binary_cross_entropy: target shape \(4, 1\) must equal input shape \(4, 3\)",
        lambda: MF.binary_cross_entropy(P, P[:, :1]),
    )
    _raises(
        ValueError,
        r"binary_cross_entropy_with_logits: target shape \(3,\) must equal input shape \(4, 3\)",
        lambda: manual_bp.BCEWithLogitsLoss()(X, P[0]),
    )
    _raises(
        ValueError,
        r"class-index target must have shape \(5,\) for input of shape \(5, 4\), got \(4,\)",
        lambda: MF.nll_loss(LOGITS, LABELS[:4]),
    )


def test_elementwise_weight_of_the_wrong_shape() -> None:
    _raises(
        ValueError,
        r"mse_loss: weight must have the input's shape \(4, 3\), got \(3,\)",
        lambda: MF.mse_loss(X, T, weight=W43[0]),
    )
    _raises(
        ValueError,
        r"binary_cross_entropy: weight of shape \(2,\) must broadcast to the input's shape \(4, 3\)",
        lambda: MF.binary_cross_entropy(P, P, torch.ones(2, dtype=torch.float64)),
    )
    _raises(
        ValueError,
        r"pos_weight of shape \(4,\) must broadcast to the input's shape \(4, 3\)",
        lambda: MF.binary_cross_entropy_with_logits(X, P, pos_weight=torch.ones(4, dtype=torch.float64)),
    )


def test_class_weight_of_the_wrong_size() -> None:
    _raises(
        ValueError,
        r"weight must have shape \(4,\), got \(3,\)",
        lambda: MF.nll_loss(LOGITS, LABELS, C_WEIGHT[:3]),
    )
    _raises(
        ValueError,
        r"weight must have shape \(4,\), got \(5,\)",
        lambda: manual_bp.CrossEntropyLoss(weight=torch.ones(5, dtype=torch.float64))(LOGITS, LABELS),
    )


@pytest.mark.parametrize("name", ["nll_loss", "cross_entropy"])
def test_class_index_dtype(name: str) -> None:
    _raises(
        TypeError,
        r"class-index target must be int64 \(or uint8, as torch accepts\), got torch.int32"
        if name == "nll_loss"
        else r"int64 class indices or float class probabilities, got torch.int32",
        lambda: getattr(MF, name)(LOGITS, LABELS.int()),
    )
    if name == "nll_loss":
        _raises(TypeError, r"got torch.float64", lambda: MF.nll_loss(LOGITS, LABELS.double()))


@pytest.mark.parametrize("name", ["nll_loss", "cross_entropy"])
@pytest.mark.parametrize("bad", [4, -1])
def test_class_index_out_of_range_names_the_range(name: str, bad: int) -> None:
    labels = LABELS.clone()
    labels[2] = bad
    match = rf"class-index target must lie in \[0, 4\) or equal ignore_index=-100, got {bad}"
    _raises(ValueError, match, lambda: getattr(MF, name)(LOGITS, labels))
    _raises(ValueError, match, lambda: getattr(MF, name)(LOGITS, labels, C_WEIGHT))  # the checked path
    _raises(ValueError, match, lambda: getattr(MF, name)(LOGITS.reshape(5, 4, 1), labels.reshape(5, 1)))


def test_probability_target_dtype_for_elementwise_losses() -> None:
    floating = r"target must be a floating-point tensor .*got dtype torch.int64"
    _raises(TypeError, floating, lambda: MF.mse_loss(X, LABELS[:4, None].expand(4, 3)))
    _raises(TypeError, floating, lambda: MF.binary_cross_entropy(P, LABELS[:4, None].expand(4, 3)))


def test_bce_input_and_target_outside_0_1() -> None:
    bad = P.clone()
    bad[1, 2] = 1.5
    _raises(
        RuntimeError,
        r"binary_cross_entropy: every element of input must lie in \[0, 1\] \(probabilities\), got 1.5",
        lambda: MF.binary_cross_entropy(bad, P),
    )
    _raises(
        RuntimeError,
        r"every element of target must lie in \[0, 1\].*got 1.5",
        lambda: manual_bp.BCELoss()(P, bad),
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda r: MF.mse_loss(X, T, reduction=r),
        lambda r: MF.l1_loss(X, T, reduction=r),
        lambda r: MF.smooth_l1_loss(X, T, reduction=r),
        lambda r: MF.huber_loss(X, T, reduction=r),
        lambda r: MF.binary_cross_entropy(P, P, reduction=r),
        lambda r: MF.binary_cross_entropy_with_logits(X, P, reduction=r),
        lambda r: MF.nll_loss(LOGITS, LABELS, reduction=r),
        lambda r: MF.cross_entropy(LOGITS, LABELS, reduction=r),
        lambda r: manual_bp.MSELoss(reduction=r)(X, T),
    ],
    ids=["mse", "l1", "smooth_l1", "huber", "bce", "bce_logits", "nll", "ce", "MSELoss"],
)
@pytest.mark.parametrize("reduction", ["avg", "batchmean"])
def test_bad_reduction(call: Callable[[str], Tensor], reduction: str) -> None:
    _raises(
        ValueError, rf"reduction must be 'mean', 'sum' or 'none', got '{reduction}'", lambda: call(reduction)
    )


def test_bad_reduction_kl_div() -> None:
    _raises(
        ValueError,
        r"reduction must be 'mean', 'batchmean', 'sum' or 'none', got 'avg'",
        lambda: MF.kl_div(X, P, reduction="avg"),
    )


def test_label_smoothing_outside_0_1() -> None:
    for ls in (-0.5, 1.01):
        _raises(
            RuntimeError,
            rf"label_smoothing must be between 0.0 and 1.0, got {ls}",
            lambda ls=ls: MF.cross_entropy(LOGITS, LABELS, label_smoothing=ls),
        )


def test_parameters_that_torch_does_not_differentiate_are_refused() -> None:
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    _raises(
        ValueError, r"not differentiable with respect to weight", lambda: MF.binary_cross_entropy(P, P, w)
    )
    _raises(
        ValueError,
        r"not differentiable with respect to pos_weight",
        lambda: MF.binary_cross_entropy_with_logits(X, P, pos_weight=w),
    )
    _raises(
        ValueError,
        r"nll_loss with class-index targets is not differentiable with respect to weight",
        lambda: MF.nll_loss(LOGITS, LABELS, C_WEIGHT.clone().requires_grad_(True)),
    )


def test_bad_beta_and_delta() -> None:
    _raises(RuntimeError, r"negative values for beta, got beta=-1", lambda: MF.smooth_l1_loss(X, T, beta=-1))
    _raises(RuntimeError, r"non-positive values for delta, got delta=0", lambda: MF.huber_loss(X, T, delta=0))


def test_mixed_dtypes_are_refused_with_both_named() -> None:
    _raises(
        TypeError,
        r"target and input must have the same dtype, got target of torch.float32 and input of torch.float64",
        lambda: MF.mse_loss(X, T.float()),
    )
