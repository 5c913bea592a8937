"""Masked-diffusion pretraining / SFT on question-answer pairs (the pretrain mode's math).

Each pair becomes one example in the T3D layout [prompt | x0 | xt]: the prompt (chat
template or ``prompt_template`` on the question), the clean response x0 (answer tokens +
EOS) and its noisy copy xt, in which every response token (plus ``post_num`` pads past
the end) is masked with probability t ~ U(eps, 1] drawn per example
(:func:`t3d_jax.distill.examples.build_pretrain_examples`). The loss is the block
diffusion ELBO: cross-entropy on the masked tokens weighted by 1/t, normalised by the
number of eligible tokens (:func:`t3d_jax.distill.losses.pretrain_loss`), with the same
block attention mask as distillation, so a model trained here decodes with the sampler
and distils with the T3D step unchanged.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from t3d_jax.distill.examples import (ExampleConfig, build_pretrain_examples, example_seeds,
                                      pad_batch)
from t3d_jax.distill.losses import pretrain_loss
from t3d_jax.distill.step import t3d_layout
from t3d_jax.errors import InputError
from t3d_jax.models.sdar import SDARConfig, forward

BATCH_KEYS = ("ids", "positions", "labels", "p_mask", "t", "num_eligible")


@dataclasses.dataclass(frozen=True)
class Pair:
  prompt_ids: tuple
  response_ids: tuple


def make_pairs(prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]],
               eos_id: int, max_gen_length: int) -> list[Pair]:
  """Responses are the answer tokens plus EOS, cut at ``max_gen_length``."""
  return [Pair(tuple(p), tuple((list(a) + [eos_id])[:max_gen_length]))
          for p, a in zip(prompt_ids, answer_ids)]


def make_batch(pairs: Sequence[Pair], indices: np.ndarray, ex_cfg: ExampleConfig, *,
               micro_batch: int, length_bucket: int, pad_id: int, mask_id: int, seed: int,
               step: int) -> dict:
  """Global batch of update ``step`` as numpy arrays with leading [A, M] axes. The noise
  of example i depends only on (seed, step, i)."""
  if len(indices) % micro_batch:
    raise InputError(f"global batch {len(indices)} is not a multiple of micro_batch "
                     f"{micro_batch}")
  if length_bucket % ex_cfg.block_size:
    raise InputError(f"length_bucket={length_bucket} must be a multiple of "
                     f"examples.block_size={ex_cfg.block_size}")
  sel = [pairs[i] for i in indices]
  padded = pad_batch([s.prompt_ids for s in sel], [s.response_ids for s in sel], None,
                     pad_id=pad_id, multiple_of=length_bucket)
  ex = build_pretrain_examples(padded["prompt_ids"], padded["response_ids"],
                               example_seeds(seed, step, indices), ex_cfg, pad_id=pad_id,
                               mask_id=mask_id, response_len=padded["response_len"])
  batch = {k: np.asarray(ex[k]) for k in BATCH_KEYS}
  batch["weight"] = np.ones(len(indices), np.float32)
  a = len(indices) // micro_batch
  return {k: v.reshape((a, micro_batch) + v.shape[1:]) for k, v in batch.items()}


def micro_loss(params, reference, mb: dict, rng, *, model: SDARConfig, block_size: int,
               pad_id: int):
  """``loss_fn`` of :func:`t3d_jax.distill.step.make_train_step` (reference and rng
  unused): the masked-diffusion loss of one micro-batch and its metrics. Prompt rows are
  never trained, so only the noisy rows go through the head (as in the T3D step)."""
  del reference, rng
  l0, attn, layout = t3d_layout(mb, block_size, pad_id)
  logits = forward(params, model, mb["ids"], attn, mb["positions"], **layout)  # noisy rows
  return pretrain_loss(logits, mb["labels"][:, l0:], mb["p_mask"][:, l0:], mb["t"],
                       mb["num_eligible"], mb["weight"])
