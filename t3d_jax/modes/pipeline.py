"""pipeline mode: run ``config.pipeline.stages`` (modes) in order in one workdir.

    python -m t3d_jax.main --config configs/demo.py       # task, pretrain, rollout, distill, eval
    python -m t3d_jax.main --config configs/demo.py --config.mode=rollout   # one stage alone

Each stage is the mode of the same name, run on this config; every mode resumes or skips
what it finished before, so rerunning the pipeline after an interruption continues where
it stopped. Stage wall times go to ``<workdir>/pipeline.json``.

Two guards apply to every mode run with a config that names pipeline stages:

* the first run records the config in ``<workdir>/t3d_config.json``; a later run whose
  config differs (other than mode / overwrite / force / multi-host keys) is refused,
  naming the differing keys, unless ``--config.force=True`` (then the record is replaced);
  a first run that fails before writing any output leaves no record;
* a stage whose input is missing names the earlier mode that writes it.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import time
from pathlib import Path

import jax

from t3d_jax.data.jsonl import write_json_atomic
from t3d_jax.distributed import barrier
from t3d_jax.errors import InputError, Interrupted
from t3d_jax.settings import as_json, differences, expand, model_dir

STAGES = ("task", "tokenizer", "pretrain", "rollout", "distill", "eval", "export")
RUNTIME_KEYS = ("mode", "workdir", "overwrite", "force", "jax_distributed", "distributed")
RECORD = "t3d_config.json"


def identity(config) -> dict:
  """The config as JSON values, without the keys that may change between runs."""
  d = as_json(config.to_dict())
  for k in RUNTIME_KEYS:
    d.pop(k, None)
  return d


def check_workdir(config) -> bool:
  """Refuses a workdir set up by a different config (unless ``config.force``); returns
  whether this run wrote the record first."""
  work = Path(config.workdir)
  record = work / RECORD
  now = identity(config)
  first = not record.is_file()
  if not first:
    old = json.loads(record.read_text())
    if old == now:
      return False
    if not config.force:
      n, shown = differences(old, now)
      raise InputError(f"{work} was set up by a different config ({n} keys differ: "
                       f"{shown}); use another --config.workdir or --config.force=True")
  if jax.process_index() == 0:
    write_json_atomic(record, now)
  return first


def _outputs(config) -> dict:
  """What each stage writes (paths checked when a later stage needs them)."""
  work = Path(config.workdir)
  d = config.distill
  return {"task": [work / "task", work / "tokenizer"], "tokenizer": [work / "tokenizer"],
          "pretrain": [Path(model_dir(config))],
          "rollout": [Path(expand(config.rollout.output, config)) if config.rollout.output
                      else work / "trajectories.jsonl"],
          "distill": [Path(expand(d.student_dir, config)) if d.student_dir
                      else work / "student"]}


def _inputs(config, stage: str) -> list[Path]:
  data = lambda s: [Path(expand(s, config))] if "{workdir}" in s else []  # noqa: E731
  if stage == "pretrain":
    return data(config.pretrain.data) + ([Path(expand(config.pretrain.init, config))]
                                         if config.pretrain.init else [])
  if stage == "rollout":
    return [Path(model_dir(config))] + data(config.rollout.data)
  if stage == "distill":
    return [Path(model_dir(config))] + [Path(expand(config.distill.data, config))]
  if stage == "eval":
    paths = [Path(expand(e.partition("=")[2] or e, config)) for e in config.eval.models]
    return (paths or [Path(model_dir(config))]) + data(config.eval.data)
  if stage == "export":
    return [Path(model_dir(config))]
  return []


def check_inputs(config, stage: str) -> None:
  """A missing input of ``stage`` names the mode (of this pipeline) that writes it."""
  outputs = _outputs(config)
  for path in _inputs(config, stage):
    if path.exists():
      continue
    writer = next((s for s, outs in outputs.items()
                   if any(path == o or o in path.parents for o in outs)), None)
    hint = (f"run --config.mode={writer} first" if writer
            else "no stage of this pipeline writes it; check the config")
    raise InputError(f"{stage}: {path} does not exist: {hint}")


# what the CLI itself keeps in a workdir: not a stage's output
BOOKKEEPING = (RECORD, "last_run_config.json", ".t3d_run.lock")


def _outputs_present(work: Path) -> set:
  """Top-level entries of ``work`` that hold a file (empty dirs do not count)."""
  if not work.is_dir():
    return set()
  return {p.name for p in work.iterdir() if p.name not in BOOKKEEPING
          and (p.is_file() or any(f.is_file() for f in p.rglob("*")))}


@contextlib.contextmanager
def guarded(config):
  """Both guards around a mode run with a pipeline config (used by t3d_jax.main). A run
  that fails before writing any output does not keep the record it wrote, so the
  corrected command is not refused as "a different config"."""
  if not config.pipeline.stages or not config.workdir:
    yield
    return
  work = Path(config.workdir)
  before = _outputs_present(work)
  first = check_workdir(config)
  try:
    if config.mode != "pipeline":
      check_inputs(config, config.mode)
    yield
  except Exception as e:  # a signal (Interrupted) saved state: that run keeps the record
    if (first and not isinstance(e, Interrupted) and jax.process_index() == 0
        and _outputs_present(work) <= before):
      (work / RECORD).unlink(missing_ok=True)
    raise


def run(config) -> None:
  stages = list(config.pipeline.stages)
  if not stages:
    raise InputError("config pipeline.stages is empty: name the modes to run, e.g. "
                     "('task', 'pretrain', 'rollout', 'distill', 'eval')")
  for s in stages:
    if s not in STAGES:
      raise InputError(f"config pipeline.stages: {s!r} is not one of {', '.join(STAGES)}")
  if not config.workdir:
    raise InputError("pipeline mode needs --config.workdir")
  work = Path(config.workdir)
  main = jax.process_index() == 0
  times: dict[str, float] = {}
  t_all = time.time()
  for i, s in enumerate(stages):
    if main:
      print(f"[pipeline] stage {i + 1}/{len(stages)}: {s}", flush=True)
    sub = config.copy_and_resolve_references()
    sub.mode = s
    check_inputs(sub, s)
    t0 = time.time()
    importlib.import_module(f"t3d_jax.modes.{s}").run(sub)
    barrier(f"pipeline: {s} done")  # process 0's files are complete for the next stage
    times[s] = round(time.time() - t0, 1)
    if main:
      write_json_atomic(work / "pipeline.json", dict(stages=times, total_s=round(
          time.time() - t_all, 1)))
  total = time.time() - t_all
  if main:
    print("[pipeline] stage times: " + ", ".join(f"{s} {t:.0f}s" for s, t in times.items())
          + f"; total {total:.0f}s (this run; finished stages are skipped or resumed)",
          flush=True)
