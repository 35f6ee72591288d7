"""Stop a run at the first non-finite loss, with one message that names the step.

Trainers fetch losses from the device in batches (every `log_every` steps, before each
checkpoint), so `check_finite` scans a run of `(step, loss)` pairs and reports the first bad
one.  Checking before a checkpoint is written is what keeps the last checkpoint a good one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; `step` is the first optimizer step affected."""

    def __init__(self, step: int, value: float, last_checkpoint: int | None = None) -> None:
        self.step, self.value, self.last_checkpoint = step, value, last_checkpoint
        super().__init__(non_finite_message(step, value, last_checkpoint))


def non_finite_message(step: int, value: float, last_checkpoint: int | None = None) -> str:
    """The one wording every trainer uses, so logs and tests can rely on it."""
    if last_checkpoint is None:
        kept = "no checkpoint was written before it"
    else:
        kept = f"the last good checkpoint (step {last_checkpoint}) is kept; resume from it"
    return (f"training stopped: the loss is {value} at step {step} (non-finite); {kept}. "
            f"Lower the learning rate, lengthen the warm-up or enable gradient clipping.")


def check_finite(steps_and_losses: Iterable[tuple[int, float]],
                 last_checkpoint: int | None = None) -> None:
    """Raise NonFiniteLossError for the first pair whose loss is NaN or +-inf."""
    for step, value in steps_and_losses:
        if not math.isfinite(float(value)):
            raise NonFiniteLossError(int(step), float(value), last_checkpoint)
