"""The multi-process runtime: initialisation, barriers, gathers, broadcasts, process 0.

A single host needs none of it (every helper is a no-op or an identity with one
process); with several processes (TPU pod slices, SLURM, MPI, or
launch/cpu_multiprocess.sh) each collective here must be called by every process.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Optional, Sequence

import jax
import numpy as np

from t3d_jax.errors import InputError


def multiprocess_env() -> Optional[str]:
  """The multi-process launcher detected from the environment, or None."""
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS") and int(env.get("JAX_NUM_PROCESSES", "1")) > 1:
    return "JAX_COORDINATOR_ADDRESS"
  if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "megascale"
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "TPU_WORKER_HOSTNAMES"
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
    return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "openmpi"
  return None


def initialize_distributed(requested: bool = False, *, coordinator_address: str = "",
                           num_processes: int = 0, process_id: int = -1,
                           local_device_ids: Optional[Sequence[int]] = None) -> bool:
  """Call ``jax.distributed.initialize`` once, only when ``requested`` or when a
  multi-process launcher is detected; a plain single host is left untouched. Unset
  arguments fall back to JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID,
  then to jax's own cluster detection (TPU VM metadata, SLURM, Open MPI).
  Returns whether the distributed runtime is up."""
  if jax.distributed.is_initialized():
    return True
  detected = multiprocess_env()
  if not (requested or detected):
    return False
  env = os.environ
  kw: dict[str, Any] = {}
  addr = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS", "")
  n = num_processes or int(env.get("JAX_NUM_PROCESSES", "0") or 0)
  pid = process_id if process_id >= 0 else int(env.get("JAX_PROCESS_ID", "-1") or -1)
  if addr:
    kw["coordinator_address"] = addr
  if n:
    kw["num_processes"] = n
  if pid >= 0:
    kw["process_id"] = pid
  if local_device_ids is not None:
    kw["local_device_ids"] = list(local_device_ids)
  logging.info("jax.distributed.initialize(%s) (requested=%s, detected=%s)", kw, requested,
               detected)
  try:
    jax.distributed.initialize(**kw)
  except ValueError as e:
    raise InputError(
        f"jax.distributed.initialize failed: {str(e).rstrip('.')}. Outside a TPU pod / "
        "SLURM / MPI job set distributed.coordinator_address, num_processes and process_id "
        "(or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)") from e
  return True


def initialize_from_config(config) -> bool:
  d = config.get("distributed") or {}
  ids = d.get("local_device_ids", "")
  return initialize_distributed(
      bool(config.get("jax_distributed", False)),
      coordinator_address=d.get("coordinator_address", ""),
      num_processes=int(d.get("num_processes", 0)), process_id=int(d.get("process_id", -1)),
      local_device_ids=[int(i) for i in str(ids).split(",") if i.strip()] if ids else None)


def gather_to_host(tree):
  """Host numpy copies of (possibly multi-process) sharded arrays. With several
  processes this is a collective: every process must call it."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)


def allgather_host(x) -> np.ndarray:
  """[process_count, ...]: every process's host array ``x`` (same shape and dtype on
  all), stacked in process order. A collective: every process must call it."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x[None]
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=False))


def broadcast_from_main(value: int) -> int:
  """Process 0's ``value`` on every process (a collective: every process must call it)."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils
  return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


def is_main_process() -> bool:
  """Only process 0 writes logs and exports."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches this point (after process 0 wrote files the
  others read next); a no-op with one process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
