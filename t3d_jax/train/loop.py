"""The training loop shared by the pretrain and distill modes.

Given a sharded train state, a jitted step and a function building the global batch of
update ``k``, it runs updates ``start..total`` with a tqdm bar, logs scalars to
TensorBoard (``<out>/tb``) and ``<out>/metrics.jsonl`` (process 0 only), saves orbax
checkpoints in ``<out>/checkpoints`` (state, optional reference, JSON meta with a
fingerprint of the run's settings) and resumes from the newest one: a rerun of the same
command continues where it stopped, bit-exactly (batches depend only on the update index).
A checkpoint written with other settings is refused, naming the keys that differ; with
``overwrite`` the run starts over (its checkpoints, metrics and TensorBoard logs go).
Metrics a killed run logged after its last checkpoint are dropped on resume.

Every update's metrics (loss, grad norm, ...) are checked for NaN/inf, one update late so
the device never waits for the host (and at once before anything is logged or saved):
the first non-finite value stops the run with :class:`DivergedError`, naming the update
and the metric, and nothing after the last good checkpoint is written.

With ``evaluate`` (pretrain's held-out accuracy) the loop measures the params every
``eval_every`` updates and at the end, logs the figures with the update's row, and stops
early once ``stop_when(figures)`` holds: a checkpoint at that update records the stop, and
rerunning the command returns that state without training further.

SIGTERM / SIGINT (:mod:`t3d_jax.train.preemption`): the update in flight finishes, a
checkpoint is saved at it (synchronously) and the run stops with
:class:`t3d_jax.errors.Interrupted`; rerunning the command resumes from there, equal to
an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from absl import logging
from tqdm import tqdm

from t3d_jax import checkpoint, distributed
from t3d_jax.data.jsonl import JsonlAppender, write_jsonl_atomic
from t3d_jax.errors import InputError, Interrupted
from t3d_jax.config_keys import as_json, differences
from t3d_jax.digests import fingerprint
from t3d_jax.train.preemption import StopRequests


class DivergedError(InputError):
  """A non-finite loss or gradient: the run stopped before writing anything from it."""


@jax.jit
def _nonfinite(metrics: dict):
  """Number of NaN/inf metric values (one device scalar; the step itself is untouched)."""
  return sum(jnp.sum(~jnp.isfinite(jnp.asarray(v, jnp.float32))) for v in metrics.values())


def schedule(n: int, section, name: str, data: str) -> tuple[int, int]:
  """(updates per epoch, total updates) for ``n`` examples and a config section with
  global_batch, micro_batch, max_steps and num_epochs (``name``: its key in the config)."""
  for key in ("global_batch", "micro_batch", "num_epochs"):
    if section[key] < 1:
      raise InputError(f"config {name}.{key}={section[key]}: must be >= 1")
  if section.max_steps < 0:
    raise InputError(f"config {name}.max_steps={section.max_steps}: must be >= 0 "
                     "(0 = num_epochs over the data)")
  if section.global_batch % section.micro_batch:
    raise InputError(f"config {name}.global_batch={section.global_batch} is not a multiple "
                     f"of {name}.micro_batch={section.micro_batch}")
  per_epoch = n // section.global_batch
  if per_epoch == 0:
    raise InputError(f"{data}: {n} examples, fewer than {name}.global_batch="
                     f"{section.global_batch}")
  return per_epoch, section.max_steps or per_epoch * section.num_epochs


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  name: str                   # tqdm / TensorBoard prefix: "pretrain", "distill"
  out: Path                   # checkpoints/, tb/, metrics.jsonl go here
  total: int                  # updates
  log_every: int = 1
  checkpoint_every: int = 50
  keep_checkpoints: int = 3
  async_checkpoint: bool = True
  round_interval: int = 0     # > 0: reference <- params every this many updates (self-play)
  data_every: int = 0         # > 0: on_data(done, state) every this many updates
  eval_every: int = 0         # > 0: evaluate(done, state) every this many updates and last
  overwrite: bool = False


def run(lc: LoopConfig, *, state, reference, step_fn: Callable, batch_fn: Callable,
        settings: dict, rng, refresh: Optional[Callable] = None,
        defaults: Optional[dict] = None,
        on_data: Optional[Callable[[int, Any], None]] = None,
        evaluate: Optional[Callable[[int, Any], dict]] = None,
        stop_when: Optional[Callable[[dict], bool]] = None,
        extra: Optional[Callable[[int], dict]] = None) -> Any:
  """Runs the updates and returns the final state.

  ``step_fn(state, reference, batch, rng) -> (state, metrics)``; ``batch_fn(k) -> (batch,
  info)`` gives update k's global batch and a dict of scalars to log with it;
  ``refresh(params) -> reference`` (new buffers) is called every ``lc.round_interval``
  updates; ``on_data(done, state)`` (new training data from the params, e.g. on-policy
  trajectories) is called before the first update with this run's start and after
  every ``lc.data_every`` updates but the last, once those are known finite and before
  their checkpoint; ``evaluate(done, state) -> figures`` every ``lc.eval_every`` updates
  and after the last (logged with that update's row; ``stop_when(figures)`` true stops
  the run there, recorded in its checkpoint); ``extra(done)`` adds keys to the checkpoint
  meta (data position, ...).
  ``defaults``: the library's values of the settings' config sections (distill, examples,
  loss, optim, ...: config_base.library_defaults): a key the checkpoints lack is the
  same run only at its default."""
  fp, settings = fingerprint(settings), as_json(settings)
  open_ckpt = lambda: checkpoint.TrainCheckpointer(  # noqa: E731
      lc.out / "checkpoints", keep=lc.keep_checkpoints, async_save=lc.async_checkpoint,
      with_reference=reference is not None)
  ckpt = open_ckpt()
  meta = ckpt.latest_meta()  # checked before any array is read (shapes may differ too)
  changed = meta is not None and meta.get("fingerprint") != fp and \
      _changed(meta, settings, defaults)
  if changed:
    ckpt.close()
    if not lc.overwrite:
      raise InputError(f"{lc.out / 'checkpoints'}: written by another run ("
                       f"{changed}); use another workdir, or "
                       "--config.overwrite=True to start over")
    start_over(lc.out)  # --config.overwrite: this run's outputs go, the run starts afresh
    ckpt, meta = open_ckpt(), None
  restored = ckpt.restore_latest(state, reference) if meta is not None else None
  if restored is not None:
    state, reference, _ = restored
    if meta.get("stopped_early"):  # it reached its target there: nothing left to train
      ckpt.close()
      logging.info("%s: stopped early at update %d before", lc.name, int(state.step))
      return state
    note = f"{lc.name}: resuming from step {int(state.step)}"
    if distributed.is_main_process():  # once on the terminal; the others with --verbosity
      print(note, file=sys.stderr, flush=True)
      _trim_metrics(lc.out / "metrics.jsonl", int(state.step))
    else:
      logging.info(note)
  main = distributed.is_main_process()  # only process 0 logs
  writer = None
  if main:
    from tensorboardX import SummaryWriter
    writer = SummaryWriter(str(lc.out / "tb"))
  start, t0 = int(state.step), time.time()
  rounds = lambda done: done // lc.round_interval if lc.round_interval else 0  # noqa: E731

  def check(done, bad, metrics):
    if int(bad):
      values = {k: float(v) for k, v in jax.device_get(metrics).items()}
      which = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
      ckpt.wait()
      last = ckpt.latest_step()
      kept = (f"the last good checkpoint is update {last} in {lc.out / 'checkpoints'}"
              if last is not None else "no checkpoint was written")
      raise DivergedError(f"{lc.name}: non-finite {which} at update {done}; stopped, "
                          f"{kept}, nothing else written (lower the learning rate?)")

  def save(done, **more):
    meta = dict(step=done, round=rounds(done), fingerprint=fp, settings=settings, **more)
    meta.update(extra(done) if extra else {})
    ckpt.save(done, state, reference, meta)

  pending = None  # (update, flag, metrics) of the previous update, checked one late
  try:
    with (JsonlAppender(lc.out / "metrics.jsonl") if main else contextlib.nullcontext()
          ) as rows, StopRequests() as stop:
      if on_data is not None:
        on_data(start, state)
      bar = tqdm(range(start, lc.total), initial=start, total=lc.total, desc=lc.name,
                 disable=not main)
      for step in bar:
        batch, info = batch_fn(step)
        state, metrics = step_fn(state, reference, batch, rng)
        ckpt.check()  # a background save that failed stops the run now, not a save later
        done = step + 1
        if pending is not None:
          check(*pending)
        pending = (done, _nonfinite(metrics), metrics)
        log = done % lc.log_every == 0 or done == lc.total
        due = done % lc.checkpoint_every == 0 or done == lc.total
        stopping = stop.requested(done)
        if log or due or stopping:  # values leave the device: this update must be finite
          check(*pending)
          pending = None
        if refresh is not None and lc.round_interval and done % lc.round_interval == 0:
          reference = refresh(state.params)
        if (on_data is not None and lc.data_every and done % lc.data_every == 0
            and done < lc.total):
          if pending is not None:
            check(*pending)
            pending = None
          on_data(done, state)
        figures, early = {}, False
        if evaluate is not None and lc.eval_every and (done % lc.eval_every == 0
                                                       or done == lc.total):
          if pending is not None:
            check(*pending)
            pending = None
          figures = evaluate(done, state)
          bar.set_postfix(figures, refresh=False)
          early = bool(stop_when and stop_when(figures)) and done < lc.total
        if log or figures:
          m = {k: float(v) for k, v in jax.device_get(metrics).items()}
          m.update(info, **figures, step=done, round=rounds(done),
                   elapsed_s=time.time() - t0)
          if writer is not None:
            for key, v in m.items():
              writer.add_scalar(f"{lc.name}/{key}", v, done)
            rows.write(m)
        if early:  # reached: this update is the run's last, on every later rerun too
          save(done, stopped_early=True, figures=figures)
          logging.info("%s: stopped early after update %d: %s", lc.name, done, figures)
          bar.close()
          break
        if due or stopping:
          save(done)
        if stopping and done < lc.total:
          ckpt.wait()  # on disk before the process goes
          raise Interrupted(f"{lc.name}: stopped by {stop.name} after update {done} of "
                            f"{lc.total}; checkpoint saved in {lc.out / 'checkpoints'}; "
                            "rerun the same command to resume", 128 + stop.signum)
  except checkpoint.CheckpointWriteError:
    raise  # no close: it would wait for the writes that are failing
  except BaseException:
    ckpt.close(failed=True)  # the error in flight is the one to report
    raise
  else:
    ckpt.close()
  finally:
    if writer is not None:
      writer.close()
  logging.info("%s: %d updates in %.1fs", lc.name, int(state.step) - start, time.time() - t0)
  return state


def _changed(meta: dict, settings: dict, defaults: Optional[dict] = None) -> str:
  """What differs between the checkpoints' recorded settings and this run's ('' when
  only keys added since differ and they hold their ``defaults``: the same run)."""
  if "settings" not in meta:  # written before checkpoints recorded their settings
    return "other data or settings: fingerprint differs"
  n, shown = differences(meta["settings"], settings, defaults=defaults)
  return f"{n} settings differ: {shown}" if n else ""


def start_over(out: Path) -> None:
  """Remove a run's checkpoints, metrics and TensorBoard logs (process 0; all wait)."""
  if distributed.is_main_process():
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    shutil.rmtree(out / "tb", ignore_errors=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
  distributed.barrier(f"{out}: started over")


def _trim_metrics(path: Path, step: int) -> None:
  """Drop the rows a killed run logged after its last checkpoint (they are redone)."""
  if path.is_file():
    lines = path.read_text().splitlines(keepends=True)
    rows = [json.loads(x) for x in lines if x.endswith("\n") and x.strip()]  # not a torn one
    keep = [r for r in rows if r.get("step", 0) <= step]
    if len(keep) < len(lines):
      write_jsonl_atomic(path, keep)


def last_metrics(out: Path) -> dict:
  """The last row of ``<out>/metrics.jsonl`` ({} when there is none)."""
  path = Path(out) / "metrics.jsonl"
  if not path.is_file():
    return {}
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  return json.loads(lines[-1]) if lines else {}
