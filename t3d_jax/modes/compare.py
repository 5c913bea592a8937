"""compare mode: the eval results of several methods x seeds as one table and one plot.

    python -m t3d_jax.main --config configs/compare.py      # the whole comparison
    python -m t3d_jax.main --config configs/compare.py --config.mode=compare  # table only

Reads the eval summary (``<workdir>/eval/summary.json``, or ``eval.output_dir``), groups
models named ``<method>_s<seed>`` by method (t3d_jax/evaluation/compare.py) and writes
``<workdir>/compare/``: ``compare.json`` (per method and TPF: mean, sd and per-seed
values of accuracy, gap closure, full-step cost, AUP) and ``accuracy_vs_tpf.png``
(accuracy against tokens per forward, one line per method, ± sd error bars); prints
the table.
"""
from __future__ import annotations

import json

from t3d_jax.data.jsonl import write_json_atomic
from t3d_jax.distributed import is_main_process
from t3d_jax.errors import InputError
from t3d_jax.evaluation.compare import aggregate, format_table
from t3d_jax.evaluation.plots import plot_accuracy_vs_tpf
from t3d_jax.modes.stage import Result, Stage
from t3d_jax.workdir import Workdir


def run(config) -> Result:
  layout = Workdir(config)
  out = layout.compare  # needs the workdir
  path = layout.eval / "summary.json"
  if not path.is_file():
    raise InputError(f"compare: {path} does not exist: run --config.mode=eval first")
  summary = json.loads(path.read_text())
  strategies = {r["strategy"] for r in summary["results"]}
  if len(strategies) != 1:
    raise InputError(f"compare: {path} holds strategies {sorted(strategies)}; compare one")
  try:
    groups = aggregate(summary["results"], summary["aup"], config.compare.base)
  except ValueError as e:
    raise InputError(f"compare: {path}: {e} (config compare.base)") from None
  if not is_main_process():
    return Result("compare", (out,), dict(groups=groups))
  curves = {g: [(t, a["mean"], a["mean"] - a["sd"], a["mean"] + a["sd"])
                for t, a in e["accuracy"].items()] for g, e in groups.items()}
  plot = plot_accuracy_vs_tpf(curves, out / "accuracy_vs_tpf.png",
                              title=f"{summary['data']}: accuracy vs tokens per forward "
                                    "(mean ± sd over seeds)")
  write_json_atomic(out / "compare.json", dict(data=summary["data"], base=config.compare.base,
                                               groups=groups, plot=str(plot)))
  print(f"[compare] {summary['data']}: {summary['n']} questions, accuracy % (mean ± sd over "
        f"seeds)\n{format_table(groups, config.compare.base)}\n[compare] written to {out}",
        flush=True)
  return Result("compare", (out,), dict(groups=groups))


STAGE = Stage("compare", run, "groups eval results by method: mean ± sd over seeds",
              keys=("compare", "eval.output_dir"),
              inputs=lambda config, layout: [layout.eval / "summary.json"],
              outputs=lambda config, layout: [layout.compare])
