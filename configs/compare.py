"""T3D against the baselines at CPU scale (README "Baselines"): one base model, one
trajectory set, every distill.method x 3 distill seeds offline (on the teacher's
trajectories only, the paper's trajectory-state masks), T3D with random block masks
offline (t3d_random), the demo's recipe (random masks + on-policy refresh filtered by
the verifier: t3d_refresh) and refresh with the trajectory-state masks, filtered
(t3d_trace_refresh) or not (t3d_trace_refresh_all): 27 runs, one table and one plot.

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
  c.examples.mask_strategy = "trace"   # the paper's trajectory states (offline rows)
  offline = {"refresh_every": 0, "refresh_filter": False}  # no refresh: both at the default
  v = {f"{m}_s{k}": {"distill": dict(offline, method=m, seed=k)} for m in METHODS for k in SEEDS}
  for k in SEEDS:  # T3D with random block masks, offline; the demo's recipe; refresh alone
    v[f"t3d_random_s{k}"] = {"distill": dict(offline, seed=k),
                             "examples": {"mask_strategy": "random"}}
    v[f"t3d_refresh_s{k}"] = {"distill": {"seed": k}, "examples": {"mask_strategy": "random"}}
    v[f"t3d_trace_refresh_s{k}"] = {"distill": {"seed": k}}
    v[f"t3d_trace_refresh_all_s{k}"] = {"distill": {"seed": k, "refresh_filter": False}}
  c.pipeline.variants = v
  c.eval.models = ("base={workdir}/model", "distill:*")
  return c
