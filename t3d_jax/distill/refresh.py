"""On-policy trajectory refresh (``distill.refresh_every``, beyond the paper).

Every ``refresh_every`` self-play rounds (``refresh_every * round_interval`` updates) the
current student re-decodes every training sample's prompt at the teacher's full-step
setting (``config.decode``, the rollout's jitted sampler) and the following updates
train on the new trajectories: sample k stays the k-th example (same prompt, same place
in the epoch order), only its response and step_map change. With ``refresh_filter`` a
new trajectory replaces the current one only when the task's grader says it is correct
(the teacher's, or an earlier refresh's, stays otherwise).

Resumable and deterministic: refresh p (after update p) decodes training sample k with
``fold_in(fold_in(key(seed), _STREAM), p)`` folded with (k, 0) (the sampler's
per-sequence keys: the same whatever the decode batch size) and is written to
``<run>/refresh/<p>.jsonl`` (temp path, then rename) before the checkpoint of update p,
so a resumed run reads the set its updates used; files past the resumed step (a killed
run's) are removed and redone.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Optional, Sequence

import jax
from absl import logging

from t3d_jax import distributed
from t3d_jax.data.jsonl import iter_jsonl, write_jsonl_atomic
from t3d_jax.distill.data import Sample
from t3d_jax.errors import InputError
from t3d_jax.sampling import Decoder

_STREAM = 0x7E5  # the refresh decodes' key: fold_in(fold_in(key(seed), _STREAM), p)


def period(refresh_every: int, round_interval: int) -> int:
  """Updates between refreshes (0: off); one-line errors for bad keys."""
  if refresh_every < 0:
    raise InputError(f"config distill.refresh_every={refresh_every}: must be >= 0 "
                     "(self-play rounds between refreshes; 0 = off)")
  if refresh_every and round_interval < 1:
    raise InputError("config distill.refresh_every counts self-play rounds: set "
                     f"distill.round_interval >= 1 (got {round_interval})")
  return refresh_every * round_interval


@dataclasses.dataclass
class Refresher:
  """The training samples over the run: ``samples_for(step)`` gives the set update
  ``step`` (0-based) trains on; ``__call__(done, state)`` is the loop's hook, called
  before the first update of this run (done = its start) and after every update."""
  out: Path                       # <run>/refresh/
  every: int                      # updates between refreshes (> 0)
  samples: list                   # the current set
  decoder: Decoder                # the decode section, for the model the params decode with
  tokenizer: object
  seed: int
  grader: Optional[object] = None          # with refresh_filter: keep only correct ones
  questions: Optional[dict] = None         # JSONL row -> (question, answer) for the grader
  max_gen_length: Optional[int] = None
  last: dict = dataclasses.field(default_factory=dict)   # the latest refresh's counts
  _at: int = dataclasses.field(default=0, init=False)   # the point the current set is from
  _initial: Sequence = dataclasses.field(default=(), init=False)   # the teacher's set
  _begun: bool = dataclasses.field(default=False, init=False)

  def __post_init__(self):
    self._initial = list(self.samples)

  def point(self, step: int) -> int:
    """The refresh point whose set update ``step`` uses (0: the teacher's)."""
    return step // self.every * self.every

  def path(self, p: int) -> Path:
    return self.out / f"{p}.jsonl"

  def samples_for(self, step: int) -> list:
    p = self.point(step)
    if p != self._at:
      self.samples = self._initial if p == 0 else self._load(p)
      self._at = p
    return self.samples

  def __call__(self, done: int, state) -> None:
    """The loop's hook: first with this run's start (refresh files past it are a killed
    run's: removed, their updates are redone), then after every update."""
    if not self._begun:
      self._begun = True
      if distributed.is_main_process() and self.out.is_dir():
        for f in self.out.glob("*.jsonl"):
          if re.fullmatch(r"\d+", f.stem) and int(f.stem) > done:
            f.unlink()
      distributed.barrier(f"{self.out}: refresh files past update {done} removed")
    if done and done % self.every == 0 and not self.path(done).is_file():
      self._refresh(done, state.params)

  def _refresh(self, p: int, params) -> None:
    current = self.samples_for(p - 1)   # the set the updates before p trained on
    host = distributed.gather_to_host(params)   # collective: every process takes part
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.seed), _STREAM), p)
    res = self.decoder.decode(host, [s.prompt_ids for s in current], key)
    rows, new = [], []
    for k, (s, r) in enumerate(zip(current, res)):
      ids, steps = r["response_ids"][:self.max_gen_length], r["step_map"][:self.max_gen_length]
      ok = None
      if self.grader is not None:
        q, a = self.questions[s.row]
        text = self.tokenizer.decode(r["response_ids"], skip_special_tokens=True)
        ok = bool(self.grader(q, a, text).correct)
      keep = self.grader is None or ok
      rows.append(dict(sample=k, row=s.row, response_ids=ids, step_map=steps, nfe=r["nfe"],
                       correct=ok, replaced=bool(keep)))
      new.append(Sample(s.prompt_ids, tuple(ids), tuple(steps), s.row) if keep else s)
    if distributed.is_main_process():
      self.out.mkdir(parents=True, exist_ok=True)
      write_jsonl_atomic(self.path(p), rows)
    distributed.barrier(f"{self.path(p)} written")
    self.last = counts(rows)
    self.samples, self._at = new, p
    logging.info("refresh after update %d: %s", p, self.last)

  def _load(self, p: int) -> list:
    """The set of refresh ``p`` from its file: the previous set with the replaced
    samples swapped in (files are read in order from the teacher's set)."""
    cur = list(self._initial)
    for q in range(self.every, p + 1, self.every):
      path = self.path(q)
      if not path.is_file():
        raise InputError(f"{path}: missing; the run's refresh files are incomplete (rerun "
                         "with --config.overwrite=True to start the run over)")
      rows = [r for _, r in iter_jsonl(path)]
      if len(rows) != len(cur):
        raise InputError(f"{path}: {len(rows)} rows for {len(cur)} samples (written by "
                         "another run? --config.overwrite=True starts this one over)")
      self.last = counts(rows)
      for r in rows:
        if r["replaced"]:
          s = cur[r["sample"]]
          cur[r["sample"]] = Sample(s.prompt_ids, tuple(r["response_ids"]),
                                    tuple(r["step_map"]), s.row)
    return cur


def counts(rows) -> dict:
  """A refresh's scalars for the metrics: the fraction of samples replaced and, with a
  grader, the fraction of new trajectories graded correct."""
  n = max(len(rows), 1)
  out = dict(refresh_replaced=sum(bool(r["replaced"]) for r in rows) / n)
  if rows and rows[0]["correct"] is not None:
    out["refresh_correct"] = sum(bool(r["correct"]) for r in rows) / n
  return out


def row_questions(path) -> dict:
  """JSONL row (1-based) -> (question, answer) of a trajectories file, for the grader."""
  return {row: (obj.get("question", ""), obj["answer"]) for row, obj in iter_jsonl(path)}
