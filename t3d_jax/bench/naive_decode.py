"""The benchmark's naive baseline: block-diffusion decoding with no KV cache.

Every denoising step reruns the whole sequence buffer [B, cache_length] (prompt, the
committed blocks and the current block) under the staircase mask, keys < the block's
end, and reads the block's logits; committing a block only writes its tokens into the
buffer, so it costs no forward. Everything else is the sampler's own module-level
pieces (layout, Context / BlockState, the denoising step with its logits choice,
strategy and transfer schedule, the cut), so the outputs equal the cached decoder's
token for token (tests/test_sampler.py checks it); only the cost differs. Benchmarks
only: ``python -m t3d_jax.bench sampler`` times it against :func:`make_generate`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from t3d_jax import masks
from t3d_jax.models.sdar import SDARConfig, forward
from t3d_jax.sampling.config import DecodeConfig, cache_length
from t3d_jax.sampling.sampler import (BlockState, Context, StepState, blocks_left,
                                      init_state, denoise_block, finish_block,
                                      decode_outputs, scatter_rows, CompiledDecoder,
                                      prompt_layout)

Array = jax.Array


def _recompute_logits(params, cfg: SDARConfig, ctx: Context, start, st: StepState):
  """Write the block into the buffer (st.cache) and recompute everything (staircase
  mask, keys < start + b); return (the block's logits, the buffer unchanged)."""
  bsz, b = st.block.shape
  size = st.cache.shape[1]
  seq = scatter_rows(st.cache, st.block, start, jnp.ones((bsz,), bool))
  stair = jax.vmap(lambda o: masks.staircase_mask(size, b, o))(ctx.offset)
  mask = stair & (jnp.arange(size)[None, :] < (start + b)[:, None])[:, None, :]
  pos = jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32), (bsz, size))
  logits = forward(params, cfg, seq, mask, pos)
  idx = start[:, None] + jnp.arange(b, dtype=jnp.int32)[None, :]
  return jnp.take_along_axis(logits, idx[:, :, None], axis=1), st.cache


def _write_tokens(blk: BlockState, start, st: StepState, done):
  """The commit: the finished block's tokens into the buffer (no forward, no NFE)."""
  return scatter_rows(st.cache, st.block, start, ~blk.done), st.nfe


def _naive_block(params, cfg: SDARConfig, dcfg: DecodeConfig, ctx: Context,
                 blk: BlockState) -> BlockState:
  """Block k: the sampler's denoising steps over recomputed logits, cut, commit."""
  start = ctx.first + blk.k * dcfg.block_size
  st = denoise_block(dcfg, ctx, blk,
                      functools.partial(_recompute_logits, params, cfg, ctx, start))
  return finish_block(dcfg, ctx, blk, start, st,
                       functools.partial(_write_tokens, blk, start))


def _naive_generate(params, prompt_ids: Array, prompt_lens: Array, rng: Array, knobs, *,
                    cfg: SDARConfig, dcfg: DecodeConfig) -> dict:
  """Traceable core of :func:`make_naive_generate`; the loop state's cache slot holds
  the token buffer [B, cache_length] instead of a KV cache."""
  bsz, width = prompt_ids.shape
  prompt_ids = prompt_ids.astype(jnp.int32)
  plen = prompt_lens.astype(jnp.int32)
  first, offset = prompt_layout(dcfg, plen)
  seq = jnp.zeros((bsz, cache_length(dcfg, width)), jnp.int32).at[:, :width].set(prompt_ids)
  ctx, blk = init_state(dcfg, knobs, prompt_ids, plen, first, offset, rng, seq, fused=False)
  blk = jax.lax.while_loop(functools.partial(blocks_left, dcfg),
                           functools.partial(_naive_block, params, cfg, dcfg, ctx), blk)
  return decode_outputs(dcfg, blk)


def make_naive_generate(cfg: SDARConfig, dcfg: DecodeConfig):
  """The no-cache decoder ``fn(params, prompt_ids [B, P], prompt_lens [B], rng) -> dict``
  (same call and outputs as :func:`t3d_jax.sampling.make_generate`; ``commit_mode`` is
  moot, nfe counts the denoising steps alone). ``fn.lower`` as there."""
  return CompiledDecoder(functools.partial(_naive_generate, cfg=cfg, dcfg=dcfg.static()), cfg,
                         dcfg)
