"""Reading and setting config keys: dataclass sections, dotted overrides, flat views and the
differences between two recorded configs.

The defaults themselves live in the config dataclasses and :func:`t3d_jax.config_base.
base_config`, which is built from them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping

import numpy as np

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
  problem = field_type_problem(cls, kw)
  if problem:
    raise InputError(f"config ({cls.__name__}): {problem}")
  try:
    return cls(**kw)
  except (TypeError, ValueError) as e:  # a bad value: name the config section and key
    raise InputError(f"config ({cls.__name__}): {e}") from None


_KINDS = {  # annotation -> (test, what the value must be)
    "int": (lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool),
            "an integer"),
    "float": (lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool)
              and math.isfinite(v), "a finite number"),
    "bool": (lambda v: isinstance(v, (bool, np.bool_)), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


def field_type_problem(cls, values: Mapping) -> str | None:
  """"name=value must be ..." for the first of ``values`` that is not of the kind its
  field of dataclass ``cls`` is annotated with (int, float, bool, str, each optionally
  Optional); None when all are. A None, a string or a NaN where a number belongs would
  otherwise fail later with a message that names no key, or decode with NaN."""
  for f in dataclasses.fields(cls):
    if f.name not in values:
      continue
    ann, v = str(f.type), values[f.name]
    optional = ann.startswith("Optional[")
    kind = _KINDS.get(ann[len("Optional["):-1] if optional else ann)
    if kind is None or (optional and v is None) or kind[0](v):
      continue
    return f"{f.name}={v!r} must be {kind[1]}" + (" or None" if optional else "")
  return None


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
      if hasattr(node[leaf], "keys") and (len(node[leaf]) or not isinstance(value, Mapping)):
        # ml_collections would replace the section (None, or a dict without its keys)
        raise TypeError(f"{key} is a section: set its keys ({key}.<name>=...)")
      node[leaf] = value
    except (KeyError, AttributeError, TypeError, ValueError) as e:  # one line of its text
      raise InputError(f"config {where}{key}: not a config key or a bad value "
                       f"({type(e).__name__}: {' '.join(str(e).split())})") from None


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
