"""The objectives on equal terms (README "Baselines"): one base model, one trajectory set,
every distill.method under the same three recipes, 3 distill seeds each:

  offline    the teacher's trajectories only (run <method>_offline_s<seed>)
  verified   the teacher's trajectories the grader passes (distill.filter_correct)
  refresh    the demo's filtered on-policy refresh (the student's own full-step
             trajectories the grader passes replace the teacher's, every 4 rounds)

5 methods x 3 recipes x 3 seeds = 45 runs, every one with the demo's masks (random
positions of each block, uniform ratios) and schedule; one table and one plot.

  python -m t3d_jax.main --config configs/compare.py          # the demo's words task
  python -m t3d_jax.main --config configs/compare.py:sort     # the sort-with-ties task

The task, base model and distillation recipe are the demo's (configs/demo.py:<task>), in
their own workdir (default workdir/compare, workdir/compare_sort). Stages: task,
pretrain, rollout, distill (one named run per variant), eval (base and every run at 1, 2
and 4 tokens per forward), compare (mean ± sd over seeds: accuracy, gap closure,
full-step cost, AUP; <workdir>/compare/). Resumable like every pipeline;
--config.mode=compare redraws the table from the eval results.
"""
from t3d_jax.config_base import config_module
from t3d_jax.distill.methods import METHODS

SEEDS = (0, 1, 2)
OFF = {"refresh_every": 0, "refresh_filter": False, "filter_correct": False}
RECIPES = {
    "offline": OFF,
    "verified": dict(OFF, filter_correct=True),
    "refresh": dict(OFF, refresh_every=4, refresh_filter=True),
}


def get_config(task: str = "words"):
  c = config_module("demo.py", relative_to=__file__).get_config(task)
  c.workdir = "workdir/compare" if task == "words" else f"workdir/compare_{task}"
  c.pipeline.stages = ("task", "pretrain", "rollout", "distill", "eval", "compare")
  c.pipeline.variants = {f"{m}_{r}_s{k}": {"distill": dict(keys, method=m, seed=k)}
                         for m in METHODS for r, keys in RECIPES.items() for k in SEEDS}
  c.eval.models = ("base={workdir}/model", "distill:*")
  return c
