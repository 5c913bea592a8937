"""Masked-diffusion fine-tuning (SFT) of a converted model on question/answer pairs.

python -m t3d_jax.main --config configs/pretrain.py --config.workdir=/tmp/sft \
    --config.pretrain.init=/tmp/sdar/model [--config.pretrain.data=gsm8k_train|path.jsonl]

Prompts: the tokenizer's chat template on question + math instruction (as rollout/eval);
responses: the answer + EOS. Writes <workdir>/model (a model dir) and <workdir>/pretrain/
(metrics, TensorBoard, checkpoints); rerunning resumes. Leave pretrain.init empty to train
the `arch` shape from scratch (then --config.tokenizer_dir is required).
"""
from t3d_jax.config_base import base_config


def get_config():
  c = base_config()
  c.mode = "pretrain"
  p = c.pretrain
  p.data = "gsm8k_train"
  p.max_gen_length = 512
  p.global_batch, p.micro_batch = 32, 4
  p.length_bucket = 32
  p.optim.update(lr=1e-5, warmup_steps=20, b2=0.999, weight_decay=0.0)
  c.examples.block_size = 4
  return c
