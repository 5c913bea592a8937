"""The real CLI on two JAX processes (launch/cpu_multiprocess.sh: local coordinator, gloo
CPU collectives, 4 fake devices each) equals one process:

* rollout: the processes split every chunk's batches; process 0's trajectories JSONL is
  byte-identical to a one-process run with other batches and chunks (sampled decoding:
  each sequence's key is fixed by its question and sample index), and a run killed
  mid-chunk resumes to the same file;
* distill: a (data=2, fsdp=2, tensor=2) mesh spanning both processes writes checkpoints
  and the student; a run that lost its newest checkpoint resumes to the same student,
  and the losses and student equal one 8-device process's.

Slow (``pytest -m slow``); the wall times of the 2-process runs are printed (``-s``).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from decode_setup import DECODE_FLAGS, QUESTIONS, cli, tiny_model, write_questions

REPO = Path(__file__).resolve().parents[1]
N_QUESTIONS, SAMPLES = 7, 2
NAMES = ("loss", "loss_real", "loss_fake", "logp_target_real", "logp_ref_real",
         "logp_target_fake", "logp_ref_fake", "loss_path", "grad_norm", "lr")

pytestmark = pytest.mark.slow


def launch(logs: Path, config: str, *flags) -> float:
  """launch/cpu_multiprocess.sh -n 2 -d 4 -- the CLI; returns the wall time (s). INFO
  logs on (--verbosity=0): the test reads every process's log."""
  cache = os.environ.get("T3D_TEST_JAX_CACHE", "/tmp/t3d_jax_test_cache")
  env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(REPO),
             JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  for k in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(k, None)
  cmd = ["bash", str(REPO / "launch" / "cpu_multiprocess.sh"), "-n", "2", "-d", "4",
         "-l", str(logs), "--", "--config", f"configs/{config}.py", "--verbosity=0", *flags]
  t0 = time.time()
  p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, start_new_session=True)
  try:
    out = p.communicate(timeout=600)[0]
  except subprocess.TimeoutExpired:
    os.killpg(p.pid, signal.SIGKILL)  # the script and both workers
    raise
  wall = time.time() - t0
  if p.returncode != 0:
    tails = "\n".join(f"--- {f.name}:\n{f.read_text()[-3000:]}" for f in sorted(logs.glob("*.log")))
    pytest.fail(f"{config}: launcher exit {p.returncode}\n{out}\n{tails}")
  return wall


def log(logs: Path, i: int) -> str:
  return (logs / f"process-{i}.log").read_text()


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
  return tiny_model(tmp_path_factory)


def test_rollout_two_processes_equal_one_and_resume(model_root, tmp_path):
  data = write_questions(tmp_path / "q.jsonl", N_QUESTIONS)

  def flags(work, chunk=3, batch=4):
    return (f"--config.workdir={work}", f"--config.model_dir={model_root / 'model'}",
            f"--config.rollout.data={data}", f"--config.rollout.num_samples={SAMPLES}",
            f"--config.rollout.chunk_prompts={chunk}", f"--config.decode.batch_size={batch}",
            "--config.decode.max_new_tokens=10", *DECODE_FLAGS)

  wall = launch(tmp_path / "logs_mp", "rollout", *flags(tmp_path / "mp"))
  one = cli("rollout", *flags(tmp_path / "one", chunk=N_QUESTIONS, batch=7))
  assert one.returncode == 0, one.stderr[-4000:]
  want = (tmp_path / "one" / "trajectories.jsonl").read_bytes()
  assert len(want.splitlines()) == N_QUESTIONS
  assert (tmp_path / "mp" / "trajectories.jsonl").read_bytes() == want
  # chunks of 3 questions x 2 samples = 6 sequences = batches of 4 + 2: one per process
  for i in range(2):
    assert f"process {i} of 2 decoded {4 if i == 0 else 2} of 6 sequences" in \
        log(tmp_path / "logs_mp", i)
  assert (tmp_path / "mp" / "trajectories.step_maps.png").is_file()

  # killed while writing row 5 (chunk 1 half written): the rerun continues, same file
  b = tmp_path / "resumed"
  b.mkdir()
  shutil.copy(tmp_path / "mp" / "trajectories.meta.json", b)
  lines = want.split(b"\n")
  (b / "trajectories.jsonl").write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4][:50])
  wall_resume = launch(tmp_path / "logs_resume", "rollout", *flags(b))
  assert f"resuming: 4 of {N_QUESTIONS} rows" in log(tmp_path / "logs_resume", 0)
  assert f"resuming: 4 of {N_QUESTIONS} rows" in log(tmp_path / "logs_resume", 1)
  assert (b / "trajectories.jsonl").read_bytes() == want
  print(f"\n2-process rollout: {wall:.1f} s wall; resumed run: {wall_resume:.1f} s")


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_bidirectional_rollout_two_processes_equal_one(tmp_path_factory, tmp_path, family):
  """LLaDA / Dream decoding split over two processes (sampled: each sequence's key is
  its own) writes the same trajectories as one process with other batches."""
  from hf_models import family_model_dir
  model = family_model_dir(tmp_path_factory.getbasetemp() / f"tiny_{family}", family)
  data = write_questions(tmp_path / "q.jsonl", N_QUESTIONS)

  def flags(work, batch):
    return (f"--config.workdir={work}", f"--config.model_dir={model}",
            f"--config.rollout.data={data}", f"--config.rollout.num_samples={SAMPLES}",
            f"--config.decode.batch_size={batch}", "--config.decode.max_new_tokens=12",
            "--config.decode.temperature=1.0", *DECODE_FLAGS)
  launch(tmp_path / "logs_mp", "rollout", *flags(tmp_path / "mp", 4))
  one = cli("rollout", *flags(tmp_path / "one", 7))
  assert one.returncode == 0, one.stderr[-4000:]
  want = (tmp_path / "one" / "trajectories.jsonl").read_bytes()
  assert len(want.splitlines()) == N_QUESTIONS
  assert (tmp_path / "mp" / "trajectories.jsonl").read_bytes() == want


RUN = Path("distill/student")  # the default distill run of a workdir


def _metrics(work: Path) -> list[dict]:
  return [json.loads(x) for x in (work / RUN / "metrics.jsonl").read_text().splitlines()]


def _distill_resumes_and_equals_one(tmp_path: Path, common: tuple) -> tuple[float, float]:
  """Distill with ``common`` flags (4 updates, checkpoints at 2 and 4, a 2x2x2 mesh) on 2
  processes; preempted after step 2 (newest checkpoint and student lost) the rerun equals
  it bit for bit; one process with the same 8-device mesh equals it. Returns the walls."""
  from t3d_jax.convert import load_params
  a = tmp_path / "mp"
  wall = launch(tmp_path / "logs_mp", "distill", f"--config.workdir={a}", *common)
  rows = _metrics(a)
  assert [x["step"] for x in rows] == [1, 2, 3, 4]
  assert sorted(p.name for p in (a / RUN / "checkpoints").iterdir()
                if p.name.isdigit()) == ["2", "4"]
  student, _ = load_params(a / RUN / "model")

  # preempted after step 2: the newest checkpoint and the student are lost; rerun
  b = tmp_path / "resumed"
  shutil.copytree(a, b)
  shutil.rmtree(b / RUN / "checkpoints" / "4")
  shutil.rmtree(b / RUN / "model")
  (b / RUN / "metrics.jsonl").write_text("".join(
      x + "\n" for x in (a / RUN / "metrics.jsonl").read_text().splitlines()[:2]))
  wall_resume = launch(tmp_path / "logs_resume", "distill", f"--config.workdir={b}", *common)
  for i in range(2):
    assert "resuming from step 2" in log(tmp_path / "logs_resume", i)
  np.testing.assert_array_equal([x["loss"] for x in _metrics(b)], [x["loss"] for x in rows])
  resumed, _ = load_params(b / RUN / "model")
  for x, y in zip(jax.tree.leaves(student), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  # one process with the same 8-device mesh
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  r = subprocess.run([sys.executable, "-m", "t3d_jax.main", "--config", "configs/distill.py",
                      f"--config.workdir={tmp_path / 'one'}", *common], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-4000:]
  for x, y in zip(rows, _metrics(tmp_path / "one"), strict=True):
    for k in NAMES:
      np.testing.assert_allclose(x[k], y[k], rtol=2e-5, atol=1e-7, err_msg=k)
  single, _ = load_params(tmp_path / "one" / RUN / "model")
  for x, y in zip(jax.tree.leaves(student), jax.tree.leaves(single)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-5)
  return wall, wall_resume


def test_distill_two_processes_checkpoint_resume_equal_one(model_root, tmp_path):
  from tiny_setup import write_trajectories
  data = tmp_path / "traj.jsonl"
  write_trajectories(data, model_root / "tokenizer", questions=QUESTIONS)  # short prompts
  common = (f"--config.model_dir={model_root / 'model'}", f"--config.distill.data={data}",
            "--config.distill.global_batch=4", "--config.distill.micro_batch=4",
            "--config.distill.max_steps=4", "--config.distill.checkpoint_every=2",
            "--config.distill.round_interval=2", "--config.distill.length_bucket=160",
            "--config.examples.block_size=4", "--config.optim.lr=1e-3",
            "--config.optim.warmup_steps=1", "--config.distill.async_checkpoint=False",
            "--config.mesh.shape.data=2", "--config.mesh.shape.fsdp=2",
            "--config.mesh.shape.tensor=2")
  wall, wall_resume = _distill_resumes_and_equals_one(tmp_path, common)
  print(f"\n2-process distill: {wall:.1f} s wall; resumed run: {wall_resume:.1f} s")


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_bidirectional_distill_two_processes_resume_equal_one(tmp_path_factory, tmp_path,
                                                              family):
  """T3D on a LLaDA / Dream model (its own rollout's trajectories, one row per example
  and block) on 2 processes x a 2x2x2 mesh: a run resumed from its step-2 checkpoint
  equals the uninterrupted one bit for bit, and one process with the same mesh equals
  both."""
  from hf_models import family_model_dir
  model = family_model_dir(tmp_path_factory.getbasetemp() / f"tiny_{family}", family)
  data = write_questions(tmp_path / "q.jsonl", N_QUESTIONS)
  canvas = ("--config.decode.max_new_tokens=12", *DECODE_FLAGS)
  r = cli("rollout", f"--config.workdir={tmp_path / 'roll'}", f"--config.model_dir={model}",
          f"--config.rollout.data={data}", *canvas)
  assert r.returncode == 0, r.stderr[-4000:]
  common = (f"--config.model_dir={model}",
            f"--config.distill.data={tmp_path / 'roll' / 'trajectories.jsonl'}",
            "--config.distill.global_batch=4", "--config.distill.micro_batch=4",
            "--config.distill.max_steps=4", "--config.distill.checkpoint_every=2",
            "--config.distill.round_interval=2", "--config.optim.lr=1e-3",
            "--config.optim.warmup_steps=1", "--config.distill.async_checkpoint=False",
            "--config.mesh.shape.data=2", "--config.mesh.shape.fsdp=2",
            "--config.mesh.shape.tensor=2", *canvas)
  _distill_resumes_and_equals_one(tmp_path, common)


def test_demo_pipeline_on_two_processes(tmp_path):
  """The shortened demo pipeline (every stage) on 2 processes x 4 devices: process 0
  writes each stage's files, the others wait at a barrier and read them next."""
  from test_pipeline import SHORT
  work = tmp_path / "w"
  wall = launch(tmp_path / "logs", "demo", f"--config.workdir={work}", *SHORT)
  print(f"\n2-process demo pipeline (shortened): {wall:.1f}s")
  s = json.loads((work / "eval/summary.json").read_text())
  students = [f"t3d_s{k}" for k in range(5)]  # the demo distils five seeds
  assert {(r["model"], r["tokens_per_forward"]) for r in s["results"]} == {
      (m, t) for m in ("base", *students) for t in (1, 2, 4)}
  assert len((work / "trajectories.jsonl").read_text().splitlines()) == 32
  assert "[pipeline] stage times" in log(tmp_path / "logs", 0)
  assert "[pipeline] stage times" not in log(tmp_path / "logs", 1)  # process 0 reports


def test_convert_and_export_on_two_processes(model_root, tmp_path):
  """Process 0 writes the model dir / HF dir, the others wait (export: every process
  restores the params, an orbax collective); the round trip stays byte-identical."""
  from t3d_jax.convert.hf import TensorSource
  work = tmp_path / "w"
  launch(tmp_path / "logs_c", "convert", f"--config.hf_dir={model_root / 'hf'}",
         f"--config.workdir={work}")
  launch(tmp_path / "logs_e", "export", f"--config.workdir={work}")
  a, b = TensorSource(model_root / "hf"), TensorSource(work / "hf_export")
  assert sorted(a.weight_map) == sorted(b.weight_map)
  assert all(a.get(n).tobytes() == b.get(n).tobytes() for n in a.weight_map)


def test_sigterm_on_one_process_stops_both_at_the_same_update(model_root, tmp_path):
  """A preemption notice (SIGTERM) reaching only process 1: JAX's preemption sync point
  stops both processes after the same update; each saves that checkpoint and exits 143
  with one line; the relaunch resumes there to the uninterrupted run's student."""
  from t3d_jax.convert import load_params
  from tiny_setup import write_trajectories
  data = tmp_path / "traj.jsonl"
  write_trajectories(data, model_root / "tokenizer", questions=QUESTIONS)
  common = (f"--config.model_dir={model_root / 'model'}", f"--config.distill.data={data}",
            "--config.distill.global_batch=4", "--config.distill.micro_batch=4",
            "--config.distill.max_steps=40", "--config.distill.checkpoint_every=1000",
            "--config.distill.length_bucket=160", "--config.examples.block_size=4",
            "--config.optim.lr=1e-3", "--config.distill.async_checkpoint=False",
            "--config.mesh.shape.data=2", "--config.mesh.shape.fsdp=2",
            "--config.mesh.shape.tensor=2")
  launch(tmp_path / "logs_whole", "distill", f"--config.workdir={tmp_path / 'whole'}", *common)

  w = tmp_path / "w"
  port = subprocess.run([sys.executable, "-c", "import socket; s=socket.socket(); "
                         "s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"],
                        capture_output=True, text=True).stdout.strip()
  procs = []
  for i in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
               XLA_FLAGS="--xla_force_host_platform_device_count=4",  # as launch()
               JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(i))
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "t3d_jax.main", "--config", "configs/distill.py",
         f"--config.workdir={w}", *common, "--config.jax_distributed=true"], cwd=REPO,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  try:
    deadline = time.time() + 300
    while time.time() < deadline and all(p.poll() is None for p in procs):
      m = w / RUN / "metrics.jsonl"
      if m.is_file() and len(m.read_text().splitlines()) >= 3:
        break
      time.sleep(0.05)
    assert all(p.poll() is None for p in procs), "the run ended before it could be signalled"
    procs[1].send_signal(signal.SIGTERM)
    errs = [p.communicate(timeout=120)[1] for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  steps = []
  for p, err in zip(procs, errs):
    assert p.returncode == 128 + signal.SIGTERM, err[-3000:]
    lines = [x for x in err.splitlines() if x.startswith("stopped:")]
    assert len(lines) == 1 and "stopped by SIGTERM after update" in lines[0], err[-3000:]
    steps.append(int(lines[0].split("after update ")[1].split(" ")[0]))
  assert steps[0] == steps[1] and 3 <= steps[0] < 40, steps
  assert (w / RUN / "checkpoints" / str(steps[0])).is_dir() and not (w / RUN / "model").exists()
  launch(tmp_path / "logs_resume", "distill", f"--config.workdir={w}", *common)
  assert f"resuming from step {steps[0]}" in log(tmp_path / "logs_resume", 0)
  whole, _ = load_params(tmp_path / "whole" / RUN / "model")
  resumed, _ = load_params(w / RUN / "model")
  for x, y in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
