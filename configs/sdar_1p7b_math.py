"""T3D distillation of SDAR-1.7B on MATH trajectories, one TPU v4-8 host (4 chips, 32 GiB).

The original's hyperparameters (docs/method.md §3): AdamW lr 1e-5, betas 0.9/0.999,
eps 1e-8, weight decay 0.01, 20 warmup updates then cosine, clip 1.0, global batch 32
(one example per device per forward, accumulated), block 8, mask ratios 1/.75/.5/.25,
alpha 0.5, beta 0.1, lambda_path 0.2, k 4, bf16 compute over fp32 master params, full remat.

  python -m t3d_jax.bench memory --config configs/sdar_1p7b_math.py   # fits? (laptop)
  python -m t3d_jax.main --config configs/sdar_1p7b_math.py \
      --config.workdir=/path/run --config.model_dir=/path/sdar_1p7b_model \
      --config.distill.data=/path/trajectories.jsonl
"""
from t3d_jax.config_base import base_config

# SDAR-1.7B-Chat = the Qwen3-1.7B network. Used for planning (bench memory, AOT); training
# reads the architecture from the model dir, which must agree.
ARCH_1P7B = dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_layers=28,
                 num_heads=16, num_kv_heads=8, head_dim=128, rope_theta=1_000_000.0,
                 rms_norm_eps=1e-6, tie_word_embeddings=True)


def t3d_defaults(c, *, arch: dict, tpu: str, devices: int, multi_host: bool):
  """The original's T3D settings on a ``devices``-device FSDP slice."""
  c.mode = "distill"
  c.arch.update(arch)
  c.model.dtype, c.model.param_dtype, c.model.remat = "bfloat16", "float32", "full"
  c.distill.global_batch = 32
  c.distill.micro_batch = devices      # one example per device per forward (released: 1)
  c.distill.multi_round = True
  c.examples.block_size = 8           # the release trains at 8 on trajectories decoded
  c.distill.allow_other_block = True  # at block 4 (docs/method.md §6); 0 = the rollout's
  c.examples.mask_ratios = (1.0, 0.75, 0.5, 0.25)
  c.loss.alpha, c.loss.beta, c.loss.lambda_path, c.loss.path_k_steps = 0.5, 0.1, 0.2, 4
  c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay = 1e-5, 20, 0.01
  c.optim.b1, c.optim.b2, c.optim.eps, c.optim.clip_grad_norm = 0.9, 0.999, 1e-8, 1.0
  c.mesh.shape.data, c.mesh.shape.fsdp, c.mesh.shape.tensor = 1, -1, 1  # FSDP over all
  c.mesh.tpu = tpu
  c.jax_distributed = multi_host
  return c


def get_config():
  return t3d_defaults(base_config(), arch=ARCH_1P7B, tpu="v4-8", devices=4, multi_host=False)
