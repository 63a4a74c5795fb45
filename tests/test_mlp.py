"""MLP: fused and per-layer forms against each other and a native ``nn.Sequential`` twin."""

from __future__ import annotations

import copy

import pytest
import torch
from _samples import half_squared_error_native, saved_storage_bytes
from torch import nn
from torch.autograd import gradcheck, gradgradcheck
from torch.testing import assert_close, make_tensor

import manual_bp
from manual_bp.ops import ACTIVATION_NAMES as ACTIVATIONS
from manual_bp.ops import get_activation
from manual_bp.ops.network import MLPFunction, MLPLossFunction, _net, mlp, mlp_loss

NAMES = list(ACTIVATIONS)
F64 = torch.float64


def native_twin(net: manual_bp.MLP) -> nn.Sequential:
    """``nn.Linear`` + native activation modules carrying ``net``'s weights."""
    mods: list[nn.Module] = []
    for layer, act in zip(net.layers, net.activations, strict=True):
        lin = nn.Linear(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            dtype=layer.weight.dtype,
        )
        mods += [lin, act.native_module()]
    twin = nn.Sequential(*mods)
    twin.load_state_dict(to_sequential(net.state_dict()))
    return twin


def to_sequential(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``layers.i.weight`` -> ``{2i}.weight`` (Linear, activation, Linear, ... in a Sequential)."""
    out = {}
    for key, value in state.items():
        _, i, name = key.split(".")
        out[f"{2 * int(i)}.{name}"] = value
    return out


def from_sequential(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"layers.{int(k.split('.')[0]) // 2}.{k.split('.')[1]}": v for k, v in state.items()}


def grads_of(model: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Output, input gradient and parameter gradients of ``model`` for ``out.backward(grad_out)``."""
    x = x.detach().requires_grad_(True)
    out = model(x)
    params = list(model.parameters())
    grads = torch.autograd.grad(out, [x, *params], grad_out)
    return (out.detach(), *grads)


# ----------------------------------------------------------------------------- registry, construction


def test_registry_lists_every_activation() -> None:
    # the original ten and the eight parameter-free ones added with the op registry (prelu, learned,
    # is tested below); an op added later adds its name
    assert set(NAMES) >= {
        "selu",
        "mish",
        "hardswish",
        "hardsigmoid",
        "hardtanh",
        "relu6",
        "logsigmoid",
        "softsign",
        "sigmoid",
        "tanh",
        "relu",
        "leaky_relu",
        "elu",
        "softplus",
        "gelu",
        "gelu_tanh",
        "silu",
        "identity",
    }
    for name in NAMES:
        assert get_activation(name).name == name


def test_learned_activation_by_name() -> None:
    """MLP(activation="prelu"): one manual PReLU per layer, each with its own slope in the
    state_dict; its gradients are native autograd's; the engine, which updates W and b only, refuses."""
    torch.manual_seed(3)
    net = manual_bp.MLP([3, 4, 5, 2], "prelu", output_activation="identity", dtype=torch.float64)
    assert [type(m) for m in net.activation_layers] == [manual_bp.PReLU, manual_bp.PReLU, manual_bp.Identity]
    assert [k for k in net.state_dict() if k.startswith("activation_layers")] == [
        "activation_layers.0.weight",
        "activation_layers.1.weight",
    ]
    twin = manual_bp.native_twin(net)
    assert not any(isinstance(m, manual_bp.PReLU) for m in twin.modules())
    x, t = torch.randn(6, 3, dtype=torch.float64), torch.rand(6, 2, dtype=torch.float64)
    net.loss(x, t).backward()
    half_squared_error_native(twin(x), t).backward()
    for (name, p), (twin_name, q) in zip(net.named_parameters(), twin.named_parameters(), strict=True):
        assert name == twin_name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="learned activation.*torch.optim"):
        manual_bp.engine.sgd_step(net, x, t, 0.1)
    with pytest.raises(ValueError, match="cannot be swapped"):
        net.activation = "tanh"
    with pytest.raises(ValueError, match="'prelu' is a learned activation"):
        get_activation("prelu")


def test_unknown_activation_lists_known_names() -> None:
    with pytest.raises(ValueError, match="unknown activation 'swish'.*sigmoid, tanh, relu.*identity"):
        manual_bp.MLP([2, 3], activation="swish")
    with pytest.raises(ValueError, match="known activations"):
        manual_bp.MLP([2, 3], output_activation="softmax")
    with pytest.raises(TypeError, match="activation must be a name"):
        manual_bp.MLP([2, 3], activation=3)
    with pytest.raises(ValueError, match="unsupported activation module Softmax"):
        manual_bp.MLP([2, 3], activation=nn.Softmax(-1))


@pytest.mark.parametrize(
    ("module", "name"),
    [
        (manual_bp.LeakyReLU(0.2), "leaky_relu"),
        (nn.GELU(approximate="tanh"), "gelu_tanh"),
        (nn.ELU(0.5), "elu"),
        (manual_bp.Softplus(2.0, 5.0), "softplus"),
        (nn.Identity(), "identity"),
    ],
)
def test_activation_module_carries_its_parameters(module: nn.Module, name: str) -> None:
    net = manual_bp.MLP([3, 4, 2], activation=module, dtype=F64)
    assert net.activation.name == name
    twin = native_twin(net)
    assert type(twin[1]) is type(module) or isinstance(module, type(twin[1]))
    x = make_tensor((5, 3), dtype=F64, device="cpu", low=-3, high=3)
    assert_close(net(x), twin(x))


@pytest.mark.parametrize(
    ("sizes", "error", "match"),
    [
        ([3], ValueError, "at least two entries"),
        ([], ValueError, "at least two entries"),
        ([3, 0, 2], ValueError, "must be positive, got 0"),
        ([3, -4], ValueError, "must be positive, got -4"),
        ([3, 2.5], TypeError, "must hold ints, got 2.5"),
        ([3, True], TypeError, "must hold ints"),
        ("34", TypeError, "sequence of ints"),
        (5, TypeError, "sequence of ints"),
    ],
)
def test_bad_sizes(sizes: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        manual_bp.MLP(sizes)  # type: ignore[arg-type]


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_structure_and_state_dict_keys(bias: bool) -> None:
    fused = manual_bp.MLP([4, 6, 5, 3], bias=bias)
    unfused = manual_bp.MLP([4, 6, 5, 3], bias=bias, fused=False)
    expected = [f"layers.{i}.{p}" for i in range(3) for p in (("weight", "bias") if bias else ("weight",))]
    assert list(fused.state_dict()) == expected == list(unfused.state_dict())
    assert all(type(layer) is manual_bp.Linear for layer in fused.layers)
    assert [tuple(layer.weight.shape) for layer in fused.layers] == [(6, 4), (5, 6), (3, 5)]
    assert fused.activations == (get_activation("sigmoid"),) * 3  # output_activation=None: f everywhere
    assert "sizes=[4, 6, 5, 3]" in repr(fused) and "fused=True" in repr(fused)


def test_output_activation_and_setters() -> None:
    net = manual_bp.MLP([3, 4, 4, 2], activation="tanh", output_activation="identity", dtype=F64)
    assert [a.name for a in net.activations] == ["tanh", "tanh", "identity"]
    x = make_tensor((6, 3), dtype=F64, device="cpu")
    y = net(x)
    net.output_activation = "sigmoid"
    assert_close(net(x), torch.sigmoid(y))
    net.activation = "relu"
    assert [a.name for a in net.activations] == ["relu", "relu", "sigmoid"]
    net.fused = False
    y_unfused = net(x)
    net.fused = True
    assert_close(net(x), y_unfused)


# ----------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("output_activation", [None, "identity"], ids=["f-out", "linear-out"])
@pytest.mark.parametrize("activation", NAMES)
def test_fused_unfused_native_agree(
    activation: str, output_activation: str | None, bias: bool, dtype: torch.dtype
) -> None:
    torch.manual_seed(0)
    net = manual_bp.MLP([5, 8, 7, 3], activation, output_activation, bias=bias, dtype=dtype)
    unfused = copy.deepcopy(net)
    unfused.fused = False
    twin = native_twin(net)
    x = make_tensor((6, 5), dtype=dtype, device="cpu", low=-2, high=2)
    grad_out = make_tensor((6, 3), dtype=dtype, device="cpu", low=-1, high=1)
    reference = grads_of(twin, x, grad_out)
    for model in (net, unfused):
        result = grads_of(model, x, grad_out)
        assert len(result) == len(reference)
        for got, want in zip(result, reference, strict=True):
            assert got.shape == want.shape
            assert_close(got, want)


@pytest.mark.parametrize("activation", ["sigmoid", "gelu", "identity"])
def test_state_dict_moves_between_forms(activation: str) -> None:
    torch.manual_seed(1)
    source = manual_bp.MLP([4, 6, 3], activation, dtype=F64)
    x = make_tensor((5, 4), dtype=F64, device="cpu")
    expected = source(x)
    unfused = manual_bp.MLP([4, 6, 3], activation, fused=False, dtype=F64)
    unfused.load_state_dict(source.state_dict())
    assert_close(unfused(x), expected, rtol=0, atol=0)
    twin = native_twin(manual_bp.MLP([4, 6, 3], activation, dtype=F64))
    twin.load_state_dict(to_sequential(unfused.state_dict()))
    assert_close(twin(x), expected)
    back = manual_bp.MLP([4, 6, 3], activation, dtype=F64)
    back.load_state_dict(from_sequential(twin.state_dict()))
    assert_close(back(x), expected, rtol=0, atol=0)


SHAPES = {
    "no-batch": (4,),
    "empty": (0, 4),
    "batch-8": (8, 4),
    "2x3": (2, 3, 4),
    "5d": (2, 1, 3, 2, 4),
}


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("activation", ["tanh", "silu"])
def test_leading_dims(shape: tuple[int, ...], activation: str) -> None:
    torch.manual_seed(2)
    net = manual_bp.MLP([4, 5, 3], activation, dtype=F64)
    twin = native_twin(net)
    x = make_tensor(shape, dtype=F64, device="cpu")
    grad_out = make_tensor((*shape[:-1], 3), dtype=F64, device="cpu")
    out = net(x)
    assert out.shape == (*shape[:-1], 3)
    for got, want in zip(grads_of(net, x, grad_out), grads_of(twin, x, grad_out), strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("activation", ["sigmoid", "softplus"])
def test_non_contiguous_input_and_grad_output(activation: str) -> None:
    torch.manual_seed(3)
    net = manual_bp.MLP([4, 6, 3], activation)
    twin = native_twin(net)
    x = make_tensor((4, 7), dtype=torch.float32, device="cpu").t()  # (7, 4), transposed
    grad_out = make_tensor((3, 7), dtype=torch.float32, device="cpu").t()
    assert not x.is_contiguous() and not grad_out.is_contiguous()
    for got, want in zip(grads_of(net, x, grad_out), grads_of(twin, x, grad_out), strict=True):
        assert_close(got, want)


def test_grad_fn_is_the_fused_function() -> None:
    net = manual_bp.MLP([3, 4, 2])
    x = torch.randn(5, 3)
    assert net(x).grad_fn.name() == "MLPFunctionBackward"
    net.fused = False
    assert net(x).grad_fn.name() == "SigmoidFunctionBackward"
    net.output_activation = "identity"
    assert net(x).grad_fn.name() == "LinearFunctionBackward"


@pytest.mark.parametrize("frozen", [0, 1], ids=["first-frozen", "middle-frozen"])
def test_skips_gradients_nobody_needs(frozen: int) -> None:
    torch.manual_seed(4)
    net = manual_bp.MLP([3, 5, 4, 2], "tanh", dtype=F64)
    twin = native_twin(net)
    net.layers[frozen].requires_grad_(False)
    twin[2 * frozen].requires_grad_(False)
    x = make_tensor((6, 3), dtype=F64, device="cpu")  # no requires_grad: no input gradient
    net(x).square().sum().backward()
    twin(x).square().sum().backward()
    assert net.layers[frozen].weight.grad is None and net.layers[frozen].bias.grad is None
    assert all(
        p.grad is not None for i, layer in enumerate(net.layers) if i != frozen for p in layer.parameters()
    )
    for mine, theirs in zip(net.parameters(), twin.parameters(), strict=True):
        if theirs.grad is not None:
            assert_close(mine.grad, theirs.grad)
    # only the input needs a gradient
    net.requires_grad_(False)
    twin.requires_grad_(False)
    x.requires_grad_(True)
    (g_mine,) = torch.autograd.grad(net(x).sum(), x)
    (g_theirs,) = torch.autograd.grad(twin(x).sum(), x)
    assert_close(g_mine, g_theirs)


# ----------------------------------------------------------------------------- gradcheck


CHECK_ACTS = [*NAMES, "leaky_relu(-0.1)", "elu(-0.5)"]


def _act(spec: str) -> object:
    if spec == "leaky_relu(-0.1)":
        return nn.LeakyReLU(-0.1)  # f′ needs x here: the input is saved
    if spec == "elu(-0.5)":
        return nn.ELU(-0.5)
    return spec


@pytest.mark.parametrize(
    "output_activation",
    [  # f-out adds the slow (full Jacobian) gradcheck: marked slow, out of the quick subset
        pytest.param(None, id="f-out", marks=pytest.mark.slow),
        pytest.param("identity", id="linear-out"),
        pytest.param("gelu", id="gelu-out"),
    ],
)
@pytest.mark.parametrize("activation", CHECK_ACTS)
def test_gradcheck_and_gradgradcheck(activation: str, output_activation: str | None) -> None:
    """The raw Function, extra outputs included (their gradients enter the recursion too)."""
    torch.manual_seed(5)
    act = get_activation(_act(activation))
    out_act = act if output_activation is None else get_activation(output_activation)
    net = _net((act, act, out_act), True)
    x = make_tensor((4, 3), dtype=F64, device="cpu", low=-2, high=2, requires_grad=True)
    sizes = [3, 4, 3, 2]
    params = []
    for d_in, d_out in zip(sizes, sizes[1:], strict=False):
        params.append(make_tensor((d_out, d_in), dtype=F64, device="cpu", low=-1, high=1, requires_grad=True))
        params.append(make_tensor((d_out,), dtype=F64, device="cpu", low=-1, high=1, requires_grad=True))

    def fn(x: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return MLPFunction.apply(x, net, *params)

    assert gradcheck(fn, (x, *params), fast_mode=True)
    assert gradgradcheck(fn, (x, *params), fast_mode=True)
    if output_activation is None:  # the slow mode on the small case
        assert gradcheck(fn, (x, *params))


@pytest.mark.parametrize("activation", ["sigmoid", "silu", "identity"])
def test_single_layer(activation: str) -> None:
    torch.manual_seed(11)
    net = manual_bp.MLP([3, 2], activation, dtype=F64)
    x = make_tensor((4, 3), dtype=F64, device="cpu", low=-2, high=2, requires_grad=True)
    params = list(net.parameters())
    assert gradcheck(lambda x, *p: net(x), (x, *params))
    assert gradgradcheck(lambda x, *p: net(x), (x, *params))
    grad_out = make_tensor((4, 2), dtype=F64, device="cpu")
    for got, want in zip(grads_of(net, x, grad_out), grads_of(native_twin(net), x, grad_out), strict=True):
        assert_close(got, want)


@pytest.mark.parametrize("activation", ["sigmoid", "gelu", "relu"])
def test_gradgradcheck_through_module_without_bias(activation: str) -> None:
    torch.manual_seed(6)
    x = make_tensor((3, 2), dtype=F64, device="cpu", low=-2, high=2, requires_grad=True)
    weights = [
        make_tensor((3, 2), dtype=F64, device="cpu", low=-1, high=1, requires_grad=True),
        make_tensor((2, 3), dtype=F64, device="cpu", low=-1, high=1, requires_grad=True),
    ]

    def fn(x: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor) -> torch.Tensor:
        return mlp(x, [w0, w1], None, activation)

    assert gradcheck(fn, (x, *weights))
    assert gradgradcheck(fn, (x, *weights))


def test_vmap_grad_per_sample() -> None:
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(7)
    net = manual_bp.MLP([3, 4, 2], "gelu", dtype=F64)
    params = {k: v.detach() for k, v in net.named_parameters()}
    x = make_tensor((5, 3), dtype=F64, device="cpu")
    t = make_tensor((5, 2), dtype=F64, device="cpu")

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
        return manual_bp.functional.half_squared_error(functional_call(net, p, (xi,)), ti)

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, t)
    for i in range(5):
        expected = torch.autograd.grad(loss(dict(net.named_parameters()), x[i], t[i]), list(net.parameters()))
        for (name, _), want in zip(net.named_parameters(), expected, strict=True):
            assert_close(per_sample[name][i], want)


@pytest.mark.slow
def test_torch_compile_fullgraph_gives_eager_gradients() -> None:
    torch.manual_seed(10)
    net = manual_bp.MLP([3, 4, 2], "gelu", output_activation="sigmoid", dtype=F64)
    x = make_tensor((5, 3), dtype=F64, device="cpu")
    grad_out = make_tensor((5, 2), dtype=F64, device="cpu")
    compiled = torch.compile(net, fullgraph=True)
    for got, want in zip(grads_of(compiled, x, grad_out), grads_of(net, x, grad_out), strict=True):
        assert_close(got, want)


# ----------------------------------------------------------------------------- memory


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct non-parameter storages autograd saves for one forward."""
    return saved_storage_bytes(lambda: model(x), list(model.parameters()))


@pytest.mark.parametrize("depth", [2, 8])
@pytest.mark.parametrize("activation", NAMES)
def test_saved_memory_at_most_native(activation: str, depth: int) -> None:
    width, batch = 32, 16
    net = manual_bp.MLP([width] * (depth + 1), activation)
    x = torch.randn(batch, width)
    fused, native = saved_bytes(net, x), saved_bytes(native_twin(net), x)
    assert fused <= native
    one = batch * width * 4  # bytes of one (batch, width) float32 activation
    # The input plus one tensor per layer (y_n, or x_n where f′ needs x); none for the identity output.
    assert fused == one * (1 + depth - (activation == "identity"))
    if activation in ("gelu", "gelu_tanh", "silu", "softplus"):
        # native keeps x_n (activation) and y_n (next Linear) per hidden layer; the fused path x_n only
        assert native == one * 2 * depth
        if depth == 8:
            assert fused / native <= 0.6


# ----------------------------------------------------------------------------- dtypes, autocast


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_close_to_float64(dtype: torch.dtype) -> None:
    """Fused and per-layer forms round differently (``g − (g y) y`` in place vs ``g (1 − y²)``), so
    both are compared with the float64 result at the dtype's precision (a few units of its eps:
    float16 eps ≈ 1e-3, bfloat16 eps ≈ 8e-3) rather than bit for bit with each other."""
    torch.manual_seed(8)
    tol = {torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]
    net = manual_bp.MLP([4, 8, 3], "tanh", dtype=dtype)
    unfused = copy.deepcopy(net)
    unfused.fused = False
    exact = copy.deepcopy(net).double()
    # inputs in [-1, 1]: tanh stays off saturation, where 1 − y² cancels in any low precision
    x = make_tensor((5, 4), dtype=dtype, device="cpu", low=-1, high=1)
    grad_out = make_tensor((5, 3), dtype=dtype, device="cpu", low=-1, high=1)
    want = grads_of(exact, x.double(), grad_out.double())
    for model in (net, unfused):
        for got, ref in zip(grads_of(model, x, grad_out), want, strict=True):
            assert got.dtype == dtype
            assert_close(got.double(), ref, atol=tol, rtol=tol)


def test_autocast_like_native() -> None:
    torch.manual_seed(9)
    net = manual_bp.MLP([4, 8, 3], "gelu")
    twin = native_twin(net)
    x = torch.randn(5, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, want = net(x), twin(x)
    assert out.dtype == want.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in net.parameters())
    assert_close(out, want)


# ----------------------------------------------------------------------------- errors


def test_input_errors() -> None:
    net = manual_bp.MLP([3, 4, 2])
    with pytest.raises(ValueError, match=r"input of shape \(\*, 3\).*got shape \(5, 4\)"):
        net(torch.randn(5, 4))
    with pytest.raises(TypeError, match="floating-point"):
        net(torch.ones(5, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="same dtype"):
        net(torch.randn(5, 3, dtype=F64))
    with pytest.raises(ValueError, match="0-d"):
        net(torch.tensor(1.0))
    with pytest.raises(TypeError, match="torch.Tensor"):
        net([1.0, 2.0, 3.0])  # type: ignore[arg-type]


def test_functional_mlp_errors() -> None:
    x = torch.randn(2, 3)
    w0, w1 = torch.randn(4, 3), torch.randn(2, 4)
    assert mlp(x, [w0, w1], [torch.zeros(4), torch.zeros(2)], "relu").shape == (2, 2)
    with pytest.raises(ValueError, match=r"weights\[1\] must have shape \(out_features, 4\)"):
        mlp(x, [w0, torch.randn(2, 5)])
    with pytest.raises(ValueError, match="one bias per weight"):
        mlp(x, [w0, w1], [torch.zeros(4)])
    with pytest.raises(ValueError, match=r"biases\[0\] must have shape \(4,\)"):
        mlp(x, [w0, w1], [torch.zeros(3), torch.zeros(2)])
    with pytest.raises(ValueError, match="at least one weight"):
        mlp(x, [])
    with pytest.raises(ValueError, match="known activations"):
        mlp(x, [w0, w1], activation="swish")


# ----------------------------------------------------------------------------- MLP.loss (network + error)


native_hse = half_squared_error_native  # the seed's ½‖y − t‖² per sample with native ops, reduced


def loss_grads(
    loss_fn: object, params: list[torch.Tensor], x: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """The loss and its gradients with respect to the input, the target and ``params``."""
    x = x.detach().requires_grad_(True)
    t = t.detach().requires_grad_(True)
    loss = loss_fn(x, t)  # type: ignore[operator]
    weight = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    grads = torch.autograd.grad(loss, [x, t, *params], weight)
    return (loss.detach(), *grads)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize(
    "output_activation", [None, "identity", "gelu"], ids=["f-out", "lin-out", "gelu-out"]
)
@pytest.mark.parametrize("activation", NAMES)
def test_loss_agrees_with_native(
    activation: str, output_activation: str | None, bias: bool, reduction: str
) -> None:
    """``net.loss(x, t)`` (fused and per-layer) against the native twin and a native ½‖y − t‖²."""
    torch.manual_seed(12)
    net = manual_bp.MLP([5, 8, 7, 3], activation, output_activation, bias=bias, dtype=F64)
    twin = native_twin(net)
    x = make_tensor((6, 5), dtype=F64, device="cpu", low=-2, high=2)
    t = make_tensor((6, 3), dtype=F64, device="cpu", low=-1, high=1)
    want = loss_grads(lambda x, t: native_hse(twin(x), t, reduction), list(twin.parameters()), x, t)
    for fused in (True, False):
        net.fused = fused
        got = loss_grads(lambda x, t: net.loss(x, t, reduction), list(net.parameters()), x, t)
        assert len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert a.shape == b.shape
            assert_close(a, b)


def test_loss_grad_fn_and_functional_form() -> None:
    torch.manual_seed(13)
    net = manual_bp.MLP([3, 4, 2], "silu", dtype=F64)
    x, t = torch.randn(5, 3, dtype=F64), torch.rand(5, 2, dtype=F64)
    loss = net.loss(x, t)
    assert loss.grad_fn.name() == "MLPLossFunctionBackward"
    weights = [layer.weight for layer in net.layers]
    biases = [layer.bias for layer in net.layers]
    assert_close(mlp_loss(x, t, weights, biases, "silu", reduction="mean"), loss, rtol=0, atol=0)
    assert manual_bp.functional.mlp_loss is mlp_loss
    assert manual_bp.functional.MLPLossFunction is MLPLossFunction
    net.fused = False
    assert net.loss(x, t).grad_fn.name() == "HalfSquaredErrorFunctionBackward"


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_loss_leading_dims_and_empty_batches(shape: tuple[int, ...], reduction: str) -> None:
    torch.manual_seed(14)
    net = manual_bp.MLP([4, 5, 3], "gelu", dtype=F64)
    twin = native_twin(net)
    x = make_tensor(shape, dtype=F64, device="cpu")
    t = make_tensor((*shape[:-1], 3), dtype=F64, device="cpu")
    loss = net.loss(x, t, reduction)
    assert loss.shape == (shape[:-1] if reduction == "none" else ())
    want = loss_grads(lambda x, t: native_hse(twin(x), t, reduction), list(twin.parameters()), x, t)
    got = loss_grads(lambda x, t: net.loss(x, t, reduction), list(net.parameters()), x, t)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, equal_nan=True)  # 'mean' of an empty batch is NaN (0/0), as natively


def test_loss_non_contiguous_input_and_target() -> None:
    torch.manual_seed(15)
    net = manual_bp.MLP([4, 6, 3], "softplus")
    twin = native_twin(net)
    x = make_tensor((4, 7), dtype=torch.float32, device="cpu").t()
    t = make_tensor((3, 7), dtype=torch.float32, device="cpu").t()
    assert not x.is_contiguous() and not t.is_contiguous()
    want = loss_grads(lambda x, t: native_hse(twin(x), t, "mean"), list(twin.parameters()), x, t)
    got = loss_grads(lambda x, t: net.loss(x, t), list(net.parameters()), x, t)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)


def test_loss_skips_gradients_nobody_needs() -> None:
    torch.manual_seed(16)
    net = manual_bp.MLP([3, 5, 4, 2], "tanh", dtype=F64)
    twin = native_twin(net)
    net.layers[0].requires_grad_(False)
    twin[0].requires_grad_(False)
    x, t = torch.randn(6, 3, dtype=F64), torch.rand(6, 2, dtype=F64)
    net.loss(x, t).backward()
    native_hse(twin(x), t, "mean").backward()
    assert net.layers[0].weight.grad is None and net.layers[0].bias.grad is None
    for mine, theirs in zip(net.parameters(), twin.parameters(), strict=True):
        if theirs.grad is not None:
            assert_close(mine.grad, theirs.grad)


# Every case runs the slow (full Jacobian) gradcheck, about 0.4 s each: the quick subset
# (-m "not slow") keeps sigmoid, f-out, bias with every reduction; the other cases are marked slow.
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "output_activation",
    [
        pytest.param(None, id="f-out"),
        pytest.param("identity", id="linear-out", marks=pytest.mark.slow),
        pytest.param("gelu", id="gelu-out", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize(
    "bias", [pytest.param(True, id="bias"), pytest.param(False, id="nobias", marks=pytest.mark.slow)]
)
@pytest.mark.parametrize(
    "activation",
    [
        "sigmoid",
        pytest.param("relu", marks=pytest.mark.slow),
        pytest.param("gelu", marks=pytest.mark.slow),
        pytest.param("silu", marks=pytest.mark.slow),
        pytest.param("leaky_relu(-0.1)", marks=pytest.mark.slow),
    ],
)
def test_loss_gradcheck_and_gradgradcheck(
    activation: str, output_activation: str | None, reduction: str, bias: bool
) -> None:
    """The raw Function, target and extra outputs included (their gradients enter BP1 and the recursion)."""
    torch.manual_seed(17)
    act = get_activation(_act(activation))
    out_act = act if output_activation is None else get_activation(output_activation)
    net = _net((act, act, out_act), bias)
    x = make_tensor((4, 3), dtype=F64, device="cpu", low=-2, high=2, requires_grad=True)
    t = make_tensor((4, 2), dtype=F64, device="cpu", low=-1, high=1, requires_grad=True)
    sizes = [3, 4, 3, 2]
    params = []
    for d_in, d_out in zip(sizes, sizes[1:], strict=False):
        params.append(make_tensor((d_out, d_in), dtype=F64, device="cpu", low=-1, high=1, requires_grad=True))
        if bias:
            params.append(make_tensor((d_out,), dtype=F64, device="cpu", low=-1, high=1, requires_grad=True))

    def every_output(x: torch.Tensor, t: torch.Tensor, *params: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return MLPLossFunction.apply(x, t, reduction, net, *params)

    def loss_only(x: torch.Tensor, t: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return MLPLossFunction.apply(x, t, reduction, net, *params)[0]

    def all_at_once(x: torch.Tensor, t: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        """Every output in one scalar, so that gradients reach the loss and the extras together."""
        loss, *extras = every_output(x, t, *params)
        return loss.sum() + sum(
            (e * torch.linspace(-1, 1, e.numel(), dtype=F64).view_as(e)).sum() for e in extras
        )

    assert gradcheck(every_output, (x, t, *params), fast_mode=True)
    assert gradgradcheck(every_output, (x, t, *params), fast_mode=True)
    assert gradcheck(loss_only, (x, t, *params))
    assert gradgradcheck(loss_only, (x, t, *params))
    assert gradcheck(all_at_once, (x, t, *params))


def test_loss_vmap_grad_per_sample() -> None:
    from torch.func import grad, vmap

    torch.manual_seed(18)
    w = [torch.randn(4, 3, dtype=F64), torch.randn(2, 4, dtype=F64)]
    b = [torch.randn(4, dtype=F64), torch.randn(2, dtype=F64)]
    x = make_tensor((5, 3), dtype=F64, device="cpu")
    t = make_tensor((5, 2), dtype=F64, device="cpu")

    def loss(params: list[torch.Tensor], xi: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
        return mlp_loss(xi, ti, params[:2], params[2:], "gelu")

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))([*w, *b], x, t)
    for i in range(5):
        params = [p.clone().requires_grad_(True) for p in (*w, *b)]
        twin = native_hse(mlp(x[i], params[:2], params[2:], "gelu"), t[i], "mean")
        for got, want in zip(per_sample, torch.autograd.grad(twin, params), strict=True):
            assert_close(got[i], want)


@pytest.mark.slow
def test_loss_torch_compile_fullgraph_gives_eager_gradients() -> None:
    torch.manual_seed(19)
    net = manual_bp.MLP([3, 4, 2], "gelu", output_activation="sigmoid", dtype=F64)
    x = make_tensor((5, 3), dtype=F64, device="cpu")
    t = make_tensor((5, 2), dtype=F64, device="cpu")
    compiled = torch.compile(lambda x, t: net.loss(x, t), fullgraph=True)
    got = loss_grads(compiled, list(net.parameters()), x, t)
    want = loss_grads(lambda x, t: net.loss(x, t), list(net.parameters()), x, t)
    for a, b in zip(got, want, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("depth", [1, 2, 4, 8])
@pytest.mark.parametrize("activation", NAMES)
def test_loss_saves_one_tensor_per_layer(activation: str, depth: int) -> None:
    """``net.loss`` saves ``y_n`` or ``x_n`` per layer and nothing else: at most native's step, and
    half of it where ``f′`` needs ``x`` (native keeps x_n for the activation and y_n for the next
    Linear or the loss)."""
    width, batch = 32, 16
    net = manual_bp.MLP([width] * (depth + 1), activation)
    twin = native_twin(net)
    x, t = torch.randn(batch, width), torch.rand(batch, width)
    held = [*net.parameters(), *twin.parameters(), x, t]
    fused = saved_storage_bytes(lambda: net.loss(x, t), held)
    separate = saved_storage_bytes(lambda: manual_bp.HalfSquaredError()(net(x), t), held)
    native = saved_storage_bytes(lambda: native_hse(twin(x), t, "mean"), held)
    one = batch * width * 4  # bytes of one (batch, width) float32 activation
    assert fused == one * depth
    assert fused <= separate <= native
    if activation in ("gelu", "gelu_tanh", "silu", "softplus"):
        assert native == one * 2 * depth
        assert fused / native <= 0.6


@pytest.mark.parametrize("depth", [1, 2, 4])
@pytest.mark.parametrize("activation", NAMES)
def test_autocast_saves_at_most_native(activation: str, depth: int) -> None:
    """Under autocast what is kept are bfloat16 casts (the input, the weights) and activations. The
    fused step keeps ``y_N`` once, in bfloat16, and the error runs in float32 inside the same
    Function: less than the network and a separate loss (which keeps a float32 copy of ``y_N``)
    and at most native's step; ``W_0`` (whose cast is new memory) only when the input needs a
    gradient."""
    width, batch = 32, 16
    net = manual_bp.MLP([width] * (depth + 1), activation)
    twin = native_twin(net)
    x, t = torch.randn(batch, width), torch.rand(batch, width)
    held = [*net.parameters(), *twin.parameters(), x, t]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = saved_storage_bytes(lambda: net.loss(x, t), held)
        separate = saved_storage_bytes(lambda: manual_bp.HalfSquaredError()(net(x), t), held)
        native = saved_storage_bytes(lambda: native_hse(twin(x).float(), t, "mean"), held)
        network = saved_storage_bytes(lambda: net(x), held)
        native_network = saved_storage_bytes(lambda: twin(x), held)
    assert fused < separate <= native
    assert network <= native_network
    cast = batch * width * 2  # one (batch, width) bfloat16 tensor; the weights are (width, width)
    assert fused == cast * (1 + depth) + 2 * cast * (depth - 1)  # x, one per layer; W_1, …, W_{N−1}


def test_autocast_input_gradient_keeps_w0() -> None:
    """With an input that needs a gradient, ``W_0`` is kept (``∂c/∂y_0 = δ_1 W_0``) and the input
    gradient equals native's under autocast."""
    torch.manual_seed(23)
    net = manual_bp.MLP([4, 8, 3], "tanh")
    twin = native_twin(net)
    x, t = torch.randn(5, 4, requires_grad=True), torch.rand(5, 3)
    x_twin = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net.loss(x, t)
        want = native_hse(twin(x_twin).float(), t, "mean")
    loss.backward()
    want.backward()
    tol = 8 * torch.finfo(torch.bfloat16).eps  # as in test_loss_autocast_like_native
    assert x.grad.dtype == torch.float32
    assert_close(x.grad, x_twin.grad, rtol=tol, atol=tol)


def test_loss_autocast_like_native() -> None:
    """Under autocast the network runs in bfloat16 and the error in float32, as a native
    ``nn.Sequential`` and a native ½‖y − t‖² on a float32 cast (what ``mse_loss`` does) would."""
    torch.manual_seed(20)
    net = manual_bp.MLP([4, 8, 3], "gelu")
    twin = native_twin(net)
    x, t = torch.randn(5, 4), torch.rand(5, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = net.loss(x, t)
        want = native_hse(twin(x).float(), t, "mean")
    assert loss.dtype == want.dtype == torch.float32
    assert_close(loss, want)
    loss.backward()
    want.backward()
    # both backwards run in bfloat16 and round after different ops (the native kernels once, the
    # explicit formulas after each of their few ops): 8 bfloat16 eps, as in test_transforms.py
    tol = 8 * torch.finfo(torch.bfloat16).eps
    for mine, theirs in zip(net.parameters(), twin.parameters(), strict=True):
        assert mine.grad.dtype == torch.float32
        assert_close(mine.grad, theirs.grad, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_loss_low_precision_close_to_float64(dtype: torch.dtype) -> None:
    """As ``test_low_precision_close_to_float64``: compared with the float64 result at the dtype's
    precision (a few units of its eps: float16 ≈ 1e-3, bfloat16 ≈ 8e-3)."""
    torch.manual_seed(22)
    tol = {torch.float16: 1e-2, torch.bfloat16: 6e-2}[dtype]
    net = manual_bp.MLP([4, 8, 3], "tanh", dtype=dtype)
    exact = copy.deepcopy(net).double()
    x = make_tensor((5, 4), dtype=dtype, device="cpu", low=-1, high=1)
    t = make_tensor((5, 3), dtype=dtype, device="cpu", low=-1, high=1)
    want = loss_grads(lambda x, t: exact.loss(x, t), list(exact.parameters()), x.double(), t.double())
    got = loss_grads(lambda x, t: net.loss(x, t), list(net.parameters()), x, t)
    for a, b in zip(got, want, strict=True):
        assert a.dtype == dtype
        assert_close(a.double(), b, atol=tol, rtol=tol)


def test_loss_errors() -> None:
    net = manual_bp.MLP([3, 4, 2])
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"target shape \(5, 3\) must equal the output shape \(5, 2\)"):
        net.loss(x, torch.rand(5, 3))
    with pytest.raises(TypeError, match="target must be a floating-point tensor.*got dtype torch.int64"):
        net.loss(x, torch.ones(5, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="target must be a torch.Tensor, got list"):
        net.loss(x, [[0.0, 1.0]] * 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="same dtype"):
        net.loss(x, torch.rand(5, 2, dtype=F64))
    with pytest.raises(ValueError, match="reduction must be 'mean', 'sum' or 'none', got 'avg'"):
        net.loss(x, torch.rand(5, 2), "avg")
    with pytest.raises(ValueError, match=r"input of shape \(\*, 3\).*got shape \(5, 4\)"):
        net.loss(torch.randn(5, 4), torch.rand(5, 2))
    w0, w1 = torch.randn(4, 3), torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"target shape \(5, 4\) must equal the output shape \(5, 2\)"):
        mlp_loss(x, torch.rand(5, 4), [w0, w1])
    with pytest.raises(ValueError, match=r"weights\[1\] must have shape \(out_features, 4\)"):
        mlp_loss(x, torch.rand(5, 2), [w0, torch.randn(2, 5)])
    with pytest.raises(ValueError, match="0-d"):
        mlp_loss(torch.tensor(1.0), torch.rand(2), [w0, w1])


@pytest.mark.parametrize("activation", ["tanh", "gelu", "identity"])
def test_gradcheck_with_an_input_that_needs_no_gradient(activation: str) -> None:
    """Then ``W_0`` is not kept (only ``∂c/∂y_0`` uses it): gradients and second derivatives with
    respect to the parameters only, for the network and for the network with its error."""
    torch.manual_seed(33)
    net = manual_bp.MLP([3, 4, 2], activation, dtype=F64)
    params = [p.detach().clone().requires_grad_() for p in net.parameters()]
    x = make_tensor((5, 3), dtype=F64, device="cpu", low=-1, high=1)  # no gradient
    t = make_tensor((5, 2), dtype=F64, device="cpu", low=-1, high=1)
    acts = dict(activation=activation)

    def network(w0: torch.Tensor, b0: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
        return mlp(x, [w0, w1], [b0, b1], **acts)

    def with_error(w0: torch.Tensor, b0: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
        return mlp_loss(x, t, [w0, w1], [b0, b1], **acts, reduction="sum")

    for fn in (network, with_error):
        assert gradcheck(fn, params)
        assert gradgradcheck(fn, params)
    out = mlp(x, params[::2], params[1::2], activation)
    assert out.grad_fn.name() == "MLPFunctionBackward"
    assert_close(out, native_twin(net)(x))
