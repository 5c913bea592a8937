"""Training examples for T3D distillation (docs/method.md §2).

Host-side numpy, vectorised over the whole batch (no per-token Python loops). From
left-padded prompt ids [B, L0], right-padded response ids [B, L1] and the teacher's
step_maps [B, L1] it builds the model input [prompt | x0 | xt] (N = L0 + 2*L1), the
labels [prompt | x0], p_mask over [prompt | response], position ids and a keep flag.
The attention mask is not materialised here ([B, N, N] is large): the update step builds
it on device from the batch's ``t3d_jax.masks.TrainingLayout``. Seeds, collation and
assembly are shared with pretraining (:mod:`t3d_jax.train.examples`).

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
from typing import Any, Optional

import numpy as np

from t3d_jax.config_keys import dataclass_from_config

# re-exported: the examples API that T3D and pretraining share
from t3d_jax.train.examples import (as_seeds, assemble, check_inputs, drop_empty,  # noqa: F401
                                    example_seeds, infer_response_len, pad_batch,
                                    pad_positions, response_lengths, uniform)

_MASK_STRATEGIES = ("trace", "random")
_MASK_ORDERS = ("trajectory", "original")

# Independent random streams of one example.
_STREAM_RATIO, _STREAM_MASK, _STREAM_RANDOM_PICK, _STREAM_RANDOM_TOKEN = 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class ExampleConfig:
  """The config keys read by the example builders, with their defaults."""
  block_size: int = 4  # SDAR's decoding block (the config's 0 follows decode / rollout)
  mask_ratios: tuple = (1.0, 0.75, 0.5, 0.25)
  mask_ratio_exponent: float = 8.0
  mask_strategy: str = "trace"          # trace | random
  mask_order: str = "trajectory"        # trajectory | original
  random_ratio: float = 0.1
  post_num: Optional[int] = 2           # None: every pad position stays in p_mask
  original_pads: bool = False           # True: the released code's pad handling

  def __post_init__(self):
    if self.block_size <= 0:
      raise ValueError(f"block_size must be positive, got {self.block_size}")
    if self.mask_strategy not in _MASK_STRATEGIES:
      raise ValueError(f"mask_strategy must be one of {_MASK_STRATEGIES}, "
                       f"got {self.mask_strategy!r}")
    if self.mask_order not in _MASK_ORDERS:
      raise ValueError(f"mask_order must be one of {_MASK_ORDERS}, got {self.mask_order!r}")
    try:  # a number or a flat list of numbers
      ratios = np.atleast_1d(np.asarray(self.mask_ratios, float))
      ratios = tuple(float(r) for r in ratios) if ratios.ndim == 1 else ()
    except (TypeError, ValueError):
      ratios = ()
    if not ratios or any(not 0.0 <= r <= 1.0 for r in ratios):
      raise ValueError(f"mask_ratios must be a non-empty list of values in [0, 1], "
                       f"got {self.mask_ratios!r}")
    object.__setattr__(self, "mask_ratios", ratios)
    if not 0.0 <= self.random_ratio <= 1.0:
      raise ValueError(f"random_ratio must be in [0, 1], got {self.random_ratio}")
    if self.post_num is not None and self.post_num < 0:
      raise ValueError(f"post_num must be >= 0 or None, got {self.post_num}")

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

def sample_ratio_idx(seeds: np.ndarray, cfg: ExampleConfig) -> np.ndarray:
  """Index into cfg.mask_ratios per example [B], P(i) ∝ mask_ratios[i] ** exponent."""
  u = uniform(np.asarray(seeds, np.uint64), _STREAM_RATIO, 1)[:, 0]
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
  prompt_ids, response_ids, step_map = check_inputs(prompt_ids, response_ids, step_map)
  b, n = response_ids.shape
  seeds = as_seeds(seeds, b)
  rlen = response_lengths(response_len, response_ids, pad_id)
  if ratio_idx is None:
    ratio_idx = sample_ratio_idx(seeds, cfg)
  ratio_idx = np.asarray(ratio_idx, np.int64).reshape(b)
  if (ratio_idx < 0).any() or (ratio_idx >= len(cfg.mask_ratios)).any():
    raise ValueError(f"ratio_idx out of range for mask_ratios {cfg.mask_ratios}")
  ratio = np.asarray(cfg.mask_ratios, np.float32)[ratio_idx]
  inside, past, trained_pads = pad_positions(rlen, n, cfg.post_num)
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

  out = assemble(prompt_ids, response_ids, xt.astype(response_ids.dtype), p_mask_resp,
                  pad_id)
  out.update(ratio=ratio, ratio_idx=ratio_idx, response_len=rlen, random_tokens=rand_pos,
             step_map=np.where(inside, step_map, -1).astype(np.int32))
  return out


