r"""Matrix products: ``matmul``, ``mm``, ``bmm``, ``addmm``, ``baddbmm`` and ``einsum``, each with
its backward written out.

A product ``Y = A B`` is a linear layer whose weight is an input like any other: for δ = ∂c/∂Y,
BP2 gives ``∂c/∂A = δ Bᵀ`` and BP3 (or BP2, for an activation times an activation, as in
attention's ``Q Kᵀ``) ``∂c/∂B = Aᵀ δ``. Where batch dims were broadcast (``matmul``, the ``input`` of
``addmm``/``baddbmm``) the gradient is summed back over them with
:func:`~manual_bp.ops.arithmetic.sum_to`. GPT-2's ``Conv1D`` is ``addmm(b, x, W)``: its BP3 are
``xᵀ δ`` and ``Σ_rows δ``.

Each forward calls the native op, so its shapes, broadcasting, error messages and autocast casts
(the products run in float16/bfloat16 under autocast, as ``linear`` does) are torch's own; under
autocast the backward multiplies δ by the saved operands cast to δ's dtype, as native does with
the casts autocast saved. Complex tensors are not supported: a call autograd records on them
raises a ``TypeError``.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from numbers import Number
from typing import Any

import torch
from torch import Tensor

from manual_bp._function import ManualFunction
from manual_bp.ops._op import Op, Sample, noncontiguous, tensor
from manual_bp.ops.arithmetic import _real, recording, sum_to

__all__ = [
    "MATMUL_OPS",
    "AddmmFunction",
    "BaddbmmFunction",
    "BmmFunction",
    "EinsumFunction",
    "MatmulFunction",
    "MmFunction",
    "addmm",
    "baddbmm",
    "bmm",
    "einsum",
    "matmul",
    "mm",
]


def _as(t: Tensor, like: Tensor) -> Tensor:
    """``t`` in ``like``'s dtype: a saved operand cast as autocast cast it for the forward."""
    return t if t.dtype == like.dtype else t.to(like.dtype)


def _scaled(t: Tensor, factor: Number) -> Tensor:
    return t if factor == 1 else t * factor


class MmFunction(ManualFunction):
    r"""``Y = A B`` for matrices ``(n, k) @ (k, m)``: :math:`\partial c/\partial A = \delta B^\top`,
    :math:`\partial c/\partial B = A^\top \delta`."""

    @staticmethod
    def forward(input: Tensor, mat2: Tensor) -> Tensor:
        return torch.mm(input, mat2)  # FF: (n, k) @ (k, m) -> (n, m)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _real(output, "bmm" if output.dim() == 3 else "mm")
        input, mat2 = inputs
        needs = ctx.needs_input_grad
        ctx.save_for_backward(input if needs[1] else None, mat2 if needs[0] else None)  # each for the other

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, mat2 = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_input = grad_mat2 = None
        if needs[0]:  # BP2: δ Bᵀ; ([b,] n, m) @ ([b,] m, k) -> ([b,] n, k)
            grad_input = grad_output.matmul(_as(mat2, grad_output).mT)
        if needs[1]:  # BP3: Aᵀ δ; ([b,] k, n) @ ([b,] n, m) -> ([b,] k, m)
            grad_mat2 = _as(input, grad_output).mT.matmul(grad_output)
        return grad_input, grad_mat2


class BmmFunction(MmFunction):
    r"""``Y_b = A_b B_b`` for batches ``(b, n, k) @ (b, k, m)``: :class:`MmFunction` for each matrix of
    the batch (its backward, written once for both, works on ``(n, m)`` and ``(b, n, m)``)."""

    @staticmethod
    def forward(input: Tensor, mat2: Tensor) -> Tensor:
        return torch.bmm(input, mat2)  # FF: (b, n, k) @ (b, k, m) -> (b, n, m)


class MatmulFunction(ManualFunction):
    r"""``Y = A B`` as ``torch.matmul``: 1-D operands as a row (``A``) or column (``B``) vector,
    batch dims broadcast. :math:`\partial c/\partial A = \delta B^\top`,
    :math:`\partial c/\partial B = A^\top \delta`, each summed over the batch dims its operand was
    broadcast along."""

    @staticmethod
    def forward(input: Tensor, other: Tensor) -> Tensor:
        return torch.matmul(input, other)  # FF: (*, n, k) @ (*, k, m) -> (*, n, m)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _real(output, "matmul")
        input, other = inputs
        needs = ctx.needs_input_grad
        ctx.save_for_backward(input if needs[1] else None, other if needs[0] else None)
        ctx.shapes = input.shape, other.shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        input, other = ctx.saved_tensors
        a_shape, b_shape = ctx.shapes
        needs = ctx.needs_input_grad
        # 1-D operands as matrices, A (k,) -> (1, k) and B (k,) -> (k, 1); δ gets those dims back
        a_2d = (1, *a_shape) if len(a_shape) == 1 else a_shape
        b_2d = (*b_shape, 1) if len(b_shape) == 1 else b_shape
        delta = grad_output
        if len(b_shape) == 1:
            delta = delta.unsqueeze(-1)  # (*, n) -> (*, n, 1)
        if len(a_shape) == 1:
            delta = delta.unsqueeze(-2)  # (*, m) -> (*, 1, m)
        grad_input = grad_other = None
        if needs[0]:
            b = _as(other, grad_output).reshape(b_2d)
            # BP2: δ Bᵀ; (*, n, m) @ (*, m, k) -> (*, n, k), summed over A's broadcast batch dims
            grad_input = sum_to(delta.matmul(b.mT), a_2d).reshape(a_shape)
        if needs[1]:
            a = _as(input, grad_output).reshape(a_2d)
            if len(b_2d) == 2:  # one B for every batch: Σ_batch A_iᵀ δ_i as one product
                # BP3: Aᵀ δ; (k, *·n) @ (*·n, m) -> (k, m)
                grad = a.reshape(-1, a_2d[-1]).mT.mm(delta.reshape(-1, delta.shape[-1]))
            else:
                # BP3: Aᵀ δ; (*, k, n) @ (*, n, m) -> (*, k, m), summed over B's broadcast batch dims
                grad = sum_to(a.mT.matmul(delta), b_2d)
            grad_other = grad.reshape(b_shape)
        return grad_input, grad_other


class AddmmFunction(ManualFunction):
    r"""``Y = β I + α A B`` (``I`` broadcast to ``(n, m)``): :math:`\partial c/\partial I = \beta \delta`
    summed to ``I``'s shape, :math:`\partial c/\partial A = \alpha \delta B^\top`,
    :math:`\partial c/\partial B = \alpha A^\top \delta`."""

    @staticmethod
    def forward(input: Tensor, mat1: Tensor, mat2: Tensor, beta: Number, alpha: Number) -> Tensor:
        return torch.addmm(input, mat1, mat2, beta=beta, alpha=alpha)  # FF: β I + α (n, k) @ (k, m)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _real(output, "baddbmm" if output.dim() == 3 else "addmm")
        input, mat1, mat2, ctx.beta, ctx.alpha = inputs
        needs = ctx.needs_input_grad
        ctx.save_for_backward(mat1 if needs[2] else None, mat2 if needs[1] else None)
        ctx.input_shape = input.shape

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        mat1, mat2 = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_input = grad_mat1 = grad_mat2 = None
        if needs[0]:  # BP3 (a bias): β Σ_rows δ; ([b,] n, m) -> I's shape
            grad_input = sum_to(_scaled(grad_output, ctx.beta), ctx.input_shape)
        if needs[1]:  # BP2: α δ Bᵀ; ([b,] n, m) @ ([b,] m, k) -> ([b,] n, k)
            grad_mat1 = _scaled(grad_output.matmul(_as(mat2, grad_output).mT), ctx.alpha)
        if needs[2]:  # BP3: α Aᵀ δ; ([b,] k, n) @ ([b,] n, m) -> ([b,] k, m)
            grad_mat2 = _scaled(_as(mat1, grad_output).mT.matmul(grad_output), ctx.alpha)
        return grad_input, grad_mat1, grad_mat2, None, None


class BaddbmmFunction(AddmmFunction):
    r"""``Y_b = β I_b + α A_b B_b`` (``I`` broadcast to ``(b, n, m)``): :class:`AddmmFunction` for each
    matrix of the batch (its backward, written once for both, works on ``(n, m)`` and ``(b, n, m)``)."""

    @staticmethod
    def forward(input: Tensor, batch1: Tensor, batch2: Tensor, beta: Number, alpha: Number) -> Tensor:
        return torch.baddbmm(input, batch1, batch2, beta=beta, alpha=alpha)  # FF: β I + α (b,n,k) @ (b,k,m)


def mm(input: Tensor, mat2: Tensor) -> Tensor:
    """``input @ mat2`` for matrices ``(n, k) @ (k, m)`` with the explicit backward of :class:`MmFunction`.

    >>> import torch
    >>> mm(torch.randn(2, 3, requires_grad=True), torch.randn(3, 4)).grad_fn.name()
    'MmFunctionBackward'
    """
    return MmFunction.apply(input, mat2) if recording(input, mat2) else torch.mm(input, mat2)


def bmm(input: Tensor, mat2: Tensor) -> Tensor:
    """``input @ mat2`` for batches ``(b, n, k) @ (b, k, m)`` with the explicit backward of
    :class:`BmmFunction`."""
    return BmmFunction.apply(input, mat2) if recording(input, mat2) else torch.bmm(input, mat2)


def matmul(input: Tensor, other: Tensor) -> Tensor:
    """``torch.matmul`` (every rank: vector·vector, vector·matrix, batched with broadcast batch dims)
    with the explicit backward of :class:`MatmulFunction`.

    >>> import torch
    >>> matmul(torch.randn(5, 2, 3, requires_grad=True), torch.randn(3, 4)).shape
    torch.Size([5, 2, 4])
    """
    return MatmulFunction.apply(input, other) if recording(input, other) else torch.matmul(input, other)


def addmm(input: Tensor, mat1: Tensor, mat2: Tensor, *, beta: Number = 1, alpha: Number = 1) -> Tensor:
    """``beta * input + alpha * (mat1 @ mat2)`` with the explicit backward of :class:`AddmmFunction`
    (``input`` broadcasts to ``(n, m)``: GPT-2's ``Conv1D`` is ``addmm(bias, x, weight)``)."""
    if recording(input, mat1, mat2):
        return AddmmFunction.apply(input, mat1, mat2, beta, alpha)
    return torch.addmm(input, mat1, mat2, beta=beta, alpha=alpha)


def baddbmm(input: Tensor, batch1: Tensor, batch2: Tensor, *, beta: Number = 1, alpha: Number = 1) -> Tensor:
    """``beta * input + alpha * (batch1 @ batch2)`` for batches with the explicit backward of
    :class:`BaddbmmFunction` (``input`` broadcasts to ``(b, n, m)``)."""
    if recording(input, batch1, batch2):
        return BaddbmmFunction.apply(input, batch1, batch2, beta, alpha)
    return torch.baddbmm(input, batch1, batch2, beta=beta, alpha=alpha)


# ------------------------------------------------------------------------------------------------
# einsum
# ------------------------------------------------------------------------------------------------


class _Einsum:
    """One einsum call made explicit: every operand's subscripts (an ellipsis replaced by letters of
    its own), the output's, and for each operand the einsum giving its gradient.

    The gradient of operand ``k`` is the einsum of δ with the other operands whose output is ``k``'s
    subscripts, less the labels that appear in ``k`` only (the forward summed them over ``k`` alone);
    those come back by expanding: ``missing[k]``.
    """

    def __init__(self, terms: tuple[str, ...], output: str) -> None:
        self.terms, self.output = terms, output
        self.equation = f"{','.join(terms)}->{output}"
        backward, missing = [], []
        for k, term in enumerate(terms):
            others = [t for j, t in enumerate(terms) if j != k]
            seen = set(output).union(*others)
            backward.append(f"{','.join([output, *others])}->{''.join(c for c in term if c in seen)}")
            missing.append(tuple(i for i, c in enumerate(term) if c not in seen))
        self.backward: tuple[str, ...] = tuple(backward)
        self.missing: tuple[tuple[int, ...], ...] = tuple(missing)

    def __repr__(self) -> str:
        return f"einsum({self.equation!r})"


def _sublists_to_equation(args: Sequence[Any]) -> tuple[str, tuple[Any, ...]]:
    """``einsum(op1, sublist1, op2, sublist2, ..., [sublist_out])`` as an equation and its operands
    (labels 0–25 are ``A``–``Z``, 26–51 ``a``–``z``, ``...`` an ellipsis, as torch reads them)."""

    def term(sublist: Any) -> str:
        return "".join("..." if s is Ellipsis else string.ascii_letters[(s + 26) % 52] for s in sublist)

    pairs = len(args) // 2
    operands = tuple(args[2 * i] for i in range(pairs))
    terms = [term(args[2 * i + 1]) for i in range(pairs)]
    equation = ",".join(terms) + (f"->{term(args[-1])}" if len(args) % 2 else "")
    return equation, operands


_SPECS: dict[tuple[str, tuple[int, ...]], _Einsum | str] = {}  # _parse's results, by its arguments


def _spec(equation: str, ndims: tuple[int, ...]) -> _Einsum | str:
    """:func:`_parse`'s result, parsed once per equation and operand ranks (traced as is under
    ``torch.compile``, which ignores caches)."""
    if torch.compiler.is_compiling():
        return _parse(equation, ndims)
    spec = _SPECS.get((equation, ndims))
    if spec is None:
        spec = _parse(equation, ndims)
        if len(_SPECS) < 1024:
            _SPECS[equation, ndims] = spec
    return spec


def _parse(equation: str, ndims: tuple[int, ...]) -> _Einsum | str:
    """The explicit form of ``equation`` for operands of ``ndims`` dims, or a message saying why not."""
    eq = equation.replace(" ", "")
    lhs, arrow, output = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ndims) or "->" in output:
        return f"the equation names {len(terms)} operand(s), {len(ndims)} given"
    letters = set(c for c in eq if c.isalpha())
    if any(not (c in string.ascii_letters or c in ".,->") for c in eq):
        return "subscripts must be in [a-zA-Z]"
    spare = [c for c in string.ascii_letters if c not in letters]
    widths = []  # how many dims each term's ellipsis covers
    for term, ndim in zip(terms, ndims, strict=True):
        labels = term.replace("...", "")
        if not labels.isalpha() and labels or term.count("...") > 1 or "." in labels:
            return f"malformed term {term!r}"
        width = ndim - len(labels) if "..." in term else 0
        if width < 0 or ("..." not in term and len(labels) != ndim):
            return f"the term {term!r} does not match an operand of {ndim} dims"
        widths.append(width)
    ellipsis = "".join(spare[: max(widths, default=0)])  # the broadcast ellipsis dims, right-aligned
    terms = [t.replace("...", ellipsis[len(ellipsis) - w :]) for t, w in zip(terms, widths, strict=True)]
    for i, term in enumerate(terms):
        repeated = sorted({c for c in term if term.count(c) > 1})
        if repeated:
            return (
                f"operand {i} repeats the subscript(s) {', '.join(repeated)} (a diagonal), which "
                "manual_bp's einsum does not support"
            )
    if arrow:
        output = output.replace("...", ellipsis)
        if len(set(output)) != len(output) or not set(output) <= set("".join(terms)):
            return f"invalid output subscripts {output!r}"
    else:  # implicit output: the ellipsis dims, then the labels used once, in alphabetical order
        once = sorted(c for c in letters if "".join(terms).count(c) == 1)
        output = ellipsis + "".join(once)
    return _Einsum(tuple(terms), output)


class EinsumFunction(ManualFunction):
    r"""``Y = einsum(equation, X_1, …, X_n)``: :math:`\partial c/\partial X_k` is the einsum of δ with
    the other operands whose output is :math:`X_k`'s subscripts (expanded over the labels only
    :math:`X_k` has, summed over the dims it was broadcast along).

    Called as ``apply(equation, backward, missing, *operands)`` with the explicit equation and the
    gradients' einsums of :class:`_Einsum` (strings and tuples: constants to ``torch.compile``).
    """

    @staticmethod
    def forward(
        equation: str, backward: tuple[str, ...], missing: tuple[tuple[int, ...], ...], *operands: Tensor
    ) -> Tensor:
        return torch.einsum(equation, *operands)  # FF: Σ over the labels not in the output

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _real(output, "einsum")
        _, ctx.equations, ctx.missing, *operands = inputs
        ctx.save_for_backward(*operands)
        ctx.shapes = [x.shape for x in operands]

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        operands = ctx.saved_tensors
        grads: list[Tensor | None] = [None, None, None]
        for k, shape in enumerate(ctx.shapes):
            if not ctx.needs_input_grad[k + 3]:
                grads.append(None)
                continue
            others = [_as(x, grad_output) for j, x in enumerate(operands) if j != k]
            # BP2/BP3: δ contracted with the other operands; (out) -> X_k's labels that δ or they have
            grad = torch.einsum(ctx.equations[k], grad_output, *others)
            for d in ctx.missing[k]:
                grad = grad.unsqueeze(d)  # the labels only X_k has: (…) -> (…, 1, …)
            # summed where X_k was broadcast (size 1), expanded where only X_k has the label
            grad = sum_to(grad, [1 if n == 1 else g for n, g in zip(shape, grad.shape, strict=True)])
            grads.append(grad.expand(shape))
        return tuple(grads)


def einsum(equation: str, *operands: Any) -> Tensor:
    """``torch.einsum`` with the explicit backward of :class:`EinsumFunction`.

    As torch: an equation with or without ``->``, ellipses, broadcasting, operands given one by one
    or as one list, or the sublist format ``einsum(op1, [0, 1], op2, [1, 2], [0, 2])``. A subscript
    repeated within one operand (a diagonal, ``'ii->i'``) is refused with a ``ValueError``.

    >>> import torch
    >>> einsum("bij,bjk->bik", torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 4, 5)).shape
    torch.Size([2, 3, 5])
    """
    if not isinstance(equation, str):  # the sublist format
        equation, operands = _sublists_to_equation((equation, *operands))
    elif len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not recording(*operands):
        return torch.einsum(equation, *operands)
    try:
        spec = _spec(equation, tuple(x.dim() for x in operands))
    except AttributeError:  # not tensors: torch's own error
        spec = "operands must be tensors"
    if isinstance(spec, str):
        torch.einsum(equation, *operands)  # torch's own error where torch rejects the call
        raise ValueError(f"einsum({equation!r}): {spec}")
    return EinsumFunction.apply(spec.equation, spec.backward, spec.missing, *operands)


# ------------------------------------------------------------------------------------------------
# samples and registry entries
# ------------------------------------------------------------------------------------------------


def _x(dtype: torch.dtype, device: torch.device) -> Any:
    def x(*shape: int) -> Tensor:
        return tensor(shape, dtype, device)

    return x


def _matmul_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    x = _x(dtype, device)
    nc = noncontiguous
    return [
        Sample((x(2, 3), x(3, 4)), label="(2, 3) @ (3, 4)"),
        Sample((x(3), x(3)), label="1-D @ 1-D (a dot product)"),
        Sample((x(3), x(3, 4)), label="1-D @ 2-D"),
        Sample((x(2, 3), x(3)), label="2-D @ 1-D"),
        Sample((x(2, 2, 3), x(3, 4)), label="batched @ 2-D"),
        Sample((x(2, 3), x(2, 3, 4)), label="2-D @ batched"),
        Sample((x(2, 1, 2, 3), x(3, 3, 2)), label="batch dims broadcast"),
        Sample((x(3), x(2, 3, 4)), label="1-D @ batched"),
        Sample((x(2, 2, 3), x(3)), label="batched @ 1-D"),
        Sample((nc((2, 3), dtype, device), nc((2, 3, 4), dtype, device)), label="non-contiguous"),
        Sample((x(0, 2, 3), x(3, 4)), label="empty batch"),
    ]


def _mm_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    x = _x(dtype, device)
    return [
        Sample((x(2, 3), x(3, 4)), label="(2, 3) @ (3, 4)"),
        Sample((x(1, 5), x(5, 1)), label="row @ column"),
        Sample(
            (noncontiguous((4, 3), dtype, device), noncontiguous((3, 2), dtype, device)),
            label="non-contiguous",
        ),
        Sample((x(0, 3), x(3, 4)), label="empty rows"),
        Sample((x(2, 0), x(0, 3)), label="empty inner dim"),
        Sample((x(3, 1), x(1, 4)), label="outer product (inner dim 1)"),
    ]


def _bmm_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    x = _x(dtype, device)
    return [
        Sample((x(2, 2, 3), x(2, 3, 4)), label="(2, 2, 3) @ (2, 3, 4)"),
        Sample((x(1, 3, 2), x(1, 2, 3)), label="one batch"),
        Sample(
            (noncontiguous((2, 4, 3), dtype, device), noncontiguous((2, 3, 2), dtype, device)),
            label="non-contiguous",
        ),
        Sample((x(0, 2, 3), x(0, 3, 4)), label="empty batch"),
        Sample((x(3, 2, 1), x(3, 1, 2)), label="outer products (inner dim 1)"),
        Sample((x(2, 1, 4), x(2, 4, 1)), label="dot products (1 x 1 results)"),
    ]


def _addmm_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    x = _x(dtype, device)
    return [
        Sample((x(4), x(2, 3), x(3, 4)), label="a bias (4,) (GPT-2's Conv1D)"),
        Sample((x(2, 4), x(2, 3), x(3, 4)), label="input (2, 4)"),
        Sample((x(2, 1), x(2, 3), x(3, 4)), label="input (2, 1) broadcast"),
        Sample((x(), x(2, 3), x(3, 4)), label="0-d input"),
        Sample((x(4), x(2, 3), x(3, 4)), {"beta": 0.5, "alpha": -2.0}, label="beta=0.5, alpha=-2"),
        Sample((x(4), x(2, 3), x(3, 4)), {"beta": 0}, label="beta=0"),
        Sample(
            (x(4), noncontiguous((5, 3), dtype, device), noncontiguous((3, 4), dtype, device)),
            label="non-contiguous",
        ),
        Sample((x(4), x(0, 3), x(3, 4)), label="empty batch"),
    ]


def _baddbmm_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    x = _x(dtype, device)
    return [
        Sample((x(2, 2, 4), x(2, 2, 3), x(2, 3, 4)), label="input (2, 2, 4)"),
        Sample((x(4), x(2, 2, 3), x(2, 3, 4)), label="input (4,) broadcast"),
        Sample((x(2, 1, 4), x(2, 2, 3), x(2, 3, 4)), label="input (2, 1, 4) broadcast"),
        Sample(
            (x(2, 2, 4), x(2, 2, 3), x(2, 3, 4)), {"beta": 0.5, "alpha": -2.0}, label="beta=0.5, alpha=-2"
        ),
        Sample(
            (x(2, 2, 4), noncontiguous((2, 2, 3), dtype, device), noncontiguous((2, 3, 4), dtype, device)),
            label="non-contiguous",
        ),
        Sample((x(0, 2, 4), x(0, 2, 3), x(0, 3, 4)), label="empty batch"),
    ]


def _einsum_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    x = _x(dtype, device)
    return [
        Sample(("ij,jk->ik", x(2, 3), x(3, 4)), label="a matrix product"),
        Sample(("ij,jk", x(2, 3), x(3, 4)), label="implicit output"),
        Sample(("bhqd,bhkd->bhqk", x(1, 2, 3, 2), x(1, 2, 4, 2)), label="attention scores"),
        Sample(("i,j->ij", x(3), x(4)), label="outer product"),
        Sample(("ij->", x(2, 3)), label="sum of everything"),
        Sample(("ij->ji", x(2, 3)), label="a transpose (a view)"),
        Sample(("...ij,jk->...ik", x(2, 2, 3), x(3, 2)), label="ellipsis"),
        Sample(("ij,ij->i", x(1, 3), x(2, 3)), label="elementwise, broadcast size-1 dim"),
        Sample(("ij,j->", x(2, 3), x(3)), label="a label in one operand only"),
        Sample(("ij,jk,kl->il", x(2, 3), x(3, 2), x(2, 2)), label="three operands"),
        Sample((x(2, 3), [0, 1], x(3, 2), [1, 2], [0, 2]), label="sublist format"),
        Sample(
            ("ij,jk->ik", noncontiguous((2, 3), dtype, device), noncontiguous((3, 4), dtype, device)),
            label="non-contiguous",
        ),
    ]


MATMUL_OPS: tuple[Op, ...] = (
    Op(
        "matmul",
        matmul,
        torch.matmul,
        _matmul_samples,
        MatmulFunction,
        torch_functions=(torch.matmul, Tensor.matmul),
        formula=(
            r"BP2: $\delta_A = \delta B^\top$; BP3: $\delta_B = A^\top \delta$, each summed over the "
            r"batch dims it was broadcast along (a 1-D operand as a row/column)"
        ),
    ),
    Op(
        "mm",
        mm,
        torch.mm,
        _mm_samples,
        MmFunction,
        torch_functions=(torch.mm, Tensor.mm),
        formula=r"BP2: $\delta_A = \delta B^\top$; BP3: $\delta_B = A^\top \delta$",
    ),
    Op(
        "bmm",
        bmm,
        torch.bmm,
        _bmm_samples,
        BmmFunction,
        torch_functions=(torch.bmm, Tensor.bmm),
        formula=r"BP2: $\delta_{A_b} = \delta_b B_b^\top$; BP3: $\delta_{B_b} = A_b^\top \delta_b$",
    ),
    Op(
        "addmm",
        addmm,
        torch.addmm,
        _addmm_samples,
        AddmmFunction,
        torch_functions=(torch.addmm, Tensor.addmm),
        formula=(
            r"BP2: $\delta_A = \alpha\,\delta B^\top$; BP3: $\delta_B = \alpha A^\top \delta$, "
            r"$\delta_I = \beta \sum_{\text{rows}} \delta$ (summed to $I$'s shape)"
        ),
    ),
    Op(
        "baddbmm",
        baddbmm,
        torch.baddbmm,
        _baddbmm_samples,
        BaddbmmFunction,
        torch_functions=(torch.baddbmm, Tensor.baddbmm),
        formula=(
            r"BP2: $\delta_{A_b} = \alpha\,\delta_b B_b^\top$; "
            r"BP3: $\delta_{B_b} = \alpha A_b^\top \delta_b$, "
            r"$\delta_I = \beta\,\delta$ summed to $I$'s shape"
        ),
    ),
    Op(
        "einsum",
        einsum,
        torch.einsum,
        _einsum_samples,
        EinsumFunction,
        torch_functions=(torch.einsum,),
        formula=(
            r"BP2/BP3: $\delta_{X_k}$ = the einsum of $\delta$ with the other operands, output $X_k$'s "
            r"subscripts (expanded over labels only $X_k$ has)"
        ),
    ),
)
