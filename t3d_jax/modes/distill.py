"""distill mode: trajectories JSONL -> T3D student (DDO + path loss, self-play rounds).

Reads the converted model dir (student init = reference init), trains with the jitted
update step, and keeps everything of the run ``distill.name`` (default ``student``) in
<workdir>/distill/<name>/: TensorBoard scalars (tb/), metrics.jsonl, orbax checkpoints
(checkpoints/: state, reference, data position, round) and the final student as a model
dir (model/, or ``distill.student_dir``; export mode turns it into an HF dir). Several
runs share a workdir (and its trajectories) under different names. Rerunning the same
command resumes from the newest checkpoint.

Sharding: the mesh and logical rules of the config (t3d_jax/sharding.py) place params,
optimiser state, reference and batch; the step is jitted with explicit shardings and a
donated state. Every process builds the same global batch order and feeds only its own
micro-batch rows (``make_array_from_process_local_data``); only process 0 logs and
writes the student.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging

from t3d_jax import checkpoint, distributed
from t3d_jax.config_base import library_defaults
from t3d_jax.convert import model_config
from t3d_jax.data.tokenizer import load_tokenizer, special_ids
from t3d_jax.distill import methods, refresh
from t3d_jax.distill.data import (load_trajectory_samples, make_batch, recorded_block_size,
                                  training_block_size)
from t3d_jax.distill.examples import ExampleConfig
from t3d_jax.distill.losses import LossConfig
from t3d_jax.errors import InputError
from t3d_jax.sampling import DecodeConfig
from t3d_jax.settings import (content_digest, distill_dir, model_dir, old_distill_layout,
                              stage_seed, student_dir)
from t3d_jax.tasks import load_grader
from t3d_jax.train import loop, recipe
from t3d_jax.train import pretrain as pt


def run(config) -> None:
  d = config.distill
  if not d.data:
    raise InputError("distill mode needs --config.distill.data=<trajectories JSONL> "
                     "(run --config.mode=rollout first)")
  if not config.workdir:
    raise InputError("distill mode needs --config.workdir")
  old = old_distill_layout(config.workdir)
  if old:
    raise InputError(old)
  work = distill_dir(config)
  data = d.data
  seed = stage_seed(config, "distill")
  src = Path(model_dir(config))
  mcfg = model_config(src, param_dtype=config.model.param_dtype).replace(
      dtype=config.model.dtype, remat=config.model.remat, attention=config.model.attention)
  tokenizer = load_tokenizer(config.tokenizer_dir or checkpoint.meta_dir_of(src))
  ids = special_ids(tokenizer)
  samples, counts = load_trajectory_samples(
      data, tokenizer, original_prompts=d.original_prompts, retokenize=d.retokenize,
      max_prompt_len=d.max_prompt_len, max_gen_length=d.max_gen_length)
  logging.info("trajectories %s: %s", data, counts)
  block = training_block_size(config.examples.block_size, recorded_block_size(data),
                              d.allow_other_block, data)
  ex_cfg = ExampleConfig.from_config(config.examples, block_size=block)
  loss_cfg = LossConfig.from_config(config.loss, block_size=ex_cfg.block_size)

  if d.method not in methods.METHODS:
    raise InputError(f"config distill.method={d.method!r} is not one of "
                     f"{', '.join(methods.METHODS)}")
  pt_cfg = pt.PretrainExamples(block_size=block, post_num=config.examples.post_num,
                               mask_eps=config.pretrain.mask_eps)  # sft: random masks
  every = refresh.period(d.refresh_every, d.round_interval)
  refresher = (refresh.Refresher(
      out=work / "refresh", every=every, samples=samples, model=mcfg.replace(remat="none"),
      dcfg=DecodeConfig.from_config(config.decode, ids), decode_section=config.decode,
      tokenizer=tokenizer, seed=seed, max_gen_length=d.max_gen_length,
      **_filter_args(config, data)) if every else None)

  def batch(idx, step):
    noise_step = 0 if d.fixed_noise else step
    samples_now = refresher.samples_for(step) if refresher else samples
    info = dict(refresher.last) if refresher else {}
    if d.method == "sft":  # the teacher's final outputs (a Sample is a pt.Pair)
      b = pt.make_batch(samples_now, idx, pt_cfg, micro_batch=d.micro_batch,
                        length_bucket=d.length_bucket, pad_id=ids.pad_id,
                        mask_id=ids.mask_id, seed=seed, step=noise_step)
    elif d.method == "dparallel":
      b = methods.certainty_make_batch(
          samples_now, idx, block_size=block, ratio=loss_cfg.certainty_mask_ratio,
          post_num=config.examples.post_num, micro_batch=d.micro_batch,
          length_bucket=d.length_bucket, pad_id=ids.pad_id, mask_id=ids.mask_id,
          seed=seed, step=noise_step)
    else:
      b = make_batch(samples_now, idx, ex_cfg, micro_batch=d.micro_batch,
                     length_bucket=d.length_bucket, pad_id=ids.pad_id, mask_id=ids.mask_id,
                     vocab_size=tokenizer.vocab_size, seed=seed, noise_step=noise_step)
    return b, dict(info, dropped=int(np.sum(b["weight"] == 0)))

  # what a resumed run must share with the run that wrote the checkpoints
  settings = dict(model=checkpoint.model_digest(src),
                  data=content_digest((s.prompt_ids, s.response_ids, s.step_map)
                                      for s in samples),
                  distill=recipe.result_keys(d, skip=("data", "name", "student_dir")),
                  examples=dataclasses.asdict(ex_cfg), loss=config.loss.to_dict(),
                  optim=config.optim.to_dict(), seed=seed,
                  numerics=dict(dtype=mcfg.dtype, param_dtype=mcfg.param_dtype),
                  special_ids=dict(mask=ids.mask_id, pad=ids.pad_id))
  if refresher:  # what the student re-decodes with
    settings.update(refresh=dict(decode=dataclasses.asdict(refresher.dcfg),
                                 batch_size=config.decode.batch_size,
                                 task=config.task.name if d.refresh_filter else ""))
  with_reference = d.method in methods.WITH_REFERENCE
  t0 = time.time()
  res = recipe.run(
      config, name="distill", section=d, optim_section=config.optim, out=work,
      n=len(samples), data=data, start=recipe.Start(mcfg, str(src)),
      loss_fn=lambda m: methods.loss_fn(d.method, m, loss_cfg, mask_id=ids.mask_id,
                                        pad_id=ids.pad_id),
      make_batch=batch, settings=settings, reference=with_reference,
      round_interval=d.round_interval if d.multi_round and with_reference else 0,
      on_data=refresher, data_every=every, defaults=library_defaults())
  student = student_dir(config)
  if distributed.is_main_process():  # only process 0 writes the student
    checkpoint.save_model_dir(student, res.params, mcfg.replace(remat="none"),
                              meta_dir=checkpoint.meta_dir_of(src), overwrite=True,
                              this_process_only=True)  # the others do not write it
  distributed.barrier("distill: student written")
  last = loop.last_metrics(work)
  versus = (f" vs logp_ref_real {last['logp_ref_real']:.3f}" if "logp_ref_real" in last
            else "")
  fit = (f"last logp_target_real {last['logp_target_real']:.3f}{versus}"
         if "logp_target_real" in last else f"last loss {last.get('loss', float('nan')):.4f}")
  msg = (f"[distill] {d.name} ({d.method}): {res.total} updates on {len(samples)} "
         f"trajectories; {fit}; student {student} ({time.time() - t0:.0f}s this run)")
  if jax.process_index() == 0:
    print(msg, flush=True)
  logging.info(msg)


def _filter_args(config, data: str) -> dict:
  """Refresher's grader and questions with ``distill.refresh_filter`` (else none): the
  task's grader, checked on every row before anything trains."""
  if not config.distill.refresh_filter:
    return {}
  grader = load_grader(config.task.name)
  questions = refresh.row_questions(data)
  grader.check([dict(question=q, answer=a) for q, a in questions.values()], data)
  return dict(grader=grader, questions=questions)
