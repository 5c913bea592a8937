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
RUN = Path("distill/student")  # the default run of a workdir (distill.name)
NAMES = ("loss", "loss_real", "loss_fake", "logp_target_real", "logp_ref_real",
         "logp_target_fake", "logp_ref_fake", "loss_path", "grad_norm", "lr")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("distill")
  model = make_model_dir(root)
  write_trajectories(root / "traj.jsonl", root / "tokenizer", n=12)
  return root, model


def distill_cmd(work, model, data, *extra):
  return [sys.executable, "-m", "t3d_jax.main", "--config", "configs/distill.py",
         f"--config.workdir={work}", f"--config.model_dir={model}",
         f"--config.distill.data={data}", "--config.distill.global_batch=4",
         "--config.distill.micro_batch=2", "--config.distill.max_steps=4",
         "--config.distill.checkpoint_every=2", "--config.distill.round_interval=2",
         "--config.distill.length_bucket=8", "--config.examples.block_size=4",
         "--config.optim.lr=1e-3", "--config.optim.warmup_steps=1",
         "--config.distill.async_checkpoint=False", *extra]


def distill(work, model, data, *extra, devices=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.run(distill_cmd(work, model, data, *extra), cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def test_distill_runs_checkpoints_and_resumes_exactly(setup, tmp_path):
  root, model = setup
  a = tmp_path / "a"
  r = distill(a, model, root / "traj.jsonl")
  assert r.returncode == 0, r.stderr[-4000:]
  rows = [json.loads(x) for x in (a / RUN / "metrics.jsonl").read_text().splitlines()]
  assert [x["step"] for x in rows] == [1, 2, 3, 4]
  for x in rows:
    assert all(np.isfinite(x[k]) for k in NAMES)
  np.testing.assert_allclose(rows[0]["loss_real"], np.log(2), rtol=1e-5)  # ref == student
  assert rows[2]["round"] == 1 and rows[3]["round"] == 2
  assert sorted(p.name for p in (a / RUN / "checkpoints").iterdir()
                if p.name.isdigit()) == ["2", "4"]
  assert list((a / RUN / "tb").iterdir())
  student, cfg = load_params(a / RUN / "model")
  base, _ = load_params(model)
  assert any(not np.array_equal(x, y) for x, y in
             zip(jax.tree.leaves(student), jax.tree.leaves(base)))

  # preempted after step 2: drop the newer checkpoint and the student, rerun the command
  # (the metrics rows logged after step 2 are dropped by the rerun)
  shutil.copytree(a, tmp_path / "b")
  b = tmp_path / "b"
  shutil.rmtree(b / RUN / "checkpoints" / "4")
  shutil.rmtree(b / RUN / "model")
  r = distill(b, model, root / "traj.jsonl")
  assert r.returncode == 0, r.stderr[-4000:]
  assert "resuming from step 2" in r.stderr
  resumed, _ = load_params(b / RUN / "model")
  for x, y in zip(jax.tree.leaves(student), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit-exact on CPU
  rows_b = [json.loads(x) for x in (b / RUN / "metrics.jsonl").read_text().splitlines()]
  assert [x["step"] for x in rows_b] == [1, 2, 3, 4]
  np.testing.assert_allclose([x["loss"] for x in rows_b], [x["loss"] for x in rows], rtol=1e-5)


def test_resume_refuses_another_run_and_survives_a_new_mesh(setup, tmp_path):
  """A checkpoint resumes only the run that wrote it: another start model, other data
  content at the same path, another schedule length or rounds each refuse with one line
  naming the key (the loss keys: the test above); --config.overwrite=True starts over (equal to a fresh run);
  a different mesh (4 devices, data x tensor) resumes; one whose data-parallel size does
  not divide the micro-batch is one line."""
  root, model = setup
  other_model = make_model_dir(tmp_path / "other", seed=1)
  data = tmp_path / "traj.jsonl"
  shutil.copy(root / "traj.jsonl", data)
  w = tmp_path / "w"
  r = distill(w, model, data, "--config.distill.max_steps=2")
  assert r.returncode == 0, r.stderr[-3000:]
  rows = data.read_text().splitlines()
  changed = tmp_path / "changed.jsonl"
  changed.write_text("\n".join(rows[1:] + rows[:1]) + "\n")  # same rows, other order
  for extra, path, msg in [
      ((f"--config.model_dir={other_model}",), data, "model: '"),
      ((), changed, "data: '"),
      (("--config.distill.max_steps=3",), data, "distill.max_steps: 2 -> 3"),
      (("--config.distill.multi_round=False",), data, "distill.multi_round: True -> False")]:
    if path is changed:
      shutil.copy(changed, data)  # the same path, other content
    r = distill(w, model, data, "--config.distill.max_steps=2", *extra)  # the last flag wins
    shutil.copy(root / "traj.jsonl", data)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and err[-1].startswith("error: ") and len(err) == 1, r.stderr
    assert "checkpoints: written by another run (" in err[-1] and f"differ: {msg}" in err[-1], err
    assert "--config.overwrite=True to start over" in err[-1]

  # checkpoints written before a config key existed (here: as if loss.entropy_weight were
  # new; its default is the old behaviour) resume: the run is the same
  meta = w / RUN / "checkpoints" / "2" / "meta" / "metadata"
  m = json.loads(meta.read_text())
  del m["settings"]["loss"]["entropy_weight"]
  m["fingerprint"] = "0" * 16
  meta.write_text(json.dumps(m))
  r = distill(w, model, data, "--config.distill.max_steps=2")
  assert r.returncode == 0 and "distill: resuming from step 2" in r.stderr, r.stderr[-2000:]

  # overwrite: starts over, the same student as a fresh run with those settings
  r = distill(w, model, data, "--config.distill.max_steps=3", "--config.overwrite=True")
  assert r.returncode == 0 and "resuming" not in r.stderr, r.stderr[-3000:]
  fresh = tmp_path / "fresh"
  assert distill(fresh, model, data, "--config.distill.max_steps=3").returncode == 0
  for x, y in zip(jax.tree.leaves(load_params(w / RUN / "model")[0]),
                  jax.tree.leaves(load_params(fresh / RUN / "model")[0])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert [json.loads(x)["step"] for x in (w / RUN / "metrics.jsonl").read_text().splitlines()] \
      == [1, 2, 3]

  # a new mesh resumes: stop at 2 of 4 on one device, finish on 8 (2 x 2 x 2)
  m = tmp_path / "m"
  assert distill(m, model, data).returncode == 0
  whole, _ = load_params(m / RUN / "model")
  shutil.rmtree(m / RUN / "checkpoints" / "4")
  shutil.rmtree(m / RUN / "model")
  mesh = ("--config.mesh.shape.data=2", "--config.mesh.shape.fsdp=2",
          "--config.mesh.shape.tensor=2")
  r = distill(m, model, data, *mesh, devices=8)  # micro_batch 2 on 4 data-parallel ways
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
      "error: config distill.micro_batch=2 is not divisible by the data-parallel size 4 of "
      "the mesh (data=2 x fsdp=2); use a multiple of 4 or a smaller data/fsdp mesh axis")
  r = distill(m, model, data, *mesh[:1], "--config.mesh.shape.fsdp=1", *mesh[2:], devices=4)
  assert r.returncode == 0 and "resuming from step 2" in r.stderr, r.stderr[-3000:]
  for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(load_params(m / RUN / "model")[0])):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=4e-3)  # as the mesh test


def test_distill_bad_inputs(setup, tmp_path):
  root, model = setup
  bad = tmp_path / "bad.jsonl"
  good = {"prompt": "x", "answer": "3", "step_map": [[1, 2]], "response_ids": [[5, 6]],
          "nfe": [2]}
  for row, msg in [
      (dict(good, response_ids=[[5, 99999]]),
       "bad.jsonl, row 2, sample 0: response id 99999 is outside the tokenizer's vocabulary"),
      (dict(good, step_map=[[1, -7]]), "row 2, sample 0: step_map value -7: expected -1 or a "
       "step 1..2 (its nfe)"),
      (dict(good, step_map=[[0, 2]]), "row 2, sample 0: step_map value 0"),
      (dict(good, step_map=[[1, 10**6]]), "row 2, sample 0: step_map value 1000000"),
      (dict(good, response_ids=[[5]]), "bad.jsonl, row 2, sample 0: response_ids (1) and step_map (2)"),
      (dict(good, step_map=[[1, 2.5]]),
       "bad.jsonl, row 2: 'step_map' must be a list of integer lists"),
      (dict(good, answer=""), "bad.jsonl, row 2: empty or missing 'answer'"),
      ({k: v for k, v in good.items() if k != "response_ids"}, "row 2: no 'response_ids' field")]:
    bad.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    r = distill(tmp_path / "w", model, bad)
    assert r.returncode == 2 and msg in r.stderr, (msg, r.stderr[-2000:])
  r = distill(tmp_path / "w", model, root / "traj.jsonl", "--config.distill.no_such_key=1")
  assert r.returncode != 0 and "no_such_key" in r.stderr
  r = distill(tmp_path / "w", model, root / "traj.jsonl", "--config.distill.global_batch=64")
  assert r.returncode == 2 and "fewer than distill.global_batch=64" in r.stderr
  r = distill(tmp_path / "w", model, root / "traj.jsonl", "--config.distill.max_steps=-5")
  assert r.returncode == 2 and "config distill.max_steps=-5: must be >= 0" in r.stderr
  assert not (tmp_path / "w" / RUN / "model").exists()


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
  m1, m8 = ([json.loads(x) for x in (tmp_path / d / RUN / "metrics.jsonl").read_text().splitlines()]
            for d in ("one", "mesh"))
  for a, b in zip(m1, m8):
    for k in NAMES:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=1e-6, err_msg=k)
  s1, _ = load_params(tmp_path / "one" / RUN / "model")
  s8, _ = load_params(tmp_path / "mesh" / RUN / "model")
  for x, y in zip(jax.tree.leaves(s1), jax.tree.leaves(s8)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=4e-3)  # 2 steps x lr 1e-3


def test_divergence_stops_with_one_line_and_writes_no_student(setup, tmp_path):
  """A learning rate of 1e30 blows the params up in one update: the run stops at the
  first non-finite metric (exit 2, one line naming the update and the metric), keeps the
  checkpoints written before it and writes no student."""
  root, model = setup
  w = tmp_path / "w"
  r = distill(w, model, root / "traj.jsonl", "--config.optim.lr=1e30",
              "--config.distill.checkpoint_every=1", "--config.distill.max_steps=6")
  assert r.returncode == 2, r.stderr[-3000:]
  err = [x for x in r.stderr.splitlines() if x.startswith("error:")]
  assert len(err) == 1 and "distill: non-finite" in err[0], r.stderr[-3000:]
  step = int(err[0].split(" at update ")[1].split(";")[0])
  assert 1 < step <= 6
  assert f"the last good checkpoint is update {step - 1} in" in err[0]
  assert not (w / RUN / "model").exists()
  kept = sorted(int(p.name) for p in (w / RUN / "checkpoints").iterdir() if p.name.isdigit())
  assert kept and max(kept) == step - 1
  rows = [json.loads(x) for x in (w / RUN / "metrics.jsonl").read_text().splitlines()]
  assert [x["step"] for x in rows] == list(range(1, step))  # no non-finite row logged


def test_sigterm_saves_a_checkpoint_and_the_resume_equals_an_uninterrupted_run(setup, tmp_path):
  """SIGTERM mid-run (what a spot VM gets): the update in flight finishes, a checkpoint is
  saved there, the process exits 143 with one line saying where to resume; rerunning the
  command gives the uninterrupted run's student bit for bit."""
  import signal
  import time
  root, model = setup
  args = ("--config.distill.max_steps=40", "--config.distill.checkpoint_every=1000")
  r = distill(tmp_path / "whole", model, root / "traj.jsonl", *args)
  assert r.returncode == 0, r.stderr[-3000:]
  w = tmp_path / "w"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  cmd = distill_cmd(w, model, root / "traj.jsonl", *args)
  p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True)
  deadline = time.time() + 300
  while time.time() < deadline and p.poll() is None:
    m = w / RUN / "metrics.jsonl"
    if m.is_file() and len(m.read_text().splitlines()) >= 3:
      break
    time.sleep(0.05)
  assert p.poll() is None, "the run ended before it could be signalled"
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=60)
  assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
  lines = [x for x in err.splitlines() if x.startswith("stopped:")]
  assert len(lines) == 1 and "stopped by SIGTERM after update" in lines[0], err[-2000:]
  step = int(lines[0].split("after update ")[1].split(" ")[0])
  assert 3 <= step < 40
  assert (w / RUN / "checkpoints" / str(step)).is_dir() and not (w / RUN / "model").exists()
  r = distill(w, model, root / "traj.jsonl", *args)
  assert r.returncode == 0 and f"resuming from step {step}" in r.stderr, r.stderr[-3000:]
  whole, _ = load_params(tmp_path / "whole" / RUN / "model")
  resumed, _ = load_params(w / RUN / "model")
  for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_one_run_per_workdir_and_a_killed_holder_leaves_no_stale_lock(setup, tmp_path):
  """While another process holds the workdir's lock the CLI refuses at once, naming its
  pid; once that process is killed (-9) the lock is gone and the run goes ahead (here
  into a config error, which shows it got past the lock)."""
  import signal
  import time
  root, model = setup
  w = tmp_path / "w"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from t3d_jax.fileio import exclusive_lock\n"
       "with exclusive_lock(sys.argv[1], 'x'):\n  print('held', flush=True); time.sleep(120)",
       str(w / ".t3d_run.lock")], cwd=REPO, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  t0 = time.time()
  r = distill(w, model, root / "traj.jsonl")
  assert r.returncode == 2 and time.time() - t0 < 60, r.stderr[-2000:]
  assert f"error: workdir {w} is in use by another run (pid {holder.pid}, lock" in r.stderr
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  r = distill(w, model, root / "traj.jsonl", "--config.distill.max_steps=-5")
  assert r.returncode == 2 and "max_steps=-5: must be >= 0" in r.stderr, r.stderr[-2000:]


def test_a_failed_checkpoint_write_is_one_line_and_no_student(setup, tmp_path):
  """Writes fail for real (a 100 kB file-size limit: EFBIG, as a full disk gives ENOSPC)
  once checkpoints are written: the background save's failure stops the run at the next
  update with one line naming the checkpoint dir (exit 2), no traceback, no student."""
  root, model = setup
  w = tmp_path / "w"
  limit = ("import os, resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, "
           "100_000)); os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
  cmd = distill_cmd(w, model, root / "traj.jsonl", "--config.distill.async_checkpoint=True",
                    "--config.distill.max_steps=6")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  r = subprocess.run([sys.executable, "-c", limit] + cmd[1:], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=600)
  lines = [x for x in r.stderr.replace("\r", "\n").splitlines()
           if x.strip() and not x.startswith("distill:")]  # the progress bar
  assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
  assert lines[0].startswith(f"error: {w / RUN / 'checkpoints'}: could not be written (")
  assert "File too large" in lines[0] and lines[0].endswith("is the disk full or read-only?")
  assert not (w / RUN / "model").exists()
