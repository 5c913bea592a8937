"""Tasks: how a response is graded and what rollout stores as its extracted answer.

``config.task.name`` picks one: ``math`` (GSM8K / MATH500: last ``\\boxed{}``, math_verify;
:mod:`t3d_jax.evaluation.grading`) or ``words`` (the demo's synthetic category-words task;
:mod:`t3d_jax.tasks.words`, exact verifier). Both return
:class:`t3d_jax.evaluation.grading.GradeResult`.
"""
from __future__ import annotations

from t3d_jax.errors import InputError
from t3d_jax.evaluation.grading import GradeResult, extract_prediction, grade

TASKS = ("math", "words")


def check(name: str) -> str:
  if name not in TASKS:
    raise InputError(f"config task.name={name!r} is not one of {', '.join(TASKS)}")
  return name


def grade_response(task: str, question: str, answer: str, response: str,
                   timeout_s: float = 5.0) -> GradeResult:
  """Grades ``response`` (special tokens removed) for a question/answer row."""
  if check(task) == "words":
    from t3d_jax.tasks import words
    v = words.verify(question, response)
    return GradeResult(v.correct, v.reason, v.prediction, answer)
  return grade(response, answer, timeout_s=timeout_s)


def extract(task: str, response: str) -> str:
  """The answer part of a response ('' when none): the last \\boxed{} for math, the
  stripped response for words."""
  if check(task) == "words":
    return response.strip()
  pred, _ = extract_prediction(response)
  return pred or ""
