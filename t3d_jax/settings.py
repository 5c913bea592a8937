"""Config helpers every layer may use: dataclass sections, {workdir} paths, digests.

The defaults themselves live in the config dataclasses and :func:`t3d_jax.config_base.
base_config`, which is built from them.
"""
from __future__ import annotations

import array
import dataclasses
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from t3d_jax.errors import InputError


def dataclass_from_config(cls, cfg, **overrides):
  """An instance of the dataclass ``cls`` from the same-named keys of a ConfigDict /
  mapping / object; missing keys keep their defaults, other keys are ignored."""
  kw = {}
  for field in dataclasses.fields(cls):
    if isinstance(cfg, Mapping) or hasattr(cfg, "keys"):
      if field.name in cfg:
        kw[field.name] = cfg[field.name]
    elif hasattr(cfg, field.name):
      kw[field.name] = getattr(cfg, field.name)
  kw.update(overrides)
  try:
    return cls(**kw)
  except (TypeError, ValueError) as e:  # a bad value: name the config section and key
    raise InputError(f"config ({cls.__name__}): {e}") from None


def expand_workdir(path: str, workdir: str) -> str:
  """``path`` with "{workdir}" replaced by ``workdir`` (an error if that is empty)."""
  path = str(path)
  if "{workdir}" in path:
    if not workdir:
      raise InputError(f"{path!r} uses {{workdir}} but config.workdir is empty")
    path = path.replace("{workdir}", str(workdir))
  return path


def expand(path: str, config) -> str:
  """``path`` with "{workdir}" replaced by ``config.workdir``."""
  return expand_workdir(path, config.workdir)


# every path-valued config key: "{workdir}" in any of them is replaced by config.workdir
# (eval.models holds "name=path" entries)
PATH_KEYS = ("hf_dir", "model_dir", "export_dir", "tokenizer_dir", "tokenizer.data",
             "pretrain.data", "pretrain.init", "pretrain.tfds_dir",
             "rollout.data", "rollout.output", "rollout.tfds_dir",
             "eval.data", "eval.models", "eval.output_dir", "eval.tfds_dir",
             "distill.data", "distill.student_dir")


def resolve_paths(config):
  """A copy of ``config`` with "{workdir}" expanded in every key of PATH_KEYS (the one
  place paths are resolved; modes read the result)."""
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


def apply_overrides(config, overrides: Mapping, where: str = "") -> None:
  """Sets each dotted key of ``overrides`` ("distill.max_steps", or "distill__max_steps"
  from Python keyword arguments) in ``config``; a key the config lacks or a value of the
  wrong type is an InputError naming ``where`` + the key."""
  for key, value in overrides.items():
    key = key.replace("__", ".")
    section, _, leaf = key.rpartition(".")
    try:
      node = config[section] if section else config
      if leaf not in node:
        raise KeyError(leaf)
      node[leaf] = value
    except (KeyError, AttributeError, TypeError) as e:
      raise InputError(f"config {where}{key}: not a config key or a bad value "
                       f"({type(e).__name__}: {e})") from None


def _expand_entry(entry: str, workdir: str) -> str:
  name, sep, path = str(entry).partition("=")
  return f"{name}={expand_workdir(path, workdir)}" if sep else expand_workdir(entry, workdir)


def fingerprint(settings) -> str:
  """A short digest of JSON-able settings: what a resumed run must share with the run
  that wrote its checkpoints / rows / summaries."""
  text = json.dumps(settings, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def as_json(settings):
  """``settings`` as plain JSON values (what a JSON file written from them reads back as)."""
  return json.loads(json.dumps(settings, sort_keys=True, default=str))


def flatten(d: Mapping, prefix: str = "") -> dict:
  """A nested dict as one level of dotted keys ({"a": {"b": 1}} -> {"a.b": 1})."""
  out = {}
  for k, v in d.items():
    out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
  return out


def differences(old: Mapping, new: Mapping, limit: int = 5,
                defaults: Mapping | None = None) -> tuple[int, str]:
  """(number of differing keys, "key: old -> new, ..." for the first ``limit``) of two
  nested JSON dicts, keys dotted (``distill.max_steps``). With ``defaults`` (nested, the
  same shape: the library's values, config_base.library_defaults), a key only ``new``
  has does not count when its value is the default: a key added to the config since
  ``old`` was recorded defaults to the behaviour before it existed, so a recorded run is
  the same run; set to anything else (or without a default), it makes the run another."""
  a, b = flatten(old), flatten(new)
  base = flatten(defaults) if defaults is not None else {}
  keys = sorted((k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>")
                 and not (k not in a and k in base and base[k] == b[k])),
                key=lambda k: (k not in a or k not in b, k))  # changed values first
  shown = ", ".join(f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}"
                    for k in keys[:limit])
  return len(keys), shown + (" ..." if len(keys) > limit else "")


def content_digest(rows: Iterable[Iterable]) -> str:
  """sha256 (16 hex) of a dataset's content: each row a sequence of fields, each field a
  string or a sequence of ints (token ids, step maps). Order and boundaries count."""
  h = hashlib.sha256()
  for row in rows:
    for field in row:
      if isinstance(field, str):
        data = field.encode()
        h.update(b"s%d:" % len(data))
      else:
        data = array.array("q", field).tobytes()
        h.update(b"i%d:" % len(data))
      h.update(data)
    h.update(b";")
  return h.hexdigest()[:16]


def stage_seed(config, stage: str) -> int:
  """The seed of ``stage`` (pretrain, rollout, distill, eval): ``config.<stage>.seed``
  when >= 0, else ``config.seed``; changing one stage's seed changes only that stage."""
  own = int(config[stage].get("seed", -1))
  return own if own >= 0 else int(config.seed)


def model_dir(config) -> str:
  if config.model_dir:
    return expand(config.model_dir, config)
  if not config.workdir:
    raise InputError("set --config.workdir (or --config.model_dir)")
  return f"{config.workdir}/model"


RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RUN_PREFIX = "distill:"   # eval.models entries "name=distill:<run>" / "distill:*"


def _check_run_name(name) -> str:
  if not RUN_NAME.fullmatch(str(name)):
    raise InputError(f"config distill.name / pipeline.variants: run name {name!r} must be "
                     "letters, digits, '_', '.' or '-' (it names <workdir>/distill/<name>)")
  return name


def run_names(config) -> list[str]:
  """The distill runs of this config: the names of ``pipeline.variants``, else
  ``distill.name``; each checked (letters, digits, ``_.-``)."""
  return [_check_run_name(n) for n in
          list(config.pipeline.variants.keys()) or [config.distill.name]]


def distill_dir(config, name: str | None = None) -> Path:
  """``<workdir>/distill/<name>``: checkpoints, tb, metrics.jsonl and (by default) the
  student model dir ``model/`` of the distill run ``name`` (default ``distill.name``)."""
  if not config.workdir:
    raise InputError("distill runs live under <workdir>/distill/<name>: set --config.workdir")
  name = _check_run_name(config.distill.name if name is None else name)
  return Path(config.workdir) / "distill" / name


def student_dir(config, name: str | None = None) -> Path:
  """Where the distill run ``name`` writes its student: ``distill.student_dir`` when set
  (one run only), else ``<workdir>/distill/<name>/model``."""
  if config.distill.student_dir and name in (None, config.distill.name):
    return Path(expand(config.distill.student_dir, config))
  return distill_dir(config, name) / "model"


def eval_dir(config) -> Path:
  """Where eval writes (``eval.output_dir``, default ``<workdir>/eval``)."""
  if config.eval.output_dir:
    return Path(expand(config.eval.output_dir, config))
  if not config.workdir:
    raise InputError("eval needs --config.workdir (or eval.output_dir)")
  return Path(config.workdir) / "eval"


def model_entries(config) -> list[tuple[str, str]]:
  """``eval.models`` as (name, path): "name=path", a bare path (named by its basename),
  "name=distill:<run>" / "distill:<run>" (that run's student) or "distill:*" (every run
  of this config); () = the model dir."""
  out = []
  for e in list(config.eval.models) or [f"model={model_dir(config)}"]:
    name, sep, path = str(e).partition("=")
    if not sep:
      name, path = "", str(e)
    name, path = name.strip(), path.strip()
    if path == RUN_PREFIX + "*":
      out += [(n, str(student_dir(config, n))) for n in run_names(config)]
      continue
    if path.startswith(RUN_PREFIX):
      run = path[len(RUN_PREFIX):]
      name, path = name or run, str(student_dir(config, run))
    else:
      name, path = name or Path(path).name or "model", expand(path, config)
    out.append((name, path))
  return out


def old_distill_layout(workdir) -> str | None:
  """A message when ``workdir`` holds a distill run written before named runs
  (checkpoints/, tb/, metrics.jsonl, student/ at its top level), else None."""
  w = Path(workdir)
  if not ((w / "checkpoints").is_dir() or (w / "student").is_dir()) or (w / "distill").exists():
    return None
  return (f"{w} holds a distill run in the layout before named runs (checkpoints/, tb/, "
          f"metrics.jsonl, student/ at its top); runs now live in {w}/distill/<name>/. Move "
          f"it: mkdir -p {w}/distill/student && mv {w}/checkpoints {w}/tb {w}/metrics.jsonl "
          f"{w}/distill/student/ && mv {w}/student {w}/distill/student/model (or use another "
          "--config.workdir)")


def parse_size(text: str) -> int:
  """'2GB' / '500MB' / '1024' -> bytes."""
  t = str(text).strip().upper()
  for unit, mult in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024), ("B", 1)):
    if t.endswith(unit):
      try:
        return int(float(t[: -len(unit)]) * mult)
      except ValueError:
        break
  try:
    return int(t)
  except ValueError:
    raise InputError(f"config max_shard_size={text!r}: expected e.g. '2GB', '500MB' or bytes")
