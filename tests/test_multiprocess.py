"""Two real JAX processes on localhost (local coordinator, gloo CPU collectives, 4 fake
devices each) run sharded update steps on a (data=2, fsdp=2, tensor=2) mesh spanning both,
each feeding only its own rows of the batch; an orbax checkpoint written by both is
restored into the shardings and training resumes from it. The params equal those of one
process with 8 devices.

This file is also the worker: ``python tests/test_multiprocess.py --worker ID ...``.
"""
import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
STEPS, SAVE_AT = 3, 2
SHAPE = dict(data=2, fsdp=2, tensor=2)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def write_batches(path: Path) -> None:
  """Global batches, built once by the test (the workers only read their rows)."""
  from test_distill_step import make_batch
  np.savez(path, **{f"{k}/{n}": np.asarray(x)[None]  # [A=1, M=8, ...]
                    for k in range(STEPS) for n, x in make_batch(8, seed=k).items()})


def train(workdir: Path, batches: Path):
  """STEPS sharded steps (save after SAVE_AT, then restore and resume); returns host
  params (every process gets the full values)."""
  import jax
  import optax
  from jax.experimental import multihost_utils

  import flax.linen as nn

  from t3d_jax import sharding
  from t3d_jax.checkpoint import restore_params, save_params
  from t3d_jax.models.sdar import abstract_params
  from t3d_jax.train import sharded
  from t3d_jax.distill.step import make_train_step
  from t3d_jax.train.trainer import copy_tree
  from test_distill_step import MASK, MODEL, PAD
  from test_parallel import LOSS, OPTIM

  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(SHAPE)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.5))
  sh = sharded.train_shardings(MODEL, tx, mesh, sharding.DEFAULT_RULES)
  run = sharded.jit_train_step(make_train_step(MODEL, LOSS, OPTIM, mask_id=MASK, pad_id=PAD), sh)
  state = sharded.init_train_state(MODEL, tx, sh, jax.random.key(0))
  ref = copy_tree(state.params)
  data = np.load(batches)
  rows = sharding.local_rows(8, sh.batch)  # this process reads only its rows
  n = jax.process_count()
  assert rows == slice(8 // n * jax.process_index(), 8 // n * (jax.process_index() + 1))
  for k in range(STEPS):
    local = {f.split("/")[1]: data[f][:, rows] for f in data.files if f.startswith(f"{k}/")}
    batch = sharding.make_global_batch(local, sh.batch, global_rows=8)
    state, metrics = run(state, ref, batch, jax.random.key(7))
    if k + 1 == SAVE_AT:
      save_params(workdir / "ckpt", state.params)       # every process writes its shards
      target = sharding.abstract_sharded(nn.unbox(abstract_params(MODEL)), sh.params)
      params = restore_params(workdir / "ckpt", target)  # each process reads its slices
      state = sharded.create_train_state(params, tx, sh).replace(step=state.step)
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(state.params, tiled=True)), \
      float(metrics["loss"])


def worker(args):
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, str(HERE))
  from t3d_jax import distributed
  assert distributed.initialize_distributed(True, coordinator_address=args.coordinator,
                                            num_processes=args.num, process_id=args.worker)
  import jax
  assert jax.process_count() == args.num and jax.device_count() == args.num * args.devices
  assert jax.local_device_count() == args.devices
  t0 = time.time()
  params, loss = train(Path(args.workdir), Path(args.workdir) / "batches.npz")
  if distributed.is_main_process():
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(Path(args.workdir) / "result.npz", loss=loss, seconds=time.time() - t0, **flat)
  jax.distributed.shutdown()


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
  port = _free_port()
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
  for k in ("XLA_FLAGS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(k, None)
  write_batches(tmp_path / "batches.npz")
  t0 = time.time()
  procs = [subprocess.Popen(
      [sys.executable, __file__, "--worker", str(i), "--num", "2", "--devices", "4",
       "--coordinator", f"127.0.0.1:{port}", "--workdir", str(tmp_path)],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=600)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  wall = time.time() - t0
  for i, (p, out) in enumerate(zip(procs, outs)):
    assert p.returncode == 0, f"process {i}:\n{out[-4000:]}"
  got = np.load(tmp_path / "result.npz")
  print(f"2-process run: {wall:.1f} s wall, {float(got['seconds']):.1f} s of training")

  import jax
  assert jax.device_count() == 8  # conftest: one process, 8 fake devices
  want, loss = train(tmp_path / "single", tmp_path / "batches.npz")
  np.testing.assert_allclose(float(got["loss"]), loss, rtol=1e-6)
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(want)}
  assert set(flat) == set(got.files) - {"loss", "seconds"}
  for k, v in flat.items():
    np.testing.assert_allclose(got[k], v, atol=1e-6, rtol=0, err_msg=k)


if __name__ == "__main__":
  ap = argparse.ArgumentParser()
  ap.add_argument("--worker", type=int, required=True)
  ap.add_argument("--num", type=int, required=True)
  ap.add_argument("--devices", type=int, required=True)
  ap.add_argument("--coordinator", required=True)
  ap.add_argument("--workdir", required=True)
  worker(ap.parse_args())
