"""What the network sees in training, per attention regime: the logits of the response
positions of a [prompt | x0 | xt] batch, for every objective (T3D, the baselines,
pretraining / SFT).

Every batch is built in one layout (:mod:`t3d_jax.distill.examples`,
:mod:`t3d_jax.train.pretrain`): ids [B, L0 + 2 L1] = left-padded prompt, the clean
response x0, a noised copy xt; labels / p_mask over [prompt | x0]. A family's view turns
it into the forward its decoder runs, and :func:`response_logits` returns [B, L1, V]: the
logits that score response token j at the state xt, from which every loss reads.

* ``block_causal`` (SDAR): one forward over [prompt | x0 | xt] under the T3D mask
  (:class:`t3d_jax.masks.TrainingLayout`): noisy block i sees the prompt, the clean
  blocks before it and itself, as the KV-cache decoder sees block i. Every block at once.
* ``bidirectional`` (LLaDA, Dream): every position attends to every other, the later
  masked blocks of the canvas included, so one sequence cannot hold several blocks'
  states. Block i of an example becomes its own row, the decoder's input at that state
  (:mod:`t3d_jax.sampling.canvas`, ``cache='none'``):

      [prompt | x0 blocks < i | xt block i | mask ... mask]     (L0 + L1 tokens)

  with the decoder's key validity (left pads invalid), positions (counted from the first
  real token) and readout (position j's prediction from the output at j - offset,
  :attr:`Family.prediction_offset`: Dream reads it one position earlier). B examples ->
  B * NB rows (NB = L1 / block_size); the response logits are gathered back to [B, L1]
  so that the losses stay the same functions of the same logits. L1 must be whole
  blocks, and equals the decoder's canvas when the batch is padded to it (the distill
  and pretrain modes do: ``max_gen_length`` = ``decode.max_new_tokens``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from t3d_jax import masks
from t3d_jax.errors import InputError
from t3d_jax.models import family as families

Array = jax.Array


def prompt_len(mb: dict) -> int:
  """L0 of a [prompt | x0 | xt] batch (labels are [prompt | x0])."""
  return 2 * mb["labels"].shape[-1] - mb["ids"].shape[-1]


def bidirectional_rows(ids: Array, positions: Array, *, prompt_len: int, block_size: int,
                       mask_id: int, pad_id: int, offset: int) -> dict:
  """The decoder's inputs for every (example, block) of a [prompt | x0 | xt] batch.

  Returns ``ids`` / ``positions`` / ``valid`` [B, NB, L0 + L1] (block i of example b in
  row [b, i]; example-major, so a batch sharded over examples stays sharded when the two
  axes merge) and ``rows`` [B, NB, block_size]: the output rows whose logits score block
  i's tokens (column L0 + i * block_size + k - offset)."""
  b, n = ids.shape
  l0 = prompt_len
  l1 = (n - l0) // 2
  if l0 + 2 * l1 != n:
    raise ValueError(f"ids width {n} is not prompt_len + 2 * L1 (prompt_len={l0})")
  if l1 % block_size:
    raise ValueError(f"a bidirectional family trains whole blocks: response width {l1} is "
                     f"not a multiple of block_size={block_size}")
  nb = l1 // block_size
  prompt, x0, xt = ids[:, :l0], ids[:, l0:l0 + l1], ids[:, l0 + l1:]
  blk = jnp.arange(l1) // block_size                                    # [L1]
  i = jnp.arange(nb)[None, :, None]                                     # [1, NB, 1]
  resp = jnp.where(blk < i, x0[:, None], jnp.where(blk == i, xt[:, None], mask_id))
  view = jnp.concatenate([jnp.broadcast_to(prompt[:, None], (b, nb, l0)),
                          resp.astype(ids.dtype)], axis=-1)
  pos = jnp.broadcast_to(positions[:, None, :l0 + l1], (b, nb, l0 + l1))
  real = jnp.concatenate([prompt != pad_id, jnp.ones((b, l1), bool)], axis=-1)
  rows = (l0 + jnp.arange(nb)[:, None] * block_size + jnp.arange(block_size)[None] - offset)
  rows = jnp.broadcast_to(rows[None], (b, nb, block_size)).astype(jnp.int32)
  return dict(ids=view, positions=pos, valid=jnp.broadcast_to(real[:, None], view.shape),
              rows=rows)


def response_logits(params, model, mb: dict, *, block_size: int, pad_id: int,
                    mask_id: int) -> Array:
  """Logits [B, L1, V] scoring the response tokens of micro-batch ``mb`` (``ids``,
  ``positions``, ``labels``) in ``model``'s family's training view."""
  ids, positions = mb["ids"], mb["positions"]
  layout = masks.TrainingLayout.of_batch(ids.shape[-1], mb["labels"].shape[-1], block_size)
  fam = families.of_config(model)
  net = fam.network
  if fam.attention == "block_causal":
    return net.forward(params, model, ids, layout.attention(ids, pad_id), positions,
                       logits_start=layout.noisy_start)
  v = bidirectional_rows(ids, positions, prompt_len=layout.prompt_len,
                         block_size=block_size, mask_id=mask_id, pad_id=pad_id,
                         offset=fam.prediction_offset)
  b, nb, w = v["ids"].shape
  flat = lambda x: x.reshape((b * nb,) + x.shape[2:])  # noqa: E731
  logits = net.forward(params, model, flat(v["ids"]), masks.KeyMask(flat(v["valid"]), w),
                       flat(v["positions"]), logits_rows=flat(v["rows"]))
  return logits.reshape(b, nb * block_size, -1)      # row (b, i) holds block i of example b


def response_width(model, block_size: int, canvas: int, where: str) -> int:
  """The response width every batch of ``model`` is padded to: 0 for a block-causal
  family (bucketed by ``length_bucket`` as usual), the decoder's canvas
  (``decode.max_new_tokens``) for a bidirectional one, so that the later blocks hold as
  many masks in training as in decoding (an InputError naming ``where`` when the canvas
  is not whole blocks)."""
  if families.of_config(model).attention == "block_causal":
    return 0
  if canvas <= 0 or canvas % block_size:
    raise InputError(f"{where}={canvas} must be a positive multiple of the block size "
                     f"{block_size}: a bidirectional model trains and decodes a canvas of "
                     "whole blocks")
  return canvas
