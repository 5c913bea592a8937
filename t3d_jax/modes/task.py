"""task mode: writes a synthetic task's data and tokenizer under the workdir.

    python -m t3d_jax.main --config configs/demo.py --config.mode=task

For ``task.name=words`` (t3d_jax/tasks/words.py): ``<workdir>/task/train.jsonl`` and
``test.jsonl`` (question/answer rows; test questions never occur in training) and the
character-level tokenizer in ``<workdir>/tokenizer``. Written to temp paths and renamed;
a rerun with files present keeps them (the pipeline's config check guards the settings).
"""
from __future__ import annotations

from pathlib import Path

from absl import logging

from t3d_jax.data.jsonl import write_jsonl_atomic
from t3d_jax.errors import InputError
from t3d_jax.fileio import atomic_dir


def paths(workdir) -> dict:
  w = Path(workdir)
  return dict(train=w / "task" / "train.jsonl", test=w / "task" / "test.jsonl",
              tokenizer=w / "tokenizer")


def run(config) -> None:
  t = config.task
  if t.name != "words":
    raise InputError(f"task mode builds the synthetic tasks only (task.name=words); "
                     f"task.name={t.name!r} uses shipped or user data directly")
  if not config.workdir:
    raise InputError("task mode needs --config.workdir")
  import jax

  from t3d_jax.distributed import barrier
  p = paths(config.workdir)
  if jax.process_index() == 0:  # one writer; the others wait for the files
    if (p["train"].is_file() and p["test"].is_file()
        and (p["tokenizer"] / "tokenizer.json").is_file()):
      print(f"[task] {p['train'].parent} and {p['tokenizer']} exist, kept", flush=True)
    else:
      _write(config, p)
  barrier("task: data written")


def _write(config, p: dict) -> None:
  from t3d_jax.tasks import words
  t = config.task
  try:
    train, test = words.split_rows(t.num_train, t.num_test, seed=config.seed,
                                   min_words=t.min_words, max_words=t.max_words)
  except ValueError as e:
    raise InputError(f"config task: {e}") from None
  write_jsonl_atomic(p["train"], train)
  write_jsonl_atomic(p["test"], test)
  with atomic_dir(p["tokenizer"]) as tmp:
    words.build_tokenizer(tmp)
  print(f"[task] words: {len(train)} train / {len(test)} test rows in {p['train'].parent}, "
        f"tokenizer in {p['tokenizer']}", flush=True)
  logging.info("task data written under %s", config.workdir)
