"""Data parallelism with what JAX already has: one 1-D mesh over the local devices.

Batches are split along it, parameters and optimizer state replicated. Every array that enters a jitted
step is placed with one of these shardings, so the steps see the same input shardings on every call
(no recompiles) whether there is one device or eight.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh() -> Mesh:
    return Mesh(np.asarray(jax.local_devices()), ("data",))


def batch_sharding(mesh: Mesh | None = None) -> NamedSharding:
    return NamedSharding(mesh or data_mesh(), PartitionSpec("data"))


def replicated(mesh: Mesh | None = None) -> NamedSharding:
    return NamedSharding(mesh or data_mesh(), PartitionSpec())


def maybe_initialize_distributed() -> bool:
    """Join a multi-host run when the usual coordinator variables are set (JAX_COORDINATOR_ADDRESS, or a
    cluster jax.distributed auto-detects such as SLURM / Open MPI). Single-host runs do nothing."""
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("JAXNETS_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False
