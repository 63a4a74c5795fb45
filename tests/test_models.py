"""Real architectures after manual_bp.convert: a ResNet, a ViT and a BERT-like encoder (tests/_models.py).

For each: (a) explicit backward computes the gradient of at least 99% of the parameter elements,
and exactly the expected parameters are left to autograd (the ViT's class token and position
embedding, raw parameters added in ``forward``: no layer to convert); (b) float64 gradients equal
native autograd's; (c) ``revert`` gives back the native model bit for bit.

Gradients are compared in eval mode (running statistics, dropout the identity) and in training
mode (batch statistics and their running-statistics update; dropout with the random number
generator reseeded before each twin's forward: manual dropout draws native's masks).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from _models import tiny_bert, tiny_lstm_lm, tiny_resnet, tiny_vit
from torch import Tensor, nn
from torch.testing import assert_close

import manual_bp


@dataclass(frozen=True)
class Case:
    build: Callable[[], nn.Module]
    inputs: Callable[[torch.dtype], tuple[Tensor, ...]]
    classes: int
    batch: int
    uncovered: tuple[str, ...]  # the parameters explicit backward is allowed (and expected) to leave


def _bert_inputs(dtype: torch.dtype) -> tuple[Tensor, ...]:
    ids = torch.randint(1, 20, (3, 6))
    types = torch.tensor([[0, 0, 0, 1, 1, 1]] * 3)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
    return ids, types, mask


CASES = {
    "resnet": Case(tiny_resnet, lambda dtype: (torch.randn(2, 3, 32, 32, dtype=dtype),), 5, 2, ()),
    "vit": Case(
        tiny_vit, lambda dtype: (torch.randn(3, 3, 8, 8, dtype=dtype),), 5, 3, ("cls_token", "pos_embed")
    ),
    "bert": Case(tiny_bert, _bert_inputs, 3, 3, ()),
    # token ids (2, 5) -> logits (2·5, 20): a target per token
    "lstm_lm": Case(tiny_lstm_lm, lambda dtype: (torch.randint(0, 20, (2, 5)),), 20, 10, ()),
}


@pytest.fixture(params=list(CASES), ids=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


def test_explicit_backward_covers_the_model(case: Case) -> None:
    model = manual_bp.convert(case.build())
    loss = manual_bp.convert(nn.CrossEntropyLoss())
    target = torch.randint(0, case.classes, (case.batch,))
    model.train()  # dropout and batch norm on: the graph training builds
    cov = manual_bp.coverage(model, *case.inputs(torch.float32), loss_fn=lambda y: loss(y, target))
    assert cov.uncovered == case.uncovered, str(cov)
    assert cov.parameter_share >= 0.99, str(cov)
    assert cov.unused == ()
    # the static figure agrees: here every parameter of a manual layer is used by that layer only
    report = manual_bp.conversion_report(model)
    assert (report.manual_elements, report.total_elements) == (cov.explicit_elements, cov.total_elements)
    # the native nodes left compute no parameter's gradient but the expected ones'
    assert {p for node in cov.native for p in node.parameters} == set(case.uncovered)


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_float64_gradients_equal_native(case: Case, train: bool) -> None:
    native = case.build().double().train(train)
    manual = manual_bp.convert(native)
    inputs = case.inputs(torch.float64)
    target = torch.randint(0, case.classes, (case.batch,))
    torch.manual_seed(1)
    native_loss = nn.CrossEntropyLoss()(native(*inputs), target)
    torch.manual_seed(1)  # the same dropout masks
    manual_loss = manual_bp.convert(nn.CrossEntropyLoss())(manual(*inputs), target)
    native_loss.backward()
    manual_loss.backward()
    assert_close(manual_loss, native_loss, rtol=1e-10, atol=1e-10)
    manual_params = dict(manual.named_parameters())
    for name, p in native.named_parameters():
        assert p.grad is not None, name
        assert_close(
            manual_params[name].grad, p.grad, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}"
        )
    manual_state = manual.state_dict()
    for name, value in native.state_dict().items():  # BatchNorm's running statistics after the step
        assert_close(manual_state[name], value, rtol=1e-10, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


def test_revert_is_bit_exact(case: Case) -> None:
    native = case.build()
    back = manual_bp.revert(manual_bp.convert(native))
    native_modules = dict(native.named_modules())
    back_modules = dict(back.named_modules())
    assert list(back_modules) == list(native_modules)
    for name, module in native_modules.items():
        assert type(back_modules[name]) is type(module), name
    native_state, back_state = native.state_dict(), back.state_dict()
    assert list(back_state) == list(native_state)
    for name, value in native_state.items():
        assert back_state[name].dtype == value.dtype and torch.equal(back_state[name], value), name
    native.eval()
    back.eval()
    inputs = case.inputs(torch.float32)
    assert torch.equal(back(*inputs), native(*inputs))


def test_convert_leaves_nothing_convertible(case: Case) -> None:
    """Every torch.nn layer of the model has a manual twin: conversion_report lists no native module
    except the model (ViT: it holds the raw class token and position embedding) and containers."""
    report = manual_bp.conversion_report(manual_bp.convert(case.build()))
    native = {(e.path, e.kind) for e in report.native}
    assert native == ({("", "ViT")} if case.uncovered else set()), str(report)


def test_bench_models_section(tmp_path: Path) -> None:
    """``scripts/bench.py --models --quick`` times the tiny models and writes its JSON key."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
    spec = importlib.util.spec_from_file_location("manual_bp_bench_script", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "models.json"
    assert bench.main(["--models", "--quick", "--same-process", "--reps", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["models"]
    assert [(r["model"], r["factory"]) for r in rows] == [
        ("resnet18", "tiny_resnet"),
        ("resnet18_64", "tiny_resnet"),
        ("vit", "tiny_vit"),
        ("lstm_lm", "tiny_lstm_lm"),
        ("transformer", "tiny_sequence_transformer"),
    ]
    assert (
        rows[-1]["limit"] == 1.2 and rows[-1]["parameter_share"] == 1.0
    )  # issue 15's target; converted whole
    for row in rows:
        assert row["ratio"] > 0 and set(row["seconds"]) == {"native", "manual"}
        assert 0.0 <= row["parameter_share"] <= 1.0
