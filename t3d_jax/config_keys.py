"""Reading and setting config keys: dataclass sections, dotted overrides, flat views and the
differences between two recorded configs.

The defaults themselves live in the config dataclasses and :func:`t3d_jax.config_base.
base_config`, which is built from them.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

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


def stage_seed(config, stage: str) -> int:
  """The seed of ``stage`` (pretrain, rollout, distill, eval): ``config.<stage>.seed``
  when >= 0, else ``config.seed``; changing one stage's seed changes only that stage."""
  own = int(config[stage].get("seed", -1))
  return own if own >= 0 else int(config.seed)
