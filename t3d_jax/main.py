"""The one entry point: python -m t3d_jax.main --config configs/X.py [--config.key=value ...].

Parses the config, initialises multi-host JAX when asked, and runs the stage ``config.mode``
names (t3d_jax/modes/registry.py) through the pipeline's guards.
"""
from __future__ import annotations

import contextlib
import difflib
import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from t3d_jax.errors import InputError, Interrupted
from t3d_jax.workdir import Workdir

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)


def run(config):
  """Runs ``config.mode`` as the CLI does (lock, record, guards); returns its Result."""
  from t3d_jax.modes import registry
  registry.get(config.mode)
  check_numerics(config)
  from t3d_jax.distributed import initialize_from_config
  initialize_from_config(config)  # only when jax_distributed or a multi-process env
  from t3d_jax.modes.pipeline import run_mode
  with workdir_lock(config):  # one run per workdir at a time
    recorded = record_config(config)
    result = run_mode(config)  # pipeline configs: the workdir guard and input checks around it
  if recorded:  # after the summary, so that an error stays the only line of a failed run
    print(f"[{config.mode}] config: {recorded}", file=sys.stderr, flush=True)
  return result


def check_numerics(config) -> None:
  """config.model's dtype / param_dtype / remat / attention, as one line each."""
  if "model" in config:
    from t3d_jax.models.numerics import Numerics
    Numerics.of(config.model)


def record_config(config) -> Path | None:
  """The resolved config of this run, in ``<workdir>/last_run_config.json`` (process 0);
  returns its path (None where it is not written)."""
  from t3d_jax import distributed
  layout = Workdir(config)
  if not layout.local or not distributed.is_main_process():
    return None
  from t3d_jax.data.jsonl import write_json_atomic
  return write_json_atomic(layout.last_config, config.to_dict())


@contextlib.contextmanager
def workdir_lock(config):
  """Process 0 holds ``<workdir>/.t3d_run.lock`` for the run; every process learns at
  once whether it got it (remote workdirs such as gs:// are not locked)."""
  layout = Workdir(config)
  if not layout.local:
    yield
    return
  from t3d_jax import distributed
  from t3d_jax.fileio import LockedError, exclusive_lock
  with contextlib.ExitStack() as stack:
    refused = None
    if distributed.is_main_process():
      try:
        stack.enter_context(exclusive_lock(layout.lock, f"workdir {config.workdir}"))
      except LockedError as e:
        refused = e
    if not distributed.broadcast_from_main(refused is None):
      raise refused or InputError(f"workdir {config.workdir} is in use by another run "
                                  "(process 0 could not take its lock)")
    yield


def parse_flags(argv):
  """absl's flag parsing, but a config file that does not load, a key it lacks or a value
  that does not parse is one line (exit 2) instead of a traceback."""
  try:
    rest = flags.FLAGS(argv)
    if _CONFIG.value is not None:  # the file loads lazily: load it here
      _CONFIG.value.get("mode")
    return rest
  except Exception as e:  # noqa: BLE001 -- every parse failure becomes one line
    if os.environ.get("T3D_TRACEBACK"):
      raise
    print(f"error: {flag_error(argv, e)}", file=sys.stderr)
    sys.exit(2)


def _config_arg(argv) -> str | None:
  for i, a in enumerate(argv[1:], start=1):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def flag_error(argv, err: Exception) -> str:
  """One line naming what is wrong with the command line."""
  arg = _config_arg(argv)
  if arg is None:
    return "--config=configs/<name>.py is required"
  path, _, cfg_arg = arg.partition(":")
  if not os.path.isfile(path):
    return f"--config={path}: no such file"
  try:
    from t3d_jax.config_base import config_module
    config = config_module(path).get_config(*([cfg_arg] if cfg_arg else []))
  except Exception as e:  # noqa: BLE001
    return f"--config={path}: the file does not load: {type(e).__name__}: {e}"
  for a in argv[1:]:
    if a.startswith("--config.") or a.startswith("--noconfig."):
      key = a.split("=", 1)[0].split("config.", 1)[1]
      problem = _key_problem(config, key)
      if problem:
        return f"--config.{key}: {problem}"
  return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _key_problem(config, key: str) -> str | None:
  node, done = config, []
  for part in key.split("."):
    if not hasattr(node, "keys"):
      return f"config key {'.'.join(done)} is a value, not a section"
    if part not in node:
      near = difflib.get_close_matches(part, list(node.keys()), n=1)
      where = ".".join(done + near)
      return f"no such config key{' (did you mean ' + where + '?)' if near else ''}"
    node, done = node[part], done + [part]
  return None


def _quiet_closed_loop(hook):
  """An unraisable-exception hook that drops "Event loop is closed" from asyncio
  callbacks (tensorstore writes finishing after a failed orbax save closed its loop:
  dozens of tracebacks before the run's one-line error); the rest goes to ``hook``."""
  def quiet(u):
    import traceback
    last = traceback.extract_tb(u.exc_traceback)[-1:] if u.exc_traceback else []
    if (u.exc_type is RuntimeError and str(u.exc_value) == "Event loop is closed" and last
        and last[0].filename.endswith(os.path.join("asyncio", "base_events.py"))):
      logging.info("dropped after a failed save: %s", u.exc_value)
      return
    hook(u)
  return quiet


def platforms_without_tpu(environ, libtpu_installed: bool, tpu_chips: int,
                          gpu_plugin: bool) -> str | None:
  """The JAX_PLATFORMS to set when libtpu is installed on a machine with no TPU chip (its
  probe prints ~5 lines of warnings on every run): "cpu", unless JAX_PLATFORMS is set or
  a GPU plugin is installed (then JAX picks, as always). None: leave JAX to choose."""
  if environ.get("JAX_PLATFORMS") or not libtpu_installed or tpu_chips or gpu_plugin:
    return None
  return "cpu"


def _skip_absent_tpu() -> None:
  from importlib.util import find_spec
  try:
    from jax._src import hardware_utils  # not public: any failure leaves JAX to choose
    chips = hardware_utils.num_available_tpu_chips_and_device_id()[0]
  except Exception:  # noqa: BLE001
    return
  gpu = any(find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm_plugin",
                                   "jax_rocm7_plugin"))
  value = platforms_without_tpu(os.environ, find_spec("libtpu") is not None, chips, gpu)
  if value:
    import jax
    jax.config.update("jax_platforms", value)  # jax read the environment at its import
    logging.info("libtpu is installed but this machine has no TPU chip: JAX_PLATFORMS=%s",
                 value)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config=configs/<name>.py is required")
  if not flags.FLAGS["verbosity"].present:  # quiet by default: INFO with --verbosity=0
    logging.set_verbosity(logging.WARNING)
    # orbax logs a failed background save as a storm of ERROR lines; the run reports it
    # as one line (CheckpointWriteError), the storm is there with --verbosity
    logging.get_absl_handler().addFilter(lambda r: "/orbax/" not in r.pathname)
    sys.unraisablehook = _quiet_closed_loop(sys.unraisablehook)
  _skip_absent_tpu()  # before JAX starts its backends
  logging.info("config:\n%s", _CONFIG.value)
  try:
    run(_CONFIG.value)
  except Interrupted as e:  # a signal: the state is saved, say where to resume
    print(f"stopped: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  except (InputError, OSError) as e:  # bad input, a failed write: one line, no traceback
    if os.environ.get("T3D_TRACEBACK"):
      raise
    print(f"error: {e}", file=sys.stderr, flush=True)
    from t3d_jax.checkpoint import CheckpointWriteError
    if isinstance(e, CheckpointWriteError):  # orbax's writer threads are still failing:
      sys.stdout.flush()                     # leave now, without their shutdown storm
      os._exit(2)
    sys.exit(2)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=parse_flags)
