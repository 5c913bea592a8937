"""The distillation objectives ``distill.method`` selects, on the same trajectories and
optimiser (README, "Baselines"). x0 = the teacher's response, xt = a masked copy, M the
trained positions of an example (p_mask), b examples of a batch averaged with equal
weight:

* ``t3d`` (default): DDO + lambda_path * path loss on trajectory-masked states
  (:func:`t3d_jax.distill.losses.t3d_loss`, docs/method.md §3); a reference model;
* ``ddo``: DDO alone (lambda_path = 0): the paper's ablation;
* ``naive_td``: forward-KL trajectory distillation, no reference: the teacher's tokens
  at the trajectory's masked states (the same examples as T3D),
  L = mean_b [ -1/|M_b| sum_{i in M_b} log p(x0_i | xt_b) ];
* ``sft``: the masked-diffusion objective on the teacher's final outputs with random
  masks (t_b ~ U(eps, 1], each of the N_b eligible positions masked with probability
  t_b; t3d_jax.train.pretrain), L = mean_b [ 1/(t_b N_b) sum_{i in M_b} -log p(x0_i | xt_b) ].
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax

from t3d_jax import masks
from t3d_jax.distill import step as t3d_step
from t3d_jax.models.sdar import SDARConfig, forward
from t3d_jax.train import pretrain as pt
from t3d_jax.train.logprobs import batch_mean, masked_mean, token_logprobs

Array = jax.Array
METHODS = ("t3d", "ddo", "naive_td", "sft")
WITH_REFERENCE = ("t3d", "ddo")       # the others train without a reference model
RANDOM_MASKS = ("sft",)               # the others train on trajectory-masked examples


def trajectory_ce_loss(logits: Array, labels: Array, p_mask: Array,
                       weight: Optional[Array] = None) -> tuple[Array, dict]:
  """naive_td: per example the mean negative log-likelihood of the teacher's tokens over
  p_mask, then the (weighted) batch mean. logits [B, T, V], labels / p_mask [B, T]."""
  logp = masked_mean(token_logprobs(logits, labels), p_mask)
  loss = batch_mean(-logp, weight)
  return loss, dict(loss=loss, logp_target_real=batch_mean(logp, weight))


def naive_td_micro_loss(params, ref_params, mb: dict, rng, *, model: SDARConfig,
                        block_size: int, pad_id: int):
  """``loss_fn`` of the trainer for naive_td (reference and rng unused): one forward,
  the noisy rows through the head."""
  del ref_params, rng
  layout = masks.TrainingLayout.of_batch(mb["ids"].shape[-1], mb["labels"].shape[-1],
                                         block_size)
  l0 = layout.prompt_len
  logits = forward(params, model, mb["ids"], layout.attention(mb["ids"], pad_id),
                   mb["positions"], logits_start=layout.noisy_start)
  return trajectory_ce_loss(logits, mb["labels"][:, l0:], mb["p_mask"][:, l0:], mb["weight"])


def loss_fn(method: str, model: SDARConfig, loss_cfg, *, mask_id: int, pad_id: int):
  """The trainer's ``loss_fn(params, ref_params, micro_batch, rng)`` of ``method``."""
  if method == "t3d":
    return functools.partial(t3d_step.micro_loss, model=model, loss_cfg=loss_cfg,
                             mask_id=mask_id, pad_id=pad_id)
  if method == "ddo":
    return functools.partial(t3d_step.micro_loss, model=model,
                             loss_cfg=dataclasses.replace(loss_cfg, lambda_path=0.0),
                             mask_id=mask_id, pad_id=pad_id)
  if method == "naive_td":
    return functools.partial(naive_td_micro_loss, model=model,
                             block_size=loss_cfg.block_size, pad_id=pad_id)
  if method == "sft":
    return functools.partial(pt.micro_loss, model=model, block_size=loss_cfg.block_size,
                             pad_id=pad_id)
  raise ValueError(f"unknown method {method!r}")
