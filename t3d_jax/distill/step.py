"""The T3D update step: the T3D micro-batch loss on the generic trainer.

* one target forward (+ backward) and one reference forward per micro-batch — the
  released trainer runs each twice for the same values (docs/method.md §5);
* examples are weighted equally across the whole global batch (the released trainer's
  micro batches of one; :func:`t3d_jax.train.trainer.make_train_step` accumulates);
* the reference is a separate argument: refreshing it (self-play rounds) swaps arrays
  of the same shapes, so nothing recompiles.

Batch layout (leading axes: accumulation steps A, micro-batch M):
  ids [A, M, L0+2*L1] int32, positions [A, M, L0+2*L1], labels [A, M, L0+L1],
  p_mask [A, M, L0+L1] bool, step_map [A, M, L1] int32, weight [A, M] float32.
p_mask must be False on the prompt rows (build_examples never sets them): the step
computes logits for the noisy rows only.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax

from t3d_jax import masks
from t3d_jax.distill.losses import LossConfig, t3d_loss
from t3d_jax.models.sdar import SDARConfig
from t3d_jax.train import trainer
from t3d_jax.train.views import response_logits
from t3d_jax.train.trainer import OptimConfig

Array = jax.Array


def micro_loss(params, ref_params, mb: dict, rng: Array, *, model: SDARConfig,
               loss_cfg: LossConfig, mask_id: int, pad_id: int):
  """T3D loss of one micro-batch (weighted mean over its examples) and its metrics.

  Only the response's logits enter the loss (p_mask is False on the prompt rows, and
  the path loss reads the response rows): both forwards are the family's training view
  (:func:`t3d_jax.train.views.response_logits`; SDAR: the head on the last L1 rows only,
  attention skipping the score blocks the layout hides)."""
  layout = masks.TrainingLayout.of_batch(mb["ids"].shape[-1], mb["labels"].shape[-1],
                                         loss_cfg.block_size)
  logits = functools.partial(response_logits, model=model, mb=mb,
                             block_size=loss_cfg.block_size, pad_id=pad_id, mask_id=mask_id)
  tgt, ref = logits(params), logits(ref_params)
  return t3d_loss(tgt, jax.lax.stop_gradient(ref), mb["labels"], mb["p_mask"], mb["step_map"],
                  loss_cfg, prompt_len=layout.prompt_len, mask_id=mask_id, pad_id=pad_id,
                  rng=rng, weight=mb["weight"], logits_start=layout.prompt_len)


def make_train_step(model: SDARConfig, loss_cfg: LossConfig, optim: OptimConfig, *,
                    mask_id: int, pad_id: int) -> Callable:
  """The T3D update ``(state, ref_params, batch, rng) -> (state, metrics)`` (pure; jit it,
  donating the state)."""
  return trainer.make_train_step(functools.partial(
      micro_loss, model=model, loss_cfg=loss_cfg, mask_id=mask_id, pad_id=pad_id), optim)
