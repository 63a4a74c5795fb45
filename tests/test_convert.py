"""convert / revert on real architectures: outputs and gradients as native, SGD as native, exact revert.

Every comparison is float64. Transformers are built with ``dropout=0.0`` (their dropout is
functional inside attention, so its RNG use is not under the test's control); the CNN and the
residual network keep their ``nn.Dropout`` in training mode and reseed before each forward, which
gives both twins the same masks (manual ops draw no random numbers).
"""

from __future__ import annotations

import copy
import importlib
import pickle
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import manual_bp
from manual_bp.convert import conversion_report
from manual_bp.ops import ACTIVATIONS as REGISTRY_ACTIVATIONS
from manual_bp.ops import LEARNED_ACTIVATIONS

conv = importlib.import_module("manual_bp.convert")  # the module (manual_bp.convert is the function)

TOL = {"rtol": 0.0, "atol": 1e-10}


# --------------------------------------------------------------------------------------------
# Architectures written by others (torch.nn) and nested custom ones
# --------------------------------------------------------------------------------------------


class CNN(nn.Module):
    """Conv2d, BatchNorm2d, ReLU, MaxPool2d, Dropout, LayerNorm, Linear and activations: all convert."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.3)
        )
        self.norm = nn.LayerNorm(4 * 3 * 3)
        self.head = nn.Sequential(nn.Linear(36, 10), nn.SiLU(), nn.Dropout(0.2), nn.Linear(10, 3), nn.Tanh())

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.conv(x).flatten(1)))  # (N, 4, 3, 3) -> (N, 36) -> (N, 3)


class Block(nn.Module):
    """A residual block whose layers live in a ModuleDict."""

    def __init__(self, width: int, act: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(
            {"fc": nn.Linear(width, width), "act": act, "out": nn.Linear(width, width)}
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.parts["out"](self.parts["act"](self.parts["fc"](x)))


class Nested(nn.Module):
    """Sequential, ModuleList, ModuleDict and custom modules, residual connections, a shared layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(5, 6), nn.LeakyReLU(0.1))
        acts = [nn.ELU(0.7), nn.Softplus(beta=2.0), nn.GELU(approximate="tanh"), nn.Sigmoid()]
        self.blocks = nn.ModuleList(Block(6, a) for a in acts)
        self.shared = nn.Linear(6, 6)  # called twice in forward
        self.heads = nn.ModuleDict({"a": nn.Sequential(nn.Identity(), nn.Linear(6, 2)), "b": nn.Linear(6, 2)})
        self.drop = nn.Dropout(0.25)

    def forward(self, x: Tensor) -> Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        h = self.drop(self.shared(torch.tanh(self.shared(h))) + h)  # torch.tanh stays native
        return self.heads["a"](h) * self.heads["b"](h)


def _encoder_layer(activation: str | nn.Module) -> Callable[[], tuple[nn.Module, tuple[Tensor, ...]]]:
    def make() -> tuple[nn.Module, tuple[Tensor, ...]]:
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation=activation, batch_first=True)
        return layer, (torch.randn(3, 5, 8),)

    return make


def _transformer() -> tuple[nn.Module, tuple[Tensor, ...]]:
    model = nn.Transformer(8, 2, 1, 1, 16, dropout=0.0, batch_first=True, activation=nn.ReLU())
    return model, (torch.randn(2, 5, 8), torch.randn(2, 4, 8))


ARCHITECTURES: dict[str, Callable[[], tuple[nn.Module, tuple[Tensor, ...]]]] = {
    "encoder_layer_gelu_string": _encoder_layer("gelu"),
    "encoder_layer_relu_default": _encoder_layer("relu"),
    "encoder_layer_gelu_module": _encoder_layer(nn.GELU()),
    "transformer": _transformer,
    "cnn": lambda: (CNN(), (torch.randn(4, 2, 6, 6),)),
    "nested_residual": lambda: (Nested(), (torch.randn(7, 5),)),
}


def _build(name: str) -> tuple[nn.Module, tuple[Tensor, ...]]:
    torch.manual_seed(0)
    model, inputs = ARCHITECTURES[name]()
    return model.double(), tuple(x.double() for x in inputs)


def _forward(model: nn.Module, inputs: tuple[Tensor, ...], seed: int = 1) -> Tensor:
    torch.manual_seed(seed)  # the same dropout masks for every model
    return model(*inputs)


def _loss(out: Tensor) -> Tensor:
    w = torch.linspace(-1.0, 1.0, out.numel(), dtype=out.dtype).reshape(out.shape)
    return (out * w).sum() + 0.5 * (out * out).sum()


def _graph_names(t: Tensor) -> set[str]:
    """The names of every backward node in ``t``'s graph."""
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(fn.name())
        stack.extend(f for f, _ in fn.next_functions)
    return names


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_outputs_and_gradients_equal_native(name: str) -> None:
    native, inputs = _build(name)
    manual = manual_bp.convert(native)
    out_n, out_m = _forward(native, inputs), _forward(manual, inputs)
    assert "LinearFunctionBackward" in _graph_names(out_m)  # manual layers really are in the graph
    assert "LinearFunctionBackward" not in _graph_names(out_n)
    torch.testing.assert_close(out_m, out_n, **TOL)
    _loss(out_n).backward()
    _loss(out_m).backward()
    grads_n = {k: p.grad for k, p in native.named_parameters()}
    grads_m = {k: p.grad for k, p in manual.named_parameters()}
    assert grads_m.keys() == grads_n.keys()
    for key, g in grads_n.items():
        assert g is not None and grads_m[key] is not None, key
        torch.testing.assert_close(grads_m[key], g, **TOL, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_five_sgd_steps_equal_native(name: str) -> None:
    native, inputs = _build(name)
    manual = manual_bp.convert(native)
    for model in (native, manual):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
        for step in range(5):
            opt.zero_grad()
            _loss(_forward(model, inputs, seed=step)).backward()
            opt.step()
    initial = dict(_build(name)[0].named_parameters())
    moved = [k for k, p in native.named_parameters() if not torch.equal(p, initial[k])]
    assert len(moved) > len(initial) // 2  # training happened
    assert all(p.isfinite().all() for p in native.parameters())
    for (key, p_n), (_, p_m) in zip(native.named_parameters(), manual.named_parameters(), strict=True):
        torch.testing.assert_close(p_m, p_n, **TOL, msg=lambda m, key=key: f"{key}: {m}")
    for (key, b_n), (_, b_m) in zip(native.named_buffers(), manual.named_buffers(), strict=True):
        torch.testing.assert_close(b_m, b_n, **TOL, msg=lambda m, key=key: f"buffer {key}: {m}")


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_revert_of_convert_is_exact(name: str) -> None:
    original, inputs = _build(name)
    back = manual_bp.revert(manual_bp.convert(original))
    assert [type(m) for m in back.modules()] == [type(m) for m in original.modules()]
    assert not any(type(m).__module__.startswith("manual_bp") for m in back.modules())
    assert torch.equal(_forward(back, inputs), _forward(original, inputs))
    assert back.state_dict().keys() == original.state_dict().keys()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in original.state_dict().items())


# --------------------------------------------------------------------------------------------
# What converts, and what the report says
# --------------------------------------------------------------------------------------------


def test_cnn_converts_every_layer() -> None:
    model = manual_bp.convert(CNN())
    for path, module in model.named_modules():
        if path and not isinstance(module, nn.Sequential):
            assert type(module).__module__ == "manual_bp.modules", (path, type(module))
    report = conversion_report(model)
    assert [e.path for e in report.manual] == [f"conv.{i}" for i in range(5)] + ["norm"] + [
        f"head.{i}" for i in range(5)
    ]
    assert report.native == [] and report.functions == []
    x = torch.randn(2, 2, 6, 6)
    assert model.eval()(x).grad_fn.name() == "TanhFunctionBackward"


def test_encoder_layer_with_string_activation_keeps_the_function() -> None:
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu")
    assert layer.activation is F.gelu  # torch stores the function, not a module
    model = manual_bp.convert(layer)
    assert model.activation is F.gelu  # kept: the twin runs the manual gelu in its place
    report = conversion_report(model)
    assert {e.path for e in report.manual} == {
        "",
        "self_attn",
        "self_attn.out_proj",
        "linear1",
        "linear2",
        "norm1",
        "norm2",
        "dropout",
        "dropout1",
        "dropout2",
    }
    assert report.native == [] and report.functions == [] and report.parameter_share == 1.0
    # out_proj is converted, and the manual MultiheadAttention runs its weight through manual linear
    assert isinstance(model.self_attn.out_proj, manual_bp.Linear)
    assert "never called" not in str(report)


def test_encoder_layer_with_module_activation_converts_it() -> None:
    model = manual_bp.convert(nn.TransformerEncoderLayer(8, 2, 16, activation=nn.GELU()))
    assert type(model.activation) is manual_bp.GELU
    assert model.activation_relu_or_gelu == 2  # torch's fast-path flag is unaffected
    assert conversion_report(model).functions == []


def test_attention_out_proj_keeps_its_subclass() -> None:
    mha = nn.MultiheadAttention(8, 2)
    model = manual_bp.convert(mha)
    cls = type(model.out_proj)
    assert isinstance(model.out_proj, nn.modules.linear.NonDynamicallyQuantizableLinear)
    assert isinstance(model.out_proj, manual_bp.Linear) and cls.__name__ == "NonDynamicallyQuantizableLinear"
    assert type(manual_bp.revert(model).out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear


class MyLinear(nn.Linear):
    def scale(self) -> Tensor:
        return self.weight.abs().mean()


class OwnForward(nn.Linear):
    def forward(self, input: Tensor) -> Tensor:
        return super().forward(input) * 2


def test_user_subclasses() -> None:
    model = nn.Sequential(MyLinear(3, 4), OwnForward(4, 2))
    manual = manual_bp.convert(model)
    assert isinstance(manual[0], MyLinear) and isinstance(manual[0], manual_bp.Linear)
    assert manual[0].scale() == model[0].scale()  # extra methods still work
    assert type(manual[1]) is OwnForward  # overrides forward: converting would change what it computes
    native = {e.path: e.note for e in conversion_report(manual).native}
    assert "overrides forward()" in native["1"]
    x = torch.randn(5, 3)
    torch.testing.assert_close(manual(x), model(x), rtol=0, atol=0)
    assert type(manual_bp.revert(manual)[0]) is MyLinear


def test_losses_convert_with_label_smoothing() -> None:
    model = nn.ModuleDict({"ce": nn.CrossEntropyLoss(), "smooth": nn.CrossEntropyLoss(label_smoothing=0.1)})
    manual = manual_bp.convert(model)
    assert type(manual["ce"]) is manual_bp.CrossEntropyLoss
    assert type(manual["smooth"]) is manual_bp.CrossEntropyLoss and manual["smooth"].label_smoothing == 0.1
    assert conversion_report(manual).native == []


def test_converting_the_root_module_and_every_activation() -> None:
    # every activation of the op registry in each of its settings, the learned ones, and Linear
    acts = [cls.module(**setting) for cls in REGISTRY_ACTIVATIONS for setting in cls.settings]
    acts += [manual.__mro__[1]() for manual in LEARNED_ACTIVATIONS.values()]
    acts += [nn.PReLU(3), nn.Linear(3, 3)]
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for act in acts:
        act = act.double()
        manual = manual_bp.convert(act)
        assert type(manual) is not type(act) and isinstance(manual, type(act))
        if not isinstance(act, nn.Identity):  # Identity has nothing to compute
            assert manual(x).grad_fn.name().endswith("FunctionBackward"), type(act)
        torch.testing.assert_close(manual(x), act(x), rtol=0, atol=1e-12)
        assert manual.extra_repr() == act.extra_repr()


def test_inplace_relu_is_computed_out_of_place() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(inplace=True))
    manual = manual_bp.convert(model)
    x = torch.randn(4, 3)
    torch.testing.assert_close(manual(x), model(x), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# What stays exactly as it was
# --------------------------------------------------------------------------------------------


def _frozen_model() -> nn.Module:
    model = Nested().double()
    model.stem[0].weight.requires_grad_(False)
    model.blocks[1].eval()
    return model


def test_inplace_false_leaves_the_model_untouched() -> None:
    model = _frozen_model()
    before = copy.deepcopy(model.state_dict())
    classes = [type(m) for m in model.modules()]
    manual = manual_bp.convert(model)
    assert manual is not model
    assert [type(m) for m in model.modules()] == classes
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p is not q for p, q in zip(model.parameters(), manual.parameters(), strict=True))


def test_inplace_true_changes_the_model_itself() -> None:
    model = _frozen_model()
    params = list(model.parameters())
    manual = manual_bp.convert(model, inplace=True)
    assert manual is model
    assert type(model.stem[0]) is manual_bp.Linear
    assert all(p is q for p, q in zip(params, model.parameters(), strict=True))  # the same Parameter objects
    back = manual_bp.revert(model, inplace=True)
    assert back is model and type(model.stem[0]) is nn.Linear


@pytest.mark.parametrize("inplace", [False, True])
def test_state_and_flags_are_preserved(inplace: bool) -> None:
    model = _frozen_model()
    expected = copy.deepcopy(model)
    calls: list[int] = []
    model.heads["b"].register_forward_hook(lambda module, args, out: calls.append(1))
    manual = manual_bp.convert(model, inplace=inplace)
    assert manual.state_dict().keys() == expected.state_dict().keys()
    assert all(torch.equal(manual.state_dict()[k], v) for k, v in expected.state_dict().items())
    for (n1, p1), (n2, p2) in zip(manual.named_parameters(), expected.named_parameters(), strict=True):
        assert (n1, p1.requires_grad, p1.dtype, p1.device) == (n2, p2.requires_grad, p2.dtype, p2.device)
    assert [m.training for m in manual.modules()] == [m.training for m in expected.modules()]
    assert not manual.blocks[1].training and manual.training
    manual(torch.randn(2, 5, dtype=torch.float64))
    assert calls == [1]  # the forward hook came along


def test_converted_model_pickles_even_in_a_fresh_process() -> None:
    model = manual_bp.convert(nn.MultiheadAttention(8, 2))
    data = pickle.dumps(model)
    cls = nn.modules.linear.NonDynamicallyQuantizableLinear
    twin = conv._TWINS.pop(cls)  # as in a new process: the twin class does not exist yet
    del vars(conv)[twin.__qualname__]
    loaded = pickle.loads(data)
    assert isinstance(loaded.out_proj, cls) and isinstance(loaded.out_proj, manual_bp.Linear)
    assert torch.equal(loaded.out_proj.weight, model.out_proj.weight)


# --------------------------------------------------------------------------------------------
# Warnings and errors
# --------------------------------------------------------------------------------------------


def test_nothing_to_convert_warns() -> None:
    model = nn.Sequential(nn.Bilinear(2, 2, 3), nn.Upsample(scale_factor=2))  # no op of the registry
    with pytest.warns(UserWarning, match="nothing to convert in Sequential .*no supported layer"):
        out = manual_bp.convert(model, inplace=True)
    assert out is model and type(model[0]) is nn.Bilinear
    with pytest.warns(UserWarning, match="manual already"):
        manual_bp.convert(manual_bp.convert(nn.Linear(2, 2)))
    with pytest.warns(UserWarning, match="nothing to revert"):
        manual_bp.revert(nn.Linear(2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        manual_bp.convert(nn.Linear(2, 2))  # no warning when something converts


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match="convert expected a torch.nn.Module, got str"):
        manual_bp.convert("model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="revert expected a torch.nn.Module, got int"):
        manual_bp.revert(3)  # type: ignore[arg-type]


def test_uncopyable_model_names_the_way_out() -> None:
    model = nn.Linear(2, 2)
    model.cache = torch.randn(2, requires_grad=True) * 2  # a non-leaf tensor cannot be deep-copied
    with pytest.raises(RuntimeError, match="inplace=True"):
        manual_bp.convert(model)
    assert type(manual_bp.convert(model, inplace=True)) is manual_bp.Linear


def test_manual_built_layers_revert_and_manual_mlp_is_left_alone() -> None:
    model = nn.Sequential(manual_bp.Linear(3, 4), manual_bp.Tanh(), manual_bp.MLP([4, 3, 2]))
    back = manual_bp.revert(model)
    assert type(back[0]) is nn.Linear and type(back[1]) is nn.Tanh
    assert type(back[2]) is manual_bp.MLP and type(back[2].layers[0]) is manual_bp.Linear
    assert any("computes its own backward" in e.note for e in conversion_report(model).manual)


def test_other_manual_bp_wrappers_are_walked_into() -> None:
    class Wrapper(nn.Module):  # like a LightningModule of manual_bp's that holds a native model
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
            self.loss = manual_bp.HalfSquaredError()

    Wrapper.__module__ = "manual_bp.lightning.module"
    manual = manual_bp.convert(Wrapper())
    assert type(manual.model[0]) is manual_bp.Linear and type(manual.model[1]) is manual_bp.ReLU
    assert {e.path for e in conversion_report(manual).manual} == {"model.0", "model.1", "loss"}
