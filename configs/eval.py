"""Evaluation: models x decoding settings -> accuracy, length, NFE, TPF, tokens/s, AUP.

python -m t3d_jax.main --config configs/eval.py --config.workdir=/tmp/run \
    --config.eval.models='("base=/tmp/run/model", "t3d=/tmp/run/distill/student/model")' \
    [--config.eval.data=gsm8k_test|math500|path.jsonl] [--config.eval.limit=64] \
    [--config.eval.tokens_per_forward='(1, 2, 4)'] [--config.decode.temperature=0.1]

Writes <workdir>/eval/: samples/<model>/<setting>.jsonl, summary.json,
accuracy_vs_tpf.png (one line per model) and TensorBoard scalars (tb/). Each
(model, setting) already finished with the same settings is reused on a rerun.
"""
from t3d_jax.config_base import base_config


def get_config():
  c = base_config()
  c.mode = "eval"
  return c
