"""The CPU demo for the LLaDA family: python -m t3d_jax.main --config configs/demo_llada.py

configs/demo.py's pipeline, task and recipe with a tiny LLaDA model (LLaMA layers,
bidirectional, each position predicting its own token) pretrained from scratch instead
of SDAR's block-causal one: it decodes with the bidirectional sampler
(t3d_jax/sampling/canvas.py, a canvas of decode.max_new_tokens masks, block by block)
and trains every objective on that sampler's own inputs (t3d_jax/train/views.py: per
example and block, [prompt | earlier blocks | the block at its state | masks]). Workdir
workdir/demo_llada; pretraining until 97 % of 128 held-out questions are answered at
full step (checked every 200 updates, at most 4000); 3 distill seeds (t3d_s0 .. t3d_s2).
"""
from t3d_jax.config_base import config_module


def get_config():
  return config_module("demo.py", relative_to=__file__).bidirectional("llada")
