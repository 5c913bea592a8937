"""The one layout of a workdir: every path a stage reads or writes, and "{workdir}" paths.

    layout = Workdir(config)          # config: the run's (resolved or not) ConfigDict
    layout.model, layout.trajectories, layout.student("t3d_s0"), layout.eval, ...

A path the config names (``model_dir``, ``rollout.output``, ``distill.student_dir``,
``eval.output_dir``, ``export_dir``) wins over the default under ``config.workdir``;
"{workdir}" in any path-valued key (:data:`PATH_KEYS`) is replaced by ``config.workdir``.
Stages, the pipeline's input/output checks, the API and the CLI's lock and records all
ask this object, so a path is worked out in one place.
"""
from __future__ import annotations

import re
from pathlib import Path

from t3d_jax.errors import InputError

# every path-valued config key: "{workdir}" in any of them is replaced by config.workdir
# (eval.models holds "name=path" entries)
PATH_KEYS = ("hf_dir", "model_dir", "export_dir", "tokenizer_dir", "tokenizer.data",
             "pretrain.data", "pretrain.init", "pretrain.tfds_dir",
             "rollout.data", "rollout.output", "rollout.tfds_dir",
             "eval.data", "eval.models", "eval.output_dir", "eval.tfds_dir",
             "distill.data", "distill.student_dir")
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
DEFAULT_RUN = "student"   # the distill run's name when distill.name is "" and no variants
RUN_PREFIX = "distill:"   # eval.models entries "name=distill:<run>" / "distill:*"


def expand_workdir(path: str, workdir: str) -> str:
  """``path`` with "{workdir}" replaced by ``workdir`` (an error if that is empty)."""
  path = str(path)
  if "{workdir}" in path:
    if not workdir:
      raise InputError(f"{path!r} uses {{workdir}} but config.workdir is empty")
    path = path.replace("{workdir}", str(workdir))
  return path


def _expand_entry(entry: str, workdir: str) -> str:
  name, sep, path = str(entry).partition("=")
  return f"{name}={expand_workdir(path, workdir)}" if sep else expand_workdir(entry, workdir)


def resolve_paths(config):
  """A copy of ``config`` with "{workdir}" expanded in every key of PATH_KEYS (the one
  place paths are resolved; stages read the result)."""
  out = config.copy_and_resolve_references()
  for key in PATH_KEYS:
    section, _, name = key.rpartition(".")
    node = out[section] if section else out
    if name not in node:
      continue
    value = node[name]
    if isinstance(value, (tuple, list)):
      node[name] = type(value)(_expand_entry(v, out.workdir) for v in value)
    elif value:
      node[name] = expand_workdir(value, out.workdir)
  return out


def check_run_name(name) -> str:
  if not RUN_NAME.fullmatch(str(name)):
    raise InputError(f"config distill.name / pipeline.variants: run name {name!r} must be "
                     "letters, digits, '_', '.' or '-' (it names <workdir>/distill/<name>)")
  return name


class Workdir:
  """Every path of the workdir of ``config`` (see the module doc)."""

  def __init__(self, config):
    self.config = config

  def expand(self, path: str) -> str:
    return expand_workdir(path, self.config.workdir)

  @property
  def local(self) -> bool:
    """A workdir on this machine's filesystem (not empty, not a gs:// style URL)."""
    return bool(self.config.workdir) and "://" not in str(self.config.workdir)

  def root(self, who: str = "") -> Path:
    """``config.workdir``; empty is an InputError naming ``who`` (a stage) when given."""
    if not self.config.workdir:
      raise InputError(f"{who or 'this run'} needs --config.workdir")
    return Path(self.config.workdir)

  def _given_or(self, given: str, name: str, missing: str) -> Path:
    """The path a config key names (``given``), else ``<workdir>/<name>``; neither set:
    an InputError saying ``missing``."""
    if given:
      return Path(self.expand(given))
    if not self.config.workdir:
      raise InputError(missing)
    return Path(self.config.workdir) / name

  # --- what the stages write, in pipeline order ---
  @property
  def task(self) -> Path:
    return self.root("task mode") / "task"

  @property
  def tokenizer(self) -> Path:
    return self.root("tokenizer mode") / "tokenizer"

  @property
  def model(self) -> Path:
    """The base model dir: ``model_dir``, else ``<workdir>/model``."""
    return self._given_or(self.config.model_dir, "model",
                          "set --config.workdir (or --config.model_dir)")

  @property
  def pretrain(self) -> Path:
    return self.root("pretrain mode") / "pretrain"

  @property
  def trajectories(self) -> Path:
    """The rollout output: ``rollout.output``, else ``<workdir>/trajectories.jsonl``."""
    r = self.config.rollout.output
    return Path(self.expand(r)) if r else self.root("rollout mode") / "trajectories.jsonl"

  def beside_trajectories(self, suffix: str) -> Path:
    """``<trajectories stem><suffix>`` next to them (".meta.json", ".step_maps.png")."""
    out = self.trajectories
    return out.with_name(out.stem + suffix)

  @property
  def run(self) -> str:
    """The distill run this config names: ``distill.name``, or "student" when "" ."""
    return self.config.distill.name or DEFAULT_RUN

  @property
  def runs(self) -> list[str]:
    """The distill runs of this config: the names of ``pipeline.variants``, else
    :attr:`run`; each checked (letters, digits, ``_.-``)."""
    return [check_run_name(n) for n in list(self.config.pipeline.variants.keys())
            or [self.run]]

  def distill(self, name: str | None = None) -> Path:
    """``<workdir>/distill/<name>``: checkpoints, tb, metrics.jsonl and (by default) the
    student model dir ``model/`` of the distill run ``name`` (default :attr:`run`)."""
    if not self.config.workdir:
      raise InputError("distill runs live under <workdir>/distill/<name>: set "
                       "--config.workdir")
    return Path(self.config.workdir) / "distill" / check_run_name(
        self.run if name is None else name)

  def student(self, name: str | None = None) -> Path:
    """Where the distill run ``name`` writes its student: ``distill.student_dir`` when
    set (one run only), else ``<workdir>/distill/<name>/model``."""
    if self.config.distill.student_dir and name in (None, self.run):
      return Path(self.expand(self.config.distill.student_dir))
    return self.distill(name) / "model"

  @property
  def eval(self) -> Path:
    """Where eval writes (``eval.output_dir``, default ``<workdir>/eval``)."""
    return self._given_or(self.config.eval.output_dir, "eval",
                          "eval mode needs --config.workdir (or eval.output_dir)")

  @property
  def compare(self) -> Path:
    return self.root("compare mode") / "compare"

  @property
  def export(self) -> Path:
    """The HF dir export writes: ``export_dir``, else ``<workdir>/hf_export``."""
    return self._given_or(self.config.export_dir, "hf_export",
                          "export mode needs --config.workdir (or export_dir)")

  # --- the run's own records ---
  @property
  def record(self) -> Path:
    """The keys each finished stage ran with (the pipeline's guard)."""
    return self.root() / "t3d_config.json"

  @property
  def stage_times(self) -> Path:
    return self.root() / "pipeline.json"

  @property
  def last_config(self) -> Path:
    return self.root() / "last_run_config.json"

  @property
  def lock(self) -> Path:
    return self.root() / ".t3d_run.lock"

  def models(self) -> list[tuple[str, str]]:
    """``eval.models`` as (name, path): "name=path", a bare path (named by its basename),
    "name=distill:<run>" / "distill:<run>" (that run's student) or "distill:*" (every
    run of this config); () = the model dir."""
    out = []
    for e in list(self.config.eval.models) or [f"model={self.model}"]:
      name, sep, path = str(e).partition("=")
      if not sep:
        name, path = "", str(e)
      name, path = name.strip(), path.strip()
      if path == RUN_PREFIX + "*":
        out += [(n, str(self.student(n))) for n in self.runs]
        continue
      if path.startswith(RUN_PREFIX):
        run = path[len(RUN_PREFIX):]
        name, path = name or run, str(self.student(run))
      else:
        name, path = name or Path(path).name or "model", self.expand(path)
      out.append((name, path))
    return out
