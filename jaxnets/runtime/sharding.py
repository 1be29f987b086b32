"""Data parallelism with what JAX already has: one 1-D mesh over every device of every process.

Batches are split along it, parameters and optimizer state replicated. Every array that enters a jitted
step is placed with one of these shardings, so the steps see the same input shardings on every call
(no recompiles) whether there is one device or eight. Several processes (hosts) join with JAX's own
multi-controller runtime (`jax.distributed`, gloo collectives on CPU): each process feeds the rows of each
global batch that its devices hold, and only process 0 writes files.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh() -> Mesh:
    """The devices of all processes (one process: its local devices), in JAX's global order."""
    return Mesh(np.asarray(jax.devices()), ("data",))


def is_primary() -> bool:
    """Process 0: the one that writes the run's files (every process computes the same values)."""
    return jax.process_index() == 0


def multi_process() -> bool:
    return jax.process_count() > 1


def barrier(name: str) -> None:
    """Wait until every process reaches `name` (nothing to wait for with one process)."""
    if multi_process():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather_json(value) -> list:
    """`value` (anything JSON) of every process, in process order; with one process, [value]."""
    import json

    if not multi_process():
        return [value]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value, sort_keys=True, default=str).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes, strict=True)]


def check_same_everywhere(what: str, value) -> None:
    """Every process must have been started with the same `value` (the run's options, its data): one that
    differs would deadlock in a collective or crash inside gloo, so it is refused on every process at once."""
    values = gather_json(value)
    differ = [i for i, v in enumerate(values) if v != values[0]]
    if differ:
        first = values[differ[0]]
        keys = sorted(k for k in set(values[0]) | set(first) if values[0].get(k) != first.get(k)) if isinstance(
            first, dict) and isinstance(values[0], dict) else []
        detail = "; ".join(f"{k}: {values[0].get(k)!r} on process 0, {first.get(k)!r} on process {differ[0]}"
                           for k in keys[:4])
        raise ValueError(f"the processes of this run differ in {what}{f' ({detail})' if detail else ''}: start "
                         "every process with the same command, only --process-id changing")


def local_rows(sharding: NamedSharding, batch_size: int) -> slice:
    """The rows of a global batch whose shards live on this process's devices (contiguous along the mesh)."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map((batch_size,)).values():
        rows = index[0]
        starts.append(rows.start or 0)
        stops.append(batch_size if rows.stop is None else rows.stop)
    lo, hi = min(starts), max(stops)
    if hi - lo != batch_size // jax.process_count():
        raise ValueError(f"this process's devices do not hold one contiguous share of a batch of {batch_size}")
    return slice(lo, hi)


def batch_sharding(mesh: Mesh | None = None) -> NamedSharding:
    return NamedSharding(mesh or data_mesh(), PartitionSpec("data"))


def replicated(mesh: Mesh | None = None) -> NamedSharding:
    return NamedSharding(mesh or data_mesh(), PartitionSpec())


def _cluster_detected() -> bool:
    """An environment JAX's own detection reads, describing more than one process."""
    def many(name: str) -> bool:
        value = os.environ.get(name, "1").strip()
        return value.isdecimal() and int(value) > 1

    return (bool(os.environ.get("JAX_COORDINATOR_ADDRESS")) or os.environ.get("JAXNETS_DISTRIBUTED") == "1"
            or (bool(os.environ.get("SLURM_JOB_ID")) and many("SLURM_NTASKS"))
            or many("OMPI_COMM_WORLD_SIZE") or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""))


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, heartbeat_timeout_s: int = 30) -> bool:
    """Join a multi-process run: with the three arguments of `jax.distributed.initialize` when given, else by JAX's
    own detection when its environment is there (Slurm, Open MPI, Cloud TPU, JAX_COORDINATOR_ADDRESS, or
    JAXNETS_DISTRIBUTED=1). Returns whether a multi-process runtime was started; a single run does nothing.
    CPU collectives go through gloo, so it runs on CPU-only machines; a process that stops answering is declared
    dead after `heartbeat_timeout_s`, so the others stop instead of waiting for ever."""
    given = [coordinator, num_processes, process_id]
    if any(v is not None for v in given) and not all(v is not None for v in given):
        raise ValueError("--coordinator, --num-processes and --process-id go together (or none of them, to let JAX "
                         "detect the cluster)")
    if coordinator is None and not _cluster_detected():
        return False
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} is not one of the {num_processes} processes "
                         f"(0 … {num_processes - 1})")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id, heartbeat_timeout_seconds=heartbeat_timeout_s)
    return True


def maybe_initialize_distributed() -> bool:
    """`initialize_distributed()` from the environment alone (kept for the Python API of earlier releases)."""
    return initialize_distributed()
