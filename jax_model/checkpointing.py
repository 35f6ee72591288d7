"""Training checkpoints with orbax: the whole train state every N steps and at the end, the last
K kept, restored bit-exactly so a resumed run continues the same losses.

Layout: `<output_dir>/checkpoints/<step>/` holding two orbax items, `state` (the `TrainState`
pytree: step, params, optimizer state) and `meta` (JSON: the model and train configs and the
data identity).  Orbax writes each step into a temporary folder and renames it when complete,
so a process killed mid-save leaves only whole checkpoints behind; a checkpoint damaged
afterwards fails `restore`, and `training.loop` falls back to the previous one.  These are for
resuming; the framework-neutral export is `spec.save_checkpoint` (safetensors) at the end.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """A thin wrapper over `ocp.CheckpointManager` that knows our two items.  It keeps every
    checkpoint it writes: `training.loop` decides which to delete (`keep_checkpoints`)."""

    def __init__(self, directory: str | os.PathLike, asynchronous: bool = True) -> None:
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True,
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

    def read_meta(self, step: int) -> dict[str, Any]:
        """Only the `meta` item of `step` (the configs), without touching the arrays."""
        restored = self._manager.restore(int(step),
                                         args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def restore(self, step: int, like: Any) -> tuple[Any, dict[str, Any]]:
        """Read `step` back into the structure, dtypes and shardings of `like`."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                  meta=ocp.args.JsonRestore())
        restored = self._manager.restore(int(step), args=args)
        return restored.state, dict(restored.meta)

    def delete(self, step: int) -> None:
        self._manager.delete(int(step))

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
