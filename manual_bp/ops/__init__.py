r"""The op registry: every op of manual_bp, declared once, and everything else drawn from it.

Each op family lives in one file of this package, which holds, per op: the forward, the explicit
backward, the native reference, the sample inputs of its checks, the ``torch.nn`` module it twins
(and its drop-in module) and the torch functions it stands for. An op is one :class:`Op`:

* :mod:`~manual_bp.ops.linear` — ``linear``;
* :mod:`~manual_bp.ops.activations` — the activations (each is ``f`` and ``f′``, see
  :mod:`~manual_bp.ops.elementwise`) and ``prelu``;
* :mod:`~manual_bp.ops.padding` and :mod:`~manual_bp.ops.conv` — padding and convolutions;
* :mod:`~manual_bp.ops.pooling` — max, average and adaptive pooling;
* :mod:`~manual_bp.ops.norm` — batch, layer, group, RMS and instance norm;
* :mod:`~manual_bp.ops.embedding`, :mod:`~manual_bp.ops.dropout`, :mod:`~manual_bp.ops.shape`
  (softmax, log-softmax, flatten, unflatten);
* :mod:`~manual_bp.ops.losses` — ``half_squared_error``, ``cross_entropy`` and torch's other losses;
* :mod:`~manual_bp.ops.recurrent` — ``rnn_tanh``, ``rnn_relu``, ``lstm``, ``gru`` (BPTT);
* :mod:`~manual_bp.ops.network` — the seed's whole network as one Function (``mlp``, ``mlp_loss``)
  and the one implementation of its FF/BP1/BP2/BP3 loop;
* :mod:`~manual_bp.ops.arithmetic` — ``add``, ``sub``, ``mul``, ``div``, ``pow``, ``rsqrt``, ``exp``,
  ``log``, ``sqrt``, ``mean``, ``sum`` (broadcast operands' gradients through one ``sum_to``);
* :mod:`~manual_bp.ops.matmul` — ``matmul``, ``mm``, ``bmm``, ``addmm``, ``baddbmm``, ``einsum``.
  These two families have no ``torch.nn`` module: ``convert(model, functional=True)`` routes torch's
  calls to them.

:data:`OPS` is the list the rest of manual_bp iterates over: :mod:`manual_bp.functional` and
:mod:`manual_bp.modules` export its functions, Functions and modules, :func:`manual_bp.convert`
swaps its module pairs, ``manual-bp check`` and the tests run its samples, and
``MLP(activation=name)``, the benchmark and the teacher data take activations from
:data:`ACTIVATION_NAMES`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from manual_bp.ops._op import Op, Sample, callable_name
from manual_bp.ops.activations import (
    ACTIVATION_NAMES,
    ACTIVATION_OPS,
    ACTIVATIONS,
    LEARNED_ACTIVATIONS,
    Identity,
    get_activation,
    resolve_activation,
)
from manual_bp.ops.arithmetic import ARITHMETIC_OPS
from manual_bp.ops.attention import ATTENTION_OPS
from manual_bp.ops.conv import CONV_OPS
from manual_bp.ops.dropout import DROPOUT_OPS
from manual_bp.ops.elementwise import Elementwise
from manual_bp.ops.embedding import EMBEDDING_OPS
from manual_bp.ops.linear import LINEAR_OPS
from manual_bp.ops.losses import LOSS_OPS
from manual_bp.ops.matmul import MATMUL_OPS
from manual_bp.ops.network import NETWORK_OPS
from manual_bp.ops.norm import NORM_OPS
from manual_bp.ops.padding import PADDING_OPS
from manual_bp.ops.pooling import POOLING_OPS
from manual_bp.ops.recurrent import RECURRENT_OPS
from manual_bp.ops.shape import SHAPE_OPS

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_NAMES",
    "LEARNED_ACTIVATIONS",
    "MODULE_TWINS",
    "OPS",
    "TORCH_FUNCTIONS",
    "Elementwise",
    "Op",
    "Sample",
    "callable_name",
    "get_activation",
    "manual_modules",
    "resolve_activation",
]

#: Every op, in the order the checks report them.
OPS: tuple[Op, ...] = (
    *LINEAR_OPS,
    *PADDING_OPS,
    *CONV_OPS,
    *ACTIVATION_OPS,
    *POOLING_OPS,
    *NORM_OPS,
    *EMBEDDING_OPS,
    *DROPOUT_OPS,
    *SHAPE_OPS,
    *ATTENTION_OPS,
    *LOSS_OPS,
    *NETWORK_OPS,
    *ARITHMETIC_OPS,
    *MATMUL_OPS,
    *RECURRENT_OPS,
)


def manual_modules() -> list[type[nn.Module]]:
    """Every drop-in module class (``manual_bp.Linear``, ``manual_bp.Sigmoid``, ...), in registry order."""
    return [manual for op in OPS for _, manual in op.modules] + [Identity.Module]


#: ``torch.nn`` class -> its drop-in twin (each twin subclasses its key and overrides only ``forward``).
MODULE_TWINS: dict[type[nn.Module], type[nn.Module]] = {
    native: manual for op in OPS for native, manual in op.modules if native is not None
} | {nn.Identity: Identity.Module}


def _torch_functions() -> dict[Callable[..., Any], str]:
    out: dict[Callable[..., Any], str] = {}
    for op in OPS:
        for fn in op.torch_functions:
            out[fn] = op.name
    return out


#: torch callable (``F.relu``, ``torch.relu``, ``Tensor.relu``, ...) -> the name of the op it stands for.
TORCH_FUNCTIONS: dict[Callable[..., Any], str] = _torch_functions()
