r"""Activations: each entry is ``f`` and ``f′``, written once (see :mod:`manual_bp.ops.elementwise`).

``f′`` is computed from the saved output ``y`` where it is a function of it (``from_output``), from
the saved input ``x`` otherwise. To add an activation, write one entry here and add it to
:data:`ACTIVATIONS` at the end; it then appears in :mod:`manual_bp.functional`, the drop-in modules,
``convert``, ``MLP(activation=name)``, ``manual-bp check`` and the tests.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from manual_bp._function import ManualFunction, check_floating, check_same
from manual_bp.ops._op import BATCHES, Op, Sample, noncontiguous, tensor
from manual_bp.ops.elementwise import _HALF, Elementwise, ElementwiseFunction, activation

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_NAMES",
    "ACTIVATION_OPS",
    "Identity",
    "LEARNED_ACTIVATIONS",
    "PReLU",
    "PReLUFunction",
    "get_activation",
    "prelu",
    "resolve_activation",
]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_K_TANH = math.sqrt(2.0 / math.pi)  # GELU tanh approximation: u = k (x + c x³)
_C_TANH = 0.044715
_GELU_TANH_FLAT = 10.0  # |x| beyond which tanh(k (x + c x³)) is ±1 exactly, in every dtype
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _sigmoid(x: Tensor) -> Tensor:
    """σ(x) as ``exp(log σ(x))``: down to the subnormals, as native's softplus and logsigmoid
    backwards give it (``torch.sigmoid`` is 0 below x ≈ −88 in float32, where σ is 3e-39)."""
    return torch.exp(F.logsigmoid(x))


def _mask(condition: Tensor, like: Tensor) -> Tensor:
    """A 0/1 tensor of ``like``'s dtype: the derivative of a clamp, as a new tensor."""
    return condition.to(like.dtype)


@activation
class Sigmoid(Elementwise):
    r"""Logistic sigmoid: :math:`y = σ(x) = 1/(1 + e^{-x})`, :math:`f'(x) = y(1 - y)`."""

    name = "sigmoid"
    module = nn.Sigmoid
    native_function = torch.sigmoid
    torch_functions = (torch.sigmoid, Tensor.sigmoid, F.sigmoid, torch.sigmoid_, Tensor.sigmoid_)

    def f(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    def f_(self, x: Tensor) -> Tensor:
        return x.sigmoid_()

    def df(self, y: Tensor) -> Tensor:
        return torch.addcmul(y, y, y, value=-1)  # y − y·y = y (1 − y)


@activation
class Tanh(Elementwise):
    r"""Hyperbolic tangent: :math:`y = \tanh(x)`, :math:`f'(x) = 1 - y^2`."""

    name = "tanh"
    module = nn.Tanh
    native_function = torch.tanh
    torch_functions = (torch.tanh, Tensor.tanh, F.tanh, torch.tanh_, Tensor.tanh_)

    def f(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def f_(self, x: Tensor) -> Tensor:
        return x.tanh_()

    def df(self, y: Tensor) -> Tensor:
        return 1 - y * y


@activation
class ReLU(Elementwise):
    r"""Rectified linear unit: :math:`y = \max(x, 0)`, :math:`f'(x) = [y > 0]`."""

    name = "relu"
    module = nn.ReLU
    native_function = torch.relu
    torch_functions = (F.relu, torch.relu, Tensor.relu, torch.relu_, Tensor.relu_, F.relu_)

    def f(self, x: Tensor) -> Tensor:
        return torch.relu(x)

    def f_(self, x: Tensor) -> Tensor:
        return x.relu_()

    def df(self, y: Tensor) -> Tensor:
        # [y ≠ 0] for y = relu(x) ≥ 0, and 1 at NaN, as native gives in every dtype and kernel
        # (elu, selu, hardtanh, relu6: NaN or 0 in native's vectorised kernel, which the others
        # match, and 1 in its scalar tail). sign(y) with NaN read as 1 first; float ops: a bool
        # mask is 3-10x slower here
        return y.nan_to_num(1.0).sign_()

    def kinks(self) -> tuple[float, ...]:
        return (0.0,)


@activation
class LeakyReLU(Elementwise):
    r""":math:`y = x` if :math:`x > 0` else :math:`s x`; :math:`f'(x) = 1` or :math:`s`.

    With ``s ≥ 0`` the sign of ``y`` is the sign of ``x``, so ``y`` is saved; else ``x``.
    """

    negative_slope: float = 0.01
    name = "leaky_relu"
    module = nn.LeakyReLU
    native_function = F.leaky_relu
    torch_functions = (F.leaky_relu, F.leaky_relu_)
    settings = ({}, {"negative_slope": 0.2}, {"negative_slope": -0.3})

    @property
    def from_output(self) -> bool:  # type: ignore[override]
        return self.negative_slope >= 0

    def f(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def f_(self, x: Tensor) -> Tensor:
        return F.leaky_relu_(x, self.negative_slope) if self.from_output else self.f(x)

    def df(self, saved: Tensor) -> Tensor:
        # [x > 0] = max(sign(saved), 0) (y and x have one sign when s ≥ 0); f′ = s + (1 − s)[x > 0]
        s = self.negative_slope
        return torch.sign(saved).clamp(min=0) * (1 - s) + s

    def kinks(self) -> tuple[float, ...]:
        return (0.0,)


@activation
class ELU(Elementwise):
    r""":math:`y = x` if :math:`x > 0` else :math:`α(e^x - 1)`; :math:`f'(x) = 1` or :math:`αe^x`.

    ``f′`` is computed from ``x``, as native does: from ``y`` (``αeˣ = y + α``) it would be 0 once
    ``y`` rounds to ``−α`` (``x < −17`` in float32), where ``αeˣ`` is still ``2e-9``.
    """

    alpha: float = 1.0
    name = "elu"
    module = nn.ELU
    native_function = F.elu
    torch_functions = (F.elu, F.elu_)
    settings = ({}, {"alpha": 2.0}, {"alpha": -0.5})
    from_output = False

    def f(self, x: Tensor) -> Tensor:
        return F.elu(x, self.alpha)

    def df(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, 1.0, self.alpha * torch.exp(x))  # NaN at NaN, as native (see ReLU)

    def kinks(self) -> tuple[float, ...]:
        return (0.0,)


@activation
class Softplus(Elementwise):
    r""":math:`y = \log(1 + e^{βx}) / β`, linear where :math:`βx >` threshold;
    :math:`f'(x) = σ(βx)` (1 where linear)."""

    beta: float = 1.0
    threshold: float = 20.0
    name = "softplus"
    module = nn.Softplus
    native_function = F.softplus
    torch_functions = (F.softplus,)
    from_output = False
    settings = ({}, {"beta": 2.0, "threshold": 1.0}, {"beta": 0.5, "threshold": 0.25})
    float32_under_autocast_on = ("cuda",)

    def f(self, x: Tensor) -> Tensor:
        return F.softplus(x, self.beta, self.threshold)

    def df(self, x: Tensor) -> Tensor:
        bx = x * self.beta if self.beta != 1.0 else x
        return torch.where(bx > self.threshold, 1.0, _sigmoid(bx))

    def kinks(self) -> tuple[float, ...]:
        return (self.threshold / self.beta,)


def gelu_derivative(x: Tensor, approximate: str = "none") -> Tensor:
    """f′(x) of GELU, exact (Φ(x) + x φ(x)) or tanh-approximated, with differentiable ops."""
    if approximate == "tanh":
        t = torch.tanh(_K_TANH * (x + _C_TANH * x * x * x))
        # 1 − t² is exactly 0 for |x| ≥ 10 in every dtype (tanh(43) rounds to 1 even in float64),
        # so x clamped there changes nothing but keeps x·(1 − t²)·(1 + 3cx²) from inf · 0 = NaN
        # (x² overflows for |x| > 256 in float16, 1.8e19 in float32; f′ is then 1 or 0)
        xc = x.clamp(-_GELU_TANH_FLAT, _GELU_TANH_FLAT)
        return 0.5 * (1 + t) + 0.5 * xc * (1 - t * t) * _K_TANH * (1 + 3 * _C_TANH * xc * xc)
    cdf = 0.5 * (1 + torch.erf(x * _INV_SQRT_2))  # Φ(x)
    pdf = torch.exp(-0.5 * x * x) * _INV_SQRT_2PI  # φ(x)
    return cdf + x * pdf


@activation
class GELU(Elementwise):
    r""":math:`y = x Φ(x)`, :math:`f'(x) = Φ(x) + x φ(x)` (``approximate='none'``), or its tanh
    approximation (below).

    .. math::
        f'(x) = Φ(x) + x φ(x) \quad \text{(exact)}, \qquad
        f'(x) = \tfrac12 (1 + t) + \tfrac12 x (1 - t^2)\, k (1 + 3 c x^2),\;
        t = \tanh(k (x + c x^3)) \quad \text{(tanh)}
    """

    approximate: str = "none"
    name = "gelu"
    module = nn.GELU
    native_function = F.gelu
    torch_functions = (F.gelu,)
    from_output = False
    settings = ({}, {"approximate": "tanh"})
    aliases: ClassVar[dict[str, dict[str, Any]]] = {"gelu_tanh": {"approximate": "tanh"}}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.approximate not in ("none", "tanh"):
            raise ValueError(f"approximate must be 'none' or 'tanh', got {self.approximate!r}")
        if self.approximate == "tanh":  # the instance's name, as MLP(activation="gelu_tanh") takes it
            object.__setattr__(self, "name", "gelu_tanh")

    def f(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate=self.approximate)

    def df(self, x: Tensor) -> Tensor:
        return gelu_derivative(x, self.approximate)

    def backward(self, g: Tensor, saved: Tensor, graph: bool, owned: bool = False) -> Tensor:
        if graph or self.approximate != "none" or saved.dtype in _HALF:
            return super().backward(g, saved, graph)
        # Hand-tuned (no graph, exact): df's f′ = Φ(x) + x φ(x) in six passes instead of eleven,
        # over an owned g in place. Worth it: engine step / native at 64x128x8 gelu 0.58 with it,
        # 0.68 with the generic form (32x64x2: 0.40 vs 0.46; fused 256x256x4: 1.14 vs 1.22), in
        # alternating runs of bench.py's step paths against a copy without this override.
        # With a = x/√2, Φ(x) = 1 − ½ erfc(a) and x φ(x) = x / (√(2π) exp(a²)), so
        # g ⊙ f′ = g − ½ g ⊙ (erfc(a) − 2 x / (√(2π) exp(a²))).
        a = torch.mul(saved, _INV_SQRT_2)
        t = torch.erfc(a)
        t.addcdiv_(saved, a.mul_(a).exp_(), value=-2.0 * _INV_SQRT_2PI)  # exp(a²) = inf far out: x/inf = 0
        return g.addcmul_(g, t, value=-0.5) if owned else torch.addcmul(g, g, t, value=-0.5)

    def __str__(self) -> str:
        return self.name


@activation
class SiLU(Elementwise):
    r"""SiLU (swish): :math:`y = x σ(x)`, :math:`f'(x) = σ(x) (1 + x (1 - σ(x)))`."""

    name = "silu"
    module = nn.SiLU
    native_function = F.silu
    torch_functions = (F.silu,)
    from_output = False

    def f(self, x: Tensor) -> Tensor:
        return F.silu(x)

    def df(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(x)
        return s * (1 + x * (1 - s))


@activation
class SELU(Elementwise):
    r""":math:`y = λx` if :math:`x > 0` else :math:`λα(e^x - 1)`; :math:`f'(x) = λ` or :math:`λαe^x`.

    ``λ ≈ 1.0507`` and ``α ≈ 1.6733`` are the constants of Klambauer et al. (2017), as in torch.
    ``f′`` is computed from ``x``, as native does (from ``y``, ``y + λα`` is 0 for ``x < −17``).
    """

    name = "selu"
    module = nn.SELU
    native_function = F.selu
    torch_functions = (F.selu, torch.selu, torch.selu_, F.selu_)
    from_output = False

    def f(self, x: Tensor) -> Tensor:
        return torch.selu(x)

    def df(self, x: Tensor) -> Tensor:
        return torch.where(x > 0, _SELU_SCALE, (_SELU_SCALE * _SELU_ALPHA) * torch.exp(x))

    def kinks(self) -> tuple[float, ...]:
        return (0.0,)


@activation
class Mish(Elementwise):
    r""":math:`y = x \tanh(\mathrm{softplus}(x))`; with :math:`t = \tanh(\mathrm{softplus}(x))`,
    :math:`f'(x) = t + x (1 - t^2) σ(x)`."""

    name = "mish"
    module = nn.Mish
    native_function = F.mish
    torch_functions = (F.mish,)
    from_output = False

    def f(self, x: Tensor) -> Tensor:
        return F.mish(x)

    def df(self, x: Tensor) -> Tensor:
        t = torch.tanh(F.softplus(x))
        return t + x * (1 - t * t) * torch.sigmoid(x)


@activation
class Hardswish(Elementwise):
    r""":math:`y = x \,\mathrm{relu6}(x + 3)/6`; :math:`f'(x) = 0` for :math:`x < -3`,
    :math:`x/3 + 1/2` for :math:`-3 ≤ x ≤ 3`, :math:`1` above."""

    name = "hardswish"
    module = nn.Hardswish
    native_function = F.hardswish
    torch_functions = (F.hardswish,)
    from_output = False
    scale = 2.0

    def f(self, x: Tensor) -> Tensor:
        return F.hardswish(x)

    def df(self, x: Tensor) -> Tensor:
        return torch.where(x > 3, 1.0, torch.where(x < -3, 0.0, x / 3 + 0.5))  # NaN at NaN, as native

    def kinks(self) -> tuple[float, ...]:
        return (-3.0, 3.0)


def _hardsigmoid_reference(x: Tensor) -> Tensor:
    """``relu6(x + 3) / 6`` with native ops: torch's own ``hardsigmoid`` backward multiplies by a
    float32 ``1/6`` even in float64 (``0.1666666716…``, 3e-8 off), too coarse to check against."""
    return F.relu6(x + 3) / 6


class _HardsigmoidReference(nn.Module):
    """:func:`_hardsigmoid_reference` as a module: the native twin of a Hardsigmoid layer."""

    def forward(self, input: Tensor) -> Tensor:
        return _hardsigmoid_reference(input)


@activation
class Hardsigmoid(Elementwise):
    r""":math:`y = \mathrm{relu6}(x + 3)/6`; :math:`f'(x) = 1/6` where :math:`0 < y < 1`, else 0."""

    name = "hardsigmoid"
    module = nn.Hardsigmoid
    native_function = _hardsigmoid_reference
    torch_functions = (F.hardsigmoid,)
    scale = 2.0

    def f(self, x: Tensor) -> Tensor:
        return F.hardsigmoid(x)

    def native_module(self) -> nn.Module:
        return _HardsigmoidReference()  # nn.Hardsigmoid's backward is 3e-8 off in float64

    def f_(self, x: Tensor) -> Tensor:
        return F.hardsigmoid(x, inplace=True)

    def df(self, y: Tensor) -> Tensor:
        return _mask((y > 0) & (y < 1), y) / 6

    def kinks(self) -> tuple[float, ...]:
        return (-3.0, 3.0)


@activation
class Hardtanh(Elementwise):
    r""":math:`y = \min(\max(x, a), b)`; :math:`f'(x) = 1` where :math:`a < y < b`, else 0."""

    min_val: float = -1.0
    max_val: float = 1.0
    name = "hardtanh"
    module = nn.Hardtanh
    native_function = F.hardtanh
    torch_functions = (F.hardtanh, F.hardtanh_)
    settings = ({}, {"min_val": -0.7, "max_val": 0.9})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.max_val > self.min_val:
            raise ValueError(
                f"hardtanh needs max_val > min_val, got min_val={self.min_val}, max_val={self.max_val}"
            )

    def f(self, x: Tensor) -> Tensor:
        return F.hardtanh(x, self.min_val, self.max_val)

    def f_(self, x: Tensor) -> Tensor:
        return F.hardtanh_(x, self.min_val, self.max_val)

    def df(self, y: Tensor) -> Tensor:
        return _mask((y > self.min_val) & (y < self.max_val), y)

    def kinks(self) -> tuple[float, ...]:
        return (self.min_val, self.max_val)


@activation
class ReLU6(Elementwise):
    r""":math:`y = \min(\max(x, 0), 6)`; :math:`f'(x) = 1` where :math:`0 < y < 6`, else 0."""

    name = "relu6"
    module = nn.ReLU6
    native_function = F.relu6
    torch_functions = (F.relu6,)
    scale = 4.0

    def f(self, x: Tensor) -> Tensor:
        return F.relu6(x)

    def f_(self, x: Tensor) -> Tensor:
        return F.hardtanh_(x, 0.0, 6.0)

    def df(self, y: Tensor) -> Tensor:
        return _mask((y > 0) & (y < 6), y)

    def kinks(self) -> tuple[float, ...]:
        return (0.0, 6.0)


@activation
class LogSigmoid(Elementwise):
    r""":math:`y = \log σ(x)`; :math:`f'(x) = 1 - σ(x) = σ(-x)`."""

    name = "logsigmoid"
    module = nn.LogSigmoid
    native_function = F.logsigmoid
    torch_functions = (F.logsigmoid,)
    from_output = False

    def f(self, x: Tensor) -> Tensor:
        return F.logsigmoid(x)

    def df(self, x: Tensor) -> Tensor:
        return _sigmoid(-x)


@activation
class Softsign(Elementwise):
    r""":math:`y = x / (1 + |x|)`; :math:`f'(x) = 1 / (1 + |x|)^2`."""

    name = "softsign"
    module = nn.Softsign
    native_function = F.softsign
    torch_functions = (F.softsign,)
    from_output = False

    def f(self, x: Tensor) -> Tensor:
        return F.softsign(x)

    def df(self, x: Tensor) -> Tensor:
        return (1 + x.abs()).pow(-2)

    def kinks(self) -> tuple[float, ...]:
        return (0.0,)  # f″ jumps there: keep double backward's finite differences off it


@dataclass(frozen=True)
class Identity(Elementwise):
    """``f(x) = x``, ``f′ = 1``: nothing to compute (a linear layer). No Function: the module
    returns its input, as ``torch.nn.Identity`` does."""

    name = "identity"
    module = nn.Identity

    def f(self, x: Tensor) -> Tensor:
        return x

    f_ = f

    def backward(self, g: Tensor, saved: Tensor, graph: bool, owned: bool = False) -> Tensor:
        return g

    def manual(self, x: Tensor) -> Tensor:
        return x

    def native(self, x: Tensor) -> Tensor:
        return x


Identity.Module = type(
    "Identity",
    (nn.Identity,),
    {"__module__": "manual_bp.modules", "__doc__": "``torch.nn.Identity``: returns its input (f′ = 1)."},
)


# --------------------------------------------------------------------------------------------
# PReLU: an activation with a learned slope, so a Function of its own (BP3 for the slope)
# --------------------------------------------------------------------------------------------


def _per_channel(weight: Tensor, input: Tensor) -> Tensor:
    """The slope broadcast against ``input``: one for all, or one per channel (dim 1)."""
    if weight.numel() == 1:
        return weight.reshape(())
    return weight.reshape(-1, *([1] * (input.dim() - 2)))  # (C, 1, …, 1): broadcasts at dim 1


class PReLUFunction(ManualFunction):
    r"""``y = x`` if ``x > 0`` else ``a x``, with a learned slope ``a`` (one, or one per channel).

    .. math::
        \frac{\partial c}{\partial x} = g ⊙ (1 \text{ or } a), \qquad
        \frac{\partial c}{\partial a} = \textstyle\sum g ⊙ \min(x, 0)
        \;\text{(over every dim but the channel's)}
    """

    @staticmethod
    def forward(input: Tensor, weight: Tensor) -> Tensor:
        return F.prelu(input, weight)  # FF

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        a = _per_channel(weight, x)
        grad_input = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.where(x > 0, grad_output, grad_output * a)  # BP2: δ = g ⊙ (1 or a)
        if ctx.needs_input_grad[1]:
            per_element = grad_output * x.clamp(max=0)  # BP3 for the slope: g ⊙ min(x, 0)
            if weight.numel() == 1:
                grad_weight = per_element.sum().reshape(weight.shape)
            else:  # sum over every dim but the channel's (dim 1)
                grad_weight = per_element.sum([d for d in range(x.dim()) if d != 1]).reshape(weight.shape)
        return grad_input, grad_weight


def prelu(input: Tensor, weight: Tensor) -> Tensor:
    """PReLU with the explicit backward of :class:`PReLUFunction`.

    Shape: ``input (*)`` with channels at dim 1 (an input of fewer than 2 dims has one channel),
    ``weight (1,)`` or ``(channels,)`` -> ``(*)``.
    """
    check_floating("input", input)
    check_floating("weight", weight)
    if weight.dim() > 1:
        raise ValueError(f"prelu expected a 1-D weight (num_parameters,), got shape {tuple(weight.shape)}")
    if weight.numel() != 1 and (input.dim() < 2 or input.shape[1] != weight.numel()):
        raise ValueError(
            f"prelu with {weight.numel()} parameters expected input with {weight.numel()} channels at "
            f"dim 1, got input of shape {tuple(input.shape)}"
        )
    check_same("weight", weight, "input", input)
    return PReLUFunction.apply(input, weight)


class PReLU(nn.PReLU):
    """``torch.nn.PReLU(num_parameters=1, init=0.25)`` with the explicit backward of :func:`prelu`."""

    __module__ = "manual_bp.modules"  # its public home (the drop-in layers)

    def forward(self, input: Tensor) -> Tensor:
        return prelu(input, self.weight)


def _prelu_samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
    out = []
    for channels in (1, 3):
        tag = "one slope" if channels == 1 else "per channel"
        for b in BATCHES if channels == 1 else BATCHES[1:]:  # channels (3) at dim 1; no batch dim: one
            weight = tensor((channels,), dtype, device)
            x = tensor((*b[:1], 3, *b[1:]), dtype, device, (0.0,))
            out.append(Sample((x, weight), label=f"{tag}, batch {list(b)}"))
        weight = tensor((channels,), dtype, device)
        out.append(
            Sample((noncontiguous((4, 3), dtype, device, (0.0,)), weight), label=f"{tag}, non-contiguous")
        )
        out.append(Sample((tensor((2, 3, 4), dtype, device, (0.0,)), weight), label=f"{tag}, (N, C, L)"))
    return out


PRELU_OP = Op(
    "prelu",
    prelu,
    F.prelu,
    _prelu_samples,
    PReLUFunction,
    modules=((nn.PReLU, PReLU),),
    torch_functions=(F.prelu, torch.prelu),
    formula=(
        r"BP2: $\delta_x = \delta_y \odot (1$ if $x > 0$ else $a)$; "
        r"BP3: $\partial c/\partial a = \sum \delta_y \odot \min(x, 0)$ "
        "(per channel for one slope per channel)"
    ),
)

#: Every parameter-free activation, by class: ``MLP(activation=...)`` takes their names.
ACTIVATIONS: tuple[type[Elementwise], ...] = (
    Sigmoid,
    Tanh,
    ReLU,
    LeakyReLU,
    ELU,
    Softplus,
    GELU,
    SiLU,
    SELU,
    Mish,
    Hardswish,
    Hardsigmoid,
    Hardtanh,
    ReLU6,
    LogSigmoid,
    Softsign,
    Identity,
)


def _names() -> dict[str, Any]:
    names: dict[str, Any] = {}
    for cls in ACTIVATIONS:
        names[cls.name] = cls
        for alias, params in getattr(cls, "aliases", {}).items():
            names[alias] = functools.partial(cls, **params)
    return names


#: name -> factory of the activation with its default parameters (``MLP(activation=name)``)
ACTIVATION_NAMES: dict[str, Callable[[], Elementwise]] = _names()


def get_activation(spec: Any) -> Elementwise:
    """Resolve an activation given by name, as an :class:`Elementwise`, or as an activation module
    (``torch.nn`` or manual_bp: ``nn.LeakyReLU(0.2)``, ``nn.GELU(approximate="tanh")``, which carry
    their parameters).

    Raises ``ValueError`` for an unknown name or module (listing the known ones) and ``TypeError``
    for anything else.
    """
    if isinstance(spec, Elementwise):
        return spec
    known = ", ".join(ACTIVATION_NAMES)
    if isinstance(spec, str):
        factory = ACTIVATION_NAMES.get(spec)
        if factory is None:
            if spec in LEARNED_ACTIVATIONS:
                raise ValueError(
                    f"{spec!r} is a learned activation (it has a parameter): MLP(activation={spec!r}) "
                    f"takes it; this function gives the parameter-free ones: {known}"
                )
            learned = "".join(f", {name}" for name in LEARNED_ACTIVATIONS)
            raise ValueError(f"unknown activation {spec!r}; known activations: {known}{learned}")
        return factory()
    if isinstance(spec, nn.Module):
        for base in type(spec).__mro__:  # the most specific class first (ReLU6 before Hardtanh)
            for cls in ACTIVATIONS:
                if base is cls.module:
                    return cls(**{f.name: getattr(spec, f.name) for f in fields(cls)})
        raise ValueError(
            f"unsupported activation module {type(spec).__name__}; use one of the modules "
            f"{', '.join(cls.module.__name__ for cls in ACTIVATIONS)} or a name: {known}"
        )
    raise TypeError(f"activation must be a name ({known}) or an activation module, got {type(spec).__name__}")


#: name -> module class of each activation with a learned parameter (``MLP(activation="prelu")``):
#: the activation ops whose Function is not an elementwise one
LEARNED_ACTIVATIONS: dict[str, type[nn.Module]] = {}


def resolve_activation(spec: Any) -> Elementwise | type[nn.Module]:
    """:func:`get_activation`, or for a learned activation (a name of :data:`LEARNED_ACTIVATIONS`,
    or such a module) its drop-in module class, of which the caller makes one per layer."""
    if isinstance(spec, str) and spec in LEARNED_ACTIVATIONS:
        return LEARNED_ACTIVATIONS[spec]
    if isinstance(spec, nn.Module):
        for cls in LEARNED_ACTIVATIONS.values():
            if isinstance(spec, cls.__mro__[1]):  # the torch.nn class it twins
                return cls
    return get_activation(spec)


#: The registry entries of this family.
ACTIVATION_OPS: tuple[Op, ...] = (*(a.op for a in ACTIVATIONS if a is not Identity), PRELU_OP)

LEARNED_ACTIVATIONS.update(
    {
        op.name: manual
        for op in ACTIVATION_OPS
        if not issubclass(op.function_class, ElementwiseFunction)  # type: ignore[arg-type]
        for _, manual in op.modules
    }
)
