"""The teacher is measured before anyone trains on it (rollout's check).

T3D distils the model's *own* trajectories: a teacher that fails the task makes every
later number meaningless. After the rollout, :func:`measure` grades every stored sample
with ``task.name`` (when the rows carry answers the grader can use) and :func:`check`
stops the pipeline when the accuracy is below ``rollout.min_teacher_accuracy`` (unless
``--config.force=True``), with one line saying what was measured and what to do.
"""
from __future__ import annotations

from pathlib import Path

from t3d_jax.data.jsonl import iter_jsonl
from t3d_jax.errors import InputError
from t3d_jax.tasks import Task


class TeacherError(InputError):
  """The teacher's measured accuracy is below rollout.min_teacher_accuracy."""


def measure(path: Path, grader: Task) -> dict:
  """{measured, samples, correct, accuracy} over every sample of the trajectories file,
  or {measured: False, why} when the rows have no answers or the grader cannot grade
  them."""
  rows = [obj for _, obj in iter_jsonl(path)]
  if not rows or all(str(r.get("answer") or "").strip() == "" for r in rows):
    return dict(measured=False, why="the data has no answers")
  try:
    grader.check(rows, str(path))
  except InputError as e:
    return dict(measured=False, why=str(e))
  n = right = 0
  for r in rows:
    for text in r["output"]:
      n += 1
      right += bool(grader(r["question"], r["answer"], text).correct)
  return dict(measured=True, task=grader.name, samples=n, correct=right,
              accuracy=right / max(n, 1))


def check_minimum(minimum: float) -> None:
  if not 0 <= minimum <= 1:
    raise InputError(f"config rollout.min_teacher_accuracy={minimum}: must be in [0, 1] "
                     "(0 = report only)")


def describe(m: dict) -> str:
  if not m.get("measured"):
    return f"teacher not measured ({m.get('why', 'no grader')})"
  return (f"teacher accuracy {100 * m['accuracy']:.1f} % ({m['correct']} of {m['samples']} "
          f"samples graded correct by task {m['task']})")


def check(m: dict, minimum: float, force: bool, path: Path) -> None:
  """Raises :class:`TeacherError` when ``m`` is below ``minimum`` (or unmeasured while a
  minimum is set), unless ``force``."""
  if not minimum or force:
    return
  todo = ("the trajectories stay in {}; --config.force=True distils them anyway".format(path))
  if not m.get("measured"):
    raise TeacherError(f"rollout: {describe(m)}, so rollout.min_teacher_accuracy={minimum} "
                       f"cannot be checked: give the data answers and set task.name to its "
                       f"grader; {todo}")
  if m["accuracy"] < minimum:
    raise TeacherError(
        f"rollout: {describe(m)}, below rollout.min_teacher_accuracy={minimum}: distilling "
        "it would teach its failures. Pretrain longer (pretrain.max_steps, or "
        "pretrain.eval_every + pretrain.target_accuracy), use a larger arch, or check the "
        f"converted model and the prompt template (prompt_template); {todo}")
