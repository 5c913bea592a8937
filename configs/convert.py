"""Convert a Hugging Face SDAR/Qwen3 checkpoint into an orbax model dir.

python -m t3d_jax.main --config configs/convert.py \
    --config.hf_dir=/path/to/SDAR-1.7B-Chat --config.workdir=/tmp/sdar
"""
from t3d_jax.config_base import base_config


def get_config():
  c = base_config()
  c.mode = "convert"
  return c
