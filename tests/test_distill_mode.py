"""distill mode end to end through the CLI: metrics, checkpoints, student, exact resume."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from t3d_jax.convert import load_params
from tiny_setup import make_model_dir, write_trajectories

REPO = Path(__file__).resolve().parents[1]
NAMES = ("loss", "loss_real", "loss_fake", "logp_target_real", "logp_ref_real",
         "logp_target_fake", "logp_ref_fake", "loss_path", "grad_norm", "lr")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("distill")
  model = make_model_dir(root)
  write_trajectories(root / "traj.jsonl", root / "tokenizer", n=12)
  return root, model


def distill(work, model, data, *extra, devices=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  cmd = [sys.executable, "-m", "t3d_jax.main", "--config", "configs/distill.py",
         f"--config.workdir={work}", f"--config.model_dir={model}",
         f"--config.distill.data={data}", "--config.distill.global_batch=4",
         "--config.distill.micro_batch=2", "--config.distill.max_steps=4",
         "--config.distill.checkpoint_every=2", "--config.distill.round_interval=2",
         "--config.distill.length_bucket=8", "--config.examples.block_size=4",
         "--config.optim.lr=1e-3", "--config.optim.warmup_steps=1",
         "--config.distill.async_checkpoint=False", *extra]
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_distill_runs_checkpoints_and_resumes_exactly(setup, tmp_path):
  root, model = setup
  a = tmp_path / "a"
  r = distill(a, model, root / "traj.jsonl")
  assert r.returncode == 0, r.stderr[-4000:]
  rows = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
  assert [x["step"] for x in rows] == [1, 2, 3, 4]
  for x in rows:
    assert all(np.isfinite(x[k]) for k in NAMES)
  np.testing.assert_allclose(rows[0]["loss_real"], np.log(2), rtol=1e-5)  # ref == student
  assert rows[2]["round"] == 1 and rows[3]["round"] == 2
  assert sorted(p.name for p in (a / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4"]
  assert list((a / "tb").iterdir())
  student, cfg = load_params(a / "student")
  base, _ = load_params(model)
  assert any(not np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(student), jax.tree.leaves(base)))

  # preempted after step 2: drop the newer checkpoint and the student, rerun the command
  shutil.copytree(a, tmp_path / "b")
  b = tmp_path / "b"
  shutil.rmtree(b / "checkpoints" / "4")
  shutil.rmtree(b / "student")
  (b / "metrics.jsonl").write_text("".join(
      x + "\n" for x in (a / "metrics.jsonl").read_text().splitlines()[:2]))
  r = distill(b, model, root / "traj.jsonl")
  assert r.returncode == 0, r.stderr[-4000:]
  assert "resuming from step 2" in r.stderr
  resumed, _ = load_params(b / "student")
  for x, y in zip(jax.tree.leaves(student), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit-exact on CPU
  rows_b = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
  np.testing.assert_allclose([x["loss"] for x in rows_b], [x["loss"] for x in rows], rtol=1e-5)

  # same workdir, other settings: refused
  r = distill(b, model, root / "traj.jsonl", "--config.loss.beta=0.2")
  assert r.returncode == 2 and "fingerprint differs" in r.stderr


def test_distill_bad_inputs(setup, tmp_path):
  root, model = setup
  bad = tmp_path / "bad.jsonl"
  good = {"prompt": "x", "answer": "3", "step_map": [[1, 2]], "response_ids": [[5, 6]]}
  for row, msg in [
      (dict(good, response_ids=[[5]]), "bad.jsonl, row 2, sample 0: response_ids (1) and step_map (2)"),
      (dict(good, step_map=[[1, 2.5]]), "bad.jsonl, row 2, sample 0"),
      (dict(good, answer=""), "bad.jsonl, row 2: empty or missing 'answer'"),
      ({k: v for k, v in good.items() if k != "response_ids"}, "row 2: no 'response_ids' field")]:
    bad.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    r = distill(tmp_path / "w", model, bad)
    assert r.returncode == 2 and msg in r.stderr, (msg, r.stderr[-2000:])
  r = distill(tmp_path / "w", model, root / "traj.jsonl", "--config.distill.no_such_key=1")
  assert r.returncode != 0 and "no_such_key" in r.stderr
  r = distill(tmp_path / "w", model, root / "traj.jsonl", "--config.distill.global_batch=64")
  assert r.returncode == 2 and "fewer than distill.global_batch=64" in r.stderr


def test_distill_on_a_2x2x2_mesh_matches_one_device(setup, tmp_path):
  """8 fake devices, mesh data=2 fsdp=2 tensor=2, micro-batch rows split over data x fsdp:
  the same losses as one device, and the same student up to Adam's sign noise."""
  root, model = setup
  common = ("--config.distill.micro_batch=4", "--config.distill.max_steps=2")
  r1 = distill(tmp_path / "one", model, root / "traj.jsonl", *common)
  assert r1.returncode == 0, r1.stderr[-3000:]
  r8 = distill(tmp_path / "mesh", model, root / "traj.jsonl", *common,
               "--config.mesh.shape.data=2", "--config.mesh.shape.fsdp=2",
               "--config.mesh.shape.tensor=2", devices=8)
  assert r8.returncode == 0, r8.stderr[-3000:]
  m1, m8 = ([json.loads(x) for x in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
            for d in ("one", "mesh"))
  for a, b in zip(m1, m8):
    for k in NAMES:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-6, err_msg=k)
  s1, _ = load_params(tmp_path / "one" / "student")
  s8, _ = load_params(tmp_path / "mesh" / "student")
  for x, y in zip(jax.tree.leaves(s1), jax.tree.leaves(s8)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=4e-3)  # 2 steps x lr 1e-3
