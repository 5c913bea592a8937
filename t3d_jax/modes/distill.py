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

import numpy as np
from absl import logging

from t3d_jax import checkpoint, distributed
from t3d_jax.config_base import library_defaults
from t3d_jax.convert import model_config
from t3d_jax.data.tokenizer import load_tokenizer, special_ids
from t3d_jax.distill import methods, refresh
from t3d_jax.distill.data import (check_family, load_trajectory_samples, rollout_record,
                                  training_block_size)
from t3d_jax.distill.examples import ExampleConfig
from t3d_jax.distill.losses import LossConfig
from t3d_jax.errors import InputError
from t3d_jax.models import family as families
from t3d_jax.models.numerics import Numerics
from t3d_jax.sampling import Decoder
from t3d_jax.config_keys import stage_seed
from t3d_jax.digests import content_digest
from t3d_jax.modes.stage import Result, Stage
from t3d_jax.tasks import grader_for
from t3d_jax.train import loop, recipe, views
from t3d_jax.workdir import Workdir


def run(config) -> Result:
  d = config.distill
  if not d.data:
    raise InputError("distill mode needs --config.distill.data=<trajectories JSONL> "
                     "(run --config.mode=rollout first)")
  layout = Workdir(config)
  layout.root("distill mode")
  work = layout.distill()
  data = d.data
  seed = stage_seed(config, "distill")
  src = layout.model
  numerics = Numerics.of(config.model)
  mcfg = numerics.apply(model_config(src, param_dtype=numerics.param_dtype), train=True)
  tokenizer = load_tokenizer(config.tokenizer_dir or checkpoint.meta_dir_of(src))
  ids = special_ids(tokenizer, model_mask_id=mcfg.mask_token_id)
  record = rollout_record(data)
  block = training_block_size(config.examples.block_size, record["block_size"],
                              d.allow_other_block, data)
  # bidirectional families: every batch padded to the decoder's canvas (train/views.py)
  width = views.response_width(mcfg, block, config.decode.max_new_tokens,
                               "config decode.max_new_tokens")
  check_family(record, families.of_config(mcfg), width, data, str(src))
  samples, counts = load_trajectory_samples(
      data, tokenizer, original_prompts=d.original_prompts, retokenize=d.retokenize,
      max_prompt_len=d.max_prompt_len,
      max_gen_length=min(d.max_gen_length, width) if width else d.max_gen_length)
  logging.info("trajectories %s: %s", data, counts)
  if d.filter_correct:
    samples = _verified(config, data, samples, tokenizer)
  ex_cfg = ExampleConfig.from_config(config.examples, block_size=block)
  loss_cfg = LossConfig.from_config(config.loss, block_size=ex_cfg.block_size)

  method = methods.get(d.method)
  spec = methods.BatchSpec(examples=ex_cfg, loss=loss_cfg, mask_eps=config.pretrain.mask_eps,
                           micro_batch=d.micro_batch, length_bucket=d.length_bucket,
                           response_width=width,
                           pad_id=ids.pad_id, mask_id=ids.mask_id,
                           vocab_size=tokenizer.vocab_size, seed=seed)
  every = refresh.period(d.refresh_every, d.round_interval)
  refresher = (refresh.Refresher(
      out=work / "refresh", every=every, samples=samples,
      decoder=Decoder.from_config(config.decode, ids, mcfg.replace(remat="none")),
      tokenizer=tokenizer, seed=seed, max_gen_length=d.max_gen_length,
      **_filter_args(config, data)) if every else None)

  def batch(idx, step):
    samples_now = refresher.samples_for(step) if refresher else samples
    info = dict(refresher.last) if refresher else {}
    b = method.make_batch(spec, samples_now, idx, 0 if d.fixed_noise else step)
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
  if d.filter_correct:  # which grader chose the samples
    settings.update(filter_task=config.task.name)
  if refresher:  # what the student re-decodes with
    settings.update(refresh=dict(decode=dataclasses.asdict(refresher.decoder.dcfg),
                                 batch_size=config.decode.batch_size,
                                 task=config.task.name if d.refresh_filter else ""))
  with_reference = method.needs_reference
  t0 = time.time()
  res = recipe.run(
      config, name="distill", section=d, optim_section=config.optim, out=work,
      n=len(samples), data=data, start=recipe.Start(mcfg, str(src)),
      loss_fn=lambda m: method.loss(m, loss_cfg, ids.mask_id, ids.pad_id),
      make_batch=batch, settings=settings, reference=with_reference,
      round_interval=d.round_interval if d.multi_round and with_reference else 0,
      on_data=refresher, data_every=every, defaults=library_defaults())
  student = layout.student()
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
  msg = (f"[distill] {layout.run} ({d.method}): {res.total} updates on {len(samples)} "
         f"trajectories; {fit}; student {student} ({time.time() - t0:.0f}s this run)")
  if distributed.is_main_process():
    print(msg, flush=True)
  logging.info(msg)
  return Result("distill", (student,), dict(last, updates=res.total), value=res.params)


def _grader(config, data: str) -> dict:
  """The task's grader and the trajectories' questions (row -> (question, answer)), the
  grader checked on every row before anything trains."""
  grader = grader_for(config)
  questions = refresh.row_questions(data)
  grader.check([dict(question=q, answer=a) for q, a in questions.values()], data)
  return dict(grader=grader, questions=questions)


def _filter_args(config, data: str) -> dict:
  """Refresher's grader and questions with ``distill.refresh_filter`` (else none)."""
  return _grader(config, data) if config.distill.refresh_filter else {}


def _verified(config, data: str, samples: list, tokenizer) -> list:
  """``distill.filter_correct``: the samples whose response the task grades correct."""
  g = _grader(config, data)
  grader, questions = g["grader"], g["questions"]
  kept = [s for s in samples if grader(*questions[s.row], tokenizer.decode(
      s.response_ids, skip_special_tokens=True)).correct]
  msg = (f"[distill] verified trajectories: {len(kept)} of {len(samples)} graded correct "
         f"by task {grader.name} (distill.filter_correct); training on those")
  if distributed.is_main_process():
    print(msg, flush=True)
  logging.info(msg)
  if not kept:
    raise InputError(f"{data}: none of its {len(samples)} trajectories is graded correct by "
                     f"task {grader.name}: nothing to train on with distill.filter_correct "
                     "(is the teacher able to do the task? see rollout's teacher accuracy)")
  return kept


def _refresh_keys(config) -> tuple[str, ...]:
  """What a distill run that re-decodes its questions (distill.refresh_every) or grades
  its trajectories (distill.filter_correct) also reads."""
  d = config.distill
  return (("decode",) if d.refresh_every else ()) + (
      ("task.name",) if d.refresh_every or d.filter_correct else ())


STAGE = Stage("distill", run, "trajectories JSONL -> few-step student (distill.method)",
              keys=("distill", "examples", "loss", "optim", "model", "model_dir",
                    "tokenizer_dir", "seed"),
              more_keys=_refresh_keys, per_run=True,
              inputs=lambda config, layout: [layout.model,
                                             Path(layout.expand(config.distill.data))],
              outputs=lambda config, layout: [layout.student(n) for n in layout.runs])
