"""The demo pipeline through the CLI, shortened (tiny sizes, few steps): every stage's
artefacts exist and hold numbers in range (not quality), a rerun resumes instead of
redoing, stages run alone by mode, a missing input names the earlier mode, and a workdir
set up by another config is refused unless forced."""
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHORT = ("--config.task.num_train=256", "--config.task.num_test=16",
         "--config.pretrain.max_steps=12", "--config.pretrain.global_batch=32",
         "--config.pretrain.micro_batch=32", "--config.pretrain.checkpoint_every=6",
         "--config.pretrain.async_checkpoint=False",
         "--config.arch.hidden_size=32", "--config.arch.intermediate_size=64",
         "--config.arch.num_heads=2", "--config.arch.num_kv_heads=1",
         "--config.arch.head_dim=16",
         "--config.rollout.limit=32", "--config.decode.batch_size=16",
         "--config.distill.max_steps=4", "--config.distill.global_batch=16",
         "--config.distill.micro_batch=16", "--config.distill.round_interval=2",
         "--config.distill.checkpoint_every=2", "--config.distill.async_checkpoint=False")


def main(work, *extra):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  cmd = [sys.executable, "-m", "t3d_jax.main", "--config", "configs/demo.py",
         f"--config.workdir={work}", *SHORT, *extra]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  work = tmp_path_factory.mktemp("demo") / "w"
  r = main(work)
  assert r.returncode == 0, r.stderr[-4000:]
  return work, r


def rows(path):
  return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def test_every_stage_writes_its_artefacts(demo):
  from t3d_jax.tasks import words
  work, r = demo
  train, test = rows(work / "task/train.jsonl"), rows(work / "task/test.jsonl")
  assert len(train) == 256 and len(test) == 16
  assert all(words.verify(x["question"], x["answer"]).correct for x in train + test)
  assert (work / "tokenizer/tokenizer.json").is_file()
  # pretrain: metrics, checkpoints, a model dir the other modes read
  m = rows(work / "pretrain/metrics.jsonl")
  assert [x["step"] for x in m][-1] == 12 and all(0 < x["loss"] < 50 for x in m)
  assert sorted(p.name for p in (work / "pretrain/checkpoints").iterdir()
                if p.name.isdigit()) == ["12", "6"]
  cfg = json.loads((work / "model/sdar_config.json").read_text())
  assert cfg["vocab_size"] == words.VOCAB_SIZE and cfg["hidden_size"] == 32
  assert (work / "model/hf_meta/config.json").is_file()
  assert (work / "model/hf_meta/tokenizer.json").is_file()
  # rollout: the base model's own full-step trajectories
  traj = rows(work / "trajectories.jsonl")
  assert len(traj) == 32
  for t in traj:
    sm, ids = t["step_map"][0], t["response_ids"][0]
    assert len(sm) == len(ids) == t["response_length"][0] <= 20
    assert t["nfe"][0] >= len(ids)  # one token per forward (at most)
    assert t["prompt"] == t["question"] + "="
  # distill: student + metrics
  d = rows(work / "metrics.jsonl")
  assert d[-1]["step"] == 4 and d[-1]["round"] == 2 and np.isfinite(d[-1]["loss"])
  assert (work / "student/sdar_config.json").is_file()
  # eval: 2 models x 3 settings, accuracy in [0, 1], fewer forwards at higher TPF
  s = json.loads((work / "eval/summary.json").read_text())
  res = {(x["model"], x["tokens_per_forward"]): x for x in s["results"]}
  assert set(res) == {(m, t) for m in ("base", "t3d") for t in (1, 2, 4)}
  for (model, t), x in res.items():
    assert 0.0 <= x["accuracy"] <= 1.0 and x["nfe_mean"] > 0
    if t > 1:
      assert x["nfe_mean"] < res[(model, 1)]["nfe_mean"]
  assert (work / "eval/accuracy_vs_tpf.png").stat().st_size > 1000
  times = json.loads((work / "pipeline.json").read_text())["stages"]
  assert list(times) == ["task", "pretrain", "rollout", "distill", "eval"]
  assert "static_b4_tpf4" in r.stdout and "[pipeline] stage times" in r.stdout


def test_rerun_resumes_and_stages_run_alone(demo):
  work, _ = demo
  before = (work / "eval/summary.json").read_text()
  traj = (work / "trajectories.jsonl").read_text()
  r = main(work)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "pretrain: resuming from step 12" in r.stderr
  assert "distill: resuming from step 4" in r.stderr
  assert "finished before, reused" in r.stderr
  assert (work / "trajectories.jsonl").read_text() == traj
  assert json.loads((work / "eval/summary.json").read_text())["results"] == \
      json.loads(before)["results"]
  r = main(work, "--config.mode=task")
  assert r.returncode == 0 and "exist, kept" in r.stdout


def test_workdir_of_another_config_is_refused_unless_forced(demo):
  work, _ = demo
  r = main(work, "--config.mode=task", "--config.pretrain.optim.lr=0.5")
  assert r.returncode == 2
  assert "was set up by a different config" in r.stderr and "pretrain.optim.lr" in r.stderr
  r = main(work, "--config.mode=task", "--config.pretrain.optim.lr=0.5", "--config.force=True")
  assert r.returncode == 0, r.stderr[-2000:]
  r = main(work, "--config.mode=task", "--config.force=True")  # record back to the demo's
  assert r.returncode == 0


@pytest.mark.parametrize("mode,earlier", [("pretrain", "task"), ("rollout", "pretrain"),
                                          ("distill", "pretrain"), ("eval", "pretrain")])
def test_missing_input_names_the_earlier_mode(tmp_path, mode, earlier):
  r = main(tmp_path / "fresh", f"--config.mode={mode}")
  assert r.returncode == 2
  assert f"run --config.mode={earlier} first" in r.stderr, r.stderr[-2000:]


def test_quiet_by_default(demo):
  """The whole (shortened) pipeline prints its bars and summary lines only: no config
  dump (it goes to <workdir>/last_run_config.json), no orbax/absl INFO, each summary once."""
  work, r = demo
  lines = [x for x in (r.stdout + r.stderr).replace("\r", "\n").splitlines()
           if x.strip() and not re.match(r"^\w+:\s+\d+%\|", x)]  # tqdm frames aside
  assert len(lines) <= 40, "\n".join(lines)
  assert not [x for x in lines if re.match(r"^[IW]\d{4} ", x)], "\n".join(lines)
  assert sum("[distill] " in x for x in lines) == 1
  assert f"[pipeline] config: {work}/last_run_config.json" in lines
  assert json.loads((work / "last_run_config.json").read_text())["workdir"] == str(work)
