"""TFDS builders from local files (array_record), read back without TensorFlow; iterator."""
import importlib.util
import json
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from t3d_jax.data import datasets, jsonl, loader
from t3d_jax.data import tfds_builders as tb


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def test_shipped_sets_build_and_read_three_ways(data_dir):
  b = tb.build_qa(data_dir, "gsm8k")
  assert b.info.file_format.value == "array_record"
  assert set(b.info.splits) == {"train", "test"}
  rows = datasets.load_qa("gsm8k_test")
  src = b.as_data_source()["test"]
  assert len(src) == len(rows) == 1319
  for i in (0, 7, 1318):                       # file order kept (shuffling disabled)
    got = loader.decode_row(src[i])
    assert got == rows[i]
  by_name = tfds.data_source("t3d_math_qa/gsm8k", split="train", data_dir=str(data_dir),
                             download=False, try_gcs=False)
  assert len(by_name) == 7473
  assert loader.decode_row(by_name[5]) == datasets.load_qa("gsm8k_train", limit=6)[5]
  from_dir = tb.open_dataset_dir(b.data_dir, "test")
  assert loader.decode_row(from_dir[1318]) == rows[1318]
  m = tb.build_qa(data_dir, "math500").as_data_source()["test"]
  assert len(m) == 500 and m[0]["answer"] == b"\\left( 3, \\frac{\\pi}{2} \\right)"
  assert "tensorflow" not in sys.modules and importlib.util.find_spec("tensorflow") is None


def test_user_jsonl_custom_fields_and_rebuild_on_change(tmp_path, data_dir):
  p = tmp_path / "my set.jsonl"
  p.write_text("".join(json.dumps({"problem": f"q{i}", "solution": i}) + "\n" for i in range(5)))
  cfg = tb.user_qa_config({"train": p}, question_field="problem", answer_field="solution")
  assert cfg.name.startswith("my_set_")
  src = tb.prepare(tb.T3dMathQa, cfg, data_dir).as_data_source()["train"]
  assert [loader.decode_row(src[i]) for i in range(5)] == [
      {"question": f"q{i}", "answer": str(i), "index": i} for i in range(5)]
  p.write_text(json.dumps({"problem": "new", "solution": "x"}) + "\n")
  cfg2 = tb.user_qa_config({"train": p}, question_field="problem", answer_field="solution")
  assert cfg2.name != cfg.name
  src2 = tb.prepare(tb.T3dMathQa, cfg2, data_dir).as_data_source()["train"]
  assert len(src2) == 1 and src2[0]["question"] == b"new"


def test_bad_user_jsonl_names_file_and_row(tmp_path, data_dir):
  p = tmp_path / "bad.jsonl"
  p.write_text('{"question": "q", "answer": "a"}\n{"question": "q2"}\n')
  with pytest.raises(jsonl.JsonlError, match=r"bad\.jsonl, row 2: row has no 'answer'"):
    tb.build_qa(data_dir, str(p))


def _rollout_rows(n, rng):
  rows = []
  for i in range(n):
    k = int(rng.integers(1, 12))
    rows.append({"question": f"q{i}", "answer": f"#### {i}", "prompt": f"<p>{i}",
                 "response_ids": rng.integers(0, 151670, k).tolist(),
                 "step_map": rng.permutation(k).tolist(), "response": f"r{i}",
                 "extracted_output": "ignored"})
  return rows


def test_trajectories_roundtrip(tmp_path, data_dir):
  rows = _rollout_rows(20, np.random.default_rng(0))
  path = tmp_path / "rollouts.jsonl"
  with jsonl.JsonlAppender(path) as out:
    out.write_many(rows)
  src = tb.build_trajectories(data_dir, path).as_data_source()["train"]
  assert len(src) == 20
  for i in (0, 13, 19):
    got = loader.decode_row(src[i])
    assert got["response_ids"].dtype == np.int32
    np.testing.assert_array_equal(got["response_ids"], rows[i]["response_ids"])
    np.testing.assert_array_equal(got["step_map"], rows[i]["step_map"])
    assert (got["question"], got["answer"], got["prompt"], got["response"], got["index"]) == (
        f"q{i}", f"#### {i}", f"<p>{i}", f"r{i}", i)


@pytest.mark.parametrize("patch, pattern", [
    ({"step_map": [1]}, r"response_ids has 2 ids but step_map has 1"),
    ({"response_ids": "12"}, r"field 'response_ids' must be a list of ints"),
    ({"prompt": None}, r"field 'prompt' is null"),
])
def test_bad_trajectory_rows(tmp_path, data_dir, patch, pattern):
  row = {"question": "q", "answer": "a", "prompt": "p", "response_ids": [1, 2],
         "step_map": [1, 2]}
  path = tmp_path / "r.jsonl"
  jsonl.write_jsonl_atomic(path, [row, {**row, **patch}])
  with pytest.raises(jsonl.JsonlError, match=r"r\.jsonl, row 2: " + pattern):
    tb.build_trajectories(data_dir, path)


def test_iterator_deterministic_sharded_resumable(data_dir):
  src = tb.build_qa(data_dir, "math500").as_data_source()["test"]
  n = len(src)

  def ids(**kw):
    return [r["index"] for r in loader.iterate(src, **kw)]

  a = ids(seed=3)
  assert ids(seed=3) == a and ids(seed=4) != a
  assert sorted(a) == list(range(n)) and a != list(range(n))
  assert ids(shuffle=False) == list(range(n))
  shards = [ids(seed=3, process_index=p, process_count=3) for p in range(3)]
  assert [len(s) for s in shards] == [167, 167, 166]
  assert sorted(sum(shards, [])) == list(range(n))
  even = [ids(seed=3, process_index=p, process_count=3, drop_remainder=True) for p in range(3)]
  assert [len(s) for s in even] == [166] * 3 and not set(even[0]) & set(even[1])
  two = ids(seed=3, num_epochs=2, process_index=1, process_count=3)
  assert len(two) == 334 and two[:167] == shards[1]
  epoch1 = [ids(seed=3, num_epochs=2, process_index=p, process_count=3)[-166 - (p < 2):]
            for p in range(3)]
  assert sorted(sum(epoch1, [])) == list(range(n))      # epoch 1 also covers every row once
  assert two[167:] == epoch1[1] != shards[1]            # in a fresh order
  assert ids(seed=3, num_epochs=2, process_index=1, process_count=3, start=200) == two[200:]
  rows = datasets.load_qa("math500")                    # plain lists work the same
  assert [r["index"] for r in loader.iterate(rows, seed=3)] == a


def test_iterator_errors():
  with pytest.raises(ValueError, match="empty data source"):
    next(loader.iterate([]))
  with pytest.raises(ValueError, match="bad sharding"):
    next(loader.iterate([{"a": 1}], process_index=2, process_count=2))
  with pytest.raises(ValueError, match="cannot feed 4 processes"):
    next(loader.iterate([{"a": 1}], process_count=4, drop_remainder=True))
