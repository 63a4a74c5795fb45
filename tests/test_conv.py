"""Convolutions beyond the registry's samples: the drop-in modules (every padding mode, 'same' with
even kernels, groups, output_size), options the samples leave out, convert/revert of a small CNN,
and one test per clear error. The generic checks of every sample are in test_ops.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import manual_bp
import manual_bp.functional as MF
import manual_bp.ops.conv as conv_module

F64 = torch.float64
TOL64 = {"rtol": 1e-10, "atol": 1e-12}  # float64: both sides exact to rounding (as test_ops.py)


def _twins(native_cls: type[nn.Module], *args: object, **kwargs: object) -> tuple[nn.Module, nn.Module]:
    """A native layer in float64 and its manual twin with the same parameters."""
    native = native_cls(*args, **kwargs, dtype=F64)
    manual = getattr(manual_bp, native_cls.__name__)(*args, **kwargs, dtype=F64)
    manual.load_state_dict(native.state_dict())
    return manual, native


def _outputs_and_grads(
    module: nn.Module, x: Tensor, call: Callable[[nn.Module, Tensor], Tensor] | None = None
) -> tuple[Tensor, Tensor, list[Tensor]]:
    x = x.detach().clone().requires_grad_(True)
    out = call(module, x) if call is not None else module(x)
    torch.manual_seed(1)
    out.backward(torch.randn_like(out))
    assert x.grad is not None
    return out.detach(), x.grad, [p.grad for p in module.parameters()]  # type: ignore[misc]


def _assert_same(
    manual: nn.Module,
    native: nn.Module,
    x: Tensor,
    call: Callable[[nn.Module, Tensor], Tensor] | None = None,
    grad_fn: str = "ConvFunctionBackward",
) -> None:
    x = x.detach().clone().requires_grad_(True)
    out = call(manual, x) if call is not None else manual(x)
    assert out.grad_fn is not None and out.grad_fn.name() == grad_fn
    got, want = _outputs_and_grads(manual, x, call), _outputs_and_grads(native, x, call)
    torch.testing.assert_close(got[0], want[0], **TOL64)
    torch.testing.assert_close(got[1], want[1], **TOL64)
    assert len(got[2]) == len(want[2])
    for g, w in zip(got[2], want[2], strict=True):
        torch.testing.assert_close(g, w, **TOL64)


# ---- modules: every option, as native -------------------------------------------------------

CONV_CASES = {
    "1d": (nn.Conv1d, (2, 4, 3), {}, (3, 2, 9)),
    "1d-stride-nobias": (nn.Conv1d, (2, 4, 3), {"stride": 2, "padding": 2, "bias": False}, (3, 2, 9)),
    "1d-same-even-dilation": (nn.Conv1d, (2, 3, 4), {"padding": "same", "dilation": 3}, (2, 2, 11)),
    "1d-reflect": (nn.Conv1d, (2, 3, 3), {"padding": 2, "padding_mode": "reflect"}, (2, 2, 7)),
    "2d": (nn.Conv2d, (3, 4, 3), {"padding": 1}, (2, 3, 6, 5)),
    "2d-stride2-resnet": (nn.Conv2d, (4, 8, 3), {"stride": 2, "padding": 1, "bias": False}, (2, 4, 8, 8)),
    "2d-1x1-stride2": (nn.Conv2d, (4, 6, 1), {"stride": 2, "bias": False}, (2, 4, 7, 7)),
    "2d-1x1": (nn.Conv2d, (4, 6, 1), {}, (2, 4, 5, 5)),
    "2d-same-even": (nn.Conv2d, (2, 3, (2, 4)), {"padding": "same", "dilation": (1, 2)}, (2, 2, 5, 6)),
    "2d-valid": (nn.Conv2d, (2, 3, 3), {"padding": "valid"}, (2, 2, 5, 5)),
    "2d-groups": (nn.Conv2d, (4, 6, 3), {"groups": 2, "padding": (1, 0)}, (2, 4, 5, 5)),
    "2d-depthwise": (nn.Conv2d, (4, 8, 3), {"groups": 4, "padding": 1}, (2, 4, 5, 5)),
    "2d-replicate": (nn.Conv2d, (2, 3, 3), {"padding": (1, 2), "padding_mode": "replicate"}, (2, 2, 5, 4)),
    "2d-circular-same": (nn.Conv2d, (2, 3, 4), {"padding": "same", "padding_mode": "circular"}, (2, 2, 6, 6)),
    "2d-reflect-stride": (
        nn.Conv2d,
        (2, 3, 3),
        {"padding": 1, "padding_mode": "reflect", "stride": 2},
        (2, 2, 7, 6),
    ),
    "2d-unbatched": (nn.Conv2d, (2, 3, 3), {"padding": 1}, (2, 5, 5)),
    "2d-dilation-stride": (nn.Conv2d, (2, 3, 3), {"dilation": 2, "stride": (2, 1)}, (2, 2, 9, 8)),
    "3d": (nn.Conv3d, (2, 3, 3), {"padding": 1, "stride": (1, 2, 1)}, (2, 2, 4, 5, 3)),
    "3d-same-groups": (nn.Conv3d, (2, 4, 2), {"padding": "same", "groups": 2}, (1, 2, 3, 4, 3)),
    "3d-circular": (nn.Conv3d, (2, 2, 3), {"padding": 1, "padding_mode": "circular"}, (1, 2, 3, 3, 3)),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_module_matches_native(case: str) -> None:
    cls, args, kwargs, shape = CONV_CASES[case]
    torch.manual_seed(0)
    manual, native = _twins(cls, *args, **kwargs)
    _assert_same(manual, native, torch.randn(shape, dtype=F64))


TRANSPOSE_CASES = {
    "1d": (nn.ConvTranspose1d, (2, 3, 3), {}, (2, 2, 5), None),
    "1d-stride-output_size": (nn.ConvTranspose1d, (2, 3, 3), {"stride": 3, "padding": 1}, (2, 2, 4), [12]),
    "1d-groups-dilation": (nn.ConvTranspose1d, (4, 2, 3), {"groups": 2, "dilation": 2}, (2, 4, 5), None),
    "2d": (nn.ConvTranspose2d, (3, 2, 3), {"padding": 1}, (2, 3, 4, 5), None),
    "2d-stride2-output_padding": (
        nn.ConvTranspose2d,
        (3, 2, 3),
        {"stride": 2, "padding": 1, "output_padding": 1, "bias": False},
        (2, 3, 4, 4),
        None,
    ),
    "2d-output_size": (nn.ConvTranspose2d, (2, 3, 2), {"stride": 2}, (2, 2, 3, 4), [7, 9]),
    "2d-depthwise": (nn.ConvTranspose2d, (4, 4, 3), {"groups": 4, "stride": (2, 1)}, (2, 4, 3, 3), None),
    "2d-unbatched": (nn.ConvTranspose2d, (2, 3, 2), {"dilation": (1, 2)}, (2, 3, 3), None),
}


@pytest.mark.parametrize("case", list(TRANSPOSE_CASES))
def test_conv_transpose_module_matches_native(case: str) -> None:
    cls, args, kwargs, shape, output_size = TRANSPOSE_CASES[case]
    torch.manual_seed(0)
    manual, native = _twins(cls, *args, **kwargs)

    def call(m: nn.Module, x: Tensor) -> Tensor:
        return m(x, output_size=output_size)

    if output_size is not None:
        assert call(native, torch.randn(shape, dtype=F64)).shape[2:] == tuple(output_size)
    _assert_same(manual, native, torch.randn(shape, dtype=F64), call, "ConvTransposeFunctionBackward")


ALL_MODULES = [(name, c[0], c[1], c[2]) for name, c in {**CONV_CASES, **TRANSPOSE_CASES}.items()]


@pytest.mark.parametrize(("case", "cls", "args", "kwargs"), ALL_MODULES, ids=[m[0] for m in ALL_MODULES])
def test_module_repr_state_dict_and_parameters_as_native(
    case: str, cls: type[nn.Module], args: tuple, kwargs: dict
) -> None:
    manual, native = _twins(cls, *args, **kwargs)
    assert isinstance(manual, cls)
    assert type(manual).__module__ == "manual_bp.modules"
    assert repr(manual) == repr(native)
    assert [n for n, _ in manual.named_parameters()] == [n for n, _ in native.named_parameters()]
    assert list(manual.state_dict()) == list(native.state_dict())
    # each loads the other's state_dict
    other = cls(*args, **kwargs, dtype=F64)
    other.load_state_dict(manual.state_dict())
    manual.load_state_dict(other.state_dict())
    for a, b in zip(other.state_dict().values(), native.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_conv_transpose_rejects_other_padding_modes_as_native() -> None:
    with pytest.raises(ValueError, match='Only "zeros" padding mode is supported for ConvTranspose2d'):
        manual_bp.ConvTranspose2d(2, 2, 3, padding_mode="reflect")  # native refuses it at construction
    layer = manual_bp.ConvTranspose1d(2, 2, 3)
    layer.padding_mode = "reflect"  # type: ignore[assignment]
    with pytest.raises(ValueError, match="Only `zeros` padding mode is supported for ConvTranspose1d"):
        layer(torch.randn(1, 2, 4))


# ---- options the samples leave out ------------------------------------------------------------


def _grads(fn: Callable[..., Tensor], *args: Tensor, **kwargs: object) -> list[Tensor]:
    out = fn(*args, **kwargs)
    torch.manual_seed(2)
    return list(torch.autograd.grad(out, [a for a in args if a.requires_grad], torch.randn_like(out)))


def test_only_the_needed_gradients() -> None:
    """BP2 without BP3 and the other way round (ctx.needs_input_grad), each equal to native's."""
    torch.manual_seed(0)
    x, w = torch.randn(2, 3, 6, 6, dtype=F64), torch.randn(4, 3, 3, 3, dtype=F64)
    for needs in ((True, False), (False, True)):
        xs, ws = x.clone().requires_grad_(needs[0]), w.clone().requires_grad_(needs[1])
        got = _grads(MF.conv2d, xs, ws, stride=2, padding=1)
        want = _grads(F.conv2d, xs, ws, stride=2, padding=1)
        for g, n in zip(got, want, strict=True):
            torch.testing.assert_close(g, n, **TOL64)
    for needs in ((True, False), (False, True)):
        xs, ws = (
            x.clone().requires_grad_(needs[0]),
            torch.randn(3, 2, 3, 3, dtype=F64).requires_grad_(needs[1]),
        )
        got = _grads(MF.conv_transpose2d, xs, ws, stride=2)
        want = _grads(F.conv_transpose2d, xs, ws, stride=2)
        for g, n in zip(got, want, strict=True):
            torch.testing.assert_close(g, n, **TOL64)


@pytest.mark.parametrize(
    ("fn", "size", "kernel", "kwargs"),
    [
        (MF.conv2d, (1, 1), 3, {"padding": 1}),  # 3x3 on a 1x1 map: only the centre offset reads the input
        (MF.conv2d, (1, 2), 3, {"padding": 2, "dilation": 2}),
        (
            MF.conv2d,
            (3, 1),
            3,
            {"padding": 1, "dilation": (2, 1)},
        ),  # padding before not a multiple of dilation
        (MF.conv1d, (1,), 5, {"padding": 2, "stride": 2}),
        (MF.conv3d, (1, 1, 1), 3, {"padding": 1}),
    ],
    ids=["1x1", "dilated", "odd padding", "1d strided", "3d"],
)
def test_kernel_offsets_that_read_only_padding(
    fn: Callable[..., Tensor],
    size: tuple[int, ...],
    kernel: int,
    kwargs: dict,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Offsets whose windows lie in the padding are skipped in the backward: gradients still equal native's
    (zeros for those weights) and double backward holds."""
    cut = []
    cropped = conv_module._Reader.cropped
    monkeypatch.setattr(
        conv_module._Reader, "cropped", lambda self, live: cut.append(live) or cropped(self, live)
    )
    d = len(size)
    native = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[d]
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=F64, requires_grad=True)
    w = torch.randn(4, 3, *(kernel,) * d, dtype=F64, requires_grad=True)
    for g, n in zip(_grads(fn, x, w, **kwargs), _grads(native, x, w, **kwargs), strict=True):
        torch.testing.assert_close(g, n, **TOL64)
    assert cut, "the backward did not skip the offsets"
    assert torch.autograd.gradgradcheck(lambda x, w: fn(x, w, **kwargs), (x, w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_resnet_like_block_in_lower_precision(dtype: torch.dtype) -> None:
    """A ResNet shape (8 channels, 3x3, stride 2 and 1x1 downsample) in float32 and bfloat16."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 10, 10, dtype=dtype, requires_grad=True)
    w3 = torch.randn(16, 8, 3, 3, dtype=dtype, requires_grad=True)
    w1 = torch.randn(16, 8, 1, 1, dtype=dtype, requires_grad=True)

    def block(conv: Callable[..., Tensor]) -> Tensor:
        return conv(x, w3, None, 2, 1) + conv(x, w1, None, 2)

    outs = []
    for conv in (MF.conv2d, F.conv2d):
        out = block(conv)
        outs.append((out, *torch.autograd.grad(out, (x, w3, w1), torch.ones_like(out))))
    for g, n in zip(outs[0], outs[1], strict=True):
        assert g.dtype == n.dtype == dtype
        # bfloat16: the manual backward rounds after each op where a native kernel rounds once;
        # relative to the gradient's size, 8 bf16 eps (the figure of test_ops.BF16_TOL)
        tol = {} if dtype == torch.float32 else {"rtol": 8 * 2**-7, "atol": 8 * 2**-7 * n.abs().max().item()}
        torch.testing.assert_close(g, n, **tol)


def test_module_under_autocast_like_native() -> None:
    torch.manual_seed(0)
    native = nn.Conv2d(3, 4, 3, padding=1)
    manual = manual_bp.Conv2d(3, 4, 3, padding=1)
    manual.load_state_dict(native.state_dict())
    x = torch.randn(2, 3, 5, 5)
    results = []
    for m in (manual, native):
        with torch.autocast("cpu", torch.bfloat16):
            out = m(x)
        out.float().sum().backward()
        results.append((out.dtype, m.weight.grad.dtype, m.bias.grad.dtype))  # type: ignore[union-attr]
    assert results[0] == results[1] == (torch.bfloat16, torch.float32, torch.float32)


def test_double_backward_of_a_module() -> None:
    torch.manual_seed(0)
    layer = manual_bp.Conv2d(2, 3, 3, stride=2, padding=1, groups=1, dtype=F64)
    x = torch.randn(1, 2, 5, 5, dtype=F64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda x, w: F.relu(layer._conv_forward(x, w, layer.bias)).sum(), (x, layer.weight)
    )


# ---- convert / revert -------------------------------------------------------------------------


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, stride=2, padding=1, padding_mode="reflect", groups=2, bias=False),
            nn.ConvTranspose2d(4, 3, 2, stride=2),
        )
        self.temporal = nn.Conv1d(3, 2, 3, padding="same")
        self.volume = nn.Conv3d(1, 1, 2)
        self.head = nn.Linear(2 * 36 + 1 * 1 * 5 * 5, 3)

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(x)  # (N, 3, 6, 6)
        t = self.temporal(f.flatten(2))  # (N, 2, 36)
        v = self.volume(f.unsqueeze(1))  # (N, 1, 2, 5, 5)
        return self.head(torch.cat([t.flatten(1), v[:, :, 0].flatten(1)], 1))


def test_convert_and_revert_a_small_cnn() -> None:
    torch.manual_seed(0)
    native = SmallCNN().double()
    manual = manual_bp.convert(native)
    for name in ("features.0", "features.2", "features.3", "temporal", "volume"):
        assert type(manual.get_submodule(name)).__module__ == "manual_bp.modules", name
    x = torch.randn(2, 2, 6, 6, dtype=F64)
    got, want = _outputs_and_grads(manual, x), _outputs_and_grads(native, x)
    for g, w in zip([got[0], got[1], *got[2]], [want[0], want[1], *want[2]], strict=True):
        torch.testing.assert_close(g, w, **TOL64)
    back = manual_bp.revert(manual)
    for (name, a), b in zip(back.named_modules(), native.modules(), strict=True):
        assert type(a) is type(b), name
    assert list(back.state_dict()) == list(native.state_dict())
    for a, b in zip(back.state_dict().values(), native.state_dict().values(), strict=True):
        assert torch.equal(a, b)


# ---- clear errors ------------------------------------------------------------------------------

X2 = torch.randn(2, 3, 5, 5)
W2 = torch.randn(4, 3, 3, 3)


@pytest.mark.parametrize(
    ("error", "match", "call"),
    [
        (
            ValueError,
            r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv2d.*\(5, 5\)",
            lambda: MF.conv2d(torch.randn(5, 5), W2),
        ),
        (
            ValueError,
            r"conv1d expected a 3-D weight, got shape \(4, 3, 3, 3\)",
            lambda: MF.conv1d(torch.randn(2, 3, 5), W2),
        ),
        (ValueError, r"expected input with 3 channels .*got 2 channels", lambda: MF.conv2d(X2[:, :2], W2)),
        (
            ValueError,
            r"expected input with 6 channels \(weight.shape\[1\]=3 x groups=2\)",
            lambda: MF.conv2d(X2, torch.randn(4, 3, 3, 3), groups=2),
        ),
        (
            ValueError,
            r"out_channels \(weight.shape\[0\]\) \(5\) must be divisible by groups \(3\)",
            lambda: MF.conv2d(torch.randn(2, 3, 5, 5), torch.randn(5, 1, 3, 3), groups=3),
        ),
        (
            ValueError,
            r"in_channels \(weight.shape\[0\]\) \(3\) must be divisible by groups \(2\)",
            lambda: MF.conv_transpose2d(X2, torch.randn(3, 2, 3, 3), groups=2),
        ),
        (
            ValueError,
            r"conv_transpose1d expected input with 4 channels \(weight.shape\[0\]\), got 3",
            lambda: MF.conv_transpose1d(torch.randn(2, 3, 5), torch.randn(4, 2, 3)),
        ),
        (ValueError, r"groups must be a positive integer, got 0", lambda: MF.conv2d(X2, W2, groups=0)),
        (
            ValueError,
            r"padding='same' is not supported for strided convolutions",
            lambda: MF.conv2d(X2, W2, stride=2, padding="same"),
        ),
        (ValueError, r"stride must be positive, got 0", lambda: MF.conv2d(X2, W2, stride=0)),
        (ValueError, r"stride must be positive, got \(1, -1\)", lambda: MF.conv2d(X2, W2, stride=(1, -1))),
        (ValueError, r"dilation must be positive", lambda: MF.conv1d(X2[0], W2[0], dilation=0)),
        (ValueError, r"padding must be non-negative, got -1", lambda: MF.conv2d(X2, W2, padding=-1)),
        (
            ValueError,
            r"stride must be an int or a tuple of 2 ints, got \(1, 1, 1\)",
            lambda: MF.conv2d(X2, W2, stride=(1, 1, 1)),
        ),
        (
            TypeError,
            r"padding must be an int or a tuple of 2 ints, got 1.5",
            lambda: MF.conv2d(X2, W2, padding=1.5),
        ),
        (
            ValueError,
            r"invalid padding string 'full', expected 'same' or 'valid'",
            lambda: MF.conv2d(X2, W2, padding="full"),
        ),
        (
            ValueError,
            r"conv_transpose2d: padding must be an int or a tuple of 2 ints, got 'same'",
            lambda: MF.conv_transpose2d(X2, torch.randn(3, 2, 3, 3), padding="same"),
        ),
        (
            TypeError,
            r"input must be a floating-point tensor .*got dtype torch.int64",
            lambda: MF.conv2d(X2.long(), W2),
        ),
        (
            TypeError,
            r"weight must be a floating-point tensor",
            lambda: MF.conv_transpose1d(X2[0], W2[0].int()),
        ),
        (TypeError, r"input must be a torch.Tensor, got list", lambda: MF.conv1d([1.0], W2[0])),
        (
            TypeError,
            r"weight and input must have the same dtype, got weight of torch.float64 and input of "
            r"torch.float32",
            lambda: MF.conv2d(X2, W2.double()),
        ),
        (
            TypeError,
            r"bias and input must have the same dtype",
            lambda: MF.conv2d(X2, W2, torch.zeros(4, dtype=F64)),
        ),
        (
            ValueError,
            r"weight and input must be on the same device, got weight on meta and input on cpu",
            lambda: MF.conv2d(X2, W2.to("meta")),
        ),
        (
            ValueError,
            r"bias must have shape \(4,\), got shape \(3,\)",
            lambda: MF.conv2d(X2, W2, torch.zeros(3)),
        ),
        (
            ValueError,
            r"conv_transpose2d: bias must have shape \(4,\)",
            lambda: MF.conv_transpose2d(X2, torch.randn(3, 4, 3, 3), torch.zeros(3)),
        ),
        (
            ValueError,
            r"padded input size per channel \(5, 5\) is smaller than the \(dilated\) kernel size \(7, 7\)",
            lambda: MF.conv2d(X2, W2, dilation=3),
        ),
        (
            ValueError,
            r"padded input size per channel \(2,\) is smaller than the \(dilated\) kernel size \(3,\)",
            lambda: MF.conv1d(torch.randn(1, 3, 2), W2[:, :, 0]),
        ),
        (
            ValueError,
            r"output_padding must be smaller than either stride or dilation",
            lambda: MF.conv_transpose2d(X2, torch.randn(3, 2, 3, 3), stride=2, output_padding=2),
        ),
        (
            ValueError,
            r"the output size \(-1, -1\) is too small",
            lambda: MF.conv_transpose2d(torch.randn(1, 3, 1, 1), torch.randn(3, 2, 1, 1), padding=1),
        ),
    ],
)
def test_clear_errors(error: type[Exception], match: str, call: Callable[[], object]) -> None:
    with pytest.raises(error, match=match):
        call()


def test_module_errors() -> None:
    with pytest.raises(ValueError, match=r"Expected 3D \(unbatched\) or 4D \(batched\) input to conv2d"):
        manual_bp.Conv2d(3, 4, 3)(torch.randn(1, 2, 3, 5, 5))
    with pytest.raises(ValueError, match="expected input with 3 channels"):
        manual_bp.Conv2d(3, 4, 3, padding_mode="reflect", padding=1)(torch.randn(1, 2, 5, 5))
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        manual_bp.Conv2d(3, 4, 3, padding_mode="mirror")  # native's constructor check, inherited
