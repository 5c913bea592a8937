"""The bidirectional sampler (LLaDA's semi-autoregressive ``generate``, for LLaDA and
Dream): jitted, batched, per-row keys, the traced knobs and the strategies of the
block-causal sampler, one :func:`t3d_jax.sampling.steps.denoise_step` per forward.

Layout. Each row is its prompt followed by a canvas of ``max_new_tokens`` masks (a
multiple of ``block_size``). Prompts arrive right-padded to [B, W]; here they are moved
to the right end of their W columns (left padding), so the canvas sits at the static
columns W.. of one [B, W + G] buffer, every row's prompt ends at column W - 1, and a
row's positions count from its first real token. Left pads are invalid keys for every
query (:class:`t3d_jax.masks.KeyMask`); nothing reads a pad row's output, so each row
decodes as it would alone.

Per block k (columns start = W + k*b ..): at most s forwards; each reads the logits of
the block's b positions (:attr:`Family.prediction_offset`: Dream reads position i from
the output at i - 1, so block 0's first token comes from the last prompt token, which
needs a prompt of at least one token) and reveals the strategy's positions. After the
block, a row whose block holds a stop id is done: every later block would only follow
its answer, which ends there (the published ``generate`` decodes them anyway; the tokens
up to the stop are the same, since a finished block never changes).

``decode.cache`` (Fast-dLLM's approximations; no KV cache is exact for a bidirectional
model):
  none    every forward runs over the whole sequence (exact; the published generate).
  prefix  the first step of a block runs over the whole sequence and keeps every
          position's keys and values; the later steps recompute only the canvas rows
          (query [W - offset, W + G)), attending to the kept keys of the positions before
          the block and to their own fresh keys from the block on: Fast-dLLM's prefix
          cache. (Fast-dLLM's query is the suffix from the block on; the canvas rows
          before it are computed here too, keeping one static shape, and discarded.)
  dual    as prefix, but the later steps recompute only the block (plus, for Dream, the
          position before it, whose output predicts the block's first token): kept keys
          before and after the block, fresh ones inside it (Fast-dLLM's dual cache).
"""
from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from t3d_jax import masks
from t3d_jax.models import family as families
from t3d_jax.models.sdar import KVCache, RopeTable, SDARConfig, unstack_layers
from t3d_jax.sampling.config import DecodeConfig, DecodeError, transfer_schedule
from t3d_jax.sampling.steps import Context, Knobs, StepState, denoise_step

Array = jax.Array


class Layout(struct.PyTreeNode):
  """Per-call constants: key validity and positions of the [B, W + G] buffer."""
  valid: Array        # [B, N] bool: a real token (False: a left pad)
  pos: Array          # [B, N] int32 position ids (0 at each row's first real token)
  rope: RopeTable     # cos / sin of positions 0..N-1, made once outside the loops
  width: int = struct.field(pytree_node=False)   # W: the canvas starts here
  offset: int = struct.field(pytree_node=False)  # Family.prediction_offset


class CanvasState(struct.PyTreeNode):
  """Carry of the block loop."""
  k: Array            # block index
  x: Array            # [B, N] prompt (left-padded) | canvas
  done: Array         # [B] a stop id is decoded (or every block is)
  steps: Array        # [B] denoising steps run: the step map's clock
  nfe: Array          # [B] forwards run for the row
  step_map: Array     # [B, G] global step of each canvas token's reveal (0: never)


def check_canvas(dcfg: DecodeConfig) -> None:
  """The canvas is whole blocks (a DecodeError naming both keys otherwise)."""
  if dcfg.max_new_tokens % dcfg.block_size:
    raise DecodeError(f"max_new_tokens={dcfg.max_new_tokens} is not a multiple of "
                      f"block_size={dcfg.block_size}: a bidirectional model decodes a canvas "
                      "of whole blocks")


def _forward(params, cfg, lay: Layout, ids, valid, pos, rows, cache: Optional[KVCache]):
  """(logits of ``rows`` [B, b], the KV of ``ids``) under a KeyMask over [cache | ids]."""
  net = families.of_config(cfg).network
  return net.forward_with_cache(params, cfg, ids, masks.KeyMask(valid, ids.shape[1]), pos,
                                cache, rope_table=lay.rope, logits_rows=rows)


def _rows(bsz: int, first, b: int) -> Array:
  return jnp.broadcast_to(first + jnp.arange(b, dtype=jnp.int32), (bsz, b))


def full_forward(params, cfg, lay: Layout, x, start, b: int):
  """Whole sequence: the logits predicting the block at ``start`` and every KV."""
  rows = _rows(x.shape[0], start - lay.offset, b)
  return _forward(params, cfg, lay, x, lay.valid, lay.pos, rows, None)


def prefix_forward(params, cfg, lay: Layout, x, start, b: int, kv: KVCache):
  """Fast-dLLM's prefix cache: the canvas rows (from W - offset) against the kept keys
  before ``start`` and their own from ``start`` on."""
  q0 = lay.width - lay.offset
  n, t = x.shape[1], x.shape[1] - q0
  cols = jnp.arange(n)
  keys = jnp.concatenate([lay.valid & (cols < start)[None],
                          jnp.broadcast_to(q0 + jnp.arange(t) >= start, (x.shape[0], t))], 1)
  rows = _rows(x.shape[0], start - lay.offset - q0, b)
  return _forward(params, cfg, lay, x[:, q0:], keys, lay.pos[:, q0:], rows, kv)[0]


def dual_forward(params, cfg, lay: Layout, x, start, b: int, kv: KVCache):
  """Fast-dLLM's dual cache: the block (and the position before it when the family reads
  predictions there) against the kept keys outside the block and its own fresh ones."""
  off, bsz = lay.offset, x.shape[0]
  q0, t = start - off, b + off
  cols = jnp.arange(x.shape[1])
  inside = (cols >= start) & (cols < start + b)
  keys = jnp.concatenate([lay.valid & ~inside[None],
                          jnp.broadcast_to(jnp.arange(t) >= off, (bsz, t))], 1)
  ids = jax.lax.dynamic_slice_in_dim(x, q0, t, axis=1)
  pos = jax.lax.dynamic_slice_in_dim(lay.pos, q0, t, axis=1)
  return _forward(params, cfg, lay, ids, keys, pos, _rows(bsz, 0, b), kv)[0]


_CACHED = {"prefix": prefix_forward, "dual": dual_forward}


def _block(params, cfg, dcfg: DecodeConfig, ctx: Context, lay: Layout,
           cs: CanvasState) -> CanvasState:
  """Denoise block k: at most s steps (the first over the whole sequence), then mark
  the rows whose block holds a stop id done."""
  b, s = dcfg.block_size, dcfg.denoising_steps
  start = lay.width + cs.k * b
  block = jax.lax.dynamic_slice_in_dim(cs.x, start, b, axis=1)
  put = lambda blk: jax.lax.dynamic_update_slice_in_dim(cs.x, blk, start, axis=1)  # noqa: E731
  st = StepState(t=jnp.int32(0), block=block, masked=block == dcfg.mask_id,
                 bsteps=jnp.zeros(block.shape, jnp.int32), steps=cs.steps, nfe=cs.nfe,
                 cache=None)
  more = lambda st: (st.t < s) & jnp.any(~cs.done[:, None] & st.masked)  # noqa: E731
  step = functools.partial(denoise_step, dcfg, ctx, cs)
  full = lambda st: full_forward(params, cfg, lay, put(st.block), start, b)  # noqa: E731
  if dcfg.cache == "none":
    st = jax.lax.while_loop(more, functools.partial(step, lambda st: (full(st)[0], None)), st)
  else:  # the first step keeps every KV; the later ones run against it
    st = step(full, st)
    cached = _CACHED[dcfg.cache]
    fwd = lambda st: (cached(params, cfg, lay, put(st.block), start, b, st.cache),  # noqa: E731
                      st.cache)
    st = jax.lax.while_loop(more, functools.partial(step, fwd), st)
  stop = jnp.any(jnp.isin(st.block, ctx.knobs.stop_ids), axis=-1)
  return cs.replace(k=cs.k + 1, x=put(st.block), done=cs.done | stop, steps=st.steps,
                    nfe=st.nfe, step_map=jax.lax.dynamic_update_slice_in_dim(
                        cs.step_map, st.bsteps, cs.k * b, axis=1))


def layout(cfg: SDARConfig, dcfg: DecodeConfig, prompt_ids, plen):
  """(x [B, W + G]: prompts moved to the right of their W columns, then the canvas of
  masks; the :class:`Layout`)."""
  bsz, w = prompt_ids.shape
  g = dcfg.max_new_tokens
  src = jnp.arange(w, dtype=jnp.int32)[None, :] - (w - plen)[:, None]    # prompt index
  if w:
    prompt = jnp.take_along_axis(prompt_ids, jnp.clip(src, 0, w - 1), axis=1)
  else:
    prompt = jnp.zeros((bsz, 0), jnp.int32)
  prompt = jnp.where(src >= 0, prompt, dcfg.pad)
  x = jnp.concatenate([prompt, jnp.full((bsz, g), dcfg.mask_id, jnp.int32)], 1)
  valid = jnp.concatenate([src >= 0, jnp.ones((bsz, g), bool)], 1)
  pos = jnp.maximum(jnp.arange(w + g, dtype=jnp.int32)[None, :] - (w - plen)[:, None], 0)
  return x, Layout(valid=valid, pos=pos, rope=RopeTable.of(cfg, w + g), width=w,
                   offset=families.of_config(cfg).prediction_offset)


def outputs(dcfg: DecodeConfig, knobs: Knobs, cs: CanvasState, width: int) -> dict:
  """ids / step_map [B, G] cut after each row's first stop id (pad / 0 beyond), lengths,
  nfe: the block-causal sampler's result dict."""
  g = dcfg.max_new_tokens
  canvas = cs.x[:, width:]
  is_stop = jnp.isin(canvas, knobs.stop_ids)
  last = jnp.where(jnp.any(is_stop, -1), jnp.argmax(is_stop, -1), g - 1)
  keep = jnp.arange(g)[None, :] <= last[:, None]
  return dict(ids=jnp.where(keep, canvas, dcfg.pad), step_map=jnp.where(keep, cs.step_map, 0),
              lengths=(last + 1).astype(jnp.int32), nfe=cs.nfe)


def generate_core(params, prompt_ids: Array, prompt_lens: Array, rng: Array, knobs: Knobs, *,
                  cfg: SDARConfig, dcfg: DecodeConfig) -> dict:
  """Traceable core (the block-causal sampler's signature and outputs): right-padded
  prompts [B, W] of lengths [B], one key per row."""
  if dcfg.unroll_layers:
    params = unstack_layers(params)
  b, plen = dcfg.block_size, prompt_lens.astype(jnp.int32)
  x, lay = layout(cfg, dcfg, prompt_ids.astype(jnp.int32), plen)
  bsz = x.shape[0]
  zeros = jnp.zeros((bsz,), jnp.int32)
  ctx = Context(rng=rng, first=plen, plen=plen, offset=zeros, knobs=knobs,
                sched=jnp.asarray(transfer_schedule(b, dcfg.denoising_steps)),
                j=jnp.arange(b, dtype=jnp.int32)[None, :], rope=None, fused=False)
  cs = CanvasState(k=jnp.int32(0), x=x, done=jnp.zeros((bsz,), bool), steps=zeros, nfe=zeros,
                   step_map=jnp.zeros((bsz, dcfg.max_new_tokens), jnp.int32))
  n_blocks = dcfg.max_new_tokens // b
  cs = jax.lax.while_loop(lambda cs: (cs.k < n_blocks) & jnp.any(~cs.done),
                          functools.partial(_block, params, cfg, dcfg, ctx, lay), cs)
  return outputs(dcfg, knobs, cs, lay.width)
