"""T3D distillation of SDAR-4B on MATH trajectories, TPU v5p-16 (8 chips of 95 GiB on 2
hosts; run on every worker, see README.md, "TPU VM pod slice"). Hyperparameters as sdar_1p7b_math.py.

  python -m t3d_jax.bench memory --config configs/sdar_4b_math.py
  launch/tpu_vm.sh run -- --config configs/sdar_4b_math.py --config.workdir=gs://bucket/run \
      --config.model_dir=gs://bucket/sdar_4b_model --config.distill.data=/data/traj.jsonl
"""
from t3d_jax.config_base import base_config, config_module

# SDAR-4B-Chat = the Qwen3-4B network (planning only; training reads the model dir).
ARCH_4B = dict(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_layers=36,
               num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=1_000_000.0,
               rms_norm_eps=1e-6, tie_word_embeddings=True)


def get_config():
  return config_module("sdar_1p7b_math.py", relative_to=__file__).t3d_defaults(base_config(), arch=ARCH_4B, tpu="v5p-16", devices=8,
                                 multi_host=True)
