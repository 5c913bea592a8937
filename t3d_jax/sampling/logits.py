"""Logits -> (x0, confidence, entropy): temperature, top-k, top-p, sampling or argmax.

Order as the original engine: divide by the temperature, keep the top-k logits, softmax,
keep the top-p nucleus (the first token that crosses p is kept), renormalise, sample.
Greedy (temperature 0) takes the argmax; its confidence and entropy come from the plain
softmax at T = 1 (the original has no greedy path). Temperature and top-p may be Python
numbers (the path is chosen while tracing) or traced scalars (``lax.cond`` chooses at run
time, the same operations: the compiled sampler takes them as values, steps.Knobs).
"""
from __future__ import annotations

import functools

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


def top_p_filter(logits: Array, p) -> Array:
  """Nucleus filter: keep the most probable tokens until their mass reaches p, including
  the token that crosses p; at least one token is always kept. Ties at the cut are kept.
  p >= 1 keeps every token."""
  if isinstance(p, (int, float)):
    return logits if p >= 1.0 else _nucleus(logits, p)
  return jax.lax.cond(p < 1.0, _nucleus, lambda x, _: x, logits, p)


def _nucleus(logits: Array, p) -> Array:
  srt = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(srt, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs              # mass strictly before each token
  keep = before <= p
  keep = keep.at[..., 0].set(True)
  n_keep = jnp.sum(keep, axis=-1, keepdims=True)
  cutoff = jnp.take_along_axis(srt, n_keep - 1, axis=-1)  # smallest kept logit
  return jnp.where(logits < cutoff, NEG_INF, logits)


def process_logits(logits: Array, temperature, top_k: int = 0, top_p=1.0) -> Array:
  """Processed float32 logits whose softmax is the sampling distribution (T > 0)."""
  x = logits.astype(jnp.float32) / temperature
  return top_p_filter(top_k_filter(x, top_k), top_p)


def entropy(probs: Array) -> Array:
  """Shannon entropy (nats) over the last axis; 0 log 0 = 0."""
  return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)),
                            0.0), axis=-1)


ARGMAX_CHUNK = 128


def argmax_last(x: Array) -> Array:
  """``jnp.argmax(x, -1)`` (the first index of the max; a NaN counts as the max), int32,
  in two small reductions: each 128-wide chunk's max, the first best chunk, then the first
  best index inside it (-inf pads a partial last chunk). XLA:CPU runs argmax as a
  (value, index) reduce that does not vectorise, the largest non-matmul op of a greedy
  decoding step (README, Benchmarks: before/after at batch 64)."""
  v = x.shape[-1]
  c = min(ARGMAX_CHUNK, v)
  pad = -v % c
  if pad:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], constant_values=-jnp.inf)
  chunks = x.reshape(x.shape[:-1] + (x.shape[-1] // c, c))
  # XLA:CPU's vectorised max may drop a NaN: a chunk holding one is marked NaN here, and
  # argmax over the chunks (NaN counts as the max) then picks the first such chunk
  top = jnp.where(jnp.any(jnp.isnan(chunks), -1), jnp.nan, jnp.max(chunks, -1))
  best = jnp.argmax(top, axis=-1)                                        # [...]
  inside = jnp.take_along_axis(chunks, best[..., None, None], axis=-2)[..., 0, :]
  return (best * c + jnp.argmax(inside, axis=-1)).astype(jnp.int32)  # argmax minds NaN


def choose_tokens(logits: Array, key: Array, temperature, top_k: int = 0, top_p=1.0,
                  with_entropy: bool = False):
  """Draw x0 at every position of ``logits`` [..., V] with ``key``: one key, or one per
  row ([B] for logits [B, ..., V]: row r's draws depend on key[r] and its own logits only).

  Returns (x0 int32 [...], confidence float32 [...], entropy float32 [...] or None).
  Greedy ties go to the lowest token id."""
  def greedy(x):
    return argmax_last(x), x.astype(jnp.float32)

  def sample(x):
    t = temperature if isinstance(temperature, (int, float)) else \
        jnp.where(temperature > 0, temperature, 1.0)  # the branch not taken stays finite
    proc = process_logits(x, t, top_k, top_p)
    draw = functools.partial(jax.random.categorical, axis=-1)
    x0 = draw(key, proc) if key.ndim == 0 else jax.vmap(draw)(key, proc)
    return x0.astype(jnp.int32), proc

  if isinstance(temperature, (int, float)):
    x0, z = (greedy if temperature == 0 else sample)(logits)
  else:
    x0, z = jax.lax.cond(temperature > 0, sample, greedy, logits)
  # softmax(z)[x0] without the [..., V] division: exp(z[x0] - max) / sum(exp(z - max))
  m = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
  e = jnp.exp(z - m)
  conf = (jnp.take_along_axis(e, x0[..., None], axis=-1) / jnp.sum(e, -1, keepdims=True))[..., 0]
  ent = entropy(e / jnp.sum(e, -1, keepdims=True)) if with_entropy else None
  return x0, conf, ent
