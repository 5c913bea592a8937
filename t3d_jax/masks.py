"""Every attention mask and position-id rule of T3D, as pure functions of shapes.

Convention everywhere: bool arrays, True = the row (query) may attend to the column (key).

Training layout (docs/method.md §2): the model input is [prompt (L0) | clean x0 (L1) |
noisy xt (L1)], N = L0 + 2*L1.
  * noisy block i sees the prompt, clean blocks < i, and all of noisy block i;
  * clean block i sees the prompt and clean blocks 0..i (block-causal);
  * the prompt is block-causal in blocks aligned to its END (position L0);
  * prompt pad keys are hidden from every row; a prompt row left with no visible key
    attends to itself only.
Response blocks are counted from the response start; the last one may be partial.

:class:`TrainingLayout` is that layout as one object: from its three numbers it builds
the dense mask, the position ids and the model's attention fast-path hints
(:class:`LayoutMask`), so a mask and its hints cannot disagree.
"""
from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


def _training_blocks(prompt_len: int, response_len: int, block_size: int):
  """Per position of [prompt | x0 | xt]: (segment 0/1/2, block index), numpy (static).

  Prompt block ids are negative, aligned so that block -1 ends at position L0."""
  if block_size <= 0:
    raise ValueError(f"block_size must be positive, got {block_size}")
  if prompt_len < 0 or response_len < 0:
    raise ValueError(f"negative length: prompt_len={prompt_len}, response_len={response_len}")
  p = np.arange(prompt_len)
  r = np.arange(response_len)
  seg = np.concatenate([np.zeros(prompt_len, np.int32), np.ones(response_len, np.int32),
                        np.full(response_len, 2, np.int32)])
  blk = np.concatenate([(p - prompt_len) // block_size, r // block_size, r // block_size])
  return seg, blk


def training_mask(prompt_len: int, response_len: int, block_size: int) -> np.ndarray:
  """The T3D training mask [N, N], N = prompt_len + 2*response_len, without padding
  (numpy: a static function of the three numbers)."""
  seg, blk = _training_blocks(prompt_len, response_len, block_size)
  qs, qb = seg[:, None], blk[:, None]
  ks, kb = seg[None, :], blk[None, :]
  prompt_key = ks == 0
  allow_prompt_row = (qs == 0) & prompt_key & (kb <= qb)
  allow_clean_row = (qs == 1) & (prompt_key | ((ks == 1) & (kb <= qb)))
  allow_noisy_row = (qs == 2) & (prompt_key | ((ks == 1) & (kb < qb)) | ((ks == 2) & (kb == qb)))
  return allow_prompt_row | allow_clean_row | allow_noisy_row


def training_batch_mask(ids: jnp.ndarray, prompt_len: int, block_size: int,
                        pad_id: int) -> jnp.ndarray:
  """Pad-aware training mask [B, N, N] from the [prompt | x0 | xt] ids [B, N].

  Prompt positions holding ``pad_id`` are hidden as keys (prompts are left-padded);
  prompt rows that then see nothing attend to themselves only. Response pads stay
  visible: the model is trained to predict them (``post_num``)."""
  b, n = ids.shape
  response_len = (n - prompt_len) // 2
  if prompt_len + 2 * response_len != n:
    raise ValueError(f"ids length {n} is not prompt_len + 2*response_len (prompt_len={prompt_len})")
  base = training_mask(prompt_len, response_len, block_size)
  prompt_pad = (jnp.arange(n)[None, :] < prompt_len) & (ids == pad_id)     # [B, N]
  mask = base[None] & ~prompt_pad[:, None, :]
  empty = ~mask.any(-1) & (jnp.arange(n)[None, :] < prompt_len)            # [B, N]
  return mask | (empty[:, :, None] & jnp.eye(n, dtype=bool)[None])


def training_positions(ids: jnp.ndarray, prompt_len: int, pad_id: int) -> jnp.ndarray:
  """Position ids [B, N] for [prompt | x0 | xt]: prompt positions count non-pad tokens,
  the response continues from there, the noisy copy reuses the clean positions. Pad
  prompt positions get 1 (as the released code; they are hidden anyway)."""
  n = ids.shape[1]
  response_len = (n - prompt_len) // 2
  head = ids[:, : prompt_len + response_len]
  valid = (jnp.arange(prompt_len + response_len)[None] >= prompt_len) | (head != pad_id)
  pos = jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1
  pos = jnp.where(valid, pos, 1)
  return jnp.concatenate([pos, pos[:, prompt_len:]], axis=1)


def causal_mask(length: int) -> jnp.ndarray:
  """Plain causal mask [T, T] (AR reference; not used by SDAR decoding)."""
  return jnp.tril(jnp.ones((length, length), bool))


def staircase_mask(length: int, block_size: int, offset: int = 0) -> jnp.ndarray:
  """Block-causal prefill mask [T, T], blocks aligned to position -offset: a token sees
  every token of its own block and of earlier blocks."""
  blk = (jnp.arange(length) + offset) // block_size
  return blk[None, :] <= blk[:, None]


def decode_mask(cache_valid: jnp.ndarray, query_len: int,
                query_valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """Decode mask [B, T, S+T]: a query block of T tokens sees every valid cache slot
  (cache_valid [B, S]) and, bidirectionally, every (valid) token of its own block."""
  b, _ = cache_valid.shape
  if query_valid is None:
    query_valid = jnp.ones((b, query_len), bool)
  keys = jnp.concatenate([cache_valid, query_valid], axis=1)
  return jnp.broadcast_to(keys[:, None, :], (b, query_len, keys.shape[1]))


class LayoutMask(flax.struct.PyTreeNode):
  """A T3D training mask, three ways: ``dense`` [B, N, N]; the layout (static), whose
  ``pattern`` [N, N] is the mask without pads and whose facts the model may exploit
  (rows before ``context_len`` see only keys before it; a later row sees those and the
  keys of its own ``noisy_block``-row block); and ``segments`` [B, N] (0 = prompt pad,
  1 = any other token): a kernel masks ``pattern & same segment``, which equals ``dense``
  on every row but the prompt pads' (see :mod:`t3d_jax.models.attention`). Built only by
  :meth:`TrainingLayout.attention`."""
  dense: jax.Array
  segments: jax.Array
  layout: "TrainingLayout" = flax.struct.field(pytree_node=False)

  @property
  def context_len(self) -> int:
    return self.layout.noisy_start

  @property
  def noisy_block(self) -> int:
    return self.layout.block_size

  @property
  def pattern(self) -> np.ndarray:
    return self.layout.mask()


class CacheMask(flax.struct.PyTreeNode):
  """Decode mask of a T-row query block against [cache (S slots) | the block itself]:
  every row sees the valid cache slots (``cache_valid`` [B, S]) and the query keys that
  the static ``own`` pattern [T, T] allows (nested tuples of bools, so it is hashable)."""
  cache_valid: jax.Array
  own: tuple = flax.struct.field(pytree_node=False)

  @classmethod
  def of(cls, cache_valid: jax.Array, own) -> "CacheMask":
    return cls(cache_valid, tuple(tuple(bool(x) for x in row) for row in np.asarray(own)))

  @property
  def pattern(self) -> np.ndarray:
    """[T, S+T]: every cache column, then ``own``."""
    own = np.asarray(self.own, bool)
    return np.concatenate([np.ones((own.shape[0], self.cache_valid.shape[1]), bool), own], 1)

  @property
  def segments(self) -> jax.Array:
    """[B, S+T] int32: 1 for a valid cache slot and every query key, else 0."""
    b, t = self.cache_valid.shape[0], len(self.own)
    return jnp.concatenate([self.cache_valid, jnp.ones((b, t), bool)], 1).astype(jnp.int32)

  @property
  def dense(self) -> jax.Array:
    """[B, T, S+T] bool."""
    return self.pattern[None] & (self.segments[:, None, :] == 1)


class KeyMask(flax.struct.PyTreeNode):
  """Bidirectional attention: each of ``rows`` query rows sees every valid key.

  ``valid`` [B, S+T] over the keys [cache (S slots, none without a cache) | the T query
  tokens]: left pads and, in Fast-dLLM's caches, the slots a step recomputes are invalid.
  The kernel's pattern is all ones and ``segments`` carries the validity (the query rows
  are segment 1: a pad row sees the valid keys, and nothing reads its output)."""
  valid: jax.Array
  rows: int = flax.struct.field(pytree_node=False)

  @property
  def pattern(self) -> np.ndarray:
    return np.ones((self.rows, self.valid.shape[1]), bool)

  @property
  def segments(self) -> jax.Array:
    return self.valid.astype(jnp.int32)

  @property
  def dense(self) -> jax.Array:
    """[B, T, S+T] bool."""
    return jnp.broadcast_to(self.valid[:, None, :], (self.valid.shape[0], self.rows,
                                                     self.valid.shape[1]))


@dataclasses.dataclass(frozen=True)
class TrainingLayout:
  """[prompt (L0) | clean x0 (L1) | noisy xt (L1)], response blocks of ``block_size``."""
  prompt_len: int
  response_len: int
  block_size: int

  def __post_init__(self):
    _training_blocks(self.prompt_len, self.response_len, self.block_size)  # validates

  @classmethod
  def of_batch(cls, ids_len: int, labels_len: int, block_size: int) -> "TrainingLayout":
    """From a batch's widths: ids N = L0 + 2 L1, labels L0 + L1 ([prompt | x0])."""
    l1 = ids_len - labels_len
    return cls(labels_len - l1, l1, block_size)

  @property
  def length(self) -> int:
    return self.prompt_len + 2 * self.response_len

  @property
  def noisy_start(self) -> int:
    """First noisy row (= L0 + L1): the rows whose logits the losses read."""
    return self.prompt_len + self.response_len

  def mask(self) -> jnp.ndarray:
    return training_mask(self.prompt_len, self.response_len, self.block_size)

  def batch_mask(self, ids: jnp.ndarray, pad_id: int) -> jnp.ndarray:
    self._check(ids)
    return training_batch_mask(ids, self.prompt_len, self.block_size, pad_id)

  def positions(self, ids: jnp.ndarray, pad_id: int) -> jnp.ndarray:
    self._check(ids)
    return training_positions(ids, self.prompt_len, pad_id)

  def attention(self, ids: jnp.ndarray, pad_id: int) -> LayoutMask:
    """The pad-aware mask of ``ids`` with its fast-path hints, from the same numbers."""
    prompt_pad = (jnp.arange(self.length)[None, :] < self.prompt_len) & (ids == pad_id)
    return LayoutMask(self.batch_mask(ids, pad_id), (~prompt_pad).astype(jnp.int32), self)

  def _check(self, ids) -> None:
    if ids.shape[-1] != self.length:
      raise ValueError(f"ids width {ids.shape[-1]} != layout length {self.length} "
                       f"(L0={self.prompt_len}, L1={self.response_len})")
