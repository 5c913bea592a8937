"""Teacher rollout: question/answer JSONL -> <workdir>/trajectories.jsonl (dLLM-RL layout).

python -m t3d_jax.main --config configs/rollout.py --config.workdir=/tmp/run \
    [--config.model_dir=...] [--config.rollout.data=gsm8k_train|math500|path.jsonl] \
    [--config.rollout.limit=64] [--config.decode.max_new_tokens=2000]

Decoding: config.decode (released teacher setting: block 4, 4 steps, low_confidence_static,
T 0.1, top-p 1, top-k 0). Rerunning the same command resumes.
"""
from t3d_jax.config_base import base_config


def get_config():
  c = base_config()
  c.mode = "rollout"
  return c
