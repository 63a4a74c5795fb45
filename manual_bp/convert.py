"""Swap the ``torch.nn`` layers of an existing model for their manual twins, and back.

:func:`convert` walks a model (any nesting of ``Sequential``, ``ModuleList``, ``ModuleDict`` and
custom modules, the model itself included) and turns every layer of the op registry
(:data:`manual_bp.ops.MODULE_TWINS`: ``Linear`` and its subclasses such as the ``out_proj`` of
``nn.MultiheadAttention``, convolutions, pooling, padding, norms, ``Embedding``, dropout, softmax,
``Flatten``, recurrent layers, activations and losses) into its manual twin from :mod:`manual_bp.modules`.
:func:`revert` is its exact inverse.

How: each manual class subclasses its ``torch.nn`` counterpart and adds nothing but ``forward``
(or the one method its ``forward`` calls, such as ``InstanceNorm``'s), so a module is converted
by changing its class (``module.__class__ = Twin``). The module object
stays the same object with the same ``Parameter`` objects, names, buffers, hooks,
``requires_grad`` flags, dtype, device, train/eval mode and ``state_dict``; only ``forward``
changes. A subclass of a ``torch.nn`` layer (``NonDynamicallyQuantizableLinear``, a user's
``MyLinear(nn.Linear)``) gets a twin that subclasses both the manual layer and the original
class, so ``isinstance`` checks and extra methods keep working; a subclass that overrides
``forward`` stays native (its ``forward`` is not ``Linear``'s any more).

What cannot be converted is reported by :func:`conversion_report`: modules of other kinds
(``nn.Bilinear``, ...) stay native and compose with manual ones through autograd;
activations called inside a native ``forward`` (``F.relu(x)``, ``torch.tanh(x)``) or stored as
*functions* by a native module are not modules and cannot be swapped. ``nn.MultiheadAttention`` and
the Transformer layers convert as a whole (:mod:`manual_bp.ops.attention`): their twins run the
manual twin of an activation stored as a function (``nn.TransformerEncoderLayer(activation="gelu")``
keeps ``F.gelu``, and the manual ``gelu`` runs). ``convert(model, functional=True)`` reaches the rest:
the model's ``forward`` then runs under :class:`manual_bp.routing.FunctionalMode`, which routes the
torch calls it makes to the registry's manual Functions (the model's class becomes a subclass whose
``forward`` does that, found by pickle like the twins; :func:`revert` sets the class back).
"""

from __future__ import annotations

import copy
import functools
import importlib
import logging
import sys
import textwrap
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from manual_bp.coverage import Coverage, _percent, coverage
from manual_bp.feedback import check_rule, clear_feedback, set_feedback
from manual_bp.mlp import MLP
from manual_bp.ops import MODULE_TWINS, TORCH_FUNCTIONS, callable_name
from manual_bp.ops.losses import HalfSquaredError
from manual_bp.routing import FunctionalMode

__all__ = [
    "ConversionReport",
    "ModuleEntry",
    "conversion_report",
    "convert",
    "is_functional",
    "native_twin",
    "revert",
]

_log = logging.getLogger(__name__)

# torch.nn class -> manual twin (from the op registry). Every twin subclasses its key and overrides
# only ``forward``.
_NATIVE_TO_MANUAL: dict[type[nn.Module], type[nn.Module]] = MODULE_TWINS
_MANUAL_TO_NATIVE: dict[type[nn.Module], type[nn.Module]] = {v: k for k, v in _NATIVE_TO_MANUAL.items()}

# Functions that do what a convertible module does; found as module attributes they are reported.
_FUNCTIONAL_TWINS: dict[Any, str] = {fn: callable_name(fn) for fn in TORCH_FUNCTIONS}

FUNCTIONAL_NOTE = (
    "activations called as functions inside a native forward (F.relu(x), torch.tanh(x), "
    "x.sigmoid()) or stored as functions by a native module are not modules and cannot be swapped: "
    "they stay native (convert(model, functional=True) routes them to manual Functions, or pass a "
    "module, e.g. activation=nn.ReLU(); the Transformer layers' twins run the manual twin of their "
    "stored activation function)"
)
ROUTED_NOTE = (
    "converted with functional=True: the torch function calls forward makes (F.relu(x), torch.addmm, "
    "x @ w, x * weight, ...) are routed to manual Functions too; in-place forms, views and calls a "
    "manual function refuses stay native (manual_bp.coverage lists what is left)"
)


# --------------------------------------------------------------------------------------------
# Twins of subclasses (NonDynamicallyQuantizableLinear, user subclasses of nn.Linear, ...)
# --------------------------------------------------------------------------------------------

_TWIN_PREFIX = "_twin_"
_TWINS: dict[type[nn.Module], type[nn.Module]] = {}


def _twin_name(cls: type) -> str:
    """A picklable attribute name of this module that encodes ``cls``'s module and qualname."""
    return (
        f"{_TWIN_PREFIX}{cls.__module__.replace('.', '_dot_')}_cls_{cls.__qualname__.replace('.', '_dot_')}"
    )


def _twin_of(cls: type[nn.Module], manual: type[nn.Module]) -> type[nn.Module]:
    """The class ``(manual, cls)``: the manual ``forward`` on top of everything else of ``cls``."""
    twin = _TWINS.get(cls)
    if twin is None:
        name = _twin_name(cls)
        twin = type(cls.__name__, (manual, cls), {"__module__": __name__, "_manual_bp_native": cls})
        twin.__qualname__ = name
        _TWINS[cls] = twin
        globals()[name] = twin  # so that pickle finds it by module and qualname
    return twin


def __getattr__(name: str) -> Any:
    """Recreate a twin class on demand, so that a converted model pickled in another process loads."""
    for prefix in (_FUNCTIONAL_PREFIX, _TWIN_PREFIX):
        if name.startswith(prefix) and "_cls_" in name:
            module_name, qualname = name[len(prefix) :].split("_cls_", 1)
            obj: Any = importlib.import_module(module_name.replace("_dot_", "."))
            if obj is sys.modules[__name__]:  # the functional twin of a twin: one attribute of ours
                obj = getattr(obj, qualname)
            else:
                for part in qualname.split("_dot_"):
                    obj = getattr(obj, part)
            if prefix == _FUNCTIONAL_PREFIX:
                return _functional_twin(obj)
            native = _native_base(obj)
            if native is not None:
                return _twin_of(obj, _NATIVE_TO_MANUAL[native])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# functional=True: the model's forward runs under FunctionalMode
# --------------------------------------------------------------------------------------------

_FUNCTIONAL_PREFIX = "_functional_"
_FUNCTIONAL: dict[type[nn.Module], type[nn.Module]] = {}


def _functional_twin(cls: type[nn.Module]) -> type[nn.Module]:
    """The class ``cls`` with ``forward`` run under :class:`~manual_bp.routing.FunctionalMode`.

    A model converted with ``functional=True`` gets this class (``model.__class__ = twin``), like
    the module twins: the same object, parameters, ``state_dict`` and hooks; ``isinstance(model,
    cls)`` holds; deep copies share the class, and pickles find it by name (``__getattr__`` above
    recreates it in a new process, as for ``ddp_spawn``). :func:`revert` sets ``cls`` back.
    """
    twin = _FUNCTIONAL.get(cls)
    if twin is None:
        forward = cls.forward

        @functools.wraps(forward)
        def functional_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            with FunctionalMode():
                return forward(self, *args, **kwargs)

        name = _twin_name(cls).replace(_TWIN_PREFIX, _FUNCTIONAL_PREFIX, 1)
        attrs = {"__module__": __name__, "_manual_bp_functional": cls, "forward": functional_forward}
        twin = type(cls.__name__, (cls,), attrs)
        twin.__qualname__ = name
        _FUNCTIONAL[cls] = twin
        globals()[name] = twin
    return twin


def is_functional(model: nn.Module) -> bool:
    """Whether ``model`` was converted with ``functional=True`` (its forward runs under
    :class:`~manual_bp.routing.FunctionalMode`)."""
    return "_manual_bp_functional" in type(model).__dict__


def _native_base(cls: type) -> type[nn.Module] | None:
    """The supported ``torch.nn`` class that ``cls`` is (or derives from), if any."""
    for base in cls.__mro__:
        if base in _NATIVE_TO_MANUAL:
            return base
    return None


def _is_manual(cls: type) -> bool:
    return any(base in _MANUAL_TO_NATIVE for base in cls.__mro__)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleEntry:
    """One module of a model: its dotted path (``""`` for the model itself) and what it is."""

    path: str
    kind: str  # class name, or "function attribute"
    status: str  # "manual" or "native"
    note: str = ""


@dataclass
class ConversionReport:
    """Which parts of a model run manual backward and which stay native, with reasons.

    ``manual`` lists modules whose ``forward`` is a manual one; ``native`` lists modules left to
    autograd that have parameters or that look convertible (containers without parameters of their
    own are omitted); ``functions`` lists activations stored as function attributes. ``str(report)``
    is a table.
    """

    model: str
    manual: list[ModuleEntry] = field(default_factory=list)
    native: list[ModuleEntry] = field(default_factory=list)
    functions: list[ModuleEntry] = field(default_factory=list)
    #: elements of the model's distinct parameters owned by a manual module, and of all of them
    manual_elements: int = 0
    total_elements: int = 0
    #: converted with ``functional=True``: torch function calls in forward are routed too
    functional: bool = False
    #: measured on one forward's graph when :func:`conversion_report` is given the model's inputs
    coverage: Coverage | None = None

    @property
    def parameter_share(self) -> float:
        """The share of parameter elements owned by manual modules (1.0 for a model without any).

        Static: it says which modules own the parameters, not which backward computes their
        gradients (a native op in ``forward`` can still use a manual module's weight);
        :func:`manual_bp.coverage` measures that on the graph."""
        return self.manual_elements / self.total_elements if self.total_elements else 1.0

    def __str__(self) -> str:
        rows = [(e.path or "(model)", e.kind, e.status, e.note) for e in self.manual + self.native]
        rows += [(e.path, e.kind, e.status, e.note) for e in self.functions]
        out = [f"conversion report for {self.model}: {len(self.manual)} manual, {len(self.native)} native"]
        if self.total_elements:
            share = _percent(self.manual_elements, self.total_elements)
            counts = f"{self.manual_elements:,} of {self.total_elements:,} elements"
            routed = " (modules only: the coverage below counts the routed calls)" if self.functional else ""
            out.append(f"parameters in manual layers: {share} ({counts}){routed}")
        else:
            out.append("parameters in manual layers: the model has no parameters")
        out.append(_table(("module", "class", "backward", "note"), rows))
        if self.coverage is None or self.coverage.node_share < 1:  # (nothing to say when all is manual)
            note = ROUTED_NOTE if self.functional else FUNCTIONAL_NOTE
            out.append(textwrap.fill(f"note: {note}.", width=100, subsequent_indent="      "))
        if self.coverage is not None:
            out.append(f"coverage (measured on the autograd graph of one forward):\n{self.coverage}")
        return "\n".join(out)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A plain text table with aligned columns."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *(line(r) for r in rows)])


def _own_params(module: nn.Module) -> int:
    return len(module._parameters) - sum(p is None for p in module._parameters.values())


def _unconvertible_reason(module: nn.Module, native: type[nn.Module]) -> str | None:
    """Why a module of a supported kind must stay native, or ``None`` if it converts."""
    cls = type(module)
    if cls.forward is not native.forward:
        return f"{cls.__qualname__} overrides forward(); converting would change what it computes"
    return None


def _walk(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module | None]]:
    """``(path, module, parent)`` for every distinct module, not descending into opaque ones."""
    seen: set[int] = set()
    out: list[tuple[str, nn.Module, nn.Module | None]] = []

    def visit(path: str, module: nn.Module, parent: nn.Module | None) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        out.append((path, module, parent))
        if _opaque_reason(module) is not None:
            return
        for name, child in module._modules.items():
            if child is not None:
                visit(f"{path}.{name}" if path else name, child, module)

    visit("", model, None)
    return out


def _opaque_reason(module: nn.Module) -> str | None:
    """Why convert/revert must not look inside ``module``, or ``None``."""
    if isinstance(module, torch.jit.ScriptModule):
        return "TorchScript module: its code is compiled and cannot be changed"
    if isinstance(module, (MLP, HalfSquaredError)):
        return f"manual_bp.{type(module).__name__} computes its own backward; left as it is"
    return None


def conversion_report(
    model: nn.Module, *args: Any, loss_fn: Callable[[Any], Tensor] | None = None, **kwargs: Any
) -> ConversionReport:
    """Describe which modules of ``model`` run a manual backward and which stay native, and why.

    Works on any model, converted or not. Modules whose ``forward`` is never called by their parent
    are still listed by class: the ``out_proj`` of a native ``nn.MultiheadAttention`` is one (the
    attention reads its weight directly), and the report says so. Given the model's inputs (``*args``,
    ``**kwargs``, and ``loss_fn`` as in :func:`manual_bp.coverage`), it also runs one forward and
    reports its :func:`~manual_bp.coverage` (``report.coverage``, printed at the end): which
    parameters get their gradient from explicit backward, and the native nodes left.

    >>> import torch, manual_bp
    >>> from manual_bp.convert import conversion_report
    >>> model = manual_bp.convert(torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh()))
    >>> [e.path for e in conversion_report(model).manual]
    ['0', '1']
    """
    _check_module(model, "conversion_report")
    report = ConversionReport(model=type(model).__name__, functional=is_functional(model))
    unsupported = (
        "not a layer manual_bp swaps; its torch calls are routed (functional=True)"
        if report.functional
        else "not supported by manual_bp"
    )
    for path, module, parent in _walk(model):
        cls = type(module)
        opaque = _opaque_reason(module)
        n = _own_params(module)
        params = f"{n} param{'s' if n != 1 else ''}" if n else ""
        if opaque is not None:
            status = "native" if isinstance(module, torch.jit.ScriptModule) else "manual"
            entry = ModuleEntry(path, cls.__name__, status, "; ".join(x for x in (params, opaque) if x))
            (report.manual if status == "manual" else report.native).append(entry)
        elif _is_manual(cls):
            if (
                isinstance(parent, nn.MultiheadAttention)
                and not _is_manual(type(parent))
                and path.endswith("out_proj")
            ):
                note = (
                    "converted, but never called: MultiheadAttention passes out_proj.weight to "
                    "F.multi_head_attention_forward, so this gradient is native"
                )
                report.native.append(
                    ModuleEntry(path, cls.__name__, "native", "; ".join(x for x in (params, note) if x))
                )
            else:
                report.manual.append(ModuleEntry(path, cls.__name__, "manual", params))
        else:
            native = _native_base(cls)
            if native is not None:
                reason = _unconvertible_reason(module, native)
                note = reason if reason is not None else "convertible (not converted yet)"
                report.native.append(
                    ModuleEntry(path, cls.__name__, "native", "; ".join(x for x in (params, note) if x))
                )
            elif n:
                report.native.append(ModuleEntry(path, cls.__name__, "native", f"{params}; {unsupported}"))
        for attr, value in vars(module).items():
            if attr.startswith("_") or _is_manual(cls):  # a manual layer runs its functions' twins
                continue
            name = _functional_name(value)
            if name is not None:
                where = f"{path}.{attr}" if path else attr
                note = f"= {name}: a function, not a module; cannot be swapped"
                report.functions.append(ModuleEntry(where, "function attribute", "native", note))
    _count_parameters(model, report)
    if args or kwargs or loss_fn is not None:
        report.coverage = coverage(model, *args, loss_fn=loss_fn, **kwargs)
    return report


def _count_parameters(model: nn.Module, report: ConversionReport) -> None:
    """Fill in ``report``'s parameter element counts. Each distinct parameter belongs to the first
    module holding it; it is manual when that module is in ``report.manual``, or lies inside an
    opaque manual module there (``manual_bp.MLP`` owns its layers' parameters)."""
    manual_modules: set[int] = set()
    # by path from the walk, not get_submodule: a deep-copied nn.TransformerDecoderLayer holds its
    # activation module in _modules but an F.relu attribute in front of it (its __setstate__)
    by_path = {path: module for path, module, _ in _walk(model)}
    for entry in report.manual:
        module = by_path[entry.path]
        members = module.modules() if _opaque_reason(module) is not None else [module]
        manual_modules.update(id(m) for m in members)
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                report.total_elements += p.numel()
                report.manual_elements += p.numel() if id(module) in manual_modules else 0


def _functional_name(value: Any) -> str | None:
    try:
        return _FUNCTIONAL_TWINS.get(value)
    except TypeError:  # unhashable attribute value
        return None


# --------------------------------------------------------------------------------------------
# convert / revert
# --------------------------------------------------------------------------------------------


def _check_module(model: Any, who: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who} expected a torch.nn.Module, got {type(model).__name__}")


def _copy(model: nn.Module, who: str) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as error:  # deepcopy fails e.g. on non-leaf tensors stored as attributes
        raise RuntimeError(
            f"{who}(model, inplace=False) deep-copies the model, and copying this "
            f"{type(model).__name__} failed ({type(error).__name__}: {error}); "
            f"pass inplace=True to change the model itself"
        ) from error


def convert(
    model: nn.Module,
    inplace: bool = False,
    functional: bool = False,
    feedback: str = "backprop",
    feedback_scale: float = 1.0,
    feedback_seed: int = 0,
) -> nn.Module:
    """Swap every layer of ``model`` that the op registry supports for its manual twin.

    Converted: every ``torch.nn`` class of the op registry (:data:`manual_bp.ops.MODULE_TWINS`:
    ``nn.Linear`` and its subclasses that keep ``Linear.forward``; ``nn.MultiheadAttention`` and
    the Transformer layers, whole; convolutions, pooling, padding, batch/layer/group/RMS/instance
    norm, ``Embedding``, dropout, softmax, ``Flatten``; the activations; the losses), anywhere in
    the model, the model itself included. Everything else stays native and composes with manual
    layers through autograd. Parameters (the same objects when
    ``inplace=True``), names, buffers, hooks, ``requires_grad``, dtype, device, train/eval mode and
    ``state_dict`` are unchanged; only ``forward`` changes. ``inplace=True`` on native activations
    (``nn.ReLU(inplace=True)``) is computed out of place.

    Args:
        model: any ``torch.nn.Module``.
        inplace: change ``model`` itself (and return it); by default a deep copy is converted and
            ``model`` is left untouched.
        functional: also route the torch function calls made while ``model`` runs (``torch.addmm``,
            ``x @ w``, ``F.gelu``, ``x * weight``, ...) to the registry's manual Functions: the model's
            ``forward`` runs under :class:`manual_bp.routing.FunctionalMode` (what stays native, and
            why: :mod:`manual_bp.routing`). :func:`manual_bp.coverage` measures what this reaches.
        feedback: a feedback rule for the BP2 of every ``Linear`` and convolution
            (:func:`manual_bp.feedback.set_feedback`: ``"fa"``, ``"dfa"``, ``"sign"``, ``"brsf"``,
            ``"frsf"``); ``"backprop"``, the default, is the seed's ``δ W``.
        feedback_scale, feedback_seed: the scale and seed of the rule's random matrices.

    Returns:
        The converted model. :func:`conversion_report` (``from manual_bp.convert import
        conversion_report``) says what is manual and what stays native, and why; the same table
        is logged at INFO level on the ``manual_bp.convert`` logger. Warns (``UserWarning``) when
        there is nothing to convert.

    >>> import torch, manual_bp
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> manual = manual_bp.convert(model)
    >>> manual(torch.randn(3, 4)).grad_fn.name()
    'LinearFunctionBackward'
    >>> type(model[0]) is torch.nn.Linear  # the original is untouched
    True
    """
    _check_module(model, "convert")
    if not isinstance(functional, bool):
        raise TypeError(f"functional must be True or False, got {functional!r}")
    if functional and isinstance(model, torch.jit.ScriptModule):
        raise TypeError(
            "functional=True routes the torch calls a Python forward makes; a TorchScript module's "
            "forward is compiled code that no torch function mode sees: convert the Python model instead"
        )
    check_rule(feedback, feedback_scale, feedback_seed)
    if not inplace:
        model = _copy(model, "convert")
    converted = already = 0
    for _, module, _ in _walk(model):
        if _opaque_reason(module) is not None:
            continue
        cls = type(module)
        if _is_manual(cls):
            already += 1
            continue
        native = _native_base(cls)
        if native is None or _unconvertible_reason(module, native) is not None:
            continue
        manual = _NATIVE_TO_MANUAL[native]
        module.__class__ = manual if cls is native else _twin_of(cls, manual)
        converted += 1
    if functional and not is_functional(model):
        model.__class__ = _functional_twin(type(model))
        converted += 1
    if converted == 0 and not is_functional(model):
        why = (
            f"all {already} supported modules are manual already"
            if already
            else "it has no supported layer: see manual_bp.ops.MODULE_TWINS"
        )
        warnings.warn(
            f"manual_bp.convert: nothing to convert in {type(model).__name__} ({why}); "
            f"the model is returned unchanged. Note: {FUNCTIONAL_NOTE}.",
            UserWarning,
            stacklevel=2,
        )
    if feedback != "backprop":
        set_feedback(model, feedback, feedback_scale, feedback_seed)
    if _log.isEnabledFor(logging.INFO):
        _log.info("%s", conversion_report(model))
    return model


def revert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The exact inverse of :func:`convert`: every manual twin becomes its ``torch.nn`` class again,
    and a model converted with ``functional=True`` runs its ``forward`` without the routing again.

    Classes come back exactly (``NonDynamicallyQuantizableLinear`` stays that class); parameters,
    buffers, hooks and modes are untouched, so ``revert(convert(m))`` computes bit-identical
    outputs. Manual layers built directly (``manual_bp.Linear(3, 4)``) become their ``torch.nn``
    class too; ``manual_bp.MLP`` and user subclasses of manual layers are left as they are. A
    feedback rule is removed with its buffers (``feedback_weight``). Warns when there is nothing
    to revert.

    Args:
        model: any ``torch.nn.Module``.
        inplace: change ``model`` itself; by default a deep copy is reverted.
    """
    _check_module(model, "revert")
    if not inplace:
        model = _copy(model, "revert")
    reverted = 0
    for _, module, _ in _walk(model):
        if is_functional(module):
            module.__class__ = type(module).__dict__["_manual_bp_functional"]
            reverted += 1
        if _opaque_reason(module) is not None:
            continue
        cls = type(module)
        native = cls.__dict__.get("_manual_bp_native")
        if native is None:
            native = _MANUAL_TO_NATIVE.get(cls)
        if native is not None:
            clear_feedback(module)
            module.__class__ = native
            reverted += 1
    clear_feedback(model)  # the output hook of dfa
    if reverted == 0:
        warnings.warn(
            f"manual_bp.revert: nothing to revert in {type(model).__name__} (no manual module made by "
            "convert or built from manual_bp's layers); the model is returned unchanged.",
            UserWarning,
            stacklevel=2,
        )
    return model


class _NativeMLP(nn.Module):
    """``torch.nn`` twin of an :class:`MLP`: the same parameter names, native layers and autograd."""

    def __init__(self, mlp: MLP) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for layer in mlp.layers:
            native = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
            native.weight, native.bias = layer.weight, layer.bias  # shared: the caller deep-copies
            self.layers.append(native)
        if hasattr(mlp, "activation_layers"):  # learned activations: native modules, same parameters
            self.activation_layers = nn.ModuleList(copy.copy(m) for m in mlp.activation_layers)
            for m in self.activation_layers:
                m.__class__ = _MANUAL_TO_NATIVE[type(m)]
            self.acts: list[nn.Module] = list(self.activation_layers)
        else:
            self.acts = [act.native_module() for act in mlp.activations]

    def forward(self, input: Tensor) -> Tensor:
        y = input
        for layer, act in zip(self.layers, self.acts, strict=True):
            y = act(layer(y))
        return y


def native_twin(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` computed by native ``torch.nn`` layers and autograd only.

    Every :class:`MLP` becomes a native ``Linear``/activation stack and every other manual layer
    its ``torch.nn`` class (:func:`revert`). Parameter names stay the same: the reference that
    ``manual_bp.check`` and the training's gradient check compare manual gradients with.
    """
    twin = copy.deepcopy(model)
    if isinstance(twin, MLP):
        return _NativeMLP(twin)
    for name, module in list(twin.named_modules()):
        if isinstance(module, MLP) and name:
            parent_name, _, child = name.rpartition(".")
            parent = twin.get_submodule(parent_name) if parent_name else twin
            setattr(parent, child, _NativeMLP(module))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*nothing to revert.*")
        return revert(twin, inplace=True)
