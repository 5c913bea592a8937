"""Which masked positions of a block one denoising step reveals ("transfer").

All functions act on one step of a batch of blocks: masked [B, b] bool (True = still a
mask), confidence / entropy [B, b] float, n [B] int (the scheduled count, already clamped
to the masked count). Ties are broken by position (the lower index wins), so results are
deterministic and easy to reproduce outside JAX.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _rank(score: Array, eligible: Array) -> Array:
  """Rank [B, b] of each position by descending score among eligible positions (0 =
  best; ineligible positions rank after every eligible one); ties: lower index first."""
  key = jnp.where(eligible, -score.astype(jnp.float32), jnp.inf)
  order = jnp.argsort(key, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True)


def top_n(score: Array, eligible: Array, n: Array) -> Array:
  """The n [B] eligible positions of highest score."""
  return eligible & (_rank(score, eligible) < n[:, None])


def sequential(masked: Array, n: Array) -> Array:
  """The leftmost n masked positions."""
  idx = jnp.arange(masked.shape[-1], dtype=jnp.float32)
  return top_n(-idx[None, :] + jnp.zeros(masked.shape), masked, n)


def low_confidence_static(masked: Array, conf: Array, n: Array) -> Array:
  """The n most confident masked positions."""
  return top_n(conf, masked, n)


def low_confidence_dynamic(masked: Array, conf: Array, n: Array, threshold: float) -> Array:
  """Every masked position with confidence > threshold; if fewer than n, the n most
  confident (the threshold set is always a prefix of the confidence order)."""
  above = jnp.sum(masked & (conf > threshold), axis=-1)
  return top_n(conf, masked, jnp.maximum(above, n))


def entropy_bounded(masked: Array, ent: Array, bound: float) -> Array:
  """Masked positions by ascending entropy: the longest prefix whose cumulative entropy
  stays strictly under ``bound``, at least one (none if nothing is masked)."""
  key = jnp.where(masked, ent.astype(jnp.float32), jnp.inf)
  order = jnp.argsort(key, axis=-1, stable=True)
  srt = jnp.take_along_axis(key, order, axis=-1)
  n_masked = jnp.sum(masked, axis=-1)
  valid = jnp.arange(masked.shape[-1])[None, :] < n_masked[:, None]
  cum = jnp.cumsum(jnp.where(valid, srt, 0.0), axis=-1)
  k = jnp.sum(valid & (cum < bound), axis=-1)
  k = jnp.minimum(jnp.maximum(k, 1), n_masked)
  rank = jnp.argsort(order, axis=-1, stable=True)
  return masked & (rank < k[:, None])


def select(strategy: str, masked: Array, conf: Array, ent, n: Array, *,
           threshold: float, bound: float) -> Array:
  """Dispatch on the (static) strategy name; returns the transfer mask [B, b]."""
  if strategy == "sequential":
    return sequential(masked, n)
  if strategy == "low_confidence_static":
    return low_confidence_static(masked, conf, n)
  if strategy == "low_confidence_dynamic":
    return low_confidence_dynamic(masked, conf, n, threshold)
  if strategy == "entropy_bounded":
    return entropy_bounded(masked, ent, bound)
  raise ValueError(f"unknown strategy {strategy!r}")
