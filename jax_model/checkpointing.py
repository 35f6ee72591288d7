"""Training checkpoints with orbax: the whole train state every N steps and at the end, the last
K kept, restored bit-exactly so a resumed run continues the same losses.

Layout: `<output_dir>/checkpoints/<step>/` holding two orbax items, `state` (the `TrainState`
pytree: step, params, optimizer state) and `meta` (JSON: the model and train configs and the
data position).  Orbax writes each step into a temporary folder and renames it when complete,
so a process killed mid-save leaves only whole checkpoints behind.  These are for resuming;
the framework-neutral export is `spec.save_checkpoint` (safetensors) at the end of a run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` that knows our two items."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, asynchronous: bool = True
                 ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1 checkpoint, got {keep}")
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=asynchronous)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """Start writing `state` and `meta` for `step` (returns before the write finishes)."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta))
        self._manager.save(int(step), args=args, force=True)

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """Read `step` back into the structure, dtypes and shardings of `like`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                  meta=ocp.args.JsonRestore())
        restored = self._manager.restore(int(step), args=args)
        return restored.state, dict(restored.meta)

    def wait(self) -> None:
        """Block until every started save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
