"""The masked-diffusion pretraining / SFT objective on question-answer pairs.

Each pair becomes one example in the T3D layout [prompt | x0 | xt]: the prompt (chat
template or ``prompt_template`` on the question), the clean response x0 (answer tokens +
EOS) and its noisy copy xt, in which every response token (plus ``post_num`` pads past
the end) is masked with probability t ~ U(eps, 1] drawn per example
(:func:`build_pretrain_examples`). The loss is the block diffusion ELBO: cross-entropy
on the masked tokens weighted by 1/t, normalised by the number of eligible tokens
(:func:`pretrain_loss`), with the same block attention mask as distillation, so a model
trained here decodes with the sampler and distils with the T3D step unchanged.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t3d_jax.config_keys import dataclass_from_config
from t3d_jax.train.logprobs import batch_mean, masked_mean_logp, token_logprobs
from t3d_jax.models.sdar import SDARConfig
from t3d_jax.train.views import prompt_len, response_logits
from t3d_jax.train.examples import (as_seeds, assemble, check_batching, check_inputs,
                                    example_seeds, pad_batch, pad_positions,
                                    response_lengths, split_micro_batches, uniform)

Array = jax.Array
BATCH_KEYS = ("ids", "positions", "labels", "p_mask", "t", "num_eligible")
_STREAM_T, _STREAM_MASK = 5, 6  # the example's random streams (T3D uses 1-4)


# pretrain.optim (t3d_jax/config_base.py): OptimConfig's defaults but these, tuned on the
# demo for training from scratch (T3D's own optim defaults are the released fine-tuning ones)
PRETRAIN_OPTIM = dict(lr=1e-3, warmup_steps=50, b2=0.98, decay_norms_and_biases=False)


@dataclasses.dataclass(frozen=True)
class PretrainExamples:
  """The config keys the pretraining examples read: ``examples.block_size`` and
  ``examples.post_num`` (shared with distillation) and ``pretrain.mask_eps``."""
  block_size: int = 4  # SDAR's decoding block (the config's 0 follows decode / rollout)
  post_num: Optional[int] = 2           # None: every pad position is eligible
  mask_eps: float = 1e-3                # t ~ U(eps, 1]

  def __post_init__(self):
    if self.block_size <= 0:
      raise ValueError(f"block_size must be positive, got {self.block_size}")
    if self.post_num is not None and self.post_num < 0:
      raise ValueError(f"post_num must be >= 0 or None, got {self.post_num}")
    if not 0.0 <= self.mask_eps < 1.0:
      raise ValueError(f"mask_eps must be in [0, 1), got {self.mask_eps}")

  @classmethod
  def from_config(cls, cfg: Any, **overrides) -> "PretrainExamples":
    return dataclass_from_config(cls, cfg, **overrides)


@dataclasses.dataclass(frozen=True)
class Pair:
  prompt_ids: tuple
  response_ids: tuple


def make_pairs(prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]],
               eos_id: int, max_gen_length: int) -> list[Pair]:
  """Responses are the answer tokens plus EOS, cut at ``max_gen_length``."""
  return [Pair(tuple(p), tuple((list(a) + [eos_id])[:max_gen_length]))
          for p, a in zip(prompt_ids, answer_ids)]


def build_pretrain_examples(prompt_ids, response_ids, seeds, cfg: PretrainExamples, *,
                            pad_id: int, mask_id: int, response_len=None) -> dict:
  """Masked-diffusion SFT / pretraining examples in the same [prompt | x0 | xt] layout.

  Per example t ~ U(eps, 1] (eps = cfg.mask_eps). The eligible positions are the
  response tokens plus the first ``post_num`` positions past the response end (None: all
  of them); each eligible position is masked with probability t and masked ones form
  p_mask. Positions past the end that are not eligible are masked in xt, never trained.
  Returns the keys of :func:`t3d_jax.distill.examples.build_examples` (no ratio / step_map / random_tokens) plus
  ``t`` [B] float32 and ``num_eligible`` [B] (the normaliser of :func:`diffusion_ce`).
  """
  prompt_ids, response_ids, _ = check_inputs(prompt_ids, response_ids)
  b, n = response_ids.shape
  seeds = as_seeds(seeds, b)
  rlen = response_lengths(response_len, response_ids, pad_id)
  inside, past, trained_pads = pad_positions(rlen, n, cfg.post_num)
  eligible = inside | trained_pads
  u_t = uniform(seeds, _STREAM_T, 1)[:, 0]
  t = 1.0 - (1.0 - cfg.mask_eps) * u_t                         # (eps, 1]
  masked = eligible & (uniform(seeds, _STREAM_MASK, n) < t[:, None])
  xt = np.where(masked | (past & ~eligible), mask_id, response_ids)
  out = assemble(prompt_ids, response_ids, xt.astype(response_ids.dtype), masked, pad_id)
  out.update(t=t.astype(np.float32), num_eligible=eligible.sum(1).astype(np.int32),
             response_len=rlen)
  return out


def diffusion_ce(logits: Array, labels: Array, p_mask: Array, t: Array,
                 num_eligible: Array) -> Array:
  """Masked-diffusion cross-entropy per example [B] (the ELBO weighting):
  sum over p_mask of -log p(label) / t, divided by the number of eligible tokens."""
  nll = -token_logprobs(logits, labels) * p_mask.astype(jnp.float32)
  norm = jnp.maximum(num_eligible.astype(jnp.float32), 1.0)
  return nll.sum(-1) / t.astype(jnp.float32) / norm


def pretrain_loss(logits: Array, labels: Array, p_mask: Array, t: Array,
                  num_eligible: Array, weight: Optional[Array] = None) -> tuple[Array, dict]:
  """Batch mean of :func:`diffusion_ce`; metrics: loss, masked_nll (unweighted mean
  negative log-likelihood of the masked tokens per example), mask_frac."""
  per = diffusion_ce(logits, labels, p_mask, t, num_eligible)
  loss = batch_mean(per, weight)
  nll = -masked_mean_logp(logits, labels, p_mask)
  frac = p_mask.astype(jnp.float32).sum(-1) / jnp.maximum(num_eligible.astype(jnp.float32), 1.0)
  return loss, dict(loss=loss, masked_nll=batch_mean(nll, weight),
                    mask_frac=batch_mean(frac, weight))


def make_batch(pairs: Sequence[Pair], indices: np.ndarray, ex_cfg: PretrainExamples, *,
               micro_batch: int, length_bucket: int, pad_id: int, mask_id: int, seed: int,
               step: int, response_width: int = 0) -> dict:
  """Global batch of update ``step`` as numpy arrays with leading [A, M] axes. The noise
  of example i depends only on (seed, step, i)."""
  check_batching(len(indices), micro_batch, length_bucket, ex_cfg.block_size,
                 "pretrain.length_bucket")
  sel = [pairs[i] for i in indices]
  padded = pad_batch([s.prompt_ids for s in sel], [s.response_ids for s in sel], None,
                     pad_id=pad_id, multiple_of=length_bucket, response_width=response_width)
  ex = build_pretrain_examples(padded["prompt_ids"], padded["response_ids"],
                               example_seeds(seed, step, indices), ex_cfg, pad_id=pad_id,
                               mask_id=mask_id, response_len=padded["response_len"])
  batch = {k: np.asarray(ex[k]) for k in BATCH_KEYS}
  batch["weight"] = np.ones(len(indices), np.float32)
  return split_micro_batches(batch, micro_batch)


def micro_loss(params, reference, mb: dict, rng, *, model: SDARConfig, block_size: int,
               pad_id: int, mask_id: int):
  """``loss_fn`` of :func:`t3d_jax.train.trainer.make_train_step` (reference and rng
  unused): the masked-diffusion loss of one micro-batch and its metrics, on the family's
  training view of the response (:func:`t3d_jax.train.views.response_logits`)."""
  del reference, rng
  l0 = prompt_len(mb)
  logits = response_logits(params, model, mb, block_size=block_size, pad_id=pad_id,
                           mask_id=mask_id)
  return pretrain_loss(logits, mb["labels"][:, l0:], mb["p_mask"][:, l0:], mb["t"],
                       mb["num_eligible"], mb["weight"])
