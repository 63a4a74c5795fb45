"""The errors ``manual-bp train`` reports in one line (``manual_bp.cli`` turns them into exit codes).

They live apart from the Lightning code, so that the command line can name them without importing it.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "SetupError", "TrainingDiverged"]


class CheckpointError(ValueError):
    """A checkpoint ``manual-bp train`` cannot resume from; the message names the file and the fault."""


class SetupError(ValueError):
    """``manual-bp train`` could not start: bad data, or a network that does not fit it."""


class TrainingDiverged(RuntimeError):
    """The training loss became non-finite; the message names the step and what to try."""
