"""The registry of stages: every mode the CLI runs, in pipeline order, and nothing else
lists them (main, the pipeline and the API look a stage up here)."""
from __future__ import annotations

from t3d_jax.errors import InputError
from t3d_jax.modes import (compare, convert, distill, eval, export, pipeline, pretrain, rollout,
                           task, tokenizer)
from t3d_jax.modes.stage import Stage

STAGES: dict[str, Stage] = {s.name: s for s in (
    task.STAGE, tokenizer.STAGE, convert.STAGE, pretrain.STAGE, rollout.STAGE,
    distill.STAGE, eval.STAGE, compare.STAGE, export.STAGE, pipeline.STAGE)}


def get(name: str) -> Stage:
  """The stage ``config.mode`` names (an InputError naming the choices)."""
  if name not in STAGES:
    raise InputError(f"config.mode={name!r} is not one of {', '.join(STAGES)}")
  return STAGES[name]


def pipeline_stages(names) -> list[Stage]:
  """The stages ``config.pipeline.stages`` names, in its order, each checked."""
  allowed = [n for n, s in STAGES.items() if s.in_pipeline]
  if not names:
    raise InputError("config pipeline.stages is empty: name the modes to run, e.g. "
                     "('task', 'pretrain', 'rollout', 'distill', 'eval')")
  for n in names:
    if n not in allowed:
      raise InputError(f"config pipeline.stages: {n!r} is not one of {', '.join(allowed)}")
  return [STAGES[n] for n in names]
