r"""The activation registry shared by the fused network Function and the autograd-free engine.

Each :class:`Activation` knows its forward ``y = f(x)`` (out of place, and in place on a temporary
the caller owns) and the factor of BP1/BP2, ``δ = g ⊙ f′(x)``, computed from what the network
saves: the output ``y`` where ``f′`` is a function of ``y`` (``from_output``), the pre-activation
``x`` otherwise. The per-layer Functions of :mod:`manual_bp.functional`, the fused network and the
engine all take ``⊙ f′`` from here; the out-of-place forms use differentiable ops only, so a
backward written with them supports double backward.

Names: ``sigmoid``, ``tanh``, ``relu``, ``leaky_relu``, ``elu``, ``softplus``, ``gelu``,
``gelu_tanh``, ``silu``, ``identity``. :func:`get_activation` also accepts an instance of an
activation module (``manual_bp.LeakyReLU(0.2)``, ``torch.nn.GELU(approximate="tanh")``, ...), which
carries its parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "FRESH", "GRAPH", "OWNED", "Activation", "get_activation"]

GRAPH, FRESH, OWNED = 0, 1, 2  # modes of Activation.backward (see there)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_K_TANH = math.sqrt(2.0 / math.pi)  # GELU tanh approximation: u = k (x + c x³)
_C_TANH = 0.044715


def gelu_derivative(x: Tensor, approximate: str = "none") -> Tensor:
    """f′(x) of GELU, exact (Φ(x) + x φ(x)) or tanh-approximated, with differentiable ops."""
    if approximate == "tanh":
        t = torch.tanh(_K_TANH * (x + _C_TANH * x * x * x))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _K_TANH * (1 + 3 * _C_TANH * x * x)
    cdf = 0.5 * (1 + torch.erf(x * _INV_SQRT_2))  # Φ(x)
    pdf = torch.exp(-0.5 * x * x) * _INV_SQRT_2PI  # φ(x)
    return cdf + x * pdf


@dataclass(frozen=True)
class Activation:
    """One activation ``f`` of the network: its forward and its ``⊙ f′`` step.

    Subclasses set ``name`` and ``from_output`` and write ``forward`` and ``backward``; ``forward_``
    and ``native``/``manual`` have defaults. Instances are immutable and hashable, so they travel
    as non-tensor arguments of an autograd Function.
    """

    name = "activation"
    from_output = True  # f′ is computed from y = f(x) (True) or from x (False)

    def forward(self, x: Tensor) -> Tensor:
        """``y = f(x)``, out of place and differentiable."""
        raise NotImplementedError

    def forward_(self, x: Tensor) -> Tensor:
        """``y = f(x)`` written over ``x`` (a temporary the caller owns); returns it."""
        return self.forward(x)

    def backward(self, g: Tensor, saved: Tensor, mode: int) -> Tensor:
        """BP1/BP2's activation factor: ``δ = g ⊙ f′(x)``; ``saved`` is ``y`` or ``x``.

        ``mode`` is :data:`GRAPH` (a graph is being recorded: differentiable, out-of-place ops
        only), :data:`FRESH` (no graph; ``g`` and ``saved`` must stay intact, temporaries may be
        overwritten) or :data:`OWNED` (no graph; the result may be written over ``g``).
        """
        raise NotImplementedError

    def functional(self, x: Tensor) -> Tensor:
        """The per-layer Function of :mod:`manual_bp.functional` for this activation."""
        raise NotImplementedError

    def manual(self) -> nn.Module:
        """A :mod:`manual_bp` module computing this activation."""
        raise NotImplementedError

    def native(self) -> nn.Module:
        """The ``torch.nn`` module computing this activation (for comparisons)."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Sigmoid(Activation):
    r""":math:`σ(x)`, :math:`f' = y (1 - y)`."""

    name = "sigmoid"

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    def forward_(self, x: Tensor) -> Tensor:
        return x.sigmoid_()

    def backward(self, g: Tensor, saved: Tensor, mode: int) -> Tensor:
        if mode == GRAPH:
            return g * saved * (1 - saved)
        d = g.mul_(saved) if mode == OWNED else g * saved
        return d.addcmul_(d, saved, value=-1)  # g y − (g y) y = g y (1 − y)

    def functional(self, x: Tensor) -> Tensor:
        from manual_bp import functional as MF

        return MF.sigmoid(x)

    def manual(self) -> nn.Module:
        from manual_bp import modules as MM

        return MM.Sigmoid()

    def native(self) -> nn.Module:
        return nn.Sigmoid()


@dataclass(frozen=True)
class Tanh(Activation):
    r""":math:`\tanh(x)`, :math:`f' = 1 - y^2`."""

    name = "tanh"

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def forward_(self, x: Tensor) -> Tensor:
        return x.tanh_()

    def backward(self, g: Tensor, saved: Tensor, mode: int) -> Tensor:
        if mode == GRAPH:
            return g * (1 - saved * saved)
        if mode == OWNED:
            return g.addcmul_(g * saved, saved, value=-1)  # g − (g y) y = g (1 − y²)
        return torch.addcmul(g, g * saved, saved, value=-1)

    def functional(self, x: Tensor) -> Tensor:
        from manual_bp import functional as MF

        return MF.tanh(x)

    def manual(self) -> nn.Module:
        from manual_bp import modules as MM

        return MM.Tanh()

    def native(self) -> nn.Module:
        return nn.Tanh()


@dataclass(frozen=True)
class ReLU(Activation):
    r""":math:`\max(x, 0)`, :math:`f' = [y > 0]`."""

    name = "relu"

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x)

    def forward_(self, x: Tensor) -> Tensor:
        return x.relu_()

    def backward(self, g: Tensor, saved: Tensor, mode: int) -> Tensor:
        # [y > 0] = sign(y) for y = relu(x) ≥ 0; float ops only (a bool mask is 3-10x slower here)
        if mode == GRAPH:
            return g * torch.sign(saved)
        if mode == OWNED:
            return g.mul_(torch.sign(saved))
        return torch.sign(saved).mul_(g)

    def functional(self, x: Tensor) -> Tensor:
        from manual_bp import functional as MF

        return MF.relu(x)

    def manual(self) -> nn.Module:
        from manual_bp import modules as MM

        return MM.ReLU()

    def native(self) -> nn.Module:
        return nn.ReLU()


@dataclass(frozen=True)
class LeakyReLU(Activation):
    r""":math:`x` if :math:`x > 0` else :math:`s x`; :math:`f' = 1` or :math:`s`.

    With ``s ≥ 0`` the sign of ``y`` is the sign of ``x``, so ``y`` is saved; else ``x``.
    """

    negative_slope: float = 0.01
    name = "leaky_relu"

    @property
    def from_output(self) -> bool:  # type: ignore[override]
        return self.negative_slope >= 0

    def forward(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def forward_(self, x: Tensor) -> Tensor:
        return F.leaky_relu_(x, self.negative_slope) if self.from_output else self.forward(x)

    def backward(self, g: Tensor, saved: Tensor, mode: int) -> Tensor:
        # f′ = 1 where x > 0, else the slope s ([y > 0] = [x > 0] when s ≥ 0): with the float
        # step m = max(sign(saved), 0), f′ = s + (1 − s) m (float ops only, as in ReLU)
        s = self.negative_slope
        if mode == GRAPH:
            return g * (torch.sign(saved).clamp(min=0) * (1 - s) + s)
        return torch.sign(saved).clamp_(min=0).mul_(1 - s).add_(s).mul_(g)

    def functional(self, x: Tensor) -> Tensor:
        from manual_bp import functional as MF

        return MF.leaky_relu(x, self.negative_slope)

    def manual(self) -> nn.Module:
        from manual_bp import modules as MM

        return MM.LeakyReLU(self.negative_slope)

    def native(self) -> nn.Module:
        return nn.LeakyReLU(self.negative_slope)

    def __str__(self) -> str:
        return f"leaky_relu(negative_slope={self.negative_slope})"


@dataclass(frozen=True)
class ELU(Activation):
    r""":math:`x` if :math:`x > 0` else :math:`α(e^x - 1)`; :math:`f' = 1` or :math:`y + α`.

    With ``α ≥ 0`` the derivative is a function of ``y`` (saved); else of ``x`` (saved).
    """

    alpha: float = 1.0
    name = "elu"

    @property
    def from_output(self) -> bool:  # type: ignore[override]
        return self.alpha >= 0

    def forward(self, x: Tensor) -> Tensor:
        return F.elu(x, self.alpha)

    def forward_(self, x: Tensor) -> Tensor:
        return F.elu_(x, self.alpha) if self.from_output else self.forward(x)

    def backward(self, g: Tensor, saved: Tensor, mode: int) -> Tensor:
        if self.from_output:  # saved = y: y > 0 ⇔ x > 0, and α eˣ = y + α
            df = torch.where(saved > 0, 1.0, saved + self.alpha)
        else:  # saved = x
            df = torch.where(saved > 0, 1.0, self.alpha * torch.exp(saved))
        return g * df if mode == GRAPH else df.mul_(g)

    def functional(self, x: Tensor) -> Tensor:
        from manual_bp import functional as MF

        return MF.elu(x, self.alpha)

    def manual(self) -> nn.Module:
        from manual_bp import modules as MM

        return MM.ELU(self.alpha)

    def native(self) -> nn.Module:
        return nn.ELU(self.alpha)

    def __str__(self) -> str:
        return f"elu(alpha={self.alpha})"


@dataclass(frozen=True)
class Softplus(Activation):
    r""":math:`\log(1 + e^{βx}) / β` (linear where :math:`βx >` threshold); :math:`f' = σ(βx)`."""

    beta: float = 1.0
    threshold: float = 20.0
    name = "softplus"
    from_output = False

    def forward(self, x: Tensor) -> Tensor:
        return F.softplus(x, self.beta, self.threshold)

    def backward(self, g: Tensor, saved: Tensor, mode: int) -> Tensor:
        bx = saved * self.beta if self.beta != 1.0 else saved
        if mode == GRAPH:
            return g * torch.where(bx > self.threshold, 1.0, torch.sigmoid(bx))  # f′ = σ(βx)
        df = torch.sigmoid(bx).masked_fill_(bx > self.threshold, 1.0)  # 1 where linear
        return df.mul_(g)

    def functional(self, x: Tensor) -> Tensor:
        from manual_bp import functional as MF

        return MF.softplus(x, self.beta, self.threshold)

    def manual(self) -> nn.Module:
        from manual_bp import modules as MM

        return MM.Softplus(self.beta, self.threshold)

    def native(self) -> nn.Module:
        return nn.Softplus(self.beta, self.threshold)

    def __str__(self) -> str:
        return f"softplus(beta={self.beta}, threshold={self.threshold})"


@dataclass(frozen=True)
class GELU(Activation):
    r""":math:`x Φ(x)` or its tanh approximation; ``f′`` from :func:`gelu_derivative`."""

    approximate: str = "none"
    from_output = False

    @property
    def name(self) -> str:  # type: ignore[override]
        return "gelu" if self.approximate == "none" else "gelu_tanh"

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(x, approximate=self.approximate)

    def backward(self, g: Tensor, saved: Tensor, mode: int) -> Tensor:
        if mode == GRAPH or self.approximate != "none":
            df = gelu_derivative(saved, self.approximate)
            return g * df if mode == GRAPH else df.mul_(g)
        # The same f′ = Φ(x) + x φ(x) as gelu_derivative, in six passes over temporaries: with
        # a = x/√2, Φ(x) = 1 − ½ erfc(a) and x φ(x) = x / (√(2π) exp(a²)), so
        # g ⊙ f′ = g − ½ g ⊙ (erfc(a) − 2 x / (√(2π) exp(a²))).
        a = torch.mul(saved, _INV_SQRT_2)
        t = torch.erfc(a)
        t.addcdiv_(saved, a.mul_(a).exp_(), value=-2.0 * _INV_SQRT_2PI)  # exp(a²) = inf far out: x/inf = 0
        return g.addcmul_(g, t, value=-0.5) if mode == OWNED else torch.addcmul(g, g, t, value=-0.5)

    def functional(self, x: Tensor) -> Tensor:
        from manual_bp import functional as MF

        return MF.gelu(x, self.approximate)

    def manual(self) -> nn.Module:
        from manual_bp import modules as MM

        return MM.GELU(self.approximate)

    def native(self) -> nn.Module:
        return nn.GELU(self.approximate)


@dataclass(frozen=True)
class SiLU(Activation):
    r""":math:`x σ(x)`, :math:`f' = σ(x) (1 + x (1 - σ(x)))`."""

    name = "silu"
    from_output = False

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x)

    def backward(self, g: Tensor, saved: Tensor, mode: int) -> Tensor:
        s = torch.sigmoid(saved)
        if mode == GRAPH:
            return g * (s * (1 + saved * (1 - s)))
        df = torch.addcmul(saved, saved, s, value=-1).add_(1).mul_(s)  # σ (1 + x − x σ)
        return df.mul_(g)

    def functional(self, x: Tensor) -> Tensor:
        from manual_bp import functional as MF

        return MF.silu(x)

    def manual(self) -> nn.Module:
        from manual_bp import modules as MM

        return MM.SiLU()

    def native(self) -> nn.Module:
        return nn.SiLU()


@dataclass(frozen=True)
class Identity(Activation):
    """``f(x) = x``, ``f′ = 1``: nothing to compute (a linear layer)."""

    name = "identity"

    def forward(self, x: Tensor) -> Tensor:
        return x

    def forward_(self, x: Tensor) -> Tensor:
        return x

    def backward(self, g: Tensor, saved: Tensor, mode: int) -> Tensor:
        return g

    def functional(self, x: Tensor) -> Tensor:
        return x

    def manual(self) -> nn.Module:
        from manual_bp import modules as MM

        return MM.Identity()

    def native(self) -> nn.Module:
        return nn.Identity()


#: name -> factory of the activation with its default parameters
ACTIVATIONS: dict[str, Callable[[], Activation]] = {
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "elu": ELU,
    "softplus": Softplus,
    "gelu": GELU,
    "gelu_tanh": lambda: GELU("tanh"),
    "silu": SiLU,
    "identity": Identity,
}


def _from_module(module: nn.Module) -> Activation | None:
    """The registry entry of a ``torch.nn`` (or manual_bp) activation module, with its parameters."""
    if isinstance(module, nn.Sigmoid):
        return Sigmoid()
    if isinstance(module, nn.Tanh):
        return Tanh()
    if isinstance(module, nn.ReLU):
        return ReLU()
    if isinstance(module, nn.LeakyReLU):
        return LeakyReLU(float(module.negative_slope))
    if isinstance(module, nn.ELU):
        return ELU(float(module.alpha))
    if isinstance(module, nn.Softplus):
        return Softplus(float(module.beta), float(module.threshold))
    if isinstance(module, nn.GELU):
        return GELU(module.approximate)
    if isinstance(module, nn.SiLU):
        return SiLU()
    if isinstance(module, nn.Identity):
        return Identity()
    return None


def get_activation(spec: Any) -> Activation:
    """Resolve an activation given by name, as an :class:`Activation`, or as an activation module.

    Raises ``ValueError`` for an unknown name (listing the known ones) and ``TypeError`` for
    anything else.
    """
    if isinstance(spec, Activation):
        return spec
    if isinstance(spec, str):
        factory = ACTIVATIONS.get(spec)
        if factory is None:
            raise ValueError(f"unknown activation {spec!r}; known activations: {', '.join(ACTIVATIONS)}")
        return factory()
    if isinstance(spec, nn.Module):
        act = _from_module(spec)
        if act is None:
            raise ValueError(
                f"unsupported activation module {type(spec).__name__}; use one of the modules "
                f"Sigmoid, Tanh, ReLU, LeakyReLU, ELU, Softplus, GELU, SiLU, Identity or a name: "
                f"{', '.join(ACTIVATIONS)}"
            )
        return act
    raise TypeError(
        f"activation must be a name ({', '.join(ACTIVATIONS)}) or an activation module, "
        f"got {type(spec).__name__}"
    )
