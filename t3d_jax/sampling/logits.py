"""Logits -> (x0, confidence, entropy): temperature, top-k, top-p, sampling or argmax.

Order as the original engine: divide by the temperature, keep the top-k logits, softmax,
keep the top-p nucleus (the first token that crosses p is kept), renormalise, sample.
Greedy (temperature 0) takes the argmax; its confidence and entropy come from the plain
softmax at T = 1 (the original has no greedy path).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array
NEG_INF = -jnp.inf


def top_k_filter(logits: Array, k: int) -> Array:
  """Keep logits >= the k-th largest (ties at the cut are kept, as torch's filter)."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits: Array, p: float) -> Array:
  """Nucleus filter: keep the most probable tokens until their mass reaches p, including
  the token that crosses p; at least one token is always kept. Ties at the cut are kept."""
  if p >= 1.0:
    return logits
  srt = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(srt, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs              # mass strictly before each token
  keep = before <= p
  keep = keep.at[..., 0].set(True)
  n_keep = jnp.sum(keep, axis=-1, keepdims=True)
  cutoff = jnp.take_along_axis(srt, n_keep - 1, axis=-1)  # smallest kept logit
  return jnp.where(logits < cutoff, NEG_INF, logits)


def process_logits(logits: Array, temperature: float, top_k: int = 0,
                   top_p: float = 1.0) -> Array:
  """Processed float32 logits whose softmax is the sampling distribution (T > 0)."""
  x = logits.astype(jnp.float32) / temperature
  return top_p_filter(top_k_filter(x, top_k), top_p)


def entropy(probs: Array) -> Array:
  """Shannon entropy (nats) over the last axis; 0 log 0 = 0."""
  return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)),
                            0.0), axis=-1)


def choose_tokens(logits: Array, key: Array, temperature: float, top_k: int = 0,
                  top_p: float = 1.0, with_entropy: bool = False):
  """Draw x0 at every position of ``logits`` [..., V].

  Returns (x0 int32 [...], confidence float32 [...], entropy float32 [...] or None).
  Greedy ties go to the lowest token id."""
  if temperature == 0:
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    x0 = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  else:
    proc = process_logits(logits, temperature, top_k, top_p)
    probs = jax.nn.softmax(proc, axis=-1)
    x0 = jax.random.categorical(key, proc, axis=-1).astype(jnp.int32)
  conf = jnp.take_along_axis(probs, x0[..., None], axis=-1)[..., 0]
  ent = entropy(probs) if with_entropy else None
  return x0, conf, ent
