"""Training hyperparameters and the learning-rate schedule, shared by every framework.

JAX (optax), the plain torch loop and the HF Trainer all read one `TrainConfig`, so "the same
command" means the same optimisation in each.  Model hyperparameters stay in
`TransformerConfig`; this holds only how to train it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

SCHEDULES = ("noam", "constant")
MIXED_PRECISION = ("none", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train.  Adam defaults are the paper's (beta2 0.98, eps 1e-9).

    `schedule="noam"`: lr(step) = learning_rate * d_model^-0.5 * min(step^-0.5,
    step * warmup_steps^-1.5) (the paper, with `learning_rate` as a multiplier);
    `schedule="constant"`: a linear warm-up over `warmup_steps` to `learning_rate`, then flat.
    `cooldown_steps > 0` (needs `max_steps`) scales either schedule by a linear ramp down to
    zero over the last `cooldown_steps` updates (the final update gets 1/cooldown_steps of it):
    a short run then ends at a small learning rate, where noam alone would still be near its
    peak and the last steps' noise would decide the result.
    Steps count optimizer updates (after gradient accumulation), starting at 1.
    `clip_norm=0` disables gradient clipping.  `track_internals_every=0` disables capture.
    `checkpoint_every=0` disables periodic checkpoints; `keep_checkpoints` >= 1 (0 kept none
    in one trainer, all in another).  Float fields must be finite.
    """

    learning_rate: float = 1.0
    schedule: str = "noam"
    warmup_steps: int = 4000
    cooldown_steps: int = 0
    adam_b1: float = 0.9
    adam_b2: float = 0.98
    adam_eps: float = 1e-9
    label_smoothing: float = 0.1
    batch_size: int = 32
    epochs: int = 1
    max_steps: int = 0
    grad_accum_steps: int = 1
    clip_norm: float = 1.0
    mixed_precision: str = "none"
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    track_internals_every: int = 0
    gradient_checkpointing: bool = False  # recompute each layer in the backward (less memory)

    def __post_init__(self) -> None:
        def fail(field: str, expected: str) -> None:
            raise ValueError(f"train config field {field}={getattr(self, field)!r} is invalid: "
                             f"expected {expected}")

        for name in ("learning_rate", "adam_b1", "adam_b2", "adam_eps", "label_smoothing",
                     "clip_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                fail(name, "a number")
            if not math.isfinite(value):
                fail(name, "a finite number")
        for name in INT_FIELDS:
            if isinstance(getattr(self, name), bool):
                fail(name, "an integer, not a boolean")
        if not isinstance(self.gradient_checkpointing, bool):
            fail("gradient_checkpointing", "true or false")
        if self.schedule not in SCHEDULES:
            fail("schedule", f"one of {SCHEDULES}")
        if self.mixed_precision not in MIXED_PRECISION:
            fail("mixed_precision", f"one of {MIXED_PRECISION}")
        if not self.learning_rate > 0:
            fail("learning_rate", "a positive number")
        for name in ("batch_size", "grad_accum_steps", "epochs", "keep_checkpoints"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail(name, "an integer >= 1")
        for name in ("warmup_steps", "cooldown_steps", "max_steps", "log_every", "eval_every",
                     "checkpoint_every", "track_internals_every", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                fail(name, "an integer >= 0")
        if self.cooldown_steps > 0 and not 0 < self.cooldown_steps <= self.max_steps:
            fail("cooldown_steps", f"0, or at most max_steps={self.max_steps} (a cool-down ends "
                                   f"at the last step, so the run needs max_steps > 0)")
        if not 0.0 <= self.label_smoothing < 1.0:
            fail("label_smoothing", "a value in [0, 1)")
        if not (0.0 <= self.adam_b1 < 1.0 and 0.0 <= self.adam_b2 < 1.0):
            fail("adam_b1" if not 0.0 <= self.adam_b1 < 1.0 else "adam_b2", "a value in [0, 1)")
        if not self.adam_eps > 0:
            fail("adam_eps", "a positive number")
        if self.clip_norm < 0:
            fail("clip_norm", "a number >= 0 (0 disables clipping)")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise ValueError(f"train config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown train config field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


INT_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.type == "int")


def learning_rate(step, train: TrainConfig, d_model: int, xp: Any = math):
    """The learning rate at optimizer step `step` (1-based).

    `xp` supplies `minimum` and `maximum` (for `math`, the builtins), so the same formula serves
    numpy, `math`, `jax.numpy` (inside an optax schedule) and torch's LambdaLR.  Step 0 is
    treated as step 1.
    """
    minimum = xp.minimum if hasattr(xp, "minimum") else min
    maximum = xp.maximum if hasattr(xp, "maximum") else max
    step = maximum(step, 1)
    warmup = max(train.warmup_steps, 1)
    if train.schedule == "noam":
        lr = train.learning_rate * d_model ** -0.5 * minimum(step ** -0.5, step * warmup ** -1.5)
    else:
        lr = train.learning_rate * minimum(step / warmup, 1.0)
    if train.cooldown_steps:
        left = (train.max_steps + 1 - step) / train.cooldown_steps  # 1 at the ramp's top
        lr = lr * maximum(minimum(left, 1.0), 0.0)
    return lr
