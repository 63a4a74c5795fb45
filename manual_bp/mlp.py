r"""The seed's network as a module: ``MLP``, run by one fused Function or by the per-layer ones.

The math (FF, BP1, BP2, BP3, and the fused Functions) is in :mod:`manual_bp.ops.network`; this
module holds the parameters, as ``torch.nn.Linear`` layers (``mlp.layers[n]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from manual_bp._function import (
    _FLOATING,
    autocast_dtype,
    check_floating,
    check_reduction,
    check_same,
    check_target,
)
from manual_bp._torch_private import autocast_on
from manual_bp.feedback import bp2_matrices, set_feedback
from manual_bp.ops import Elementwise, resolve_activation
from manual_bp.ops.linear import Linear
from manual_bp.ops.losses import half_squared_error
from manual_bp.ops.network import (
    Feedback,
    Layer,
    MLPFunction,
    MLPLossFunction,
    _Net,
    _net,
    mlp,
    mlp_loss,
    run,
    run_loss,
)

# MLPFunction, MLPLossFunction, mlp and mlp_loss lived here before the op registry: still importable
__all__ = ["MLP", "MLPFunction", "MLPLossFunction", "mlp", "mlp_loss"]

_REDUCTIONS = ("mean", "sum", "none")


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
        activation: a name of the registry (:data:`manual_bp.ops.ACTIVATION_NAMES`: ``sigmoid``,
            ``tanh``, ``relu``, ``gelu``, ``gelu_tanh``, ``selu``, ``identity``, ...) or an
            activation module such as ``manual_bp.LeakyReLU(0.2)`` (which carries its parameters).
        output_activation: the same, for the last layer; ``None`` repeats ``activation``.
        bias: whether every layer has a bias.
        fused: ``True`` runs the network as one :class:`MLPFunction` (the seed's loop in one
            backward); ``False`` chains the per-layer Functions of :mod:`manual_bp.functional`.
            A learned activation (``"prelu"``: one ``manual_bp.PReLU`` per layer, in
            ``mlp.activation_layers``) always runs the per-layer Functions.
            The parameters and ``state_dict`` (``layers.0.weight``, ``layers.0.bias``, …) are the
            same either way; the attribute may be changed at any time.
        feedback: the rule of BP2 (:mod:`manual_bp.feedback`): ``"backprop"`` (the seed's
            ``δ_{n+1} W_n``), ``"fa"``, ``"dfa"``, ``"sign"``, ``"brsf"`` or ``"frsf"``. The random
            matrices are buffers ``layers.n.feedback_weight`` in the ``state_dict``.
        feedback_scale: the factor on the random feedback matrices (and on ``sign(W)``).
        feedback_seed: seeds the feedback matrices (with each layer's name), apart from the
            global random state: the same on every process.

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
        feedback: str = "backprop",
        feedback_scale: float = 1.0,
        feedback_seed: int = 0,
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
        self._activation = resolve_activation(activation)
        self._output_activation = (
            self._activation if output_activation is None else resolve_activation(output_activation)
        )
        self.fused = bool(fused)
        self.layers = nn.ModuleList(
            Linear(d_in, d_out, bias=bias, device=device, dtype=dtype)
            for d_in, d_out in zip(sizes, sizes[1:], strict=False)
        )
        self._net: _Net | None = None
        if any(isinstance(a, type) for a in self.activations):
            # a learned activation (prelu): one module per layer, each with its own parameter; the
            # network runs the per-layer Functions (the fused loop and the engine know W and b only)
            self.activation_layers = nn.ModuleList(
                a(device=device, dtype=dtype) if isinstance(a, type) else type(a).Module(**a.params())
                for a in self.activations
            )
        else:
            self._net = _net(self.activations, bias)
        set_feedback(self, feedback, feedback_scale, feedback_seed, output_size=sizes[-1])

    def bp2(self, new_batch: bool = True) -> Feedback | None:
        """The feedback rule's BP2 for the seed's loop: each layer's ``B_n`` (a ``brsf`` layer draws
        a new ``R`` first when ``new_batch``), or ``None`` under the seed's own BP2 (``"backprop"``
        in every layer). The engine calls it every step; the fused Functions read the same."""
        if not self._has_rule():
            return None
        layers = list(self.layers._modules.values())
        rules = {layer.feedback_rule for layer in layers}  # type: ignore[union-attr]
        if "dfa" in rules and len(rules) > 1:
            raise ValueError(
                "an MLP runs one feedback rule in every layer, or dfa in none; "
                f"its layers have {sorted(rules)}"
            )
        return Feedback(bp2_matrices(layers, new_batch), direct="dfa" in rules)

    def _has_rule(self) -> bool:
        """Whether a layer has a feedback rule (a loop, not a set: every step asks)."""
        for layer in self.layers._modules.values():
            if layer.feedback_rule != "backprop":  # type: ignore[union-attr]
                return True
        return False

    def _fused(self) -> tuple[_Net, list[Tensor]]:
        """The fused Function's plan and the feedback matrices that follow its parameters (none
        under the seed's BP2)."""
        net = self._net
        if not self._has_rule():
            return net, []  # type: ignore[return-value]
        feedback = self.bp2(self.training and torch.is_grad_enabled())
        assert feedback is not None and net is not None
        if feedback.direct:
            net = _net(net.acts, net.has_bias, True)
        return net, list(feedback.matrices)

    @property
    def activation(self) -> Elementwise | type[nn.Module]:
        """The hidden layers' activation ``f`` (a module class for a learned one, such as prelu)."""
        return self._activation

    @activation.setter
    def activation(self, value: Any) -> None:
        self._set_activations(value, self._output_activation)

    @property
    def output_activation(self) -> Elementwise | type[nn.Module]:
        """The output layer's activation (the hidden one unless given)."""
        return self._output_activation

    @output_activation.setter
    def output_activation(self, value: Any) -> None:
        self._set_activations(self._activation, value)

    def _set_activations(self, activation: Any, output_activation: Any) -> None:
        hidden, out = resolve_activation(activation), resolve_activation(output_activation)
        if self._net is None or isinstance(hidden, type) or isinstance(out, type):
            raise ValueError(
                "the activations of an MLP with a learned activation (prelu) own parameters and "
                "cannot be swapped; build a new MLP"
            )
        self._activation, self._output_activation = hidden, out
        self._net = _net(self.activations, self._net.has_bias)

    @property
    def activations(self) -> tuple[Any, ...]:
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

    def layers_of(self, params: list[Tensor]) -> tuple[Layer, ...]:
        """``(W_n, b_n, f)`` per layer from :meth:`parameters_flat`: what the seed's loop reads."""
        if self._net is None:
            raise TypeError(
                "this MLP has a learned activation (prelu), whose parameter the seed's loop does not "
                "update; train it with autograd (MLP.loss or a loss module, and a torch.optim optimizer)"
            )
        return self._net.layers(params)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        if self._net is None or not self.fused:  # per layer (a learned activation: its module)
            acts = self.activation_layers if self._net is None else [act.manual for act in self.activations]
            y = input
            for layer, act in zip(self.layers, acts, strict=True):
                y = act(layer(y))  # FF through the per-layer Functions
            return y
        net, feedback = self._fused()
        return run(input, net, self._fused_params(input) + feedback)

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
        if self.fused and self._net is not None:
            params = self.parameters_flat()
            if reduction in _REDUCTIONS and self._plain_call(input, target, params):
                net, feedback = self._fused()
                return MLPLossFunction.apply(input, target, reduction, net, *params, *feedback)[0]
        self._check_input(input)
        check_reduction(reduction)
        # (under autocast half_squared_error casts, then checks the dtypes)
        check_target(target, input, "input", self.sizes[-1], autocast_dtype(input) is None)
        if not self.fused or self._net is None:
            return half_squared_error(self(input), target, reduction)
        net, feedback = self._fused()
        return run_loss(input, target, reduction, net, self._fused_params(input) + feedback)

    def _plain_call(self, input: Any, target: Any, params: list[Tensor]) -> bool:
        """One cheap test that ``input`` and ``target`` are the usual ones and would pass every check
        unchanged: a 2-D batch and its target, of the parameters' dtype and device, no autocast,
        and ``params`` (:meth:`parameters_flat`) laid out as the network's plan. The common call
        of :meth:`loss` and of ``engine.sgd_step``, which then skip their full checks (a small step
        is mostly fixed costs); anything else goes through them, and they say what is wrong.
        Dtypes are singletons, so ``is`` compares them."""
        try:
            weight, net = params[0], self._net
            if net is None:
                return False
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
                and not autocast_on()
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
        def name(act: Any) -> str:
            return act.__name__.lower() if isinstance(act, type) else str(act)

        rule = self.layers[0].feedback_rule
        return (
            f"sizes={list(self.sizes)}, activation={name(self.activation)}, "
            f"output_activation={name(self.output_activation)}, fused={self.fused}"
            + ("" if rule == "backprop" else f", feedback={rule}")
        )
