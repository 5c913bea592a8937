"""Property-based fuzzing (hypothesis) of every file a user hands t3d_jax: trajectory rows,
question/answer rows (plain, MBPP and HumanEval layouts), config.json of every family,
safetensors shards and their index, tokenizer files and config overrides.

The property, for each input: it loads (and then a sanity check of what was loaded
holds: ids in range, a config that builds its network, finite params), or it fails with
one :class:`InputError` whose message is a single line naming the file, row or key.
Anything else (another exception, a hang past the time limit, a NaN model, a half-written
output) fails the test. Examples are few and derandomised, so the suite stays fast and
a failure reproduces.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings, strategies as st

from t3d_jax.errors import InputError

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
LIMIT_S = 30.0  # per example: a hang fails the test


class Hang(BaseException):
  """Raised by the alarm: a BaseException, so that no ``except Exception`` swallows it."""


@contextlib.contextmanager
def time_limit(seconds: float):
  def on_alarm(signum, frame):
    raise Hang(f"no answer in {seconds} s")
  old = signal.signal(signal.SIGALRM, on_alarm)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def loads_or_one_line(fn, *names: str, limit: float = LIMIT_S):
  """``fn()`` under a time limit: its value, or None when it raised an InputError whose
  message is one line containing one of ``names``; any other exception propagates."""
  with time_limit(limit):
    try:
      out = fn()
      event("loads")
      return out
    except InputError as e:
      event("InputError")
      msg = str(e)
      assert msg.strip() and "\n" not in msg and "\r" not in msg, f"not one line: {msg!r}"
      assert any(n in msg for n in names), f"names none of {names}: {msg!r}"
      return None


# --- hostile values and file corruptions --------------------------------------------------

WEIRD_TEXT = st.sampled_from(["", " ", "\x00", "\u2028", "\ud7ff", "é", "🙂", "NaN", "null",
                              "1e400", "-1", "\n", "{question}", "<|MASK|>", "a" * 300])
HOSTILE = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-2**70, max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30, -(10**30)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), WEIRD_TEXT,
    st.lists(st.integers(-3, 400), max_size=6),
    st.lists(st.lists(st.integers(-3, 400), max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
    st.recursive(st.integers(), lambda c: st.lists(c, max_size=2), max_leaves=6))
DELETE = object()
# what happens to a file's bytes after the rows are written
CORRUPTIONS = ("none", "none", "torn_last_line", "garbage_line", "empty", "blank_lines",
               "bom", "huge_int", "deep_nesting", "crlf", "latin1", "nan_literal",
               "json_array_line", "truncate_half")


def corrupt(data: bytes, how: str) -> bytes:
  if how == "torn_last_line":
    return data.rstrip(b"\n")[:-3] if len(data) > 4 else data[:1]
  if how == "garbage_line":
    return data + b"\xff\xfe\x00garbage\x80\n"
  if how == "empty":
    return b""
  if how == "blank_lines":
    return b"\n  \n" + data.replace(b"\n", b"\n\n") + b"\t\n"
  if how == "bom":
    return b"\xef\xbb\xbf" + data
  if how == "huge_int":
    return data + b'{"answer": ' + b"9" * 5000 + b"}\n"
  if how == "deep_nesting":
    return data + b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
  if how == "crlf":
    return data.replace(b"\n", b"\r\n")
  if how == "latin1":
    return data + "{\"question\": \"caf\xe9\"}\n".encode("latin-1")
  if how == "nan_literal":
    return data + b'{"question": NaN, "answer": Infinity}\n'
  if how == "json_array_line":
    return data + b"[1, 2, 3]\n"
  if how == "truncate_half":
    return data[:len(data) // 2]
  return data


@st.composite
def mutated(draw, row: dict, extra_keys=()) -> dict:
  """``row`` with a few fields replaced by hostile values, deleted, or added."""
  row = dict(row)
  keys = sorted(set(row) | set(extra_keys))
  for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
    value = draw(st.one_of(HOSTILE, st.just(DELETE)))
    if value is DELETE:
      row.pop(key, None)
    else:
      row[key] = value
  return row


def write_rows(path: Path, rows, how: str) -> Path:
  text = "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows)
  path.write_bytes(corrupt(text.encode("utf-8", "surrogatepass"), how))
  return path


@pytest.fixture(scope="module")
def work(tmp_path_factory):
  return tmp_path_factory.mktemp("fuzz")


# --- trajectory rows (distill) -------------------------------------------------------------

ALPHABET = "0123456789+-=abc "


@pytest.fixture(scope="module")
def char_tokenizer(work):
  from t3d_jax.data import tokenizer as tok_lib
  from t3d_jax.data.tokenizer_build import build_char_tokenizer
  return tok_lib.load_tokenizer(build_char_tokenizer(work / "char_tok", ALPHABET))


@st.composite
def trajectory_row(draw, vocab: int):
  n = draw(st.integers(1, 2))
  lens = [draw(st.integers(0, 6)) for _ in range(n)]
  resp = [[draw(st.integers(0, vocab - 1)) for _ in range(k)] for k in lens]
  smap = [[draw(st.sampled_from([-1, 1, 2, 3])) for _ in range(k)] for k in lens]
  row = dict(question=draw(st.text(ALPHABET, min_size=1, max_size=8)), answer="7",
             prompt=draw(st.text(ALPHABET, min_size=1, max_size=8)) + "=",
             response_ids=resp, step_map=smap, nfe=[3] * n,
             full_output=[draw(st.text(ALPHABET, max_size=6)) for _ in range(n)])
  return draw(mutated(row, extra_keys=("extracted_output",)))


@settings(FUZZ, max_examples=60)
@given(data=st.data(), how=st.sampled_from(CORRUPTIONS), retokenize=st.booleans(),
       original_prompts=st.booleans(), max_gen=st.sampled_from([None, 0, 2]))
def test_trajectory_rows(work, char_tokenizer, data, how, retokenize, original_prompts,
                         max_gen):
  from t3d_jax.distill.data import load_trajectory_samples
  vocab = len(char_tokenizer)
  rows = data.draw(st.lists(trajectory_row(vocab), min_size=1, max_size=3))
  path = write_rows(work / "traj.jsonl", rows, how)
  out = loads_or_one_line(lambda: load_trajectory_samples(
      path, char_tokenizer, retokenize=retokenize, original_prompts=original_prompts,
      max_gen_length=max_gen), str(path))
  if out is None:
    return
  samples, counts = out
  assert counts["samples"] == len(samples)
  for s in samples:
    assert len(s.response_ids) == len(s.step_map)
    assert all(type(x) is int and 0 <= x < vocab for x in s.prompt_ids + s.response_ids)
    assert all(type(x) is int and (x == -1 or x >= 1) for x in s.step_map)


GOOD = dict(question="1+1", answer="2", prompt="1+1=", response_ids=[[5]], step_map=[[1]],
            full_output=["2"])


@pytest.mark.parametrize("change, flags, words", [
    (dict(response_ids=None), {}, "sample 0: response_ids (NoneType)"),
    (dict(response_ids=[[True]]), {}, "must be integer lists"),
    (dict(step_map=7), {}, "'step_map' must be a list of integer lists"),
    (dict(step_map=None), dict(retokenize=True), "'step_map' must be a list"),
    (dict(full_output=[None]), dict(retokenize=True), "'full_output' must be a string"),
    (dict(question=[1]), dict(original_prompts=True), "needs a 'question' string"),
])
def test_trajectory_findings(work, char_tokenizer, change, flags, words):
  """What the fuzzer found: each was a TypeError / ValueError traceback before."""
  from t3d_jax.distill.data import load_trajectory_samples
  path = write_rows(work / "found.jsonl", [dict(GOOD, **change)], "none")
  with pytest.raises(InputError, match=f"{path}, row 1.*" + re.escape(words)):
    load_trajectory_samples(path, char_tokenizer, **flags)


# --- question/answer rows (rollout, eval, pretrain): plain, MBPP, HumanEval ----------------

QA = dict(question="What is 1+1?", answer="2")
MBPP = dict(text="Write add(a, b).", code="def add(a, b): return a + b",
            test_list=["assert add(1, 2) == 3"], test_setup_code="")
HUMANEVAL = dict(prompt="def f(x):\n  \"\"\"x + 1\"\"\"\n", test="def check(f): assert f(1) == 2",
                 entry_point="f", task_id="t/0")


def data_section(path, **kw) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(dict(
      data=str(path), question_field="question", answer_field="answer", limit=0,
      use_tfds=False, tfds_dir=""), **kw))


@settings(FUZZ, max_examples=60)
@given(rows=st.lists(st.sampled_from([QA, MBPP, HUMANEVAL]).flatmap(mutated), min_size=1,
                     max_size=4),
       how=st.sampled_from(CORRUPTIONS), limit=st.sampled_from([0, 0, 1, 3]),
       fields=st.sampled_from([("question", "answer"), ("text", "code"), ("q", "")]))
@example(rows=[MBPP], how="latin1", limit=0, fields=("question", "answer"))
@example(rows=[HUMANEVAL], how="deep_nesting", limit=0, fields=("question", "answer"))
@example(rows=[QA], how="deep_nesting", limit=0, fields=("question", "answer"))
@example(rows=[QA], how="huge_int", limit=0, fields=("question", "answer"))
def test_question_answer_rows(work, rows, how, limit, fields):
  from t3d_jax.data.datasets import load_rows
  path = write_rows(work / "qa.jsonl", rows, how)
  d = data_section(path, limit=limit, question_field=fields[0], answer_field=fields[1])
  out = loads_or_one_line(lambda: load_rows(d), str(path))
  if out is None:
    return
  assert out and (not limit or len(out) <= limit)
  for i, r in enumerate(out):
    assert r["index"] == i
    assert isinstance(r["question"], str) and r["question"].strip()
    assert isinstance(r["answer"], str) and r["answer"].strip()
    assert isinstance(r.get("prefix", ""), str)
