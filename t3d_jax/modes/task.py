"""task mode: writes a synthetic task's data and tokenizer under the workdir.

    python -m t3d_jax.main --config configs/demo.py --config.mode=task

For ``task.name=words`` (t3d_jax/tasks/words.py): ``<workdir>/task/train.jsonl`` and
``test.jsonl`` (question/answer rows; test questions never occur in training) and the
character-level tokenizer in ``<workdir>/tokenizer``. Written to temp paths and renamed;
a rerun with files present keeps them (the pipeline's config check guards the settings).
"""
from __future__ import annotations

from absl import logging

from t3d_jax.data.jsonl import write_jsonl_atomic
from t3d_jax.distributed import barrier, is_main_process
from t3d_jax.errors import InputError
from t3d_jax.fileio import atomic_dir
from t3d_jax.modes.stage import Result, Stage
from t3d_jax.tasks import TASKS, load_task
from t3d_jax.workdir import Workdir


def paths(layout: Workdir) -> dict:
  return dict(train=layout.task / "train.jsonl", test=layout.task / "test.jsonl",
              tokenizer=layout.tokenizer)


def run(config) -> Result:
  t = config.task
  task = load_task(t.name)
  if task.synthetic is None:
    built = ", ".join(n for n, k in TASKS.items() if k.synthetic)
    raise InputError(f"task mode builds the synthetic tasks only (task.name={built}); "
                     f"task.name={t.name!r} uses shipped or user data directly")
  p = paths(Workdir(config))
  if is_main_process():  # one writer; the others wait for the files
    if (p["train"].is_file() and p["test"].is_file()
        and (p["tokenizer"] / "tokenizer.json").is_file()):
      print(f"[task] {p['train'].parent} and {p['tokenizer']} exist, kept", flush=True)
    else:
      _write(config, task, p)
  barrier("task: data written")
  return Result("task", tuple(p.values()))


def _write(config, task, p: dict) -> None:
  try:
    train, test = task.synthetic.rows(config.task, config.seed)
  except ValueError as e:
    raise InputError(f"config task: {e}") from None
  write_jsonl_atomic(p["train"], train)
  write_jsonl_atomic(p["test"], test)
  with atomic_dir(p["tokenizer"]) as tmp:
    task.synthetic.tokenizer(tmp)
  print(f"[task] {task.name}: {len(train)} train / {len(test)} test rows in {p['train'].parent}, "
        f"tokenizer in {p['tokenizer']}", flush=True)
  logging.info("task data written under %s", config.workdir)


STAGE = Stage("task", run, "writes a synthetic task's data and tokenizer under the workdir",
              keys=("task", "seed"),
              outputs=lambda config, layout: [layout.task, layout.tokenizer])
