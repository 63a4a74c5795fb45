"""Recurrent layers (manual_bp/ops/recurrent.py): the drop-in RNN, LSTM and GRU against torch.nn's.

What tests/test_ops.py cannot see: the modules (parameters and state_dict, unbatched and packed
inputs, every constructor option) with float64 outputs and gradients equal to native's to 1e-10,
that every output comes from the layer Functions, the three classifiers of issue 15 (coverage,
gradients, revert, five SGD steps) and the errors.
"""

from __future__ import annotations

import copy
import doctest
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_sequence

import manual_bp
from manual_bp.ops import recurrent
from manual_bp.ops.recurrent import GRULayerFunction, LSTMLayerFunction, RNNLayerFunction

F64 = torch.float64
TOL = {"rtol": 1e-10, "atol": 1e-10}
TWINS = {nn.RNN: manual_bp.RNN, nn.LSTM: manual_bp.LSTM, nn.GRU: manual_bp.GRU}
FUNCTIONS = {nn.RNN: RNNLayerFunction, nn.LSTM: LSTMLayerFunction, nn.GRU: GRULayerFunction}


def _twin(native: nn.Module) -> nn.Module:
    manual = copy.deepcopy(native)
    manual.__class__ = TWINS[type(native)]
    return manual


def _flat(out: Any) -> list[Tensor]:
    """Every tensor of a recurrent module's result ``(output, h_n)`` or ``(output, (h_n, c_n))``."""
    output, hidden = out
    data = output.data if isinstance(output, PackedSequence) else output
    return [data, *(hidden if isinstance(hidden, tuple) else (hidden,))]


def _run(module: nn.Module, x: Any, hx: Any, seed: int = 7) -> tuple[list[Tensor], list[Tensor]]:
    """Outputs and the gradients of (parameters, input, states) of ``Σ_k out_k ⊙ sin(out_k)``."""
    module.zero_grad()
    torch.manual_seed(seed)  # dropout draws
    outs = _flat(module(x, hx))
    loss = sum((o * o.sin()).sum() for o in outs)
    inputs = [*module.parameters()]
    leaves = [x.data if isinstance(x, PackedSequence) else x]
    leaves += [] if hx is None else list(hx if isinstance(hx, tuple) else (hx,))
    grads = torch.autograd.grad(loss, inputs + leaves)
    return [o.detach() for o in outs], list(grads)


def _leaf(*shape: int) -> Tensor:
    return torch.randn(*shape, dtype=F64, requires_grad=True)


# (class, constructor options, input builder) -> input, hx
OPTIONS: list[tuple[type[nn.Module], dict[str, Any]]] = [
    (nn.RNN, {}),
    (nn.RNN, {"nonlinearity": "relu"}),
    (nn.RNN, {"nonlinearity": "relu", "bias": False, "num_layers": 2}),
    (nn.RNN, {"num_layers": 3, "dropout": 0.4}),
    (nn.RNN, {"bidirectional": True, "batch_first": True}),
    (nn.LSTM, {}),
    (nn.LSTM, {"num_layers": 2, "dropout": 0.5}),
    (nn.LSTM, {"bidirectional": True, "num_layers": 2}),
    (nn.LSTM, {"bias": False, "batch_first": True}),
    (nn.LSTM, {"proj_size": 2}),
    (nn.LSTM, {"proj_size": 3, "num_layers": 2, "bidirectional": True, "dropout": 0.3}),
    (nn.GRU, {}),
    (nn.GRU, {"num_layers": 2, "dropout": 0.5, "bidirectional": True}),
    (nn.GRU, {"bias": False}),
    (nn.GRU, {"batch_first": True, "num_layers": 2}),
]
OPTION_IDS = [
    f"{cls.__name__}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'default'}" for cls, kw in OPTIONS
]


def _states(native: nn.Module, batch: int | None) -> Any:
    """Random initial states of ``native``'s sizes (unbatched when ``batch`` is None)."""
    groups = native.num_layers * (2 if native.bidirectional else 1)
    lead = (groups,) if batch is None else (groups, batch)
    h_size = getattr(native, "proj_size", 0) or native.hidden_size
    h0 = _leaf(*lead, h_size)
    return (h0, _leaf(*lead, native.hidden_size)) if isinstance(native, nn.LSTM) else h0


def _inputs(native: nn.Module, kind: str) -> tuple[Any, Any]:
    """The input and states of one kind of call."""
    if kind == "padded":
        shape = (3, 6, 5) if native.batch_first else (6, 3, 5)
        return _leaf(*shape), None
    if kind == "padded with states":
        shape = (3, 6, 5) if native.batch_first else (6, 3, 5)
        return _leaf(*shape), _states(native, 3)
    if kind == "unbatched":
        return _leaf(6, 5), _states(native, None)
    # packed, unsorted lengths, with states (permuted as the sequences are)
    seqs = [torch.randn(n, 5, dtype=F64) for n in (2, 6, 4, 1)]
    packed = pack_sequence(seqs, enforce_sorted=False)
    packed = PackedSequence(
        packed.data.requires_grad_(True), packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices
    )
    return packed, _states(native, 4)


KINDS = ["padded", "padded with states", "unbatched", "packed"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("cls", "options"), OPTIONS, ids=OPTION_IDS)
def test_outputs_and_gradients_equal_native_float64(
    cls: type[nn.Module], options: dict[str, Any], kind: str
) -> None:
    """Outputs, h_n (and c_n), and the gradients of every parameter, the input and the initial
    states, in training mode (dropout draws native's masks), to 1e-10."""
    torch.manual_seed(0)
    native = cls(5, 4, **options).double()
    manual = _twin(native)
    x, hx = _inputs(native, kind)
    want_out, want_grads = _run(native, x, hx)
    got_out, got_grads = _run(manual, x, hx)
    assert [o.shape for o in got_out] == [o.shape for o in want_out]
    for got, want in zip(got_out + got_grads, want_out + want_grads, strict=True):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("cls", list(TWINS))
def test_eval_mode_has_no_dropout(cls: type[nn.Module]) -> None:
    native = cls(5, 4, num_layers=2, dropout=0.9).double().eval()
    manual = _twin(native)
    x = _leaf(6, 3, 5)
    torch.testing.assert_close(_flat(manual(x))[0], _flat(native(x))[0], **TOL)


@pytest.mark.parametrize("cls", list(TWINS))
def test_every_output_comes_from_the_layer_functions(cls: type[nn.Module]) -> None:
    """The output is a view of the last layer's Function's, and h_n (and c_n) stack the Functions'
    outputs; every parameter's gradient is computed by a manual Function (coverage 100%)."""
    manual = TWINS[cls](5, 4, num_layers=2)
    output, hidden = manual(torch.randn(6, 3, 5))
    assert output.grad_fn.name() == "ViewBackward0"  # (Σ b_t, H) -> (T, N, H)
    assert type(output.grad_fn.next_functions[0][0]) is FUNCTIONS[cls]._backward_cls
    for state in hidden if isinstance(hidden, tuple) else (hidden,):
        assert state.grad_fn.name().startswith("StackBackward")
        for node, _ in state.grad_fn.next_functions:
            assert type(node) is FUNCTIONS[cls]._backward_cls
    cover = manual_bp.coverage(manual, torch.randn(6, 3, 5), loss_fn=lambda out: _flat(out)[0].sum())
    assert cover.parameter_share == 1.0


@pytest.mark.parametrize(
    ("cls", "options"),
    [(nn.RNN, {"nonlinearity": "relu"}), (nn.LSTM, {"proj_size": 2, "bidirectional": True}), (nn.GRU, {})],
)
def test_state_dict_and_parameters_are_native(cls: type[nn.Module], options: dict[str, Any]) -> None:
    manual = TWINS[cls](5, 4, num_layers=2, **options)
    native = cls(5, 4, num_layers=2, **options)
    assert isinstance(manual, cls)
    assert type(manual).__module__ == "manual_bp.modules"
    assert list(manual.state_dict()) == list(native.state_dict())
    assert [p.shape for p in manual.parameters()] == [p.shape for p in native.parameters()]
    native.load_state_dict(manual.state_dict())
    for a, b in zip(native.state_dict().values(), manual.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert repr(manual) == repr(native)


@pytest.mark.parametrize("cls", [nn.RNN, nn.GRU])
def test_autocast_gives_natives_dtypes(cls: type[nn.Module]) -> None:
    """Under CPU bfloat16 autocast the products run in bfloat16 as native's linears do: the RNN's
    state is bfloat16, the GRU's float32 (its h_{t−1} − n mixes in the float32 state), and the
    gradients come back in the parameters' float32. (Native's LSTM fails under CPU autocast.)"""
    native = cls(5, 4, num_layers=2, bidirectional=True)
    manual = _twin(native)
    x = torch.randn(6, 3, 5, requires_grad=True)
    results = []
    for module in (native, manual):
        module.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            output, h_n = module(x)
        (output.float().sum() + h_n.float().sum()).backward()
        results.append((output, h_n, [p.grad for p in module.parameters()]))
    (out, h, grads), (want_out, want_h, want_grads) = results[1], results[0]
    assert (out.dtype, h.dtype) == (want_out.dtype, want_h.dtype)
    # both round the gates to bfloat16 after each op, not always after the same ones: a few
    # bfloat16 eps (2^-8) over six steps
    torch.testing.assert_close(out.float(), want_out.float(), rtol=0.05, atol=0.05)
    for g, w in zip(grads, want_grads, strict=True):
        assert g.dtype == w.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=0.05, atol=0.1)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
def test_module_docstring_example_runs(name: str) -> None:
    """Each module's doctest (its class lives in manual_bp.modules, where pytest's doctest finder
    does not look) shows the manual grad_fn."""
    tests = doctest.DocTestFinder().find(getattr(manual_bp, name), name)
    results = [doctest.DocTestRunner().run(t) for t in tests]
    assert sum(r.attempted for r in results) >= 4 and not any(r.failed for r in results)


# --------------------------------------------------------------------------------------------
# The classifiers of issue 15: convert, coverage, float64 gradients, revert, five SGD steps
# --------------------------------------------------------------------------------------------


class LSTMClassifier(nn.Module):
    """Embedding + 2-layer LSTM, classified from the last layer's final hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.lstm = nn.LSTM(6, 8, num_layers=2, dropout=0.2)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        _, (h_n, _) = self.lstm(self.embed(tokens))
        return self.head(h_n[-1])


class BiGRUClassifier(nn.Module):
    """A bidirectional GRU over (N, T, D) features, classified from the mean of its outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(5, 8, bidirectional=True, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        output, _ = self.gru(x)
        return self.head(output.mean(1))


class ElmanClassifier(nn.Module):
    """An Elman RNN, classified from its final hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(5, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        _, h_n = self.rnn(x)
        return self.head(h_n[-1])


def _classifier_data(name: str) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 3, (4,), generator=g)
    if name == "lstm":
        return torch.randint(0, 20, (7, 4), generator=g), target  # (T, N) tokens
    if name == "gru":
        return torch.randn(4, 7, 5, generator=g, dtype=F64), target  # batch_first
    return torch.randn(7, 4, 5, generator=g, dtype=F64), target


CLASSIFIERS = {"lstm": LSTMClassifier, "gru": BiGRUClassifier, "rnn": ElmanClassifier}


def _loss(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    torch.manual_seed(3)  # the LSTM's dropout
    return F.cross_entropy(model(x), target)


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classifier_converts_completely(name: str) -> None:
    torch.manual_seed(0)
    native = CLASSIFIERS[name]().double()
    converted = manual_bp.convert(native)
    x, target = _classifier_data(name)
    cover = manual_bp.coverage(converted, x, loss_fn=lambda y: F.cross_entropy(y, target))
    assert cover.parameter_share >= 0.99, str(cover)
    # float64 gradients equal native's
    for model in (native, converted):
        model.zero_grad()
        _loss(model, x, target).backward()
    for (name_, p), q in zip(converted.named_parameters(), native.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=name_)
    # revert: the same classes and a bit-identical state_dict
    reverted = manual_bp.revert(copy.deepcopy(converted))
    assert [type(m) for m in reverted.modules()] == [type(m) for m in native.modules()]
    assert list(reverted.state_dict()) == list(native.state_dict())
    for key, value in native.state_dict().items():
        assert torch.equal(reverted.state_dict()[key], value), key


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_classifier_five_sgd_steps_follow_native(name: str) -> None:
    torch.manual_seed(0)
    native = CLASSIFIERS[name]().double()
    converted = manual_bp.convert(native)
    x, target = _classifier_data(name)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.5) for m in (native, converted)]
    for _ in range(5):
        losses = []
        for model, opt in zip((native, converted), optimizers, strict=True):
            opt.zero_grad()
            loss = _loss(model, x, target)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], **TOL)
    for p, q in zip(converted.parameters(), native.parameters(), strict=True):
        torch.testing.assert_close(p, q, **TOL)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _params(module: nn.Module) -> list[Tensor]:
    return list(module._flat_weights)


def test_module_rejects_a_4d_input() -> None:
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D, got 4D"):
        manual_bp.LSTM(5, 4)(torch.randn(2, 3, 4, 5))


def test_module_rejects_states_of_the_wrong_rank() -> None:
    with pytest.raises(
        RuntimeError, match="^For batched 3-D input, hx should also be 3-D but got 2-D tensor$"
    ):
        manual_bp.GRU(5, 4)(torch.randn(6, 3, 5), torch.randn(3, 4))
    with pytest.raises(
        RuntimeError,
        match=r"^For unbatched 2-D input, hx and cx should also be 2-D but got \(3-D, 3-D\) tensors$",
    ):
        manual_bp.LSTM(5, 4)(torch.randn(6, 5), (torch.randn(1, 3, 4), torch.randn(1, 3, 4)))


def test_module_rejects_a_state_of_the_wrong_size() -> None:
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(1, 3, 4\), got \[1, 2, 4\]"):
        manual_bp.RNN(5, 4)(torch.randn(6, 3, 5), torch.randn(1, 2, 4))


def test_module_rejects_an_input_of_another_dtype() -> None:
    with pytest.raises(
        ValueError, match=r"input dtype \(torch.float32\) does not match weight dtype \(torch.float64\)"
    ):
        manual_bp.GRU(5, 4).double()(torch.randn(6, 3, 5))


def test_function_rejects_a_wrong_h0() -> None:
    gru = nn.GRU(5, 4)
    with pytest.raises(ValueError, match=r"gru expected h0 of shape \(1, 3, 4\).*got shape \(1, 3, 2\)"):
        recurrent.gru(
            torch.randn(6, 3, 5), torch.randn(1, 3, 2), _params(gru), True, 1, 0.0, True, False, False
        )


def test_function_rejects_a_wrong_c0() -> None:
    lstm = nn.LSTM(5, 4)
    hx = (torch.randn(1, 3, 4), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match=r"lstm expected c0 of shape \(1, 3, 4\)"):
        recurrent.lstm(torch.randn(6, 3, 5), hx, _params(lstm), True, 1, 0.0, True, False, False)


def test_function_rejects_integer_input() -> None:
    rnn = nn.RNN(5, 4)
    with pytest.raises(TypeError, match="input must be a floating-point tensor"):
        recurrent.rnn_tanh(
            torch.ones(6, 3, 5, dtype=torch.long),
            torch.zeros(1, 3, 4),
            _params(rnn),
            True,
            1,
            0.0,
            True,
            False,
            False,
        )


def test_function_rejects_a_wrong_input_size() -> None:
    rnn = nn.RNN(5, 4)
    with pytest.raises(
        ValueError, match=r"expected input with 5 features \(input_size\), got shape \(6, 3, 2\)"
    ):
        recurrent.rnn_relu(
            torch.randn(6, 3, 2), torch.zeros(1, 3, 4), _params(rnn), True, 1, 0.0, True, False, False
        )


def test_function_rejects_an_empty_sequence() -> None:
    rnn = nn.RNN(5, 4)
    with pytest.raises(ValueError, match="sequence length larger than 0"):
        recurrent.rnn_tanh(
            torch.randn(0, 3, 5), torch.zeros(1, 3, 4), _params(rnn), True, 1, 0.0, True, False, False
        )


def test_function_rejects_the_wrong_number_of_parameters() -> None:
    gru = nn.GRU(5, 4, num_layers=2)
    with pytest.raises(ValueError, match=r"gru expected 8 parameters \(2 layers × 1 directions × 4.*got 4"):
        recurrent.gru(
            torch.randn(6, 3, 5), torch.zeros(2, 3, 4), _params(gru)[:4], True, 2, 0.0, True, False, False
        )


def test_function_rejects_parameters_of_another_dtype() -> None:
    gru = nn.GRU(5, 4).double()
    with pytest.raises(TypeError, match=r"params\[0\] and input must have the same dtype"):
        recurrent.gru(
            torch.randn(6, 3, 5), torch.zeros(1, 3, 4), _params(gru), True, 1, 0.0, True, False, False
        )


def test_function_rejects_a_bad_dropout() -> None:
    gru = nn.GRU(5, 4)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\], got 1.5"):
        recurrent.gru(
            torch.randn(6, 3, 5), torch.zeros(1, 3, 4), _params(gru), True, 1, 1.5, True, False, False
        )


def test_function_rejects_bad_batch_sizes() -> None:
    gru = nn.GRU(5, 4)
    with pytest.raises(ValueError, match="batch_sizes must be a 1-D int64 tensor"):
        recurrent.gru(
            torch.randn(6, 5),
            torch.tensor([3.0, 3.0]),
            torch.zeros(1, 3, 4),
            _params(gru),
            True,
            1,
            0.0,
            True,
            False,
        )


def test_lstm_rejects_hx_that_is_not_a_pair() -> None:
    lstm = nn.LSTM(5, 4)
    with pytest.raises(TypeError, match=r"lstm expected hx as a pair \(h0, c0\)"):
        recurrent.lstm(
            torch.randn(6, 3, 5), torch.zeros(1, 3, 4), _params(lstm), True, 1, 0.0, True, False, False
        )


def test_function_rejects_the_wrong_number_of_arguments() -> None:
    with pytest.raises(TypeError, match="gru takes 9 arguments"):
        recurrent.gru(torch.randn(6, 3, 5), torch.zeros(1, 3, 4))
