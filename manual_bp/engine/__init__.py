r"""The seed's training algorithm with no autograd at all: FF, BP1, BP2, BP3 and the update.

Indexing as in :mod:`manual_bp.mlp`: the input is ``y_0``; ``mlp.layers[n]`` holds ``W_n, b_n``
and computes ``x_{n+1} = y_n W_nᵀ + b_n``, ``y_{n+1} = f(x_{n+1})``, ``n = 0..N−1``. For a batch of
``M`` samples (rows) and the loss ``C = Σ_i c_i`` (``reduction='sum'``) or ``C = (1/M) Σ_i c_i``
(``'mean'``), with ``s`` that factor (1 or ``1/M``):

====  ====================================  ==============================================
step  seed                                  here (rows are samples)
====  ====================================  ==============================================
FF    ``x_{n+1} = w_n y_n``, ``y = f(x)``   ``x = F.linear(y, W, b)``; ``y = f(x)`` in place
BP1   ``δ_N = (y_N − t) f′(x_N)``           ``δ = s (y_N − t) ⊙ f′(x_N)``
BP2   ``δ_n = δ_{n+1} w_n f′(x_n)``         ``δ_n = (δ_{n+1} @ W_n) ⊙ f′(x_n)`` (W_n not yet updated)
BP3   ``∂c/∂w_n = δ_{n+1} y_n``             ``δ_{n+1}ᵀ @ y_n``, ``Σ_rows δ_{n+1}``
UPD   ``Δw_n = −α δ_{n+1} y_n``             ``W_n.addmm_(δ_{n+1}.t(), y_n, alpha=−α)``
====  ====================================  ==============================================

``loss="cross_entropy"``: the network output ``y_N`` is taken as the logits (after the output
activation, exactly as ``cross_entropy(mlp(x), t)`` would see them, so use
``output_activation="identity"`` for the usual softmax classifier); BP1 becomes
``δ_N = s (softmax(y_N) − onehot(t)) ⊙ f′(x_N)`` (class probabilities ``q``: ``softmax(y_N) Σq − q``).

Data parallel: when ``torch.distributed`` is initialised, every process computes the *summed*
gradients ``Σ_i ∂c_i/∂W`` of its shard; one ``all_reduce(SUM)`` of a single flat buffer holding
them, the summed loss and the sample count gives the totals over all shards, which are divided by
the global count for ``'mean'`` (left as sums for ``'sum'``). So every process takes exactly the step
one process takes on the concatenated batch, for shards of any sizes, and returns that global loss.
Every process of the group must call :func:`sgd_step` together (it is a collective).

The package, along its seams: :mod:`~manual_bp.engine.step` (one step, and the checks),
:mod:`~manual_bp.engine.epoch` (a pass over a data set), :mod:`~manual_bp.engine.distributed` (the
step under ``torch.distributed``), :mod:`~manual_bp.engine.trace` (every δ, for inspection) and
:mod:`~manual_bp.engine.losses`. The FF/BP1/BP2/BP3 loop itself is
:func:`manual_bp.ops.network.backprop`, shared with the fused network.
"""

from __future__ import annotations

from manual_bp.engine.epoch import sgd_epoch
from manual_bp.engine.losses import LOSSES
from manual_bp.engine.step import sgd_step
from manual_bp.engine.trace import Trace, deltas

__all__ = ["LOSSES", "Trace", "deltas", "sgd_epoch", "sgd_step"]
