"""manual_bp.coverage: which share of a model's gradients explicit backward computes, measured on the
graph; and conversion_report's static figure (parameters owned by manual layers).

The native layers here are ones no op of the registry converts (a convolution written with
``F.conv2d`` inside ``forward``, ``x @ w.t()``), so that these tests keep their meaning as ops land.
"""

from __future__ import annotations

import copy
import doctest
import importlib

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import manual_bp
from manual_bp.coverage import Coverage


class FunctionalConv(nn.Module):
    """A convolution layer written with ``F.conv2d``: not a module convert swaps, always native."""

    def __init__(self, c_in: int, c_out: int, k: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.randn(c_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def test_manual_mlp_is_fully_covered() -> None:
    cov = manual_bp.coverage(manual_bp.convert(mlp()), torch.randn(5, 4))
    assert isinstance(cov, Coverage)
    assert (cov.parameter_share, cov.node_share) == (1.0, 1.0)
    assert (cov.explicit_elements, cov.total_elements) == (4 * 8 + 8 + 8 * 3 + 3,) * 2
    assert (cov.explicit_tensors, cov.total_tensors, cov.manual_nodes, cov.total_nodes) == (4, 4, 3, 3)
    assert cov.native == () and cov.uncovered == () and cov.unused == ()
    assert (
        str(cov)
        == "explicit backward: 100% of parameter elements (4 of 4 tensors); 100% of graph nodes (3 of 3)"
    )


def test_fused_mlp_and_manual_loss_are_fully_covered() -> None:
    net = manual_bp.MLP([4, 6, 3], activation="tanh")
    target = torch.tensor([0, 2, 1])
    cov = manual_bp.coverage(
        net, torch.randn(3, 4), loss_fn=lambda y: manual_bp.CrossEntropyLoss()(y, target)
    )
    assert (cov.parameter_share, cov.node_share, cov.total_tensors) == (1.0, 1.0, 4)


def test_native_mlp_is_not_covered() -> None:
    model = mlp()
    cov = manual_bp.coverage(model, torch.randn(5, 4))
    assert (cov.parameter_share, cov.node_share, cov.explicit_tensors, cov.manual_nodes) == (0.0, 0.0, 0, 0)
    assert cov.uncovered == ("0.weight", "0.bias", "2.weight", "2.bias")
    by_name = {n.name: n for n in cov.native}
    assert by_name["AddmmBackward0"].count == 2
    assert by_name["AddmmBackward0"].parameters == ("0.weight", "0.bias", "2.weight", "2.bias")
    assert by_name["AddmmBackward0"].modules == ("0 (Linear)", "2 (Linear)")  # in forward order
    assert by_name["TanhBackward0"].parameters == ()
    text = str(cov)
    assert text.startswith(
        "explicit backward: 0% of parameter elements (0 of 4 tensors); 0% of graph nodes (0 of 3)"
    )
    assert "AddmmBackward0  x2" in text
    assert "parameters not covered: 0.weight, 0.bias, 2.weight, 2.bias" in text


def test_mixed_model_gives_the_exact_element_share() -> None:
    conv = FunctionalConv(3, 4, 3)
    model = nn.Sequential(conv, nn.Flatten(), manual_bp.Linear(4 * 4 * 4, 5))
    cov = manual_bp.coverage(model, torch.randn(2, 3, 6, 6))
    linear = 4 * 4 * 4 * 5 + 5
    assert (cov.explicit_elements, cov.total_elements) == (linear, linear + 4 * 3 * 3 * 3 + 4)
    assert cov.parameter_share == linear / (linear + 112)
    assert (cov.manual_nodes, cov.total_nodes) == (1, 2)  # Flatten's view is not counted
    assert cov.uncovered == ("0.weight", "0.bias")
    (node,) = cov.native
    assert (node.name, node.count, node.parameters, node.modules) == (
        "ConvolutionBackward0",
        1,
        ("0.weight", "0.bias"),
        ("0 (FunctionalConv)",),
    )
    assert node.sources == (f"test_coverage.py:{FunctionalConv.forward.__code__.co_firstlineno + 1}",)
    assert str(cov).splitlines()[0] == (
        "explicit backward: 74.3% of parameter elements (2 of 4 tensors); 50.0% of graph nodes (1 of 2)"
    )


def test_native_nodes_are_attributed_to_the_module_whose_forward_made_them() -> None:
    class Inner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = manual_bp.Linear(3, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.lin(x).exp()

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = Inner(), Inner()

        def forward(self, x: Tensor) -> Tensor:
            return self.b(self.a(x).sin()).cos()

    cov = manual_bp.coverage(Outer(), torch.randn(2, 3), loss_fn=lambda y: y.sum())
    where = {n.name: n.modules for n in cov.native}
    assert where == {
        "ExpBackward0": ("a (Inner)", "b (Inner)"),
        "SinBackward0": ("(model) (Outer)",),
        "CosBackward0": ("(model) (Outer)",),
        "SumBackward0": (),  # the loss: no module of the model
    }


def test_share_never_rounds_up_to_100_percent() -> None:
    big = manual_bp.Linear(100, 100)
    small = nn.Parameter(torch.randn(1))
    model = nn.Module()
    model.big, model.small = big, small
    model.forward = lambda x: big(x) * small  # type: ignore[method-assign]
    cov = manual_bp.coverage(model, torch.randn(2, 100))
    assert cov.uncovered == ("small",)
    assert "99.9% of parameter elements" in str(cov)


def test_tied_weights_used_by_two_manual_layers_are_covered_once() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encode = manual_bp.Linear(6, 6)
            self.decode = manual_bp.Linear(6, 6)
            self.decode.weight = self.encode.weight

        def forward(self, x: Tensor) -> Tensor:
            return self.decode(torch.tanh(self.encode(x)))

    cov = manual_bp.coverage(Tied(), torch.randn(3, 6))
    assert (cov.explicit_tensors, cov.total_tensors) == (3, 3)
    assert cov.total_elements == 36 + 6 + 6
    assert cov.parameter_share == 1.0
    assert (cov.manual_nodes, cov.total_nodes) == (2, 3)  # torch.tanh is native, computes no BP3
    assert cov.native[0].name == "TanhBackward0" and cov.native[0].parameters == ()


def test_tied_weight_used_by_a_manual_and_a_native_layer_is_not_covered() -> None:
    class HalfTied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encode = manual_bp.Linear(6, 6)
            self.decode = nn.Linear(6, 6)  # native, never converted here
            self.decode.weight = self.encode.weight

        def forward(self, x: Tensor) -> Tensor:
            return self.decode(self.encode(x))

    cov = manual_bp.coverage(HalfTied(), torch.randn(3, 6))
    assert cov.uncovered == ("encode.weight = decode.weight", "decode.bias")
    assert cov.explicit_elements == 6  # encode.bias


def test_parameter_used_once_manual_once_native_is_not_covered() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = manual_bp.Linear(4, 4)

        def forward(self, x: Tensor) -> Tensor:
            return self.lin(x) + x @ self.lin.weight.t()  # the second use is native (through a view)

    cov = manual_bp.coverage(Twice(), torch.randn(3, 4))
    assert cov.uncovered == ("lin.weight",)
    assert (cov.explicit_elements, cov.total_elements) == (4, 20)
    assert {n.name: n.parameters for n in cov.native}["MmBackward0"] == ("lin.weight",)


def test_view_nodes_between_a_parameter_and_its_manual_node_are_allowed() -> None:
    class Views(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight_t = nn.Parameter(torch.randn(4, 3))  # stored transposed
            self.bias = nn.Parameter(torch.randn(1, 3))
            self.halves = nn.Parameter(torch.randn(2, 3, 2))  # split, each half sliced and cast

        def forward(self, x: Tensor) -> Tensor:
            y = manual_bp.functional.linear(x, self.weight_t.t().contiguous().clone(), self.bias.view(-1))
            first, second = self.halves.to(torch.float64).unbind(0)
            w = torch.cat([first[:, :1], second[:, 1:]], dim=1).to(torch.float32).T.reshape(2, 3)
            return manual_bp.functional.linear(y, w.unsqueeze(0).squeeze(0), None)

    cov = manual_bp.coverage(Views(), torch.randn(5, 4))
    assert (cov.parameter_share, cov.node_share, cov.manual_nodes, cov.total_nodes) == (1.0, 1.0, 2, 2)


def test_autocast_casts_are_views() -> None:
    model = manual_bp.convert(mlp())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cov = manual_bp.coverage(model, torch.randn(5, 4))
    assert (cov.parameter_share, cov.node_share) == (1.0, 1.0)


def test_native_loss_nodes_are_listed_with_their_line() -> None:
    target = torch.tensor([0, 2])

    def loss(y: Tensor) -> Tensor:
        return F.cross_entropy(y, target)

    cov = manual_bp.coverage(manual_bp.convert(mlp()), torch.randn(2, 4), loss_fn=loss)
    assert cov.parameter_share == 1.0
    assert (cov.manual_nodes, cov.total_nodes) == (3, 5)
    line = loss.__code__.co_firstlineno + 1
    assert {n.name: (n.modules, n.sources) for n in cov.native} == {
        "LogSoftmaxBackward0": ((), (f"test_coverage.py:{line}",)),
        "NllLossBackward0": ((), (f"test_coverage.py:{line}",)),
    }


def test_unused_frozen_and_input_tensors() -> None:
    model = nn.ModuleDict({"used": manual_bp.Linear(3, 2), "unused": manual_bp.Linear(3, 2)})
    model.used.bias.requires_grad_(False)
    model.forward = lambda x: model["used"](x)  # type: ignore[method-assign]
    x = torch.randn(4, 3, requires_grad=True)  # its AccumulateGrad is not a parameter's
    cov = manual_bp.coverage(model, x)
    assert cov.unused == ("unused.weight", "unused.bias")
    assert (cov.total_tensors, cov.parameter_share) == (1, 1.0)
    assert "parameters the loss does not reach: unused.weight, unused.bias" in str(cov)


def test_outputs_tuples_and_dicts_and_kwargs() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = manual_bp.Linear(3, 2)
            self.b = nn.Linear(3, 2)

        def forward(self, x: Tensor, scale: float = 1.0) -> dict[str, tuple[Tensor, ...]]:
            return {"out": (self.a(x) * scale, self.b(x))}

    cov = manual_bp.coverage(Two(), torch.randn(4, 3), scale=2.0)
    assert cov.uncovered == ("b.weight", "b.bias")
    assert (cov.explicit_elements, cov.total_elements) == (8, 16)


def test_the_model_is_left_as_it_was() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 2))
    model.train()
    model[3].eval()  # a mixed state survives too; BatchNorm and Dropout train
    model[0].weight.grad = torch.ones_like(model[0].weight)
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(8, 4)
    rng = torch.get_rng_state()
    cov = manual_bp.coverage(model, x, loss_fn=lambda y: y.square().mean())
    assert cov.total_tensors == 6
    assert [m.training for m in model.modules()] == [True, True, True, True, False]
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "0.weight")
    for key, value in model.state_dict().items():  # BatchNorm's running statistics too
        assert torch.equal(value, state[key]), key
    assert torch.equal(torch.get_rng_state(), rng)
    model.eval()
    manual_bp.coverage(model, torch.randn(8, 4))
    assert not any(m.training for m in model.modules())


def test_errors() -> None:
    with pytest.raises(TypeError, match="coverage expected a torch.nn.Module, got function"):
        manual_bp.coverage(lambda x: x, torch.randn(2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss_fn must be callable or None, got int"):
        manual_bp.coverage(mlp(), torch.randn(2, 4), loss_fn=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="loss_fn must return a Tensor, got float"):
        manual_bp.coverage(mlp(), torch.randn(2, 4), loss_fn=lambda y: 1.0)
    model = nn.Module()
    model.forward = lambda x: "nothing"  # type: ignore[method-assign]
    with pytest.raises(TypeError, match="the model returned str"):
        manual_bp.coverage(model, torch.randn(2))
    frozen = mlp().requires_grad_(False)
    with pytest.raises(ValueError, match="no autograd graph was recorded"):
        manual_bp.coverage(frozen, torch.randn(2, 4))


def test_the_module_doctest() -> None:
    module = importlib.import_module("manual_bp.coverage")  # (manual_bp.coverage is the function)
    result = doctest.testmod(module)
    assert (result.failed, result.attempted) == (0, 4)


# ----------------------------------------------------------------------------- conversion_report


def test_conversion_report_counts_parameters_in_manual_layers() -> None:
    model = manual_bp.convert(nn.Sequential(FunctionalConv(3, 4, 3), nn.Flatten(), nn.Linear(64, 5)))
    report = manual_bp.conversion_report(model)
    assert (report.manual_elements, report.total_elements) == (325, 437)
    assert report.parameter_share == 325 / 437
    assert "parameters in manual layers: 74.3% (325 of 437 elements)" in str(report).splitlines()


def test_conversion_report_parameter_figure_edge_cases() -> None:
    native = mlp()
    assert manual_bp.conversion_report(native).parameter_share == 0.0
    assert "parameters in manual layers: 0% (0 of 67 elements)" in str(manual_bp.conversion_report(native))
    assert "parameters in manual layers: 100% (67 of 67 elements)" in str(
        manual_bp.conversion_report(manual_bp.convert(native))
    )
    # a manual_bp.MLP owns its layers' parameters; a tied weight counts once; MultiheadAttention
    # converts whole (its out_proj included)
    model = nn.ModuleDict({"mlp": manual_bp.MLP([3, 4, 2]), "attn": nn.MultiheadAttention(4, 2)})
    model.tied = manual_bp.Linear(3, 4)
    model.tied.weight = model.mlp.layers[0].weight
    report = manual_bp.conversion_report(manual_bp.convert(model))
    mlp_elements, attn_elements = 3 * 4 + 4 + 4 * 2 + 2, 3 * 4 * 4 + 3 * 4 + 4 * 4 + 4
    assert (report.manual_elements, report.total_elements) == (
        mlp_elements + attn_elements + 4,
        mlp_elements + attn_elements + 4,
    )
    native_attention = manual_bp.conversion_report(nn.ModuleDict({"attn": nn.MultiheadAttention(4, 2)}))
    assert (native_attention.manual_elements, native_attention.total_elements) == (0, attn_elements)
    assert manual_bp.conversion_report(nn.ReLU()).parameter_share == 1.0
    assert "parameters in manual layers: the model has no parameters" in str(
        manual_bp.conversion_report(nn.ReLU())
    )
