"""The question/answer sets shipped with the package, and name-or-path resolution.

Shipped (``t3d_jax/data/files``, installed as package data, so nothing outside the
package is needed):

* ``gsm8k_train`` (7,473 rows), ``gsm8k_test`` (1,319 rows): GSM8K; the answer is the
  worked solution ending with the reference line ``#### N`` (N may contain thousands
  commas, e.g. ``#### 1,080``).
* ``math500`` (500 rows): the MATH500 subset; the answer is the final answer in LaTeX
  (``\\frac{14}{3}``, ``\\left( 3, \\frac{\\pi}{2} \\right)``, ``\\text{Evelyn}``, ...).

Every reader takes either one of these names or a path to a user JSONL file;
:func:`load_rows` reads a mode's data section (JSONL directly, or through the offline
TFDS builder).
"""
from __future__ import annotations

import os
import pathlib
from typing import Optional, Union

from t3d_jax.data import code_sets, jsonl
from t3d_jax.errors import InputError
from t3d_jax.workdir import expand_workdir

FILES_DIR = pathlib.Path(__file__).resolve().parent / "files"
SHIPPED = {
    "gsm8k_train": "gsm8k_train.jsonl",
    "gsm8k_test": "gsm8k_test.jsonl",
    "math500": "math500.jsonl",
}


def resolve_dataset(name_or_path: Union[str, os.PathLike]) -> pathlib.Path:
  """Path of a shipped set (by name) or of a user file (by path).

  Raises :class:`~t3d_jax.data.jsonl.JsonlError` naming the argument and the known
  names when it is neither."""
  text = os.fspath(name_or_path)
  if text in SHIPPED:
    path = FILES_DIR / SHIPPED[text]
    if not path.exists():
      raise jsonl.JsonlError(f"shipped dataset {text!r} missing at {path}: the package "
                             f"was installed without its data files")
    return path
  path = pathlib.Path(text).expanduser()
  if path.is_file():
    return path
  raise jsonl.JsonlError(f"{text}: not a shipped dataset name ({', '.join(sorted(SHIPPED))})"
                         f" and no such file")


def is_gsm8k(name_or_path: Union[str, os.PathLike]) -> bool:
  """True for the shipped GSM8K sets (answers carry a ``#### N`` reference line)."""
  return os.fspath(name_or_path).startswith("gsm8k")


def load_qa(name_or_path: Union[str, os.PathLike], question_field: str = "question",
            answer_field: str = "answer", limit: Optional[int] = None) -> list[dict]:
  """Rows ``{"question", "answer", "index"}`` of a shipped set or a user JSONL."""
  return jsonl.read_qa_jsonl(resolve_dataset(name_or_path), question_field, answer_field,
                             limit=limit)


def _code_data(data: str) -> bool:
  """HumanEval, or a JSONL whose rows have the MBPP or HumanEval layout."""
  if data == code_sets.HUMANEVAL:
    return True
  first = code_sets.first_object(data) if os.path.isfile(data) else None
  return first is not None and code_sets.is_code_layout(first)


# shipped set name -> (TFDS config of t3d_math_qa, split)
_TFDS_SHIPPED = {"gsm8k_train": ("gsm8k", "train"), "gsm8k_test": ("gsm8k", "test"),
                 "math500": ("math500", "test")}


def load_rows(d, workdir: str = "") -> list[dict]:
  """Question/answer rows ``{question, answer, index}`` of ``d.data`` (a shipped set
  name, "humaneval", or a JSONL path; "{workdir}" in it is replaced by ``workdir``), first
  ``d.limit`` rows (0 = all), directly from the JSONL or, with ``d.use_tfds``, through
  the offline TFDS builder (prepared under ``d.tfds_dir``, default <workdir>/tfds). Code
  data (HumanEval, MBPP- or HumanEval-layout JSONL) becomes rows with a test program as
  the answer and a ``prefix`` (:mod:`t3d_jax.data.code_sets`)."""
  if not d.data:
    raise InputError("no dataset: set data to gsm8k_train, gsm8k_test, math500 or a "
                     "question/answer JSONL path")
  if d.limit < 0:
    raise InputError(f"limit must be >= 0 (0 = all rows), got {d.limit}")
  limit = d.limit or None
  data = expand_workdir(d.data, workdir)
  if not d.use_tfds and _code_data(data):
    rows = code_sets.load_code_rows(data, limit=limit)
  elif not d.use_tfds:
    rows = load_qa(data, d.question_field, d.answer_field, limit=limit)
  else:
    rows = _load_rows_tfds(d, data, workdir, limit)
  if not rows:
    raise InputError(f"{data}: no question/answer rows")
  return rows


def _load_rows_tfds(d, data: str, workdir: str, limit: Optional[int]) -> list[dict]:
  from t3d_jax.data import tfds_builders as tb
  from t3d_jax.data.loader import decode_row
  data_dir = d.tfds_dir or (os.path.join(workdir, "tfds") if workdir else "")
  if not data_dir:
    raise InputError("use_tfds needs tfds_dir (or --config.workdir)")
  if data in _TFDS_SHIPPED and (d.question_field, d.answer_field) == ("question", "answer"):
    source, split = _TFDS_SHIPPED[data]
  else:
    source = tb.user_qa_config({"train": data}, d.question_field, d.answer_field)
    split = "train"
  builder = tb.prepare(tb.T3dMathQa, source, data_dir)
  src = builder.as_data_source()[split]
  n = len(src) if limit is None else min(limit, len(src))
  rows = [decode_row(src[i]) for i in range(n)]
  return [dict(question=r["question"], answer=r["answer"], index=int(r["index"])) for r in rows]
