"""Training examples for T3D distillation and masked-diffusion pretraining (t3d-method.md §2).

Host-side numpy, vectorised over the whole batch (no per-token Python loops). From
left-padded prompt ids [B, L0], right-padded response ids [B, L1] and the teacher's
step_maps [B, L1] it builds the model input [prompt | x0 | xt] (N = L0 + 2*L1), the
labels [prompt | x0], p_mask over [prompt | response], position ids and a keep flag.
The attention mask is not materialised here ([B, N, N] is large): the update step builds
it on device with ``t3d_jax.masks.training_batch_mask(ids, L0, block_size, pad_id)``
(see :func:`attention_mask`).

Step maps: ``step_map[b, i]`` is the 1-based global denoising step at which response
token i was first revealed. ``-1`` means "already revealed" (e.g. a prompt tail); it is
ordered before every step. Entries at or past ``response_len`` are ignored here (the
returned ``step_map`` holds -1 there, the released path loss's own padding value).

Randomness: every random choice of example b is a pure function of ``seeds[b]`` (a
counter-based splitmix64 hash of (seed, stream, position)), so an example's noise does
not depend on its batch neighbours or on the padded length. :func:`example_seeds`
derives per-example seeds from (base seed, step, example index): "fresh noise every
time an example is drawn"; pass step=0 for the original's fixed noise.

Masking (one ratio r per example, drawn with probability ∝ r**mask_ratio_exponent):

* ``mask_strategy='trace'``: per response block of ``block_size`` positions, of the
  ``count`` response tokens mask floor(r * count), ordered by step_map:
  - ``mask_order='trajectory'`` (default): mask the LATEST revealed, keeping whole
    groups of tokens revealed at the same step together (the masked count rounds DOWN
    to a group boundary), so each block of xt is exactly a state the teacher's
    trajectory passed through: visible = the tokens revealed at or before some step.
  - ``mask_order='original'``: mask the EARLIEST revealed, as the released code does.
    Ties are broken by position (stable sort). That is what the released code's
    ``torch.argsort`` does on CPU (where it ran) for blocks of up to 16 positions
    (torch uses an insertion sort there); for larger blocks torch's tie order is not
    reproduced.
* ``mask_strategy='random'``: per block, floor(r * count) uniformly random positions.
* ``random_ratio``: of each example's masked positions, max(1, int(n * random_ratio))
  get a uniformly random token in [0, vocab_size) instead of the mask token (they stay
  in p_mask). The original draws from ``tokenizer.vocab_size`` (the base vocabulary,
  no added special tokens): pass that as ``vocab_size``.
* Pads (positions at or past ``response_len``), t3d_jax default: always masked in xt;
  the first ``post_num`` of them are in p_mask (the student learns to end); random
  tokens are drawn among the p_mask positions. ``original_pads=True`` reproduces the
  released code: in trace mode pads are never masked (visible in xt); in random mode the
  block count includes pads; then among masked positions holding ``pad_id`` only the
  first ``post_num`` stay in p_mask, and random tokens are drawn among all masked ones.
* Ratios are rounded to float32 before floor(r * count), as the released code (a
  float32 tensor) does: for r = 0.7 and 10 tokens that masks 6, not 7.

Examples whose p_mask is empty get ``keep = False``; :func:`drop_empty` removes them
and reports how many.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from t3d_jax import masks
from t3d_jax.config_base import dataclass_from_config

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MASK_STRATEGIES = ("trace", "random")
_MASK_ORDERS = ("trajectory", "original")

# Independent random streams of one example.
_STREAM_RATIO, _STREAM_MASK, _STREAM_RANDOM_PICK, _STREAM_RANDOM_TOKEN = 1, 2, 3, 4
_STREAM_PRETRAIN_T, _STREAM_PRETRAIN_MASK = 5, 6


@dataclasses.dataclass(frozen=True)
class ExampleConfig:
  """The config keys read by the example builders, with their defaults."""
  block_size: int = 8
  mask_ratios: tuple = (1.0, 0.75, 0.5, 0.25)
  mask_ratio_exponent: float = 8.0
  mask_strategy: str = "trace"          # trace | random
  mask_order: str = "trajectory"        # trajectory | original
  random_ratio: float = 0.1
  post_num: Optional[int] = 2           # None: every pad position stays in p_mask
  original_pads: bool = False           # True: the released code's pad handling
  pretrain_eps: float = 1e-3            # pretrain: t ~ U(eps, 1]

  def __post_init__(self):
    if self.block_size <= 0:
      raise ValueError(f"block_size must be positive, got {self.block_size}")
    if self.mask_strategy not in _MASK_STRATEGIES:
      raise ValueError(f"mask_strategy must be one of {_MASK_STRATEGIES}, "
                       f"got {self.mask_strategy!r}")
    if self.mask_order not in _MASK_ORDERS:
      raise ValueError(f"mask_order must be one of {_MASK_ORDERS}, got {self.mask_order!r}")
    ratios = tuple(float(r) for r in np.atleast_1d(np.asarray(self.mask_ratios, float)))
    if not ratios or any(not 0.0 <= r <= 1.0 for r in ratios):
      raise ValueError(f"mask_ratios must be a non-empty list of values in [0, 1], "
                       f"got {self.mask_ratios!r}")
    object.__setattr__(self, "mask_ratios", ratios)
    if not 0.0 <= self.random_ratio <= 1.0:
      raise ValueError(f"random_ratio must be in [0, 1], got {self.random_ratio}")
    if self.post_num is not None and self.post_num < 0:
      raise ValueError(f"post_num must be >= 0 or None, got {self.post_num}")
    if not 0.0 <= self.pretrain_eps < 1.0:
      raise ValueError(f"pretrain_eps must be in [0, 1), got {self.pretrain_eps}")

  @classmethod
  def from_config(cls, cfg: Any, **overrides) -> "ExampleConfig":
    """Reads the known keys from a ConfigDict / mapping / object (others ignored)."""
    return dataclass_from_config(cls, cfg, **overrides)

  def ratio_probs(self) -> np.ndarray:
    """Probability of each entry of mask_ratios: ∝ r ** mask_ratio_exponent."""
    w = np.asarray(self.mask_ratios, np.float64) ** float(self.mask_ratio_exponent)
    if not w.sum() > 0:
      raise ValueError(f"mask_ratios {self.mask_ratios} all have zero weight")
    return w / w.sum()


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


def _as_seeds(seeds, batch: int) -> np.ndarray:
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


def sample_ratio_idx(seeds: np.ndarray, cfg: ExampleConfig) -> np.ndarray:
  """Index into cfg.mask_ratios per example [B], P(i) ∝ mask_ratios[i] ** exponent."""
  u = uniform(np.asarray(seeds, _U64), _STREAM_RATIO, 1)[:, 0]
  cdf = np.cumsum(cfg.ratio_probs())
  return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


# ----------------------------------------------------------------------------- helpers

def _blocks(x: np.ndarray, block_size: int, fill) -> np.ndarray:
  """[B, L1] -> [B, NB, block_size], the partial last block padded with ``fill``."""
  b, n = x.shape
  nb = -(-n // block_size)
  out = np.full((b, nb * block_size), fill, dtype=x.dtype)
  out[:, :n] = x
  return out.reshape(b, nb, block_size)


def _unblock(x: np.ndarray, n: int) -> np.ndarray:
  return x.reshape(x.shape[0], -1)[:, :n]


def _ranks(key: np.ndarray) -> np.ndarray:
  """Rank of every entry along the last axis under a stable ascending sort."""
  order = np.argsort(key, axis=-1, kind="stable")
  ranks = np.empty_like(order)
  np.put_along_axis(ranks, order, np.broadcast_to(np.arange(key.shape[-1]), key.shape), -1)
  return ranks


def _count_to_mask(count: np.ndarray, ratio: np.ndarray) -> np.ndarray:
  """floor(count * r), r rounded to float32 first (as the released code's tensor)."""
  r = ratio.astype(np.float32).astype(np.float64)
  return np.floor(count * r.reshape(r.shape + (1,) * (count.ndim - 1))).astype(np.int64)


def trace_mask(step_map: np.ndarray, eligible: np.ndarray, ratio: np.ndarray,
               block_size: int, order: str = "trajectory") -> np.ndarray:
  """Bool [B, L1]: the positions masked by ``mask_strategy='trace'``.

  step_map [B, L1] ints; eligible [B, L1] bool (the positions that have a step);
  ratio [B]. See the module docstring for the two orders."""
  if order not in _MASK_ORDERS:
    raise ValueError(f"mask_order must be one of {_MASK_ORDERS}, got {order!r}")
  n = step_map.shape[1]
  big = np.iinfo(np.int64).max
  sm = _blocks(np.asarray(step_map, np.int64), block_size, 0)
  el = _blocks(np.asarray(eligible, bool), block_size, False)
  key = np.where(el, sm, big)
  count = el.sum(-1)
  n_mask = _count_to_mask(count, ratio)                               # [B, NB]
  if order == "original":
    masked = el & (_ranks(key) < n_mask[..., None])
  else:
    visible = count - n_mask
    ordered = np.sort(key, axis=-1)
    thr = np.take_along_axis(ordered, np.maximum(visible - 1, 0)[..., None], -1)
    thr = np.where(visible[..., None] > 0, thr, np.iinfo(np.int64).min)
    masked = el & (sm > thr)
  return _unblock(masked, n)


def random_block_mask(u: np.ndarray, eligible: np.ndarray, ratio: np.ndarray,
                      block_size: int) -> np.ndarray:
  """Bool [B, L1]: floor(r * count) eligible positions per block, those with the
  smallest uniform keys ``u`` [B, L1]."""
  n = u.shape[1]
  el = _blocks(np.asarray(eligible, bool), block_size, False)
  key = np.where(el, _blocks(u, block_size, 2.0), 2.0)
  n_mask = _count_to_mask(el.sum(-1), ratio)
  return _unblock(el & (_ranks(key) < n_mask[..., None]), n)


def random_token_positions(u: np.ndarray, candidates: np.ndarray,
                           random_ratio: float) -> np.ndarray:
  """Bool [B, L1]: per row, max(1, int(n * random_ratio)) of the n candidate positions
  (none if n == 0 or random_ratio == 0), those with the smallest keys ``u``."""
  n = candidates.sum(1)
  k = np.floor(n * float(random_ratio)).astype(np.int64)
  k = np.where((n > 0) & (random_ratio > 0), np.minimum(np.maximum(k, 1), n), 0)
  key = np.where(candidates, u, 2.0)
  return candidates & (_ranks(key) < k[:, None])


def _check_inputs(prompt_ids, response_ids, step_map=None):
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


def _response_len(response_len, response_ids, pad_id):
  if response_len is None:
    return infer_response_len(response_ids, pad_id)
  rl = np.asarray(response_len, np.int64).reshape(-1)
  if rl.shape != (response_ids.shape[0],) or (rl < 0).any() or (rl > response_ids.shape[1]).any():
    raise ValueError(f"response_len must be [B] in [0, {response_ids.shape[1]}], got {rl}")
  return rl


def _pad_positions(response_len: np.ndarray, n: int, post_num: Optional[int]):
  """(inside [B, L1], past [B, L1], trained pads [B, L1]) for the t3d_jax pad rule."""
  pos = np.arange(n)[None, :]
  inside = pos < response_len[:, None]
  past = ~inside
  trained = past if post_num is None else past & (pos - response_len[:, None] < post_num)
  return inside, past, trained


def _assemble(prompt_ids, response_ids, xt, p_mask_resp, pad_id):
  """ids [B, N], labels [B, L0+L1], p_mask [B, L0+L1], positions [B, N], keep [B]."""
  b, l0 = prompt_ids.shape
  ids = np.concatenate([prompt_ids, response_ids, xt], axis=1).astype(np.int32)
  labels = ids[:, : l0 + response_ids.shape[1]].copy()
  p_mask = np.concatenate([np.zeros((b, l0), bool), p_mask_resp], axis=1)
  with jax.default_device(jax.local_devices(backend="cpu")[0]):
    positions = np.asarray(masks.training_positions(jnp.asarray(ids), l0, pad_id), np.int32)
  return dict(ids=ids, labels=labels, p_mask=p_mask, positions=positions,
              keep=p_mask.any(1))


# ----------------------------------------------------------------------------- builders

def build_examples(prompt_ids, response_ids, step_map, seeds, cfg: ExampleConfig, *,
                   pad_id: int, mask_id: int, vocab_size: Optional[int] = None,
                   response_len=None, ratio_idx=None) -> dict:
  """T3D distillation examples (§2).

  Args:
    prompt_ids: [B, L0] left-padded prompt ids.
    response_ids: [B, L1] right-padded teacher responses (already capped at
      max_gen_length, see :func:`pad_batch`).
    step_map: [B, L1] ints >= -1, the teacher's reveal step per response token.
    seeds: per-example seeds [B] (see :func:`example_seeds`), or one int, or a numpy
      Generator (then the noise depends on the batch order).
    cfg: :class:`ExampleConfig`.
    pad_id, mask_id: token ids. vocab_size: random tokens are drawn in [0, vocab_size);
      None disables random replacement (as the original without a vocab size).
    response_len: [B] true response lengths; None infers them from trailing pads.
    ratio_idx: [B] forced indices into cfg.mask_ratios (None: sampled from the seeds).

  Returns a dict of numpy arrays: ``ids`` [B, L0+2*L1] int32 ([prompt | x0 | xt]),
  ``labels`` [B, L0+L1] ([prompt | x0]), ``p_mask`` [B, L0+L1] bool, ``positions``
  [B, L0+2*L1] (masks.training_positions), ``keep`` [B] (p_mask non-empty), ``ratio``
  [B] float32, ``ratio_idx`` [B], ``step_map`` [B, L1] (-1 at and past response_len),
  ``response_len`` [B], ``random_tokens`` [B, L1] bool (positions given a random token).
  """
  prompt_ids, response_ids, step_map = _check_inputs(prompt_ids, response_ids, step_map)
  b, n = response_ids.shape
  seeds = _as_seeds(seeds, b)
  rlen = _response_len(response_len, response_ids, pad_id)
  if ratio_idx is None:
    ratio_idx = sample_ratio_idx(seeds, cfg)
  ratio_idx = np.asarray(ratio_idx, np.int64).reshape(b)
  if (ratio_idx < 0).any() or (ratio_idx >= len(cfg.mask_ratios)).any():
    raise ValueError(f"ratio_idx out of range for mask_ratios {cfg.mask_ratios}")
  ratio = np.asarray(cfg.mask_ratios, np.float32)[ratio_idx]
  inside, past, trained_pads = _pad_positions(rlen, n, cfg.post_num)
  if (step_map[inside] < -1).any():
    rows = np.unique(np.nonzero(inside & (step_map < -1))[0]).tolist()
    raise ValueError(f"step_map entries must be >= -1 inside the response (rows {rows})")

  if cfg.mask_strategy == "trace":
    masked = trace_mask(step_map, inside, ratio, cfg.block_size, cfg.mask_order)
  else:
    eligible = np.ones_like(inside) if cfg.original_pads else inside
    masked = random_block_mask(uniform(seeds, _STREAM_MASK, n), eligible, ratio,
                               cfg.block_size)

  if cfg.original_pads:
    noised = masked
    pad_resp = masked & (response_ids == pad_id)
    p_mask_resp = masked
    if cfg.post_num is not None:
      p_mask_resp = masked & ~(pad_resp & (np.cumsum(pad_resp, axis=1) > cfg.post_num))
    candidates = masked
  else:
    noised = masked | past
    p_mask_resp = masked | trained_pads
    candidates = p_mask_resp

  xt = np.where(noised, mask_id, response_ids)
  use_random = vocab_size is not None and cfg.random_ratio > 0
  rand_pos = np.zeros_like(noised)
  if use_random:
    rand_pos = random_token_positions(uniform(seeds, _STREAM_RANDOM_PICK, n), candidates,
                                      cfg.random_ratio)
    tokens = np.floor(uniform(seeds, _STREAM_RANDOM_TOKEN, n) * vocab_size).astype(np.int64)
    xt = np.where(rand_pos, tokens, xt)

  out = _assemble(prompt_ids, response_ids, xt.astype(response_ids.dtype), p_mask_resp,
                  pad_id)
  out.update(ratio=ratio, ratio_idx=ratio_idx, response_len=rlen, random_tokens=rand_pos,
             step_map=np.where(inside, step_map, -1).astype(np.int32))
  return out


def build_pretrain_examples(prompt_ids, response_ids, seeds, cfg: ExampleConfig, *,
                            pad_id: int, mask_id: int, response_len=None) -> dict:
  """Masked-diffusion SFT / pretraining examples in the same [prompt | x0 | xt] layout.

  Per example t ~ U(eps, 1] (eps = cfg.pretrain_eps). The eligible positions are the
  response tokens plus the first ``post_num`` positions past the response end (None: all
  of them); each eligible position is masked with probability t and masked ones form
  p_mask. Positions past the end that are not eligible are masked in xt, never trained.
  Returns the keys of :func:`build_examples` (no ratio / step_map / random_tokens) plus
  ``t`` [B] float32 and ``num_eligible`` [B] (the normaliser of :func:`diffusion_ce`).
  """
  prompt_ids, response_ids, _ = _check_inputs(prompt_ids, response_ids)
  b, n = response_ids.shape
  seeds = _as_seeds(seeds, b)
  rlen = _response_len(response_len, response_ids, pad_id)
  inside, past, trained_pads = _pad_positions(rlen, n, cfg.post_num)
  eligible = inside | trained_pads
  u_t = uniform(seeds, _STREAM_PRETRAIN_T, 1)[:, 0]
  t = 1.0 - (1.0 - cfg.pretrain_eps) * u_t                         # (eps, 1]
  masked = eligible & (uniform(seeds, _STREAM_PRETRAIN_MASK, n) < t[:, None])
  xt = np.where(masked | (past & ~eligible), mask_id, response_ids)
  out = _assemble(prompt_ids, response_ids, xt.astype(response_ids.dtype), masked, pad_id)
  out.update(t=t.astype(np.float32), num_eligible=eligible.sum(1).astype(np.int32),
             response_len=rlen)
  return out


def drop_empty(batch: dict) -> tuple[dict, int]:
  """Removes the examples with ``keep == False`` from every [B, ...] array; returns
  (batch, number dropped)."""
  keep = np.asarray(batch["keep"], bool)
  out = {k: (v[keep] if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == keep.size
             else v) for k, v in batch.items()}
  return out, int(keep.size - keep.sum())


def attention_mask(ids, prompt_len: int, block_size: int, pad_id: int):
  """The pad-aware [B, N, N] training mask of ``ids`` (masks.training_batch_mask)."""
  return masks.training_batch_mask(jnp.asarray(ids), prompt_len, block_size, pad_id)


def pad_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]],
              step_maps: Optional[Sequence[Sequence[int]]], *, pad_id: int,
              max_gen_length: Optional[int] = None, multiple_of: int = 1) -> dict:
  """Collates ragged rows: prompts left-padded to L0, responses (cut at max_gen_length)
  right-padded to L1, step_maps right-padded with -1; both lengths rounded up to
  ``multiple_of`` (e.g. the block size). Returns prompt_ids [B, L0], response_ids
  [B, L1], step_map [B, L1] (if given), response_len [B]."""
  if len(prompts) != len(responses) or (step_maps is not None and len(step_maps) != len(prompts)):
    raise ValueError("prompts, responses and step_maps must have the same number of rows")
  cap = max_gen_length if max_gen_length is not None else max((len(r) for r in responses),
                                                                default=0)
  resp = [list(r)[:cap] for r in responses]
  if step_maps is not None:
    for i, (r, s) in enumerate(zip(responses, step_maps)):
      if len(s) != len(r):
        raise ValueError(f"row {i}: step_map length {len(s)} != response length {len(r)}")
      if len(s) and not np.issubdtype(np.asarray(s).dtype, np.integer):
        raise ValueError(f"row {i}: step_map must hold integers, got {np.asarray(s).dtype}")
  up = lambda x: -(-x // multiple_of) * multiple_of
  l0 = up(max((len(p) for p in prompts), default=0))
  l1 = up(max((len(r) for r in resp), default=0))
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
