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

import time
from pathlib import Path

import jax
import numpy as np
from absl import logging

from t3d_jax import checkpoint, parallel
from t3d_jax.config_base import expand, model_dir
from t3d_jax.convert import load_params
from t3d_jax.data.loader import epoch_order
from t3d_jax.data.tokenizer import load_tokenizer, special_ids
from t3d_jax.distill.data import load_trajectory_samples, make_batch
from t3d_jax.distill.examples import ExampleConfig
from t3d_jax.distill.losses import LossConfig
from t3d_jax.distill.step import OptimConfig, copy_tree, make_optimizer, make_train_step
from t3d_jax.errors import InputError
from t3d_jax.train import loop


def run(config) -> None:
  d = config.distill
  if not d.data:
    raise InputError("distill mode needs --config.distill.data=<trajectories JSONL> "
                     "(run --config.mode=rollout first)")
  if not config.workdir:
    raise InputError("distill mode needs --config.workdir")
  work = Path(config.workdir)
  data = expand(d.data, config)
  src = Path(model_dir(config))
  params, mcfg = load_params(src, param_dtype=config.model.param_dtype)
  mcfg = mcfg.replace(dtype=config.model.dtype, remat=config.model.remat)
  tokenizer = load_tokenizer(config.tokenizer_dir or checkpoint.meta_dir_of(src))
  ids = special_ids(tokenizer)
  samples, counts = load_trajectory_samples(
      data, tokenizer, original_prompts=d.original_prompts, retokenize=d.retokenize,
      max_prompt_len=d.max_prompt_len, max_gen_length=d.max_gen_length)
  logging.info("trajectories %s: %s", data, counts)
  per_epoch, total = loop.schedule(len(samples), d, "distill", data)
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
  step_fn = parallel.jit_train_step(make_train_step(mcfg, loss_cfg, optim, mask_id=ids.mask_id,
                                                   pad_id=ids.pad_id), sh)

  def batch_fn(step):
    epoch, k = divmod(step, per_epoch)
    idx = epoch_order(len(samples), config.seed, epoch)[k * d.global_batch:
                                                        (k + 1) * d.global_batch]
    batch = make_batch(samples, idx, ex_cfg, micro_batch=d.micro_batch,
                       length_bucket=d.length_bucket, pad_id=ids.pad_id,
                       mask_id=ids.mask_id, vocab_size=tokenizer.vocab_size,
                       seed=config.seed, noise_step=0 if d.fixed_noise else step)
    dropped = int(np.sum(batch["weight"] == 0))
    batch = parallel.make_global_batch({name: x[:, rows] for name, x in batch.items()},
                                       sh.batch, global_rows=d.micro_batch)
    return batch, dict(epoch=epoch, dropped=dropped)

  # what a resumed run must share with the run that wrote the checkpoints
  settings = dict(data=d.data, samples=len(samples), batch=d.global_batch, micro=d.micro_batch,
                  examples=config.examples.to_dict(), loss=config.loss.to_dict(),
                  optim=config.optim.to_dict(), seed=config.seed)
  lc = loop.LoopConfig(name="distill", out=work, total=total, log_every=d.log_every,
                       checkpoint_every=d.checkpoint_every, keep_checkpoints=d.keep_checkpoints,
                       async_checkpoint=d.async_checkpoint,
                       round_interval=d.round_interval if d.multi_round else 0,
                       overwrite=config.overwrite)
  t0 = time.time()
  state = loop.run(
      lc, state=state, reference=reference, step_fn=step_fn, batch_fn=batch_fn,
      settings=settings, rng=jax.random.key(config.seed),
      refresh=jax.jit(copy_tree, out_shardings=sh.reference),  # new buffers, never donated
      extra=lambda done: dict(epoch=done // per_epoch,
                              index_in_epoch=(done % per_epoch) * d.global_batch))
  student = Path(expand(d.student_dir, config) if d.student_dir else work / "student")
  final = parallel.gather_to_host(state.params)  # collective: every process takes part
  if jax.process_index() == 0:  # only process 0 writes the student
    checkpoint.save_model_dir(student, final, mcfg.replace(remat="none"),
                              meta_dir=checkpoint.meta_dir_of(src), overwrite=True,
                              this_process_only=True)  # the others do not write it
  parallel.barrier("distill: student written")
  last = loop.last_metrics(work)
  msg = (f"[distill] {total} updates on {len(samples)} trajectories; last logp_target_real "
         f"{last.get('logp_target_real', float('nan')):.3f} vs logp_ref_real "
         f"{last.get('logp_ref_real', float('nan')):.3f}; student {student} "
         f"({time.time() - t0:.0f}s this run)")
  if jax.process_index() == 0:
    print(msg, flush=True)
  logging.info(msg)
