"""T3D against the baselines at CPU scale (README "Baselines"): one base model, one
trajectory set, every distill.method x 3 distill seeds, one table and one plot.

  python -m t3d_jax.main --config configs/compare.py

The demo's task, base model recipe and distillation recipe (configs/demo.py), in its own
workdir (default workdir/compare). Stages: task, pretrain, rollout, distill (one named
run <method>_s<seed> per variant), eval (base and every run at 1, 2 and 4 tokens per
forward), compare (mean ± sd over seeds: accuracy, gap closure, full-step cost, AUP;
<workdir>/compare/). Resumable like every pipeline; --config.mode=compare redraws the
table from the eval results.
"""
from t3d_jax.config_base import config_module
from t3d_jax.distill.methods import METHODS

SEEDS = (0, 1, 2)


def get_config():
  c = config_module("demo.py", relative_to=__file__).get_config()
  c.workdir = "workdir/compare"
  c.pipeline.stages = ("task", "pretrain", "rollout", "distill", "eval", "compare")
  c.pipeline.variants = {f"{m}_s{k}": {"distill": {"method": m, "seed": k}}
                         for m in METHODS for k in SEEDS}
  c.eval.models = ("base={workdir}/model", "distill:*")
  return c
