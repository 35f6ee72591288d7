"""Data parallelism over every device: a one-axis `Mesh` named "data", parameters and optimizer
state replicated, each batch split along its batch axis.

With `jit` and `NamedSharding`, XLA partitions the train step itself (GSPMD): every device runs
the forward and backward on its slice of the batch, and the mean loss and the gradients are
all-reduced where the program sums over the batch axis.  Nothing here is specific to one host.

Multi-host runs (several processes, e.g. one per GPU host or TPU VM): call
`jax.distributed.initialize()` first thing in every process, before any other JAX call (on
Cloud TPU and SLURM it finds the coordinator itself; elsewhere pass `coordinator_address`,
`num_processes` and `process_id`).  `jax.devices()` then lists the devices of all hosts, so
`make_mesh()` spans them, and `shard_batch` builds each global array from the slices this
process owns: every process computes the same global batch (the data order depends only on the
seed) and hands over the rows its devices hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis "data" over `devices` (default: every device of every host)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must name at least one device, got an empty list")
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, scalars)."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 0) -> NamedSharding:
    """Split axis `batch_axis` over "data"; the other axes are whole on each device."""
    return NamedSharding(mesh, P(*([None] * batch_axis), DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    n = mesh.shape[DATA_AXIS]
    if batch_size % n:
        raise ValueError(f"batch_size={batch_size} is not divisible by the {n} devices of the "
                         f"'{DATA_AXIS}' mesh axis: use a multiple of {n}")


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf of `tree` on all devices of `mesh`."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh, batch_axis: int = 0
                ) -> dict[str, jax.Array]:
    """Global numpy batch -> global jax arrays split along `batch_axis` over the mesh.

    Each process only copies the rows its own devices hold (`make_array_from_callback`), so
    the same call works on one host and on many.
    """
    sharding = batch_sharding(mesh, batch_axis)
    out = {}
    for name, value in batch.items():
        value = np.asarray(value)
        check_batch_size(value.shape[batch_axis], mesh)
        out[name] = jax.make_array_from_callback(value.shape, sharding,
                                                 lambda index, v=value: v[index])
    return out
