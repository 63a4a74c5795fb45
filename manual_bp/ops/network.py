r"""The seed's network as one Function, and the one implementation of its FF and BP1/BP2/BP3 loop.

Indexing follows the seed. The network input is ``y_0`` (no activation is applied to it); layer
``n`` (weight ``W_n``, bias ``b_n``, ``n = 0..N−1``) computes

.. math::
    x_{n+1} = y_n W_n^\top + b_n, \qquad y_{n+1} = f(x_{n+1}),

with ``f`` the hidden activation for ``n + 1 < N`` and the output activation for ``n + 1 = N``.
Given ``g = ∂c/∂y_N`` (what the loss hands back; BP1's first factor), the backward is the seed's loop:

.. math::
    δ_N = g ⊙ f'(x_N) \;\text{(BP1)}, \quad
    δ_n = (δ_{n+1} W_n) ⊙ f'(x_n) \;\text{(BP2)}, \quad
    \frac{\partial c}{\partial W_n} = δ_{n+1}^\top y_n, \;
    \frac{\partial c}{\partial b_n} = \textstyle\sum_{\text{rows}} δ_{n+1} \;\text{(BP3)}.

:func:`feedforward` and :func:`backprop` are that loop, written once: the fused Functions here, the
autograd-free engine (single-process and distributed) and ``engine.deltas`` all run them, each with
its own BP3 (a gradient, a gradient into a flat buffer, or the update ``W_n −= α ∂c/∂W_n``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from manual_bp._function import (
    ManualFunction,
    autocast_cast,
    autocast_dtype,
    check_floating,
    check_reduction,
    check_same,
    check_target,
    in_place_ok,
)
from manual_bp.ops._op import BATCHES, Op, Sample, noncontiguous, tensor
from manual_bp.ops.activations import Identity, get_activation
from manual_bp.ops.elementwise import Elementwise, to_float32
from manual_bp.ops.losses import HalfSquaredErrorFunction, half_squared_error_reference, scale_of_reduction

__all__ = [
    "NETWORK_OPS",
    "Feedback",
    "Layer",
    "MLPFunction",
    "MLPLossFunction",
    "backprop",
    "feedforward",
    "forward_pass",
    "mlp",
    "mlp_loss",
]

#: One layer of the loop: ``(W_n, b_n or None, f)``; ``f`` is applied to its output ``x_{n+1}``.
Layer = tuple[Tensor, Tensor | None, Elementwise]


class Feedback(NamedTuple):
    """A feedback rule's BP2 for the seed's loop (:mod:`manual_bp.feedback`): per layer the matrix
    ``B_n`` that BP2 multiplies by instead of ``W_n``, and whether it multiplies the output error
    ``e = δ_N`` (direct feedback alignment) rather than the layer's own ``δ_{n+1}``."""

    matrices: Sequence[Tensor]
    direct: bool = False


def feedforward(
    layers: Sequence[Layer], y0: Tensor, keep_x: bool = False
) -> Iterator[tuple[Tensor | None, Tensor]]:
    """FF, one layer at a time: yields ``(x_{n+1}, y_{n+1})`` for ``n = 0..N−1``.

    ``x_{n+1}`` is ``None`` where ``f′`` needs only ``y`` and not ``keep_x``: ``f`` was then applied
    over ``x_{n+1}`` (no second tensor). Rows are samples: ``y0`` is ``(M, D_0)``.
    """
    y = y0
    for weight, bias, act in layers:
        x = F.linear(y, weight, bias)  # x_{n+1} = y_n W_nᵀ + b_n; (M, D_n) @ (D_n, D_{n+1}) -> (M, D_{n+1})
        if keep_x or not act.from_output:
            y = act.f(x)  # y_{n+1} = f(x_{n+1})
            yield x, y
        else:
            y = act.f_(x)  # y_{n+1} = f(x_{n+1}), written over x_{n+1}
            yield None, y


def forward_pass(layers: Sequence[Layer], y0: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """FF over every layer at once: ``ys`` (``y_0 … y_N``) and, per layer, what :func:`backprop`'s
    ``f′`` reads (``y_{n+1}``, or ``x_{n+1}`` where ``f′`` needs it)."""
    ys, saved = [y0], []
    for x, y in feedforward(layers, y0):
        ys.append(y)
        saved.append(y if x is None else x)
    return ys, saved


def backprop(
    layers: Sequence[Layer],
    saved: Sequence[Tensor | None],
    g: Tensor | None,
    bp3: Callable[[int, Tensor], None],
    lowest: int = 0,
    input_grad: bool = False,
    graph: bool = False,
    owned: bool = False,
    extra_y: Sequence[Tensor | None] | None = None,
    extra_x: Sequence[Tensor | None] | None = None,
    feedback: Feedback | None = None,
) -> Tensor | None:
    """BP1, BP2 and BP3 from the top layer down to layer ``lowest``.

    For ``n = N−1, …, lowest``: ``δ_{n+1} = g ⊙ f′(x_{n+1})`` (BP1 at the top, BP2 below), then
    ``g = δ_{n+1} W_n`` (BP2's linear half, for the layer below; taken before ``bp3`` runs, so an
    update there sees the derivation's order), then ``bp3(n, δ_{n+1})``, the caller's BP3.

    Args:
        layers: ``(W_n, b_n, f)`` per layer, bottom first.
        saved: per layer what ``f′`` reads: ``y_{n+1}`` (``f.from_output``) or ``x_{n+1}``.
        g: ``∂c/∂y_N``; ``None`` when nothing flows in from the loss.
        bp3: called as ``bp3(n, δ_{n+1})`` for each layer.
        lowest: the lowest layer whose gradients are needed (the loop stops there).
        input_grad: also return ``∂c/∂y_0 = δ_1 W_0``.
        graph: a graph is being recorded (double backward): out-of-place ops only.
        owned: ``g`` is a temporary the caller hands over (each ``g`` below is the loop's own).
        extra_y, extra_x: per layer, gradients reaching ``y_{n+1}`` / ``x_{n+1}`` from elsewhere
            (the fused Function returns them as outputs so that double backward sees them).
        feedback: a feedback rule's BP2 (:class:`Feedback`): ``g = δ_{n+1} B_n``, or ``e B_n`` with
            the output error ``e = δ_N`` for direct feedback alignment; ``None``: the seed's
            ``δ_{n+1} W_n``.

    Returns:
        ``∂c/∂y_0`` if ``input_grad``, else ``None``.
    """
    top = len(layers) - 1
    error = None  # δ_N, the output error (what every layer's BP2 starts from under dfa)
    for n in range(top, lowest - 1, -1):
        weight, _, act = layers[n]
        if extra_y is not None and extra_y[n] is not None:  # y_{n+1} is used elsewhere too
            g, owned = (extra_y[n], False) if g is None else (g + extra_y[n], True)
        # BP1 / BP2: δ = g ⊙ f′(x_{n+1})
        delta = None if g is None else act.backward(g, saved[n], graph, owned)
        if extra_x is not None and extra_x[n] is not None:
            delta = extra_x[n] if delta is None else delta + extra_x[n]
        if delta is None:  # nothing flows into this layer
            g = None
            continue
        if n == top:
            error = delta
        source, matrix = delta, weight
        if feedback is not None:  # a rule's B_n; dfa: from the output error e
            source, matrix = (error if feedback.direct else delta), feedback.matrices[n]
        # BP2, linear half: δ_{n+1} W_n; (M, D_{n+1}) @ (D_{n+1}, D_n) -> (M, D_n)
        g, owned = source.mm(matrix) if (n > lowest or input_grad) and source is not None else None, True
        bp3(n, delta)  # BP3: ∂c/∂W_n = δ_{n+1}ᵀ y_n, ∂c/∂b_n = Σ_rows δ_{n+1}
    return g if input_grad else None


# --------------------------------------------------------------------------------------------
# The fused Functions
# --------------------------------------------------------------------------------------------

_Y, _X = 1, 2  # what a layer saves for backward: its output y_{n+1}, or its pre-activation x_{n+1}


class _Net:
    """The non-tensor configuration of :class:`MLPFunction`, worked out once per network.

    ``plan[n]`` says what layer ``n`` saves: ``y_{n+1}`` where ``f′`` is a function of it (it
    also serves BP3 of the next layer), else ``x_{n+1}``, from which backward recomputes
    ``y_{n+1} = f(x_{n+1})``; the output layer saves nothing when its ``f`` is the identity
    (no formula needs ``y_N`` then). ``extra[n]`` is the position among :class:`MLPFunction`'s
    outputs of what layer ``n`` saves (0 for ``y_N``, the network output itself, −1 for nothing).
    :class:`MLPLossFunction` returns the loss first and ``y_N`` (where kept) last, and hands
    :func:`_fused_backward` its outputs' gradients rearranged into this layout.
    """

    __slots__ = ("acts", "depth", "direct", "extra", "has_bias", "nones", "plan", "pos", "size", "step")

    def __init__(self, acts: tuple[Elementwise, ...], has_bias: bool, direct: bool = False) -> None:
        self.acts, self.has_bias, self.depth, self.direct = acts, has_bias, len(acts), direct
        self.step = 2 if has_bias else 1
        self.size = self.step * self.depth  # the number of parameters; feedback matrices come after
        self.nones = (None,) * len(acts)  # the biases of a network without them
        plan = [_Y if act.from_output else _X for act in acts]
        if isinstance(acts[-1], Identity):
            plan[-1] = 0
        self.plan = tuple(plan)
        extra, k = [], 1
        for n, what in enumerate(plan):
            if what == _Y and n + 1 == len(plan):
                extra.append(0)
            elif what:
                extra.append(k)
                k += 1
            else:
                extra.append(-1)
        self.extra = tuple(extra)
        # where each layer's kept tensor sits in ctx.saved_tensors = (input, W_0.., outputs[1:], [y_N])
        n_out = k - 1
        self.pos = tuple(
            -1 if e < 0 else (1 + self.depth + n_out if e == 0 else self.depth + e) for e in extra
        )

    def layers(self, params: Sequence[Tensor | None]) -> tuple[Layer, ...]:
        """``(W_n, b_n, f)`` per layer from ``W_0, b_0, W_1, …`` (``W_0, W_1, …`` without bias)."""
        if self.step == 2:
            return tuple(zip(params[::2], params[1::2], self.acts, strict=True))  # type: ignore[arg-type]
        return tuple(zip(params, self.nones, self.acts, strict=True))  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"_Net(acts={[str(a) for a in self.acts]}, has_bias={self.has_bias}, direct={self.direct})"


@lru_cache(maxsize=256)
def _net(acts: tuple[Elementwise, ...], has_bias: bool, direct: bool = False) -> _Net:
    return _Net(acts, has_bias, direct)


class MLPFunction(ManualFunction):
    r"""The whole network ``y_0 ↦ f(… f(y_0 W_0ᵀ + b_0) …)`` as one Function; backward is the seed's loop.

    ``apply(input, net, *params)``: ``input (M, D_0)``; ``net`` a :class:`_Net` (from
    ``_net(acts, has_bias)``); ``params`` is ``W_0, b_0, W_1, b_1, …`` (``W_0, W_1, …`` without
    bias), optionally followed by a feedback rule's ``B_0, …, B_{N−1}``, which BP2 then multiplies
    by instead of the weights (:mod:`manual_bp.feedback`; ``net.direct`` for dfa).
    Returns ``(y_N, *saved)``: the network output and the tensors backward needs (``y_n``
    or ``x_n`` per layer, see :class:`_Net`). They are outputs rather than hidden intermediates so
    that double backward differentiates through them; :func:`mlp` returns ``y_N`` alone.

    Saved for backward: the input, the weights (not the biases), and per layer ``y_n`` (where
    ``f′`` is a function of it) or ``x_n``; nothing for an identity output layer.
    """

    @staticmethod
    def forward(input: Tensor, net: _Net, *params: Tensor) -> Any:
        plan, extra = net.plan, net.extra
        saved = []
        y = input
        for n, (x, y) in enumerate(feedforward(net.layers(params[: net.size]), input)):  # FF
            if plan[n] == _X:
                saved.append(x)  # x kept for f′
            elif plan[n] == _Y and extra[n]:
                saved.append(y)
        return (y, *saved)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        input, net, *params = inputs
        y_n = output[:1] if net.plan[-1] == _Y else ()  # y_N, if f′ of the output layer needs it
        ctx.save_for_backward(input, *_weights(ctx, params, net), *output[1:], *y_n)
        ctx.net, ctx.feedback = net, (None,) * (len(params) - net.size)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, *grads_out: Tensor | None) -> tuple[Tensor | None, ...]:
        graph = not in_place_ok(next((g for g in grads_out if g is not None), None))
        needs = ctx.needs_input_grad
        grad_input, grads = _fused_backward(ctx.net, ctx.saved_tensors, needs[0], needs[2:], grads_out, graph)
        return (grad_input, None, *grads, *ctx.feedback)


def _weights(ctx: Any, params: Sequence[Tensor], net: _Net) -> list[Tensor | None]:
    """The matrices BP2 multiplies by: the weights, or a feedback rule's ``B_n`` where given (after
    the parameters). All but the first, which only ``∂c/∂y_0 = δ_1 W_0`` uses, so it is kept only
    when the input needs a gradient (a placeholder otherwise). The weights are the caller's
    parameters and cost nothing to keep, except under autocast, where they are casts."""
    weights: list[Tensor | None] = list(params[net.size :]) or list(params[:: net.step])
    if not ctx.needs_input_grad[0]:
        weights[0] = None
    return weights


def _fused_backward(
    net: _Net,
    saved: tuple[Tensor, ...],
    needs_input: bool,
    needs: Sequence[bool],
    grads_out: Sequence[Tensor | None],
    graph: bool,
    owned: bool = False,
) -> tuple[Tensor | None, list[Tensor | None]]:
    """:func:`backprop` on :class:`MLPFunction`'s saved tensors.

    ``saved`` is ``(input, W_0, …, W_{N−1}, outputs[1:], [y_N])`` (see :class:`_Net`; a feedback
    rule's ``B_n`` in the place of the ``W_n``, which BP2 alone reads); ``needs[i]``
    says whether parameter ``i`` needs a gradient; ``grads_out`` is ``(∂c/∂y_N, *grads of the extra
    outputs)``; ``owned``: ``∂c/∂y_N`` is the caller's temporary. Returns the input's gradient and
    the parameters' (``None`` where not needed).
    """
    depth, step, plan, acts, pos = net.depth, net.step, net.plan, net.acts, net.pos
    grads: list[Tensor | None] = [None] * (step * depth)
    lowest = 0  # the lowest layer whose parameters (or the input) need a gradient
    if not needs_input:
        while lowest < depth and not any(needs[step * lowest : step * (lowest + 1)]):
            lowest += 1
    kept = [saved[p] if p >= 0 else None for p in pos]  # y_{n+1} or x_{n+1}: what f′ reads
    extra_y = extra_x = None
    if grads_out[1:].count(None) != len(grads_out) - 1:  # double backward: kept tensors are outputs too
        per_layer = [grads_out[k] if k > 0 else None for k in net.extra]
        extra_y = [g if plan[n] == _Y else None for n, g in enumerate(per_layer)]
        extra_x = [g if plan[n] == _X else None for n, g in enumerate(per_layer)]

    def bp3(n: int, delta: Tensor) -> None:
        i = step * n
        if needs[i]:
            if n == 0:
                y_prev = saved[0]
            elif plan[n - 1] == _Y:
                y_prev = kept[n - 1]
            else:
                y_prev = acts[n - 1].f(kept[n - 1])  # recompute y_n = f(x_n)
            grads[i] = delta.t().mm(y_prev)  # BP3: ∂c/∂W_n = δᵀ y_n; (D_{n+1}, M) @ (M, D_n)
        if step == 2 and needs[i + 1]:
            grads[i + 1] = delta.sum(0)  # BP3: ∂c/∂b_n = Σ_rows δ_{n+1}

    layers = tuple(zip(saved[1 : 1 + depth], net.nones, acts, strict=True))  # (the biases are not needed)
    # dfa: the saved B_n (in the weights' places) multiply the output error
    direct = Feedback(saved[1 : 1 + depth], direct=True) if net.direct else None
    grad_input = backprop(
        layers,
        kept,
        grads_out[0],
        bp3,
        lowest,
        needs_input,
        graph,
        owned,
        extra_y,
        extra_x,
        direct,
    )
    return grad_input, grads


class MLPLossFunction(ManualFunction):
    r"""The network and the seed's error as one Function: ``c = ½‖y_N − t‖²`` per sample, reduced.

    ``apply(input, target, reduction, net, *params)``: ``input (M, D_0)``, ``target (M, D_N)``,
    ``reduction`` ``'mean'``, ``'sum'`` or ``'none'``; ``net`` and ``params`` as for
    :class:`MLPFunction`. Returns ``(loss, *saved, [y_N])``: the loss (a scalar, or ``(M,)`` for
    ``'none'``), then :class:`MLPFunction`'s extra outputs, then ``y_N`` where the last layer keeps
    its output (``f′`` from ``y``, or the identity). The backward starts with BP1 itself:

    .. math::
        \frac{\partial c}{\partial y_N} = s\,(y_N - t), \qquad
        δ_N = s\,(y_N - t) ⊙ f'(x_N), \qquad
        \frac{\partial c}{\partial t} = -s\,(y_N - t)

    (``s`` the reduction's factor times the incoming gradient), then runs :class:`MLPFunction`'s
    loop. The separate loss Function of ``half_squared_error(mlp(x), t)`` must keep ``y_N``; here a
    last layer that keeps ``x_N`` (gelu, silu, softplus) recomputes ``y_N = f(x_N)`` instead, so the
    network saves one tensor per layer and nothing more.
    """

    @staticmethod
    def forward(input: Tensor, target: Tensor, reduction: str, net: _Net, *params: Tensor) -> Any:
        y, *saved = MLPFunction.forward(input, net, *params)  # FF
        loss = HalfSquaredErrorFunction.forward(y, target, reduction)  # c = ½‖y_N − t‖², reduced
        return (loss, *saved, y) if net.plan[-1] != _X else (loss, *saved)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        input, target, reduction, net, *params = inputs
        keep_y = net.plan[-1] != _X
        extras = output[1:-1] if keep_y else output[1:]
        # MLPFunction's layout (input, W_0.., extras, [y_N]), then the target
        ctx.save_for_backward(input, *_weights(ctx, params, net), *extras, *output[-1:][:keep_y], target)
        ctx.net, ctx.reduction, ctx.keep_y = net, reduction, keep_y
        ctx.feedback = (None,) * (len(params) - net.size)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, *grads_out: Tensor | None) -> tuple[Tensor | None, ...]:
        net: _Net = ctx.net
        saved = ctx.saved_tensors
        target, saved = saved[-1], saved[:-1]
        needs = ctx.needs_input_grad  # (input, target, reduction, net, *params)
        if ctx.keep_y:
            y, g_y, grads_out = saved[-1], grads_out[-1], grads_out[:-1]
        else:
            y, g_y = None, None
        g = grad_target = None
        graph = not in_place_ok(next((g for g in (grad_loss, g_y, *grads_out) if g is not None), None))
        if grad_loss is not None:
            if y is None:
                y = net.acts[-1].f(saved[net.pos[-1]])  # recompute y_N = f(x_N)
            scale = scale_of_reduction(grad_loss, ctx.reduction, y.shape[0])
            g = y - target  # BP1's first factor: y_N − t (in float32 under autocast)
            g = g * scale if graph else g.mul_(scale)
            if needs[1]:
                grad_target = -g  # ∂c/∂t = −(y_N − t)
            if g.dtype != y.dtype:  # autocast: the error in float32, the network in its own dtype
                g = g.to(y.dtype)
        if g_y is not None:  # y_N is an output too: its gradient joins ∂c/∂y_N
            g = g_y if g is None else g + g_y
        owned = g is not g_y  # a temporary of ours, not the incoming gradient
        grad_input, grads = _fused_backward(net, saved, needs[0], needs[4:], (g, *grads_out), graph, owned)
        return (grad_input, grad_target, None, None, *grads, *ctx.feedback)


# --------------------------------------------------------------------------------------------
# The functions
# --------------------------------------------------------------------------------------------


def _check_params(
    weights: Sequence[Tensor], biases: Sequence[Tensor | None] | None, d_in: int
) -> tuple[list[Tensor], bool]:
    """Check the weight and bias chain and flatten it to ``W_0, b_0, W_1, b_1, …``."""
    if len(weights) == 0:
        raise ValueError("mlp needs at least one weight")
    has_bias = biases is not None and any(b is not None for b in biases)
    if biases is not None and has_bias:
        if len(biases) != len(weights) or any(b is None for b in biases):
            raise ValueError(
                f"mlp expected one bias per weight ({len(weights)}) or biases=None, got {len(biases)} "
                "(a network has a bias in every layer or in none)"
            )
    params: list[Tensor] = []
    for n, weight in enumerate(weights):
        check_floating(f"weights[{n}]", weight)
        if weight.dim() != 2 or weight.shape[1] != d_in:
            raise ValueError(
                f"weights[{n}] must have shape (out_features, {d_in}), got {tuple(weight.shape)}"
            )
        check_same(f"weights[{n}]", weight, "weights[0]", weights[0])
        params.append(weight)
        if has_bias:
            bias = biases[n]  # type: ignore[index]
            check_floating(f"biases[{n}]", bias)
            if bias.shape != (weight.shape[0],):
                raise ValueError(f"biases[{n}] must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
            check_same(f"biases[{n}]", bias, "weights[0]", weights[0])
            params.append(bias)
        d_in = weight.shape[0]
    return params, has_bias


def activations(activation: Any, output_activation: Any, depth: int) -> tuple[Elementwise, ...]:
    """Each layer's ``f``: ``activation`` for the hidden layers, then ``output_activation``
    (``None``: the same ``f``, as in the seed)."""
    hidden = get_activation(activation)
    out = hidden if output_activation is None else get_activation(output_activation)
    return (hidden,) * (depth - 1) + (out,)


def autocast_args(input: Tensor, params: list[Tensor]) -> tuple[Tensor, list[Tensor], torch.dtype | None]:
    """The input and parameters cast as autocast casts a matmul's operands (unchanged without it),
    and the autocast dtype (``None`` without autocast)."""
    cast = autocast_dtype(input)
    if cast is None:
        return input, params, None
    return autocast_cast(input, cast), [autocast_cast(p, cast) for p in params], cast  # type: ignore[return-value]


def run(input: Tensor, net: _Net, params: list[Tensor]) -> Tensor:
    """Flatten ``(*, D_0)`` to 2-D, cast for autocast, apply :class:`MLPFunction`, restore the shape."""
    input, params, _ = autocast_args(input, params)
    if input.dim() == 2:
        return MLPFunction.apply(input, net, *params)[0]
    lead = input.shape[:-1]
    out = MLPFunction.apply(input.reshape(-1, input.shape[-1]), net, *params)[0]
    return out.reshape(*lead, out.shape[-1])  # (M, D_N) -> (*, D_N)


def mlp(
    input: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor | None] | None = None,
    activation: Any = "sigmoid",
    output_activation: Any = None,
) -> Tensor:
    """The seed's network as one Function call (:class:`MLPFunction`).

    ``weights[n]`` is ``(D_{n+1}, D_n)`` and ``biases[n]`` is ``(D_{n+1},)`` (or ``biases=None``);
    ``activation`` is applied after every hidden layer and ``output_activation`` after the last
    (``None``: the same ``activation``, as in the seed; ``"identity"``: a linear output). The input
    is used as ``y_0`` as is. Shape: ``(*, D_0) -> (*, D_N)``.

    >>> import torch
    >>> w = [torch.randn(4, 3, requires_grad=True), torch.randn(2, 4, requires_grad=True)]
    >>> mlp(torch.randn(5, 3), w, activation="tanh").grad_fn.name()
    'MLPFunctionBackward'
    """
    check_floating("input", input)
    if input.dim() == 0:
        raise ValueError("mlp expected input of shape (*, D_0), got a 0-d tensor")
    params, has_bias = _check_params(weights, biases, input.shape[-1])
    if autocast_dtype(input) is None:
        check_same("input", input, "weights[0]", weights[0])
    return run(input, _net(activations(activation, output_activation, len(weights)), has_bias), params)


def run_loss(input: Tensor, target: Tensor, reduction: str, net: _Net, params: list[Tensor]) -> Tensor:
    """Flatten to 2-D and apply :class:`MLPLossFunction`. Under autocast the network runs in the
    autocast dtype and the error in float32 (the target cast up, as ``mse_loss`` and
    ``half_squared_error`` run there): ``y_N − t`` promotes to float32 inside the one Function,
    which keeps ``y_N`` once, in the network's dtype, where a separate loss would keep a float32
    copy as well."""
    input, params, cast = autocast_args(input, params)
    if cast is not None:
        target = to_float32(target)
    lead = input.shape[:-1]
    if input.dim() != 2:
        input, target = input.reshape(-1, input.shape[-1]), target.reshape(-1, target.shape[-1])
    loss = MLPLossFunction.apply(input, target, reduction, net, *params)[0]
    return loss.reshape(lead) if reduction == "none" and len(lead) != 1 else loss


def mlp_loss(
    input: Tensor,
    target: Tensor,
    weights: Sequence[Tensor],
    biases: Sequence[Tensor | None] | None = None,
    activation: Any = "sigmoid",
    output_activation: Any = None,
    reduction: str = "mean",
) -> Tensor:
    """The seed's network and its error ``½‖y_N − t‖²`` per sample as one Function (:class:`MLPLossFunction`).

    Equals ``half_squared_error(mlp(input, weights, biases, activation, output_activation), target,
    reduction)`` and its gradients, with one autograd node instead of two and, where the output
    activation's ``f′`` needs ``x_N``, one saved tensor less. Shape: ``input (*, D_0)``,
    ``target (*, D_N)`` -> a scalar, or ``(*)`` for ``reduction='none'``.

    >>> import torch
    >>> w = [torch.randn(4, 3, requires_grad=True), torch.randn(2, 4, requires_grad=True)]
    >>> mlp_loss(torch.randn(5, 3), torch.rand(5, 2), w, activation="gelu").grad_fn.name()
    'MLPLossFunctionBackward'
    """
    check_floating("input", input)
    if input.dim() == 0:
        raise ValueError("mlp_loss expected input of shape (*, D_0), got a 0-d tensor")
    check_reduction(reduction)
    params, has_bias = _check_params(weights, biases, input.shape[-1])
    plain = autocast_dtype(input) is None  # (under autocast the Function's inputs are casts)
    if plain:
        check_same("input", input, "weights[0]", weights[0])
    check_target(target, input, "input", weights[-1].shape[0], plain)
    net = _net(activations(activation, output_activation, len(weights)), has_bias)
    return run_loss(input, target, reduction, net, params)


# --------------------------------------------------------------------------------------------
# Registry entries: samples and native references
# --------------------------------------------------------------------------------------------


def _native_mlp(
    input: Tensor, *params: Tensor, activation: str, output_activation: str | None, bias: bool
) -> Tensor:
    weights, biases = (params[0::2], params[1::2]) if bias else (params, [None] * len(params))
    acts = activations(activation, output_activation, len(weights))
    y = input
    for w, b, act in zip(weights, biases, acts, strict=True):
        y = act.native(F.linear(y, w, b))
    return y


def _manual_mlp(
    input: Tensor, *params: Tensor, activation: str, output_activation: str | None, bias: bool
) -> Tensor:
    weights, biases = (params[0::2], params[1::2]) if bias else (params, None)
    return mlp(input, list(weights), None if biases is None else list(biases), activation, output_activation)


def _mlp_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    """Networks 3 → 4 → 2 with every kind of activation (smooth ones, relu-like, identity output)."""
    out = []
    settings = [
        ("sigmoid", None, True),
        ("tanh", "identity", True),
        ("gelu", None, False),
        ("leaky_relu", "identity", True),  # kinks: a pre-activation within eps of 0 is improbable
        ("relu", "sigmoid", False),
        ("silu", "softplus", True),
    ]
    for activation, output_activation, bias in settings:
        kw = {"activation": activation, "output_activation": output_activation, "bias": bias}
        tag = f"{activation}/{output_activation or activation}{'' if bias else ', no bias'}"
        for b in BATCHES:
            params = [
                tensor((4, 3), dtype, device),
                tensor((4,), dtype, device),
                tensor((2, 4), dtype, device),
                tensor((2,), dtype, device),
            ]
            x = tensor((*b, 3), dtype, device)
            out.append(Sample((x, *(params if bias else params[0::2])), kw, f"{tag}, batch {list(b)}"))
        params = [
            noncontiguous((4, 3), dtype, device),
            tensor((4,), dtype, device),
            noncontiguous((2, 4), dtype, device),
            tensor((2,), dtype, device),
        ]
        x = noncontiguous((5, 3), dtype, device)
        out.append(Sample((x, *(params if bias else params[0::2])), kw, f"{tag}, non-contiguous"))
    return out


def _manual_mlp_loss(input: Tensor, target: Tensor, *params: Tensor, reduction: str, **net: Any) -> Tensor:
    weights, biases = (params[0::2], params[1::2]) if net["bias"] else (params, None)
    bias_list = None if biases is None else list(biases)
    return mlp_loss(
        input, target, list(weights), bias_list, net["activation"], net["output_activation"], reduction
    )


def _native_mlp_loss(input: Tensor, target: Tensor, *params: Tensor, reduction: str, **net: Any) -> Tensor:
    return half_squared_error_reference(_native_mlp(input, *params, **net), target, reduction)


def _mlp_loss_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    """The networks of ``_mlp_samples`` with a target and each reduction (the error inside the Function)."""
    out = []
    for i, net in enumerate(_mlp_samples(dtype, device)):
        reduction = ("mean", "sum", "none")[(i + i // 6) % 3]  # each batch shape meets each reduction
        input, *params = net.args
        target = tensor((*input.shape[:-1], 2), dtype, device)
        if not input.is_contiguous():
            target = noncontiguous(tuple(target.shape), dtype, device)
        nan = reduction == "mean" and input.shape[:-1].numel() == 0
        out.append(
            Sample(
                (input, target, *params),
                {**net.kwargs, "reduction": reduction},
                f"{net.label}, {reduction}",
                finite=not nan,
            )
        )
    return out


NETWORK_OPS: tuple[Op, ...] = (
    # the fused network: the seed's whole BP1-BP2-BP3 loop in one backward
    Op(
        "mlp",
        mlp,
        _native_mlp,
        _mlp_samples,
        MLPFunction,
        checked=_manual_mlp,
        formula=(
            r"the seed's loop, $n = N..1$: BP2 $\delta_n = (\delta_{n+1} W_n) \odot f'(x_n)$; "
            r"BP3 $\partial c/\partial W_n = \delta_{n+1}^\top y_n$, "
            r"$\partial c/\partial b_n = \sum_{\text{rows}} \delta_{n+1}$"
        ),
    ),
    # the network and its error as one Function (BP1 inside)
    Op(
        "mlp_loss",
        mlp_loss,
        _native_mlp_loss,
        _mlp_loss_samples,
        MLPLossFunction,
        checked=_manual_mlp_loss,
        formula=(
            r"BP1 $\delta_N = (y_N - t) \odot f'(x_N)$ (times the reduction's scale), "
            "then the loop of `mlp`"
        ),
    ),
)
