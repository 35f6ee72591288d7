"""Stop a run at the first non-finite loss (or gradient norm), with one message naming the step.

Trainers fetch losses from the device in batches (every `log_every` steps, before each
checkpoint), so `check_finite` scans a run of `(step, value)` pairs and reports the first bad
one.  Checking before a checkpoint is written is what keeps the last checkpoint a good one.
Check the gradient norm too where the trainer has it: a finite loss with NaN gradients still
writes NaN into the weights, and a checkpoint of those weights is not a good one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


class NonFiniteLossError(FloatingPointError):
    """The training loss (or `what`) became NaN or infinite at optimizer step `step`."""

    def __init__(self, step: int, value: float, last_checkpoint: int | None = None,
                 what: str = "loss") -> None:
        self.step, self.value, self.last_checkpoint, self.what = step, value, last_checkpoint, what
        super().__init__(non_finite_message(step, value, last_checkpoint, what))


def non_finite_message(step: int, value: float, last_checkpoint: int | None = None,
                       what: str = "loss") -> str:
    """The one wording every trainer uses, so logs and tests can rely on it."""
    if last_checkpoint is None:
        kept = "no checkpoint was written before it"
    else:
        kept = f"the last good checkpoint (step {last_checkpoint}) is kept; resume from it"
    return (f"training stopped: the {what} is {value} at step {step} (non-finite); {kept}. "
            f"Lower the learning rate, lengthen the warm-up or enable gradient clipping.")


def check_finite(steps_and_values: Iterable[tuple[int, float]],
                 last_checkpoint: int | None = None, what: str = "loss") -> None:
    """Raise NonFiniteLossError for the first pair whose value is NaN or +-inf."""
    for step, value in steps_and_values:
        if not math.isfinite(float(value)):
            raise NonFiniteLossError(int(step), float(value), last_checkpoint, what)
