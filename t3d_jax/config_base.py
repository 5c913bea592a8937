"""Shared defaults for every configs/*.py file (one ConfigDict, every key the code reads).

Config files call ``base_config()`` and override what differs; the CLI overrides
further with ``--config.key=value``.
"""
from __future__ import annotations

import ml_collections

from t3d_jax.errors import InputError


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = ""               # convert | export (more modes register in t3d_jax/main.py)
  c.workdir = ""            # every mode writes under here
  c.seed = 0
  c.overwrite = False       # allow replacing a non-empty output dir
  c.jax_distributed = False  # call jax.distributed.initialize() (multi-host TPU/GPU)

  # convert: HF dir -> orbax model dir
  c.hf_dir = ""
  c.model_dir = ""          # default: <workdir>/model
  c.param_dtype = ""        # "" keeps the checkpoint's dtype; float32 | bfloat16 casts

  # export: orbax model dir -> HF dir
  c.export_dir = ""         # default: <workdir>/hf_export
  c.export_dtype = ""       # "" keeps the param dtype
  c.max_shard_size = "2GB"
  return c


def model_dir(config) -> str:
  if config.model_dir:
    return config.model_dir
  if not config.workdir:
    raise InputError("set --config.workdir (or --config.model_dir)")
  return f"{config.workdir}/model"


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
