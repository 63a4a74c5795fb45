"""Lightning integration: the LightningModule, DataModules, callbacks and ``manual-bp train``.

>>> from manual_bp.lightning import DigitsDataModule, ManualBPModule
>>> import lightning.pytorch as pl
>>> trainer = pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False)  # doctest: +SKIP
>>> trainer.fit(ManualBPModule(sizes=[64, 64, 10]), DigitsDataModule())  # doctest: +SKIP
"""

from manual_bp.lightning.callbacks import (
    FeedbackAlignment,
    GradientCheck,
    GradientCheckError,
    GradientFlow,
    compare_gradients,
)
from manual_bp.lightning.data import (
    ArrayDataModule,
    DigitsDataModule,
    FileDataModule,
    TeacherRegressionDataModule,
)
from manual_bp.lightning.module import ManualBPModule, native_twin

__all__ = [
    "ArrayDataModule",
    "DigitsDataModule",
    "FileDataModule",
    "GradientCheck",
    "GradientCheckError",
    "FeedbackAlignment",
    "GradientFlow",
    "ManualBPModule",
    "TeacherRegressionDataModule",
    "compare_gradients",
    "native_twin",
]
