r"""manual_bp: backpropagation written out by hand, as the classic derivation states it.

Notation (used throughout the package). The seed derives, for layers ``n = 1..N``:

====  ===========================================  =========================================
step  seed (column vectors)                        code (row-major batches, ``torch.nn``)
====  ===========================================  =========================================
FF    ``y_n = f(x_n)``, ``x_{n+1} = w_n y_n + b``  ``X_{n+1} = Y_n Wᵀ + b``
LOSS  ``c = ½ (y_N − t)²``                          ``½ Σ_j (Y_N − T)²`` per row
BP1   ``δ_N = (y_N − t) ⊙ f′(x_N)``                 ``Δ_N = (Y_N − T) ⊙ f′(X_N)``
BP2   ``δ_n = f′(x_n) ⊙ (w_nᵀ δ_{n+1})``            ``Δ_n = (Δ_{n+1} W) ⊙ f′(X_n)``
BP3   ``∂c/∂w_n = δ_{n+1} y_nᵀ``                    ``∂c/∂W = Δ_{n+1}ᵀ Y_n``, ``∂c/∂b = Σ_rows Δ``
UPD   ``Δw_n = −α ∂c/∂w_n``                         ``W -= α ∂c/∂W``
====  ===========================================  =========================================

A batch is ``(N, D)`` (layers accept any ``(*, D)``), ``W`` is ``(D_out, D_in)`` as in
``torch.nn.Linear``, ``x`` is a pre-activation, ``y = f(x)`` an activation and ``δ = ∂c/∂x``.
"""

from manual_bp import check as check
from manual_bp import engine as engine
from manual_bp import functional as functional
from manual_bp import modules as modules
from manual_bp import ops as ops
from manual_bp.convert import conversion_report as conversion_report
from manual_bp.convert import convert as convert
from manual_bp.convert import native_twin as native_twin
from manual_bp.convert import revert as revert
from manual_bp.coverage import coverage as coverage
from manual_bp.mlp import MLP as MLP
from manual_bp.modules import *  # noqa: F403 (the drop-in layers, from the op registry)
from manual_bp.routing import functional_mode as functional_mode

__version__ = "0.1.0"

__all__ = sorted(
    [
        *modules.__all__,
        "MLP",
        "__version__",
        "check",
        "conversion_report",
        "convert",
        "coverage",
        "engine",
        "functional",
        "functional_mode",
        "native_twin",
        "ops",
        "revert",
    ]
)
