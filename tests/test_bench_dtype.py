"""bench dtype_agreement: the agreement statistics on fixed lists, and the command on a
tiny real model (float32 against itself agrees on every token; bfloat16 gives valid
fractions and tokens/s for both)."""
import json

from decode_setup import tiny_model, write_questions
from t3d_jax.bench import dtype_agreement


def test_agreement_statistics_by_hand():
  a = [[1, 2, 3], [4, 5, 6, 7], [8], [9, 9]]
  b = [[1, 2, 3], [4, 0, 6], [8, 1], [9, 9]]
  r = dtype_agreement.agreement(a, b)
  assert r["sequences"] == 0.5
  assert r["tokens"] == (3 + 2 + 1 + 2) / (3 + 4 + 2 + 2)  # over the longer response
  assert r["first_difference"] == (1 + 1) / 2              # position 1 in both
  assert dtype_agreement.agreement([[1]], [[1]]) == dict(sequences=1.0, tokens=1.0,
                                                         first_difference=None)


def test_the_command_on_a_tiny_model(tmp_path_factory, tmp_path, capsys):
  root = tiny_model(tmp_path_factory)
  data = write_questions(tmp_path / "q.jsonl", 6)
  args = ["--model", str(root / "model"), "--data", str(data), "--steps", "4,1",
          "--max-new", "8", "--batch", "4"]
  assert dtype_agreement.main(args + ["--dtype", "float32", "--json",
                                      str(tmp_path / "same.json")]) == 0
  same = json.loads((tmp_path / "same.json").read_text())["results"]
  assert [r["steps"] for r in same] == [4, 1]
  assert all(r["sequences"] == r["tokens"] == 1.0 for r in same)
  assert dtype_agreement.main(args + ["--json", str(tmp_path / "bf16.json")]) == 0
  low = json.loads((tmp_path / "bf16.json").read_text())
  assert low["dtype"] == "bfloat16"
  for r in low["results"]:
    assert 0.0 <= r["sequences"] <= 1.0 and 0.0 <= r["tokens"] <= 1.0
    assert r["tokens_per_s_float32"] > 0 and r["tokens_per_s_low"] > 0
  assert "same seq %" in capsys.readouterr().out
  assert dtype_agreement.main(["--model", str(root / "nope"), "--data", str(data)]) == 2
