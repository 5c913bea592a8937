"""JSON-lines input and output with one clear error per bad input.

Readers raise :class:`JsonlError` naming the file and the 1-based line ("row") for a
missing file, an empty file, bytes that are not UTF-8, a line that is not a JSON object,
and (for question/answer sets) a row without its question or answer. Blank lines are
skipped.

Writers never leave a half-written file behind: :func:`write_jsonl_atomic` and
:func:`write_json_atomic` write a temporary file in the same directory and rename it
over the target. :class:`JsonlAppender` is the resumable writer for long jobs (rollout
rows, per-sample eval rows): each row is one ``write`` of one line, flushed; on open it
cuts a torn last line left by a crash, and :func:`count_rows` says how many complete rows
are already there, so a restarted job skips that many inputs.
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

from t3d_jax.errors import InputError
from t3d_jax.fileio import atomic_write_bytes

PathLike = Union[str, os.PathLike]


class JsonlError(InputError):
  """A JSONL file that cannot be used; the message names the file and the row."""


def _where(path: PathLike, row: Optional[int] = None) -> str:
  return f"{os.fspath(path)}" + (f", row {row}" if row is not None else "")


def _read_bytes(path: PathLike) -> bytes:
  p = pathlib.Path(path)
  if not p.exists():
    raise JsonlError(f"{_where(path)}: file not found")
  if p.is_dir():
    raise JsonlError(f"{_where(path)}: is a directory, expected a JSONL file")
  data = p.read_bytes()
  if not data.strip():
    raise JsonlError(f"{_where(path)}: empty file (no JSON rows)")
  return data


def iter_jsonl(path: PathLike) -> Iterator[tuple[int, dict]]:
  """Yields ``(row_number, object)`` for each non-blank line; row numbers are 1-based
  line numbers of the file. Raises :class:`JsonlError` on the first bad line."""
  data = _read_bytes(path)
  for lineno, raw in enumerate(data.split(b"\n"), start=1):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise JsonlError(f"{_where(path, lineno)}: not UTF-8 (byte {raw[e.start]:#04x} at "
                       f"column {e.start + 1})") from None
    if not line.strip():
      continue
    obj = parse_json(line, _where(path, lineno))
    if not isinstance(obj, dict):
      raise JsonlError(f"{_where(path, lineno)}: expected a JSON object, got "
                       f"{type(obj).__name__}")
    yield lineno, obj


def parse_json(text: str, where: str) -> Any:
  """``json.loads(text)``; malformed JSON, a number of more digits than Python converts
  (4300) and nesting deeper than the parser recurses are a JsonlError naming ``where``."""
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise JsonlError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
  except ValueError as e:  # an integer literal of more than sys.get_int_max_str_digits()
    raise JsonlError(f"{where}: malformed JSON ({e})") from None
  except RecursionError:
    raise JsonlError(f"{where}: malformed JSON (nested too deeply)") from None


def read_jsonl(path: PathLike) -> list[dict]:
  """All JSON objects of a JSONL file, in order."""
  return [obj for _, obj in iter_jsonl(path)]


def text_field(obj: Mapping[str, Any], field: str, path: PathLike, row: int) -> str:
  if field not in obj:
    raise JsonlError(f"{_where(path, row)}: row has no {field!r} field "
                     f"(fields present: {sorted(obj)})")
  if obj[field] is None:
    raise JsonlError(f"{_where(path, row)}: field {field!r} is null")
  value = obj[field]
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    raise JsonlError(f"{_where(path, row)}: field {field!r} must be a string or a "
                     f"number, got {type(value).__name__}")
  text = value if isinstance(value, str) else json.dumps(value)
  if not text.strip():
    raise JsonlError(f"{_where(path, row)}: field {field!r} is empty")
  return text


def read_qa_jsonl(path: PathLike, question_field: str = "question",
                  answer_field: str = "answer", limit: Optional[int] = None) -> list[dict]:
  """Question/answer rows of a JSONL file as ``{"question", "answer", "index"}`` dicts.

  ``question_field``/``answer_field`` name the fields in the file (any user JSONL);
  numeric answers become strings; ``index`` is the row's position among the rows
  returned (0-based), stable across runs, used to resume and to join outputs back.
  """
  rows = []
  for row, obj in iter_jsonl(path):
    if limit is not None and len(rows) >= limit:
      break
    rows.append({"question": text_field(obj, question_field, path, row),
                 "answer": text_field(obj, answer_field, path, row),
                 "index": len(rows)})
  return rows


def dumps_row(row: Mapping[str, Any]) -> str:
  """One JSONL line (no newline): compact, UTF-8 kept, numpy scalars/arrays converted."""
  return json.dumps(row, ensure_ascii=False, default=_json_default)


def _json_default(x: Any) -> Any:
  if hasattr(x, "tolist"):      # numpy / jax arrays and scalars
    return x.tolist()
  if isinstance(x, bytes):
    return x.decode("utf-8")
  if isinstance(x, (set, frozenset)):
    return sorted(x)
  raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def write_jsonl_atomic(path: PathLike, rows: Iterable[Mapping[str, Any]]) -> pathlib.Path:
  """Writes all rows to ``path`` through a temp file + rename (no partial file ever)."""
  text = "".join(dumps_row(r) + "\n" for r in rows)
  return atomic_write_bytes(path, text.encode("utf-8"))


def write_json_atomic(path: PathLike, obj: Any, indent: int = 2) -> pathlib.Path:
  """Writes one JSON document (a summary, a config) atomically."""
  text = json.dumps(obj, ensure_ascii=False, indent=indent, default=_json_default) + "\n"
  return atomic_write_bytes(path, text.encode("utf-8"))


def _complete_length(path: pathlib.Path) -> int:
  """Byte length of the file up to and including its last newline."""
  data = path.read_bytes()
  return data.rfind(b"\n") + 1


def count_rows(path: PathLike) -> int:
  """Number of complete rows (newline-terminated, non-blank) already in ``path``.

  A missing file has 0 rows; a torn last line (no newline: the writer was killed) is not
  counted. Complete rows are checked to be JSON so that a corrupt file is not resumed
  silently."""
  p = pathlib.Path(path)
  if not p.exists():
    return 0
  data = p.read_bytes()[:_complete_length(p)]
  n = 0
  for lineno, raw in enumerate(data.split(b"\n")[:-1], start=1):
    if not raw.strip():
      continue
    try:
      json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, malformed, huge int, too deep
      raise JsonlError(f"{_where(path, lineno)}: complete row is not valid JSON; refusing "
                       f"to resume onto a corrupt file") from None
    n += 1
  return n


class JsonlAppender:
  """Append-only JSONL writer for resumable outputs.

  ``with JsonlAppender(path) as out: out.write(row)``. Opening cuts any torn last line;
  ``out.rows`` is the count of complete rows (those before plus those written). Each row
  is flushed (and fsynced when ``fsync=True``) so a killed job loses at most the row in
  flight."""

  def __init__(self, path: PathLike, fsync: bool = False):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.rows = count_rows(self.path)
    if self.path.exists():
      keep = _complete_length(self.path)
      if keep != self.path.stat().st_size:
        with open(self.path, "r+b") as f:
          f.truncate(keep)
    self._fsync = fsync
    self._f = open(self.path, "ab")

  def write(self, row: Mapping[str, Any]) -> None:
    self._f.write((dumps_row(row) + "\n").encode("utf-8"))
    self._f.flush()
    if self._fsync:
      os.fsync(self._f.fileno())
    self.rows += 1

  def write_many(self, rows: Sequence[Mapping[str, Any]]) -> None:
    for r in rows:
      self.write(r)

  def close(self) -> None:
    if not self._f.closed:
      self._f.close()

  def __enter__(self) -> "JsonlAppender":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
