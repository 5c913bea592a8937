"""Export an orbax model dir back to a Hugging Face dir (sharded safetensors + index).

python -m t3d_jax.main --config configs/export.py --config.workdir=/tmp/sdar \
    [--config.model_dir=...] [--config.export_dir=...] [--config.export_dtype=bfloat16]
"""
from t3d_jax.config_base import base_config


def get_config():
  c = base_config()
  c.mode = "export"
  return c
