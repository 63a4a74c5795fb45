"""``convert(model, functional=True)`` and ``manual_bp.functional_mode()``: torch function calls routed to
the registry's manual Functions; models in transformers' style (``tests/_hf_style.py``) converted whole.

Tests that need an op the registry does not have yet (``torch.addmm``, ``torch.matmul``, the
arithmetic, ``F.scaled_dot_product_attention``) skip, naming it; they run as soon as it is registered.
"""

from __future__ import annotations

import copy
import math
import pickle
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import manual_bp
from manual_bp import cli
from manual_bp._function import ManualFunction
from manual_bp.convert import is_functional
from manual_bp.coverage import _kind
from manual_bp.ops import OPS, callable_name
from manual_bp.routing import ROUTES, FunctionalMode, is_in_place

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _hf_style as H  # noqa: E402

T = Tensor
# the torch callables each model needs routed to reach 100% parameter coverage
NEEDS: dict[str, tuple[Any, ...]] = {
    "gpt2": (torch.addmm, T.add, T.mul, torch.pow, T.matmul, torch.matmul, T.div),
    "gpt2_sdpa": (torch.addmm, T.add, T.mul, torch.pow, F.scaled_dot_product_attention),
    "llama": (T.pow, T.mean, torch.rsqrt, T.mul, T.add, torch.matmul, T.matmul),
    "vit": (T.add, T.mul, torch.pow, torch.matmul, T.matmul, T.div),
    "convnext": (T.mul, T.add),
}
FACTORIES: dict[str, Callable[[], tuple[nn.Module, Tensor, Any]]] = {
    "gpt2": H.gpt2,
    "gpt2_sdpa": H.gpt2_sdpa,
    "llama": H.llama,
    "vit": H.vit,
    "convnext": H.convnext,
}


def _missing(fns: tuple[Any, ...]) -> list[str]:
    return [callable_name(fn) for fn in fns if fn not in ROUTES]


def _skip_unless_routed(*fns: Any) -> None:
    missing = _missing(fns)
    if missing:
        pytest.skip(f"the registry has no op for {', '.join(missing)} yet")


def _is_manual(t: Tensor) -> bool:
    """Whether ``t`` comes from a manual Function (through view nodes: ``dropout1d`` of an unbatched
    input squeezes the manual output)."""
    node = t.grad_fn
    while node is not None and _kind(node) == "view":
        node = node.next_functions[0][0]
    return node is not None and _kind(node) == "manual"


class _PassThrough(TorchFunctionMode):
    """A mode that changes nothing: native's values under a mode (``F.l1_loss`` drops ``weight`` when
    any torch function mode is active, torch 2.13: its ``handle_torch_function`` call omits it)."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return func(*args, **(kwargs or {}))


def _float64(name: str) -> tuple[nn.Module, Tensor, Any]:
    model, x, loss_fn = FACTORIES[name]()
    return model.double(), (x.double() if x.is_floating_point() else x), loss_fn


def _grads(model: nn.Module, x: Tensor, loss_fn: Any) -> tuple[Tensor, dict[str, Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(x)
    loss_fn(out).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------- the models


@pytest.mark.parametrize("name", list(FACTORIES))
def test_transformers_style_model_reaches_full_parameter_coverage(name: str) -> None:
    _skip_unless_routed(*NEEDS[name])
    model, x, loss_fn = _float64(name)
    converted = manual_bp.convert(model, functional=True)
    cov = manual_bp.coverage(converted, x, loss_fn=loss_fn)
    assert cov.parameter_share == 1.0, str(cov)
    assert cov.uncovered == ()
    # without functional=True the same model is only partly manual: the routing is what reaches it
    assert manual_bp.coverage(manual_bp.convert(model), x, loss_fn=loss_fn).parameter_share < 1.0


@pytest.mark.parametrize("name", list(FACTORIES))
def test_float64_gradients_equal_native_and_revert_is_bit_exact(name: str) -> None:
    if name == "gpt2_sdpa":
        _skip_unless_routed(F.scaled_dot_product_attention)
    model, x, loss_fn = _float64(name)
    converted = manual_bp.convert(model, functional=True)
    out_n, grads_n = _grads(model, x, loss_fn)
    out_m, grads_m = _grads(converted, x, loss_fn)
    torch.testing.assert_close(out_m, out_n, rtol=1e-10, atol=1e-12)
    assert grads_m.keys() == grads_n.keys()
    for key in grads_n:
        torch.testing.assert_close(grads_m[key], grads_n[key], rtol=1e-10, atol=1e-12, msg=key)
    reverted = manual_bp.revert(converted)
    assert not is_functional(reverted) and type(reverted) is type(model)
    assert [type(m) for m in reverted.modules()] == [type(m) for m in model.modules()]
    out_r, grads_r = _grads(reverted, x, loss_fn)
    assert torch.equal(out_r, out_n)
    assert all(torch.equal(grads_r[k], grads_n[k]) for k in grads_n)


def test_functional_model_survives_state_dict_deepcopy_and_pickle() -> None:
    model, x, loss_fn = _float64("gpt2")
    converted = manual_bp.convert(model, functional=True)
    assert converted.state_dict().keys() == model.state_dict().keys()
    assert isinstance(converted, H.GPT2Model) and type(converted).__name__ == "GPT2Model"
    native = H.GPT2Model().double()
    native.load_state_dict(converted.state_dict())
    converted.load_state_dict(native.state_dict())
    for clone in (copy.deepcopy(converted), pickle.loads(pickle.dumps(converted))):
        assert is_functional(clone)
        torch.testing.assert_close(clone(x), model(x), rtol=1e-10, atol=1e-12)
    assert is_functional(manual_bp.convert(converted, functional=True))  # converting twice: no-op


def test_routing_is_entered_by_the_model_and_left_after_it() -> None:
    model = manual_bp.convert(H.ConvNeXtLayer(), functional=True)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    model(x)
    assert not _is_manual(torch.tanh(x))  # outside the model: native again
    with pytest.raises((RuntimeError, ValueError)):  # and after an exception in forward, too
        model(torch.randn(2, 5, 3, 3))
    assert not _is_manual(torch.tanh(x))


def test_convert_functional_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match=r"functional must be True or False, got 'yes'"):
        manual_bp.convert(nn.Linear(2, 2), functional="yes")  # type: ignore[arg-type]


def test_convert_functional_refuses_a_torchscript_module() -> None:
    scripted = torch.jit.script(nn.Sequential(nn.Linear(2, 2), nn.Tanh()))
    with pytest.raises(TypeError, match=r"a TorchScript module's forward is compiled code"):
        manual_bp.convert(scripted, functional=True)


def test_conversion_report_says_functional_and_prints_coverage_given_inputs() -> None:
    model, x, loss_fn = _float64("convnext")
    report = manual_bp.conversion_report(manual_bp.convert(model, functional=True), x, loss_fn=loss_fn)
    assert report.functional and report.coverage is not None
    text = str(report)
    assert "converted with functional=True" in text
    assert "coverage (measured on the autograd graph of one forward):\nexplicit backward: " in text
    assert manual_bp.conversion_report(model).coverage is None


# ---------------------------------------------------------------------------- the routes, generically


def _route_cases() -> list[Any]:
    cases = []
    for op in OPS:
        fns = [fn for fn in dict.fromkeys(op.torch_functions) if not is_in_place(fn)]
        if fns and op.checked is None:  # (samples in another form: the recurrent ops, tested below)
            cases.append(pytest.param(op, fns, id=op.name))
    return cases


@pytest.mark.parametrize(("op", "fns"), _route_cases())
def test_every_torch_callable_of_the_registry_is_routed_to_its_manual_function(
    op: Any, fns: list[Any]
) -> None:
    """For every op and every callable in its ``torch_functions``: that callable, called on the op's
    samples inside the mode, gives a manual ``grad_fn`` and native's values."""
    torch.manual_seed(0)
    samples = op.samples(torch.float64, torch.device("cpu"))
    routed = 0
    for fn in fns:
        for s in samples:
            try:
                torch.manual_seed(1)
                with _PassThrough():
                    expected = fn(*s.args, **s.kwargs)
            except (
                Exception
            ):  # this spelling does not take these arguments (torch.softmax has no _stacklevel)
                continue
            torch.manual_seed(1)
            with FunctionalMode(strict=True):
                got = fn(*s.args, **s.kwargs)
            out = got[0] if isinstance(got, tuple) else got
            exp = expected[0] if isinstance(expected, tuple) else expected
            torch.testing.assert_close(out, exp, equal_nan=True, msg=f"{callable_name(fn)} {s.label}")
            if any(out is a for a in s.args) or not out.requires_grad:
                continue  # dropout(p=0) returns its input, as native does
            assert _is_manual(out), f"{callable_name(fn)} {s.label}: {out.grad_fn}"
            routed += 1
    assert routed > 0


@pytest.mark.parametrize("layer", [nn.RNN, nn.LSTM, nn.GRU])
def test_a_native_recurrent_layer_is_routed_whole(layer: type[nn.RNNBase]) -> None:
    """torch's own ``nn.RNN``/``LSTM``/``GRU`` call ``torch.rnn_tanh``/``lstm``/``gru`` (the recurrent
    ops' ``torch_functions``, whose samples the generic test above cannot call): under the mode every
    parameter gets its gradient from the manual layer Functions, equal to native's (float64)."""
    torch.manual_seed(0)
    native = layer(3, 4, num_layers=2, bidirectional=True, batch_first=True).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    with manual_bp.functional_mode(strict=True):
        cov = manual_bp.coverage(native, x, loss_fn=lambda y: y[0].square().sum())
        out = native(x)[0]
    assert cov.parameter_share == 1.0, cov
    expected = native(x)[0]
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    got = torch.autograd.grad(out.square().sum(), list(native.parameters()))
    want = torch.autograd.grad(expected.square().sum(), list(native.parameters()))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_calls_that_need_no_gradient_stay_native() -> None:
    x = torch.randn(3, 4)
    w = torch.randn(3, 4, requires_grad=True)
    with manual_bp.functional_mode():
        assert torch.tanh(x).grad_fn is None  # nothing requires grad
        with torch.no_grad():
            assert torch.tanh(w).grad_fn is None
        assert _is_manual(torch.tanh(w))


def test_in_place_forms_stay_native() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    with manual_bp.functional_mode():
        y = x.clone()
        assert F.relu(y.clone(), inplace=True).grad_fn.name() == "ReluBackward0"
        assert y.clone().tanh_().grad_fn.name() == "TanhBackward0"
        assert torch.sigmoid_(y.clone()).grad_fn.name() == "SigmoidBackward0"
        z = y.clone()
        z += 1
        assert z.grad_fn.name() == "AddBackward0"
        assert _is_manual(F.relu(y, inplace=False))


def test_a_call_the_manual_function_refuses_runs_natively_unless_strict(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(args: Any, kwargs: Any) -> Any:
        raise TypeError("not supported here")

    monkeypatch.setitem(ROUTES, torch.tanh, refuse)
    x = torch.randn(3, requires_grad=True)
    with FunctionalMode():
        assert torch.tanh(x).grad_fn.name() == "TanhBackward0"
    with pytest.raises(TypeError, match="not supported here"), FunctionalMode(strict=True):
        torch.tanh(x)


def test_a_manual_backward_is_not_routed_even_inside_the_mode() -> None:
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    with manual_bp.functional_mode():
        y = torch.softmax(torch.tanh(x), -1)
        assert _is_manual(y)
        (g,) = torch.autograd.grad(
            y.pow(3).sum() if T.pow in ROUTES else (y * y * y).sum(), x, create_graph=True
        )
        nodes, todo = set(), [g.grad_fn]
        while todo:  # the double-backward graph: the backward's own ops, all native
            node = todo.pop()
            if node is not None and node not in nodes:
                nodes.add(node)
                todo.extend(n for n, _ in node.next_functions)
        backward_nodes = {n for n in nodes if n.name() not in ("AccumulateGrad",)}
        assert backward_nodes and not any(
            issubclass(getattr(n, "_forward_cls", object), ManualFunction)
            for n in backward_nodes
            if n.name().endswith("Backward0") or n.name().endswith("Backward1")
        )


def test_functional_mode_routes_a_loss_computed_outside_the_model() -> None:
    model, x, _ = _float64("vit")
    converted = manual_bp.convert(model, functional=True)
    target = torch.tensor([1, 7, 3])
    with manual_bp.functional_mode():
        loss = F.cross_entropy(converted(x), target)
    assert _is_manual(loss)


OPERATORS: list[tuple[str, Callable[[Tensor, Tensor], Tensor], tuple[Any, ...]]] = [
    ("x + y", lambda x, y: x + y, (T.add,)),
    ("2 + x", lambda x, y: 2 + x, (T.add,)),
    ("x - y", lambda x, y: x - y, (T.sub,)),
    ("2 - x", lambda x, y: 2 - x, (torch.sub,)),
    ("x * y", lambda x, y: x * y, (T.mul,)),
    ("2 * x", lambda x, y: 2 * x, (T.mul,)),
    ("x / y", lambda x, y: x / (y.abs() + 1), (T.div,)),
    ("2 / x", lambda x, y: 2 / (x.abs() + 1), (torch.div,)),
    ("x ** 2", lambda x, y: x**2, (torch.pow,)),
    ("2 ** x", lambda x, y: 2**x, (torch.pow,)),
    ("-x", lambda x, y: -x, (torch.mul,)),
    ("x @ y.mT", lambda x, y: x @ y.mT, (T.matmul,)),
    ("einsum list", lambda x, y: torch.einsum("ij,kj->ik", [x, y]), (torch.einsum,)),
]


@pytest.mark.parametrize(("label", "expr", "needs"), OPERATORS, ids=[o[0] for o in OPERATORS])
def test_operators_are_routed_with_their_operands_in_order(
    label: str, expr: Any, needs: tuple[Any, ...]
) -> None:
    _skip_unless_routed(*needs)
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    with FunctionalMode(strict=True):
        got = expr(x, y)
    assert _is_manual(got), label
    torch.testing.assert_close(got, expr(x, y), rtol=1e-12, atol=1e-12)
    g = torch.randn_like(got)
    manual = torch.autograd.grad(got, (x, y), g, allow_unused=True)
    native = torch.autograd.grad(expr(x, y), (x, y), g, allow_unused=True)
    for a, b in zip(manual, native, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- transforms: compile, autocast, func


@pytest.mark.slow
def test_compiled_fullgraph_gives_native_gradients() -> None:
    model, x, loss_fn = _float64("gpt2")
    converted = manual_bp.convert(model, functional=True)
    _, grads_n = _grads(model, x, loss_fn)
    torch._dynamo.reset()
    compiled = torch.compile(converted, fullgraph=True, backend="aot_eager")
    grads_c = {k.removeprefix("_orig_mod."): g for k, g in _grads(compiled, x, loss_fn)[1].items()}
    for key in grads_n:
        torch.testing.assert_close(
            grads_c[key.removeprefix("_orig_mod.")], grads_n[key], rtol=1e-10, atol=1e-12
        )


def test_autocast_gives_native_dtypes() -> None:
    model, x, loss_fn = H.vit()
    converted = manual_bp.convert(model, functional=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_n, out_m = model(x), converted(x)
    assert out_m.dtype == out_n.dtype
    loss_fn(out_m.float()).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in converted.parameters())


def test_torch_func_grad_of_functional_call_equals_native() -> None:
    model, x, loss_fn = _float64("llama")
    converted = manual_bp.convert(model, functional=True)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict[str, Tensor], m: nn.Module) -> Tensor:
        return loss_fn(torch.func.functional_call(m, p, (x,)))

    native = torch.func.grad(loss)(params, model)
    manual = torch.func.grad(loss)(params, converted)
    for key in native:
        torch.testing.assert_close(manual[key], native[key], rtol=1e-10, atol=1e-12, msg=key)


# ------------------------------------------------------------------------------ check --model and train

HF = str(Path(__file__).resolve().parent / "_hf_style.py")


def test_check_cli_prints_coverage_and_passes_min_coverage(capsys: pytest.CaptureFixture[str]) -> None:
    _skip_unless_routed(*NEEDS["convnext"])
    code = cli.main(["check", "--model", f"{HF}:convnext", "--functional", "--min-coverage", "0.99"])
    out = capsys.readouterr().out
    assert "coverage (measured on the autograd graph of one forward):" in out
    assert out.rstrip().endswith("PASS: manual gradients match native autograd")
    assert code == 0


def test_check_cli_fails_with_its_own_code_below_min_coverage(capsys: pytest.CaptureFixture[str]) -> None:
    # without --functional the layer scale (a Parameter times x) keeps a native gradient
    code = cli.main(["check", "--model", f"{HF}:convnext", "--min-coverage", "0.999"])
    out = capsys.readouterr().out
    assert code == cli.COVERAGE_EXIT == 3
    assert "is below --min-coverage 0.999 (manual gradients match native autograd)" in out.splitlines()[-1]
    assert "layer_scale_parameter" in out


class _OnlyFunctions(nn.Module):
    """Parameters used by torch functions only, and one convertible activation module."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 4))
        self.act = nn.Tanh()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x @ self.weight.T)


def only_functions() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(0)
    return _OnlyFunctions(), torch.randn(5, 4)


def test_check_cli_reports_a_model_with_nothing_converted_as_such(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["check", "--model", f"{__file__}:only_functions"])
    out = capsys.readouterr().out
    assert code == 3, out
    assert out.splitlines()[-1].startswith(
        "NOT CONVERTED: no parameter gets its gradient from explicit backward"
    )
    assert "PASS" not in out


def test_check_cli_rejects_a_min_coverage_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check", "--model", f"{HF}:convnext", "--min-coverage", "99"]) == 2
    assert "--min-coverage: expected a share between 0 and 1, got 99.0" in capsys.readouterr().err


@pytest.mark.slow  # importing Lightning alone takes seconds
def test_lightning_module_converts_the_factorys_model_with_functional(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from manual_bp.lightning import ManualBPModule

    monkeypatch.chdir(Path(HF).parent.parent)
    module = ManualBPModule(factory="tests._hf_style:digits_gpt2", functional=True, loss="cross_entropy")
    assert is_functional(module.net) and module.hparams.functional
    x, t = torch.randn(4, 64), torch.tensor([0, 3, 9, 2])
    share = manual_bp.coverage(module.net, x, loss_fn=lambda y: F.cross_entropy(y, t)).parameter_share
    assert share == 1.0 or _missing(NEEDS["gpt2"])


@pytest.mark.slow
def test_train_a_functional_transformer_under_ddp_spawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from manual_bp.lightning.cli import main

    # by module name, not file path: the spawned processes unpickle the model's classes by import
    monkeypatch.chdir(Path(HF).parent.parent)

    main([
        "--model.factory", "tests._hf_style:digits_gpt2", "--model.functional", "true",
        "--model.loss", "cross_entropy", "--model.optimizer", "adam", "--model.lr", "0.003",
        "--trainer.strategy", "ddp_spawn", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(tmp_path),
    ])  # fmt: skip
    (ckpt,) = tmp_path.glob("lightning_logs/version_*/checkpoints/*.ckpt")
    from manual_bp.lightning import ManualBPModule

    module = ManualBPModule.load_from_checkpoint(ckpt)
    assert is_functional(module.net) and module.hparams.functional
    assert math.isfinite(float(module.net(torch.randn(2, 64)).sum()))


# ------------------------------------------------------------------------------------------ the docs

DOC = Path(__file__).resolve().parent.parent / "docs" / "functional.md"


def test_the_docs_walk_through_runs_and_prints_what_it_shows(capsys: pytest.CaptureFixture[str]) -> None:
    _skip_unless_routed(
        torch.addmm, torch.pow, T.pow, T.mean, torch.rsqrt, T.mul, T.add, torch.matmul, T.matmul
    )
    text = DOC.read_text()
    blocks = re.findall(r"```(python|text)\n(.*?)```", text, flags=re.S)
    namespace: dict[str, Any] = {}
    for i, (kind, body) in enumerate(blocks):
        if kind != "python":
            continue
        exec(compile(body, f"{DOC}:block{i}", "exec"), namespace)  # noqa: S102 (the docs' own code)
        printed = capsys.readouterr().out
        if i + 1 < len(blocks) and blocks[i + 1][0] == "text":
            assert printed == blocks[i + 1][1], printed


def test_the_benchmark_section_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A smoke run of ``scripts/bench.py --functional`` (tiny sizes, one repetition; no timing asserted)."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
    spec = importlib.util.spec_from_file_location("manual_bp_bench_script", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "functional.json"
    assert bench.main(["--functional", "--quick", "--same-process", "--reps", "1", "--out", str(out)]) == 0
    assert "training step of a GPT-2-style classifier" in capsys.readouterr().out
    result = json.loads(out.read_text())["functional"]
    assert set(result["per_call_seconds"]) == {"native", "pass_on", "routed", "view_native", "view_in_mode"}
    (row,) = result["steps"]
    assert set(row["seconds"]) == {"native", "pass_on", "modules", "functional"}
    if not _missing(NEEDS["gpt2"]):
        assert row["parameter_share"] == 1.0


def test_check_model_min_coverage_must_be_a_share() -> None:
    model, x = only_functions()
    with pytest.raises(ValueError, match=r"min_coverage must be between 0 and 1, got 1.5"):
        manual_bp.check.check_model(model, x, min_coverage=1.5)
    result = manual_bp.check.check_model(model, x, functional=True, min_coverage=1.0)
    if not _missing((T.matmul,)):
        assert result.passed and result.coverage_ok
        assert result.verdict() == "PASS: manual gradients match native autograd"
