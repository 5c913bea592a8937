"""pipeline mode: run ``config.pipeline.stages`` (modes) in order in one workdir.

    python -m t3d_jax.main --config configs/demo.py       # task, pretrain, rollout, distill, eval
    python -m t3d_jax.main --config configs/demo.py --config.mode=rollout   # one stage alone

Each stage is the mode of the same name, run on this config; every mode resumes or skips
what it finished before, so rerunning the pipeline after an interruption continues where
it stopped. Stage wall times go to ``<workdir>/pipeline.json``.

Two guards apply to every mode run with a config that names pipeline stages:

* each stage that finishes records the config keys that determine its result (its
  ``Stage.keys``: its own section and what it reads, without logging keys, nor the keys
  that only choose which models and settings eval computes) in ``<workdir>/t3d_config.json``;
  running that stage again with different values for them is refused, naming the keys,
  unless ``--config.force=True`` (then the record is replaced). Keys of other stages never
  matter, and a run that fails records nothing, so the corrected command is not refused;
* a stage whose input is missing names the earlier mode that writes it (each stage
  declares its inputs and outputs through the workdir layout).

The distill stage runs once per ``pipeline.variants`` entry (each a named run, see
t3d_jax/modes/distill.py), or once as ``distill.name``.
"""
from __future__ import annotations

import json
import time

from t3d_jax.config_base import library_defaults
from t3d_jax.config_keys import apply_overrides, as_json, differences, flatten
from t3d_jax.data.jsonl import write_json_atomic
from t3d_jax.distributed import barrier, is_main_process
from t3d_jax.errors import InputError
from t3d_jax.modes.stage import Result, Stage
from t3d_jax.train.recipe import LOGGING_KEYS
from t3d_jax.workdir import Workdir, resolve_paths

NOT_RESULT = LOGGING_KEYS + ("plot_trajectories", "chunk_prompts", "name",
                             "min_teacher_accuracy",  # checks on the result, not its cause
                             "allow_unsandboxed")
# keys that choose which results eval computes, not how (each (model, setting) result is
# keyed on its own settings): evaluating one more model or setting is not another config
SELECTS = ("eval.models", "eval.tokens_per_forward", "eval.strategies", "eval.thresholds",
           "eval.output_dir")


def _view(flat: dict, keys: tuple[str, ...]) -> dict:
  return {k: v for k, v in flat.items()
          if any(k == p or k.startswith(p + ".") for p in keys)
          and k.rpartition(".")[2] not in NOT_RESULT and k not in SELECTS}


def stage_view(config, stage: Stage) -> dict:
  """The dotted keys of ``stage.result_keys(config)`` with their (JSON) values."""
  return _view(flatten(as_json(config.to_dict())), stage.result_keys(config))


def _read_record(layout: Workdir) -> dict:
  """{record key: stage view} of the workdir's record."""
  path = layout.record
  return json.loads(path.read_text())["stages"] if path.is_file() else {}


def check_stage(config, stage: Stage) -> None:
  """Refuses to run ``stage`` where it finished before with other values of its keys
  (unless ``config.force``)."""
  if config.force:
    return
  record = _read_record(Workdir(config))
  key = stage.record_key(config)
  if key not in record:
    return
  n, shown = differences(record[key], stage_view(config, stage),
                         defaults=_view(flatten(library_defaults()), stage.result_keys(config)))
  if n:  # keys added since that record was written count unless they hold their default
    raise InputError(f"{config.workdir}: its {key} stage ran with a different config ({n} "
                     f"keys differ: {shown}); use another --config.workdir or "
                     "--config.force=True")


def record_stage(config, stage: Stage) -> None:
  """Records ``stage``'s keys after it finished (process 0)."""
  if not is_main_process():
    return
  layout = Workdir(config)
  record = _read_record(layout)
  record[stage.record_key(config)] = stage_view(config, stage)
  write_json_atomic(layout.record, dict(format=2, stages=record))


def check_inputs(config, stage: Stage) -> None:
  """A missing input of ``stage`` names the mode (of this pipeline) that writes it."""
  from t3d_jax.modes import registry  # it registers this module's stage too
  layout = Workdir(config)
  for path in stage.inputs(config, layout):
    if path.exists():
      continue
    writer = next((s.name for s in registry.STAGES.values() if s.in_pipeline
                   and any(path == o or o in path.parents for o in s.outputs(config, layout))),
                  None)
    hint = (f"run --config.mode={writer} first" if writer
            else "no stage of this pipeline writes it; check the config")
    raise InputError(f"{stage.name}: {path} does not exist: {hint}")


def variants(config) -> list:
  """The configs of the distill stage: one per ``pipeline.variants`` entry (its keys
  changed, ``distill.name`` = its name), or ``config`` itself. A ``distill.name`` given
  (not "") picks one: the variant of that name, else one run of that name with the
  config's own keys (``--config.distill.name=t3d_s2`` reruns one seed,
  ``--config.distill.name=student`` runs one student named student)."""
  layout = Workdir(config)
  layout.runs  # the names are checked
  name = config.distill.name
  if not config.pipeline.variants or (name and name not in config.pipeline.variants):
    config = config.copy_and_resolve_references()  # one run by name, no variant's keys
    with config.unlocked():
      config.pipeline.variants = {}
    config.distill.name = layout.run
    return [config]
  if config.distill.student_dir:
    raise InputError("config distill.student_dir names one dir: unset it with "
                     "pipeline.variants (each run writes <workdir>/distill/<name>/model)")
  out = []
  for run, changes in config.pipeline.variants.items():
    if name not in ("", run):
      continue
    sub = config.copy_and_resolve_references()
    with sub.unlocked():
      sub.pipeline.variants = {}
    sub.distill.name = run
    apply_overrides(sub, flatten(changes.to_dict() if hasattr(changes, "to_dict")
                               else dict(changes)), where=f"pipeline.variants.{run}.")
    out.append(sub)
  return out


def run_mode(config, name: str | None = None) -> Result | list[Result] | None:
  """One stage (default ``config.mode``), as the CLI runs it: with a pipeline config, the
  workdir guard and the input check first and the stage's record after; the stage gets
  the config with every path resolved (t3d_jax.workdir.resolve_paths). Returns its
  Result (a per-run stage with several runs: one per run)."""
  from t3d_jax.modes import registry
  stage = registry.get(name or config.mode)
  if stage.composite:
    return stage.run(config)
  subs = variants(config) if stage.per_run else [config]
  guard = bool(config.pipeline.stages) and bool(config.workdir)
  results = []
  for sub in subs:
    if guard:
      check_stage(sub, stage)
      check_inputs(sub, stage)
    if len(subs) > 1 and is_main_process():
      print(f"[pipeline] distill run {sub.distill.name}", flush=True)
    sub = sub.copy_and_resolve_references()
    sub.mode = stage.name
    results.append(stage.run(resolve_paths(sub)))
    barrier(f"pipeline: {stage.name} done")  # process 0's files are complete for the next
    if guard:
      record_stage(sub, stage)
  return results[0] if len(results) == 1 else results


def run(config) -> list:
  from t3d_jax.modes import registry
  stages = registry.pipeline_stages(list(config.pipeline.stages))
  layout = Workdir(config)
  layout.root("pipeline mode")
  main = is_main_process()
  times: dict[str, float] = {}
  results = []
  t_all = time.time()
  for i, s in enumerate(stages):
    if main:
      print(f"[pipeline] stage {i + 1}/{len(stages)}: {s.name}", flush=True)
    t0 = time.time()
    results.append(run_mode(config, s.name))
    times[s.name] = round(time.time() - t0, 1)
    if main:
      write_json_atomic(layout.stage_times, dict(stages=times, total_s=round(
          time.time() - t_all, 1)))
  total = time.time() - t_all
  if main:
    print("[pipeline] stage times: " + ", ".join(f"{s} {t:.0f}s" for s, t in times.items())
          + f"; total {total:.0f}s (this run; finished stages are skipped or resumed)",
          flush=True)
  return results


STAGE = Stage("pipeline", run, "runs pipeline.stages in order in one workdir",
              in_pipeline=False, composite=True)
