"""The distillation objectives ``distill.method`` selects, on the same trajectories and
optimiser (README, "Baselines"): :data:`METHODS`, one :class:`Method` entry each (its
batches, its loss, whether it trains against a reference model); the distill mode, the
compare config and the docs read this table, and adding a method is one entry. x0 = the
teacher's response, xt = a masked copy, M the trained positions of an example (p_mask), b
examples of a batch averaged with equal weight:

* ``t3d`` (default): DDO + lambda_path * path loss on trajectory-masked states
  (:func:`t3d_jax.distill.losses.t3d_loss`, docs/method.md §3); a reference model;
* ``ddo``: DDO alone (lambda_path = 0): the paper's ablation;
* ``naive_td``: forward-KL trajectory distillation, no reference: the teacher's tokens
  at the trajectory's masked states (the same examples as T3D),
  L = mean_b [ -1/|M_b| sum_{i in M_b} log p(x0_i | xt_b) ];
* ``sft``: the masked-diffusion objective on the teacher's final outputs with random
  masks (t_b ~ U(eps, 1], each of the N_b eligible positions masked with probability
  t_b; t3d_jax.train.pretrain), L = mean_b [ 1/(t_b N_b) sum_{i in M_b} -log p(x0_i | xt_b) ];
* ``dparallel``: certainty-forcing distillation (dParallel, Chen et al. 2025, as its
  release computes it) on the teacher's final outputs: each eligible position masked
  with probability ``loss.certainty_mask_ratio`` (0.5) in one copy M and the complement
  in a second copy M' (every token trained once), and per copy the mean cross-entropy
  plus ``loss.entropy_weight`` (2) times the mean entropy of softmax(logits /
  ``loss.entropy_temperature`` (0.5)) over the masked positions the model already
  predicts right (argmax = x0; that selection carries no gradient):
  L = mean_b [ sum_{c in (M, M')} CE_c + lambda H_c ]. The release trains LLaDA on a
  semi-autoregressive block schedule (one block masked, earlier ones clean); the
  block-diffusion layout trains every block against its clean prefix at once.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from t3d_jax.distill import step as t3d_step
from t3d_jax.distill.data import make_batch as trajectory_make_batch
from t3d_jax.distill.examples import ExampleConfig
from t3d_jax.errors import InputError
from t3d_jax.distill.losses import argmax_last
from t3d_jax.models.sdar import SDARConfig
from t3d_jax.train import pretrain as pt
from t3d_jax.train.examples import (as_seeds, assemble, check_batching, check_inputs,
                                    example_seeds, pad_batch, pad_positions,
                                    response_lengths, split_micro_batches, uniform)
from t3d_jax.train.logprobs import batch_mean, masked_mean, token_logprobs
from t3d_jax.train.views import prompt_len, response_logits

Array = jax.Array
_STREAM_CERTAINTY = 7                 # the example's random stream (T3D 1-4, pretrain 5-6)


def trajectory_ce_loss(logits: Array, labels: Array, p_mask: Array,
                       weight: Optional[Array] = None) -> tuple[Array, dict]:
  """naive_td: per example the mean negative log-likelihood of the teacher's tokens over
  p_mask, then the (weighted) batch mean. logits [B, T, V], labels / p_mask [B, T]."""
  logp = masked_mean(token_logprobs(logits, labels), p_mask)
  loss = batch_mean(-logp, weight)
  return loss, dict(loss=loss, logp_target_real=batch_mean(logp, weight))


def naive_td_micro_loss(params, ref_params, mb: dict, rng, *, model: SDARConfig,
                        block_size: int, pad_id: int, mask_id: int):
  """``loss_fn`` of the trainer for naive_td (reference and rng unused): the response's
  logits in the family's training view."""
  del ref_params, rng
  l0 = prompt_len(mb)
  logits = response_logits(params, model, mb, block_size=block_size, pad_id=pad_id,
                           mask_id=mask_id)
  return trajectory_ce_loss(logits, mb["labels"][:, l0:], mb["p_mask"][:, l0:], mb["weight"])


def certainty_examples(prompt_ids, response_ids, seeds, *, ratio: float, post_num,
                       pad_id: int, mask_id: int, response_len=None) -> dict:
  """dparallel's examples: [2B] rows, example b's random mask M (each eligible position
  with probability ``ratio``) in row b and its complement M' in row B + b (the layout
  of :func:`t3d_jax.train.pretrain.build_pretrain_examples`; eligible: the response and
  the first ``post_num`` pads; later positions masked, never trained)."""
  prompt_ids, response_ids, _ = check_inputs(prompt_ids, response_ids)
  b, n = response_ids.shape
  seeds = as_seeds(seeds, b)
  rlen = response_lengths(response_len, response_ids, pad_id)
  inside, past, trained_pads = pad_positions(rlen, n, post_num)
  eligible = inside | trained_pads
  first = eligible & (uniform(seeds, _STREAM_CERTAINTY, n) < ratio)
  both = np.concatenate([first, eligible & ~first])
  resp2 = np.concatenate([response_ids, response_ids])
  hidden = np.concatenate([past & ~eligible] * 2)
  xt = np.where(both | hidden, mask_id, resp2).astype(response_ids.dtype)
  return assemble(np.concatenate([prompt_ids, prompt_ids]), resp2, xt, both, pad_id)


def certainty_make_batch(samples, indices, *, block_size: int, ratio: float, post_num,
                         micro_batch: int, length_bucket: int, pad_id: int, mask_id: int,
                         seed: int, step: int, response_width: int = 0) -> dict:
  """The dparallel global batch [A, 2M, ...]: each micro-batch of M examples holds both
  copies of each (rows of one example stay in one micro-batch)."""
  check_batching(len(indices), micro_batch, length_bucket, block_size,
                 "distill.length_bucket")
  sel = [samples[i] for i in indices]
  padded = pad_batch([s.prompt_ids for s in sel], [s.response_ids for s in sel], None,
                     pad_id=pad_id, multiple_of=length_bucket, response_width=response_width)
  parts = []
  for k in range(0, len(indices), micro_batch):  # copies of a micro-batch side by side
    sl = slice(k, k + micro_batch)
    ex = certainty_examples(padded["prompt_ids"][sl], padded["response_ids"][sl],
                            example_seeds(seed, step, indices[sl]), ratio=ratio,
                            post_num=post_num, pad_id=pad_id, mask_id=mask_id,
                            response_len=padded["response_len"][sl])
    parts.append({k2: ex[k2] for k2 in ("ids", "positions", "labels", "p_mask")})
  batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  batch["weight"] = np.ones(len(batch["ids"]), np.float32)
  return split_micro_batches(batch, 2 * micro_batch)


def certainty_loss(logits: Array, labels: Array, p_mask: Array, entropy_weight: float,
                   temperature: float, weight: Optional[Array] = None) -> tuple[Array, dict]:
  """dparallel on rows that are copies (a mask and its complement: twice as many rows as
  examples): per row CE = mean over p_mask of -log p(x0) and H = mean over the masked
  positions predicted right of the entropy of softmax(logits / temperature); the loss
  is the sum over an example's two rows of CE + entropy_weight * H, averaged over
  examples (= 2 x the mean over rows)."""
  lp = token_logprobs(logits, labels)
  ce = -masked_mean(lp, p_mask)
  scaled = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
  entropy = -(jnp.exp(scaled) * scaled).sum(-1)
  right = jax.lax.stop_gradient((argmax_last(logits) == labels) & p_mask)
  h = masked_mean(entropy, right)
  per = ce + entropy_weight * h
  loss = 2.0 * batch_mean(per, weight)
  return loss, dict(loss=loss, loss_ce=2.0 * batch_mean(ce, weight),
                    entropy=batch_mean(h, weight), logp_target_real=batch_mean(-ce, weight))


def dparallel_micro_loss(params, ref_params, mb: dict, rng, *, model: SDARConfig, loss_cfg,
                         pad_id: int, mask_id: int):
  del ref_params, rng
  l0 = prompt_len(mb)
  logits = response_logits(params, model, mb, block_size=loss_cfg.block_size, pad_id=pad_id,
                           mask_id=mask_id)
  return certainty_loss(logits, mb["labels"][:, l0:], mb["p_mask"][:, l0:],
                        loss_cfg.entropy_weight, loss_cfg.entropy_temperature, mb["weight"])


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """What every method's batches are built from (the distill mode fills it once)."""
  examples: ExampleConfig             # trajectory examples (block size, mask strategy, ...)
  loss: object                        # LossConfig (dparallel's certainty_mask_ratio)
  mask_eps: float                     # sft: t ~ U(mask_eps, 1] per example
  micro_batch: int
  length_bucket: int
  pad_id: int
  mask_id: int
  vocab_size: int
  seed: int
  response_width: int = 0             # > 0: every response padded to it (bidirectional canvas)


def _trajectory_batch(spec: BatchSpec, samples, idx, noise_step: int) -> dict:
  """Examples at the trajectory's states (t3d, ddo, naive_td)."""
  return trajectory_make_batch(samples, idx, spec.examples, micro_batch=spec.micro_batch,
                               length_bucket=spec.length_bucket, pad_id=spec.pad_id,
                               mask_id=spec.mask_id, vocab_size=spec.vocab_size,
                               seed=spec.seed, noise_step=noise_step,
                               response_width=spec.response_width)


def _sft_batch(spec: BatchSpec, samples, idx, noise_step: int) -> dict:
  """The teacher's final outputs with random masks (a Sample is a pt.Pair)."""
  ex = spec.examples
  cfg = pt.PretrainExamples(block_size=ex.block_size, post_num=ex.post_num,
                            mask_eps=spec.mask_eps)
  return pt.make_batch(samples, idx, cfg, micro_batch=spec.micro_batch,
                       length_bucket=spec.length_bucket, pad_id=spec.pad_id,
                       mask_id=spec.mask_id, seed=spec.seed, step=noise_step,
                       response_width=spec.response_width)


def _certainty_batch(spec: BatchSpec, samples, idx, noise_step: int) -> dict:
  return certainty_make_batch(
      samples, idx, block_size=spec.examples.block_size,
      ratio=spec.loss.certainty_mask_ratio, post_num=spec.examples.post_num,
      micro_batch=spec.micro_batch, length_bucket=spec.length_bucket, pad_id=spec.pad_id,
      mask_id=spec.mask_id, seed=spec.seed, step=noise_step,
      response_width=spec.response_width)


def _t3d_loss(model, loss_cfg, mask_id, pad_id):
  return functools.partial(t3d_step.micro_loss, model=model, loss_cfg=loss_cfg,
                           mask_id=mask_id, pad_id=pad_id)


def _ddo_loss(model, loss_cfg, mask_id, pad_id):
  return _t3d_loss(model, dataclasses.replace(loss_cfg, lambda_path=0.0), mask_id, pad_id)


def _naive_td_loss(model, loss_cfg, mask_id, pad_id):
  return functools.partial(naive_td_micro_loss, model=model, block_size=loss_cfg.block_size,
                           pad_id=pad_id, mask_id=mask_id)


def _sft_loss(model, loss_cfg, mask_id, pad_id):
  return functools.partial(pt.micro_loss, model=model, block_size=loss_cfg.block_size,
                           pad_id=pad_id, mask_id=mask_id)


def _dparallel_loss(model, loss_cfg, mask_id, pad_id):
  return functools.partial(dparallel_micro_loss, model=model, loss_cfg=loss_cfg, pad_id=pad_id,
                           mask_id=mask_id)


@dataclasses.dataclass(frozen=True)
class Method:
  """One ``distill.method``: ``make_batch(spec, samples, indices, noise_step)`` builds a
  global batch ([A, M, ...] numpy arrays), ``loss(model, loss_cfg, mask_id, pad_id)`` the
  trainer's ``loss_fn(params, ref_params, micro_batch, rng)``; ``needs_reference``: it
  trains against a reference model (and self-play rounds replace it)."""
  name: str
  needs_reference: bool
  make_batch: Callable[..., dict]
  loss: Callable[..., Callable]
  summary: str = ""


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("t3d", True, _trajectory_batch, _t3d_loss, "DDO + path loss (the default)"),
    Method("ddo", True, _trajectory_batch, _ddo_loss, "DDO alone (lambda_path = 0)"),
    Method("naive_td", False, _trajectory_batch, _naive_td_loss,
           "forward KL at the trajectory's states"),
    Method("sft", False, _sft_batch, _sft_loss,
           "masked diffusion on the teacher's outputs, random masks"),
    Method("dparallel", False, _certainty_batch, _dparallel_loss,
           "certainty-forcing distillation (dParallel)"),
)}


def get(name: str) -> Method:
  """The method ``config.distill.method`` names (an InputError naming the choices)."""
  if name not in METHODS:
    raise InputError(f"config distill.method={name!r} is not one of {', '.join(METHODS)}")
  return METHODS[name]


def loss_fn(method: str, model: SDARConfig, loss_cfg, *, mask_id: int, pad_id: int):
  """The trainer's ``loss_fn(params, ref_params, micro_batch, rng)`` of ``method``."""
  return get(method).loss(model, loss_cfg, mask_id, pad_id)
