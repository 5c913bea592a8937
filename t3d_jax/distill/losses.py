"""T3D losses (docs/method.md §3): DDO, the path loss, and their total from two forwards.

Pure jnp, jit-compatible. Log-softmax is always taken in float32 (logits may be bf16):
log p(y) = logits[y] - logsumexp(logits) with both terms in float32, so no full
float32 copy of the [B, T, V] log-probabilities is kept.

Batch semantics: the released trainer runs micro-batches of one example, so every loss
here is computed per example and the batch value is the (optionally weighted) mean of
the per-example values, never a pool of positions across the batch. ``weight`` [B]
(e.g. the examples' ``keep`` flags) excludes padding examples from every mean.

Metric names follow the original's logs: ``loss`` is the DDO loss alone (as the original
logs it), ``loss_path`` the path loss (the original's ``loss_path_step_map``) and
``loss_total`` = loss + lambda_path * loss_path (what the original logs, misleadingly,
as ``loss_ddo``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from t3d_jax.sampling.logits import argmax_last  # noqa: F401  (methods use it from here)
from t3d_jax.config_keys import dataclass_from_config
from t3d_jax.train.logprobs import (batch_mean, log_normalizer, masked_mean,  # noqa: F401
                                    masked_mean_logp, token_logprobs)

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The config keys read by :func:`t3d_loss`, with their defaults. Hashable (static)."""
  alpha: float = 0.5
  beta: float = 0.1
  lambda_path: float = 0.2
  path_k_steps: int = 4
  block_size: int = 8
  reference_temp: float = 0.0
  # distill.method=dparallel (t3d_jax/distill/methods.py), the release's values
  certainty_mask_ratio: float = 0.5
  entropy_weight: float = 2.0
  entropy_temperature: float = 0.5

  def __post_init__(self):
    if self.path_k_steps <= 0:
      raise ValueError(f"path_k_steps must be positive, got {self.path_k_steps}")
    if self.block_size <= 0:
      raise ValueError(f"block_size must be positive, got {self.block_size}")
    if self.reference_temp < 0:
      raise ValueError(f"reference_temp must be >= 0, got {self.reference_temp}")

  @classmethod
  def from_config(cls, cfg: Any, **overrides) -> "LossConfig":
    """Reads the known keys from a ConfigDict / mapping / object (others ignored)."""
    return dataclass_from_config(cls, cfg, **overrides)


# ----------------------------------------------------------------------------- basics

def loss_rows(logits: Array, prompt_len: int) -> Array:
  """The rows the losses use: [B, L0+2*L1, ...] model output of [prompt | x0 | xt] ->
  [B, L0+L1, ...] = [prompt rows | noisy rows] (the clean rows are context only)."""
  response_len = (logits.shape[1] - prompt_len) // 2
  if prompt_len + 2 * response_len != logits.shape[1]:
    raise ValueError(f"length {logits.shape[1]} is not prompt_len + 2*L1 (prompt_len={prompt_len})")
  return jnp.concatenate([logits[:, :prompt_len], logits[:, prompt_len + response_len:]], axis=1)


def fake_targets(ref_logits: Array, temperature: float = 0.0,
                 rng: Optional[Array] = None, row_offset: int = 0) -> Array:
  """The fake sample: argmax of the reference logits (temperature 0), else Gumbel-max
  sampling from softmax(logits / temperature) in float32. The original computes
  argmax(exp(l) / (-log u) ** T) in float64, the same argmax as l + T * Gumbel(u).
  One draw serves target and reference (the original used two independent draws).
  ``row_offset``: ref_logits are rows row_offset.. of a longer sequence; the noise is
  those rows of the draw for the whole sequence, so skipping leading rows leaves the
  sample unchanged."""
  if temperature == 0:
    return argmax_last(ref_logits)
  if rng is None:
    raise ValueError("fake_targets with temperature > 0 needs an rng key")
  b, t, v = ref_logits.shape
  u = jax.random.uniform(rng, (b, row_offset + t, v), jnp.float32,
                         minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)[:, row_offset:]
  gumbel = -jnp.log(-jnp.log(u))
  return argmax_last(ref_logits.astype(jnp.float32) + temperature * gumbel)


# ----------------------------------------------------------------------------- DDO

def ddo_loss(logp_target_real: Array, logp_target_fake: Array, logp_ref_real: Array,
             logp_ref_fake: Array, alpha: float, beta: float,
             weight: Optional[Array] = None) -> tuple[Array, dict]:
  """Direct Discriminative Optimization on per-example mean log-likelihoods [B].

  loss_real = -log σ(β (logp_θ(real) - logp_ref(real)))
  loss_fake = -α log(1 - σ(β (logp_θ(fake) - logp_ref(fake))))  (= -α log σ(-β Δ))
  loss = mean(loss_real) + mean(loss_fake). Returns (loss, metrics)."""
  d_real = beta * (logp_target_real - logp_ref_real)
  d_fake = beta * (logp_target_fake - logp_ref_fake)
  loss_real = -jax.nn.log_sigmoid(d_real)
  loss_fake = -alpha * jax.nn.log_sigmoid(-d_fake)
  mean = lambda x: batch_mean(x, weight)
  loss = mean(loss_real) + mean(loss_fake)
  metrics = dict(loss=loss, loss_real=mean(loss_real), loss_fake=mean(loss_fake),
                 logp_target_real=mean(logp_target_real), logp_ref_real=mean(logp_ref_real),
                 logp_target_fake=mean(logp_target_fake), logp_ref_fake=mean(logp_ref_fake))
  return loss, metrics


# ----------------------------------------------------------------------------- path loss

def path_levels(step_map: Array, block_size: int, k_steps: int, length: int) -> Array:
  """Bool [B, S, L1], S = ceil(block_size / k_steps): the positions the released
  ``reconstruct_xt_from_step_map`` leaves unmasked at level s.

  step_map [B, L1'] is cut or padded with -1 to ``length`` = L1 and split into blocks
  (the last one padded with -1). In a block with at least one entry >= 0, level s keeps
  the first min((s+1)*k, count) of those entries in step order (ties by position, a
  stable sort) plus every entry equal to -1. A block with no entry >= 0 stays fully
  masked (its -1 entries too, as in the released loop's ``continue``)."""
  b, n = step_map.shape
  sm = step_map.astype(jnp.int32)
  sm = sm[:, :length] if n >= length else jnp.pad(sm, ((0, 0), (0, length - n)),
                                                   constant_values=-1)
  nb = -(-length // block_size)
  sm = jnp.pad(sm, ((0, 0), (0, nb * block_size - length)), constant_values=-1)
  sm = sm.reshape(b, nb, block_size)
  valid = sm >= 0
  idx = jnp.arange(block_size)
  si, sj = sm[..., :, None], sm[..., None, :]
  before = (sj < si) | ((sj == si) & (idx[None, :] < idx[:, None]))     # j sorts before i
  rank = (before & valid[..., None, :]).sum(-1)                          # [B, NB, bs]
  any_valid = valid.any(-1, keepdims=True)
  levels = []
  for s in range(-(-block_size // k_steps)):
    keep = any_valid & ((valid & (rank < (s + 1) * k_steps)) | (sm == -1))
    levels.append(keep.reshape(b, -1)[:, :length])
  return jnp.stack(levels, axis=1)


def path_loss_from_logprobs(logp_x0: Array, x0_resp: Array, step_map: Array,
                            block_size: int, k_steps: int, mask_id: int,
                            pad_id: int) -> Array:
  """Per-example path loss [B] from log p(x0) at the response rows [B, L1]."""
  length = x0_resp.shape[1]
  unmasked = path_levels(step_map, block_size, k_steps, length)          # [B, S, L1]
  real = (x0_resp != pad_id) & (x0_resp != mask_id)
  sel = (unmasked & real[:, None, :]).astype(jnp.float32)
  count = sel.sum(-1)                                                    # [B, S]
  level_ce = -(sel * logp_x0[:, None, :]).sum(-1) / jnp.maximum(count, 1.0)
  used = (count > 0).astype(jnp.float32)
  n_used = used.sum(-1)
  return jnp.where(n_used > 0, (level_ce * used).sum(-1) / jnp.maximum(n_used, 1.0), 0.0)


def path_loss(logits: Array, x0: Array, step_map: Array, block_size: int, k_steps: int,
              mask_id: int, pad_id: int, start_pos: int) -> Array:
  """The released ``compute_path_loss_from_step_map``, per example: [B].

  logits [B, L0+L1, V] (prompt rows + noisy rows), x0 = labels [B, L0+L1], step_map
  [B, L1] (-1 allowed). For each level s = 0..ceil(block_size/k)-1 the positions of
  :func:`path_levels`, minus those where x0 is pad (or the mask token), give a mean
  cross-entropy of logits[:, start_pos:] against x0; the loss averages the levels that
  have any position (0 if none). The released code pools a micro-batch of one, so the
  batch value is the mean of these per-example losses."""
  resp_logits = logits[:, start_pos:]
  x0_resp = x0[:, start_pos:]
  logp = token_logprobs(resp_logits, x0_resp)
  return path_loss_from_logprobs(logp, x0_resp, step_map, block_size, k_steps,
                                 mask_id, pad_id)


# ----------------------------------------------------------------------------- T3D total

def t3d_loss(target_logits: Array, ref_logits: Array, labels: Array, p_mask: Array,
             step_map: Array, cfg: LossConfig, *, prompt_len: int, mask_id: int,
             pad_id: int, rng: Optional[Array] = None, weight: Optional[Array] = None,
             logits_start: int = 0) -> tuple[Array, dict]:
  """Total T3D loss and every metric, from one target and one reference forward.

  target_logits, ref_logits: [B, L0+L1, V] (prompt rows + noisy rows); labels [B, L0+L1];
  p_mask [B, L0+L1]; step_map [B, L1]. The reference side is wrapped in stop_gradient.
  ``logits_start`` (static, <= prompt_len): the logits are rows logits_start.. only,
  [B, L0+L1-logits_start, V]; p_mask must be False on the rows before it (the prompt
  rows never are in p_mask), and the values are those of the full layout.
  Returns (loss_total, metrics) with metrics loss (DDO), loss_real, loss_fake,
  logp_target_real, logp_ref_real, logp_target_fake, logp_ref_fake, loss_path,
  loss_total."""
  if not 0 <= logits_start <= prompt_len:
    raise ValueError(f"logits_start={logits_start} must be in [0, prompt_len={prompt_len}]")
  labels, p_mask = labels[:, logits_start:], p_mask[:, logits_start:]
  prompt_len -= logits_start
  ref_logits = jax.lax.stop_gradient(ref_logits)
  fake = jax.lax.stop_gradient(fake_targets(ref_logits, cfg.reference_temp, rng,
                                            row_offset=logits_start))
  lse_t = log_normalizer(target_logits)
  lse_r = log_normalizer(ref_logits)
  tok_t_real = token_logprobs(target_logits, labels, lse_t)
  logp_target_real = masked_mean(tok_t_real, p_mask)
  logp_target_fake = masked_mean_logp(target_logits, fake, p_mask, lse_t)
  logp_ref_real = masked_mean_logp(ref_logits, labels, p_mask, lse_r)
  logp_ref_fake = masked_mean_logp(ref_logits, fake, p_mask, lse_r)
  loss_ddo, metrics = ddo_loss(logp_target_real, logp_target_fake, logp_ref_real,
                               logp_ref_fake, cfg.alpha, cfg.beta, weight)
  per_path = path_loss_from_logprobs(tok_t_real[:, prompt_len:], labels[:, prompt_len:],
                                     step_map, cfg.block_size, cfg.path_k_steps,
                                     mask_id, pad_id)
  loss_path = batch_mean(per_path, weight)
  total = loss_ddo + cfg.lambda_path * loss_path
  metrics.update(loss_path=loss_path, loss_total=total)
  return total, metrics
