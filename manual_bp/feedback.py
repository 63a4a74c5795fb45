r"""Feedback rules: what BP2 multiplies δ by, for researchers who change the backward.

The seed's BP2 hands the layer below ``δ_{n+1} W_n`` (``W_nᵀ δ_{n+1}`` in its column notation). A
feedback rule replaces only that matrix; BP3 keeps each layer's own ``δ_{n+1}`` and input,
``∂c/∂W_n = δ_{n+1}ᵀ y_n``:

============  ============================================  ===================================
rule          BP2 (what layer ``n`` hands down)             ``B_n``
============  ============================================  ===================================
``backprop``  ``δ_{n+1} W_n``                               (the weight itself)
``fa``        ``δ_{n+1} B_n``                               fixed random, ``W_n``'s shape
``dfa``       ``e B_n``, ``e = ∂c/∂x_N`` the output error   fixed random, ``(D_N, D_n)``
``sign``      ``δ_{n+1} sign(W_n)``                         the current ``W_n``'s signs
``brsf``      ``δ_{n+1} (|R| ⊙ sign(W_n))``                 ``R`` redrawn every training batch
``frsf``      ``δ_{n+1} (|R| ⊙ sign(W_n))``                 ``R`` drawn once
============  ============================================  ===================================

References: feedback alignment (Lillicrap et al. 2016), direct feedback alignment (Nøkland 2016),
sign-concordant feedback (Liao et al. 2016; Moskovitz et al. 2018).

Each layer's random matrix (``B_n`` of ``fa`` and ``dfa``, ``R`` of ``brsf``/``frsf``) is a
buffer named ``feedback_weight``, so ``state_dict``, checkpoints and resume keep it. It is drawn
as ``torch.nn`` draws a weight of its shape, Kaiming-uniform ``U(−1/√fan_in, 1/√fan_in)``, times
``scale``, from a generator seeded by ``seed`` and the layer's name in the model: the same on every
process of a DDP run, and independent of the global random state. ``brsf`` counts its draws in a
second buffer, ``feedback_draws`` (draw ``k`` is seeded by the seed, the name and ``k``), so that
a resumed run draws what an uninterrupted one would.

Where the rules run: :func:`set_feedback` (``manual_bp.convert(model, feedback=...)`` calls it)
sets a rule on every manual ``Linear``, ``Conv1d/2d/3d`` and ``ConvTranspose1d/2d`` of a model;
:class:`manual_bp.MLP` and the engine take ``feedback=`` and run the rule inside the seed's loop
(:func:`manual_bp.ops.network.backprop`). The per-layer Functions are
:class:`~manual_bp.ops.linear.FeedbackLinearFunction` and its conv twins (``fa``, ``sign``,
``brsf``, ``frsf``: the layer's own backward, reading ``B_n`` where it reads ``W_n``) and, for
``dfa``, :class:`DirectFeedbackFunction` around the layer: the top layer (the last to run in the
model's forward) records its δ, the output error ``e = ∂c/∂x_N``, and every layer hands down
``e B_n``.

A rule's update is not a gradient: ``gradcheck`` applies to ``"backprop"`` only, and
``manual-bp check --feedback RULE`` compares each rule with its own update written out with native
ops. :func:`weight_alignment` and :func:`gradient_alignment` measure how far a rule is from
backprop.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from manual_bp._function import ManualFunction
from manual_bp.ops.linear import FeedbackLayer, Linear

__all__ = [
    "RULES",
    "DirectFeedbackFunction",
    "angle",
    "bp2_matrices",
    "check_rule",
    "clear_feedback",
    "feedback_layers",
    "feedback_matrix",
    "feedback_rules",
    "gradient_alignment",
    "set_feedback",
    "use_backprop",
    "weight_alignment",
]

#: The rules, ``"backprop"`` (the seed's BP2) first.
RULES: tuple[str, ...] = ("backprop", "fa", "dfa", "sign", "brsf", "frsf")

#: The layers a rule applies to: their backward has a BP2 through a weight.
_LAYERS = FeedbackLayer

_frozen = [False]  # inside gradient_alignment: brsf does not redraw R


# --------------------------------------------------------------------------------------------
# Setting a rule
# --------------------------------------------------------------------------------------------


def check_rule(rule: Any, scale: Any = 1.0, seed: Any = 0) -> None:
    """Raise a clear error for a rule, scale or seed :func:`set_feedback` cannot take."""
    if rule not in RULES:
        raise ValueError(f"feedback must be one of {', '.join(map(repr, RULES))}, got {rule!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"feedback_scale must be a real number, got {type(scale).__name__}")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"feedback_scale must be positive and finite, got {scale}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"feedback_seed must be an int, got {type(seed).__name__}")


def feedback_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The ``(name, layer)`` pairs of ``model`` whose BP2 a rule changes: manual ``Linear`` and
    convolution layers (``convert`` first to make a model's ``torch.nn`` layers manual)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _LAYERS)]


def feedback_rules(model: nn.Module) -> dict[str, str]:
    """``{layer name: rule}`` for the layers of ``model`` whose rule is not ``"backprop"``."""
    return {name: m.feedback_rule for name, m in feedback_layers(model) if m.feedback_rule != "backprop"}


def set_feedback(
    model: nn.Module,
    rule: str = "fa",
    scale: float = 1.0,
    seed: int = 0,
    output_size: int | None = None,
) -> nn.Module:
    """Set the feedback rule of every manual ``Linear`` and convolution of ``model``, in place.

    Args:
        model: a model whose layers are manual (:func:`manual_bp.convert`, :class:`manual_bp.MLP`).
        rule: one of :data:`RULES`; ``"backprop"`` removes a rule (and its buffers).
        scale: the factor on the random feedback matrices (and on ``sign(W)`` for ``"sign"``).
        seed: seeds every layer's matrix together with the layer's name.
        output_size: for ``"dfa"``, the output width ``D_N`` of the top layer, if known: the
            ``(D_N, D_n)`` matrices of ``Linear`` layers are then drawn at once. Otherwise (and always
            for convolutions, whose ``D_n`` is the flattened input ``C·H·W``) each is drawn after the
            first forward with a graph, when the shapes are known. ``dfa`` takes the error
            ``e = δ_N`` at the top layer: the last rule layer to run in ``model``'s forward, which
            every other rule layer must feed.

    Returns:
        ``model``.

    >>> import torch, manual_bp
    >>> nn = torch.nn
    >>> net = manual_bp.convert(nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2)))
    >>> _ = set_feedback(net, "fa", seed=1)
    >>> [name for name, _ in net.named_buffers()]
    ['0.feedback_weight', '2.feedback_weight']
    >>> net(torch.randn(5, 4)).grad_fn.name()
    'FeedbackLinearFunctionBackward'
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"set_feedback expected a torch.nn.Module, got {type(model).__name__}")
    check_rule(rule, scale, seed)
    layers = feedback_layers(model)
    if rule != "backprop" and not layers:
        native = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
        hint = f" (its torch.nn layers {native[:3]} are native: manual_bp.convert it first)" if native else ""
        raise ValueError(
            f"feedback={rule!r}: {type(model).__name__} has no manual Linear or convolution layer{hint}"
        )
    hub = _Hub() if rule == "dfa" else None
    for name, layer in layers:
        _set_layer(layer, rule, scale, _seed(seed, name), output_size if isinstance(layer, Linear) else None)
        layer._feedback_hub = hub
    _remove_hooks(model)
    if hub is not None:  # one forward of `model` is one dfa pass: its last layer is the top
        model._feedback_hub = hub
        model.register_forward_pre_hook(_start_pass)
        model.register_forward_hook(_end_pass)
    return model


def clear_feedback(layer: nn.Module) -> None:
    """Remove a layer's rule and its buffers (what ``revert`` does to every layer)."""
    if isinstance(layer, _LAYERS):
        _set_layer(layer, "backprop", 1.0, 0, None)
        layer.__dict__.pop("_feedback_hub", None)
    _remove_hooks(layer)


def _seed(seed: int, name: str) -> int:
    """A 63-bit seed from ``seed`` and a layer's name (distinct layers, distinct matrices)."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _draw(shape: tuple[int, ...], scale: float, seed: int, like: Tensor) -> Tensor:
    """``U(−b, b)`` with ``b = scale/√fan_in`` (``fan_in = prod(shape[1:])``: ``torch.nn``'s
    Kaiming-uniform for a weight of this shape), drawn in float64 on the CPU from a generator seeded
    with ``seed`` (the same numbers on every device and process), then cast like ``like``."""
    generator = torch.Generator().manual_seed(seed)
    fan_in = math.prod(shape[1:])
    bound = scale / math.sqrt(fan_in) if fan_in else 0.0
    values = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
    return values.to(dtype=like.dtype, device=like.device)


def _set_layer(layer: Any, rule: str, scale: float, seed: int, output_size: int | None) -> None:
    for name in ("feedback_weight", "feedback_draws"):
        layer._buffers.pop(name, None)
    for name in ("feedback_rule", "feedback_scale", "feedback_seed", "_dfa_input_shape"):
        layer.__dict__.pop(name, None)
    if rule == "backprop":
        return
    layer.feedback_rule, layer.feedback_scale, layer.feedback_seed = rule, float(scale), seed
    weight = layer.weight
    if rule in ("fa", "brsf", "frsf"):
        layer.register_buffer("feedback_weight", _draw(tuple(weight.shape), scale, seed, weight))
    elif rule == "dfa":
        shape = None if output_size is None else (output_size, weight.shape[1])
        layer.register_buffer("feedback_weight", None if shape is None else _draw(shape, scale, seed, weight))
    if rule == "brsf":
        layer.register_buffer("feedback_draws", torch.zeros((), dtype=torch.int64, device=weight.device))


# --------------------------------------------------------------------------------------------
# The forward of a layer with a rule, and the matrix its BP2 reads
# --------------------------------------------------------------------------------------------


def feedback_matrix(layer: Any, weight: Tensor) -> Tensor:
    """The ``B_n`` a layer's BP2 multiplies δ by under its rule (the weight's shape; for ``dfa`` the
    ``(D_N, D_n)`` matrix that multiplies the output error). Never differentiated."""
    rule = layer.feedback_rule
    if rule == "backprop":
        return weight
    if rule in ("fa", "dfa"):
        matrix = layer.feedback_weight
        if matrix is None:
            raise RuntimeError(
                "feedback='dfa': this layer's matrix B_n is drawn after the model's first forward "
                "(when the output width is known); run a forward first"
            )
        return matrix
    signs = weight.detach().sign()
    if rule == "sign":
        return signs * layer.feedback_scale if layer.feedback_scale != 1.0 else signs
    return layer.feedback_weight.abs() * signs  # brsf, frsf: |R| ⊙ sign(W)


def bp2_matrices(layers: Any, new_batch: bool) -> list[Tensor]:
    """Each layer's ``B_n`` for the step about to run (:func:`_batch_matrix`)."""
    return [_batch_matrix(layer, layer.weight, new_batch) for layer in layers]


def _batch_matrix(layer: Any, weight: Tensor, new_batch: bool) -> Tensor:
    """The layer's ``B_n`` (:func:`feedback_matrix`) for a step; with ``new_batch`` (a training
    batch) a ``brsf`` layer first draws its ``R`` for it."""
    if new_batch and layer.feedback_rule == "brsf" and not _frozen[0]:
        _redraw(layer)
    return feedback_matrix(layer, weight)


def _redraw(layer: Any) -> None:
    """brsf: a new ``R`` for this batch (draw ``k`` seeded by the layer's seed and ``k``)."""
    draws = layer.feedback_draws
    with torch.no_grad():
        seed = _seed(layer.feedback_seed, str(int(draws)))
        layer.feedback_weight.copy_(
            _draw(tuple(layer.weight.shape), layer.feedback_scale, seed, layer.weight)
        )
        draws.add_(1)


def feedback_forward(layer: Any, input: Tensor, weight: Tensor, bias: Tensor | None, *extra: Any) -> Tensor:
    """The forward of a manual layer whose rule is not ``"backprop"`` (its ``forward`` calls this)."""
    rule = layer.feedback_rule
    if rule == "dfa":  # (without a graph there is no BP2: the plain layer)
        if torch.is_grad_enabled():
            return _direct_forward(layer, input, weight, bias, *extra)
        return layer.manual_forward(input, weight, bias, None, *extra)
    matrix = _batch_matrix(layer, weight, layer.training and torch.is_grad_enabled())
    return layer.manual_forward(input, weight, bias, matrix, *extra)


# --------------------------------------------------------------------------------------------
# Direct feedback alignment: the output error, and BP2 from it
# --------------------------------------------------------------------------------------------


class _Pass:
    """One forward of a model under ``dfa``: its layers in the order they ran, the top one (the last),
    and, once the top layer's backward has run, the output error ``e``."""

    __slots__ = ("count", "error", "top", "width")

    def __init__(self) -> None:
        self.count, self.top, self.width = 0, 0, 0
        self.error: Tensor | None = None


class _Hub:
    """What the layers of one model under ``dfa`` share: the pass of the forward running now, and the
    last one (``model._feedback_hub.last.error`` is the output error ``e`` of the last backward)."""

    def __init__(self) -> None:
        self.current: _Pass | None = None
        self.last: _Pass | None = None  # the latest finished forward (its error, after backward)
        self.pending = False  # a layer waits for its matrix (drawn at the end of the forward)


def _start_pass(model: nn.Module, args: Any) -> None:
    model._feedback_hub.current = _Pass()


def _end_pass(model: nn.Module, args: Any, output: Any) -> None:
    """After the forward: the last layer to run is the top one; the matrices not drawn yet (their
    shapes are known now: ``(D_N, D_n)``, ``D_N`` the top layer's output per sample) are drawn."""
    hub = model._feedback_hub
    run, hub.current = hub.current, None
    hub.last = run
    if run is None or run.count == 0:
        return
    run.top = run.count
    if not hub.pending:
        return
    hub.pending = False
    for _, layer in feedback_layers(model):
        shape = layer.__dict__.get("_dfa_input_shape")
        if layer.feedback_rule == "dfa" and layer.feedback_weight is None and shape is not None:
            layer.feedback_weight = _draw(
                (run.width, math.prod(shape)), layer.feedback_scale, layer.feedback_seed, layer.weight
            )


def _remove_hooks(model: nn.Module) -> None:
    """Remove the dfa pass hooks (found by function: handles do not survive a deep copy)."""
    model.__dict__.pop("_feedback_hub", None)
    for hooks in (model._forward_pre_hooks, model._forward_hooks):
        for key in [k for k, hook in hooks.items() if hook in (_start_pass, _end_pass)]:
            del hooks[key]


def _direct_forward(layer: Any, input: Tensor, weight: Tensor, bias: Tensor | None, *extra: Any) -> Tensor:
    """dfa: the layer computed from the detached input (its own backward does BP3 only), wrapped in
    :class:`DirectFeedbackFunction`, which hands its δ through and gives the input ``e B_n``."""
    out = layer.manual_forward(input.detach(), weight, bias, None, *extra)
    hub = layer._feedback_hub
    if hub.current is None:  # called outside the forward of the model set_feedback was given
        hub.current = _Pass()
    run = hub.current
    run.count += 1
    run.width = out[0].numel() if out.dim() else 1  # D_N, if this layer turns out to be the top
    if layer.feedback_weight is None:
        layer._dfa_input_shape = tuple(input.shape[1:])  # B_n drawn at the end of the forward
        hub.pending = True
    return DirectFeedbackFunction.apply(out, input, run, run.count, layer)


class DirectFeedbackFunction(ManualFunction):
    r"""Direct feedback alignment around one layer.

    ``apply(out, input, run, order, layer)`` returns the layer's output ``out`` (computed from the
    detached input, so the layer's own backward does BP3 only) and hands ``out``'s δ to it
    unchanged. The top layer (the last of the forward ``run``) records its δ as the output error;
    every layer's input gets

    .. math::
        \frac{\partial c}{\partial y_n} := e\, B_n, \qquad e = δ_N = \frac{\partial c}{\partial x_N}

    instead of ``δ_{n+1} W_n``, with ``B_n`` the layer's ``feedback_weight`` ``(D_N, D_n)``
    (``D_n`` the flattened input per sample). The top layer's backward runs before the others'
    (they all lie upstream of it).
    """

    @staticmethod
    def forward(out: Tensor, input: Tensor, run: _Pass, order: int, layer: Any) -> Tensor:
        return out

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        _, input, ctx.run, ctx.order, ctx.layer = inputs
        ctx.input_shape, ctx.input_dtype = input.shape, input.dtype

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        run = ctx.run
        if ctx.order == run.top:
            run.error = grad_output.detach().reshape(grad_output.shape[0], -1)  # e = δ_N: (M, *) -> (M, D_N)
        grad_input = None
        if ctx.needs_input_grad[1]:
            error, matrix = run.error, ctx.layer.feedback_weight
            if error is None or matrix is None:
                raise RuntimeError(
                    "feedback='dfa': this layer's backward ran before the top layer's, so there is no "
                    "output error yet; dfa needs every rule layer upstream of the last one to run"
                )
            if error.shape[0] != ctx.input_shape[0]:
                raise RuntimeError(
                    f"feedback='dfa': the output error has {error.shape[0]} rows but this layer's input "
                    f"has shape {tuple(ctx.input_shape)}: dfa needs every layer's input batch-first, "
                    "with the top layer's batch"
                )
            # BP2 (DFA): ∂c/∂y_n = e B_n; (M, D_N) @ (D_N, D_n) -> (M, D_n) -> the input's shape
            grad_input = (error.to(matrix.dtype) @ matrix).view(ctx.input_shape).to(ctx.input_dtype)
        return grad_output, grad_input, None, None, None


# --------------------------------------------------------------------------------------------
# Alignment: how far a rule is from backprop
# --------------------------------------------------------------------------------------------


def angle(a: Tensor, b: Tensor) -> float:
    """The angle between two tensors taken as flat vectors, in degrees (NaN if one is zero)."""
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    norms = a.norm() * b.norm()
    if norms == 0:
        return math.nan
    return math.degrees(math.acos(max(-1.0, min(1.0, float(a @ b / norms)))))


@contextlib.contextmanager
def use_backprop(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with the seed's BP2 (``δ W``) in every layer for the duration, keeping each
    layer's rule and matrices for afterwards."""
    saved = [(layer, layer.__dict__.get("feedback_rule")) for _, layer in feedback_layers(model)]
    try:
        for layer, rule in saved:
            if rule is not None:
                layer.feedback_rule = "backprop"
        yield
    finally:
        for layer, rule in saved:
            if rule is not None:
                layer.feedback_rule = rule


def weight_alignment(model: nn.Module) -> dict[str, float]:
    """Per layer with a rule, the angle in degrees between ``W_n`` and the ``B_n`` its BP2 uses
    (0° is backprop). For ``dfa`` only where ``B_n`` has ``W_n``'s shape (the top layer)."""
    out = {}
    for name, layer in feedback_layers(model):
        if layer.feedback_rule == "backprop" or layer._buffers.get("feedback_weight", 0) is None:
            continue
        matrix = feedback_matrix(layer, layer.weight)
        if matrix.shape == layer.weight.shape:
            out[name] = angle(layer.weight, matrix)
    return out


def gradient_alignment(model: nn.Module, loss_of: Callable[[], Tensor]) -> dict[str, float]:
    """Per layer with a rule, the angle in degrees between the rule's ``∂c/∂W_n`` and backprop's, on
    the same batch and weights.

    ``loss_of()`` runs the model on the batch and returns the loss; it is called twice, with the
    random state reset in between (dropout draws the same masks) and, the second time, under
    :func:`use_backprop`. The gradients are taken with ``torch.autograd.grad``; ``.grad`` of the
    parameters is not touched.
    """
    named = [(n, m) for n, m in feedback_layers(model) if m.feedback_rule != "backprop"]
    if not named:
        return {}
    weights = [m.weight for _, m in named]
    device = weights[0].device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        state = torch.get_rng_state()
        _frozen[0] = True
        try:
            rule = torch.autograd.grad(loss_of(), weights, allow_unused=True)
        finally:
            _frozen[0] = False
        torch.set_rng_state(state)
        with use_backprop(model):
            true = torch.autograd.grad(loss_of(), weights, allow_unused=True)
    return {
        name: angle(r, t) if r is not None and t is not None else math.nan
        for (name, _), r, t in zip(named, rule, true, strict=True)
    }
