"""pipeline mode: run ``config.pipeline.stages`` (modes) in order in one workdir.

    python -m t3d_jax.main --config configs/demo.py       # task, pretrain, rollout, distill, eval
    python -m t3d_jax.main --config configs/demo.py --config.mode=rollout   # one stage alone

Each stage is the mode of the same name, run on this config; every mode resumes or skips
what it finished before, so rerunning the pipeline after an interruption continues where
it stopped. Stage wall times go to ``<workdir>/pipeline.json``.

Two guards apply to every mode run with a config that names pipeline stages:

* each stage that finishes records the config keys that determine its result (STAGE_KEYS:
  its own section and what it reads, without logging keys, nor the keys that only choose
  which models and settings eval computes) in ``<workdir>/t3d_config.json``;
  running that stage again with different values for them is refused, naming the keys,
  unless ``--config.force=True`` (then the record is replaced). Keys of other stages never
  matter, and a run that fails records nothing, so the corrected command is not refused;
* a stage whose input is missing names the earlier mode that writes it.

The distill stage runs once per ``pipeline.variants`` entry (each a named run, see
t3d_jax/modes/distill.py), or once as ``distill.name``.
"""
from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import jax

from t3d_jax.config_base import library_defaults
from t3d_jax.data.jsonl import write_json_atomic
from t3d_jax.distributed import barrier
from t3d_jax.errors import InputError
from t3d_jax.settings import (apply_overrides, as_json, differences, eval_dir, expand,
                              flatten, model_dir, model_entries,
                              old_distill_layout, resolve_paths, run_names, student_dir)
from t3d_jax.train.recipe import LOGGING_KEYS

STAGES = ("task", "tokenizer", "pretrain", "rollout", "distill", "eval", "compare", "export")
RECORD = "t3d_config.json"
# the config keys (sections or dotted keys) that determine each stage's result
STAGE_KEYS = {
    "task": ("task", "seed"),
    "tokenizer": ("tokenizer", "tokenizer_dir", "prompt_template", "pretrain.data",
                  "pretrain.question_field", "pretrain.answer_field"),
    "pretrain": ("pretrain", "arch", "model", "model_dir", "tokenizer_dir", "decode.block_size",
                 "seed"),
    "rollout": ("rollout", "decode", "prompt_template", "model_dir", "tokenizer_dir", "model",
                "seed"),
    "distill": ("distill", "examples", "loss", "optim", "model", "model_dir", "tokenizer_dir",
                "seed"),
    "eval": ("eval", "decode", "prompt_template", "task.name", "model_dir", "tokenizer_dir",
             "model", "seed"),
    "compare": ("compare", "eval.output_dir"),
    "export": ("export_dir", "export_dtype", "max_shard_size", "model_dir"),
}
# what a distill run that re-decodes its questions (distill.refresh_every) also reads
REFRESH_KEYS = ("decode", "task.name")
NOT_RESULT = LOGGING_KEYS + ("plot_trajectories", "chunk_prompts", "name")
# keys that choose which results eval computes, not how (each (model, setting) result is
# keyed on its own settings): evaluating one more model or setting is not another config
SELECTS = ("eval.models", "eval.tokens_per_forward", "eval.strategies", "eval.thresholds",
           "eval.output_dir")


def _view(flat: dict, stage: str, refresh: bool = False) -> dict:
  keys = STAGE_KEYS[stage] + (REFRESH_KEYS if stage == "distill" and refresh else ())
  return {k: v for k, v in flat.items()
          if any(k == p or k.startswith(p + ".") for p in keys)
          and k.rpartition(".")[2] not in NOT_RESULT and k not in SELECTS}


def stage_view(config, stage: str) -> dict:
  """The dotted keys of STAGE_KEYS[stage] (and REFRESH_KEYS for a distill run that
  refreshes its trajectories) with their (JSON) values in ``config``."""
  return _view(flatten(as_json(config.to_dict())), stage, bool(config.distill.refresh_every))


def record_key(config, stage: str) -> str:
  return f"distill/{config.distill.name}" if stage == "distill" else stage


def _read_record(work: Path) -> dict:
  """{record key: stage view} (a record from before per-stage views, one config for the
  whole workdir, is read as views of it)."""
  path = work / RECORD
  if not path.is_file():
    return {}
  old = json.loads(path.read_text())
  if old.get("format") == 2:
    return old["stages"]
  flat = flatten(old)  # the older format: every stage of its pipeline saw this config
  return {"distill/student" if s == "distill" else s:
          _view(flat, s, bool(flat.get("distill.refresh_every")))
          for s in old.get("pipeline", {}).get("stages", ()) if s in STAGE_KEYS}


def check_stage(config, stage: str) -> None:
  """Refuses to run ``stage`` where it finished before with other values of its keys
  (unless ``config.force``)."""
  if config.force:
    return
  record = _read_record(Path(config.workdir))
  key = record_key(config, stage)
  if key not in record:
    return
  n, shown = differences(record[key], stage_view(config, stage),
                         defaults=_view(flatten(library_defaults()), stage))
  if n:  # keys added since that record was written count unless they hold their default
    raise InputError(f"{config.workdir}: its {key} stage ran with a different config ({n} "
                     f"keys differ: {shown}); use another --config.workdir or "
                     "--config.force=True")


def record_stage(config, stage: str) -> None:
  """Records ``stage``'s keys after it finished (process 0)."""
  if jax.process_index() != 0:
    return
  work = Path(config.workdir)
  record = _read_record(work)
  record[record_key(config, stage)] = stage_view(config, stage)
  write_json_atomic(work / RECORD, dict(format=2, stages=record))


def _outputs(config) -> dict:
  """What each stage writes (paths checked when a later stage needs them)."""
  work = Path(config.workdir)
  return {"task": [work / "task", work / "tokenizer"], "tokenizer": [work / "tokenizer"],
          "pretrain": [Path(model_dir(config))],
          "rollout": [Path(expand(config.rollout.output, config)) if config.rollout.output
                      else work / "trajectories.jsonl"],
          "distill": [student_dir(config, n) for n in run_names(config)],
          "eval": [eval_dir(config)]}


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
    return [Path(p) for _, p in model_entries(config)] + data(config.eval.data)
  if stage == "export":
    return [Path(model_dir(config))]
  if stage == "compare":
    return [eval_dir(config) / "summary.json"]
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
    old = old_distill_layout(config.workdir) if writer == "distill" else None
    raise InputError(old or f"{stage}: {path} does not exist: {hint}")


def variants(config) -> list:
  """The configs of the distill stage: one per ``pipeline.variants`` entry (its keys
  changed, ``distill.name`` = its name), or ``config`` itself. A ``distill.name`` other
  than the default picks one: the variant of that name, else one run of that name with
  the config's own keys (``--config.distill.name=t3d_s2`` reruns one seed)."""
  run_names(config)  # the names are checked
  name, every = config.distill.name, library_defaults()["distill"]["name"]
  if not config.pipeline.variants:
    return [config]
  if name not in (every, *config.pipeline.variants):  # one run by name, no variant's keys
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.pipeline.variants = {}
    return [config]
  if config.distill.student_dir:
    raise InputError("config distill.student_dir names one dir: unset it with "
                     "pipeline.variants (each run writes <workdir>/distill/<name>/model)")
  out = []
  for run, changes in config.pipeline.variants.items():
    if name not in (every, run):
      continue
    sub = config.copy_and_resolve_references()
    with sub.unlocked():
      sub.pipeline.variants = {}
    sub.distill.name = run
    apply_overrides(sub, flatten(changes.to_dict() if hasattr(changes, "to_dict")
                               else dict(changes)), where=f"pipeline.variants.{run}.")
    out.append(sub)
  return out


def run_mode(config, stage: str | None = None) -> None:
  """One stage (default ``config.mode``), as the CLI runs it: with a pipeline config, the
  workdir guard and the input check first and the stage's record after; the mode gets
  the config with every path resolved (t3d_jax.settings.resolve_paths)."""
  stage = stage or config.mode
  if stage == "pipeline":
    return run(config)
  subs = variants(config) if stage == "distill" else [config]
  guard = bool(config.pipeline.stages) and bool(config.workdir)
  for sub in subs:
    if guard:
      check_stage(sub, stage)
      check_inputs(sub, stage)
    if len(subs) > 1 and jax.process_index() == 0:
      print(f"[pipeline] distill run {sub.distill.name}", flush=True)
    sub = sub.copy_and_resolve_references()
    sub.mode = stage
    importlib.import_module(f"t3d_jax.modes.{stage}").run(resolve_paths(sub))
    barrier(f"pipeline: {stage} done")  # process 0's files are complete for the next stage
    if guard:
      record_stage(sub, stage)


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
    t0 = time.time()
    run_mode(config, s)
    times[s] = round(time.time() - t0, 1)
    if main:
      write_json_atomic(work / "pipeline.json", dict(stages=times, total_s=round(
          time.time() - t_all, 1)))
  total = time.time() - t_all
  if main:
    print("[pipeline] stage times: " + ", ".join(f"{s} {t:.0f}s" for s, t in times.items())
          + f"; total {total:.0f}s (this run; finished stages are skipped or resumed)",
          flush=True)
