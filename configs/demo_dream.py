"""The CPU demo for the Dream family: python -m t3d_jax.main --config configs/demo_dream.py

configs/demo.py's pipeline, task and recipe with a tiny Dream model (Qwen2 layers, bidirectional, position i's output predicting token i + 1) pretrained from
scratch instead of SDAR's block-causal one: it decodes with the bidirectional sampler
(t3d_jax/sampling/canvas.py, a canvas of decode.max_new_tokens masks, block by block)
and trains every objective on that sampler's own inputs (t3d_jax/train/views.py: per
example and block, [prompt | earlier blocks | the block at its state | masks]).
Workdir workdir/demo_dream; 3 distill seeds (t3d_s0 .. t3d_s2).
"""
from t3d_jax.config_base import config_module

SEEDS = (0, 1, 2)


def get_config():
  c = config_module("demo.py", relative_to=__file__).get_config()
  c.workdir = "workdir/demo_dream"
  c.arch.family = "dream"
  c.pipeline.variants = {f"t3d_s{k}": {"distill": {"seed": k}} for k in SEEDS}
  return c
