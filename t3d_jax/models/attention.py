"""Attention implementations behind one call, selected by ``SDARConfig.attention``.

  dense   masked softmax over materialised scores (the reference; CPU default). A
          :class:`t3d_jax.masks.LayoutMask` lets it skip the score blocks the T3D layout
          hides (``dense_layout``); a decode block is scored against the head-major
          cache and itself apart, so no [cache | block] key tensor is built
          (``dense_cached``).
  splash  the block-sparse Pallas kernel (``jax.experimental.pallas.ops.tpu.
          splash_attention``): the mask's static pattern (the layout's block structure,
          or the decode query's own-block pattern) becomes the kernel's block-sparse mask,
          the per-row part (left-padded prompts, cache slots not yet written) becomes
          SegmentIds. Lowered for TPU it is the Mosaic kernel; lowered for anything else
          it runs in Pallas interpret mode (slow; for tests).
  cudnn   ``jax.nn.dot_product_attention``: cuDNN's fused flash attention on a GPU (no
          [B, H, T, S] score tensor; the mask rides in as an additive [B, 1, T, S] bias, so
          hidden blocks are still computed), XLA's implementation of the same call
          elsewhere (for tests). cuDNN takes bf16/fp16, head_dim <= 128 and a multiple of
          8, and even query/key lengths with a bias (:func:`cudnn_unsupported`); an
          unsupported shape or dtype is a ValueError naming it. Not yet run on a GPU by
          this project's tests (no GPU in CI), so ``auto`` does not pick it.
  auto    splash on TPU, dense elsewhere.

Only structured masks (``LayoutMask`` for training, ``CacheMask`` for block-causal
decoding, ``KeyMask`` for bidirectional decoding) can take the kernel; a plain boolean
array (prefill, tests) is always dense.

Segment semantics: a row sees a key iff the pattern allows it and both carry the same
segment id. Valid rows and keys are segment 1; prompt pads (training) and unwritten
cache slots (decode) are segment 0, so a prompt pad row sees the pad keys its pattern
allows, where the dense mask lets it see the real keys of its block (or itself). No other
row sees a pad key in either, and no loss reads a pad row: every other row is identical.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from t3d_jax.masks import CacheMask, KeyMask, LayoutMask

Array = jax.Array
KINDS = ("dense", "splash", "cudnn", "auto")
SPLASH_BLOCK = 128   # kernel tile (q and kv); sequences are padded to a multiple of it


def resolve(kind: str, backend: Optional[str] = None) -> str:
  """'auto' -> 'splash' on TPU, else 'dense'."""
  if kind not in KINDS:
    raise ValueError(f"unknown attention {kind!r}; expected one of {', '.join(KINDS)}")
  if kind == "auto":
    return "splash" if (backend or jax.default_backend()) == "tpu" else "dense"
  return kind


# ----------------------------------------------------------------------------- dense

def dense(q: Array, k: Array, v: Array, mask: Array) -> Array:
  """Masked softmax attention. q [B, T, KV, G, D], k/v [B, S, KV, D], mask [B, T, S]."""
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k).astype(jnp.float32) * (q.shape[-1] ** -0.5)
  scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bkgts,bskd->btkgd", probs, v)


def dense_noisy(q: Array, k: Array, v: Array, mask: Array, block: int) -> Array:
  """Attention of the noisy rows of a [context C | noisy] layout, when each noisy row
  sees (under ``mask``) the C context keys and the keys of its own block only.

  q [B, T, KV, G, D] the T noisy rows; k/v [B, C+T, KV, D]; mask [B, T, C+T]. Scores are
  computed against the context and the own block ([T, C + block] instead of [T, C+T]);
  a partial last block is padded with masked rows and keys."""
  b, t, kv, g, d = q.shape
  ctx = k.shape[1] - t
  nb = -(-t // block)
  pad = nb * block - t
  if pad:
    q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0), (0, 0)))
    k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
    mask = jnp.pad(mask, ((0, 0), (0, pad), (0, pad)))
  qb = q.reshape(b, nb, block, kv, g, d)
  k_own = k[:, ctx:].reshape(b, nb, block, kv, d)
  v_own = v[:, ctx:].reshape(b, nb, block, kv, d)
  m_ctx = mask[:, :, :ctx].reshape(b, nb, block, ctx)
  m_own = jnp.diagonal(mask[:, :, ctx:].reshape(b, nb, block, nb, block), axis1=1, axis2=3)
  m_own = jnp.moveaxis(m_own, -1, 1)                                    # [B, NB, bs, bs]
  scores = jnp.concatenate([jnp.einsum("bntkgd,bskd->bnkgts", qb, k[:, :ctx]),
                            jnp.einsum("bntkgd,bnskd->bnkgts", qb, k_own)], -1)
  scores = scores.astype(jnp.float32) * (d ** -0.5)
  m = jnp.concatenate([m_ctx, m_own], -1)[:, :, None, None]            # [B, NB, 1, 1, bs, C+bs]
  scores = jnp.where(m, scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = (jnp.einsum("bnkgts,bskd->bntkgd", probs[..., :ctx], v[:, :ctx])
         + jnp.einsum("bnkgts,bnskd->bntkgd", probs[..., ctx:], v_own))
  return out.reshape(b, nb * block, kv, g, d)[:, :t]


def dense_cached(q: Array, k: Array, v: Array, cache_k: Array, cache_v: Array,
                 mask: CacheMask) -> Array:
  """Decode attention of a query block against [cache | the block itself] without
  building the concatenated keys: q [B, T, KV, G, D], k/v [B, T, KV, D] (the block's),
  cache_k/v [B, KV, S, D] (the cache's head-major layout, read as stored). The two score
  blocks are joined (a [.., T, S+T] f32 tensor, far smaller than the keys) for one
  softmax, whose probabilities are split again for two value products. Equals ``dense``
  on the concatenated keys up to rounding."""
  d, n = q.shape[-1], cache_k.shape[2]
  s_cache = jnp.einsum("btkgd,bksd->bkgts", q, cache_k.astype(q.dtype))
  s_own = jnp.einsum("btkgd,bskd->bkgts", q, k)
  scores = jnp.concatenate([s_cache, s_own], -1).astype(jnp.float32) * (d ** -0.5)
  scores = jnp.where(mask.dense[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = (jnp.einsum("bkgts,bksd->bkgtd", probs[..., :n], cache_v.astype(v.dtype))
         + jnp.einsum("bkgts,bskd->bkgtd", probs[..., n:], v))
  return out.transpose(0, 3, 1, 2, 4)                                   # [B, T, KV, G, D]


def dense_layout(q: Array, k: Array, v: Array, mask: LayoutMask) -> Array:
  """Dense attention under a training layout: rows before the context end see only the
  context, each later row the context and its own block, so only those scores are made."""
  c, t = mask.context_len, q.shape[1]
  if not c or c >= t:
    return dense(q, k, v, mask.dense)
  m = mask.dense
  noisy = dense_noisy(q[:, c:], k, v, m[:, c:], mask.noisy_block)
  return jnp.concatenate([dense(q[:, :c], k[:, :c], v[:, :c], m[:, :c, :c]), noisy], 1)


# ----------------------------------------------------------------------------- splash

def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _kernel(pattern: np.ndarray, heads: int, block_q: int, block_kv: int, interpret: bool):
  """The splash kernel of one static [T, S] pattern (padded to the tiles), all heads alike.
  Built per trace (its mask info is a traced constant); splash caches the numpy mask
  processing itself."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa
  mask = sa.MultiHeadMask([sa.NumpyMask(pattern)] * heads)
  sizes = sa.BlockSizes(block_q=block_q, block_kv=block_kv, block_kv_compute=block_kv,
                        block_q_dkv=block_q, block_kv_dkv=block_kv,
                        block_kv_dkv_compute=block_kv, block_q_dq=block_q, block_kv_dq=block_kv)
  return sa.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1,
                            interpret=interpret)


def splash(q: Array, k: Array, v: Array, pattern: np.ndarray, q_seg: Array, kv_seg: Array, *,
           block: int = SPLASH_BLOCK, interpret: Optional[bool] = None) -> Array:
  """Block-sparse attention: row t sees key s iff pattern[t, s] and q_seg[b, t] ==
  kv_seg[b, s]. q [B, T, KV, G, D], k/v [B, S, KV, D]; pattern [T, S] numpy bool
  (static); q_seg [B, T], kv_seg [B, S] int32. Every row must see at least one key.

  T and S are padded to whole tiles (min(block, T rounded to 8) rows, ``block`` keys):
  pad rows see only pad keys (segment -1) and are dropped. On a mesh the kernel runs per
  shard: batch over the data axes, heads over 'tensor' (:func:`_sharded`)."""
  b, t, kv, g, d = q.shape
  s = k.shape[1]
  bq = min(block, _round_up(t, 8))
  tp, sp = _round_up(t, bq), _round_up(s, block)
  pat = np.zeros((tp, sp), bool)
  pat[:t, :s] = pattern
  pat[t:, s:] = True
  seg_q = jnp.pad(q_seg.astype(jnp.int32), ((0, 0), (0, tp - t)), constant_values=-1)
  seg_kv = jnp.pad(kv_seg.astype(jnp.int32), ((0, 0), (0, sp - s)), constant_values=-1)
  if tp > t and sp == s:  # pad rows need a pad key of their own
    sp += block
    pat = np.pad(pat, ((0, 0), (0, block)))
    pat[t:, s:] = True
    seg_kv = jnp.pad(seg_kv, ((0, 0), (0, block)), constant_values=-1)
  scale = d ** -0.5
  qh = jnp.pad(q * jnp.asarray(scale, q.dtype), ((0, 0), (0, tp - t), (0, 0), (0, 0), (0, 0)))
  qh = qh.reshape(b, tp, kv * g, d).transpose(0, 2, 1, 3)               # [B, H, T, D]
  kh = jnp.pad(k, ((0, 0), (0, sp - s), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  vh = jnp.pad(v, ((0, 0), (0, sp - s), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
  run = lambda interp: _sharded(_kernel(pat, kv * g, bq, block, interp),  # noqa: E731
                                qh, kh, vh, seg_q, seg_kv)
  if interpret is None:  # Mosaic where the program is lowered for TPU (also AOT from a
    out = jax.lax.platform_dependent(tpu=lambda: run(False), default=lambda: run(True))
  else:                  # CPU host), interpret mode elsewhere
    out = run(interpret)
  return out.transpose(0, 2, 1, 3)[:, :t].reshape(b, t, kv, g, d)


def _sharded(kernel, q, k, v, seg_q, seg_kv):
  """vmap the per-example kernel over the batch; inside a mesh context (``jax.set_mesh``)
  run it per shard with shard_map (batch over data/fsdp, heads over tensor when both
  head counts divide), as a Pallas call cannot be split by XLA's partitioner."""
  from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds
  from jax.sharding import PartitionSpec as P

  def run(q, k, v, sq, skv):
    return jax.vmap(lambda *a: kernel(*a[:3], segment_ids=SegmentIds(a[3], a[4])))(
        q, k, v, sq, skv)
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return run(q, k, v, seg_q, seg_kv)
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  data = tuple(a for a in ("data", "fsdp") if sizes.get(a, 1) > 1)
  data = data if data and q.shape[0] % int(np.prod([sizes[a] for a in data])) == 0 else ()
  ts = sizes.get("tensor", 1)
  heads = "tensor" if ts > 1 and q.shape[1] % ts == 0 and k.shape[1] % ts == 0 else None
  batch = data or None
  spec, seg = P(batch, heads, None, None), P(batch, None)
  return jax.shard_map(run, mesh=mesh, in_specs=(spec, spec, spec, seg, seg), out_specs=spec,
                       check_vma=False)(q, k, v, seg_q, seg_kv)


# ----------------------------------------------------------------------------- cudnn

CUDNN_DTYPES = ("bfloat16", "float16")


def cudnn_unsupported(dtype, head_dim: int, t: int, s: int) -> Optional[str]:
  """Why cuDNN's flash attention cannot take this call (None if it can): its bf16/fp16
  conditions in ``jax._src.cudnn.fused_attention_stablehlo.check_is_flash_attention``
  for pre-Hopper GPUs (head_dim <= 128) with a bias (even lengths)."""
  if jnp.dtype(dtype).name not in CUDNN_DTYPES:
    return f"dtype {jnp.dtype(dtype).name} (cuDNN takes {' or '.join(CUDNN_DTYPES)})"
  if head_dim > 128 or head_dim % 8:
    return f"head_dim {head_dim} (cuDNN takes <= 128, a multiple of 8)"
  if t % 2 or s % 2:
    return f"{t} queries x {s} keys (cuDNN takes even lengths with a mask)"
  return None


def cudnn(q: Array, k: Array, v: Array, mask: Array, *,
          implementation: Optional[str] = None) -> Array:
  """q [B, T, KV, G, D], k/v [B, S, KV, D], mask [B, T, S] through
  ``jax.nn.dot_product_attention`` (grouped heads: query head kv * G + g reads kv head kv,
  as here). ``implementation``: 'cudnn' on a GPU backend, 'xla' elsewhere, unless given."""
  b, t, kv, g, d = q.shape
  if implementation is None:
    implementation = "cudnn" if jax.default_backend() == "gpu" else "xla"
  if implementation == "cudnn":
    why = cudnn_unsupported(q.dtype, d, t, k.shape[1])
    if why:
      raise ValueError(f"attention 'cudnn' cannot take {why}; use 'dense'")
  out = jax.nn.dot_product_attention(q.reshape(b, t, kv * g, d), k, v, mask=mask[:, None],
                                     implementation=implementation)
  return out.reshape(b, t, kv, g, d)


# ----------------------------------------------------------------------------- dispatch

def attend(q: Array, k: Array, v: Array, mask, kind: str, cache=None) -> Array:
  """q [B, T, KV, G, D], k/v [B, T', KV, D] under ``mask``: a bool array [B, T, T'], a
  :class:`LayoutMask` (training, no cache), a :class:`KeyMask` (bidirectional: every valid
  key, with or without a cache) or a :class:`CacheMask` (decode: the query
  block against [cache | itself], with ``cache`` = (k, v) [B, KV, S, D] of the committed
  tokens, head-major as stored, and k/v the block's own); ``kind`` from :data:`KINDS`."""
  kind = resolve(kind)
  if cache is not None:
    if kind == "dense" and isinstance(mask, (CacheMask, KeyMask)):
      return dense_cached(q, k, v, cache[0], cache[1], mask)
    k = jnp.concatenate([cache[0].transpose(0, 2, 1, 3).astype(k.dtype), k], axis=1)
    v = jnp.concatenate([cache[1].transpose(0, 2, 1, 3).astype(v.dtype), v], axis=1)
  if kind == "cudnn":
    return cudnn(q, k, v, mask.dense if isinstance(mask, (LayoutMask, CacheMask, KeyMask))
                 else mask)
  if isinstance(mask, LayoutMask):
    if kind == "splash":
      return splash(q, k, v, mask.pattern, mask.segments, mask.segments)
    return dense_layout(q, k, v, mask)
  if isinstance(mask, (CacheMask, KeyMask)):
    if kind == "splash":
      b, t = q.shape[:2]
      return splash(q, k, v, mask.pattern, jnp.ones((b, t), jnp.int32), mask.segments)
    return dense(q, k, v, mask.dense)
  return dense(q, k, v, mask)
