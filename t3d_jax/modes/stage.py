"""What a stage is: a registered, typed object that the CLI, the pipeline and the API share.

A :class:`Stage` names its mode, runs it (``run(config) -> Result``), declares the config
keys that determine its result (the pipeline's guard records them) and the paths it
reads and writes, each through the workdir layout (:class:`t3d_jax.workdir.Workdir`), so
that a missing input names the stage that writes it. The registry of every stage is
:data:`t3d_jax.modes.registry.STAGES`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

from t3d_jax.workdir import Workdir


@dataclasses.dataclass(frozen=True)
class Result:
  """What a stage produced: the paths it wrote, the figures it printed (``summary``), and
  what it holds in memory for a Python caller (``value``: params, results)."""
  stage: str
  outputs: tuple[Path, ...] = ()
  summary: dict = dataclasses.field(default_factory=dict)
  value: Any = None


def _nothing(config, layout: Workdir) -> list[Path]:
  del config, layout
  return []


def _no_keys(config) -> tuple[str, ...]:
  del config
  return ()


@dataclasses.dataclass(frozen=True)
class Stage:
  """One mode. ``keys``: the config sections / dotted keys that determine its result
  (``more_keys(config)`` adds those a setting brings in); ``inputs`` / ``outputs``: the
  paths it reads / writes (``(config, layout) -> [Path]``); ``per_run``: it runs once per
  distill run (``pipeline.variants``) and records its keys per run; ``in_pipeline``: it may
  be one of ``pipeline.stages``."""
  name: str
  run: Callable[[Any], Optional[Result]]
  summary: str
  keys: tuple[str, ...] = ()
  more_keys: Callable[[Any], tuple[str, ...]] = _no_keys
  inputs: Callable[[Any, Workdir], list[Path]] = _nothing
  outputs: Callable[[Any, Workdir], list[Path]] = _nothing
  per_run: bool = False
  in_pipeline: bool = True
  composite: bool = False      # it runs other stages (each with its own guard and record)

  def result_keys(self, config) -> tuple[str, ...]:
    return self.keys + self.more_keys(config)

  def record_key(self, config) -> str:
    """Its entry in the workdir's record (``distill/<run>`` for a per-run stage)."""
    return f"{self.name}/{Workdir(config).run}" if self.per_run else self.name


def workdir_data(layout: Workdir, *values: str) -> list[Path]:
  """The data paths among ``values`` that an earlier stage writes ("{workdir}" in them:
  the pipeline checks they exist); other paths and shipped set names are the data
  loader's to check."""
  return [Path(layout.expand(v)) for v in values if v and "{workdir}" in str(v)]
