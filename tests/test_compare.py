"""The comparison table: methods x seeds grouped, mean ± sd, gap closure and full-step
cost, hand-computed; the compare mode on an eval summary through the CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from t3d_jax.evaluation.compare import aggregate, format_table, gain_lines, group_of, mean_sd

REPO = Path(__file__).resolve().parents[1]


def result(model, tpf, acc):
  return dict(model=model, tokens_per_forward=tpf, accuracy=acc, strategy="low_confidence_static")


RESULTS = ([result("base", 1, 1.0), result("base", 2, 0.2), result("base", 4, 0.0)]
           + [result("t3d_s0", 1, 0.9), result("t3d_s0", 2, 0.6), result("t3d_s0", 4, 0.5),
              result("t3d_s1", 1, 0.8), result("t3d_s1", 2, 0.8), result("t3d_s1", 4, 0.3),
              result("naive_td_s0", 1, 1.0), result("naive_td_s0", 2, 0.2),
              result("naive_td_s0", 4, 0.1)])
AUPS = {"base": 85.0, "t3d_s0": 100.0, "t3d_s1": 90.0, "naive_td_s0": 80.0}


def test_groups_and_mean_sd():
  assert group_of("t3d_s12") == ("t3d", 12) and group_of("naive_td_s0") == ("naive_td", 0)
  assert group_of("base") == ("base", None) and group_of("t3d_sx") == ("t3d_sx", None)
  ms = mean_sd([1.0, 2.0, 4.0])
  assert ms["mean"] == pytest.approx(7 / 3)
  assert ms["sd"] == pytest.approx(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) ** .5
                                   / 2 ** .5)
  assert mean_sd([5.0])["sd"] == 0.0


def test_aggregate_hand_computed():
  g = aggregate(RESULTS, AUPS, "base")
  t = g["t3d"]
  assert t["seeds"] == [0, 1]
  assert t["accuracy"][4]["values"] == pytest.approx([50.0, 30.0])
  assert t["accuracy"][2]["mean"] == pytest.approx(70.0)
  # gap closure at 2: (60 - 20) / (100 - 20) = .5 and (80 - 20) / 80 = .75
  assert t["gap_closure"][2]["values"] == pytest.approx([0.5, 0.75])
  assert t["gap_closure"][4]["values"] == pytest.approx([0.5, 0.3])
  assert t["full_step_cost"]["values"] == pytest.approx([10.0, 20.0])
  assert t["aup"]["mean"] == pytest.approx(95.0)
  assert g["naive_td"]["gap_closure"][2]["values"] == pytest.approx([0.0])
  assert g["base"]["full_step_cost"]["values"] == [0.0]
  table = format_table(g, "base")
  lines = table.splitlines()
  assert lines[2].startswith("base") and "70.0 ± 14.1" in table and "62.5 ± 17.7" in table
  with pytest.raises(ValueError, match="no base model 'teacher'"):
    aggregate(RESULTS, AUPS, "teacher")


def test_gain_lines_say_what_distillation_bought():
  lines = gain_lines(aggregate(RESULTS, AUPS, "base"), "base")
  assert lines == [
      "base 100.0 / 20.0 / 0.0 % at TPF 1 / 2 / 4",
      "naive_td 100.0 / 20.0 / 10.0 %; gap closed 0 % at TPF 2, 10 % at TPF 4; full-step "
      "cost 0.0 points",
      "t3d 85.0 ± 7.1 / 70.0 ± 14.1 / 40.0 ± 14.1 %; gap closed 62 ± 18 % at TPF 2, "
      "40 ± 14 % at TPF 4; full-step cost 15.0 ± 7.1 points"]
  assert gain_lines(aggregate(RESULTS, AUPS, "base"), "base", most=1)[-1] == (
      "... and 1 more (the compare table has them all)")


def test_compare_mode_through_the_cli(tmp_path):
  (tmp_path / "eval").mkdir()
  (tmp_path / "eval" / "summary.json").write_text(json.dumps(dict(
      data="q.jsonl", n=10, results=RESULTS, aup=AUPS)))
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-m", "t3d_jax.main", "--config", "configs/compare.py",
                      "--config.mode=compare", f"--config.workdir={tmp_path}"], cwd=REPO,
                     env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "t3d" in r.stdout and "62.5 ± 17.7" in r.stdout
  out = json.loads((tmp_path / "compare" / "compare.json").read_text())
  assert out["groups"]["t3d"]["gap_closure"]["4"]["mean"] == pytest.approx(0.4)
  assert (tmp_path / "compare" / "accuracy_vs_tpf.png").stat().st_size > 1000
