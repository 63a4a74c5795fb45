r"""Recurrent layers (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``): backpropagation through time written out.

A recurrent layer is the seed's network unrolled over time: step ``t`` reads the input ``x_t`` and
the previous state ``h_{t−1}`` (and ``c_{t−1}`` for the LSTM). Each layer and direction runs in
two parts:

* the input projection of every step at once, ``X W_ihᵀ + b_ih``, through the registry's
  :func:`~manual_bp.ops.linear.linear` (its BP2 gives the input's gradient ``δ W_ih``, its BP3
  ``∂c/∂W_ih`` and ``∂c/∂b_ih``);
* the recurrence, one Function per layer and direction (:class:`RNNLayerFunction`,
  :class:`LSTMLayerFunction`, :class:`GRULayerFunction`): forward runs the cell step by step and
  keeps its gates; backward is BPTT, one loop backwards over time. At each step the error ``δh_t``
  is what comes from the output at ``t`` plus what step ``t + 1`` sends back; the cell turns it
  into the error of its pre-activations (the gate derivatives, ``f′`` from the registry's sigmoid,
  tanh and relu) and sends ``δh_{t−1} = δz_t W_hh`` (BP2) on. BP3 sums over steps:
  ``∂c/∂W_hh = Σ_t δz_tᵀ h_{t−1}``, one product over all steps after the loop.

Layers are stacked as native stacks them (the output of layer ``l``, both directions concatenated,
is the input of layer ``l + 1``), with the registry's :func:`~manual_bp.ops.dropout.dropout`
between layers; on the CPU it draws the same masks as native's (on CUDA native's cuDNN kernel
draws its own, which nothing outside it can reproduce).

Rows are in ``PackedSequence`` order everywhere: step ``t`` is the rows ``offset_t … offset_t + b_t``
of a ``(Σ_t b_t, ·)`` tensor, the first ``b_t`` sequences of the batch (sorted by decreasing
length). A padded ``(T, N, ·)`` input is the case ``b_t = N``. Sequences that have ended (or, in the
reverse direction, not begun) keep their state, so ``h_n`` holds each sequence's state after its
own last step, as native's does.

Double backward differentiates the backward: the gates it reads are then recomputed from the
inputs (the saved ones are constants), as the norms recompute their statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from manual_bp._function import ManualFunction, autocast_cast, autocast_dtype, check_floating, check_same
from manual_bp.ops._op import Op, Sample, tensor
from manual_bp.ops.activations import ReLU, Sigmoid, Tanh
from manual_bp.ops.dropout import dropout as _dropout
from manual_bp.ops.elementwise import Elementwise
from manual_bp.ops.linear import linear

__all__ = [
    "GRU",
    "LSTM",
    "RECURRENT_OPS",
    "RNN",
    "GRULayerFunction",
    "LSTMLayerFunction",
    "RNNLayerFunction",
    "gru",
    "lstm",
    "rnn_relu",
    "rnn_tanh",
]

_SIGMOID, _TANH = Sigmoid(), Tanh()


# --------------------------------------------------------------------------------------------
# The cells: one step forward, and its backward
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """The formulas of one recurrent cell: a step forward and its backward.

    ``gates`` is the number of ``H``-blocks of the input projection (1, 4, 3). ``step`` takes
    ``gx`` (the step's rows of the input projection ``X W_ihᵀ + b_ih``, plus ``b_hh`` where
    ``fold_bias``), the previous state and the recurrent weights, and returns the new state and
    what backward reads (a tuple of ``(b_t, ·)`` tensors, kept per step): first ``h_{t−1}``, which
    BP3 of ``W_hh`` reads, and last, with a projection, ``m_t``, which BP3 of ``W_hr`` reads.

    Backward runs in two parts. ``factors`` turns what the forward kept, for every step at once,
    into the factors of the gate derivatives that do not depend on the error (``f′`` of each gate
    times what it multiplies): a few large products instead of many small ones inside the loop.
    ``backward`` is then one step of BPTT: from ``δh_t`` (and ``δc_t``) and the step's rows of the
    factors it returns ``δ`` of the input projection, ``δ`` of the hidden projection
    ``h W_hhᵀ + b_hh`` (the same tensor except for the GRU), ``δh_{t−1}`` and ``δc_{t−1}``.
    Instances are hashable: they travel as a Function's non-tensor argument.
    """

    gates: ClassVar[int] = 1
    has_cell: ClassVar[bool] = False
    fold_bias: ClassVar[bool] = True  # b_hh is added to gx once for all steps

    def step(
        self, gx: Tensor, h: Tensor, c: Tensor | None, w_hh: Tensor, b_hh: Tensor | None, w_hr: Tensor | None
    ) -> tuple[Tensor, Tensor | None, tuple[Tensor, ...]]:
        raise NotImplementedError

    def factors(self, saved: Sequence[Tensor]) -> tuple[Tensor, ...]:
        raise NotImplementedError

    def backward(
        self, dh: Tensor, dc: Tensor | None, factors: Sequence[Tensor], w_hh: Tensor, w_hr: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        raise NotImplementedError


def _times(delta: Tensor, other: Tensor) -> Tensor:
    """``δ @ other`` with ``other`` (a weight, or saved states) in ``δ``'s dtype: under autocast the
    weights are lower-precision casts while ``δ`` may be float32 (an error that went through a
    float32 state)."""
    return delta.matmul(other.to(delta.dtype))


@dataclass(frozen=True)
class ElmanCell(Cell):
    r"""Elman's cell: :math:`h_t = f(z_t)` with
    :math:`z_t = x_t W_{ih}^\top + b_{ih} + b_{hh} + h_{t-1} W_{hh}^\top`, ``f`` tanh or relu.

    .. math::
        δz_t = δh_t ⊙ f′(z_t), \qquad δh_{t-1} = δz_t W_{hh}
    """

    act: Elementwise = _TANH

    def step(self, gx, h, c, w_hh, b_hh, w_hr):  # type: ignore[no-untyped-def]
        h_new = self.act.f(torch.addmm(gx, h, w_hh.t()))  # h_t = f(z_t); (b, H) @ (H, H) -> (b, H)
        return h_new, None, (h, h_new)

    def factors(self, saved):  # type: ignore[no-untyped-def]
        return (self.act.df(saved[1]),)  # f′(z_t), from h_t (tanh, relu)

    def backward(self, dh, dc, factors, w_hh, w_hr):  # type: ignore[no-untyped-def]
        (df,) = factors
        dz = dh * df  # δz_t = δh_t ⊙ f′(z_t)
        return dz, dz, _times(dz, w_hh), None  # BP2: δh_{t−1} = δz_t W_hh; (b, H) @ (H, H) -> (b, H)


@dataclass(frozen=True)
class LSTMCell(Cell):
    r"""The LSTM cell, torch's gate order ``i, f, g, o``:

    .. math::
        i, f, o = σ(z_{i,f,o}), \; g = \tanh z_g, \quad
        c_t = f ⊙ c_{t-1} + i ⊙ g, \quad m_t = o ⊙ \tanh c_t, \quad h_t = m_t W_{hr}^\top
        \text{ (or } m_t \text{ without projection)}

    and backwards, with ``δc_t`` arriving from step ``t + 1``:

    .. math::
        δm = δh_t W_{hr}, \quad δc = δc_t + δm ⊙ o ⊙ \tanh′(c_t), \\
        δz = (δc ⊙ g ⊙ σ′_i,\; δc ⊙ c_{t-1} ⊙ σ′_f,\; δc ⊙ i ⊙ \tanh′_g,\; δm ⊙ \tanh c_t ⊙ σ′_o),
        \\ δh_{t-1} = δz W_{hh}, \quad δc_{t-1} = δc ⊙ f

    The factors: ``(g σ′_i, c_{t−1} σ′_f, i tanh′_g, tanh(c_t) σ′_o)``, ``o tanh′(c_t)`` and ``f``.
    """

    gates: ClassVar[int] = 4
    has_cell: ClassVar[bool] = True

    def step(self, gx, h, c, w_hh, b_hh, w_hr):  # type: ignore[no-untyped-def]
        z = torch.addmm(gx, h, w_hh.t())  # z_t; (b, P) @ (P, 4H) -> (b, 4H)
        size = z.shape[1] // 4
        i_f = _SIGMOID.f(z[:, : 2 * size])  # i, f; (b, 2H)
        g = _TANH.f(z[:, 2 * size : 3 * size])
        o = _SIGMOID.f(z[:, 3 * size :])
        c_new = torch.addcmul(i_f[:, size:] * c, i_f[:, :size], g)  # c_t = f ⊙ c_{t−1} + i ⊙ g
        tanh_c = _TANH.f(c_new)
        m = o * tanh_c  # m_t = o ⊙ tanh(c_t)
        h_new = m if w_hr is None else m.matmul(w_hr.t())  # h_t = m_t W_hrᵀ; (b, H) @ (H, P) -> (b, P)
        saved = (h, c, i_f, g, o, tanh_c)
        return h_new, c_new, saved if w_hr is None else (*saved, m)

    def factors(self, saved):  # type: ignore[no-untyped-def]
        _, c_prev, i_f, g, o, tanh_c = saved[:6]
        size = g.shape[1]
        i, f = i_f[:, :size], i_f[:, size:]
        # (g σ′_i, c_{t−1} σ′_f, i tanh′_g, tanh(c_t) σ′_o); 4 × (Σ b_t, H) -> (Σ b_t, 4H)
        into_z = torch.cat((g, c_prev, i, tanh_c), 1) * torch.cat(
            (_SIGMOID.df(i_f), _TANH.df(g), _SIGMOID.df(o)), 1
        )
        return into_z, o * _TANH.df(tanh_c), f  # and o tanh′(c_t), f

    def backward(self, dh, dc, factors, w_hh, w_hr):  # type: ignore[no-untyped-def]
        into_z, into_c, f = factors
        dm = dh if w_hr is None else _times(dh, w_hr)  # BP2 through the projection; (b, P) @ (P, H) -> (b, H)
        dc = torch.addcmul(dc, dm, into_c)  # δc = δc_t + δm ⊙ o ⊙ tanh′(c_t)
        dz = torch.cat((dc, dc, dc, dm), 1) * into_z  # δz_{i,f,g,o}; (b, 4H)
        # BP2: δh_{t−1} = δz W_hh, (b, 4H) @ (4H, P) -> (b, P); δc_{t−1} = δc ⊙ f
        return dz, dz, _times(dz, w_hh), dc * f


@dataclass(frozen=True)
class GRUCell(Cell):
    r"""The GRU cell, torch's gate order ``r, z, n``, with ``a = h_{t-1} W_{hh}^\top + b_{hh}``:

    .. math::
        r = σ(x_r + a_r), \; z = σ(x_z + a_z), \; n = \tanh(x_n + r ⊙ a_n), \quad
        h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

    and backwards:

    .. math::
        δz_n = δh_t ⊙ (1 - z) ⊙ \tanh′_n, \quad δz_z = δh_t ⊙ (h_{t-1} - n) ⊙ σ′_z, \quad
        δz_r = δz_n ⊙ a_n ⊙ σ′_r, \\
        δx = (δz_r, δz_z, δz_n), \quad δa = (δz_r, δz_z, δz_n ⊙ r), \quad
        δh_{t-1} = δh_t ⊙ z + δa W_{hh}

    The factors: ``δx = (δh, δh, δh) ⊙ ((1 − z) tanh′_n a_n σ′_r, (h_{t−1} − n) σ′_z, (1 − z) tanh′_n)``,
    ``δa = δx ⊙ (1, 1, r)``, and ``z``.
    """

    gates: ClassVar[int] = 3
    fold_bias: ClassVar[bool] = False  # b_hn sits inside r ⊙ (h W_hnᵀ + b_hn)

    def step(self, gx, h, c, w_hh, b_hh, w_hr):  # type: ignore[no-untyped-def]
        # a = h W_hhᵀ + b_hh; (b, H) @ (H, 3H) -> (b, 3H)
        a = h.matmul(w_hh.t()) if b_hh is None else torch.addmm(b_hh, h, w_hh.t())
        size = a.shape[1] // 3
        rz = _SIGMOID.f(gx[:, : 2 * size] + a[:, : 2 * size])  # r, z; (b, 2H)
        a_n = a[:, 2 * size :]
        n = _TANH.f(torch.addcmul(gx[:, 2 * size :], rz[:, :size], a_n))  # n = tanh(x_n + r ⊙ a_n)
        h_new = torch.addcmul(n, rz[:, size:], h - n)  # h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}
        return h_new, None, (h, rz, n, a_n)

    def factors(self, saved):  # type: ignore[no-untyped-def]
        h_prev, rz, n, a_n = saved
        size = n.shape[1]
        r, z = rz[:, :size], rz[:, size:]
        d_rz = _SIGMOID.df(rz)
        into_n = (1 - z) * _TANH.df(n)  # ∂h_t/∂z_n = (1 − z) tanh′_n
        # (∂h_t/∂z_r, ∂h_t/∂z_z, ∂h_t/∂z_n); 3 × (Σ b_t, H) -> (Σ b_t, 3H)
        into_x = torch.cat((into_n * a_n * d_rz[:, :size], (h_prev - n) * d_rz[:, size:], into_n), 1)
        into_a = torch.cat((into_x[:, : 2 * size], into_n * r), 1)  # the n block through r ⊙ a_n
        return into_x, into_a, z

    def backward(self, dh, dc, factors, w_hh, w_hr):  # type: ignore[no-untyped-def]
        into_x, into_a, z = factors
        dh3 = torch.cat((dh, dh, dh), 1)  # (b, 3H)
        dx, da = dh3 * into_x, dh3 * into_a  # δ of x W_ihᵀ + b_ih and of a = h W_hhᵀ + b_hh
        # BP2: δh_{t−1} = δh_t ⊙ z + δa W_hh; (b, 3H) @ (3H, H) -> (b, H)
        return dx, da, dh * z + _times(da, w_hh), None


# --------------------------------------------------------------------------------------------
# One layer and direction: the loop over time, and BPTT
# --------------------------------------------------------------------------------------------


def _steps(batch_sizes: Sequence[int], reverse: bool) -> list[tuple[int, int]]:
    """``(offset_t, b_t)`` of each step, in the order the layer runs them."""
    out, offset = [], 0
    for b in batch_sizes:
        out.append((offset, b))
        offset += b
    return out[::-1] if reverse else out


def _keep_rest(new: Tensor, old: Tensor) -> Tensor:
    """``new`` for the first ``b`` rows, ``old`` for the sequences not running at this step."""
    return new if new.shape[0] == old.shape[0] else torch.cat((new, old[new.shape[0] :]))


def _recur(
    cell: Cell,
    batch_sizes: Sequence[int],
    reverse: bool,
    gx: Tensor,
    h0: Tensor,
    c0: Tensor | None,
    w_hh: Tensor,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor | None, tuple[Tensor, ...]]:
    """FF over time: ``(output, h_n, c_n, saved)``, every per-step tensor in packed row order."""
    if cell.fold_bias and b_hh is not None:
        gx, b_hh = gx + b_hh, None  # x_t W_ihᵀ + b_ih + b_hh, for every step at once
    h, c = h0, c0
    outputs: list[Tensor] = []
    saved: list[tuple[Tensor, ...]] = []
    for offset, b in _steps(batch_sizes, reverse):
        h_new, c_new, kept = cell.step(
            gx[offset : offset + b], h[:b], None if c is None else c[:b], w_hh, b_hh, w_hr
        )
        outputs.append(h_new)
        saved.append(kept)
        h = _keep_rest(h_new, h)
        c = None if c is None or c_new is None else _keep_rest(c_new, c)
    if reverse:
        outputs.reverse()
        saved.reverse()
    return torch.cat(outputs), h, c, tuple(torch.cat(column) for column in zip(*saved, strict=True))


def _bptt(
    ctx: Any, grad_output: Tensor | None, grad_h: Tensor | None, grad_c: Tensor | None
) -> tuple[Tensor | None, ...]:
    """BPTT for one layer and direction: the gradients of ``(gx, h0, c0, w_hh, b_hh, w_hr)``."""
    cell: Cell = ctx.cell
    gx, h0, c0, w_hh, b_hh, w_hr, *saved = ctx.saved_tensors
    needs = ctx.needs_input_grad[3:]
    # double backward: the gates as functions of the inputs (the saved ones are constants)
    if torch.is_grad_enabled():
        *_, saved = _recur(cell, ctx.batch_sizes, ctx.reverse, gx, h0, c0, w_hh, b_hh, w_hr)
    factors = cell.factors(saved)  # what the gate derivatives multiply δ by, for every step
    dh = torch.zeros_like(h0) if grad_h is None else grad_h  # δh_n: what comes from h_n
    dc = None
    if cell.has_cell:
        dc = torch.zeros_like(c0) if grad_c is None else grad_c  # δc_n
    d_x: list[Tensor] = []
    d_a: list[Tensor] = []
    d_h: list[Tensor] = []  # δh_t, for the projection's BP3
    for offset, b in reversed(_steps(ctx.batch_sizes, ctx.reverse)):  # backwards in time
        rows = slice(offset, offset + b)
        dh_t = dh[:b]  # δh_t: from step t + 1, and from the output at t
        if grad_output is not None:
            dh_t = dh_t + grad_output[rows]
        dx, da, dh_prev, dc_prev = cell.backward(
            dh_t, None if dc is None else dc[:b], [f[rows] for f in factors], w_hh, w_hr
        )
        d_x.append(dx)
        d_a.append(da)
        if w_hr is not None:
            d_h.append(dh_t)
        dh = _keep_rest(dh_prev, dh)
        if dc is not None:
            dc = _keep_rest(dc_prev, dc)
    if not ctx.reverse:  # back to packed row order
        d_x.reverse()
        d_a.reverse()
        d_h.reverse()
    grad_gx = torch.cat(d_x) if needs[0] else None  # δ of X W_ihᵀ + b_ih: the linear layer's δ
    grad_w_hh = grad_b_hh = grad_w_hr = None
    if needs[3] or (b_hh is not None and needs[4]):
        same = grad_gx is not None and d_a[0] is d_x[0]  # δa = δx but for the GRU
        delta = grad_gx if same else torch.cat(d_a)  # (Σ b_t, G·H)
        if needs[3]:
            # BP3: ∂c/∂W_hh = Σ_t δa_tᵀ h_{t−1}; (G·H, Σ b_t) @ (Σ b_t, H_out) -> (G·H, H_out)
            grad_w_hh = _times(delta.t(), saved[0])
        if b_hh is not None and needs[4]:
            grad_b_hh = delta.sum(0)  # BP3: ∂c/∂b_hh = Σ_t Σ_rows δa_t; (G·H,)
    if w_hr is not None and needs[5]:
        # BP3: ∂c/∂W_hr = Σ_t δh_tᵀ m_t; (P, Σ b_t) @ (Σ b_t, H) -> (P, H)
        grad_w_hr = _times(torch.cat(d_h).t(), saved[-1])
    grad_h0 = dh if needs[1] else None
    grad_c0 = dc if cell.has_cell and needs[2] else None
    return grad_gx, grad_h0, grad_c0, grad_w_hh, grad_b_hh, grad_w_hr


class _LayerFunction(ManualFunction):
    """One recurrent layer in one direction over a whole sequence.

    ``apply(cell, batch_sizes, reverse, gx, h0, c0, w_hh, b_hh, w_hr)``: ``gx (Σ b_t, G·H)`` is the
    input projection ``X W_ihᵀ + b_ih`` in packed row order, ``h0 (N, H_out)`` and ``c0 (N, H)``
    (``None`` but for the LSTM) the initial states, ``w_hh (G·H, H_out)``, ``b_hh (G·H,)`` or
    ``None``, ``w_hr (H_out, H)`` (the LSTM's projection) or ``None``. ``batch_sizes`` is a tuple
    of ints, ``b_t`` per step. Returns ``(output (Σ b_t, H_out), h_n, [c_n], *saved)``: the saved
    gates are outputs (marked non-differentiable) so that ``setup_context`` can keep them.
    """

    @staticmethod
    def forward(
        cell: Cell,
        batch_sizes: tuple[int, ...],
        reverse: bool,
        gx: Tensor,
        h0: Tensor,
        c0: Tensor | None,
        w_hh: Tensor,
        b_hh: Tensor | None,
        w_hr: Tensor | None,
    ) -> tuple[Tensor, ...]:
        output, h_n, c_n, saved = _recur(cell, batch_sizes, reverse, gx, h0, c0, w_hh, b_hh, w_hr)
        return (output, h_n, c_n, *saved) if cell.has_cell else (output, h_n, *saved)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        cell, batch_sizes, reverse, gx, h0, c0, w_hh, b_hh, w_hr = inputs
        saved = output[3 if cell.has_cell else 2 :]
        ctx.mark_non_differentiable(*saved)
        ctx.save_for_backward(gx, h0, c0, w_hh, b_hh, w_hr, *saved)
        ctx.cell, ctx.batch_sizes, ctx.reverse = cell, batch_sizes, reverse
        ctx.set_materialize_grads(False)  # no zeros for the saved gates' gradients (never used)

    @staticmethod
    def backward(
        ctx: Any, grad_output: Tensor | None, grad_h: Tensor | None, *grads: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        grad_c = grads[0] if ctx.cell.has_cell else None
        return (None, None, None, *_bptt(ctx, grad_output, grad_h, grad_c))


class RNNLayerFunction(_LayerFunction):
    r"""One Elman RNN layer (tanh or relu) in one direction: ``h_t = f(gx_t + h_{t−1} W_hhᵀ + b_hh)``.

    Backward (BPTT): ``δz_t = (δh_t^{out} + δz_{t+1} W_hh) ⊙ f′``; ``∂c/∂W_hh = Σ_t δz_tᵀ h_{t−1}``.
    """


class LSTMLayerFunction(_LayerFunction):
    """One LSTM layer in one direction (:class:`LSTMCell`'s step and backward over time)."""


class GRULayerFunction(_LayerFunction):
    """One GRU layer in one direction (:class:`GRUCell`'s step and backward over time)."""


_FUNCTIONS: dict[type[Cell], type[_LayerFunction]] = {
    ElmanCell: RNNLayerFunction,
    LSTMCell: LSTMLayerFunction,
    GRUCell: GRULayerFunction,
}

# --------------------------------------------------------------------------------------------
# The stacked, bidirectional network: torch.rnn_tanh / rnn_relu / lstm / gru
# --------------------------------------------------------------------------------------------

_MODES = {"rnn_tanh": ElmanCell(_TANH), "rnn_relu": ElmanCell(ReLU()), "lstm": LSTMCell(), "gru": GRUCell()}


def _run(
    mode: str,
    input: Tensor,
    batch_sizes: tuple[int, ...] | None,
    hx: Sequence[Tensor],
    params: Sequence[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
) -> tuple[Tensor, ...]:
    """The layers stacked as native stacks them; ``batch_sizes`` is ``None`` for a padded input."""
    cell = _MODES[mode]
    directions = 2 if bidirectional else 1
    _check(mode, input, batch_sizes, hx, params, has_biases, num_layers, dropout, directions, batch_first)
    h0 = hx[0]
    c0 = hx[1] if cell.has_cell else None
    if batch_sizes is None:  # padded (T, N, ·): every step runs the whole batch
        x = input.transpose(0, 1) if batch_first else input
        steps, batch = x.shape[:2]
        batch_sizes = (batch,) * steps
        x = x.reshape(steps * batch, x.shape[2])  # (T, N, D) -> (T·N, D), packed row order
    else:
        x, steps, batch = input, len(batch_sizes), h0.shape[1]
    per_layer = len(params) // (num_layers * directions)
    function = _FUNCTIONS[type(cell)]
    cast = autocast_dtype(input)
    h_n: list[Tensor] = []
    c_n: list[Tensor] = []
    for layer in range(num_layers):
        outputs = []
        for direction in range(directions):
            k = layer * directions + direction
            w_ih, w_hh, *rest = params[k * per_layer : (k + 1) * per_layer]
            b_ih, b_hh = (rest[0], rest[1]) if has_biases else (None, None)
            w_hr = rest[-1] if per_layer in (3, 5) else None
            gx = linear(x, w_ih, b_ih)  # FF: X W_ihᵀ + b_ih for every step; (Σ b_t, D) -> (Σ b_t, G·H)
            h0_k, c0_k = h0[k], None if c0 is None else c0[k]
            if cast is not None:  # as native's cells: the products in `cast` (autocast's linears)
                w_hh, b_hh, w_hr = (autocast_cast(t, cast) for t in (w_hh, b_hh, w_hr))
                if isinstance(cell, ElmanCell):  # h_t = f(product): the state is in `cast` from step 1
                    h0_k = autocast_cast(h0_k, cast)
            out = function.apply(cell, batch_sizes, direction == 1, gx, h0_k, c0_k, w_hh, b_hh, w_hr)
            outputs.append(out[0])
            h_n.append(out[1])
            if cell.has_cell:
                c_n.append(out[2])
        x = outputs[0] if directions == 1 else torch.cat(outputs, 1)  # (Σ b_t, D·H_out)
        if dropout and train and layer < num_layers - 1:
            x = _dropout(x, dropout, True)  # the registry's dropout: native's draws
    output = x if input.dim() == 2 else x.reshape(steps, batch, x.shape[1])
    if batch_first and input.dim() == 3:
        output = output.transpose(0, 1)
    if cell.has_cell:
        return output, torch.stack(h_n), torch.stack(c_n)
    return output, torch.stack(h_n)


def _check(
    mode: str,
    input: Tensor,
    batch_sizes: tuple[int, ...] | None,
    hx: Sequence[Tensor],
    params: Sequence[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    directions: int,
    batch_first: bool,
) -> None:
    """Raise a clear error for arguments the native op rejects."""
    check_floating("input", input)
    want = 2 if batch_sizes is not None else 3
    if input.dim() != want:
        what = "packed data (Σ b_t, input_size)" if want == 2 else "input (T, N, input_size) or (N, T, ·)"
        raise ValueError(f"{mode} expected {what} of {want} dims, got shape {tuple(input.shape)}")
    steps = len(batch_sizes) if batch_sizes is not None else input.shape[1 if batch_first else 0]
    if steps == 0:
        raise ValueError(f"{mode} expected a sequence length larger than 0, got shape {tuple(input.shape)}")
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
    if not 0 <= dropout <= 1:
        raise ValueError(f"dropout must be in [0, 1], got {dropout}")
    groups = num_layers * directions
    per_layer = len(params) // groups if groups else 0
    allowed = (4, 5) if has_biases else (2, 3)
    if per_layer * groups != len(params) or per_layer not in allowed or (per_layer % 2 and mode != "lstm"):
        proj = f" (or {allowed[1]} with proj_size)" if mode == "lstm" else ""
        raise ValueError(
            f"{mode} expected {allowed[0] * groups} parameters ({num_layers} layers × {directions} "
            f"directions × {allowed[0]}{proj}, has_biases={has_biases}), got {len(params)}"
        )
    for i, p in enumerate(params):
        check_floating(f"params[{i}]", p)
        check_same(f"params[{i}]", p, "input", input)
    if input.shape[-1] != params[0].shape[1]:
        raise ValueError(
            f"{mode} expected input with {params[0].shape[1]} features (input_size), got shape "
            f"{tuple(input.shape)}"
        )
    batch = batch_sizes[0] if batch_sizes is not None else input.shape[0 if batch_first else 1]
    hidden = params[1].shape[0] // _MODES[mode].gates
    sizes = {"h0": (groups, batch, params[1].shape[1]), "c0": (groups, batch, hidden)}
    for name, state in zip(("h0", "c0"), hx, strict=False):
        check_floating(name, state)
        check_same(name, state, "input", input)
        if state.shape != sizes[name]:
            raise ValueError(
                f"{mode} expected {name} of shape {sizes[name]} (num_layers × directions, batch, size), "
                f"got shape {tuple(state.shape)}"
            )


def lstm(input: Tensor, *args: Any) -> tuple[Tensor, Tensor, Tensor]:
    """``torch.lstm`` with BPTT written out (:class:`LSTMLayerFunction`), in both of its forms:

    ``lstm(input, (h0, c0), params, has_biases, num_layers, dropout, train, bidirectional,
    batch_first)`` for a padded ``(T, N, D)`` (or ``(N, T, D)``) input, and
    ``lstm(data, batch_sizes, (h0, c0), params, has_biases, num_layers, dropout, train,
    bidirectional)`` for a packed one. ``params`` are the module's ``_flat_weights`` (per layer and
    direction ``w_ih, w_hh, [b_ih, b_hh], [w_hr]``). Returns ``(output, h_n, c_n)``.
    """
    return _dispatch("lstm", input, args)  # type: ignore[return-value]


def gru(input: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    """``torch.gru`` with BPTT written out (:class:`GRULayerFunction`); arguments as :func:`lstm`'s
    with ``hx`` one tensor. Returns ``(output, h_n)``."""
    return _dispatch("gru", input, args)  # type: ignore[return-value]


def rnn_tanh(input: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    """``torch.rnn_tanh`` with BPTT written out (:class:`RNNLayerFunction`); arguments as
    :func:`gru`'s. Returns ``(output, h_n)``."""
    return _dispatch("rnn_tanh", input, args)  # type: ignore[return-value]


def rnn_relu(input: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    """``torch.rnn_relu`` with BPTT written out (:class:`RNNLayerFunction`); arguments as
    :func:`gru`'s. Returns ``(output, h_n)``."""
    return _dispatch("rnn_relu", input, args)  # type: ignore[return-value]


def _dispatch(mode: str, input: Tensor, args: tuple[Any, ...]) -> tuple[Tensor, ...]:
    """Tell torch's two forms apart (the packed one has ``params`` third) and run :func:`_run`."""
    if len(args) != 8:
        raise TypeError(
            f"{mode} takes 9 arguments (padded or packed form, as torch.{mode}), got {len(args) + 1}"
        )
    if isinstance(args[2], (list, tuple)):  # packed: (data, batch_sizes, hx, params, ...)
        sizes, hx, params, has_biases, num_layers, dropout, train, bidirectional = args
        if not isinstance(sizes, Tensor) or sizes.dim() != 1 or sizes.dtype != torch.int64:
            raise ValueError(f"batch_sizes must be a 1-D int64 tensor, got {sizes!r}")
        batch_sizes: tuple[int, ...] | None = tuple(sizes.tolist())
        batch_first = False
    else:
        hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first = args
        batch_sizes = None
    if mode == "lstm":
        if not isinstance(hx, (list, tuple)) or len(hx) != 2:
            raise TypeError(f"lstm expected hx as a pair (h0, c0), got {type(hx).__name__}")
    else:
        hx = (hx,)
    return _run(
        mode,
        input,
        batch_sizes,
        hx,
        params,
        has_biases,
        num_layers,
        dropout,
        train,
        bidirectional,
        batch_first,
    )


# --------------------------------------------------------------------------------------------
# The drop-in modules
# --------------------------------------------------------------------------------------------


def _module_forward(module: nn.RNNBase, mode: str, input: Any, hx: Any) -> tuple[Any, Any]:
    """``torch.nn.RNN/LSTM/GRU.forward`` with the manual op in the place of ``torch._VF``'s: the same
    default states, unbatched and packed inputs, argument checks (native's own methods) and
    messages."""
    module._update_flat_weights()
    is_lstm = mode == "lstm"
    directions = 2 if module.bidirectional else 1
    h_size = module.proj_size if module.proj_size > 0 else module.hidden_size
    packed = isinstance(input, PackedSequence)
    batch_sizes = sorted_indices = unsorted_indices = None
    is_batched, batch_dim = True, 0 if module.batch_first else 1
    if packed:
        input, batch_sizes, sorted_indices, unsorted_indices = input
        batch = int(batch_sizes[0])
    else:
        if not isinstance(input, Tensor):
            raise TypeError(
                f"{type(module).__name__} expected a Tensor or a PackedSequence, got {type(input).__name__}"
            )
        if input.dim() not in (2, 3):
            name = {"lstm": "LSTM", "gru": "GRU"}.get(mode, "RNN")
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
        is_batched = input.dim() == 3
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        batch = input.shape[batch_dim]
    if hx is None:
        zeros = {"dtype": input.dtype, "device": input.device}
        h0 = torch.zeros(module.num_layers * directions, batch, h_size, **zeros)
        hx = (
            (h0, torch.zeros(module.num_layers * directions, batch, module.hidden_size, **zeros))
            if is_lstm
            else h0
        )
    else:
        states = hx if is_lstm else (hx,)
        want = 3 if is_batched else 2
        if any(not isinstance(s, Tensor) or s.dim() != want for s in states):
            dims = ", ".join(f"{s.dim()}-D" if isinstance(s, Tensor) else type(s).__name__ for s in states)
            kind = "batched 3-D" if is_batched else "unbatched 2-D"
            raise RuntimeError(
                f"For {kind} input, hx and cx should also be {want}-D but got ({dims}) tensors"
                if is_lstm
                else f"For {kind} input, hx should also be {want}-D but got {dims} tensor"
            )
        if not is_batched:
            hx = tuple(s.unsqueeze(1) for s in states) if is_lstm else hx.unsqueeze(1)
        hx = module.permute_hidden(hx, sorted_indices)
    module.check_forward_args(input, hx, batch_sizes)
    weights = module._flat_weights
    common = (module.bias, module.num_layers, float(module.dropout), module.training, module.bidirectional)
    function = _PUBLIC[mode]
    if batch_sizes is None:
        output, *hidden = function(input, hx, weights, *common, module.batch_first)
    else:
        output, *hidden = function(input, batch_sizes, hx, weights, *common)
    if packed:
        output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
    elif not is_batched:
        output = output.squeeze(batch_dim)
        hidden = [h.squeeze(1) for h in hidden]
    out_hidden = tuple(hidden) if is_lstm else hidden[0]
    return output, module.permute_hidden(out_hidden, unsorted_indices)


class RNN(nn.RNN):
    """``torch.nn.RNN`` (tanh or relu) with BPTT written out (:class:`RNNLayerFunction`).

    Every option of the native layer; parameters, ``state_dict`` and ``repr`` are native's.

    >>> import torch, manual_bp
    >>> rnn = manual_bp.RNN(3, 4)
    >>> output, h_n = rnn(torch.randn(5, 2, 3))
    >>> h_n.grad_fn.next_functions[0][0].name()
    'RNNLayerFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Any, hx: Tensor | None = None) -> tuple[Any, Tensor]:  # type: ignore[override]
        return _module_forward(self, "rnn_tanh" if self.mode == "RNN_TANH" else "rnn_relu", input, hx)


class LSTM(nn.LSTM):
    """``torch.nn.LSTM`` with BPTT written out (:class:`LSTMLayerFunction`), ``proj_size`` included.

    >>> import torch, manual_bp
    >>> lstm = manual_bp.LSTM(3, 4, num_layers=2)
    >>> output, (h_n, c_n) = lstm(torch.randn(5, 2, 3))
    >>> output.grad_fn.next_functions[0][0].name()  # (T·N, H) viewed as (T, N, H)
    'LSTMLayerFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Any, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Any, Any]:  # type: ignore[override]
        return _module_forward(self, "lstm", input, hx)


class GRU(nn.GRU):
    """``torch.nn.GRU`` with BPTT written out (:class:`GRULayerFunction`).

    >>> import torch, manual_bp
    >>> gru = manual_bp.GRU(3, 4)
    >>> output, h_n = gru(torch.randn(5, 2, 3))
    >>> output.grad_fn.next_functions[0][0].name()  # (T·N, H) viewed as (T, N, H)
    'GRULayerFunctionBackward'
    """

    __module__ = "manual_bp.modules"

    def forward(self, input: Any, hx: Tensor | None = None) -> tuple[Any, Tensor]:  # type: ignore[override]
        return _module_forward(self, "gru", input, hx)


_PUBLIC = {"rnn_tanh": rnn_tanh, "rnn_relu": rnn_relu, "lstm": lstm, "gru": gru}


# --------------------------------------------------------------------------------------------
# The registry entries
# --------------------------------------------------------------------------------------------


def _checked(function: Any) -> Any:
    """``function`` (ours or torch's) called with the states and parameters as separate tensors
    (so that the checks differentiate them), its outputs flattened into one tensor (so that
    ``output``, ``h_n`` and ``c_n`` are all compared and differentiated)."""

    def call(input: Tensor, h0: Tensor, c0: Tensor | None, *params: Tensor, **options: Any) -> Tensor:
        hx: Any = h0 if c0 is None else (h0, c0)
        head = (input, options["batch_sizes"]) if "batch_sizes" in options else (input,)
        tail = () if "batch_sizes" in options else (options.get("batch_first", False),)
        config = (
            options.get("has_biases", True),
            options.get("num_layers", 1),
            options.get("dropout", 0.0),
            options.get("train", True),
            options.get("bidirectional", False),
        )
        outputs = function(*head, hx, list(params), *config, *tail)
        return torch.cat([o.reshape(-1) for o in outputs])

    call.__name__ = getattr(function, "__name__", "recurrent")
    return call


def _samples(mode: str) -> Any:
    """Samples of ``mode``: input size 2, hidden size 2, sequences of 3 steps, batch 2 (unless said)."""
    gates = _MODES[mode].gates

    def make(dtype: torch.dtype, device: torch.device) -> list[Sample]:
        def t(*shape: int) -> Tensor:
            return tensor(shape, dtype, device, scale=0.5)

        def params(layers: int = 1, directions: int = 1, bias: bool = True, proj: int = 0) -> list[Tensor]:
            out = []
            for layer in range(layers):
                d_in = 2 if layer == 0 else 2 * directions if not proj else proj * directions
                for _ in range(directions):
                    out += [t(gates * 2, d_in), t(gates * 2, proj or 2)]
                    out += [t(gates * 2), t(gates * 2)] if bias else []
                    out += [t(proj, 2)] if proj else []
            return out

        def states(groups: int, batch: int, h: int = 2) -> tuple[Tensor, Tensor | None]:
            return t(groups, batch, h), (t(groups, batch, 2) if mode == "lstm" else None)

        x = t(3, 2, 2)
        out = [
            Sample((x, *states(1, 2), *params()), label="1 layer"),
            Sample((t(3, 2, 2), *states(1, 2), *params(bias=False)), {"has_biases": False}, "no bias"),
            Sample(
                (t(2, 1, 2), *states(4, 1), *params(2, 2)),
                {"num_layers": 2, "bidirectional": True},
                "2 layers, bidirectional",
            ),
            Sample(
                (t(2, 2, 3).detach().transpose(1, 2).requires_grad_(True), *states(1, 2), *params()),
                {"batch_first": True},
                "batch_first, non-contiguous input",
            ),
            Sample(
                (t(6, 2), *states(2, 3), *params(1, 2)),
                {"batch_sizes": torch.tensor([3, 2, 1]), "bidirectional": True},
                "packed, lengths 3, 2, 1, bidirectional",
            ),
            Sample((t(2, 0, 2), *states(1, 0), *params()), label="empty batch"),
        ]
        if device.type == "cpu":  # on CUDA, cuDNN draws native's dropout inside its kernel: no twin
            out.append(
                Sample(
                    (t(2, 1, 2), *states(2, 1), *params(2)),
                    {"num_layers": 2, "dropout": 0.5},
                    "2 layers, dropout 0.5",
                )
            )
        if mode == "lstm":
            out.append(
                Sample(
                    (t(2, 1, 2), t(4, 1, 1), t(4, 1, 2), *params(2, 2, proj=1)),
                    {"num_layers": 2, "bidirectional": True},
                    "proj_size 1, 2 layers, bidirectional",
                )
            )
        return out

    return make


_AUTOCAST = "native fails under CPU autocast: oneDNN cannot make its bfloat16 LSTM primitive on this CPU"
_FORMULAS = {
    "rnn_tanh": r"BPTT: $\delta z_t = (\delta h_t + \delta z_{t+1} W_{hh}) \odot f'(z_t)$ (BP2); "
    r"BP3: $\partial c/\partial W_{hh} = \sum_t \delta z_t^\top h_{t-1}$, "
    r"$\partial c/\partial W_{ih} = \sum_t \delta z_t^\top x_t$",
    "lstm": r"BPTT with $\delta c = \delta c_t + \delta m \odot o \odot \tanh'(c_t)$, "
    r"$\delta z_{i,f,g,o} = (\delta c \odot g, \delta c \odot c_{t-1}, \delta c \odot i, "
    r"\delta m \odot \tanh c_t) \odot \sigma', \tanh'$; BP2: $\delta h_{t-1} = \delta z W_{hh}$, "
    r"$\delta c_{t-1} = \delta c \odot f$; "
    r"BP3: $\partial c/\partial W_{hh} = \sum_t \delta z_t^\top h_{t-1}$",
    "gru": r"BPTT with $\delta z_n = \delta h \odot (1 - z) \odot \tanh'$, "
    r"$\delta z_z = \delta h \odot (h_{t-1} - n) \odot \sigma'$, "
    r"$\delta z_r = \delta z_n \odot a_n \odot \sigma'$; "
    r"BP2: $\delta h_{t-1} = \delta h \odot z + \delta a W_{hh}$; "
    r"BP3: $\partial c/\partial W_{hh} = \sum_t \delta a_t^\top h_{t-1}$",
}
_FORMULAS["rnn_relu"] = _FORMULAS["rnn_tanh"]

RECURRENT_OPS: tuple[Op, ...] = tuple(
    Op(
        mode,
        _PUBLIC[mode],
        _checked(getattr(torch, mode)),
        _samples(mode),
        # the checks compare one flattened tensor of (output, h_n, c_n), whose grad_fn is a cat;
        # tests/test_recurrent.py checks that each output comes from the layer Functions
        None,
        modules=modules,
        torch_functions=(getattr(torch, mode),),
        checked=_checked(_PUBLIC[mode]),
        formula=_FORMULAS[mode],
        random=True,
        skips={"autocast": _AUTOCAST} if mode == "lstm" else {},
    )
    for mode, modules in (
        ("rnn_tanh", ((nn.RNN, RNN),)),
        ("rnn_relu", ()),
        ("lstm", ((nn.LSTM, LSTM),)),
        ("gru", ((nn.GRU, GRU),)),
    )
)
