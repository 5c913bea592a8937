"""Which masked positions of a block one denoising step reveals ("transfer").

All functions act on one step of a batch of blocks: masked [B, b] bool (True = still a
mask), confidence / entropy [B, b] float, n [B] int (the scheduled count, already clamped
to the masked count). Ties are broken by position (the lower index wins), so results are
deterministic and easy to reproduce outside JAX.

:data:`STRATEGIES` maps each strategy name (``DecodeConfig.strategy``) to one function of
the uniform signature ``(masked, conf, ent, n, *, threshold, bound) -> transfer [B, b]``;
:func:`select` looks the name up, so a new strategy is one function plus one entry.
"""
from __future__ import annotations

from typing import Callable

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


# name -> (masked, conf, ent, n, *, threshold, bound) -> transfer; ent is None unless the
# strategy is 'entropy_bounded' (the sampler computes entropies only then). The one list
# of strategy names (t3d_jax.sampling.config.STRATEGIES is its keys).
STRATEGIES: dict[str, Callable[..., Array]] = {
    "sequential":
        lambda masked, conf, ent, n, *, threshold, bound: sequential(masked, n),
    "low_confidence_static":
        lambda masked, conf, ent, n, *, threshold, bound: low_confidence_static(
            masked, conf, n),
    "low_confidence_dynamic":
        lambda masked, conf, ent, n, *, threshold, bound: low_confidence_dynamic(
            masked, conf, n, threshold),
    # LLaDA's 'random' remasking: n masked positions uniformly at random (the sampler
    # passes uniform noise from the step's key as the scores)
    "random":
        lambda masked, conf, ent, n, *, threshold, bound: top_n(conf, masked, n),
    "entropy_bounded":
        lambda masked, conf, ent, n, *, threshold, bound: entropy_bounded(
            masked, ent, bound),
}


def select(strategy: str, masked: Array, conf: Array, ent, n: Array, *,
           threshold: float, bound: float) -> Array:
  """The transfer mask [B, b] of the (static) strategy name, from :data:`STRATEGIES`."""
  fn = STRATEGIES.get(strategy)
  if fn is None:
    raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
  return fn(masked, conf, ent, n, threshold=threshold, bound=bound)
