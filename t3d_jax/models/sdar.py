"""SDAR: the Qwen3 decoder in Flax (linen), with explicit attention masks and positions.

SDAR is a block-diffusion LM whose network is exactly Qwen3; only the attention mask
differs, and logit i predicts the token AT position i (no shift). The model therefore
never builds a mask itself: callers pass a boolean mask (True = may attend) and the
position ids, so training masks, prefill and KV-cache decoding all share one network.

Layers are stacked (``nn.scan``) so params carry a leading ``layers`` axis and the
compile time does not grow with depth; the sampler splits them per layer
(:func:`unstack_layers`) and runs them unrolled, which saves a copy of the layer weights
per forward. Every param carries logical axis names
(``vocab``, ``embed``, ``heads``, ``kv_heads``, ``head_dim``, ``mlp``, ``norm``,
``layers``) that sharding rules map onto mesh axes.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from t3d_jax.dtypes import as_dtype
from t3d_jax.masks import CacheMask, KeyMask, LayoutMask
from t3d_jax.models import attention

Array = jax.Array

# What each layer keeps for its backward pass (``SDARConfig.remat``):
#   none: every intermediate (no recomputation);
#   dots: the matmul outputs only; norms, RoPE, softmax and SwiGLU are recomputed: less
#         to write and read back per layer, so no slower than none on CPU and 19% less
#         temporary memory in the T3D step (README, Benchmarks);
#   full: the layer's input only; the whole layer is recomputed (least memory).
REMAT = {"none": None, "dots": "dots_saveable", "full": "nothing_saveable"}


def check_numerics(dtype: str, param_dtype: str, remat: Any, kernel: str) -> str:
  """Raises ValueError for a dtype, remat policy or attention kernel that does not exist
  (or cudnn at a dtype it does not take); returns the remat policy's name (bools
  accepted: False = none, True = full)."""
  as_dtype(dtype), as_dtype(param_dtype)
  name = {False: "none", True: "full"}.get(remat, remat)
  if name not in REMAT:
    raise ValueError(f"unknown remat {remat!r}; expected one of {sorted(REMAT)}")
  attention.resolve(kernel, backend="cpu")  # validates
  if kernel == "cudnn" and jnp.dtype(as_dtype(dtype)).name not in attention.CUDNN_DTYPES:
    raise ValueError(f"attention 'cudnn' needs dtype {' or '.join(attention.CUDNN_DTYPES)}, "
                     f"got {dtype}")
  return name


SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
         "num_kv_heads", "head_dim")


def check_sizes(cfg) -> None:
  """ValueError naming the first field a network cannot be built from: a size that is
  no positive integer, a RoPE base or norm epsilon that is no finite positive number (a
  NaN there is a NaN model), a flag that is no bool, a mask id outside the vocabulary."""
  for f in SIZES:
    v = getattr(cfg, f)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
      raise ValueError(f"{f}={v!r} must be a positive integer")
  for f in ("rope_theta", "rms_norm_eps"):
    v = getattr(cfg, f)
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 < v < math.inf:
      raise ValueError(f"{f}={v!r} must be a finite number > 0")
  for f in ("tie_word_embeddings", "attention_bias"):
    if not isinstance(getattr(cfg, f), bool):
      raise ValueError(f"{f}={getattr(cfg, f)!r} must be true or false")
  m = cfg.mask_token_id
  if m is not None and (isinstance(m, bool) or not isinstance(m, numbers.Integral)
                        or not 0 <= m < cfg.vocab_size):
    raise ValueError(f"mask_token_id={m!r} must be an id in [0, vocab_size={cfg.vocab_size})")


@dataclasses.dataclass(frozen=True)
class SDARConfig:
  """Architecture plus numerics. Hashable, so it can be a static jit argument.

  The class-level flags are what a family's layers fix (not fields: a model dir records
  its family, whose config class carries them): Qwen3 (SDAR) normalises q and k per head
  and, with ``attention_bias``, biases q, k, v and o; LLaDA (LLaMA layers) and Dream
  (Qwen2 layers) have no q/k norm and bias q, k and v only (models/llada.py, dream.py)."""
  QK_NORM: ClassVar[bool] = True   # RMSNorm of q and k per head before RoPE
  O_BIAS: ClassVar[bool] = True    # attention_bias also biases the output projection
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 1_000_000.0
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  attention_bias: bool = False
  dtype: str = "float32"        # compute dtype
  param_dtype: str = "float32"  # storage dtype of the params
  remat: Any = "none"           # what a layer's backward recomputes (REMAT; bools accepted)
  attention: str = "dense"      # kernel: dense | splash | cudnn | auto (models/attention.py)
  mask_token_id: Optional[int] = None  # the checkpoint's own mask id (LLaDA, Dream config.json)

  def __post_init__(self):
    check_sizes(self)
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads={self.num_heads} is not a multiple of "
                       f"num_kv_heads={self.num_kv_heads}")
    object.__setattr__(self, "remat", check_numerics(self.dtype, self.param_dtype,
                                                     self.remat, self.attention))

  def replace(self, **kw) -> "SDARConfig":
    return dataclasses.replace(self, **kw)


class KVCache(NamedTuple):
  """Keys/values of committed tokens: per layer, one [batch, kv_heads, length, head_dim]
  array (``k[i]``, ``v[i]``).

  One buffer per layer: layer i reads its keys as they are stored. A stacked
  [layers, ...] cache made XLA:CPU copy every layer's slice out of it on every forward (at
  batch 16 and 580 slots, 13 ms of a 67 ms forward, growing with the length). Head-major,
  as attention reads them: the score and value products take [B, KV, S, D] as stored, and
  the splash kernel takes the same layout."""
  k: tuple
  v: tuple

  @classmethod
  def zeros(cls, cfg: SDARConfig, batch: int, length: int) -> "KVCache":
    z = jnp.zeros((batch, cfg.num_kv_heads, length, cfg.head_dim), as_dtype(cfg.dtype))
    return cls((z,) * cfg.num_layers, (z,) * cfg.num_layers)

  @classmethod
  def of_stacked(cls, k: Array, v: Array) -> "KVCache":
    """From [layers, batch, kv_heads, length, head_dim] arrays."""
    return cls(tuple(k), tuple(v))

  @property
  def length(self) -> int:
    return self.k[0].shape[2]

  def first(self, count: int) -> "KVCache":
    """The first ``count`` slots of every layer."""
    return jax.tree.map(lambda x: x[:, :, :count], self)


def _param(module: nn.Module, name: str, shape, names, init, cfg: SDARConfig):
  return module.param(name, nn.with_logical_partitioning(init, names), shape,
                      as_dtype(cfg.param_dtype))


class RMSNorm(nn.Module):
  cfg: SDARConfig
  dim: int
  names: tuple = ("norm",)

  @nn.compact
  def __call__(self, x):
    w = _param(self, "scale", (self.dim,), self.names, nn.initializers.ones, self.cfg)
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.cfg.rms_norm_eps)
    return w.astype(x.dtype) * y.astype(x.dtype)


def rope_tables(positions: Array, d: int, theta: float) -> tuple[Array, Array]:
  """(cos, sin) [B, T, 1, d] float32 of rotate-half RoPE at positions [B, T], made once
  per forward for all layers."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq          # [B, T, D/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]        # [B, T, 1, D]
  return jnp.cos(emb), jnp.sin(emb)


class RopeTable(NamedTuple):
  """cos and sin [length, head_dim] of positions 0..length-1, for a decoder to make once
  per call outside its loops (:meth:`of`) and pass to every forward (``rope_table=``).

  Made inside a forward, the cos and sin are fused by XLA:CPU into each layer's q and k
  computation and evaluated per head and layer (a batch-16 decoding forward: 1.4 ms of
  op time in those fusions); read from a table made outside the loop they are loads."""
  cos: Array
  sin: Array

  @classmethod
  def of(cls, cfg: "SDARConfig", length: int) -> "RopeTable":
    pos = jnp.arange(length, dtype=jnp.int32)[None]
    cos, sin = rope_tables(pos, cfg.head_dim, cfg.rope_theta)
    return cls(cos[0, :, 0], sin[0, :, 0])

  def at(self, positions: Array) -> tuple[Array, Array]:
    """The :func:`rope_tables` of positions [B, T] (each < length)."""
    return tuple(jnp.take(t, positions, axis=0)[:, :, None] for t in self)


def rope(x: Array, tables: tuple[Array, Array]) -> Array:
  """Rotate-half RoPE (as transformers' Qwen3). x [B, T, H, D], tables of
  :func:`rope_tables`."""
  cos, sin = tables
  d = x.shape[-1]
  x32 = x.astype(jnp.float32)
  rot = jnp.concatenate([-x32[..., d // 2:], x32[..., : d // 2]], axis=-1)
  return (x32 * cos + rot * sin).astype(x.dtype)


class Attention(nn.Module):
  """Self-attention with QK-norm (``cfg.QK_NORM``) and RoPE (``rot``: :func:`rope_tables`);
  the kernel (``cfg.attention``) and the mask (a bool array or a structured mask of
  :mod:`t3d_jax.masks`) go to :func:`t3d_jax.models.attention.attend`. Every row must see
  at least one key."""
  cfg: SDARConfig

  def _proj(self, x, name, heads, head_names):
    cfg = self.cfg
    init = nn.initializers.normal(0.02)
    w = _param(self, f"{name}_kernel", (cfg.hidden_size, heads, cfg.head_dim),
               ("embed", head_names, "head_dim"), init, cfg)
    y = jnp.einsum("btd,dhk->bthk", x, w.astype(x.dtype))
    if cfg.attention_bias:
      b = _param(self, f"{name}_bias", (heads, cfg.head_dim), (head_names, "head_dim"),
                 nn.initializers.zeros, cfg)
      y = y + b.astype(x.dtype)
    return y

  @nn.compact
  def __call__(self, x, mask, rot, cache_kv):
    cfg = self.cfg
    q = self._proj(x, "q", cfg.num_heads, "heads")
    k = self._proj(x, "k", cfg.num_kv_heads, "kv_heads")
    v = self._proj(x, "v", cfg.num_kv_heads, "kv_heads")
    if cfg.QK_NORM:
      q = RMSNorm(cfg, cfg.head_dim, ("head_dim",), name="q_norm")(q)
      k = RMSNorm(cfg, cfg.head_dim, ("head_dim",), name="k_norm")(k)
    q = rope(q, rot)
    k = rope(k, rot)
    b, t, _, d = q.shape
    g = cfg.num_heads // cfg.num_kv_heads
    q = q.reshape(b, t, cfg.num_kv_heads, g, d)
    out = attention.attend(q, k, v, mask, cfg.attention, cache=cache_kv)
    out = out.reshape(b, t, cfg.num_heads, d)
    wo = _param(self, "o_kernel", (cfg.num_heads, d, cfg.hidden_size),
                ("heads", "head_dim", "embed"), nn.initializers.normal(0.02), cfg)
    y = jnp.einsum("bthk,hkd->btd", out, wo.astype(out.dtype))
    if cfg.attention_bias and cfg.O_BIAS:
      y = y + _param(self, "o_bias", (cfg.hidden_size,), ("embed",), nn.initializers.zeros,
                     cfg).astype(y.dtype)
    return y, (k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))  # [B, KV, T, D]


class MLP(nn.Module):
  cfg: SDARConfig

  @nn.compact
  def __call__(self, x):
    cfg, init = self.cfg, nn.initializers.normal(0.02)
    shape, names = (cfg.hidden_size, cfg.intermediate_size), ("embed", "mlp")
    gate = _param(self, "gate_kernel", shape, names, init, cfg)
    up = _param(self, "up_kernel", shape, names, init, cfg)
    down = _param(self, "down_kernel", shape[::-1], names[::-1], init, cfg)
    h = jax.nn.silu(x @ gate.astype(x.dtype)) * (x @ up.astype(x.dtype))
    return h @ down.astype(x.dtype)


class Block(nn.Module):
  """One pre-norm decoder layer; scanned over the layer axis."""
  cfg: SDARConfig

  @nn.compact
  def __call__(self, x, cache_kv, mask, rot):
    cfg = self.cfg
    h, new_kv = Attention(cfg, name="attn")(
        RMSNorm(cfg, cfg.hidden_size, name="input_norm")(x), mask, rot, cache_kv)
    x = x + h
    x = x + MLP(cfg, name="mlp")(RMSNorm(cfg, cfg.hidden_size, name="post_attn_norm")(x))
    return x, new_kv


class SDAR(nn.Module):
  """The network. ``unrolled``: the layers are separate modules ``layer_0``.. instead of
  one scanned ``layers`` (the decode layout, :func:`unstack_layers`)."""
  cfg: SDARConfig
  unrolled: bool = False

  @nn.compact
  def __call__(self, ids, mask, positions, cache: Optional[KVCache] = None,
               logits_start: int = 0, rope_table: Optional[RopeTable] = None,
               logits_rows: Optional[Array] = None):
    """ids [B, T] int; mask [B, T, S+T] (or [T, S+T]) bool, a
    :class:`t3d_jax.masks.LayoutMask` (no cache) or a :class:`t3d_jax.masks.CacheMask`
    (with a cache); positions [B, T].

    Without a cache S = 0. Returns (logits [B, T - logits_start, V] of the rows from
    ``logits_start`` on, KVCache of the T new tokens). A static ``logits_start`` skips
    the head for rows whose logits are not needed (prefill, a fused commit block);
    ``logits_rows`` [B, n] (traced) instead gives logits of those rows only (a
    bidirectional decoder reads one block of a whole-sequence forward). The structured
    masks let attention skip the score blocks they hide (dense) or take the block-sparse
    kernel (``cfg.attention``; :mod:`t3d_jax.models.attention`); a
    :class:`t3d_jax.masks.KeyMask` lets every row see every valid key (bidirectional).
    """
    cfg = self.cfg
    if isinstance(mask, LayoutMask):
      if cache is not None or mask.dense.shape[-2] != ids.shape[1]:
        raise ValueError(f"a LayoutMask needs no cache and {ids.shape[1]} rows, got "
                         f"{mask.dense.shape} with cache={cache is not None}")
    elif isinstance(mask, CacheMask):
      if cache is None or len(mask.own) != ids.shape[1]:
        raise ValueError(f"a CacheMask needs a cache and {ids.shape[1]} rows, got "
                         f"{len(mask.own)} with cache={cache is not None}")
    elif isinstance(mask, KeyMask):
      if mask.rows != ids.shape[1]:
        raise ValueError(f"a KeyMask of {mask.rows} rows for {ids.shape[1]} query rows")
    elif mask.ndim == 2:
      mask = jnp.broadcast_to(mask, (ids.shape[0],) + mask.shape)
    dtype = as_dtype(cfg.dtype)
    table = _param(self, "embedding", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"),
                   nn.initializers.normal(0.02), cfg)
    x = jnp.take(table, ids, axis=0).astype(dtype)
    rot = (rope_tables(positions, cfg.head_dim, cfg.rope_theta) if rope_table is None
           else rope_table.at(positions))
    policy = REMAT[cfg.remat]
    block = (Block if policy is None else
             nn.remat(Block, prevent_cse=False, policy=getattr(jax.checkpoint_policies, policy)))
    if self.unrolled:
      kvs = []
      for i in range(cfg.num_layers):
        x, kv = block(cfg, name=f"layer_{i}")(
            x, None if cache is None else (cache.k[i], cache.v[i]), mask, rot)
        kvs.append(kv)
      new = KVCache(*zip(*kvs))
    else:
      layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(0, nn.broadcast, nn.broadcast), length=cfg.num_layers,
                       metadata_params={nn.PARTITION_NAME: "layers"})
      # the scan takes the cache stacked: one copy of it per forward (the unrolled layout
      # reads each layer's buffer in place)
      cache_kv = None if cache is None else (jnp.stack(cache.k), jnp.stack(cache.v))
      x, (k, v) = layers(cfg, name="layers")(x, cache_kv, mask, rot)
      new = KVCache.of_stacked(k, v)
    x = x[:, logits_start:] if logits_rows is None else jnp.take_along_axis(
        x, logits_rows[..., None], axis=1)
    x = RMSNorm(cfg, cfg.hidden_size, name="final_norm")(x)
    if cfg.tie_word_embeddings:
      logits = x @ table.astype(dtype).T
    else:
      head = _param(self, "lm_head", (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"),
                    nn.initializers.normal(0.02), cfg)
      logits = x @ head.astype(dtype)
    return logits, new


def init_params(cfg: SDARConfig, rng: Array, boxed: bool = False):
  """Random params (plain arrays; ``boxed=True`` keeps the logical-axis metadata)."""
  ids = jnp.zeros((1, 1), jnp.int32)
  variables = SDAR(cfg).init(rng, ids, jnp.ones((1, 1, 1), bool), ids)
  return variables["params"] if boxed else nn.unbox(variables["params"])


def abstract_params(cfg: SDARConfig):
  """ShapeDtypeStructs of the params, boxed with logical axis names (no allocation)."""
  return jax.eval_shape(lambda r: init_params(cfg, r, boxed=True), jax.random.key(0))


def logical_axes(cfg: SDARConfig):
  """Pytree of logical PartitionSpecs, one per param."""
  return nn.get_partition_spec(abstract_params(cfg))


def forward(params, cfg: SDARConfig, ids: Array, mask, positions: Array,
            logits_start: int = 0, logits_rows: Optional[Array] = None) -> Array:
  """Logits [B, T - logits_start, V] for ids [B, T] under a bool mask [B, T, T] (True =
  may attend) and position ids [B, T]. Logit i scores the token at position i; a static
  ``logits_start`` skips the final norm and head for the rows before it.

  ``mask`` may be the :class:`t3d_jax.masks.LayoutMask` of a T3D training layout
  (``TrainingLayout.attention``): attention then skips the score blocks it hides; or a
  :class:`t3d_jax.masks.KeyMask` (every row sees every valid key). ``logits_rows`` [B, n]:
  the logits of those rows only.

  The raw network output for every family: where a family reads a position's prediction
  (Dream: from the previous position) is the caller's business (``Family.prediction_offset``)."""
  return _module(cfg, params).apply({"params": params}, ids, mask, positions, None,
                                    logits_start, None, logits_rows)[0]


def unstack_layers(params) -> dict:
  """The decode layout of ``params``: the stacked ``layers`` tree [L, ...] split into
  ``layer_0``.. ``layer_{L-1}`` (static slices), for :func:`forward_with_cache`.

  A scanned layer reads its weights with a dynamic slice, which XLA materialises: every
  forward copies all layer weights once more. Decoding runs hundreds of forwards with the
  same weights, so the sampler splits them once per call (inside its jit, outside its
  loops) and runs the layers unrolled. Params already unstacked are returned as they are."""
  if "layers" not in params:
    return params
  rest = {k: v for k, v in params.items() if k != "layers"}
  n = jax.tree.leaves(params["layers"])[0].shape[0]
  for i in range(n):
    rest[f"layer_{i}"] = jax.tree.map(lambda p: p[i], params["layers"])
  return rest


def forward_with_cache(params, cfg: SDARConfig, ids: Array, mask: Array, positions: Array,
                       cache: KVCache, logits_start: int = 0,
                       rope_table: Optional[RopeTable] = None,
                       logits_rows: Optional[Array] = None) -> tuple[Array, KVCache]:
  """Decode step: a query block ids [B, T] attends to ``cache`` (length S) and itself
  under mask [B, T, S+T] (or a :class:`t3d_jax.masks.CacheMask`). Returns the logits of
  rows ``logits_start``.. and the block's own keys/values, which the caller appends
  (``write_cache``) once it is committed. ``params`` may be stacked or
  :func:`unstack_layers`'d (the layers then run unrolled; also in :func:`forward`).
  ``rope_table``: a :class:`RopeTable` covering ``positions``, made once by a decoding
  loop."""
  return _module(cfg, params).apply({"params": params}, ids, mask, positions, cache,
                                    logits_start, rope_table, logits_rows)


def _module(cfg: SDARConfig, params) -> SDAR:
  """The network for ``params``' layout: scanned layers, or unrolled (unstacked)."""
  return SDAR(cfg, unrolled="layers" not in params)


def write_cache(cache: KVCache, new: KVCache, start: Array, count: Optional[int] = None,
                rows: Optional[Array] = None) -> KVCache:
  """Write the first ``count`` tokens of ``new`` into ``cache`` at per-row offsets
  ``start`` [B] (a static-shape append), in the rows where ``rows`` [B] (default all).

  One in-place update per row and layer (a loop over the batch): batching the update over
  rows made XLA move the batch axis of the whole cache to the front and back on every
  write."""
  count = new.length if count is None else count
  rows = jnp.ones(start.shape, bool) if rows is None else rows

  def put(r, c):  # row r's [1, KV, count, D] at slot start[r] of each layer's [B, KV, S, D]
    at = (r, 0, start[r], 0)

    def one(buf, n):
      n = jax.lax.dynamic_slice_in_dim(n, r, 1, axis=0)[:, :, :count].astype(buf.dtype)
      keep = jax.lax.dynamic_slice(buf, at, n.shape)
      return jax.lax.dynamic_update_slice(buf, jnp.where(rows[r], n, keep), at)
    return jax.tree.map(one, c, new)
  return jax.lax.fori_loop(0, start.shape[0], put, cache)
