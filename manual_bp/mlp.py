r"""The seed's network: ``MLP``, and one autograd Function for the whole δ recursion.

Indexing follows the seed. The network input is ``y_0`` (no activation is applied to it); layer
``n`` (``mlp.layers[n]``, weight ``W_n``, bias ``b_n``, ``n = 0..N−1``) computes

.. math::
    x_{n+1} = y_n W_n^\top + b_n, \qquad y_{n+1} = f(x_{n+1}),

with ``f`` the hidden activation for ``n + 1 < N`` and the output activation for ``n + 1 = N``.
Given ``g = ∂c/∂y_N`` (what the loss hands back; BP1's first factor), the backward is the seed's loop:

.. math::
    δ_N = g ⊙ f'(x_N) \;\text{(BP1)}, \quad
    \frac{\partial c}{\partial W_n} = δ_{n+1}^\top y_n, \;
    \frac{\partial c}{\partial b_n} = \textstyle\sum_{\text{rows}} δ_{n+1} \;\text{(BP3)}, \quad
    δ_n = (δ_{n+1} W_n) ⊙ f'(x_n) \;\text{(BP2)}.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manual_bp._activations import FRESH, GRAPH, OWNED, Activation, get_activation
from manual_bp._function import (
    _FLOATING,
    ManualFunction,
    autocast_cast,
    autocast_dtype,
    check_floating,
    check_reduction,
    check_same,
    check_target,
    in_place_ok,
)
from manual_bp.functional import HalfSquaredErrorFunction, _scale, _to_float32, half_squared_error
from manual_bp.modules import Linear

__all__ = ["MLP", "MLPFunction", "MLPLossFunction", "mlp", "mlp_loss"]

_autocast_on = torch._C._is_any_autocast_enabled  # as autocast_enabled(), without the Python call
_REDUCTIONS = ("mean", "sum", "none")

_Y, _X = 1, 2  # what a layer saves for backward: its output y_{n+1}, or its pre-activation x_{n+1}


class _Net:
    """The non-tensor configuration of :class:`MLPFunction`, worked out once per network.

    ``plan[n]`` says what layer ``n`` saves: ``y_{n+1}`` where ``f′`` is a function of it (it
    also serves BP3 of the next layer), else ``x_{n+1}``, from which backward recomputes
    ``y_{n+1} = f(x_{n+1})``; the output layer saves nothing when its ``f`` is the identity
    (no formula needs ``y_N`` then). ``extra[n]`` is the position among :class:`MLPFunction`'s
    outputs of what layer ``n`` saves (0 for ``y_N``, the network output itself).
    :class:`MLPLossFunction` returns the loss first and ``y_N`` (where kept) last, and hands
    :func:`_backprop` its outputs' gradients rearranged into this layout.
    """

    __slots__ = ("acts", "depth", "extra", "has_bias", "plan", "pos", "step")

    def __init__(self, acts: tuple[Activation, ...], has_bias: bool) -> None:
        self.acts, self.has_bias, self.depth = acts, has_bias, len(acts)
        self.step = 2 if has_bias else 1
        plan = [_Y if act.from_output else _X for act in acts]
        if acts[-1].name == "identity":
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

    def __repr__(self) -> str:
        return f"_Net(acts={[str(a) for a in self.acts]}, has_bias={self.has_bias})"


@lru_cache(maxsize=256)
def _net(acts: tuple[Activation, ...], has_bias: bool) -> _Net:
    return _Net(acts, has_bias)


class MLPFunction(ManualFunction):
    r"""The whole network ``y_0 ↦ f(… f(y_0 W_0ᵀ + b_0) …)`` as one Function; backward is the seed's loop.

    ``apply(input, net, *params)``: ``input (M, D_0)``; ``net`` a :class:`_Net` (from
    ``_net(acts, has_bias)``); ``params`` is ``W_0, b_0, W_1, b_1, …`` (``W_0, W_1, …`` without
    bias). Returns ``(y_N, *saved)``: the network output and the tensors backward needs (``y_n``
    or ``x_n`` per layer, see :class:`_Net`). They are outputs rather than hidden intermediates so
    that double backward differentiates through them; :func:`mlp` returns ``y_N`` alone.

    Saved for backward: the input, the weights (not the biases), and per layer ``y_n`` (sigmoid,
    tanh, relu, leaky_relu with slope ≥ 0, elu with α ≥ 0, identity) or ``x_n`` (gelu, silu,
    softplus); nothing for an identity output layer. The backward works in place on the
    temporaries it owns, except when a graph is being recorded (double backward).
    """

    @staticmethod
    def forward(input: Tensor, net: _Net, *params: Tensor) -> Any:
        step, plan = net.step, net.plan
        y = input
        saved = []
        for n, act in enumerate(net.acts):
            # FF: x_{n+1} = y_n W_nᵀ + b_n; (M, D_n) @ (D_n, D_{n+1}) -> (M, D_{n+1})
            x = F.linear(y, params[step * n], params[step * n + 1] if step == 2 else None)
            if plan[n] == _X:
                saved.append(x)
                y = act.forward(x)  # FF: y_{n+1} = f(x_{n+1}); x kept for f′
            else:
                y = act.forward_(x)  # FF: y_{n+1} = f(x_{n+1}) written over x
                if plan[n] == _Y and net.extra[n]:
                    saved.append(y)
        return (y, *saved)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        input, net, *params = inputs
        y_n = output[:1] if net.plan[-1] == _Y else ()  # y_N, if f′ of the output layer needs it
        ctx.save_for_backward(input, *_weights(ctx, params, net), *output[1:], *y_n)
        ctx.net = net
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, *grads_out: Tensor | None) -> tuple[Tensor | None, ...]:
        fast = in_place_ok(next((g for g in grads_out if g is not None), None))
        needs = ctx.needs_input_grad
        grad_input, grads = _backprop(ctx.net, ctx.saved_tensors, needs, grads_out, False, fast)
        return (grad_input, None, *grads)


def _weights(ctx: Any, params: Sequence[Tensor], net: _Net) -> list[Tensor | None]:
    """The weights backward needs: all but ``W_0``, which only ``∂c/∂y_0 = δ_1 W_0`` uses, so it is
    kept only when the input needs a gradient (a placeholder otherwise). The weights are the
    caller's parameters and cost nothing to keep, except under autocast, where they are casts."""
    weights: list[Tensor | None] = list(params[:: net.step])
    if not ctx.needs_input_grad[0]:
        weights[0] = None
    return weights


def _backprop(
    net: _Net,
    saved: tuple[Tensor, ...],
    needs: Sequence[bool],
    grads_out: Sequence[Tensor | None],
    owned: bool,
    fast: bool,
) -> tuple[Tensor | None, list[Tensor | None]]:
    """BP1, BP2 and BP3 for every layer: the body of :meth:`MLPFunction.backward`.

    ``saved`` is ``(input, W_0, …, W_{N−1}, outputs[1:], [y_N])`` (see :class:`_Net`); ``needs``
    is laid out like ``MLPFunction``'s inputs (``needs[0]`` the input, ``needs[2 + i]`` parameter
    ``i``); ``grads_out`` is ``(∂c/∂y_N, *grads of the extra outputs)``; ``owned`` says whether
    ``∂c/∂y_N`` is a temporary the caller hands over (it may then be overwritten); ``fast`` is
    :func:`in_place_ok` of the incoming gradients, which the caller has already asked. Returns the
    input's gradient and the parameters' (``None`` where not needed).
    """
    depth, step, plan, acts, extra, pos = net.depth, net.step, net.plan, net.acts, net.extra, net.pos
    grads: list[Tensor | None] = [None] * (step * depth)
    grad_input = None
    # The lowest layer whose parameters (or the input) need a gradient: the loop stops there.
    lowest = 0
    if not needs[0]:
        while lowest < depth and not any(needs[2 + step * lowest : 2 + step * (lowest + 1)]):
            lowest += 1
    g = grads_out[0]  # ∂c/∂y_N, then ∂c/∂y_n going down
    for n in range(depth - 1, lowest - 1, -1):
        k = extra[n]
        g_extra = grads_out[k] if k > 0 else None  # y_{n+1} or x_{n+1} is an output too
        if g_extra is not None and plan[n] == _Y:  # add its grad to ∂c/∂y_{n+1}
            if g is None:
                g, owned = g_extra, False
            else:
                g, owned = (g.add_(g_extra) if owned and fast else g + g_extra), True
        if g is None:  # nothing flows into this layer from above
            delta = None
        elif k < 0:  # identity output: δ_N = g
            delta = g
        else:  # BP1 (n = N−1) / BP2: δ_{n+1} = g ⊙ f′(x_{n+1})
            delta = acts[n].backward(g, saved[pos[n]], (OWNED if owned else FRESH) if fast else GRAPH)
        if g_extra is not None and plan[n] == _X:
            delta = g_extra if delta is None else delta + g_extra
        if delta is None:
            g, owned = None, False
            continue
        if n == 0:
            y_prev = saved[0]
        elif plan[n - 1] == _Y:
            y_prev = saved[pos[n - 1]]
        else:
            y_prev = acts[n - 1].forward(saved[pos[n - 1]])  # recompute y_n = f(x_n)
        i = step * n
        if needs[2 + i]:
            grads[i] = delta.t().mm(y_prev)  # BP3: ∂c/∂W_n = δᵀ y_n; (D_{n+1}, M) @ (M, D_n)
        if step == 2 and needs[3 + i]:
            grads[i + 1] = delta.sum(0)  # BP3: ∂c/∂b_n = Σ_rows δ_{n+1}
        if n > lowest:
            g, owned = delta.mm(saved[1 + n]), True  # BP2, linear half: δ_{n+1} W_n; (M, D_n)
        elif n == 0 and needs[0]:
            grad_input = delta.mm(saved[1])  # ∂c/∂y_0 = δ_1 W_0
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
        # In-place arithmetic only on temporaries we own, and none while a graph is recorded.
        fast = in_place_ok(next((g for g in (grad_loss, g_y, *grads_out) if g is not None), None))
        if grad_loss is not None:
            if y is None:
                y = net.acts[-1].forward(saved[net.pos[-1]])  # recompute y_N = f(x_N)
            scale = _scale(grad_loss, ctx.reduction, y.shape[0])
            g = y - target  # BP1's first factor: y_N − t (in float32 under autocast)
            g = g.mul_(scale) if fast else g * scale
            if needs[1]:
                grad_target = -g  # ∂c/∂t = −(y_N − t)
            if g.dtype != y.dtype:  # autocast: the error in float32, the network in its own dtype
                g = g.to(y.dtype)
        if g_y is not None:  # y_N is an output too: its gradient joins ∂c/∂y_N
            g = g_y if g is None else g + g_y
        owned = g is not g_y  # a temporary of ours, not the incoming gradient
        needs = (needs[0], False, *needs[4:])
        grad_input, grads = _backprop(net, saved, needs, (g, *grads_out), owned, fast)
        return (grad_input, grad_target, None, None, *grads)


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


def _activations(activation: Any, output_activation: Any, depth: int) -> tuple[Activation, ...]:
    hidden = get_activation(activation)
    out = hidden if output_activation is None else get_activation(output_activation)
    return (hidden,) * (depth - 1) + (out,)


def _autocast_args(input: Tensor, params: list[Tensor]) -> tuple[Tensor, list[Tensor], torch.dtype | None]:
    """The input and parameters cast as autocast casts a matmul's operands (unchanged without it),
    and the autocast dtype (``None`` without autocast)."""
    cast = autocast_dtype(input)
    if cast is None:
        return input, params, None
    return autocast_cast(input, cast), [autocast_cast(p, cast) for p in params], cast  # type: ignore[return-value]


def _run(input: Tensor, net: _Net, params: list[Tensor]) -> Tensor:
    """Flatten ``(*, D_0)`` to 2-D, cast for autocast, apply :class:`MLPFunction`, restore the shape."""
    input, params, _ = _autocast_args(input, params)
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
    return _run(input, _net(_activations(activation, output_activation, len(weights)), has_bias), params)


def _run_loss(input: Tensor, target: Tensor, reduction: str, net: _Net, params: list[Tensor]) -> Tensor:
    """Flatten to 2-D and apply :class:`MLPLossFunction`. Under autocast the network runs in the
    autocast dtype and the error in float32 (the target cast up, as ``mse_loss`` and
    ``half_squared_error`` run there): ``y_N − t`` promotes to float32 inside the one Function,
    which keeps ``y_N`` once, in the network's dtype, where a separate loss would keep a float32
    copy as well."""
    input, params, cast = _autocast_args(input, params)
    if cast is not None:
        target = _to_float32(target)
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
    net = _net(_activations(activation, output_activation, len(weights)), has_bias)
    return _run_loss(input, target, reduction, net, params)


class MLP(nn.Module):
    r"""The seed's feedforward network: ``[Linear → f] × N``, all gradients written out by hand.

    ``sizes = [D_0, D_1, …, D_N]`` gives ``N`` linear layers ``mlp.layers[n]``
    (:class:`manual_bp.Linear`, ``D_n → D_{n+1}``). Each is followed by ``activation``, the last by
    ``output_activation`` (``None``: the same ``f`` at every layer, as in the seed; ``"identity"``:
    a linear output, e.g. logits for a cross-entropy loss). The input is ``y_0`` itself; no
    activation is applied to it:

    .. math::
        x_{n+1} = y_n W_n^\top + b_n, \qquad y_{n+1} = f(x_{n+1}), \qquad n = 0, …, N-1.

    Args:
        sizes: layer widths ``[D_0, …, D_N]``, at least two positive integers.
        activation: a name (``sigmoid``, ``tanh``, ``relu``, ``leaky_relu``, ``elu``, ``softplus``,
            ``gelu``, ``gelu_tanh``, ``silu``, ``identity``) or an activation module such as
            ``manual_bp.LeakyReLU(0.2)`` (which carries its parameters).
        output_activation: the same, for the last layer; ``None`` repeats ``activation``.
        bias: whether every layer has a bias.
        fused: ``True`` runs the network as one :class:`MLPFunction` (the seed's loop in one
            backward); ``False`` chains the per-layer Functions of :mod:`manual_bp.functional`.
            The parameters and ``state_dict`` (``layers.0.weight``, ``layers.0.bias``, …) are the
            same either way; the attribute may be changed at any time.

    Shape: ``(*, D_0) -> (*, D_N)``. Parameters are initialised as ``torch.nn.Linear`` does.

    >>> import torch, manual_bp
    >>> net = manual_bp.MLP([3, 5, 2])
    >>> net(torch.randn(4, 3)).shape
    torch.Size([4, 2])
    >>> list(net.state_dict())
    ['layers.0.weight', 'layers.0.bias', 'layers.1.weight', 'layers.1.bias']
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: Any = "sigmoid",
        output_activation: Any = None,
        bias: bool = True,
        fused: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
            raise TypeError(f"sizes must be a sequence of ints [D_0, ..., D_N], got {type(sizes).__name__}")
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes must hold at least two entries (input and output width), got {sizes}")
        for size in sizes:
            if isinstance(size, bool) or not isinstance(size, int):
                raise TypeError(f"sizes must hold ints, got {size!r} ({type(size).__name__}) in {sizes}")
            if size <= 0:
                raise ValueError(f"sizes must be positive, got {size} in {sizes}")
        self.sizes: tuple[int, ...] = tuple(sizes)
        self._activation = get_activation(activation)
        self._output_activation = (
            self._activation if output_activation is None else get_activation(output_activation)
        )
        self.fused = bool(fused)
        self.layers = nn.ModuleList(
            Linear(d_in, d_out, bias=bias, device=device, dtype=dtype)
            for d_in, d_out in zip(sizes, sizes[1:], strict=False)
        )
        self._net = _net(self.activations, bias)

    @property
    def activation(self) -> Activation:
        """The hidden layers' activation ``f``."""
        return self._activation

    @activation.setter
    def activation(self, value: Any) -> None:
        self._activation = get_activation(value)
        self._net = _net(self.activations, self._net.has_bias)

    @property
    def output_activation(self) -> Activation:
        """The output layer's activation (the hidden one unless given)."""
        return self._output_activation

    @output_activation.setter
    def output_activation(self, value: Any) -> None:
        self._output_activation = get_activation(value)
        self._net = _net(self.activations, self._net.has_bias)

    @property
    def activations(self) -> tuple[Activation, ...]:
        """The activation of each layer: ``activation`` for the hidden ones, then ``output_activation``."""
        return (self._activation,) * (len(self.layers) - 1) + (self._output_activation,)

    def parameters_flat(self) -> list[Tensor]:
        """``W_0, b_0, W_1, b_1, …`` (no biases if the network has none): the fused Function's params."""
        params: list[Tensor] = []
        for layer in self.layers._modules.values():
            own = layer._parameters  # type: ignore[union-attr]  # (faster than Module.__getattr__)
            params.append(own["weight"])
            if own.get("bias") is not None:
                params.append(own["bias"])
        return params

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        if not self.fused:
            y = input
            for layer, act in zip(self.layers, self.activations, strict=True):
                y = act.functional(layer(y))  # FF through the per-layer Functions
            return y
        return _run(input, self._net, self._fused_params(input))

    def loss(self, input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        """The seed's error of the network's output: ``c = ½‖y_N − t‖²`` per sample, reduced.

        Equals ``manual_bp.HalfSquaredError(reduction)(mlp(input), target)``, values and gradients.
        With ``fused=True`` the network and the error are one Function (:class:`MLPLossFunction`,
        whose backward starts at BP1): one autograd node for the whole step, and where the output
        activation's ``f′`` needs ``x_N`` (gelu, silu, softplus) ``y_N`` is recomputed rather than
        kept, so the step saves one tensor per layer. Shape: ``input (*, D_0)``,
        ``target (*, D_N)`` -> a scalar, or ``(*)`` for ``reduction='none'``.

        >>> import torch, manual_bp
        >>> net = manual_bp.MLP([3, 5, 2])
        >>> loss = net.loss(torch.randn(4, 3), torch.rand(4, 2))
        >>> loss.shape, loss.grad_fn.name()
        (torch.Size([]), 'MLPLossFunctionBackward')
        """
        if self.fused:
            params = self.parameters_flat()
            if reduction in _REDUCTIONS and self._plain_call(input, target, params):
                return MLPLossFunction.apply(input, target, reduction, self._net, *params)[0]
        self._check_input(input)
        check_reduction(reduction)
        # (under autocast half_squared_error casts, then checks the dtypes)
        check_target(target, input, "input", self.sizes[-1], autocast_dtype(input) is None)
        if not self.fused:
            return half_squared_error(self(input), target, reduction)
        return _run_loss(input, target, reduction, self._net, self._fused_params(input))

    def _plain_call(self, input: Any, target: Any, params: list[Tensor]) -> bool:
        """One cheap test that ``input`` and ``target`` are the usual ones and would pass every check
        unchanged: a 2-D batch and its target, of the parameters' dtype and device, no autocast,
        and ``params`` (:meth:`parameters_flat`) laid out as the network's plan. The common call
        of :meth:`loss` and of ``engine.sgd_step``, which then skip their full checks (a small step
        is mostly fixed costs); anything else goes through them, and they say what is wrong.
        Dtypes are singletons, so ``is`` compares them."""
        try:
            weight, net = params[0], self._net
            return (
                input.ndim == 2
                and input.dtype is weight.dtype
                and target.dtype is weight.dtype
                and input.shape[1] == self.sizes[0]
                and target.shape == (input.shape[0], self.sizes[-1])
                and input.device == weight.device
                and target.device == weight.device
                and weight.dtype in _FLOATING
                and len(params) == net.step * net.depth
                and not _autocast_on()
            )
        except AttributeError:  # not tensors: the full checks say what came
            return False

    def _check_input(self, input: Any) -> None:
        if not isinstance(input, Tensor) or not input.is_floating_point() or input.dim() == 0:
            check_floating("input", input)
            raise ValueError("MLP expected input of shape (*, D_0), got a 0-d tensor")
        if input.shape[-1] != self.sizes[0]:
            raise ValueError(
                f"MLP expected input of shape (*, {self.sizes[0]}) (sizes[0]={self.sizes[0]}), "
                f"got shape {tuple(input.shape)}"
            )

    def _fused_params(self, input: Tensor) -> list[Tensor]:
        """The fused Function's parameters, checked against ``input`` and the network's plan."""
        params = self.parameters_flat()
        weight = params[0]
        if input.device != weight.device or (input.dtype != weight.dtype and autocast_dtype(input) is None):
            check_same("input", input, "weight", weight)
        net = self._net
        if len(params) != net.step * net.depth:
            raise ValueError(
                f"the MLP was built with bias={net.has_bias} in every layer, but its layers now hold "
                f"{len(params)} parameters for {net.depth} layers"
            )
        return params

    def extra_repr(self) -> str:
        return (
            f"sizes={list(self.sizes)}, activation={self.activation}, "
            f"output_activation={self.output_activation}, fused={self.fused}"
        )
