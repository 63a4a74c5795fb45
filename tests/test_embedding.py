"""Embedding beyond the generic tests of test_ops.py: the module against torch.nn.Embedding, the
options that redefine the gradient (padding_idx, scale_grad_by_freq) and the in-place max_norm, a
weight tied to a manual Linear, convert/revert, and the errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd import gradcheck, gradgradcheck

import manual_bp
import manual_bp.functional as MF
from manual_bp.ops import OPS

TOL = {"rtol": 1e-10, "atol": 1e-10}
V, D = 7, 4  # num_embeddings, embedding_dim


def _indices(*shape: int, high: int = V) -> Tensor:
    return torch.randint(0, high, shape)


def _outputs_and_grads(layer: nn.Module, idx: Tensor, grad_output: Tensor) -> tuple[Tensor, Tensor]:
    out = layer(idx)
    (g,) = torch.autograd.grad(out, layer.weight, grad_output)
    return out.detach(), g


# ------------------------------------------------------------------------------------------------
# the module: a drop-in twin of torch.nn.Embedding
# ------------------------------------------------------------------------------------------------

MODULE_KWARGS: dict[str, dict[str, Any]] = {
    "default": {},
    "padding_idx": {"padding_idx": 2},
    "negative padding_idx": {"padding_idx": -1},
    "scale_grad_by_freq": {"scale_grad_by_freq": True},
    "max_norm": {"max_norm": 1.0},
    "max_norm, norm_type=1": {"max_norm": 1.5, "norm_type": 1.0},
    "everything": {"padding_idx": 0, "max_norm": 2.0, "scale_grad_by_freq": True},
}


@pytest.mark.parametrize("kwargs", MODULE_KWARGS.values(), ids=MODULE_KWARGS.keys())
def test_module_like_native(kwargs: dict[str, Any]) -> None:
    ours = manual_bp.Embedding(V, D, dtype=torch.float64, **kwargs)
    theirs = nn.Embedding(V, D, dtype=torch.float64, **kwargs)
    assert repr(ours) == repr(theirs)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()] == ["weight"]
    theirs.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    idx = torch.tensor([[1, 2, 2, 0], [6, 2, 5, 1]])  # repeats (2 three times) and the padding rows
    grad_output = torch.randn(2, 4, D, dtype=torch.float64)
    out, g = _outputs_and_grads(ours, idx, grad_output)
    ref, r = _outputs_and_grads(theirs, idx, grad_output)
    assert out.dtype == ref.dtype == torch.float64
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(g, r, **TOL)
    torch.testing.assert_close(ours.weight, theirs.weight, **TOL)  # max_norm renormalised both alike
    assert ours(idx).grad_fn.name() == "EmbeddingFunctionBackward"


def test_module_init_like_native() -> None:
    torch.manual_seed(3)
    ours = manual_bp.Embedding(V, D, padding_idx=3)
    torch.manual_seed(3)
    theirs = nn.Embedding(V, D, padding_idx=3)
    assert torch.equal(ours.weight, theirs.weight)
    assert ours.weight[3].abs().sum() == 0  # the padding row starts at zero, as native's


@pytest.mark.parametrize("freeze", [True, False])
def test_from_pretrained(freeze: bool) -> None:
    table = torch.randn(V, D, dtype=torch.float64)
    ours = manual_bp.Embedding.from_pretrained(table, freeze=freeze, padding_idx=1)
    theirs = nn.Embedding.from_pretrained(table, freeze=freeze, padding_idx=1)
    assert type(ours) is manual_bp.Embedding
    assert ours.weight.requires_grad == theirs.weight.requires_grad == (not freeze)
    idx = torch.tensor([0, 1, 4, 4])
    torch.testing.assert_close(ours(idx), theirs(idx), rtol=0, atol=0)
    if not freeze:
        grad_output = torch.randn(4, D, dtype=torch.float64)
        torch.testing.assert_close(
            _outputs_and_grads(ours, idx, grad_output)[1],
            _outputs_and_grads(theirs, idx, grad_output)[1],
            **TOL,
        )


# ------------------------------------------------------------------------------------------------
# the options that define the gradient otherwise than as the derivative
# ------------------------------------------------------------------------------------------------


def test_padding_row_looked_up_but_gets_no_gradient() -> None:
    w = torch.randn(V, D, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([2, 5, 2])
    out = MF.embedding(idx, w, padding_idx=2)
    assert torch.equal(out[0], w[2].detach())  # the forward returns the padding row's values
    (g,) = torch.autograd.grad(out.sum(), w)
    assert g[2].abs().sum() == 0
    assert torch.equal(g[5], torch.ones(D, dtype=torch.float64))


def test_negative_padding_idx_counts_from_the_end() -> None:
    w = torch.randn(V, D, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[V - 2, 1], [V - 2, 0]])
    grad_output = torch.randn(2, 2, D, dtype=torch.float64)
    (a,) = torch.autograd.grad(MF.embedding(idx, w, padding_idx=-2), w, grad_output)
    (b,) = torch.autograd.grad(MF.embedding(idx, w, padding_idx=V - 2), w, grad_output)
    assert torch.equal(a, b)
    assert a[V - 2].abs().sum() == 0


def test_scale_grad_by_freq_divides_by_the_count() -> None:
    w = torch.randn(V, D, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[3, 1, 3], [3, 0, 1]])  # 3 three times, 1 twice, 0 once
    grad_output = torch.randn(2, 3, D, dtype=torch.float64)
    (g,) = torch.autograd.grad(MF.embedding(idx, w, scale_grad_by_freq=True), w, grad_output)
    d = grad_output.reshape(6, D)
    expected = torch.zeros(V, D, dtype=torch.float64)
    expected[3] = (d[0] + d[2] + d[3]) / 3
    expected[1] = (d[1] + d[5]) / 2
    expected[0] = d[4]
    torch.testing.assert_close(g, expected, **TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("scale", [False, True], ids=["sum", "scale_grad_by_freq"])
def test_frequent_index_in_low_precision(dtype: torch.dtype, scale: bool) -> None:
    """An index 3000 times in a batch: in bfloat16 a running sum of ones stops at 256 (float16 at
    2048), so the rows are summed, and counted, in float32 and integers (as native's CUDA kernel
    does; its CPU kernel sums in the low precision and gives 256 and 0.125 in bfloat16 here)."""
    w = torch.randn(V, D).to(dtype).requires_grad_(True)
    idx = torch.cat([torch.full((3000,), 2), torch.tensor([0, 1])])
    grad_output = torch.ones(idx.shape[0], D, dtype=dtype)
    (g,) = torch.autograd.grad(MF.embedding(idx, w, scale_grad_by_freq=scale), w, grad_output)
    w64 = w.detach().double().requires_grad_(True)
    (truth,) = torch.autograd.grad(F.embedding(idx, w64, scale_grad_by_freq=scale), w64, grad_output.double())
    expected = torch.tensor(1.0 if scale else 3000.0, dtype=torch.float64)  # 3000 δ's (÷ 3000 if scaled)
    torch.testing.assert_close(truth[2, 0], expected)
    assert g.dtype == dtype
    torch.testing.assert_close(g, truth.to(dtype), rtol=0, atol=0)  # the truth rounded once


@pytest.mark.parametrize(
    "kwargs",
    [{"padding_idx": 1}, {"scale_grad_by_freq": True}, {"padding_idx": -1, "scale_grad_by_freq": True}],
    ids=["padding_idx", "scale_grad_by_freq", "both"],
)
def test_redefined_gradient_is_differentiable(kwargs: dict[str, Any]) -> None:
    """test_ops skips these samples (the gradient is not the derivative, so gradcheck fails, for
    native too); the backward itself is linear in δ and its own backward is checked here."""
    w = torch.randn(V, D, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[1, 6, 1], [0, 1, 6]])
    grad_output = torch.randn(2, 3, D, dtype=torch.float64, requires_grad=True)

    def backward(w: Tensor, g: Tensor) -> Tensor:
        return torch.autograd.grad(MF.embedding(idx, w, **kwargs), w, g, create_graph=True)[0]

    assert gradcheck(backward, (w, grad_output))
    assert gradgradcheck(lambda w: MF.embedding(idx, w, **kwargs), (w,), (grad_output,))


def test_gradcheck_without_the_options_holds() -> None:
    """Without padding_idx and scale_grad_by_freq the gradient is the derivative (the control of the
    test above: the same indices pass gradcheck)."""
    w = torch.randn(V, D, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[1, 6, 1], [0, 1, 6]])
    assert gradcheck(lambda w: MF.embedding(idx, w), (w,))
    assert not gradcheck(lambda w: MF.embedding(idx, w, padding_idx=1), (w,), raise_exception=False)


def test_max_norm_renormalises_in_place_like_native() -> None:
    """max_norm rescales the looked-up rows of the weight itself (in place, not differentiated, as
    native): each side gets its own copy of the weight and both end up equal."""
    base = 3 * torch.randn(V, D, dtype=torch.float64)
    idx = torch.tensor([[0, 2, 2], [5, 0, 6]])
    grad_output = torch.randn(2, 3, D, dtype=torch.float64)
    results = []
    for fn in (MF.embedding, F.embedding):
        w = base.clone().requires_grad_(True)
        out = fn(idx, w, max_norm=1.5, norm_type=3.0)
        (g,) = torch.autograd.grad(out, w, grad_output)
        results.append((out.detach(), g, w.detach()))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, **TOL)
    w = results[0][2]
    touched = torch.tensor([0, 2, 5, 6])
    assert (w[touched].norm(p=3, dim=1) <= 1.5 + 1e-12).all()  # looked-up rows renormalised
    untouched = torch.tensor([1, 3, 4])
    assert torch.equal(w[untouched], base[untouched])  # the others left alone


def test_max_norm_makes_gradcheck_impossible() -> None:
    """Why max_norm is kept out of the gradcheck samples: the call rescales the weight in place, so
    the function does not leave its input alone (finite differences perturb one entry and the call
    then rescales the whole row), and the gradient, native's too, treats the renormalised weight as
    the table (the renorm runs under no_grad). The native comparison above checks it instead."""
    w = 3 * torch.randn(V, D, dtype=torch.float64)
    w = w.requires_grad_(True)
    before = w.detach().clone()
    MF.embedding(torch.tensor([1]), w, max_norm=1.0)
    assert not torch.equal(w.detach(), before)  # the input itself changed
    assert not gradcheck(
        lambda w: MF.embedding(torch.tensor([1]), w, max_norm=1.0),
        (3 * torch.randn(V, D, dtype=torch.float64, requires_grad=True),),
        raise_exception=False,
    )


@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (2, 1, 3)], ids=str)
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=str)
def test_index_shapes_and_dtypes_like_native(shape: tuple[int, ...], index_dtype: torch.dtype) -> None:
    w = torch.randn(V, D, dtype=torch.float64, requires_grad=True)
    idx = _indices(*shape).to(index_dtype)
    out, ref = MF.embedding(idx, w), F.embedding(idx, w)
    assert out.shape == ref.shape == (*shape, D)
    grad_output = torch.randn(out.shape, dtype=torch.float64)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(
        torch.autograd.grad(out, w, grad_output)[0], torch.autograd.grad(ref, w, grad_output)[0], **TOL
    )


def test_no_input_gradient_and_weight_gradient_contiguous() -> None:
    w = torch.randn(D, V, dtype=torch.float64).t().requires_grad_(True)  # a non-contiguous weight
    out = MF.embedding(_indices(2, 3), w)
    g = torch.randn(3, 2, D, dtype=torch.float64).transpose(0, 1)  # a non-contiguous δ
    (gw,) = torch.autograd.grad(out, w, g)
    assert gw.shape == (V, D) and gw.is_contiguous()


# ------------------------------------------------------------------------------------------------
# a weight tied to a manual Linear (a language model's input and output embedding)
# ------------------------------------------------------------------------------------------------


class TinyLM(nn.Module):
    def __init__(self, emb: type[nn.Module], lin: type[nn.Module], act: type[nn.Module]) -> None:
        super().__init__()
        self.emb = emb(V, D)
        self.hidden = lin(D, D)
        self.act = act()
        self.head = lin(D, V, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, idx: Tensor) -> Tensor:
        return self.head(self.act(self.hidden(self.emb(idx))))


_VIEW_LIKE = ("TBackward", "ViewBackward", "UnsafeViewBackward", "ReshapeAliasBackward", "ExpandBackward")


def _nodes_above(root: Any, target: Any) -> list[Any]:
    """Every node of the graph from ``root`` with ``target`` among its next functions."""
    seen, stack, above = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is target:
                above.append(node)
            stack.append(nxt)
    return above


def test_tied_weight_gradient_all_from_explicit_backward() -> None:
    torch.manual_seed(5)
    ours = TinyLM(manual_bp.Embedding, manual_bp.Linear, manual_bp.Tanh).double()
    theirs = TinyLM(nn.Embedding, nn.Linear, nn.Tanh).double()
    theirs.load_state_dict(ours.state_dict())
    assert ours.head.weight is ours.emb.weight
    idx, target = _indices(3, 5), _indices(3, 5)
    losses = []
    for model in (ours, theirs):
        loss = MF.cross_entropy(model(idx).reshape(-1, V), target.reshape(-1))
        loss.backward()
        losses.append(loss)
    # the tied parameter's AccumulateGrad is fed by manual Functions only (through view-like nodes)
    root = losses[0].grad_fn
    (leaf,) = {
        nxt
        for node in _all_nodes(root)
        for nxt, _ in node.next_functions
        if type(nxt).__name__ == "AccumulateGrad" and nxt.variable is ours.emb.weight
    }
    feeding, frontier = [], _nodes_above(root, leaf)
    while frontier:
        node = frontier.pop()
        if node.name().startswith(_VIEW_LIKE):
            frontier += _nodes_above(root, node)
        else:
            feeding.append(node.name())
    assert sorted(feeding) == ["EmbeddingFunctionBackward", "LinearFunctionBackward"], feeding
    torch.testing.assert_close(ours.emb.weight.grad, theirs.emb.weight.grad, **TOL)
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, **TOL, msg=name)


def _all_nodes(root: Any) -> list[Any]:
    seen, stack = [], [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.append(node)
        stack += [nxt for nxt, _ in node.next_functions]
    return seen


# ------------------------------------------------------------------------------------------------
# convert / revert
# ------------------------------------------------------------------------------------------------


def test_convert_and_revert() -> None:
    torch.manual_seed(1)
    native = nn.Sequential(nn.Embedding(V, D, padding_idx=0), nn.Linear(D, 3), nn.Tanh()).double()
    converted = manual_bp.convert(native)
    assert type(converted[0]) is manual_bp.Embedding
    idx = _indices(4, 3)
    results = []
    for model in (converted, native):
        out = model(idx)
        out.square().sum().backward()
        results.append([out.detach()] + [p.grad for p in model.parameters()])
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want, **TOL)
    back = manual_bp.revert(copy.deepcopy(converted))
    assert type(back[0]) is nn.Embedding
    assert back.state_dict().keys() == native.state_dict().keys()
    for k, v in native.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_registered() -> None:
    (op,) = [op for op in OPS if op.name == "embedding"]
    assert op.function is MF.embedding and F.embedding in op.torch_functions
    assert manual_bp.Embedding.__module__ == "manual_bp.modules"


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------


def test_sparse_refused() -> None:
    w = torch.randn(V, D, requires_grad=True)
    with pytest.raises(NotImplementedError, match="dense gradients; pass sparse=False"):
        MF.embedding(_indices(3), w, sparse=True)
    with pytest.raises(NotImplementedError, match="dense gradients"):
        manual_bp.Embedding(V, D, sparse=True)(_indices(3))


@pytest.mark.parametrize("bad", [V, -1], ids=["too large", "negative"])
def test_index_out_of_range(bad: int) -> None:
    idx = torch.tensor([[0, bad], [1, 2]])
    with pytest.raises(IndexError, match=rf"indices must be in \[0, {V}\) \(num_embeddings={V}\)"):
        MF.embedding(idx, torch.randn(V, D))
    with pytest.raises(IndexError):  # native refuses too
        F.embedding(idx, torch.randn(V, D))


@pytest.mark.parametrize("dtype", [torch.float32, torch.int16, torch.uint8, torch.bool], ids=str)
def test_index_dtype(dtype: torch.dtype) -> None:
    with pytest.raises(TypeError, match=rf"integer indices \(int64 or int32\), got dtype {dtype}"):
        MF.embedding(torch.tensor([1]).to(dtype), torch.randn(V, D))


def test_input_not_a_tensor() -> None:
    with pytest.raises(TypeError, match="tensor of indices, got list"):
        MF.embedding([1, 2], torch.randn(V, D))


@pytest.mark.parametrize("shape", [(V,), (V, D, 2)], ids=str)
def test_weight_not_2d(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"weight of shape \(num_embeddings, embedding_dim\), got shape"):
        MF.embedding(torch.tensor([1]), torch.randn(shape))


def test_weight_not_floating() -> None:
    with pytest.raises(TypeError, match="weight must be a floating-point tensor"):
        MF.embedding(torch.tensor([1]), torch.arange(V * D).reshape(V, D))


@pytest.mark.parametrize("padding_idx", [V, -V - 1], ids=["too large", "too negative"])
def test_padding_idx_out_of_range(padding_idx: int) -> None:
    with pytest.raises(ValueError, match=rf"padding_idx must be within num_embeddings: in \[-{V}, {V}\)"):
        MF.embedding(torch.tensor([1]), torch.randn(V, D), padding_idx=padding_idx)


def test_padding_idx_not_an_int() -> None:
    with pytest.raises(TypeError, match="padding_idx must be an int or None, got float"):
        MF.embedding(torch.tensor([1]), torch.randn(V, D), padding_idx=1.5)


def test_max_norm_not_a_number() -> None:
    with pytest.raises(TypeError, match="max_norm must be a number or None, got str"):
        MF.embedding(torch.tensor([1]), torch.randn(V, D), max_norm="1")


def test_devices_differ() -> None:
    with pytest.raises(ValueError, match="must be on the same device, got input on meta and weight on cpu"):
        MF.embedding(torch.tensor([1], device="meta"), torch.randn(V, D))
