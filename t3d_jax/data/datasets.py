"""The question/answer sets shipped with the package, and name-or-path resolution.

Shipped (``t3d_jax/data/files``, installed as package data, so nothing outside the
package is needed):

* ``gsm8k_train`` (7,473 rows), ``gsm8k_test`` (1,319 rows): GSM8K; the answer is the
  worked solution ending with the reference line ``#### N`` (N may contain thousands
  commas, e.g. ``#### 1,080``).
* ``math500`` (500 rows): the MATH500 subset; the answer is the final answer in LaTeX
  (``\\frac{14}{3}``, ``\\left( 3, \\frac{\\pi}{2} \\right)``, ``\\text{Evelyn}``, ...).

Every reader takes either one of these names or a path to a user JSONL file.
"""
from __future__ import annotations

import os
import pathlib
from typing import Optional, Union

from t3d_jax.data import jsonl

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
