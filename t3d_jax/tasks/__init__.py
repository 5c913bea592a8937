"""Tasks: how a response is graded and what rollout stores as its extracted answer.

``config.task.name`` picks the grader (:func:`load_grader`):

* ``math``: GSM8K / MATH500: last ``\\boxed{}``, normalised match, then math_verify
  (:mod:`t3d_jax.evaluation.grading`);
* ``words``: the demo's synthetic category-words task (:mod:`t3d_jax.tasks.words`);
* ``exact``: the response equals the answer field after whitespace and case
  normalisation (several valid answers: write a function);
* ``code``: HumanEval / MBPP-layout programs, run with their tests in a sandbox
  (:mod:`t3d_jax.tasks.code`, :mod:`t3d_jax.tasks.sandbox`);
* ``package.module:function``: a user function ``(question, answer, response) -> bool``
  or ``(bool, reason)``, imported by path (the current directory is importable).

Each grader returns :class:`t3d_jax.evaluation.grading.GradeResult`. A grader that
raises grades that row wrong with the exception as its reason (counted by the caller).
A grader that cannot grade a row at all (``words`` on a question that is not a words
question) says so in :meth:`Grader.check`, before any decoding: an accuracy no grader
computed is never reported.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from typing import Callable, Optional

from t3d_jax.data.tokenizer import math_user_message
from t3d_jax.errors import InputError
from t3d_jax.evaluation.grading import GradeResult, extract_prediction, grade

BUILTIN = ("math", "words", "exact", "code")
ERROR_PREFIX = "grader raised: "


def _norm(text: str) -> str:
  return " ".join(str(text).split()).casefold()


def _exact(question, answer, response, timeout_s) -> GradeResult:
  del question, timeout_s
  pred, ref = _norm(response), _norm(answer)
  return GradeResult(pred == ref, "exact match" if pred == ref else "no exact match", pred,
                     ref)


def _words(question, answer, response, timeout_s) -> GradeResult:
  del timeout_s
  from t3d_jax.tasks import words
  v = words.verify(question, response)
  return GradeResult(v.correct, v.reason, v.prediction, answer)


def _math(question, answer, response, timeout_s) -> GradeResult:
  del question
  return grade(response, answer, timeout_s=timeout_s)


def _words_question_problem(question, answer) -> Optional[str]:
  from t3d_jax.tasks import words
  codes = str(question).split()
  if not codes or any(c not in words.CATEGORIES for c in codes):
    return f"not a words-task question {question!r}"
  return None


def _code_question_problem(question, answer) -> Optional[str]:
  del question
  if "assert" not in str(answer) and "check(" not in str(answer):
    return "its answer is no test program (code data: HumanEval, or MBPP-layout JSONL)"
  return None


@dataclasses.dataclass(frozen=True)
class Grader:
  name: str
  fn: Callable[..., GradeResult]                    # (question, answer, response, timeout_s)
  question_problem: Callable[[str, object], Optional[str]] = lambda q, a: None
  user_message: Callable[[str], str] = math_user_message   # the prompt's user turn

  def __call__(self, question, answer, response: str, timeout_s: float = 5.0) -> GradeResult:
    """Grades ``response`` (special tokens removed); an exception in the grader grades
    the row wrong with ``reason`` = "grader raised: <exception>"."""
    try:
      return self.fn(question, answer, response, timeout_s)
    except Exception as e:  # noqa: BLE001 -- a user's grader may raise anything
      return GradeResult(False, f"{ERROR_PREFIX}{type(e).__name__}: {e}"[:300], None,
                         str(answer))

  def check(self, rows, where: str) -> None:
    """Every row must be one this grader can grade (before anything is decoded)."""
    for i, r in enumerate(rows):
      problem = self.question_problem(r["question"], r["answer"])
      if problem:
        raise InputError(f"{where}, question {i + 1}: task.name={self.name} cannot grade it "
                         f"({problem}); set --config.task.name to this data's grader "
                         f"({', '.join(BUILTIN)} or package.module:function)")

  def extract(self, response: str) -> str:
    """The answer part of a response ('' when none): the last \\boxed{} for math, the
    stripped response otherwise."""
    if self.name == "math":
      pred, _ = extract_prediction(response)
      return pred or ""
    return response.strip()


def _user(name: str) -> Grader:
  module, _, attr = name.partition(":")
  if "" not in sys.path and os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())  # a grader module next to the user's data
  try:
    fn = getattr(importlib.import_module(module), attr)
  except Exception as e:  # noqa: BLE001 -- ImportError, AttributeError, its own errors
    raise InputError(f"config task.name={name!r}: cannot import it ({type(e).__name__}: "
                     f"{e})") from None
  if not callable(fn):
    raise InputError(f"config task.name={name!r}: {attr} is not a function")

  def call(question, answer, response, timeout_s):
    del timeout_s
    out = fn(question, answer, response)
    ok, reason = (out if isinstance(out, tuple) and len(out) == 2 else (out, ""))
    if not isinstance(ok, (bool, int)):
      raise TypeError(f"returned {type(out).__name__}, expected bool or (bool, reason)")
    return GradeResult(bool(ok), str(reason) or ("correct" if ok else "wrong"), None,
                       str(answer))
  return Grader(name, call)


def load_grader(name: str) -> Grader:
  """The grader ``config.task.name`` names (an InputError for an unknown one)."""
  if name == "math":
    return Grader(name, _math)
  if name == "words":
    return Grader(name, _words, _words_question_problem)
  if name == "exact":
    return Grader(name, _exact)
  if name == "code":
    from t3d_jax.data.code_sets import code_user_message
    from t3d_jax.tasks.code import grade_code
    return Grader(name, grade_code, _code_question_problem, code_user_message)
  if ":" in name and all(name.partition(":")[::2]):
    return _user(name)
  raise InputError(f"config task.name={name!r} is not one of {', '.join(BUILTIN)} or "
                   "package.module:function")


def grade_response(task: str, question: str, answer: str, response: str,
                   timeout_s: float = 5.0) -> GradeResult:
  """Grades ``response`` (special tokens removed) with the grader ``task`` names."""
  return load_grader(task)(question, answer, response, timeout_s)


def extract(task: str, response: str) -> str:
  return load_grader(task).extract(response)
