"""What every [prompt | x0 | xt] training example is made of, whatever the objective.

Host-side numpy, vectorised over the batch: per-example counter-based noise (a
splitmix64 hash of (seed, stream, position), so an example's noise does not depend on
its batch neighbours or on the padded length), collation of ragged rows
(:func:`pad_batch`: prompts left-padded, responses right-padded) and assembly of the
model input, labels, p_mask and positions (:func:`assemble`). The objectives decide
which positions are masked: T3D in :mod:`t3d_jax.distill.examples`, masked-diffusion
pretraining in :mod:`t3d_jax.train.pretrain`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t3d_jax import masks
from t3d_jax.errors import InputError

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)


# ----------------------------------------------------------------------------- randomness

def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
  x = np.asarray(x, _U64)
  x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
  return x ^ (x >> _U64(31))


def example_seeds(seed: int, step: int, index) -> np.ndarray:
  """Per-example seeds [len(index)] (uint64) from a base seed, a draw counter (e.g. the
  epoch or update step) and the examples' dataset indices."""
  index = np.atleast_1d(np.asarray(index)).astype(_U64)
  head = _mix(np.array([(int(seed) * 0x9E3779B97F4A7C15 + 1) % 2**64], _U64))
  head = _mix(head + _U64((int(step) * 0x9E3779B97F4A7C15) % 2**64))
  return _mix(head + index * _GOLDEN + _U64(7))


def as_seeds(seeds, batch: int) -> np.ndarray:
  """uint64 seeds [B] from an int array [B], a single int, or a numpy Generator."""
  if isinstance(seeds, np.random.Generator):
    return seeds.integers(0, 2**63, size=batch, dtype=np.int64).astype(_U64)
  arr = np.asarray(seeds)
  if arr.ndim == 0:
    return example_seeds(int(arr), 0, np.arange(batch))
  if arr.shape != (batch,):
    raise ValueError(f"seeds must have shape ({batch},), got {arr.shape}")
  if not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"seeds must be integers, got dtype {arr.dtype}")
  return arr.astype(_U64)


def uniform(seeds: np.ndarray, stream: int, n: int) -> np.ndarray:
  """Uniform float64 in [0, 1), shape [B, n]; entry (b, i) depends only on
  (seeds[b], stream, i)."""
  offset = _U64((stream * 0xD1B54A32D192ED03) % 2**64)
  base = _mix(np.asarray(seeds, _U64) + offset)
  h = _mix(base[:, None] + (np.arange(n, dtype=_U64) + _U64(1)) * _GOLDEN)
  return (h >> _U64(11)).astype(np.float64) * 2.0**-53


# ----------------------------------------------------------------------------- assembly

def check_inputs(prompt_ids, response_ids, step_map=None):
  prompt_ids = np.asarray(prompt_ids)
  response_ids = np.asarray(response_ids)
  if prompt_ids.ndim != 2 or response_ids.ndim != 2:
    raise ValueError(f"prompt_ids and response_ids must be [B, L]; got "
                     f"{prompt_ids.shape} and {response_ids.shape}")
  if prompt_ids.shape[0] != response_ids.shape[0]:
    raise ValueError(f"batch mismatch: prompt_ids {prompt_ids.shape}, "
                     f"response_ids {response_ids.shape}")
  if step_map is not None:
    step_map = np.asarray(step_map)
    if step_map.shape != response_ids.shape:
      raise ValueError(f"step_map shape {step_map.shape} != response_ids shape "
                       f"{response_ids.shape}")
    if not np.issubdtype(step_map.dtype, np.integer):
      raise ValueError(f"step_map must hold integers, got dtype {step_map.dtype}")
  return prompt_ids, response_ids, step_map


def infer_response_len(response_ids: np.ndarray, pad_id: int) -> np.ndarray:
  """Index after the last non-pad token of each row [B]. Ambiguous when a response
  ends with tokens equal to pad_id: pass response_len explicitly then."""
  nonpad = np.asarray(response_ids) != pad_id
  last = np.where(nonpad.any(1), nonpad.shape[1] - np.argmax(nonpad[:, ::-1], axis=1), 0)
  return last.astype(np.int64)


def response_lengths(response_len, response_ids, pad_id):
  if response_len is None:
    return infer_response_len(response_ids, pad_id)
  rl = np.asarray(response_len, np.int64).reshape(-1)
  if rl.shape != (response_ids.shape[0],) or (rl < 0).any() or (rl > response_ids.shape[1]).any():
    raise ValueError(f"response_len must be [B] in [0, {response_ids.shape[1]}], got {rl}")
  return rl


def pad_positions(response_len: np.ndarray, n: int, post_num: Optional[int]):
  """(inside [B, L1], past [B, L1], trained pads [B, L1]) for the t3d_jax pad rule."""
  pos = np.arange(n)[None, :]
  inside = pos < response_len[:, None]
  past = ~inside
  trained = past if post_num is None else past & (pos - response_len[:, None] < post_num)
  return inside, past, trained


def assemble(prompt_ids, response_ids, xt, p_mask_resp, pad_id):
  """ids [B, N], labels [B, L0+L1], p_mask [B, L0+L1], positions [B, N], keep [B]."""
  b, l0 = prompt_ids.shape
  ids = np.concatenate([prompt_ids, response_ids, xt], axis=1).astype(np.int32)
  labels = ids[:, : l0 + response_ids.shape[1]].copy()
  p_mask = np.concatenate([np.zeros((b, l0), bool), p_mask_resp], axis=1)
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    positions = np.asarray(masks.training_positions(jnp.asarray(ids), l0, pad_id), np.int32)
  return dict(ids=ids, labels=labels, p_mask=p_mask, positions=positions,
              keep=p_mask.any(1))


def check_batching(n: int, micro_batch: int, length_bucket: int, block_size: int,
                   bucket_key: str) -> None:
  """A global batch of ``n`` must split into micro-batches, and padded lengths
  (multiples of ``length_bucket``, the config key ``bucket_key``) into whole blocks."""
  if n % micro_batch:
    raise InputError(f"global batch {n} is not a multiple of micro_batch {micro_batch}")
  if length_bucket % block_size:
    raise InputError(f"{bucket_key}={length_bucket} must be a multiple of "
                     f"examples.block_size={block_size}")


def split_micro_batches(batch: dict, micro_batch: int) -> dict:
  """[B, ...] arrays -> [B / micro_batch, micro_batch, ...] (the step's leading axes)."""
  return {k: v.reshape((-1, micro_batch) + v.shape[1:]) for k, v in batch.items()}


def drop_empty(batch: dict) -> tuple[dict, int]:
  """Removes the examples with ``keep == False`` from every [B, ...] array; returns
  (batch, number dropped)."""
  keep = np.asarray(batch["keep"], bool)
  out = {k: (v[keep] if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == keep.size
             else v) for k, v in batch.items()}
  return out, int(keep.size - keep.sum())


def pad_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
              step_maps: Optional[Sequence[Sequence[int]]], *, pad_id: int,
              max_gen_length: Optional[int] = None, multiple_of: int = 1,
              response_width: int = 0) -> dict:
  """Collates ragged rows: prompts left-padded to L0, responses (cut at max_gen_length)
  right-padded to L1, step_maps right-padded with -1; both lengths rounded up to
  ``multiple_of`` (e.g. the block size), or L1 = ``response_width`` when > 0 (responses
  cut there: a bidirectional family's canvas, t3d_jax/train/views.py). Returns prompt_ids
  [B, L0], response_ids [B, L1], step_map [B, L1] (if given), response_len [B]."""
  if len(prompts) != len(responses) or (step_maps is not None and len(step_maps) != len(prompts)):
    raise ValueError("prompts, responses and step_maps must have the same number of rows")
  cap = max_gen_length if max_gen_length is not None else max((len(r) for r in responses),
                                                                default=0)
  cap = min(cap, response_width) if response_width else cap
  resp = [list(r)[:cap] for r in responses]
  if step_maps is not None:
    for i, (r, s) in enumerate(zip(responses, step_maps)):
      if len(s) != len(r):
        raise ValueError(f"row {i}: step_map length {len(s)} != response length {len(r)}")
      if len(s) and not np.issubdtype(np.asarray(s).dtype, np.integer):
        raise ValueError(f"row {i}: step_map must hold integers, got {np.asarray(s).dtype}")
  up = lambda x: -(-x // multiple_of) * multiple_of
  l0 = up(max((len(p) for p in prompts), default=0))
  l1 = response_width or up(max((len(r) for r in resp), default=0))
  b = len(prompts)
  prompt_ids = np.full((b, l0), pad_id, np.int32)
  response_ids = np.full((b, l1), pad_id, np.int32)
  step_map = np.full((b, l1), -1, np.int32)
  for i in range(b):  # one slice copy per row
    if len(prompts[i]):
      prompt_ids[i, l0 - len(prompts[i]):] = prompts[i]
    response_ids[i, : len(resp[i])] = resp[i]
    if step_maps is not None:
      step_map[i, : len(resp[i])] = list(step_maps[i])[: len(resp[i])]
  out = dict(prompt_ids=prompt_ids, response_ids=response_ids,
             response_len=np.array([len(r) for r in resp], np.int64))
  if step_maps is not None:
    out["step_map"] = step_map
  return out
