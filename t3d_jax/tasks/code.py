"""The code grader (``task.name=code``): extract the program, run it with its tests in the
sandbox (:mod:`t3d_jax.tasks.sandbox`) (pass@k: :mod:`t3d_jax.evaluation.metrics`).

Extraction follows the released evaluation: the code is the last fenced ```python block
of prefix + response (HumanEval's prefix opens a block holding the stub, so a response
that completes the body and closes the block yields stub + body); a response that opens
a complete block of its own is taken from it (the released rule would pair the prefix's
opening fence with it and keep only the stub); when there is no block, a HumanEval
response is taken as the completion appended to the stub. The test program
(the row's answer: HumanEval's ``check``, or MBPP's setup and asserts) runs after it.
"""
from __future__ import annotations

import re
import sys

from t3d_jax.data.code_sets import is_python, prefix_of
from t3d_jax.evaluation.grading import GradeResult
from t3d_jax.tasks import sandbox

_BLOCK = re.compile(r"```python(.*?)```", re.S)
_noted = set()


def extract_code(question: str, response: str) -> str | None:
  """The program a response gives for ``question`` (None when it gives none): the last
  complete ```python block of the response, else of prefix + response, else (HumanEval)
  the stub followed by the completion up to a closing fence."""
  blocks = _BLOCK.findall(response) or _BLOCK.findall(prefix_of(question) + response)
  if blocks:
    return blocks[-1].strip("\n")
  if is_python(question):  # an unclosed block: the completion of the stub
    return question + response.split("```", 1)[0]
  return None


def note_isolation() -> None:
  """Says once per process which isolation layers this machine lacks."""
  for text in sandbox.missing():
    if text not in _noted:
      _noted.add(text)
      print(f"[code grader] {text}; the other layers apply", file=sys.stderr, flush=True)


def grade_code(question, answer, response, timeout_s: float = 10.0) -> GradeResult:
  """Runs the extracted program and the row's tests; correct when it exits 0."""
  code = extract_code(question, response)
  if code is None:
    return GradeResult(False, "no ```python block in the response", None, "tests")
  note_isolation()
  cpu = max(1, int(timeout_s))
  outcome = sandbox.run_program(f"{code}\n\n{answer}",
                                sandbox.Limits(wall_s=timeout_s + 2.0, cpu_s=cpu))
  return GradeResult(outcome.passed, outcome.reason, code, "tests")
