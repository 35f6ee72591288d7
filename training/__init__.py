"""What every trainer shares, framework-free (numpy only): the training loop (`training.loop`:
steps, logging, checkpoints, resuming), metrics logging, the non-finite loss guard, the
`internals_step_<N>.npz` writer, the step-to-batch plan and evaluation (`training.eval_pass`).

The JAX trainer (`jax_model.train`), the plain torch loop and the HF Trainer all use these, so
their output folders look the same: `metrics.jsonl`, optional `tensorboard/`, `internals_step_
<N>.npz`, and the same error message when the loss stops being finite.
"""

from .evaluation import EvalAccumulator, eval_groups
from .guard import NonFiniteLossError, check_finite, non_finite_message
from .internals import INPUT_PREFIX, internals_path, list_internals, load_internals, save_internals
from .logger import MetricsLogger, read_metrics
from .run import (
    RESUMABLE_CHANGES,
    ResumeError,
    check_resume,
    check_task,
    data_identity,
    probe_batch,
    save_tokenizers,
)

__all__ = [
    "EvalAccumulator", "INPUT_PREFIX", "MetricsLogger", "NonFiniteLossError", "RESUMABLE_CHANGES",
    "ResumeError", "check_finite", "data_identity", "check_resume", "eval_groups", "check_task", "probe_batch", "save_tokenizers",
    "internals_path", "list_internals", "load_internals", "non_finite_message", "read_metrics",
    "save_internals",
]
