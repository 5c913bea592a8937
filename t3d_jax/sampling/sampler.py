"""The block-diffusion sampler: a jitted, batched, shardable block loop over a KV cache.

Layout. Prompts are right-padded to [B, P]. The KV cache holds one slot per absolute
position (slot i = position i), so each row keeps its own offsets: row r's generated
blocks start at ``first[r]`` (the prefilled prompt length) and block k occupies
positions first[r] + k*b .. + b. All rows walk the blocks in lock-step (same k), so
shapes stay static; a finished row keeps riding along without changing its outputs.

  prompt_mode 'engine': first = floor(P_r / b) * b is prefilled with a staircase mask
    aligned to position 0; the tail P_r % b sits in block 0 as already revealed.
  prompt_mode 'aligned': the whole prompt is prefilled, staircase blocks aligned to its
    end; block 0 is all masks.

Per block: an on-device ``while_loop`` of at most s denoising steps (each one forward of
the block against the cache), then the cut (stop ids, max_new_tokens) and the commit:
'separate' runs one more forward of the final block to write its KV; 'fused' defers
that write to the next block's first step, whose query is [finished block | new block].

Outputs: ids [B, max_new] (pad_id past each length), step_map [B, max_new] (1-based
global denoising step of each token's first reveal, 0 past the length), lengths [B],
nfe [B] (forwards run for that row: denoising steps + separate commits; the prompt
prefill is not counted, and no commit is run after a row's final block).
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t3d_jax import masks
from t3d_jax.models.sdar import KVCache, SDARConfig, forward, forward_with_cache, write_cache
from t3d_jax.sampling import logits as logits_lib
from t3d_jax.sampling import strategies
from t3d_jax.sampling.config import (DecodeConfig, DecodeError, cache_length, check_inputs,
                                     transfer_schedule)

Array = jax.Array


def prompt_layout(dcfg: DecodeConfig, prompt_lens: Array):
  """(first [B]: prefilled length = start of block 0, offset [B]: staircase alignment)."""
  b = dcfg.block_size
  plen = prompt_lens.astype(jnp.int32)
  if dcfg.prompt_mode == "engine":
    return (plen // b) * b, jnp.zeros_like(plen)
  return plen, (-plen) % b


def _prefill(params, cfg: SDARConfig, dcfg: DecodeConfig, prompt_ids, first, offset, cache):
  """Write the KV of each row's first ``first[r]`` prompt tokens into slots 0.."""
  bsz, width = prompt_ids.shape
  if width == 0:
    return cache
  stair = jax.vmap(lambda o: masks.staircase_mask(width, dcfg.block_size, o))(offset)
  mask = stair & (jnp.arange(width)[None, :] < first[:, None])[:, None, :]
  pos = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (bsz, width))
  _, kv = forward_with_cache(params, cfg, prompt_ids, mask, pos, KVCache.zeros(cfg, bsz, 0),
                             logits_start=prompt_ids.shape[1])  # keys/values only
  return write_cache(cache, kv, jnp.zeros((bsz,), jnp.int32))


def _block_forward(params, cfg, block, start, cache):
  """One forward of the block at positions start.. against cache slots < start."""
  bsz, b = block.shape
  valid = jnp.arange(cache.k.shape[2])[None, :] < start[:, None]
  pos = start[:, None] + jnp.arange(b, dtype=jnp.int32)[None, :]
  return forward_with_cache(params, cfg, block, masks.decode_mask(valid, b), pos, cache)


def _fused_forward(params, cfg, prev, block, start, cache):
  """Query [prev | block] at start-b..start+b: prev (finished, uncommitted) sees cache +
  itself, block sees cache + prev + itself. Writes prev's KV; returns block's logits."""
  bsz, b = block.shape
  size = cache.k.shape[2]
  valid = jnp.arange(size)[None, :] < (start - b)[:, None]                 # [B, S]
  q = jnp.arange(2 * b)
  own = (q[None, :] < b) | (q[:, None] >= b)                                # [2b, 2b]
  mask = jnp.concatenate([jnp.broadcast_to(valid[:, None, :], (bsz, 2 * b, size)),
                          jnp.broadcast_to(own, (bsz, 2 * b, 2 * b))], axis=-1)
  pos = (start - b)[:, None] + q[None, :].astype(jnp.int32)
  logits, kv = forward_with_cache(params, cfg, jnp.concatenate([prev, block], 1), mask, pos,
                                  cache, logits_start=b)  # no head for the commit rows
  return logits, write_cache(cache, kv, start - b, count=b)


def _recompute_forward(params, cfg, dcfg, block, start, seq, offset):
  """Naive baseline: write the block into the full sequence and recompute everything
  (staircase mask, keys < start + b); return the block's logits."""
  bsz, b = block.shape
  size = seq.shape[1]
  seq = _scatter_rows(seq, block, start, jnp.ones((bsz,), bool))
  stair = jax.vmap(lambda o: masks.staircase_mask(size, b, o))(offset)
  mask = stair & (jnp.arange(size)[None, :] < (start + b)[:, None])[:, None, :]
  pos = jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32), (bsz, size))
  logits = forward(params, cfg, seq, mask, pos)
  idx = start[:, None] + jnp.arange(b, dtype=jnp.int32)[None, :]
  return jnp.take_along_axis(logits, idx[:, :, None], axis=1)


def _scatter_rows(buf: Array, window: Array, offset: Array, write: Array) -> Array:
  """buf[r, offset[r] + j] = window[r, j] for rows with write[r] (no index clamping)."""
  col = jnp.arange(buf.shape[1])[None, :] - offset[:, None]
  inside = (col >= 0) & (col < window.shape[1]) & write[:, None]
  vals = jnp.take_along_axis(window, jnp.clip(col, 0, window.shape[1] - 1), axis=1)
  return jnp.where(inside, vals, buf)


def _generate(params, prompt_ids: Array, prompt_lens: Array, rng: Array, *,
              cfg: SDARConfig, dcfg: DecodeConfig, recompute: bool = False) -> dict:
  """Traceable core of :func:`generate` (see the module docstring).

  ``recompute=True`` is the naive baseline: no KV cache; each step reruns the whole
  sequence buffer [B, cache_length] (the "cache" slot of the loop state holds that
  buffer), and committing costs no forward. Same results, for benchmarks."""
  bsz, width = prompt_ids.shape
  b, s, n_new = dcfg.block_size, dcfg.denoising_steps, dcfg.max_new_tokens
  prompt_ids = prompt_ids.astype(jnp.int32)
  plen = prompt_lens.astype(jnp.int32)
  first, offset = prompt_layout(dcfg, plen)
  size = cache_length(dcfg, width)
  if recompute:
    cache = jnp.zeros((bsz, size), jnp.int32).at[:, :width].set(prompt_ids)
  else:
    cache = _prefill(params, cfg, dcfg, prompt_ids, first, offset,
                     KVCache.zeros(cfg, bsz, size))

  j = jnp.arange(b, dtype=jnp.int32)[None, :]
  from_prompt = (first[:, None] + j) < plen[:, None]                        # engine tail
  if width:
    tail = jnp.take_along_axis(prompt_ids, jnp.clip(first[:, None] + j, 0, width - 1), 1)
  else:
    tail = jnp.zeros((bsz, b), jnp.int32)
  block0 = jnp.where(from_prompt, tail, dcfg.mask_id)
  sched = jnp.asarray(transfer_schedule(b, s))
  stop_ids = jnp.asarray(dcfg.stop_ids, jnp.int32)
  n_blocks = -(-(n_new + b - 1) // b)                                      # static bound
  fused = dcfg.commit_mode == "fused" and not recompute
  zeros = jnp.zeros((bsz,), jnp.int32)
  buf_w = n_new + 2 * b                  # out buffer: column b + g holds generated token g

  def denoise_block(k, start, block, masked, steps, nfe, done, prev, cache):
    def cond(c):
      t, _, masked, *_ = c
      return (t < s) & jnp.any(~done[:, None] & masked)

    def body(c):
      t, block, masked, bsteps, steps, nfe, cache = c
      active = ~done & jnp.any(masked, axis=-1)
      if recompute:
        logits = _recompute_forward(params, cfg, dcfg, block, start, cache, offset)
      elif fused:
        logits, cache = jax.lax.cond(
            (t == 0) & (k > 0),
            lambda c_: _fused_forward(params, cfg, prev, block, start, c_),
            lambda c_: (_block_forward(params, cfg, block, start, c_)[0], c_), cache)
      else:
        logits = _block_forward(params, cfg, block, start, cache)[0]
      key = jax.random.fold_in(jax.random.fold_in(rng, k), t)
      x0, conf, ent = logits_lib.choose_tokens(
          logits, key, dcfg.temperature, dcfg.top_k, dcfg.top_p,
          with_entropy=dcfg.strategy == "entropy_bounded")
      n = jnp.minimum(sched[t], jnp.sum(masked, axis=-1))
      transfer = strategies.select(dcfg.strategy, masked, conf, ent, n,
                                   threshold=dcfg.threshold, bound=dcfg.entropy_bound)
      if dcfg.reveal_all_on_last_step:
        transfer = jnp.where(t == s - 1, masked, transfer)
      transfer &= active[:, None]
      block = jnp.where(transfer, x0, block)
      bsteps = jnp.where(transfer, steps[:, None] + 1, bsteps)
      act = active.astype(jnp.int32)
      return t + 1, block, masked & ~transfer, bsteps, steps + act, nfe + act, cache

    init = (jnp.int32(0), block, masked, jnp.zeros((bsz, b), jnp.int32), steps, nfe, cache)
    _, block, _, bsteps, steps, nfe, cache = jax.lax.while_loop(cond, body, init)
    return block, bsteps, steps, nfe, cache

  def block_body(st):
    k = st["k"]
    start = first + k * b
    block, bsteps, steps, nfe, cache = denoise_block(
        k, start, st["block"], st["masked"], st["steps"], st["nfe"], st["done"], st["prev"],
        st["cache"])
    done = st["done"]
    gen = start[:, None] + j - plen[:, None]                               # generated index
    in_range = (gen >= 0) & (gen < n_new)
    is_stop = in_range & jnp.isin(block, stop_ids)
    first_stop = jnp.where(jnp.any(is_stop, -1), jnp.argmax(is_stop, -1), b)
    keep = in_range & (j <= first_stop[:, None]) & ~done[:, None]
    woff = start - plen + b
    out_ids = _scatter_rows(st["out_ids"], jnp.where(keep, block, dcfg.pad), woff, ~done)
    out_steps = _scatter_rows(st["out_steps"], jnp.where(keep, bsteps, 0), woff, ~done)
    length = st["length"] + jnp.sum(keep, axis=-1, dtype=jnp.int32)
    new_done = done | jnp.any(keep & is_stop, axis=-1) | (length >= n_new)
    if recompute:
      cache = _scatter_rows(cache, block, start, ~done)
    elif not fused:
      commit = lambda c: write_cache(c, _block_forward(params, cfg, block, start, c)[1], start)
      cache = jax.lax.cond(jnp.any(~new_done), commit, lambda c: c, cache)
      nfe = nfe + (~new_done).astype(jnp.int32)
    return dict(k=k + 1, cache=cache, block=jnp.full((bsz, b), dcfg.mask_id, jnp.int32),
                masked=jnp.ones((bsz, b), bool), prev=block, out_ids=out_ids,
                out_steps=out_steps, steps=steps, nfe=nfe, length=length, done=new_done)

  state = dict(k=jnp.int32(0), cache=cache, block=block0, masked=~from_prompt,
               prev=jnp.zeros((bsz, b), jnp.int32),
               out_ids=jnp.full((bsz, buf_w), dcfg.pad, jnp.int32),
               out_steps=jnp.zeros((bsz, buf_w), jnp.int32), steps=zeros, nfe=zeros,
               length=zeros, done=jnp.zeros((bsz,), bool))
  state = jax.lax.while_loop(lambda st: (st["k"] < n_blocks) & jnp.any(~st["done"]),
                             block_body, state)
  return dict(ids=state["out_ids"][:, b:b + n_new],
              step_map=state["out_steps"][:, b:b + n_new],
              lengths=state["length"], nfe=state["nfe"])


def make_generate(cfg: SDARConfig, dcfg: DecodeConfig, mesh: Optional[Mesh] = None,
                  data_axis: str = "data", param_sharding=None, recompute: bool = False):
  """Compile-once decoder ``fn(params, prompt_ids [B, P], prompt_lens [B], rng) -> dict``.

  With ``mesh`` the batch is sharded over ``data_axis`` (B must be a multiple of its
  size); params are replicated unless ``param_sharding`` (a sharding or a pytree of
  them) says otherwise. Inputs are validated eagerly (DecodeError names the problem).
  ``recompute=True`` builds the naive no-cache baseline instead (benchmarks only)."""
  dcfg.validate(cfg.vocab_size)
  core = functools.partial(_generate, cfg=cfg, dcfg=dcfg, recompute=recompute)
  if mesh is None:
    jitted = jax.jit(core)
    n_data = 1
  else:
    if data_axis not in mesh.axis_names:
      raise DecodeError(f"mesh has no axis {data_axis!r} (axes {mesh.axis_names})")
    n_data = mesh.shape[data_axis]
    rows = NamedSharding(mesh, PartitionSpec(data_axis))
    rep = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(core, in_shardings=(rep if param_sharding is None else param_sharding,
                                         rows, rows, rep), out_shardings=rows)

  def run(params, prompt_ids, prompt_lens, rng) -> dict:
    check_inputs(dcfg, cfg.vocab_size, prompt_ids, prompt_lens)
    if prompt_ids.shape[0] % n_data:
      raise DecodeError(f"batch {prompt_ids.shape[0]} is not a multiple of the mesh's "
                        f"{data_axis!r} axis ({n_data})")
    return jitted(params, prompt_ids, prompt_lens, rng)

  run.lower = jitted.lower  # for cost analysis / AOT compilation
  return run


@functools.lru_cache(maxsize=32)
def _cached_generate(cfg, dcfg, mesh, data_axis):
  return make_generate(cfg, dcfg, mesh, data_axis)


def generate(params, cfg: SDARConfig, prompt_ids, prompt_lens, rng, dcfg: DecodeConfig,
             mesh: Optional[Mesh] = None, data_axis: str = "data") -> dict:
  """Decode right-padded prompts ``prompt_ids`` [B, P] of lengths ``prompt_lens`` [B].

  Returns {ids [B, max_new], step_map [B, max_new], lengths [B], nfe [B]} (int32). Each
  row's result is that of decoding its prompt alone. Compiled once per (cfg, dcfg, mesh,
  shapes); use :func:`make_generate` to hold the compiled function yourself."""
  dcfg.validate(cfg.vocab_size)
  return _cached_generate(cfg, dcfg, mesh, data_axis)(params, prompt_ids, prompt_lens, rng)
