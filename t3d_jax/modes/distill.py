"""distill mode: trajectories JSONL -> T3D student (DDO + path loss, self-play rounds).

Reads the converted model dir (student init = reference init), trains with the jitted
update step, logs a tqdm bar, TensorBoard scalars (<workdir>/tb) and metrics JSONL, keeps
orbax checkpoints in <workdir>/checkpoints (state, reference, data position, round), and
writes the final student as a model dir (export mode turns it into an HF dir). Rerunning
the same command resumes from the newest checkpoint.

Sharding: the mesh and logical rules of the config (t3d_jax/parallel.py) place params,
optimiser state, reference and batch; the step is jitted with explicit shardings and a
donated state. Every process builds the same global batch order and feeds only its own
micro-batch rows (``make_array_from_process_local_data``); only process 0 logs and
writes the student.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from t3d_jax import checkpoint, parallel
from t3d_jax.config_base import model_dir
from t3d_jax.convert import load_params
from t3d_jax.data.jsonl import JsonlAppender
from t3d_jax.data.loader import epoch_order
from t3d_jax.data.tokenizer import load_tokenizer, special_ids
from t3d_jax.distill.data import load_trajectory_samples, make_batch
from t3d_jax.distill.examples import ExampleConfig
from t3d_jax.distill.losses import LossConfig
from t3d_jax.distill.step import OptimConfig, copy_tree, make_optimizer, make_train_step
from t3d_jax.errors import InputError


def _fingerprint(config, num_samples: int) -> str:
  """What a resumed run must share with the run that wrote the checkpoints."""
  keys = dict(data=config.distill.data, samples=num_samples,
              batch=config.distill.global_batch, micro=config.distill.micro_batch,
              examples=config.examples.to_dict(), loss=config.loss.to_dict(),
              optim=config.optim.to_dict(), seed=config.seed)
  return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run(config) -> None:
  d = config.distill
  if not d.data:
    raise InputError("distill mode needs --config.distill.data=<trajectories JSONL> "
                     "(run --config.mode=rollout first)")
  if not config.workdir:
    raise InputError("distill mode needs --config.workdir")
  work = Path(config.workdir)
  src = Path(model_dir(config))
  params, mcfg = load_params(src, param_dtype=config.model.param_dtype)
  mcfg = mcfg.replace(dtype=config.model.dtype, remat=config.model.remat)
  tokenizer = load_tokenizer(config.tokenizer_dir or checkpoint.meta_dir_of(src))
  ids = special_ids(tokenizer)
  samples, counts = load_trajectory_samples(
      d.data, tokenizer, original_prompts=d.original_prompts, retokenize=d.retokenize,
      max_prompt_len=d.max_prompt_len, max_gen_length=d.max_gen_length)
  logging.info("trajectories %s: %s", d.data, counts)
  if d.global_batch % d.micro_batch:
    raise InputError(f"distill.global_batch={d.global_batch} is not a multiple of "
                     f"distill.micro_batch={d.micro_batch}")
  per_epoch = len(samples) // d.global_batch
  if per_epoch == 0:
    raise InputError(f"{d.data}: {len(samples)} samples, fewer than distill.global_batch="
                     f"{d.global_batch}")
  total = d.max_steps or per_epoch * d.num_epochs
  ex_cfg = ExampleConfig.from_config(config.examples)
  loss_cfg = LossConfig.from_config(config.loss, block_size=ex_cfg.block_size)
  optim = OptimConfig.from_config(config.optim, total_steps=total)
  tx = make_optimizer(optim)
  mesh = parallel.mesh_from_config(config)
  sh = parallel.train_shardings(mcfg, tx, mesh, config.mesh.rules)
  reference = parallel.shard_tree(params, sh.reference)  # one leaf at a time
  del params
  state = parallel.create_train_state(reference, tx, sh)   # copies: reference stays
  rows = parallel.local_rows(d.micro_batch, sh.batch)      # this process's micro-batch rows
  refresh = jax.jit(copy_tree, out_shardings=sh.reference)  # new buffers, never the donated
  ckpt = checkpoint.TrainCheckpointer(work / "checkpoints", keep=d.keep_checkpoints,
                                      async_save=d.async_checkpoint)
  fp = _fingerprint(config, len(samples))
  restored = ckpt.restore_latest(state, reference)
  if restored is not None:
    state, reference, meta = restored
    if meta.get("fingerprint") != fp and not config.overwrite:
      raise InputError(f"{work / 'checkpoints'}: written by a run with other data or settings "
                       "(fingerprint differs); use another workdir or --config.overwrite=True")
    logging.info("resuming from step %d (epoch %d, round %d)", int(state.step), meta["epoch"],
                 meta["round"])
  step_fn = parallel.jit_train_step(make_train_step(mcfg, loss_cfg, optim, mask_id=ids.mask_id,
                                                   pad_id=ids.pad_id), sh)
  from tensorboardX import SummaryWriter
  main = jax.process_index() == 0  # only process 0 logs and writes the student
  writer = SummaryWriter(str(work / "tb")) if main else None
  rng = jax.random.key(config.seed)
  start = int(state.step)
  t0 = time.time()
  with JsonlAppender(work / "metrics.jsonl") if main else contextlib.nullcontext() as log_rows:
    for step in tqdm(range(start, total), initial=start, total=total, desc="distill",
                     disable=not main):
      epoch, k = divmod(step, per_epoch)
      idx = epoch_order(len(samples), config.seed, epoch)[k * d.global_batch:
                                                          (k + 1) * d.global_batch]
      batch = make_batch(samples, idx, ex_cfg, micro_batch=d.micro_batch,
                         length_bucket=d.length_bucket, pad_id=ids.pad_id,
                         mask_id=ids.mask_id, vocab_size=tokenizer.vocab_size,
                         seed=config.seed, noise_step=0 if d.fixed_noise else step)
      weight = batch["weight"]
      batch = parallel.make_global_batch({name: x[:, rows] for name, x in batch.items()},
                                         sh.batch, global_rows=d.micro_batch)
      state, metrics = step_fn(state, reference, batch, rng)
      done = step + 1
      if d.multi_round and done % d.round_interval == 0:
        reference = refresh(state.params)  # self-play: the next round's reference
      if done % d.log_every == 0 or done == total:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        m.update(step=done, epoch=epoch, round=done // d.round_interval if d.multi_round else 0,
                 dropped=int(np.sum(weight == 0)), elapsed_s=time.time() - t0)
        if writer is not None:
          for key, v in m.items():
            writer.add_scalar(f"distill/{key}", v, done)
          log_rows.write(m)
      if done % d.checkpoint_every == 0 or done == total:
        ckpt.save(done, state, reference, dict(
            step=done, epoch=done // per_epoch, index_in_epoch=(done % per_epoch) * d.global_batch,
            round=done // d.round_interval if d.multi_round else 0, fingerprint=fp))
  ckpt.close()
  if writer is not None:
    writer.close()
  student = Path(d.student_dir or work / "student")
  final = parallel.gather_to_host(state.params)  # collective: every process takes part
  if main:
    checkpoint.save_model_dir(student, final, mcfg.replace(remat=False),
                              meta_dir=checkpoint.meta_dir_of(src), overwrite=True,
                              this_process_only=True)  # the others do not write it
  logging.info("distilled %d updates in %.1fs; student model dir: %s", total - start,
               time.time() - t0, student)
