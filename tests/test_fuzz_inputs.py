"""Property-based fuzzing (hypothesis) of every file a user hands t3d_jax: trajectory rows,
question/answer rows (plain, MBPP and HumanEval layouts), config.json of every family,
safetensors shards and their index, tokenizer files and config overrides.

The property, for each input: it loads (and then a sanity check of what was loaded
holds: ids in range, a config that builds its network, finite params), or it fails with
one :class:`InputError` whose message is a single line naming the file, row or key.
Anything else (another exception, a hang past the time limit, a NaN model, a half-written
output) fails the test. Examples are few and derandomised, so the suite stays fast and
a failure reproduces; ``T3D_FUZZ_SCALE=10 python -m pytest tests/test_fuzz_inputs.py``
searches ten times longer from a random seed. The ``*_findings`` tests hold, as plain
examples, what the search found (each was a traceback, a hang or a NaN model before).
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
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

from t3d_jax import config_keys
from t3d_jax.errors import InputError

REPO = Path(__file__).resolve().parents[1]
# T3D_FUZZ_SCALE=k runs k times the examples from a random seed (a longer search than the
# default suite's fixed, reproducible one)
SCALE = int(os.environ.get("T3D_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
  return settings(max_examples=examples * SCALE, deadline=None, derandomize=SCALE == 1,
                  database=None, suppress_health_check=list(HealthCheck))


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


@fuzz(150)
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


@fuzz(150)
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


# --- config.json of every family (convert, load_params) -----------------------------------

# keys a family's translation reads beyond what the tiny checkpoints write
FAMILY_KEYS = {
    "sdar": ("rope_scaling", "rope_parameters", "head_dim", "num_key_value_heads",
             "tie_word_embeddings", "attention_bias", "rms_norm_eps", "rope_theta"),
    "llada": ("n_kv_heads", "multi_query_attention", "mlp_ratio", "mlp_hidden_size",
              "embedding_size", "weight_tying", "include_qkv_bias", "clip_qkv", "rope_theta",
              "mask_token_id"),
    "dream": ("use_sliding_window", "rope_scaling", "rope_parameters", "mask_token_id",
              "num_key_value_heads", "rope_theta"),
}


@pytest.fixture(scope="module")
def hf_dirs(work):
  """A tiny random checkpoint of each family (sdar = Qwen3), written by transformers."""
  from hf_models import make_dream, make_llada, make_qwen3
  makers = dict(sdar=make_qwen3, llada=make_llada, dream=make_dream)
  return {name: (make(work / f"hf_{name}"), work / f"hf_{name}")[1]
          for name, make in makers.items()}


def check_model_config(cfg) -> None:
  """What a loaded config must be for a network to be built from it."""
  for f in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
            "num_kv_heads", "head_dim"):
    v = getattr(cfg, f)
    assert type(v) is int and v > 0, (f, v)
  for f in ("rope_theta", "rms_norm_eps"):
    v = getattr(cfg, f)
    assert type(v) is float and math.isfinite(v) and v > 0, (f, v)
  for f in ("tie_word_embeddings", "attention_bias"):
    assert type(getattr(cfg, f)) is bool, f
  assert cfg.mask_token_id is None or (type(cfg.mask_token_id) is int
                                       and 0 <= cfg.mask_token_id < cfg.vocab_size)


@pytest.mark.parametrize("family", ["sdar", "llada", "dream"])
@fuzz(50)
@given(data=st.data(), how=st.sampled_from(("none",) * 6 + ("empty", "latin1", "huge_int",
                                                              "deep_nesting", "truncate_half",
                                                              "json_array_line")))
def test_hf_config_json(work, hf_dirs, family, data, how):
  from t3d_jax.convert import load_params
  src = hf_dirs[family]
  hf = json.loads((src / "config.json").read_text())
  hf = data.draw(mutated(hf, extra_keys=FAMILY_KEYS[family]))
  d = work / f"cfg_{family}"
  shutil.rmtree(d, ignore_errors=True)
  shutil.copytree(src, d)
  if how == "json_array_line":  # a config.json that is JSON but no object
    (d / "config.json").write_text(json.dumps([hf]))
  else:
    body = json.dumps(hf, allow_nan=True).encode("utf-8", "surrogatepass")
    (d / "config.json").write_bytes(corrupt(body, how) if how != "none" else body)
  out = loads_or_one_line(lambda: load_params(d), str(d))
  if out is None:
    return
  params, cfg = out
  check_model_config(cfg)
  check_params(params, cfg)


def check_params(params, cfg) -> None:
  """The params are the ones the config's network builds, and finite."""
  import flax.linen as nn
  from t3d_jax.models import family as families
  want = nn.unbox(families.of_config(cfg).network.abstract_params(cfg))
  shapes = lambda t: {jax.tree_util.keystr(k): np.shape(x)  # noqa: E731
                      for k, x in jax.tree_util.tree_flatten_with_path(t)[0]}
  assert shapes(want) == shapes(params)
  assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize("family, change, words", [
    ("sdar", dict(rope_theta=float("nan")), "rope_theta=nan must be a finite number > 0"),
    ("sdar", dict(rms_norm_eps=-1.0), "rms_norm_eps=-1.0 must be a finite number > 0"),
    ("sdar", dict(tie_word_embeddings="false"), "tie_word_embeddings='false' must be true"),
    ("sdar", dict(num_hidden_layers=None), "num_layers=None must be a positive integer"),
    ("sdar", dict(num_attention_heads=0), "num_attention_heads=0 must be a positive integer"),
    ("sdar", dict(num_hidden_layers=10**12), "says 1000000000000 layers"),
    ("sdar", dict(rope_parameters=[1]), "rope_parameters=[1] must be an object"),
    ("llada", dict(mlp_ratio="ab", mlp_hidden_size=None), "mlp_ratio='ab' must be a positive"),
    ("llada", dict(n_heads=2.0), "n_heads=2.0 must be a positive integer"),
    ("llada", dict(mask_token_id=10**6), "mask_token_id=1000000 must be an id in"),
    ("dream", dict(num_key_value_heads=True), "num_key_value_heads=True must be a positive"),
    ("dream", dict(mask_token_id=-5), "mask_token_id=-5 must be an integer >= 0"),
])
def test_config_json_findings(work, hf_dirs, family, change, words):
  """What the fuzzer found: a NaN model (NaN RoPE base), a silently tied head ("false"),
  a hang (10**12 layers) and TypeError / ZeroDivisionError / AttributeError tracebacks."""
  from t3d_jax.convert import load_params
  d = work / f"found_{family}"
  shutil.rmtree(d, ignore_errors=True)
  shutil.copytree(hf_dirs[family], d)
  hf = json.loads((d / "config.json").read_text())
  (d / "config.json").write_text(json.dumps(dict(hf, **change)))
  with time_limit(LIMIT_S), pytest.raises(InputError, match=f"{d}.*" + re.escape(words)):
    load_params(d)


@pytest.mark.parametrize("body, words", [
    (b"[1]", "an object expected, got list"),
    ('{"model_type": "caf\xe9"}'.encode("latin-1"), "UnicodeDecodeError"),
    (b'{"vocab_size": ' + b"9" * 5000 + b"}", "ValueError: Exceeds the limit"),
    (b"[" * 100_000, "RecursionError"),
])
def test_config_json_not_an_object_is_one_line(work, hf_dirs, body, words):
  from t3d_jax.convert import load_params
  d = work / "found_json"
  shutil.rmtree(d, ignore_errors=True)
  shutil.copytree(hf_dirs["sdar"], d)
  (d / "config.json").write_bytes(body)
  with pytest.raises(InputError, match=f"{d}/config.json: invalid JSON.*{re.escape(words)}"):
    load_params(d)


# --- safetensors shards and their index (convert) ----------------------------------------

ST_DTYPES = ["F32", "F16", "BF16", "F64", "I32", "I64", "U8", "BOOL", "F8_E4M3", "XX", ""]


@pytest.fixture(scope="module")
def sharded_dir(work):
  """The tiny SDAR checkpoint in two shards and an index (transformers' layout)."""
  from hf_models import make_qwen3
  make_qwen3(work / "hf_sharded", max_shard_size="200KB")
  assert (work / "hf_sharded" / "model.safetensors.index.json").is_file()
  return work / "hf_sharded"


def split_shard(data: bytes) -> tuple[dict, bytes]:
  n = struct.unpack("<Q", data[:8])[0]
  return json.loads(data[8:8 + n]), data[8 + n:]


def join_shard(header: dict, body: bytes) -> bytes:
  raw = json.dumps(header, allow_nan=True).encode()
  return struct.pack("<Q", len(raw)) + raw + body


NAN_WORDS = [b"\x00\x00\xc0\x7f", b"\x00\x00\x80\x7f", b"\xff\xff\xff\xff", b"\x01\x02\x03\x04"]


@st.composite
def shard_edit(draw, data: bytes) -> tuple:
  """How to damage a safetensors file (drawn small, so a failure prints readably):
  truncate it, set its header length, overwrite header or tensor bytes, or give a
  tensor a hostile dtype, shape or offsets, drop it, or add hostile metadata."""
  how = draw(st.sampled_from(["truncate", "length", "header_bytes", "dtype", "shape",
                              "offsets", "drop", "metadata", "data_bytes", "none"]))
  header, body = split_shard(data)
  name = draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
  if how == "truncate":
    return how, draw(st.integers(0, len(data) - 1))
  if how == "length":
    return how, draw(st.sampled_from([0, 1, 7, 2**63 - 1, 2**64 - 1, len(data), len(data) - 8]))
  if how == "header_bytes":
    at = draw(st.integers(8, 8 + struct.unpack("<Q", data[:8])[0] - 1))
    return how, at, draw(st.binary(min_size=1, max_size=8))
  if how == "data_bytes":  # the tensor bytes: NaN, inf or just other numbers
    return how, draw(st.integers(0, len(body) // 4 - 1)), draw(st.sampled_from(NAN_WORDS))
  if how == "dtype":
    return how, name, draw(st.one_of(st.sampled_from(ST_DTYPES), HOSTILE))
  if how == "shape":
    return how, name, draw(st.one_of(st.lists(st.integers(-2, 2**40), max_size=3), HOSTILE))
  if how == "offsets":
    return how, name, draw(st.one_of(st.lists(st.integers(-1, 2**64), max_size=3), HOSTILE))
  if how == "metadata":
    return how, draw(HOSTILE)
  return how, name


def apply_edit(data: bytes, edit: tuple) -> bytes:
  how, *args = edit
  header, body = split_shard(data)
  if how == "truncate":
    return data[:args[0]]
  if how == "length":
    return struct.pack("<Q", args[0]) + data[8:]
  if how == "header_bytes":
    at, junk = args
    return data[:at] + junk + data[at + len(junk):]
  if how == "data_bytes":
    at = 4 * args[0]
    return join_shard(header, body[:at] + args[1] + body[at + 4:])
  if how == "drop":
    return join_shard({k: v for k, v in header.items() if k != args[0]}, body)
  if how == "metadata":
    return join_shard(dict(header, __metadata__=args[0]), body)
  if how in ("dtype", "shape", "offsets"):
    key = dict(dtype="dtype", shape="shape", offsets="data_offsets")[how]
    return join_shard(dict(header, **{args[0]: dict(header[args[0]], **{key: args[1]})}), body)
  return data


def convert_property(src: Path, root: Path) -> None:
  """Converting ``src`` either writes a model dir whose params are finite and the
  config's, or fails with one line and leaves nothing beside it (no half-written dir)."""
  from t3d_jax.convert import convert_hf_to_model_dir, load_params
  shutil.rmtree(root, ignore_errors=True)
  root.mkdir()
  out = loads_or_one_line(lambda: convert_hf_to_model_dir(src, root / "model"), str(src))
  if out is None:
    assert not any(root.iterdir()), list(root.iterdir())
    return
  assert [p.name for p in root.iterdir()] == ["model"]
  check_params(*load_params(root / "model"))


@fuzz(60)
@given(data=st.data())
def test_safetensors_shard(work, hf_dirs, data):
  src = work / "st_src"
  shutil.rmtree(src, ignore_errors=True)
  shutil.copytree(hf_dirs["sdar"], src)
  shard = src / "model.safetensors"
  shard.write_bytes(apply_edit(shard.read_bytes(), data.draw(shard_edit(shard.read_bytes()))))
  convert_property(src, work / "st_out")


@pytest.mark.parametrize("edit, words", [
    (("dtype", "model.layers.1.mlp.up_proj.weight", "I32"),
     "model.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' has dtype int32"),
    (("data_bytes", 5, NAN_WORDS[0]), "st_src: param lm_head has 1 NaN/inf values"),
    (("dtype", "lm_head.weight", "\n"), "unreadable safetensors (Error while deserializing"),
])
def test_safetensors_findings(work, hf_dirs, edit, words):
  """What the fuzzer found: an int32 tensor of a float's size was converted into a model
  dir that no load could read; a NaN weight was refused naming the output dir, not the
  checkpoint; a header echoing a newline gave a two-line message."""
  from t3d_jax.convert import convert_hf_to_model_dir
  src, root = work / "st_src", work / "st_out"
  for d in (src, root):
    shutil.rmtree(d, ignore_errors=True)
  shutil.copytree(hf_dirs["sdar"], src)
  shard = src / "model.safetensors"
  shard.write_bytes(apply_edit(shard.read_bytes(), edit))
  with pytest.raises(InputError, match=re.escape(words)) as e:
    convert_hf_to_model_dir(src, root / "model")
  assert "\n" not in str(e.value)
  assert not root.exists() or not any(root.iterdir())


@fuzz(40)
@given(data=st.data(), how=st.sampled_from(["map", "map", "file", "shard"]))
def test_safetensors_index(work, sharded_dir, data, how):
  src = work / "idx_src"
  shutil.rmtree(src, ignore_errors=True)
  shutil.copytree(sharded_dir, src)
  index = src / "model.safetensors.index.json"
  if how == "map":  # the weight map: entries hostile, missing, or pointing elsewhere
    body = json.loads(index.read_text())
    wm = body["weight_map"]
    body["weight_map"] = data.draw(st.one_of(
        mutated(wm), HOSTILE,
        st.just({k: "../" + v for k, v in wm.items()}),
        st.just({k: "nope.safetensors" for k in wm})))
    index.write_text(json.dumps(body, allow_nan=True))
  elif how == "file":
    index.write_bytes(corrupt(index.read_bytes(), data.draw(st.sampled_from(CORRUPTIONS))))
  else:  # one shard of two damaged
    shard = sorted(src.glob("model-*.safetensors"))[data.draw(st.integers(0, 1))]
    shard.write_bytes(apply_edit(shard.read_bytes(), data.draw(shard_edit(shard.read_bytes()))))
  convert_property(src, work / "idx_out")


# --- tokenizer files (every mode that decodes or trains) ----------------------------------

JINJA = st.sampled_from([
    "", "{% for m in messages %}{{ m['content'] }}{% endfor %}", "{% for", "{{ x.y.z }}",
    "{{ raise_exception('no') }}", "{% for i in range(10**9) %}x{% endfor %}",
    "{{ messages[5]['content'] }}", "{% set x = 1 %}{{ x / 0 }}", "\xff\x00", "{{ }}"])


@pytest.fixture(scope="module")
def bpe_dir(work):
  from t3d_jax.data.tokenizer_build import gsm8k_texts, train_tiny_bpe
  return train_tiny_bpe(work / "bpe_tok", texts=gsm8k_texts(limit=100), vocab_size=300)


@st.composite
def tokenizer_edit(draw, src: Path) -> tuple:
  """(file, new bytes or None = delete): tokenizer_config.json or tokenizer.json with
  hostile fields or a corrupt body, a hostile chat template, or a file missing."""
  name = draw(st.sampled_from(["tokenizer_config.json", "tokenizer.json",
                               "chat_template.jinja"]))
  how = draw(st.sampled_from(["fields", "fields", "corrupt", "delete"]))
  if how == "delete":
    return name, None
  body = (src / name).read_bytes()
  if how == "corrupt":
    return name, corrupt(body, draw(st.sampled_from(CORRUPTIONS)))
  if name == "chat_template.jinja":
    return name, draw(JINJA).encode("utf-8", "surrogateescape")
  obj = json.loads(body)
  if name == "tokenizer.json" and draw(st.booleans()):
    obj["model"] = draw(mutated(obj["model"]))
  else:
    obj = draw(mutated(obj, extra_keys=("chat_template", "auto_map", "unk_token",
                                        "bos_token", "added_tokens_decoder")))
  if "chat_template" in obj and draw(st.booleans()):
    obj["chat_template"] = draw(JINJA)
  return name, json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass")


@fuzz(60)
@given(data=st.data())
def test_tokenizer_files(work, bpe_dir, data):
  from t3d_jax.data import tokenizer as tok_lib
  d = work / "tok"
  shutil.rmtree(d, ignore_errors=True)
  shutil.copytree(bpe_dir, d)
  name, body = data.draw(tokenizer_edit(bpe_dir))
  if body is None:
    (d / name).unlink()
  else:
    (d / name).write_bytes(body)

  def use():  # what rollout, eval and distill do with a tokenizer dir
    tok = tok_lib.load_tokenizer(d)
    ids = tok_lib.special_ids(tok)
    prompt = tok_lib.math_prompt(tok, "What is 1+1?")
    return ids, tok_lib.encode(tok, [prompt])[0]
  out = loads_or_one_line(use, str(d))
  if out is None:
    return
  ids, prompt_ids = out
  for i in (ids.mask_id, ids.pad_id, ids.eos_id, *ids.stop_ids, *prompt_ids):
    assert type(i) is int and 0 <= i < ids.vocab_size


@pytest.mark.parametrize("name, body, words", [
    ("chat_template.jinja", b"{% set x = 1 %}{{ x / 0 }}", "ZeroDivisionError: division by zero"),
    ("chat_template.jinja", b"{% for", "its chat_template fails (TemplateSyntaxError"),
    ("chat_template.jinja", b"{{ x.y.z }}", "its chat_template fails (UndefinedError"),
    ("chat_template.jinja", b"{% for i in range(10**9) %}x{% endfor %}", "OverflowError"),
    ("tokenizer.json", None, "cannot load tokenizer (ValueError: Couldn't instantiate"),
    ("tokenizer_config.json", b'{"auto_map": true}', "cannot load tokenizer (AttributeError"),
    ("tokenizer_config.json", b'{"model_max_length": "", "eos_token": "<|im_end|>"}',
     "the tokenizer cannot encode text (TypeError"),
])
def test_tokenizer_findings(work, bpe_dir, name, body, words):
  """What the fuzzer found: a chat template that fails to render was a jinja / Python
  traceback; transformers' multi-line message for a dir without tokenizer.json was
  printed as several lines; an auto_map that is no object was a TypeError; a tokenizer
  that loads but cannot encode (a model_max_length "") failed at the first prompt."""
  from t3d_jax.data import tokenizer as tok_lib
  d = work / "tok_found"
  shutil.rmtree(d, ignore_errors=True)
  shutil.copytree(bpe_dir, d)
  if body is None:
    (d / name).unlink()
  else:
    (d / name).write_bytes(body)
  with pytest.raises(InputError) as e:
    tok = tok_lib.load_tokenizer(d)
    tok_lib.encode(tok, [tok_lib.math_prompt(tok, "1+1")])
  assert str(e.value).startswith(f"{d}: ") and words in str(e.value)
  assert "\n" not in str(e.value)


# --- config overrides (--config.<key>=..., api keyword overrides) ------------------------

@functools.lru_cache(maxsize=None)
def base_config():
  """configs/distill.py's config (a function, not a fixture: hypothesis prints fixtures)."""
  from t3d_jax.config_base import config_module
  return config_module(REPO / "configs" / "distill.py").get_config()


def leaf_keys(config) -> list[str]:
  from t3d_jax.config_keys import flatten
  return sorted(flatten(config.to_dict()))


SECTION_KEYS = ("decode.", "examples.", "loss.", "optim.", "model.")
HOSTILE_KEYS = st.sampled_from(["", ".", "..", "distill.", ".seed", "distill..max_steps",
                                "distill__max_steps", "decode.block_size.x", "seed.x",
                                "nope", "dé.ç", "mesh.rules", "pipeline.variants", "decode"])


def read_sections(config):
  """What the stages build from the typed sections before they run."""
  from t3d_jax.data.tokenizer import SpecialIds
  from t3d_jax.distill.examples import ExampleConfig
  from t3d_jax.distill.losses import LossConfig
  from t3d_jax.models.numerics import Numerics
  from t3d_jax.sampling.config import Batching, DecodeConfig
  from t3d_jax.train.trainer import OptimConfig
  Numerics.of(config.model)
  ExampleConfig.from_config(config.examples, block_size=config.examples.block_size or 4)
  LossConfig.from_config(config.loss, block_size=4)
  OptimConfig.from_config(config.optim)
  ids = SpecialIds(mask_id=299, pad_id=0, eos_id=2, stop_ids=(2,), vocab_size=300)
  Batching.of(config.decode)
  return DecodeConfig.from_config(config.decode, ids)


@fuzz(200)
@given(data=st.data())
def test_config_overrides(data):
  import copy
  keys = leaf_keys(base_config())
  config = copy.deepcopy(base_config())
  section_keys = [k for k in keys if k.startswith(SECTION_KEYS)]
  key = data.draw(st.one_of(st.sampled_from(section_keys), st.sampled_from(keys), HOSTILE_KEYS))
  value = data.draw(st.one_of(HOSTILE, st.sampled_from([0, -1, 1, 0.5, "none", "x", (), (1,),
                                                        (2.0,), [], float("nan")])))
  dotted = key.replace("__", ".")
  out = loads_or_one_line(lambda: (config_keys.apply_overrides(config, {key: value}),
                                   read_sections(config)),
                          dotted, dotted.rpartition(".")[2] or dotted)
  if out is None:
    return
  dcfg = out[1]
  assert dcfg.block_size >= 1 and dcfg.max_new_tokens >= 1
  assert math.isfinite(dcfg.temperature) and math.isfinite(dcfg.top_p)


@pytest.mark.parametrize("key, value, words", [
    ("decode.batch_size", "\n", "config decode.batch_size: not a config key or a bad value"),
    ("decode.block_size", None, "block_size=None must be an integer"),
    ("decode.temperature", float("nan"), "temperature=nan must be a finite number"),
    ("decode.batch_size", None, "batch_size=None must be an integer"),
    ("decode.extra_stop_ids", [-1], "extra_stop_ids=(-1,) must be a list of token ids"),
    ("decode", None, "decode is a section: set its keys"),
    ("decode", {}, "decode is a section: set its keys"),
    ("decode.batch_size", {".": 0}, "config decode.batch_size: not a config key"),
    ("model.param_dtype", "0", "config.model.param_dtype: unknown dtype '0'"),
    ("examples.mask_ratios", [[]], "mask_ratios must be a non-empty list"),
    ("optim.warmup_steps", None, "warmup_steps=None must be an integer"),
    ("optim.lr", float("nan"), "lr=nan must be a finite number"),
])
def test_config_override_findings(key, value, words):
  """What the fuzzer found: None, NaN or a nested list in a typed section were TypeError /
  ValueError tracebacks or a message naming no key (or a NaN decode temperature that
  passed); a section replaced by None or {} lost its keys; ml_collections' message
  spanned two lines."""
  import copy
  config = copy.deepcopy(base_config())
  with pytest.raises(InputError) as e:
    config_keys.apply_overrides(config, {key: value})
    read_sections(config)
  assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


CLI_FLAGS = st.sampled_from([
    "--config.decode.temperature=nan", "--config.seed=1e400", "--config.decode.block_size=-4",
    "--config.eval.tokens_per_forward=(1,", "--config.model.dtype=float64",
    "--config.examples.mask_ratios=[2.0]", "--config.dé=1", "--config.distill=3",
    "--config.distill.max_steps=" + "9" * 5000, "--config.decode.top_p=inf",
    "--config.mode=nope", "--config.optim.lr=None", "--config", "--config.=1"])


@fuzz(8)
@given(flag=CLI_FLAGS)
def test_config_overrides_through_the_cli(tmp_path_factory, flag):
  """The real command line: exit 2 and one stderr line (or a run that starts)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  work = tmp_path_factory.mktemp("cli")
  cmd = [sys.executable, "-m", "t3d_jax.main", "--config", "configs/distill.py",
         f"--config.workdir={work}", flag]
  r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  lines = r.stderr.strip().splitlines()
  assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), (
      r.returncode, r.stderr[-2000:])
