r"""The base class of elementwise activations: an entry writes only ``f`` and ``f′``.

An activation ``y = f(x)`` enters the seed's derivation only through ``f′``: BP1 and BP2 multiply
the incoming error by it, ``δ = g ⊙ f′(x)``. An entry (a subclass of :class:`Elementwise`,
decorated with :func:`activation`) writes

* ``f(x)``, with differentiable torch ops (and ``f_(x)``, the same written over ``x``, where torch
  has the in-place op),
* ``df(saved)``: ``f′`` as a new tensor, with differentiable torch ops, computed from the saved
  output ``y`` where ``f′`` is a function of it (``from_output = True``: σ′ = y(1 − y)), from
  the saved input ``x`` otherwise,
* which ``torch.nn`` module and torch functions it stands for, and its native reference.

From those, :meth:`Elementwise.backward` gives ``g ⊙ f′`` in both forms a backward needs: with a
graph being recorded (double backward: out-of-place ops) and without (``f′``'s new tensor is
multiplied by ``g`` in place). :func:`activation` then makes the op's ``torch.autograd.Function``
(``<Name>Function``), its function in :mod:`manual_bp.functional`, its drop-in module (a subclass of
the ``torch.nn`` class that overrides only ``forward``) and its registry :class:`~manual_bp.ops.Op`.
The per-layer Function, the fused network and the engine all call the same ``backward``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from manual_bp._function import _FLOATING, ManualFunction, autocast_dtype, check_floating, in_place_ok
from manual_bp.ops._op import Op, Sample, unary_samples

__all__ = ["Elementwise", "activation", "to_float32"]

_HALF = (torch.float16, torch.bfloat16)  # dtypes whose f′ is computed in float32 (see backward)


@dataclass(frozen=True)
class Elementwise:
    """One activation ``f`` with its derivative. Instances are immutable and hashable: they travel
    as non-tensor arguments of autograd Functions and key the fused network's cache.

    Class attributes an entry sets: ``name`` (its name in :mod:`manual_bp.functional` and in
    ``MLP(activation=...)``), ``module`` (the ``torch.nn`` class it twins), ``native_function``
    (the torch function it is compared with, called with the entry's fields as keywords),
    ``torch_functions`` (every torch callable it stands for), ``from_output``, ``settings`` (the
    parameter settings the checks and tests run) and, where useful, ``scale`` (samples lie in
    ``[-2·scale, 2·scale]``). Parameters are dataclass fields named as the ``torch.nn`` module's
    attributes (``negative_slope``, ``alpha``, ...).
    """

    name: ClassVar[str] = "activation"
    module: ClassVar[type[nn.Module]]
    native_function: ClassVar[Callable[..., Tensor]]
    torch_functions: ClassVar[tuple[Callable[..., Any], ...]] = ()
    from_output: ClassVar[bool] = True  # f′ from y = f(x) (True) or from x (False)
    settings: ClassVar[tuple[dict[str, Any], ...]] = ({},)
    scale: ClassVar[float] = 1.0
    float32_under_autocast_on: ClassVar[tuple[str, ...]] = ()  # device types where native runs in float32
    _float_fields: ClassVar[tuple[str, ...]] = ()  # (set by @activation)

    # made by @activation
    Function: ClassVar[type[ManualFunction]]
    functional: ClassVar[Callable[..., Tensor]]
    Module: ClassVar[type[nn.Module]]
    op: ClassVar[Op]
    _apply: ClassVar[Callable[[Tensor, Any], Tensor]]  # checks, then the Function

    def __post_init__(self) -> None:
        for name in self._float_fields:  # float parameters as Python floats (torch.nn accepts ints too)
            value = getattr(self, name)
            if not isinstance(value, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise TypeError(f"{self.name}: {name} must be a number, got {type(value).__name__}")
                object.__setattr__(self, name, float(value))

    def f(self, x: Tensor) -> Tensor:
        """FF: ``y = f(x)``, out of place and differentiable."""
        raise NotImplementedError

    def f_(self, x: Tensor) -> Tensor:
        """FF: ``y = f(x)`` written over ``x`` (a temporary the caller owns); returns it."""
        return self.f(x)

    def df(self, saved: Tensor) -> Tensor:
        """``f′(x)`` as a new tensor from ``saved`` (``y`` if ``from_output``, else ``x``), differentiable."""
        raise NotImplementedError

    def backward(self, g: Tensor, saved: Tensor, graph: bool, owned: bool = False) -> Tensor:
        """BP1/BP2's activation half: ``δ = g ⊙ f′(x)``.

        ``graph``: a graph is being recorded (double backward), so only out-of-place ops; without
        one, ``f′``'s new tensor is multiplied by ``g`` in place. ``owned``: ``g`` is a temporary
        the caller hands over, which a hand-tuned override may overwrite; otherwise ``g`` is never
        written.

        In float16 and bfloat16, ``f′`` of ``x`` and the product are computed in float32 and
        rounded once, as native's kernels do: in those dtypes ``f′`` would overflow (GELU-tanh's
        ``3cx²`` for ``|x| > 256``) or underflow (SiLU's ``σ(x)`` below ``x ≈ −17``) where native's
        does not. ``f′`` of ``y`` stays in ``y``'s dtype: ``y`` is rounded already, and its
        comparisons with bounds (hardtanh's ``0.9``) must be made in that dtype.
        """
        if saved.dtype in _HALF and not self.from_output:  # in float32, rounded once, as native
            return self.backward(to_float32(g), to_float32(saved), graph).to(saved.dtype)
        if graph:
            return g * self.df(saved)
        return self.df(saved).mul_(g)

    def kinks(self) -> tuple[float, ...]:
        """Points where ``f′`` jumps: samples keep a margin from them."""
        return ()

    def manual(self, x: Tensor) -> Tensor:
        """``f(x)`` through this op's Function (explicit backward), with this instance's parameters."""
        return type(self)._apply(x, self)

    def native(self, x: Tensor) -> Tensor:
        """The torch reference ``f(x)``, for comparisons."""
        return type(self).native_function(x, **self.params())

    def native_module(self) -> nn.Module:
        """A ``torch.nn`` module computing this activation with its parameters."""
        return type(self).module(**self.params())

    def params(self) -> dict[str, Any]:
        """The parameters, by the ``torch.nn`` module's attribute names."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __str__(self) -> str:
        params = self.params()
        if not params:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in params.items())})"


E = TypeVar("E", bound=type[Elementwise])


class ElementwiseFunction(ManualFunction):
    """``apply(input, act)``: ``y = act.f(x)``; backward ``g ⊙ f′`` from :meth:`Elementwise.backward`.

    Saves ``y`` where ``f′`` is a function of it, ``x`` otherwise. Each entry gets its own subclass,
    ``<Name>Function``, so its autograd node is named after it.
    """

    @staticmethod
    def forward(input: Tensor, act: Elementwise) -> Tensor:
        return act.f(input)  # FF: y = f(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        input, act = inputs
        ctx.act = act
        ctx.save_for_backward(output if act.from_output else input)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (saved,) = ctx.saved_tensors  # y or x
        # BP1/BP2, activation half: δ = g ⊙ f′(x)
        return ctx.act.backward(grad_output, saved, not in_place_ok(grad_output)), None


def to_float32(tensor: Tensor) -> Tensor:
    """Cast like autocast does for a float32 op: float16 and bfloat16 up to float32, float64 untouched."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _check_input(input: Any) -> None:
    if not (isinstance(input, Tensor) and input.dtype in _FLOATING):
        check_floating("input", input)  # raises, naming what came


def _make_function(cls: type[Elementwise]) -> type[ManualFunction]:
    return type(
        f"{cls.__name__}Function",
        (ElementwiseFunction,),
        {"__module__": "manual_bp.functional", "__doc__": cls.__doc__},
    )


def _make_apply(cls: type[Elementwise]) -> Callable[[Tensor, Any], Tensor]:
    """``apply(input, act)``: the input checked (and cast where native runs in float32), then the Function."""
    function_apply = cls.Function.apply
    upcast = cls.float32_under_autocast_on

    def apply(input: Tensor, act: Any) -> Tensor:
        _check_input(input)
        if upcast and input.device.type in upcast and autocast_dtype(input) is not None:
            input = to_float32(input)  # as the native op does under autocast there
        return function_apply(input, act)

    return apply


def _make_functional(cls: type[Elementwise]) -> Callable[..., Tensor]:
    apply = cls._apply

    if not fields(cls):
        act = cls()

        def function(input: Tensor) -> Tensor:
            return apply(input, act)

    else:
        made: dict[tuple[Any, ...], Elementwise] = {}  # one instance per positional parameter setting

        def function(input: Tensor, *args: Any, **kwargs: Any) -> Tensor:  # type: ignore[misc]
            if kwargs or torch.compiler.is_compiling():
                act = cls(*args, **kwargs)
            else:  # a module's call: the same parameters every time, checked once
                key = (*args, *map(type, args))  # (True == 1.0, but True is refused)
                try:
                    act = made[key]
                except (KeyError, TypeError):
                    act = cls(*args)
                    if len(made) < 64:
                        made[key] = act
            return apply(input, act)

        tensor_arg = inspect.Parameter("input", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Tensor)
        function.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [tensor_arg]
            + [
                inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default)
                for f in fields(cls)
            ],
            return_annotation=Tensor,
        )
    function.__name__ = function.__qualname__ = cls.name
    function.__module__ = "manual_bp.functional"
    function.__doc__ = (
        f"``{cls.name}`` with an explicit backward (:class:`{cls.__name__}Function`). "
        "Shape ``(*) -> (*)``.\n\n" + inspect.cleandoc(cls.__doc__ or "")
    )
    return function


def _make_module(cls: type[Elementwise]) -> type[nn.Module]:
    native = cls.module
    function = cls.functional
    names = tuple(f.name for f in fields(cls))

    if names:

        def forward(self: nn.Module, input: Tensor) -> Tensor:
            return function(input, *[getattr(self, n) for n in names])

    else:

        def forward(self: nn.Module, input: Tensor) -> Tensor:
            return function(input)

    doc = (
        f"``torch.nn.{native.__name__}`` with the explicit backward of "
        f":func:`manual_bp.functional.{cls.name}` (only ``forward`` differs; ``inplace=True`` is "
        "computed out of place).\n\n" + inspect.cleandoc(cls.__doc__ or "")
    )
    module = type(
        native.__name__, (native,), {"forward": forward, "__doc__": doc, "__module__": "manual_bp.modules"}
    )
    return module


def _make_samples(cls: type[Elementwise]) -> Callable[[torch.dtype, torch.device], list[Sample]]:
    def samples(dtype: torch.dtype, device: torch.device) -> list[Sample]:
        out = []
        for setting in cls.settings:  # each parameter setting, kept off its own kinks
            out += unary_samples(cls(**setting).kinks(), cls.scale, **setting)(dtype, device)
        return out

    return samples


def activation(cls: E) -> E:
    """Make an :class:`Elementwise` subclass a registry entry: a frozen dataclass with its Function,
    its :mod:`manual_bp.functional` function, its drop-in module and its :class:`Op`."""
    cls = dataclass(frozen=True)(cls)  # type: ignore[assignment]
    cls._float_fields = tuple(f.name for f in fields(cls) if isinstance(f.default, float))
    cls.Function = _make_function(cls)
    cls._apply = staticmethod(_make_apply(cls))  # type: ignore[assignment]
    cls.functional = staticmethod(_make_functional(cls))  # type: ignore[assignment]
    cls.Module = _make_module(cls)
    cls.op = Op(
        name=cls.name,
        function=cls.functional,
        native=cls.native_function,
        samples=_make_samples(cls),
        function_class=cls.Function,
        modules=((cls.module, cls.Module),),
        torch_functions=cls.torch_functions,
        formula=_formula(cls),
    )
    return cls


def _formula(cls: type[Elementwise]) -> str:
    """The docs' formula of an activation: BP2's ``⊙ f′(x)``, then ``f`` and ``f′`` from the first
    paragraph of its docstring (its ``:math:`…``` roles as ``$…$``)."""
    first = (cls.__doc__ or "").strip().split("\n\n")[0]
    text = re.sub(r":math:`([^`]*)`", r"$\1$", " ".join(first.split()))
    return "BP2: $\\delta_x = \\delta_y \\odot f'(x)$, where " + text
