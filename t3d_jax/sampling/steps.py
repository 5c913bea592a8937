"""One denoising step, shared by the block-causal sampler (sampler.py) and the
bidirectional canvas sampler (canvas.py): the traced knobs, the per-row keys, the
per-call constants, a block's step carry and :func:`denoise_step` (draw x0, pick the
strategy's positions, reveal them in the active rows).

Randomness is per row: ``rng`` is one key per row ([B]; a single key stands for
``fold_in(rng, r)`` of row r) and step t of block k draws with
``fold_in(fold_in(row_key, k), t)``, so at any temperature a row's tokens depend on its
own key, never on which rows share its batch.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from t3d_jax.sampling import logits as logits_lib
from t3d_jax.sampling import strategies
from t3d_jax.sampling.config import MAX_STOP_IDS, DecodeConfig, DecodeError

Array = jax.Array


class Knobs(struct.PyTreeNode):
  """The traced decoding settings (``config.TRACED_FIELDS``) of one call."""
  temperature: Array  # f32 scalar; 0 = greedy
  top_p: Array        # f32 scalar; >= 1 = off
  threshold: Array    # f32 scalar (low_confidence_dynamic)
  entropy_bound: Array  # f32 scalar (entropy_bounded)
  stop_ids: Array     # int32 [MAX_STOP_IDS], -1 past the stop ids (never a token)

  @classmethod
  def of(cls, dcfg: DecodeConfig) -> "Knobs":
    dcfg.validate()  # the values' ranges (the vocabulary: by the decoder's own check)
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    stops = list(dcfg.stop_ids) + [-1] * (MAX_STOP_IDS - len(dcfg.stop_ids))
    return cls(temperature=f32(dcfg.temperature), top_p=f32(dcfg.top_p),
               threshold=f32(dcfg.threshold), entropy_bound=f32(dcfg.entropy_bound),
               stop_ids=jnp.asarray(stops, jnp.int32))


def row_keys(rng: Array, questions, samples=None) -> Array:
  """One key per sequence [B]: ``fold_in(fold_in(rng, question), sample)`` (sample 0
  when ``samples`` is None), the key a sequence draws with whatever batch it rides in."""
  q = jnp.asarray(questions, jnp.int32)
  s = jnp.zeros_like(q) if samples is None else jnp.asarray(samples, jnp.int32)
  return _row_keys(rng, q, s)


@jax.jit
def _row_keys(rng, q, s):
  return jax.vmap(lambda a, b: jax.random.fold_in(jax.random.fold_in(rng, a), b))(q, s)


def as_row_keys(rng, rows: int) -> Array:
  """``rng`` as [rows] typed keys: a [rows] key array as is, a single key (typed, or a
  raw uint32 [2]) as ``fold_in(rng, r)`` for row r."""
  rng = jnp.asarray(rng)
  if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng) if rng.shape[-1:] == (2,) else rng
  if rng.shape == ():
    return row_keys(rng, np.arange(rows))
  if rng.shape != (rows,):
    raise DecodeError(f"rng: expected one key or {rows} keys (one per row), got shape "
                      f"{rng.shape}")
  return rng


class Context(struct.PyTreeNode):
  """Per-call constants of one decode, passed explicitly to the step functions."""
  rng: Array         # [B] one key per row
  first: Array       # [B] start of block 0 (prefilled length)
  plen: Array        # [B] prompt lengths
  offset: Array      # [B] staircase alignment of the prompt
  sched: Array       # [s] tokens to reveal per step
  knobs: Knobs
  j: Array           # [1, b] positions within a block
  rope: Any          # RopeTable of every cache slot (None: each forward computes its own)
  fused: bool = struct.field(pytree_node=False)


class StepState(struct.PyTreeNode):
  """Carry of one block's denoising loop."""
  t: Array           # step within the block
  block: Array
  masked: Array
  bsteps: Array      # [B, b] global step of each position's reveal
  steps: Array
  nfe: Array
  cache: Any


def denoise_step(dcfg: DecodeConfig, ctx: Context, blk: Any, logits_fn: Callable,
                  st: StepState) -> StepState:
  """One step: forward (``logits_fn(st) -> (logits, cache)``), draw row r's x0 with key
  fold_in(fold_in(rng[r], k), t), reveal the strategy's positions in the active rows.
  ``blk``: the block loop's carry (its ``done`` [B] and block index ``k`` are read)."""
  s = dcfg.denoising_steps
  active = ~blk.done & jnp.any(st.masked, axis=-1)
  logits, cache = logits_fn(st)
  keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(r, blk.k), st.t))(ctx.rng)
  kn = ctx.knobs
  x0, conf, ent = logits_lib.choose_tokens(
      logits, keys, kn.temperature, dcfg.top_k, kn.top_p,
      with_entropy=dcfg.strategy == "entropy_bounded")
  if s == 1 and (dcfg.reveal_all_on_last_step or dcfg.strategy != "entropy_bounded"):
    transfer = st.masked  # one step reveals every mask (so XLA drops conf and ent)
  else:
    n = jnp.minimum(ctx.sched[st.t], jnp.sum(st.masked, axis=-1))
    if dcfg.strategy == "random":  # LLaDA's random remasking: uniform scores
      conf = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 1), conf.shape[1:])
                      )(keys)
    transfer = strategies.select(dcfg.strategy, st.masked, conf, ent, n,
                                 threshold=kn.threshold, bound=kn.entropy_bound)
    if dcfg.reveal_all_on_last_step:
      transfer = jnp.where(st.t == s - 1, st.masked, transfer)
  transfer &= active[:, None]
  block = jnp.where(transfer, x0, st.block)
  bsteps = jnp.where(transfer, st.steps[:, None] + 1, st.bsteps)
  act = active.astype(jnp.int32)
  return st.replace(t=st.t + 1, block=block, masked=st.masked & ~transfer, bsteps=bsteps,
                    steps=st.steps + act, nfe=st.nfe + act, cache=cache)
