"""The block-diffusion sampler: a jitted, batched, shardable block loop over a KV cache,
for block-causal families (SDAR); :func:`make_generate` picks the bidirectional one
(:mod:`t3d_jax.sampling.canvas`, LLaDA and Dream) by the family's attention (``CORES``),
behind the same :class:`CompiledDecoder`.

Layout. Prompts are right-padded to [B, P]. The KV cache holds one slot per absolute
position (slot i = position i), so each row keeps its own offsets: row r's generated
blocks start at ``first[r]`` (the prefilled prompt length) and block k occupies
positions first[r] + k*b .. + b. All rows walk the blocks in lock-step (same k), so
shapes stay static; a finished row keeps riding along without changing its outputs.

  prompt_mode 'engine': first = floor(P_r / b) * b is prefilled with a staircase mask
    aligned to position 0; the tail P_r % b sits in block 0 as already revealed.
  prompt_mode 'aligned': the whole prompt is prefilled, staircase blocks aligned to its
    end; block 0 is all masks.

Per block (:func:`_block_body`): :func:`denoise_block`, an on-device ``while_loop`` of
at most s :func:`denoise_step` (one forward of the block against the cache, then the
strategy's reveal), then :func:`finish_block`: the cut (stop ids, max_new_tokens) and
the :func:`_commit`: 'separate' runs one more forward of the final block to write its KV;
'fused' defers that write to the next block's first step, whose query is [finished block
| new block]. The loop carries are typed pytrees (:class:`BlockState`, :class:`StepState`)
and the per-call constants a :class:`Context`, all passed explicitly. The settings that
only change values (threshold, entropy bound, temperature, top-p, stop ids:
``config.TRACED_FIELDS``) are a traced argument, :class:`Knobs`: the decoder is compiled
per ``DecodeConfig.static()`` and a sweep over them reuses it. The forward is a
callable argument of the steps, so the no-cache baseline (t3d_jax.bench.naive_decode)
reuses them.

Randomness is per row: ``rng`` is one key per row ([B]; a single key stands for
``fold_in(rng, r)`` of row r) and step t of block k draws with
``fold_in(fold_in(row_key, k), t)``, so at any temperature a row's tokens depend on its
own key, never on which rows share its batch (:func:`steps.row_keys`: the batched callers
derive each sequence's key from (seed, question, sample)).

Outputs: ids [B, max_new] (pad_id past each length), step_map [B, max_new] (1-based
global denoising step of each token's first reveal, 0 past the length), lengths [B],
nfe [B] (forwards run for that row: denoising steps + separate commits; the prompt
prefill is not counted, and no commit is run after a row's final block).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from t3d_jax import masks
from t3d_jax.sharding import in_mesh
from t3d_jax.models import family as families
from t3d_jax.models.sdar import KVCache, RopeTable, SDARConfig, unstack_layers, write_cache
from t3d_jax.sampling import canvas
from t3d_jax.sampling.config import (DecodeConfig, DecodeError, cache_length, check_inputs,
                                     transfer_schedule)
from t3d_jax.sampling.steps import Context, Knobs, StepState, as_row_keys, denoise_step

Array = jax.Array


class BlockState(struct.PyTreeNode):
  """Carry of the block loop. Fields in sorted order: the while_loop carry (and so the
  compiled program) is the same as that of the dict this replaced."""
  block: Array       # [B, b] block k (masks and revealed tokens)
  cache: Any         # KVCache (the naive baseline: the token buffer [B, S])
  done: Array        # [B] row finished (stop id or max_new_tokens)
  k: Array           # block index
  length: Array      # [B] tokens kept so far
  masked: Array      # [B, b] still a mask in block k
  nfe: Array         # [B] forwards run
  out_ids: Array     # [B, max_new + 2b]: column b + g holds generated token g
  out_steps: Array   # [B, max_new + 2b]
  prev: Array        # [B, b] block k - 1 (its KV is written by the fused first step)
  steps: Array       # [B] denoising steps run


def prompt_layout(dcfg: DecodeConfig, prompt_lens: Array):
  """(first [B]: prefilled length = start of block 0, offset [B]: staircase alignment)."""
  b = dcfg.block_size
  plen = prompt_lens.astype(jnp.int32)
  if dcfg.prompt_mode == "engine":
    return (plen // b) * b, jnp.zeros_like(plen)
  return plen, (-plen) % b


def _net(cfg: SDARConfig):
  """The network of ``cfg``'s model family (models/family.py): the sampler's one way to
  the model."""
  return families.of_config(cfg).network


def _prefill(params, cfg: SDARConfig, dcfg: DecodeConfig, prompt_ids, first, offset, cache,
             rope):
  """Write the KV of each row's first ``first[r]`` prompt tokens into slots 0.."""
  bsz, width = prompt_ids.shape
  if width == 0:
    return cache
  stair = jax.vmap(lambda o: masks.staircase_mask(width, dcfg.block_size, o))(offset)
  mask = stair & (jnp.arange(width)[None, :] < first[:, None])[:, None, :]
  pos = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (bsz, width))
  net = _net(cfg)
  _, kv = net.forward_with_cache(params, cfg, prompt_ids, mask, pos, net.KVCache.zeros(cfg, bsz, 0),
                                 logits_start=prompt_ids.shape[1], rope_table=rope)  # KV only
  return write_cache(cache, kv, jnp.zeros((bsz,), jnp.int32))


def _block_forward(params, cfg, rope, block, start, cache):
  """One forward of the block at positions start.. against cache slots < start."""
  b = block.shape[1]
  valid = jnp.arange(cache.length)[None, :] < start[:, None]
  pos = start[:, None] + jnp.arange(b, dtype=jnp.int32)[None, :]
  mask = masks.CacheMask.of(valid, np.ones((b, b), bool))
  return _net(cfg).forward_with_cache(params, cfg, block, mask, pos, cache, rope_table=rope)


def _fused_forward(params, cfg, rope, prev, block, start, cache):
  """Query [prev | block] at start-b..start+b: prev (finished, uncommitted) sees cache +
  itself, block sees cache + prev + itself. Returns block's logits and prev's KV."""
  b = block.shape[1]
  valid = jnp.arange(cache.length)[None, :] < (start - b)[:, None]                 # [B, S]
  q = np.arange(2 * b)
  mask = masks.CacheMask.of(valid, (q[None, :] < b) | (q[:, None] >= b))   # own [2b, 2b]
  pos = (start - b)[:, None] + jnp.arange(2 * b, dtype=jnp.int32)[None, :]
  logits, kv = _net(cfg).forward_with_cache(
      params, cfg, jnp.concatenate([prev, block], 1), mask, pos, cache,
      logits_start=b, rope_table=rope)  # no head for the commit rows
  return logits, kv.first(b)


def _no_kv(cache: KVCache, b: int) -> KVCache:
  """Zeros shaped as b tokens' KV for ``cache``: what a cond branch that writes none
  yields (the write after the cond is masked off)."""
  return jax.tree.map(lambda x: jnp.zeros(x.shape[:2] + (b,) + x.shape[3:], x.dtype), cache)


def _step_logits(params, cfg, ctx: Context, blk: BlockState, start, st: StepState):
  """The block's logits at step st.t and the cache after it: with the fused commit, the
  first step of blocks k > 0 also writes the previous block's KV.

  The cache only enters the cond as an operand that no branch returns: a branch that
  returned it (updated or not) made XLA copy the whole cache on every step. The cond
  yields prev's KV (zeros on other steps) and the write after it is masked to the fused
  steps."""
  block_forward = functools.partial(_block_forward, params, cfg, ctx.rope, st.block, start)
  plain = lambda c: block_forward(c)[0]  # noqa: E731
  if not ctx.fused:
    return plain(st.cache), st.cache
  b = st.block.shape[1]
  is_fused = (st.t == 0) & (blk.k > 0)
  fused = functools.partial(_fused_forward, params, cfg, ctx.rope, blk.prev, st.block, start)
  none = lambda c: (plain(c), _no_kv(c, b))  # noqa: E731
  logits, kv = jax.lax.cond(is_fused, fused, none, st.cache)
  return logits, write_cache(st.cache, kv, start - b,
                             rows=jnp.broadcast_to(is_fused, start.shape))


def scatter_rows(buf: Array, window: Array, offset: Array, write: Array) -> Array:
  """buf[r, offset[r] + j] = window[r, j] for rows with write[r] (no index clamping)."""
  col = jnp.arange(buf.shape[1])[None, :] - offset[:, None]
  inside = (col >= 0) & (col < window.shape[1]) & write[:, None]
  vals = jnp.take_along_axis(window, jnp.clip(col, 0, window.shape[1] - 1), axis=1)
  return jnp.where(inside, vals, buf)


def init_state(dcfg: DecodeConfig, knobs: Knobs, prompt_ids, plen, first, offset, rng, cache,
               *, fused: bool, rope: Optional[RopeTable] = None):
  """(Context, BlockState before block 0); block 0 holds the engine-mode prompt tail."""
  bsz, width = prompt_ids.shape
  b = dcfg.block_size
  j = jnp.arange(b, dtype=jnp.int32)[None, :]
  from_prompt = (first[:, None] + j) < plen[:, None]                        # engine tail
  if width:
    tail = jnp.take_along_axis(prompt_ids, jnp.clip(first[:, None] + j, 0, width - 1), 1)
  else:
    tail = jnp.zeros((bsz, b), jnp.int32)
  block0 = jnp.where(from_prompt, tail, dcfg.mask_id)
  ctx = Context(rng=rng, first=first, plen=plen, offset=offset, j=j, fused=fused, rope=rope,
                sched=jnp.asarray(transfer_schedule(b, dcfg.denoising_steps)), knobs=knobs)
  zeros = jnp.zeros((bsz,), jnp.int32)
  buf_w = dcfg.max_new_tokens + 2 * b
  blk = BlockState(k=jnp.int32(0), cache=cache, block=block0, masked=~from_prompt,
                   prev=jnp.zeros((bsz, b), jnp.int32),
                   out_ids=jnp.full((bsz, buf_w), dcfg.pad, jnp.int32),
                   out_steps=jnp.zeros((bsz, buf_w), jnp.int32), steps=zeros, nfe=zeros,
                   length=zeros, done=jnp.zeros((bsz,), bool))
  return ctx, blk


def denoise_block(dcfg: DecodeConfig, ctx: Context, blk: BlockState,
                  logits_fn: Callable) -> StepState:
  """Block k's denoising steps, as an on-device while_loop: at most s, and none once
  no unfinished row has a mask."""
  more = lambda st: (st.t < dcfg.denoising_steps) & jnp.any(~blk.done[:, None] & st.masked)
  init = StepState(t=jnp.int32(0), block=blk.block, masked=blk.masked,
                   bsteps=jnp.zeros(blk.block.shape, jnp.int32), steps=blk.steps,
                   nfe=blk.nfe, cache=blk.cache)
  return jax.lax.while_loop(more, functools.partial(denoise_step, dcfg, ctx, blk, logits_fn),
                            init)


def _commit(params, cfg, ctx: Context, start, st: StepState, done):
  """(cache, nfe) after block k. 'separate': one forward writes its KV (skipped once
  every row is done); 'fused' defers that to the next block's first step. As in
  :func:`_step_logits`, the cond yields the KV and the write after it is masked (a cond
  returning the cache copied it)."""
  if ctx.fused:
    return st.cache, st.nfe
  live = jnp.any(~done)
  block_forward = functools.partial(_block_forward, params, cfg, ctx.rope, st.block, start)
  kv = jax.lax.cond(live, lambda c: block_forward(c)[1],
                    lambda c: _no_kv(c, st.block.shape[1]), st.cache)
  cache = write_cache(st.cache, kv, start, rows=jnp.broadcast_to(live, start.shape))
  return cache, st.nfe + (~done).astype(jnp.int32)


def finish_block(dcfg: DecodeConfig, ctx: Context, blk: BlockState, start, st: StepState,
                 commit: Callable) -> BlockState:
  """Keep the denoised block up to its first stop id and max_new_tokens, scatter it into
  the outputs, ``commit(st, done) -> (cache, nfe)``, and set up block k + 1 (all masks;
  the finished block becomes prev)."""
  b, n_new, done = dcfg.block_size, dcfg.max_new_tokens, blk.done
  block, j = st.block, ctx.j
  gen = start[:, None] + j - ctx.plen[:, None]                          # generated index
  in_range = (gen >= 0) & (gen < n_new)
  is_stop = in_range & jnp.isin(block, ctx.knobs.stop_ids)
  first_stop = jnp.where(jnp.any(is_stop, -1), jnp.argmax(is_stop, -1), b)
  keep = in_range & (j <= first_stop[:, None]) & ~done[:, None]
  woff = start - ctx.plen + b
  out_ids = scatter_rows(blk.out_ids, jnp.where(keep, block, dcfg.pad), woff, ~done)
  out_steps = scatter_rows(blk.out_steps, jnp.where(keep, st.bsteps, 0), woff, ~done)
  length = blk.length + jnp.sum(keep, axis=-1, dtype=jnp.int32)
  new_done = done | jnp.any(keep & is_stop, axis=-1) | (length >= n_new)
  cache, nfe = commit(st, new_done)
  return blk.replace(k=blk.k + 1, cache=cache,
                     block=jnp.full(block.shape, dcfg.mask_id, jnp.int32),
                     masked=jnp.ones(block.shape, bool), prev=block, out_ids=out_ids,
                     out_steps=out_steps, steps=st.steps, nfe=nfe, length=length,
                     done=new_done)


def _block_body(params, cfg, dcfg: DecodeConfig, ctx: Context,
                blk: BlockState) -> BlockState:
  """Denoise, cut and commit block k."""
  start = ctx.first + blk.k * dcfg.block_size
  st = denoise_block(dcfg, ctx, blk,
                     functools.partial(_step_logits, params, cfg, ctx, blk, start))
  return finish_block(dcfg, ctx, blk, start, st,
                      functools.partial(_commit, params, cfg, ctx, start))


def blocks_left(dcfg: DecodeConfig, blk: BlockState):
  """Another block while k < the static bound and a row is unfinished."""
  n_blocks = -(-(dcfg.max_new_tokens + dcfg.block_size - 1) // dcfg.block_size)
  return (blk.k < n_blocks) & jnp.any(~blk.done)


def decode_outputs(dcfg: DecodeConfig, blk: BlockState) -> dict:
  """The result dict (see the module docstring) of the final state."""
  b, n_new = dcfg.block_size, dcfg.max_new_tokens
  return dict(ids=blk.out_ids[:, b:b + n_new], step_map=blk.out_steps[:, b:b + n_new],
              lengths=blk.length, nfe=blk.nfe)


def decode_params(params, dcfg: DecodeConfig, mesh: Optional[Mesh] = None):
  """``params`` in the layout the decoder runs, made once for many decoding calls: with
  ``dcfg.unroll_layers`` the stacked layers split per layer (:func:`unstack_layers`),
  replicated on ``mesh`` as the decoder takes them. A decoder given stacked params
  splits them inside every call: a copy of every layer's weights into fresh buffers per
  call. Holds a second copy of the layer weights while the result lives (the per-call
  split held one during each call)."""
  if not dcfg.unroll_layers or "layers" not in params:
    return params
  out = None if mesh is None else NamedSharding(mesh, PartitionSpec())
  return jax.jit(unstack_layers, out_shardings=out)(params)


def _generate(params, prompt_ids: Array, prompt_lens: Array, rng: Array, knobs: Knobs, *,
              cfg: SDARConfig, dcfg: DecodeConfig) -> dict:
  """Traceable core of :func:`generate` (see the module docstring)."""
  bsz, width = prompt_ids.shape
  if dcfg.unroll_layers:  # split once per call (no-op on decode_params' output): no
    params = unstack_layers(params)  # per-forward copy of the layer weights
  prompt_ids = prompt_ids.astype(jnp.int32)
  plen = prompt_lens.astype(jnp.int32)
  first, offset = prompt_layout(dcfg, plen)
  length = cache_length(dcfg, width)
  net = _net(cfg)
  rope = net.RopeTable.of(cfg, length)  # once, outside the loops (slot i = position i)
  cache = _prefill(params, cfg, dcfg, prompt_ids, first, offset,
                   net.KVCache.zeros(cfg, bsz, length), rope)
  ctx, blk = init_state(dcfg, knobs, prompt_ids, plen, first, offset, rng, cache,
                        fused=dcfg.commit_mode == "fused", rope=rope)
  blk = jax.lax.while_loop(functools.partial(blocks_left, dcfg),
                           functools.partial(_block_body, params, cfg, dcfg, ctx), blk)
  return decode_outputs(dcfg, blk)


# the decoder of each attention regime (Family.attention): the one place that chooses
CORES = {"block_causal": _generate, "bidirectional": canvas.generate_core}


class CompiledDecoder:
  """``core(params, prompt_ids, prompt_lens, rng, knobs) -> dict`` jitted behind eager
  input checks (see :func:`make_generate`); shared with the benchmark's naive decoder.
  ``knobs``: ``dcfg``'s traced fields, the default of every call; ``core`` sees
  ``dcfg.static()``. Call it, or :meth:`lower` it for cost analysis / AOT compilation."""

  def __init__(self, core: Callable, cfg: SDARConfig, dcfg: DecodeConfig,
               mesh: Optional[Mesh] = None, data_axis: str = "data", param_sharding=None):
    dcfg.validate(cfg.vocab_size)
    self.family = families.of_config(cfg)
    if self.family.attention == "bidirectional":
      canvas.check_canvas(dcfg)
    elif dcfg.cache != "none":
      raise DecodeError(f"cache={dcfg.cache!r}: Fast-dLLM's caches are for bidirectional "
                        f"families; {self.family.name}'s KV cache is exact (cache='none')")
    self.cfg, self.dcfg, self.mesh, self.data_axis = cfg, dcfg, mesh, data_axis
    self.knobs = Knobs.of(dcfg)
    if mesh is None:
      self._jitted, self._n_data, self._rows = jax.jit(core), 1, None
      return
    if data_axis not in mesh.axis_names:
      raise DecodeError(f"mesh has no axis {data_axis!r} (axes {mesh.axis_names})")
    self._n_data = mesh.shape[data_axis]
    self._rows = NamedSharding(mesh, PartitionSpec(data_axis))
    rep = NamedSharding(mesh, PartitionSpec())
    self._jitted = jax.jit(core, in_shardings=(
        rep if param_sharding is None else param_sharding, self._rows, self._rows,
        self._rows, rep), out_shardings=self._rows)

  def row_args(self, ids, lens, rng):
    """(ids, lens, [B] keys) placed as the executable takes them: a committed array with
    another sharding (keys derived under a mesh context are replicated) is moved, not
    refused by jit."""
    keys = as_row_keys(rng, ids.shape[0])
    return (ids, lens, keys) if self.mesh is None else jax.device_put((ids, lens, keys),
                                                                      self._rows)

  def __call__(self, params, prompt_ids, prompt_lens, rng,
               knobs: Optional[Knobs] = None) -> dict:
    check_inputs(self.dcfg, self.cfg.vocab_size, prompt_ids, prompt_lens)
    if self.family.prediction_offset and np.size(prompt_lens) and np.min(prompt_lens) < 1:
      raise DecodeError(f"{self.family.name} reads each prediction from the position "
                        "before it: every prompt needs at least one token")
    if prompt_ids.shape[0] % self._n_data:
      raise DecodeError(f"batch {prompt_ids.shape[0]} is not a multiple of the mesh's "
                        f"{self.data_axis!r} axis ({self._n_data})")
    args = self.row_args(prompt_ids, prompt_lens, rng)
    with in_mesh(self.mesh):  # the attention kernel runs per shard on it
      return self._jitted(params, *args, self.knobs if knobs is None else knobs)

  def lower_shapes(self, params, ids, lens, keys, knobs):
    """Lower for shapes alone (``jax.ShapeDtypeStruct``\ s carrying their shardings, e.g.
    over a TPU topology's devices for an ahead-of-time memory analysis): ``keys`` [B]."""
    with in_mesh(self.mesh):
      return self._jitted.lower(params, ids, lens, keys, knobs)

  def lower(self, params, ids, lens, rng, knobs=None):
    """For cost analysis / AOT compilation: the executable takes [B] row keys and knobs."""
    args = self.row_args(ids, lens, rng)
    with in_mesh(self.mesh):
      return self._jitted.lower(params, *args, self.knobs if knobs is None else knobs)


def make_generate(cfg: SDARConfig, dcfg: DecodeConfig, mesh: Optional[Mesh] = None,
                  data_axis: str = "data", param_sharding=None):
  """Compile-once decoder ``fn(params, prompt_ids [B, P], prompt_lens [B], rng,
  knobs=None) -> dict``: ``knobs`` (:class:`Knobs`, default ``Knobs.of(dcfg)``) sets the
  traced fields without recompiling, for any config with the same ``dcfg.static()``.

  With ``mesh`` the batch is sharded over ``data_axis`` (B must be a multiple of its
  size); params are replicated unless ``param_sharding`` (a sharding or a pytree of
  them) says otherwise. Inputs are validated eagerly (DecodeError names the problem).
  Calling it many times with the same params: pass :func:`decode_params`' output."""
  core = CORES[families.of_config(cfg).attention]
  return CompiledDecoder(functools.partial(core, cfg=cfg, dcfg=dcfg.static()), cfg,
                         dcfg, mesh, data_axis, param_sharding)


def generate(params, cfg: SDARConfig, prompt_ids, prompt_lens, rng, dcfg: DecodeConfig,
             mesh: Optional[Mesh] = None, data_axis: str = "data") -> dict:
  """Decode right-padded prompts ``prompt_ids`` [B, P] of lengths ``prompt_lens`` [B].

  Returns {ids [B, max_new], step_map [B, max_new], lengths [B], nfe [B]} (int32). Each
  row's result is that of decoding its prompt alone. One call, compiled for it: to decode
  many times, hold :func:`make_generate`'s decoder (or a :class:`t3d_jax.sampling.Decoder`)."""
  return make_generate(cfg, dcfg, mesh, data_axis)(params, prompt_ids, prompt_lens, rng)
