"""Log-likelihood primitives every objective shares (T3D's losses, pretraining's ELBO).

Pure jnp. Log-softmax is always taken in float32 (logits may be bf16): log p(y) =
logits[y] - logsumexp(logits) with both terms in float32, so no full float32 copy of the
[B, T, V] log-probabilities is kept. Batch values are (weighted) means of per-example
values, never a pool of positions across the batch.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def log_normalizer(logits: Array) -> Array:
  """logsumexp over the vocabulary in float32: [B, T, V] -> [B, T]."""
  return jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)


def token_logprobs(logits: Array, targets: Array, lse: Optional[Array] = None) -> Array:
  """float32 log softmax(logits)[targets]: [B, T, V], [B, T] -> [B, T]."""
  if lse is None:
    lse = log_normalizer(logits)
  picked = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return picked.astype(jnp.float32) - lse


def masked_mean(values: Array, mask: Array) -> Array:
  """Per-row mean of ``values`` over ``mask`` [B, T] -> [B]; 0 for an empty row."""
  m = mask.astype(jnp.float32)
  count = m.sum(-1)
  return jnp.where(count > 0, (values * m).sum(-1) / jnp.maximum(count, 1.0), 0.0)


def masked_mean_logp(logits: Array, targets: Array, p_mask: Array,
                     lse: Optional[Array] = None) -> Array:
  """Mean masked log-likelihood per example [B]: sum over p_mask of log p(target) / |p_mask|."""
  return masked_mean(token_logprobs(logits, targets, lse), p_mask)


def batch_mean(x: Array, weight: Optional[Array] = None) -> Array:
  """Mean of per-example values [B], or their weighted mean."""
  x = x.astype(jnp.float32)
  if weight is None:
    return x.mean()
  w = weight.astype(jnp.float32)
  return (x * w).sum() / jnp.maximum(w.sum(), 1e-12)
