"""JSONL io and the shipped question/answer sets: errors name file and row; atomic and
resumable writers."""
import json
import os
import re

import pytest

from t3d_jax.data import datasets, jsonl


def _write(path, data: bytes):
  path.write_bytes(data)
  return path


def test_reads_rows_and_custom_fields(tmp_path):
  p = _write(tmp_path / "u.jsonl",
             b'{"q": "1+1?", "a": 2}\n\n{"q": "caf\xc3\xa9?", "a": "x", "extra": 1}\n')
  rows = jsonl.read_qa_jsonl(p, question_field="q", answer_field="a")
  assert rows == [{"question": "1+1?", "answer": "2", "index": 0},
                  {"question": "caf\u00e9?", "answer": "x", "index": 1}]
  assert jsonl.read_qa_jsonl(p, "q", "a", limit=1) == rows[:1]


@pytest.mark.parametrize("content, pattern", [
    (None, r"missing\.jsonl: file not found"),
    (b"", r"empty file"),
    (b"  \n\n", r"empty file"),
    (b'{"question": "a", "answer": "b"}\n{"question": "\xff\xfe"}\n',
     r"bad\.jsonl, row 2: not UTF-8"),
    (b'{"question": "a", "answer": "b"}\n\n{"question": "a", "answer": \n',
     r"bad\.jsonl, row 3: malformed JSON"),
    (b'[1, 2]\n', r"bad\.jsonl, row 1: expected a JSON object, got list"),
    (b'{"question": "a", "answer": "b"}\n{"question": "only"}\n',
     r"bad\.jsonl, row 2: row has no 'answer' field"),
    (b'{"answer": "b"}\n', r"bad\.jsonl, row 1: row has no 'question' field"),
    (b'{"question": null, "answer": "b"}\n', r"bad\.jsonl, row 1: field 'question' is null"),
    (b'{"question": "  ", "answer": "b"}\n', r"row 1: field 'question' is empty"),
    (b'{"question": "q", "answer": [1]}\n', r"row 1: field 'answer' must be a string"),
])
def test_one_clear_error_per_bad_input(tmp_path, content, pattern):
  name = "missing.jsonl" if content is None else "bad.jsonl"
  p = tmp_path / name
  if content is not None:
    p.write_bytes(content)
  with pytest.raises(jsonl.JsonlError, match=pattern) as err:
    jsonl.read_qa_jsonl(p)
  assert str(p) in str(err.value)


def test_atomic_writes_leave_no_temp_and_roundtrip(tmp_path):
  import numpy as np
  p = tmp_path / "sub" / "out.jsonl"
  rows = [{"i": i, "ids": np.arange(3, dtype=np.int32), "s": "\u00e9"} for i in range(3)]
  jsonl.write_jsonl_atomic(p, rows)
  assert jsonl.read_jsonl(p) == [{"i": i, "ids": [0, 1, 2], "s": "\u00e9"} for i in range(3)]
  jsonl.write_json_atomic(tmp_path / "summary.json", {"acc": np.float32(0.5)})
  assert json.loads((tmp_path / "summary.json").read_text()) == {"acc": 0.5}
  assert sorted(os.listdir(p.parent)) == ["out.jsonl"]


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
  p = tmp_path / "out.jsonl"
  jsonl.write_jsonl_atomic(p, [{"a": 1}])
  with pytest.raises(TypeError):
    jsonl.write_jsonl_atomic(p, [{"a": object()}])
  assert jsonl.read_jsonl(p) == [{"a": 1}]
  assert os.listdir(tmp_path) == ["out.jsonl"]


def test_appender_resumes_after_torn_line(tmp_path):
  p = tmp_path / "rollouts.jsonl"
  assert jsonl.count_rows(p) == 0
  with jsonl.JsonlAppender(p) as out:
    out.write_many([{"i": 0}, {"i": 1}])
  with open(p, "ab") as f:           # a crash in the middle of a row
    f.write(b'{"i": 2, "step_ma')
  assert jsonl.count_rows(p) == 2
  with jsonl.JsonlAppender(p) as out:
    assert out.rows == 2
    out.write({"i": 2})
    assert out.rows == 3
  assert [r["i"] for r in jsonl.read_jsonl(p)] == [0, 1, 2]


def test_count_rows_refuses_corrupt_complete_row(tmp_path):
  p = _write(tmp_path / "r.jsonl", b'{"i": 0}\nnot json\n')
  with pytest.raises(jsonl.JsonlError, match=r"r\.jsonl, row 2"):
    jsonl.count_rows(p)


@pytest.mark.parametrize("name, n", [("gsm8k_train", 7473), ("gsm8k_test", 1319),
                                     ("math500", 500)])
def test_shipped_sets(name, n):
  rows = datasets.load_qa(name)
  assert len(rows) == n
  assert [r["index"] for r in rows[:3]] == [0, 1, 2]
  if datasets.is_gsm8k(name):
    assert all(re.search(r"\n#### -?[\d,.]+$", r["answer"]) for r in rows)
  else:
    assert rows[0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
  assert datasets.resolve_dataset(name).parent == datasets.FILES_DIR


def test_resolve_user_path_and_unknown_name(tmp_path):
  p = _write(tmp_path / "mine.jsonl", b'{"question": "q", "answer": "a"}\n')
  assert datasets.resolve_dataset(str(p)) == p
  assert datasets.load_qa(p)[0]["answer"] == "a"
  with pytest.raises(jsonl.JsonlError, match="gsm8k_test, gsm8k_train, math500"):
    datasets.resolve_dataset("gsm8k_dev")


def test_wheel_ships_data_files(tmp_path):
  """A wheel built from setup.py contains the three JSONL files (package data)."""
  import shutil
  import subprocess
  import sys
  import zipfile
  pytest.importorskip("setuptools")            # --no-build-isolation builds with it
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
  src = tmp_path / "src"
  src.mkdir()
  shutil.copy(os.path.join(root, "setup.py"), src)
  shutil.copytree(os.path.join(root, "t3d_jax"), src / "t3d_jax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--no-index", "-q", "-w", str(tmp_path / "dist"), str(src)],
                 check=True, capture_output=True)
  (wheel,) = (tmp_path / "dist").glob("*.whl")
  names = set(zipfile.ZipFile(wheel).namelist())
  for f in datasets.SHIPPED.values():
    assert f"t3d_jax/data/files/{f}" in names
