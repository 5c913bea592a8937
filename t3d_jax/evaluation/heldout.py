"""The model's full-step accuracy on questions it does not train on, while it trains.

``pretrain.eval_every`` > 0 holds out the last ``pretrain.eval_questions`` distinct
questions of the training data (at most a quarter of them) (every row asking one of them leaves the training set);
every ``eval_every`` updates and after the last, :class:`HeldOut` decodes them with the
``decode`` section (the teacher's full-step setting, the sampler rollout uses) and grades
the responses with ``task.name`` (each evaluation's responses and verdicts in
``<workdir>/pretrain/heldout/<update>.jsonl``). ``pretrain.target_accuracy`` stops pretraining once
it is reached (:func:`t3d_jax.train.loop.run`), so a task gets a base that can do it
without guessing a step count; ``max_steps`` stays the cap.

Deterministic: evaluation ``p`` (after update p) decodes question k with
``fold_in(fold_in(key(seed), _STREAM), p)`` folded with (k, 0), so a resumed run measures
what an uninterrupted one measured.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import jax

from t3d_jax import distributed
from t3d_jax.data.jsonl import write_jsonl_atomic
from t3d_jax.errors import InputError
from t3d_jax.sampling import Decoder
from t3d_jax.tasks import Task

_STREAM = 0x4E1D  # evaluation p decodes with fold_in(fold_in(key(seed), _STREAM), p)
FIGURE = "heldout_accuracy"


def split(rows: Sequence[dict], n: int, data: str) -> tuple[list[dict], list[dict]]:
  """(training rows, held-out rows): the last ``n`` distinct questions of ``rows`` (one
  row each, the last asking it), at most a quarter of them, are held out, with every row
  asking one of them."""
  if n < 1:
    raise InputError(f"config pretrain.eval_questions={n}: must be >= 1")
  distinct = len({str(r["question"]) for r in rows})
  n = min(n, distinct // 4)
  if n < 1:
    raise InputError(f"{data}: {len(rows)} rows with {distinct} distinct questions: too few "
                     "to hold some out (pretrain.eval_every needs at least 4)")
  held: dict[str, dict] = {}
  for r in reversed(rows):
    q = str(r["question"])
    if q not in held:
      held[q] = r
      if len(held) == n:
        break
  train = [r for r in rows if str(r["question"]) not in held]
  return train, list(reversed(held.values()))


def check_settings(eval_every: int, target: float) -> None:
  if eval_every < 0:
    raise InputError(f"config pretrain.eval_every={eval_every}: must be >= 0 (0 = off)")
  if not 0.0 <= target <= 1.0:
    raise InputError(f"config pretrain.target_accuracy={target}: must be in [0, 1] "
                     "(0 = no early stop)")
  if target and not eval_every:
    raise InputError(f"config pretrain.target_accuracy={target} needs "
                     "pretrain.eval_every > 0 (how often the accuracy is measured)")


@dataclasses.dataclass
class HeldOut:
  """``__call__(done, state) -> {FIGURE: accuracy}``: the loop's ``evaluate`` hook
  (a collective: every process decodes its share)."""
  decoder: Decoder
  tokenizer: object
  grader: Task
  rows: Sequence[dict]           # question / answer
  prompt_ids: Sequence[Sequence[int]]
  seed: int
  out: Path                      # <update>.jsonl: responses and verdicts
  target: float = 0.0

  def __call__(self, done: int, state) -> dict:
    host = distributed.gather_to_host(state.params)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), _STREAM), done)
    res = self.decoder.decode(host, list(self.prompt_ids), key)
    graded = []
    for r, x in zip(self.rows, res):
      text = self.tokenizer.decode(x["response_ids"], skip_special_tokens=True)
      g = self.grader(r["question"], r["answer"], text)
      graded.append(dict(question=r["question"], answer=r["answer"], output=text,
                         correct=bool(g.correct), reason=g.reason))
    if distributed.is_main_process():
      write_jsonl_atomic(self.out / f"{done}.jsonl", graded)
    return {FIGURE: sum(g["correct"] for g in graded) / len(graded)}

  def reached(self, figures: dict) -> bool:
    return bool(self.target) and figures.get(FIGURE, 0.0) >= self.target
