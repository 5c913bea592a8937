"""pretrain mode: masked-diffusion training on question/answer pairs -> a model dir.

    python -m t3d_jax.main --config configs/demo.py --config.mode=pretrain
    python -m t3d_jax.main --config configs/X.py --config.mode=pretrain \\
        --config.pretrain.init=/path/model_dir --config.pretrain.data=sft.jsonl   # SFT

Starts from random weights of the ``arch`` shape (vocabulary = the tokenizer's)
or from ``pretrain.init`` (a model dir or HF dir: supervised fine-tuning), trains with the
block-diffusion objective of t3d_jax/train/pretrain.py on the mesh of ``config.mesh``
(optimiser ``pretrain.optim``), and writes the result as a model dir at ``model_dir``
(default <workdir>/model; HF config.json + tokenizer in its hf_meta/, so export and the
other modes take it as is). Logs, TensorBoard and checkpoints go to <workdir>/pretrain/;
rerunning the same command resumes from the newest checkpoint.

``pretrain.eval_every`` / ``target_accuracy``: the model decodes held-out training
questions at full step while it trains and stops once it can do the task
(:mod:`t3d_jax.evaluation.heldout`); the summary line says what it reached.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import tempfile
from pathlib import Path

from absl import logging

from t3d_jax import checkpoint, distributed
from t3d_jax.config_base import library_defaults
from t3d_jax.convert import count_params, hf_config_from, model_config
from t3d_jax.data import tokenizer as tok_lib
from t3d_jax.data.datasets import load_rows
from t3d_jax.errors import InputError
from t3d_jax.evaluation import heldout
from t3d_jax.models.numerics import Numerics
from t3d_jax.models import family as families
from t3d_jax.models.family import arch_config
from t3d_jax.config_keys import stage_seed
from t3d_jax.digests import content_digest
from t3d_jax.modes.stage import Result, Stage, workdir_data
from t3d_jax.sampling import Decoder
from t3d_jax.tasks import grader_for
from t3d_jax.train import loop, recipe, views
from t3d_jax.train import pretrain as pt
from t3d_jax.workdir import Workdir


# where the rows come from: their content digest stands for them in the resume check
DATA_KEYS = ("data", "question_field", "answer_field", "limit", "use_tfds", "tfds_dir", "init")


def _tokenizer_dir(config) -> Path:
  p = config.pretrain
  if config.tokenizer_dir:
    return Path(config.tokenizer_dir)
  if p.init:
    return checkpoint.meta_dir_of(p.init)
  return Workdir(config).tokenizer


def _start(config, vocab_size: int) -> tuple[recipe.Start, Path | None]:
  """The starting point (a model dir / HF dir, or random weights of ``config.arch``)
  and the meta dir to copy into the output (None: write one)."""
  p = config.pretrain
  param_dtype = Numerics.of(config.model).param_dtype
  if p.init:
    src = Path(p.init)
    if not src.exists():
      raise InputError(f"config pretrain.init: {src} does not exist")
    cfg = model_config(src, param_dtype=param_dtype)
    return recipe.Start(cfg, str(src)), checkpoint.meta_dir_of(src)
  return recipe.Start(arch_config(config.arch, vocab_size, param_dtype)), None


def _write_meta(tmp: Path, tok_dir: Path, cfg) -> Path:
  """hf_meta for a model trained from scratch: HF config.json + the tokenizer files."""
  meta = tmp / "meta"
  shutil.copytree(tok_dir, meta)
  (meta / "config.json").write_text(json.dumps(hf_config_from(cfg), indent=2) + "\n")
  return meta


def run(config) -> Result:
  p = config.pretrain
  layout = Workdir(config)
  work = layout.pretrain  # needs the workdir
  if not p.data:
    raise InputError("pretrain mode needs --config.pretrain.data (a question/answer JSONL "
                     "or a shipped set name)")
  tok_dir = _tokenizer_dir(config)
  if not (tok_dir / "tokenizer_config.json").is_file():
    raise InputError(f"{tok_dir}: no tokenizer (run --config.mode=tokenizer for your own "
                     "data, --config.mode=task for the demo task, or set "
                     "--config.tokenizer_dir to a Hugging Face tokenizer dir)")
  tokenizer = tok_lib.load_tokenizer(tok_dir)
  ids = tok_lib.special_ids(tokenizer)
  rows = load_rows(p, config.workdir)
  heldout.check_settings(p.eval_every, p.target_accuracy)
  held = []
  if p.eval_every:
    grader = grader_for(config)
    rows, held = heldout.split(rows, p.eval_questions, p.data)
    grader.check(held, p.data)
  texts = [tok_lib.math_prompt(tokenizer, r["question"], config.prompt_template or None)
           for r in rows]
  prompts = tok_lib.encode(tokenizer, texts)
  answers = tok_lib.encode(tokenizer, [str(r["answer"]) for r in rows])
  where = [f"{p.data}, row {r['index'] + 1}" for r in rows]
  tok_lib.check_encodable(tokenizer, texts, prompts, where)
  tok_lib.check_encodable(tokenizer, [str(r["answer"]) for r in rows], answers, where)
  start, meta_src = _start(config, ids.vocab_size)
  block = config.examples.block_size or config.decode.block_size
  # bidirectional families: every response padded to the decoder's canvas (train/views.py)
  width = views.response_width(start.model, block, config.decode.max_new_tokens,
                               "config decode.max_new_tokens")
  pairs = pt.make_pairs(prompts, answers, ids.eos_id,
                        min(p.max_gen_length, width) if width else p.max_gen_length)
  if ids.vocab_size > start.model.vocab_size:
    raise InputError(f"{tok_dir}: tokenizer has {ids.vocab_size} tokens but the model's "
                     f"vocabulary is {start.model.vocab_size}")
  mcfg = Numerics.of(config.model).apply(start.model, train=True)
  seed = stage_seed(config, "pretrain")
  ex_cfg = pt.PretrainExamples.from_config(  # 0: the block the model will decode with
      config.examples, mask_eps=p.mask_eps, block_size=block)

  probe, settings = None, {}
  if held:  # the same prompts and sampler as the rollout's
    decoder = Decoder.from_config(config.decode, ids, mcfg.replace(remat="none"))
    _, held_ids = tok_lib.build_prompts(tokenizer, held, config.prompt_template, p.data,
                                        decoder.dcfg, grader.user_message)
    probe = heldout.HeldOut(decoder, tokenizer, grader, held, held_ids, seed,
                            work / "heldout", p.target_accuracy)
    settings = dict(heldout=dict(decode=dataclasses.asdict(decoder.dcfg),
                                 task=config.task.name,
                                 questions=content_digest(
                                     (str(r["question"]), str(r["answer"])) for r in held)))

  def batch(idx, step):
    return pt.make_batch(pairs, idx, ex_cfg, micro_batch=p.micro_batch,
                         length_bucket=p.length_bucket, response_width=width, pad_id=ids.pad_id,
                         mask_id=ids.mask_id, seed=seed, step=step), {}

  res = recipe.run(
      config, name="pretrain", section=p, optim_section=p.optim, out=work,
      n=len(pairs), data=p.data, start=recipe.Start(mcfg, start.path),
      loss_fn=lambda m: functools.partial(pt.micro_loss, model=m, block_size=ex_cfg.block_size,
                                          pad_id=ids.pad_id, mask_id=ids.mask_id),
      make_batch=batch, reference=False, defaults=library_defaults(),
      evaluate=probe, eval_every=p.eval_every if probe else 0,
      stop_when=probe.reached if probe else None,
      settings=dict(**settings,
                    model=checkpoint.model_digest(start.path) if start.path else "random",
                    arch=None if start.path else config.arch.to_dict(),
                    data=content_digest((x.prompt_ids, x.response_ids) for x in pairs),
                    pretrain=recipe.result_keys(p, skip=DATA_KEYS),
                    examples=dataclasses.asdict(ex_cfg), seed=seed,
                    numerics=dict(dtype=mcfg.dtype, param_dtype=mcfg.param_dtype),
                    special_ids=dict(mask=ids.mask_id, pad=ids.pad_id)))
  out = layout.model
  if distributed.is_main_process():
    with tempfile.TemporaryDirectory(dir=work.parent) as tmp:
      meta = meta_src or _write_meta(Path(tmp), tok_dir, mcfg)
      checkpoint.save_model_dir(out, res.params, mcfg.replace(remat="none", dtype="float32"),
                                meta_dir=meta, overwrite=True, this_process_only=True)
  distributed.barrier("pretrain: model dir written")
  result = Result("pretrain", (out,), value=res.params)
  if not distributed.is_main_process():
    return result
  last = loop.last_metrics(work)
  summary = dict(updates=res.updates, final_loss=last.get("loss"))
  reached = ""
  if probe:
    acc = last.get(heldout.FIGURE)
    summary[heldout.FIGURE] = acc
    reached = f"; base full-step accuracy {100 * acc:.1f} % on {len(held)} held-out questions"
    if p.target_accuracy:
      reached += (f" (target {100 * p.target_accuracy:.0f} %: reached, stopped early)"
                  if res.updates < res.total else
                  f" (target {100 * p.target_accuracy:.0f} %: "
                  + ("reached at the cap)" if probe.reached(last) else
                     "NOT reached by the cap pretrain.max_steps: raise it or use a larger "
                     "arch; rollout's teacher check will say so too)"))
  print(f"[pretrain] {res.updates} updates, {len(pairs)} pairs, "
        f"{count_params(res.params)/1e6:.2f}M params; final loss "
        f"{last.get('loss', float('nan')):.4f}{reached}; model dir {out}", flush=True)
  logging.info("pretrain done: %s", out)
  return dataclasses.replace(result, summary=summary)


def _more_keys(config) -> tuple[str, ...]:
  """What a pretraining that measures held-out accuracy (pretrain.eval_every) also reads,
  and a bidirectional one (or one from pretrain.init, whose family the config does not
  say) the decoder's canvas."""
  p = config.pretrain
  on_canvas = p.init or families.get(config.arch.family).attention == "bidirectional"
  canvas = ("decode.max_new_tokens",) if on_canvas else ()
  return ("decode", "task.name", "prompt_template") if p.eval_every else canvas


STAGE = Stage("pretrain", run, "question/answer pairs -> model dir (masked diffusion; SFT "
              "with pretrain.init)",
              keys=("pretrain", "arch", "model", "model_dir", "tokenizer_dir",
                    "decode.block_size", "seed"),
              more_keys=_more_keys,
              inputs=lambda config, layout: workdir_data(layout, config.pretrain.data) + (
                  [Path(layout.expand(config.pretrain.init))] if config.pretrain.init else []),
              outputs=lambda config, layout: [layout.model])
