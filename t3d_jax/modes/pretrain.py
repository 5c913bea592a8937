"""pretrain mode: masked-diffusion training on question/answer pairs -> a model dir.

    python -m t3d_jax.main --config configs/demo.py --config.mode=pretrain
    python -m t3d_jax.main --config configs/X.py --config.mode=pretrain \\
        --config.pretrain.init=/path/model_dir --config.pretrain.data=sft.jsonl   # SFT

Starts from random weights of the ``pretrain.arch`` shape (vocabulary = the tokenizer's)
or from ``pretrain.init`` (a model dir or HF dir: supervised fine-tuning), trains with the
block-diffusion objective of t3d_jax/train/pretrain.py on the mesh of ``config.mesh``
(optimiser ``pretrain.optim``), and writes the result as a model dir at ``model_dir``
(default <workdir>/model; HF config.json + tokenizer in its hf_meta/, so export and the
other modes take it as is). Logs, TensorBoard and checkpoints go to <workdir>/pretrain/;
rerunning the same command resumes from the newest checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np
from absl import logging

from t3d_jax import checkpoint, parallel
from t3d_jax.config_base import expand, model_dir
from t3d_jax.data import tokenizer as tok_lib
from t3d_jax.data.loader import epoch_order
from t3d_jax.distill.examples import ExampleConfig
from t3d_jax.distill.step import OptimConfig, make_optimizer, make_train_step
from t3d_jax.errors import InputError
from t3d_jax.train import loop
from t3d_jax.train import pretrain as pt


def _tokenizer_dir(config) -> Path:
  p = config.pretrain
  if config.tokenizer_dir:
    return Path(expand(config.tokenizer_dir, config))
  if p.init:
    return checkpoint.meta_dir_of(expand(p.init, config))
  return Path(config.workdir) / "tokenizer"


def _model(config, vocab_size: int):
  """(params or None, SDARConfig, meta dir or None) of the starting point."""
  p = config.pretrain
  if p.init:
    from t3d_jax.convert import load_params
    src = Path(expand(p.init, config))
    if not src.exists():
      raise InputError(f"config pretrain.init: {src} does not exist")
    params, cfg = load_params(src, param_dtype=config.model.param_dtype)
    return params, cfg, checkpoint.meta_dir_of(src)
  a = p.arch
  try:
    from t3d_jax.models.sdar import SDARConfig
    cfg = SDARConfig(vocab_size=a.vocab_size or vocab_size, hidden_size=a.hidden_size,
                     intermediate_size=a.intermediate_size, num_layers=a.num_layers,
                     num_heads=a.num_heads, num_kv_heads=a.num_kv_heads, head_dim=a.head_dim,
                     rope_theta=a.rope_theta, tie_word_embeddings=a.tie_word_embeddings,
                     param_dtype=config.model.param_dtype)
  except ValueError as e:
    raise InputError(f"config pretrain.arch: {e}") from None
  return None, cfg, None


def _write_meta(tmp: Path, tok_dir: Path, cfg) -> Path:
  """hf_meta for a model trained from scratch: HF config.json + the tokenizer files."""
  from t3d_jax.convert.hf import hf_config_from
  meta = tmp / "meta"
  shutil.copytree(tok_dir, meta)
  (meta / "config.json").write_text(json.dumps(hf_config_from(cfg), indent=2) + "\n")
  return meta


def run(config) -> None:
  p = config.pretrain
  if not config.workdir:
    raise InputError("pretrain mode needs --config.workdir")
  if not p.data:
    raise InputError("pretrain mode needs --config.pretrain.data (a question/answer JSONL "
                     "or a shipped set name)")
  tok_dir = _tokenizer_dir(config)
  if not (tok_dir / "tokenizer_config.json").is_file():
    raise InputError(f"{tok_dir}: no tokenizer (run --config.mode=task first, or set "
                     "--config.tokenizer_dir)")
  tokenizer = tok_lib.load_tokenizer(tok_dir)
  ids = tok_lib.special_ids(tokenizer)
  from t3d_jax.evaluation.decode import load_rows
  rows = load_rows(p, config.workdir)
  prompts = tok_lib.encode(tokenizer, [tok_lib.math_prompt(tokenizer, r["question"],
                                                           config.prompt_template or None)
                                       for r in rows])
  answers = tok_lib.encode(tokenizer, [str(r["answer"]) for r in rows])
  pairs = pt.make_pairs(prompts, answers, ids.eos_id, p.max_gen_length)
  per_epoch, total = loop.schedule(len(pairs), p, "pretrain", p.data)
  params, mcfg, meta_src = _model(config, ids.vocab_size)
  if ids.vocab_size > mcfg.vocab_size:
    raise InputError(f"{tok_dir}: tokenizer has {ids.vocab_size} tokens but the model's "
                     f"vocabulary is {mcfg.vocab_size}")
  mcfg = mcfg.replace(dtype=config.model.dtype, remat=config.model.remat)
  ex_cfg = ExampleConfig.from_config(config.examples)
  optim = OptimConfig.from_config(p.optim, total_steps=total)
  tx = make_optimizer(optim)
  mesh = parallel.mesh_from_config(config)
  sh = parallel.train_shardings(mcfg, tx, mesh, config.mesh.rules)
  if params is None:
    state = parallel.init_train_state(mcfg, tx, sh, jax.random.key(config.seed))
  else:
    state = parallel.create_train_state(parallel.shard_tree(params, sh.params), tx, sh)
    del params
  sh = dataclasses.replace(sh, reference=None)  # no reference model here
  step_fn = parallel.jit_train_step(make_train_step(
      mcfg, None, optim, mask_id=ids.mask_id, pad_id=ids.pad_id,
      loss_fn=lambda prm, ref, mb, rng: pt.micro_loss(prm, ref, mb, rng, model=mcfg,
                                                      block_size=ex_cfg.block_size,
                                                      pad_id=ids.pad_id)), sh)
  rows_here = parallel.local_rows(p.micro_batch, sh.batch)

  def batch_fn(step):
    epoch, k = divmod(step, per_epoch)
    idx = epoch_order(len(pairs), config.seed, epoch)[k * p.global_batch:
                                                      (k + 1) * p.global_batch]
    b = pt.make_batch(pairs, idx, ex_cfg, micro_batch=p.micro_batch,
                      length_bucket=p.length_bucket, pad_id=ids.pad_id, mask_id=ids.mask_id,
                      seed=config.seed, step=step)
    b = parallel.make_global_batch({n: x[:, rows_here] for n, x in b.items()}, sh.batch,
                                   global_rows=p.micro_batch)
    return b, dict(epoch=epoch)

  work = Path(config.workdir)
  settings = dict(data=p.data, rows=len(pairs), init=p.init, arch=p.arch.to_dict(),
                  batch=p.global_batch, micro=p.micro_batch, total=total,
                  examples=config.examples.to_dict(), optim=p.optim.to_dict(),
                  template=config.prompt_template, seed=config.seed)
  lc = loop.LoopConfig(name="pretrain", out=work / "pretrain", total=total,
                       log_every=p.log_every, checkpoint_every=p.checkpoint_every,
                       keep_checkpoints=p.keep_checkpoints, async_checkpoint=p.async_checkpoint,
                       overwrite=config.overwrite)
  state = loop.run(lc, state=state, reference=None, step_fn=step_fn, batch_fn=batch_fn,
                   settings=settings, rng=jax.random.key(config.seed))
  out = Path(model_dir(config))
  final = parallel.gather_to_host(state.params)  # collective: every process takes part
  if jax.process_index() == 0:
    with tempfile.TemporaryDirectory(dir=work) as tmp:
      meta = meta_src or _write_meta(Path(tmp), tok_dir, mcfg)
      checkpoint.save_model_dir(out, final, mcfg.replace(remat="none", dtype="float32"),
                                meta_dir=meta, overwrite=True, this_process_only=True)
  parallel.barrier("pretrain: model dir written")
  if jax.process_index() != 0:
    return
  last = loop.last_metrics(work / "pretrain")
  print(f"[pretrain] {total} updates, {len(pairs)} pairs, {_count(final)/1e6:.2f}M params; "
        f"final loss {last.get('loss', float('nan')):.4f}; model dir {out}", flush=True)
  logging.info("pretrain done: %s", out)


def _count(tree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(tree)))
