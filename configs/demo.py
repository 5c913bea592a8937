"""The CPU demo (README's main command): python -m t3d_jax.main --config configs/demo.py"""
import ml_collections

from t3d_jax.config_base import base_config


def get_config():
  c = base_config()
  c.mode = "demo"
  c.workdir = "workdir/demo"
  c.demo = ml_collections.ConfigDict(dict(
      vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
      num_kv_heads=2, head_dim=16, dataset="gsm8k_test", num_prompts=8, block_size=4,
      tokens_per_forward=(1, 2, 4), max_new_tokens=64))
  return c
