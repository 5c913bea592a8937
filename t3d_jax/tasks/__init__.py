"""Tasks: what a task *is* (how its prompt asks, what the response continues, how a response
is graded, what rollout stores as its extracted answer, the rows it can grade, the data it
builds), one :class:`Task` entry each in :data:`TASKS`; no module outside this one
compares a task name.

``config.task.name`` picks the task (:func:`load_task`):

* ``math``: GSM8K / MATH500: last ``\\boxed{}``, normalised match, then math_verify
  (:mod:`t3d_jax.evaluation.grading`);
* ``words``: the demo's synthetic category-words task (:mod:`t3d_jax.tasks.words`);
* ``sort``: the synthetic sort-with-ties task (:mod:`t3d_jax.tasks.sort`), the
  recipes' second task;
* ``exact``: the response equals the answer field after whitespace and case
  normalisation (several valid answers: write a function);
* ``code``: HumanEval / MBPP-layout programs, run with their tests in a sandbox
  (:mod:`t3d_jax.tasks.code`, :mod:`t3d_jax.tasks.sandbox`);
* ``package.module:function``: a user function ``(question, answer, response) -> bool``
  or ``(bool, reason)``, imported by path (the current directory is importable).

Each grader returns :class:`t3d_jax.evaluation.grading.GradeResult`. A grader that
raises grades that row wrong with the exception as its reason (counted by the caller).
A grader that cannot grade a row at all (``words`` on a question that is not a words
question) says so in :meth:`Task.check`, before any decoding: an accuracy no grader
computed is never reported.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from typing import Callable, Optional

from t3d_jax.data import code_sets
from t3d_jax.data.tokenizer import math_user_message
from t3d_jax.errors import InputError
from t3d_jax.evaluation.grading import GradeResult, extract_prediction, grade
from t3d_jax.tasks import sort, words

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
  v = words.verify(question, response)
  return GradeResult(v.correct, v.reason, v.prediction, answer)


def _math(question, answer, response, timeout_s) -> GradeResult:
  del question
  return grade(response, answer, timeout_s=timeout_s)


def _words_question_problem(question, answer) -> Optional[str]:
  codes = str(question).split()
  if not codes or any(c not in words.CATEGORIES for c in codes):
    return f"not a words-task question {question!r}"
  return None


def _code_question_problem(question, answer) -> Optional[str]:
  del question
  if "assert" not in str(answer) and "check(" not in str(answer):
    return "its answer is no test program (code data: HumanEval, or MBPP-layout JSONL)"
  return None


def _sort(question, answer, response, timeout_s) -> GradeResult:
  del timeout_s
  ok, reason = sort.verify(question, response)
  return GradeResult(ok, reason, response.strip(), answer)


def _no_problem(question, answer) -> Optional[str]:
  del question, answer
  return None


def _no_prefix(question: str) -> str:
  del question
  return ""


def _stripped(response: str) -> str:
  return response.strip()


def _boxed(response: str) -> str:
  pred, _ = extract_prediction(response)
  return pred or ""


@dataclasses.dataclass(frozen=True)
class Synthetic:
  """A task that builds its own data: ``rows(task_section, seed) -> (train, test)`` and
  ``tokenizer(out_dir)`` (the task mode writes both under the workdir); the
  tokenizer's ``vocab_size`` and the ``prompt_template`` its rows are built for."""
  rows: Callable[..., tuple[list, list]]
  tokenizer: Callable[..., object]
  vocab_size: int
  prompt_template: str


def _synthetic(module) -> Synthetic:
  """A synthetic task module's entry (``split_rows``, ``build_tokenizer``, ``VOCAB_SIZE``,
  ``PROMPT_TEMPLATE``); ``task.min_words`` / ``max_words`` count its answer blocks."""
  def rows(t, seed: int):
    return module.split_rows(t.num_train, t.num_test, seed=seed, min_words=t.min_words,
                             max_words=t.max_words)
  return Synthetic(rows, module.build_tokenizer, module.VOCAB_SIZE, module.PROMPT_TEMPLATE)


@dataclasses.dataclass(frozen=True)
class Task:
  """One ``config.task.name``: ``fn(question, answer, response, timeout_s)`` grades;
  ``question_problem(question, answer)`` says why a row cannot be graded (None: it can);
  ``user_message(question)`` is the prompt's user turn; ``prefix(question)`` the text the
  response continues (appended to the prompt); ``extract_answer(response)`` the answer
  part rollout stores; ``synthetic``: the data it builds (task mode), if any;
  ``machine_check(config)`` refuses (InputError) where this machine cannot grade safely."""
  name: str
  fn: Callable[..., GradeResult]
  question_problem: Callable[[str, object], Optional[str]] = _no_problem
  user_message: Callable[[str], str] = math_user_message
  prefix: Callable[[str], str] = _no_prefix
  extract_answer: Callable[[str], str] = _stripped
  synthetic: Optional[Synthetic] = None
  machine_check: Callable[[object], None] = lambda config: None

  def __call__(self, question, answer, response: str, timeout_s: float = 5.0) -> GradeResult:
    """Grades ``response`` (special tokens removed); an exception in the grader grades
    the row wrong with ``reason`` = "grader raised: <exception>"."""
    try:
      return self.fn(question, answer, response, timeout_s)
    except Exception as e:  # noqa: BLE001 -- a user's grader may raise anything
      return GradeResult(False, f"{ERROR_PREFIX}{type(e).__name__}: {e}"[:300], None,
                         str(answer))

  def check(self, rows, where: str) -> None:
    """Every row must be one this task can grade (before anything is decoded)."""
    for i, r in enumerate(rows):
      problem = self.question_problem(r["question"], r["answer"])
      if problem:
        raise InputError(f"{where}, question {i + 1}: task.name={self.name} cannot grade it "
                         f"({problem}); set --config.task.name to this data's grader "
                         f"({', '.join(TASKS)} or package.module:function)")

  def extract(self, response: str) -> str:
    """The answer part of a response ('' when none): the last \\boxed{} for math, the
    stripped response otherwise."""
    return self.extract_answer(response)


def _code(question, answer, response, timeout_s) -> GradeResult:
  from t3d_jax.tasks.code import grade_code
  return grade_code(question, answer, response, timeout_s)


def _code_machine_check(config) -> None:
  from t3d_jax.tasks import sandbox
  sandbox.require_file_system_layer(bool(config.eval.allow_unsandboxed))


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("math", _math, extract_answer=_boxed),
    Task("words", _words, _words_question_problem, synthetic=_synthetic(words)),
    Task("sort", _sort, sort.question_problem, synthetic=_synthetic(sort)),
    Task("exact", _exact),
    Task("code", _code, _code_question_problem, code_sets.code_user_message,
         code_sets.prefix_of, machine_check=_code_machine_check),
)}


def _user(name: str) -> Task:
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
  return Task(name, call)


def load_task(name: str) -> Task:
  """The task ``config.task.name`` names: a built-in of :data:`TASKS` or a user grader
  ``package.module:function`` (an InputError for anything else)."""
  if name in TASKS:
    return TASKS[name]
  if ":" in name and all(name.partition(":")[::2]):
    return _user(name)
  raise InputError(f"config task.name={name!r} is not one of {', '.join(TASKS)} or "
                   "package.module:function")


def grader_for(config) -> Task:
  """The task ``config.task.name`` names, checked able to grade on this machine (the
  code task: a kernel-enforced sandbox, or ``eval.allow_unsandboxed``): what every
  stage that grades calls, before it decodes."""
  task = load_task(config.task.name)
  task.machine_check(config)
  return task


def grade_response(task: str, question: str, answer: str, response: str,
                   timeout_s: float = 5.0) -> GradeResult:
  """Grades ``response`` (special tokens removed) with the grader ``task`` names."""
  return load_task(task)(question, answer, response, timeout_s)


def extract(task: str, response: str) -> str:
  return load_task(task).extract(response)
