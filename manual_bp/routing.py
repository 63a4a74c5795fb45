r"""Route torch function calls to the registry's manual Functions: ``convert(model, functional=True)``.

Swapping modules cannot reach code that calls functions: GPT-2's ``Conv1D`` computes
``torch.addmm``, a hand-written RMSNorm multiplies by its weight, ViT adds a position-embedding
``Parameter``, attention calls ``torch.matmul`` and ``softmax``. While :class:`FunctionalMode` (a
``torch.overrides.TorchFunctionMode``) is active, every call of a torch callable that an op of the
registry stands for (its ``Op.torch_functions``: ``F.relu``, ``torch.tanh``, ``Tensor.softmax``,
``torch.addmm``, ...) is answered by that op's manual function instead. The routes are built from
the registry (:data:`manual_bp.ops.OPS`), so an op added there is routed with no change here.

Which calls are routed, and which stay native:

* a call is routed only when grad mode is on and one of its tensor arguments requires grad:
  otherwise no backward will ever run, and native computes the same values faster (masks, position
  ids, ``torch.no_grad()`` inference). Inside a manual Function's ``forward`` grad mode is off, and
  autograd runs ``backward`` outside the mode, so a manual Function never re-routes its own calls;
* the operator spellings whose arguments differ from the op's function are adapted
  (:data:`ADAPTED`): ``x - y`` is ``Tensor.sub``, but ``2 - x`` is ``Tensor.__rsub__(x, 2)``,
  routed as ``sub(2, x)``; likewise ``2 / x``, ``2 ** x``, ``x ** 2``, ``-x`` (``mul(x, -1)``) and
  ``torch.einsum(eq, [a, b])``;
* in-place forms stay native: ``x.add_(y)``, ``x += y``, ``torch.relu_(x)``, ``F.relu(x,
  inplace=True)``. Computing them out of place would change what other views of ``x`` see;
  :func:`manual_bp.coverage` lists the native nodes they leave;
* views and shape ops (``view``, ``reshape``, ``transpose``, ``cat``, ``split``, indexing) are not
  in the registry and stay native: their backward moves numbers and computes nothing;
* a composite torch function the registry has no op for (``F.multi_head_attention_forward``) reaches
  the mode as one call and runs natively with the mode off inside it (as under any
  ``TorchFunctionMode``): the calls it makes are not routed;
* a call the manual function refuses (an option it does not support, integer tensors, mixed
  dtypes that native promotes) runs natively, so that a model runs with the mode as it does
  without; ``FunctionalMode(strict=True)`` raises instead (the tests use it).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from manual_bp.ops import OPS, callable_name

__all__ = ["ADAPTED", "ROUTES", "FunctionalMode", "functional_mode", "is_in_place"]

_log = logging.getLogger(__name__)

Route = Callable[[tuple[Any, ...], dict[str, Any]], Any]


def is_in_place(fn: Any) -> bool:
    """Whether the torch callable ``fn`` changes its first argument (``Tensor.add_``, ``torch.relu_``,
    ``Tensor.__iadd__``): such calls stay native."""
    name = getattr(fn, "__name__", "")
    if name.startswith("__i") and name.endswith("__"):
        return True
    return name.endswith("_") and not name.endswith("__")


def _call(function: Callable[..., Any]) -> Route:
    """The route of a torch callable whose arguments are ``function``'s; ``inplace=True`` stays native."""
    takes_inplace = "inplace" in inspect.signature(function).parameters

    def route(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if "inplace" in kwargs and not takes_inplace:
            if kwargs["inplace"]:
                return NotImplemented
            kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
        elif kwargs.get("inplace"):
            return NotImplemented
        return function(*args, **kwargs)

    return route


def _swapped(route: Route) -> Route:
    """``Tensor.__rsub__(x, other)`` means ``other - x``: the route with the first two arguments swapped."""
    return lambda args, kwargs: route((args[1], args[0], *args[2:]), kwargs)


def _negated(mul: Route) -> Route:
    """``-x`` as ``mul(x, -1)`` (the same bits: a sign flip is exact)."""
    return lambda args, kwargs: mul((args[0], -1), {})


def _operands_unpacked(route: Route) -> Route:
    """``torch.einsum(equation, [a, b])`` as ``einsum(equation, a, b)``."""

    def adapted(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if len(args) == 2 and isinstance(args[1], (list, tuple)):
            args = (args[0], *args[1])
        return route(args, kwargs)

    return adapted


def _renamed(route: Route, names: dict[str, str]) -> Route:
    """Keyword arguments renamed: ``torch.dropout(input, p, train)`` is ``dropout(input, p, training)``."""
    return lambda args, kwargs: route(args, {names.get(k, k): v for k, v in kwargs.items()})


def _build() -> tuple[dict[Any, Route], dict[Any, str]]:
    routes: dict[Any, Route] = {}
    for op in OPS:
        for fn in op.torch_functions:
            if not is_in_place(fn) and fn not in routes:
                routes[fn] = _call(op.function)
    adapted: dict[Any, str] = {}

    def adapt(fn: Any, target: Any, wrap: Callable[[Route], Route], how: str) -> None:
        if target in routes and fn not in adapted:
            routes[fn] = wrap(routes[target])
            adapted[fn] = how

    same = lambda route: route  # noqa: E731
    T = Tensor
    # operators: Python calls x + y as Tensor.add (and 2 + x as Tensor.add(x, 2)); the dunders
    # themselves reach the mode where Python cannot reorder the operands
    for dunder, target in (
        (T.__add__, torch.add),
        (T.__radd__, torch.add),  # x + y == y + x exactly
        (T.__sub__, torch.sub),
        (T.__mul__, torch.mul),
        (T.__rmul__, torch.mul),
        (T.__truediv__, torch.div),
        (T.__pow__, torch.pow),
        (T.__matmul__, torch.matmul),
    ):
        adapt(dunder, target, same, f"{callable_name(target)}(self, other)")
    for dunder, target in (
        (T.__rsub__, torch.sub),
        (T.__rtruediv__, torch.div),
        (T.__rdiv__, torch.div),
        (T.__rpow__, torch.pow),
        (T.__rmatmul__, torch.matmul),
    ):
        adapt(dunder, target, _swapped, f"{callable_name(target)}(other, self)")
    for neg in (T.neg, torch.neg, T.__neg__):
        adapt(neg, torch.mul, _negated, "torch.mul(self, -1)")
    adapt(torch.einsum, torch.einsum, _operands_unpacked, "torch.einsum(equation, *operands)")
    adapt(torch.dropout, torch.dropout, lambda r: _renamed(r, {"train": "training"}), "train -> training")
    return routes, adapted


ROUTES: dict[Any, Route]
ADAPTED: dict[Any, str]
#: ``ROUTES``: torch callable -> how :class:`FunctionalMode` calls its manual function;
#: ``ADAPTED``: the spellings whose arguments are rearranged on the way, and how.
ROUTES, ADAPTED = _build()


def _requires_grad(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a tensor among ``args`` and ``kwargs`` (or in a list of them) requires grad."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            if value.requires_grad:
                return True
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, Tensor) and item.requires_grad:
                    return True
    return False


class FunctionalMode(TorchFunctionMode):
    """A ``TorchFunctionMode`` that answers every call in :data:`ROUTES` with the registry's manual
    function (see the module's docstring for what stays native).

    Args:
        strict: raise when a manual function refuses a call's arguments, instead of running the
            call natively.
    """

    def __init__(self, strict: bool = False) -> None:
        super().__init__()
        self.strict = strict

    def __torch_function__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        try:
            route = ROUTES.get(func)
        except TypeError:  # an unhashable callable
            route = None
        if route is not None and torch.is_grad_enabled() and _requires_grad(args, kwargs):
            try:
                out = route(args, kwargs)
            except (TypeError, ValueError, NotImplementedError) as error:
                if self.strict:
                    raise
                _log.debug("%s stays native: %s", callable_name(func), error)
                out = NotImplemented
            if out is not NotImplemented:
                return out
        return func(*args, **kwargs)


@contextlib.contextmanager
def functional_mode(strict: bool = False) -> Iterator[FunctionalMode]:
    """Route the torch function calls of the code inside to manual Functions, as
    ``convert(model, functional=True)`` does while its model runs: for a loss computed outside the
    model, say.

    >>> import torch, manual_bp
    >>> x = torch.randn(3, 4, requires_grad=True)
    >>> with manual_bp.functional_mode():
    ...     y = torch.tanh(x).softmax(-1)
    >>> y.grad_fn.name()
    'SoftmaxFunctionBackward'
    """
    with FunctionalMode(strict) as mode:
        yield mode
