r"""How much of a model's backward is explicit: :func:`coverage` measures it on the autograd graph.

One forward of the model (and of its loss) records the graph autograd would run backwards; this
module walks that graph without running it and sorts its nodes into three kinds:

* **manual** — the backward node of a :class:`manual_bp._function.ManualFunction` subclass (a
  custom Function's node carries its class as ``_forward_cls``): its ``backward`` is written out;
* **view** — nodes that move numbers and compute nothing (:data:`VIEW_NODES`): reshapes, transposes,
  broadcasts, slices, copies, concatenation and splitting, dtype/device casts. Their backward
  only moves δ back into the input's layout (an ``expand``'s backward sums over the broadcast
  dims, a ``cat``'s slices δ apart), so they are neither manual nor native;
* **native** — every other node: autograd's own derivative formula computes its gradient.

A parameter's gradient (its BP3) is computed by the first non-view node(s) between its
``AccumulateGrad`` and the loss. The parameter counts as *explicit* when every path from its
``AccumulateGrad`` up to the first non-view node ends at a manual node: a tied weight used by two
manual layers is explicit, a weight used once by a manual layer and once by a native op is not.

>>> import torch, manual_bp
>>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
>>> print(manual_bp.coverage(manual_bp.convert(model), torch.randn(3, 4)))
explicit backward: 100% of parameter elements (4 of 4 tensors); 100% of graph nodes (3 of 3)
>>> manual_bp.coverage(model, torch.randn(3, 4)).parameter_share
0.0
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from manual_bp._function import ManualFunction

__all__ = ["VIEW_NODES", "Coverage", "NativeNode", "coverage"]

#: Node names (``grad_fn.name()`` without its trailing number) that move numbers and compute
#: nothing: views and reshapes (``View``, ``UnsafeView``, ``Reshape``, ``ReshapeAlias``,
#: ``AsStrided``, ``Alias``), axis moves (``T``, ``Transpose``, ``Permute``), broadcasts
#: (``Expand``), ``Squeeze``/``Unsqueeze``, indexing by slices and single positions (``Slice``,
#: ``Select``), copies (``Clone``; ``ToCopy``: dtype casts, such as autocast's, and device moves),
#: splitting (``Split``, ``SplitWithSizes``, ``Unbind``) and joining (``Cat``, ``Stack``).
#: Gathers with an index tensor (``Index``, ``Gather``, ``Embedding``) and ops that repeat or
#: overlap elements (``Repeat``, ``Unfold``) are not in the list: their backward sums.
VIEW_NODES: frozenset[str] = frozenset(
    {
        "View",
        "UnsafeView",
        "Reshape",
        "ReshapeAlias",
        "AsStrided",
        "Alias",
        "T",
        "Transpose",
        "Permute",
        "Expand",
        "Squeeze",
        "Unsqueeze",
        "Slice",
        "Select",
        "Clone",
        "ToCopy",
        "Split",
        "SplitWithSizes",
        "Unbind",
        "Cat",
        "Stack",
    }
)

_NUMBERED = re.compile(r"Backward\d*$")
_HERE = os.path.dirname(os.path.abspath(__file__))
# manual_bp's own frames between a call site and torch, when convert(functional=True) passes a call
# on natively: the routing mode and the forward it wraps
_PASSING = frozenset(os.path.join(_HERE, f) for f in ("routing.py", "convert.py"))


@dataclass(frozen=True)
class NativeNode:
    """Native nodes of one kind (``ConvolutionBackward0``, ``AddBackward0``, ...) left in the graph.

    ``count`` nodes of this name; ``parameters`` are the names of the parameters whose gradient
    one of them computes (BP3 left to autograd); ``modules`` the innermost modules whose forward
    created them (``"layer1.0 (BasicBlock)"``, ``"(model)"`` for the model's own forward, none for
    the loss); ``sources`` the distinct lines that created them (``file:line``: the innermost frame
    outside torch).
    """

    name: str
    count: int
    parameters: tuple[str, ...]
    modules: tuple[str, ...]
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Coverage:
    """The share of a model's backward that is explicit, measured on one forward's autograd graph.

    Shares are over the trainable parameters the loss depends on; ``unused`` lists trainable
    parameters it does not reach (they get no gradient, and are counted in neither share).
    ``str(coverage)`` is a one-line summary followed by the native nodes left and the parameters
    not covered.
    """

    parameter_share: float  #: explicit parameter elements / all (reached, trainable) elements
    node_share: float  #: manual nodes / nodes that compute (views and AccumulateGrad excluded)
    explicit_elements: int
    total_elements: int
    explicit_tensors: int
    total_tensors: int
    manual_nodes: int
    total_nodes: int
    native: tuple[NativeNode, ...]  #: most frequent first
    uncovered: tuple[str, ...]  #: parameters whose gradient a native node computes (in part)
    unused: tuple[str, ...]  #: trainable parameters the loss does not reach

    def __str__(self) -> str:
        lines = [
            f"explicit backward: {_percent(self.explicit_elements, self.total_elements)} of parameter "
            f"elements ({self.explicit_tensors} of {self.total_tensors} tensors); "
            f"{_percent(self.manual_nodes, self.total_nodes)} of graph nodes "
            f"({self.manual_nodes} of {self.total_nodes})"
        ]
        if self.native:
            lines.append("native nodes left:")
            width = max(len(n.name) for n in self.native)
            for n in self.native:
                where = [f"in {_few(n.modules)}"] if n.modules else []
                where += [f"at {_few(n.sources)}"] if n.sources else []
                where += [f"computes the gradient of {_few(n.parameters, 4)}"] if n.parameters else []
                lines.append(f"  {n.name.ljust(width)}  x{n.count:<3} {'; '.join(where)}".rstrip())
        if self.uncovered:
            lines.append(f"parameters not covered: {', '.join(self.uncovered)}")
        if self.unused:
            lines.append(f"parameters the loss does not reach: {', '.join(self.unused)}")
        return "\n".join(lines)


def _few(items: tuple[str, ...], n: int = 3) -> str:
    """The first ``n`` items, comma-separated, and how many more there are."""
    more = f" (+{len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _percent(part: int, whole: int) -> str:
    """``part / whole`` as a percentage that never rounds up to 100% or down to 0% (``99.97`` ->
    ``99.9%``); ``100%`` for nothing to count."""
    if whole == 0 or part == whole:
        return "100%"
    if part == 0:
        return "0%"
    value = math.floor(1000 * part / whole) / 10
    return f"{max(value, 0.1):.1f}%"


def _kind(node: Any) -> str:
    """``"manual"``, ``"view"``, ``"leaf"`` (AccumulateGrad) or ``"native"``."""
    forward_cls = getattr(node, "_forward_cls", None)
    if isinstance(forward_cls, type) and issubclass(forward_cls, ManualFunction):
        return "manual"
    name = node.name()
    if name.endswith("AccumulateGrad"):
        return "leaf"
    if _NUMBERED.sub("", name) in VIEW_NODES:
        return "view"
    return "native"


def _tensors(value: Any) -> Iterator[Tensor]:
    """The tensors in a model's output: a tensor, or nested tuples, lists and dicts of them."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _source(node: Any) -> str | None:
    """``file:line`` of the innermost frame outside torch that created ``node`` (from the stack
    anomaly mode records), or ``None`` when that frame is :func:`coverage`'s own call of the model."""
    stack = node.metadata.get("traceback_") or []
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    for frame in reversed(stack):
        match = re.match(r'\s*File "(.+)", line (\d+)', frame)
        if match and not match.group(1).startswith(torch_dir) and match.group(1) not in _PASSING:
            if os.path.abspath(match.group(1)) == os.path.abspath(__file__):
                return None
            return f"{os.path.basename(match.group(1))}:{match.group(2)}"
    return None


def coverage(
    model: nn.Module, *args: Any, loss_fn: Callable[[Any], Tensor] | None = None, **kwargs: Any
) -> Coverage:
    """Run ``model(*args, **kwargs)`` once and measure how much of its backward is explicit.

    The graph is recorded (never run backwards) from ``loss_fn(output)`` if given, else from the
    output itself (a tensor, or tuples/lists/dicts of tensors: as if their sum were the loss). The
    model is left as it was: no ``.grad`` is touched, train/eval mode, buffers (BatchNorm's running
    statistics) and the random number generators are restored after the forward.

    Args:
        model: any ``torch.nn.Module``, converted or not.
        *args: the model's positional inputs (``**kwargs``: its keyword inputs).
        loss_fn: called with the output; returns the loss (``lambda y: F.cross_entropy(y, t)``).

    Returns:
        A :class:`Coverage`: ``parameter_share`` (elements of the parameters whose gradient is
        computed by manual Functions), ``node_share``, the native nodes left (with the parameters
        each computes the gradient of and the source lines that created them) and the parameters
        not covered.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"coverage expected a torch.nn.Module, got {type(model).__name__}")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable or None, got {type(loss_fn).__name__}")
    names: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if p.requires_grad:
            names.setdefault(id(p), []).append(name)
            params[id(p)] = p
    roots, created_in = _record(model, args, kwargs, loss_fn)

    # the graph: every node reachable from the roots, and who consumes each node's gradient
    consumers: dict[Any, list[Any]] = {}
    stack = list(roots)
    seen = set(stack)
    while stack:
        node = stack.pop()
        for child, _ in node.next_functions:
            if child is None:
                continue
            consumers.setdefault(child, []).append(node)
            if child not in seen:
                seen.add(child)
                stack.append(child)
    # in the order the forward created them (sequence numbers are per thread, which one forward is)
    kinds = {node: _kind(node) for node in sorted(seen, key=lambda n: n._sequence_nr())}

    # each parameter's gradient is computed by the first non-view nodes above its AccumulateGrad
    computed_by: dict[int, set[Any]] = {}
    for leaf in (n for n in kinds if kinds[n] == "leaf"):
        variable = leaf.variable
        if id(variable) not in params:
            continue  # an input that requires grad, not a parameter of the model
        found: set[Any] = set()
        todo, visited = list(consumers.get(leaf, [])), set()
        while todo:
            node = todo.pop()
            if node in visited:
                continue
            visited.add(node)
            if kinds[node] == "view":
                todo.extend(consumers.get(node, []))
            else:
                found.add(node)
        computed_by[id(variable)] = found

    label = {pid: " = ".join(ns) for pid, ns in names.items()}
    explicit = [pid for pid, nodes in computed_by.items() if all(kinds[n] == "manual" for n in nodes)]
    feeds: dict[Any, list[str]] = {}
    for pid, nodes in computed_by.items():
        for node in nodes:
            if kinds[node] == "native":
                feeds.setdefault(node, []).append(label[pid])

    by_name: dict[str, list[Any]] = {}
    for node, kind in kinds.items():
        if kind == "native":
            by_name.setdefault(node.name(), []).append(node)
    rank = {label[pid]: i for i, pid in enumerate(names)}  # the model's parameter order
    native = []
    for name, nodes in by_name.items():
        fed = sorted({p for node in nodes for p in feeds.get(node, [])}, key=rank.__getitem__)
        where = list(dict.fromkeys(created_in[node] for node in nodes if node in created_in))
        sources = list(dict.fromkeys(s for s in map(_source, nodes) if s is not None))
        native.append(NativeNode(name, len(nodes), tuple(fed), tuple(where), tuple(sources)))
    native.sort(key=lambda n: (-len(n.parameters), -n.count, n.name))

    total_elements = sum(params[pid].numel() for pid in computed_by)
    explicit_elements = sum(params[pid].numel() for pid in explicit)
    manual_nodes = sum(kind == "manual" for kind in kinds.values())
    total_nodes = sum(kind in ("manual", "native") for kind in kinds.values())
    order = list(names)  # the model's parameter order
    return Coverage(
        parameter_share=explicit_elements / total_elements if total_elements else 1.0,
        node_share=manual_nodes / total_nodes if total_nodes else 1.0,
        explicit_elements=explicit_elements,
        total_elements=total_elements,
        explicit_tensors=len(explicit),
        total_tensors=len(computed_by),
        manual_nodes=manual_nodes,
        total_nodes=total_nodes,
        native=tuple(native),
        uncovered=tuple(label[pid] for pid in order if pid in computed_by and pid not in explicit),
        unused=tuple(label[pid] for pid in order if pid not in computed_by),
    )


def _record(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], loss_fn: Callable[[Any], Tensor] | None
) -> tuple[list[Any], dict[Any, str]]:
    """Run the forward (and the loss) with the graph and creation stacks recorded.

    Returns the root nodes and, for each node a module's forward created, that module
    (``"path (Class)"``, the innermost one). Buffers, the modules' ``training`` flags and the random
    number generators (CPU, and the CUDA devices of the model and its inputs) are restored.
    """
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    tensors = [*model.parameters(), *model.buffers(), *_tensors(args), *_tensors(kwargs)]
    devices = sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})
    # Which module's forward made each node: when a module starts, the untagged nodes behind its
    # inputs were made by the module around it (or, outside the model, by none); when it returns,
    # the untagged nodes behind its output were made by it (inner modules tagged theirs first).
    created_in: dict[Any, str | None] = {}
    running: list[str | None] = [None]

    def tag(value: Any, label: str | None) -> None:
        _tag([t.grad_fn for t in _tensors(value)], label, created_in)

    def hooks(path: str, module: nn.Module) -> list[Any]:
        label = f"{path or '(model)'} ({type(module).__name__})"

        def pre(_module: nn.Module, args: Any, kwargs: Any) -> None:
            tag((args, kwargs), running[-1])
            running.append(label)

        def post(_module: nn.Module, _args: Any, output: Any) -> None:
            tag(output, label)
            running.pop()

        return [
            module.register_forward_pre_hook(pre, with_kwargs=True),
            module.register_forward_hook(post, always_call=True),
        ]

    handles = [h for path, m in model.named_modules() for h in hooks(path, m)]
    try:
        with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Aa]nomaly [Dd]etection.*")
            with torch.enable_grad(), torch.autograd.set_detect_anomaly(True, check_nan=False):
                output = model(*args, **kwargs)
                result = loss_fn(output) if loss_fn is not None else output
    finally:
        for handle in handles:
            handle.remove()
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, training in modes:
            m.training = training
    if loss_fn is not None and not isinstance(result, Tensor):
        raise TypeError(f"loss_fn must return a Tensor, got {type(result).__name__}")
    outputs = list(_tensors(result))
    if not outputs:
        raise TypeError(
            f"coverage needs a tensor output (or tuples/lists/dicts of tensors) or a loss_fn that "
            f"returns the loss; the model returned {type(output).__name__}"
        )
    roots = [t.grad_fn for t in outputs if t.grad_fn is not None]
    if not roots:
        raise ValueError(
            "the loss does not depend on anything that requires grad: no autograd graph was recorded "
            "(are the model's parameters frozen, or did the forward run under torch.no_grad()?)"
        )
    modules = {node: label for node, label in created_in.items() if label is not None}
    return list(dict.fromkeys(roots)), modules


def _tag(nodes: list[Any], label: str | None, created_in: dict[Any, str | None]) -> None:
    """Give every node reachable from ``nodes`` that has no label yet ``label`` (without going past
    labelled nodes: those, and everything below them, an inner module or an input made)."""
    todo = [n for n in nodes if n is not None]
    while todo:
        node = todo.pop()
        if node in created_in:
            continue
        created_in[node] = label
        todo.extend(child for child, _ in node.next_functions if child is not None)
