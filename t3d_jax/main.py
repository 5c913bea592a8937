"""The one entry point: python -m t3d_jax.main --config configs/X.py [--config.key=value ...].

Parses the config, initialises multi-host JAX when asked, and dispatches ``config.mode``
to ``t3d_jax.modes.<mode>.run(config)``.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from t3d_jax.errors import InputError, Interrupted

MODES = ("convert", "export", "task", "pretrain", "rollout", "distill", "eval", "pipeline")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)


def run(config) -> None:
  if config.mode not in MODES:
    raise InputError(f"config.mode={config.mode!r} is not one of {', '.join(MODES)}")
  from t3d_jax.distributed import initialize_from_config
  initialize_from_config(config)  # only when jax_distributed or a multi-process env
  from t3d_jax.modes.pipeline import guard
  with workdir_lock(config):  # one run per workdir at a time
    record_config(config)
    guard(config)  # configs with pipeline stages: same-config workdir, inputs present
    importlib.import_module(f"t3d_jax.modes.{config.mode}").run(config)


def _local_workdir(config) -> bool:
  """A workdir on this machine's filesystem (not empty, not a gs:// style URL)."""
  return bool(config.workdir) and "://" not in str(config.workdir)


def record_config(config) -> None:
  """The resolved config of this run, in ``<workdir>/last_run_config.json`` (process 0;
  the terminal shows only the path)."""
  from t3d_jax import distributed
  if not _local_workdir(config) or not distributed.is_main_process():
    return
  from t3d_jax.data.jsonl import write_json_atomic
  path = write_json_atomic(Path(config.workdir) / "last_run_config.json", config.to_dict())
  print(f"[{config.mode}] config: {path}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def workdir_lock(config):
  """Process 0 holds ``<workdir>/.t3d_run.lock`` for the run; every process learns at
  once whether it got it (remote workdirs such as gs:// are not locked)."""
  if not _local_workdir(config):
    yield
    return
  from t3d_jax import distributed
  from t3d_jax.fileio import LockedError, exclusive_lock
  with contextlib.ExitStack() as stack:
    refused = None
    if distributed.is_main_process():
      try:
        stack.enter_context(exclusive_lock(Path(config.workdir) / ".t3d_run.lock",
                                           f"workdir {config.workdir}"))
      except LockedError as e:
        refused = e
    if not distributed.broadcast_from_main(refused is None):
      raise refused or InputError(f"workdir {config.workdir} is in use by another run "
                                  "(process 0 could not take its lock)")
    yield


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config=configs/<name>.py is required")
  if not flags.FLAGS["verbosity"].present:  # quiet by default: INFO with --verbosity=0
    logging.set_verbosity(logging.WARNING)
  logging.info("config:\n%s", _CONFIG.value)
  try:
    run(_CONFIG.value)
  except Interrupted as e:  # a signal: the state is saved, say where to resume
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  except (InputError, FileNotFoundError) as e:  # bad input: one clear line, no traceback
    if os.environ.get("T3D_TRACEBACK"):
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
