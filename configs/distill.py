"""T3D distillation from rollout trajectories (CPU-sized defaults; see sdar_*_math.py).

python -m t3d_jax.main --config configs/distill.py --config.workdir=/tmp/run \
    --config.distill.data=/tmp/run/trajectories.jsonl [--config.model_dir=...]
"""
from t3d_jax.config_base import base_config


def get_config():
  c = base_config()
  c.mode = "distill"
  return c
