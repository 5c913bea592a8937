"""The demo pipeline through the CLI, shortened (tiny sizes, few steps): every stage's
artefacts exist and hold numbers in range (not quality), a rerun resumes instead of
redoing, stages run alone by mode, a missing input names the earlier mode, a finished
stage refuses other values of its keys unless forced, and named distill runs (one by
name, several as pipeline variants) share the workdir."""
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
         "--config.distill.checkpoint_every=2", "--config.distill.async_checkpoint=False",
         # 12 updates make no competent teacher: the gate is tested in test_teacher_checks
         "--config.rollout.min_teacher_accuracy=0")


def main(work, *extra, config="configs/demo.py"):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  cmd = [sys.executable, "-m", "t3d_jax.main", "--config", str(config),
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
  # distill: one student per seed + metrics
  for k in range(5):
    d = rows(work / f"distill/t3d_s{k}/metrics.jsonl")
    assert d[-1]["step"] == 4 and d[-1]["round"] == 2 and np.isfinite(d[-1]["loss"])
    assert (work / f"distill/t3d_s{k}/model/sdar_config.json").is_file()
  # eval: 6 models x 3 settings, accuracy in [0, 1], fewer forwards at higher TPF
  s = json.loads((work / "eval/summary.json").read_text())
  res = {(x["model"], x["tokens_per_forward"]): x for x in s["results"]}
  models = ["base"] + [f"t3d_s{k}" for k in range(5)]
  assert set(res) == {(m, t) for m in models for t in (1, 2, 4)}
  for (model, t), x in res.items():
    assert 0.0 <= x["accuracy"] <= 1.0 and x["nfe_mean"] > 0
    if t > 1:
      assert x["nfe_mean"] < res[(model, 1)]["nfe_mean"]
  assert (work / "eval/accuracy_vs_tpf.png").stat().st_size > 1000
  # compare: the seeds' mean and sd
  c = json.loads((work / "compare/compare.json").read_text())["groups"]
  assert set(c) == {"base", "t3d"} and c["t3d"]["seeds"] == [0, 1, 2, 3, 4]
  acc = [100 * res[(f"t3d_s{k}", 4)]["accuracy"] for k in range(5)]
  np.testing.assert_allclose(c["t3d"]["accuracy"]["4"]["mean"], np.mean(acc), atol=1e-6)
  times = json.loads((work / "pipeline.json").read_text())["stages"]
  assert list(times) == ["task", "pretrain", "rollout", "distill", "eval", "compare"]
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


def test_a_finished_stage_refuses_other_values_of_its_keys_unless_forced(demo):
  work, _ = demo
  r = main(work, "--config.mode=rollout", "--config.decode.temperature=0.5")
  assert r.returncode == 2
  assert "its rollout stage ran with a different config (1 keys differ: " \
         "decode.temperature: 0.1 -> 0.5)" in r.stderr, r.stderr[-2000:]
  r = main(work, "--config.mode=task", "--config.decode.temperature=0.5")  # not task's key
  assert r.returncode == 0, r.stderr[-2000:]
  r = main(work, "--config.mode=task", "--config.task.num_test=3")
  assert r.returncode == 2 and "its task stage ran with a different config" in r.stderr
  r = main(work, "--config.mode=task", "--config.task.num_test=3", "--config.force=True")
  assert r.returncode == 0, r.stderr[-2000:]  # the task files exist, kept; record replaced
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
  assert len(lines) <= 52, "\n".join(lines)  # 6 stages, 5 distill runs, 18 eval rows, gains
  assert not [x for x in lines if re.match(r"^[IW]\d{4} ", x)], "\n".join(lines)
  assert sum("[distill] " in x for x in lines) == 5  # one per seed
  assert f"[pipeline] config: {work}/last_run_config.json" in lines
  assert json.loads((work / "last_run_config.json").read_text())["workdir"] == str(work)


VARIANTS = """
from t3d_jax.config_base import config_module


def get_config():
  c = config_module({demo!r}).get_config()
  c.pipeline.stages = ("distill", "eval")
  c.pipeline.variants = {{"a": {{"distill": {{"seed": 5}}}}, "b": {{"optim": {{"lr": 1e-4}}}}}}
  c.eval.models = ("base={{workdir}}/model", "distill:*")
  c.eval.tokens_per_forward = (4,)
  c.eval.output_dir = "{{workdir}}/eval_variants"
  return c
"""


def test_named_runs_and_variants_share_the_workdir(demo, tmp_path):
  """A second student by name beside the first (named "student", the one run's name
  without variants: it is one run, not every variant); a pipeline of two variants: each
  run in its own <workdir>/distill/<name>/, eval takes them by name, the first student
  untouched."""
  work, _ = demo
  first = (work / "distill/t3d_s0/model/params.sha256").read_text()
  r = main(work, "--config.mode=distill", "--config.distill.name=student",
           "--config.distill.seed=3")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "[distill] student (t3d): 4 updates" in r.stdout
  assert sum("[distill] " in x for x in r.stdout.splitlines()) == 1  # not the 5 variants
  second = work / "distill/student"
  assert (second / "model/params.sha256").read_text() != first
  assert rows(second / "metrics.jsonl")[-1]["step"] == 4
  cfg = tmp_path / "variants.py"
  cfg.write_text(VARIANTS.format(demo=str(REPO / "configs/demo.py")))
  r = main(work, config=cfg)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "[pipeline] distill run a" in r.stdout and "[pipeline] distill run b" in r.stdout
  sums = {n: (work / f"distill/{n}/model/params.sha256").read_text() for n in "ab"}
  assert len({first, sums["a"], sums["b"]}) == 3
  assert (work / "distill/t3d_s0/model/params.sha256").read_text() == first
  s = json.loads((work / "eval_variants/summary.json").read_text())
  assert {x["model"] for x in s["results"]} == {"base", "a", "b"}
  assert s["models"]["a"] == str(work / "distill/a/model")
  record = json.loads((work / "t3d_config.json").read_text())["stages"]
  assert {"distill/t3d_s0", "distill/student", "distill/a", "distill/b"} <= set(record)
  assert record["distill/a"]["distill.seed"] == 5 and record["distill/b"]["optim.lr"] == 1e-4


def test_keys_added_since_a_record_refuse_only_off_their_default(tmp_path):
  """A per-stage record written before a config key existed: holding the library default
  (the behaviour before the key existed), the stage is the same; set to anything else, the
  record is another run's. A changed recorded key refuses."""
  from t3d_jax.config_base import config_module
  from t3d_jax.errors import InputError
  from t3d_jax.config_keys import differences
  from t3d_jax.modes import pipeline
  from t3d_jax.modes.registry import STAGES
  assert differences({"a": 1}, {"a": 1, "b": 2}) == (1, "b: '<unset>' -> 2")
  assert differences({"a": 1}, {"a": 1, "b": 2}, defaults={"b": 2}) == (0, "")
  assert differences({"a": 1}, {"a": 1, "b": 3}, defaults={"b": 2})[0] == 1  # not default
  assert differences({"a": 1}, {"a": 1, "b": {"c": 2}}, defaults={"b": {"c": 2}})[0] == 0
  assert differences({"a": 1, "c": 3}, {"a": 1}, defaults={"c": 3})[0] == 1  # removed
  c = config_module(REPO / "configs/demo.py").get_config()
  c.workdir = str(tmp_path)
  distill = STAGES["distill"]
  pipeline.record_stage(c, distill)
  path = tmp_path / "t3d_config.json"
  record = json.loads(path.read_text())
  assert record["stages"]["distill/student"]["decode.temperature"] == 0.1  # it re-decodes
  del record["stages"]["distill/student"]["loss.entropy_weight"]  # demo: the default
  path.write_text(json.dumps(record))
  pipeline.check_stage(c, distill)
  del record["stages"]["distill/student"]["distill.refresh_every"]  # demo: 4, not 0
  path.write_text(json.dumps(record))
  with pytest.raises(InputError, match=r"distill.refresh_every: '<unset>' -> 4"):
    pipeline.check_stage(c, distill)
  c.loss.alpha = 0.9
  with pytest.raises(InputError, match="loss.alpha: 0.5 -> 0.9"):
    pipeline.check_stage(c, distill)


def test_distill_name_picks_one_variant():
  """With pipeline.variants: the default name ("") runs every variant, a variant's name
  only that one (its keys applied), any other name one run with the config's own keys,
  "student" (the name of the one run without variants) included."""
  from t3d_jax.config_base import config_module
  from t3d_jax.modes import pipeline
  c = config_module(REPO / "configs/demo.py").get_config()
  assert [(s.distill.name, s.distill.seed) for s in pipeline.variants(c)] == \
      [(f"t3d_s{k}", k) for k in range(5)]
  c.distill.name = "t3d_s2"
  (one,) = pipeline.variants(c)
  assert (one.distill.name, one.distill.seed, dict(one.pipeline.variants)) == ("t3d_s2", 2, {})
  c.distill.name, c.distill.seed = "mine", 7
  (own,) = pipeline.variants(c)
  assert (own.distill.name, own.distill.seed, dict(own.pipeline.variants)) == ("mine", 7, {})
  c.distill.name, c.distill.seed = "student", -1
  (student,) = pipeline.variants(c)
  assert (student.distill.name, student.distill.seed, dict(student.pipeline.variants)) == \
      ("student", -1, {})
  c.pipeline.variants, c.distill.name = {}, ""
  (default,) = pipeline.variants(c)
  assert default.distill.name == "student"
