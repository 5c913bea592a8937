"""DecodeConfig: every knob of block-diffusion decoding, plus input validation.

A frozen (hashable) dataclass, so it is a static argument of the jitted sampler. The
semantics follow docs/method.md §1 with the t3d_jax defaults of §6.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Optional

import numpy as np

from t3d_jax.config_keys import field_type_problem
from t3d_jax.errors import InputError
from t3d_jax.sampling import strategies

STRATEGIES = tuple(strategies.STRATEGIES)  # the names; the functions: strategies.py
PROMPT_MODES = ("engine", "aligned")
COMMIT_MODES = ("separate", "fused")
CACHES = ("none", "prefix", "dual")  # bidirectional families (sampling/canvas.py)


# ``config.decode`` (t3d_jax/config_base.py) is generated from DecodeConfig's fields but
# these, which come from the tokenizer (DecodeConfig.from_config) ...
TOKENIZER_FIELDS = ("mask_id", "stop_ids", "pad_id")
# ... with these defaults of the rollout and eval modes where they differ from the
# library's (greedy, 128 tokens): the released teacher setting (docs/method.md §1, §6)
# at a CPU-sized length (the release decodes 2000 tokens); max_length 0 = none ...
CONFIG_OVERRIDES = dict(temperature=0.1, max_new_tokens=256, max_length=0)
# ... plus the keys that batch the decoding (Batching, below).


# the settings the compiled sampler takes as traced values (steps.Knobs): changing them
# reuses the compiled decoder (a threshold sweep compiles once); stop ids ride in a
# fixed-width array, so at most MAX_STOP_IDS of them
TRACED_FIELDS = ("threshold", "entropy_bound", "temperature", "top_p", "stop_ids")
MAX_STOP_IDS = 8


class DecodeError(InputError):
  """Bad decoding configuration or input; the message names the offending field."""


def token_ids(value, vocab_size: float = float("inf")) -> bool:
  """A list or tuple of integer ids in [0, vocab_size) (JSON true/false are no ids)."""
  return isinstance(value, (list, tuple)) and all(
      isinstance(t, numbers.Integral) and not isinstance(t, bool) and 0 <= t < vocab_size
      for t in value)


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """Block-diffusion decoding settings.

  block_size: tokens per block (b). denoising_steps: forwards per block (s); the block's
    masked positions are revealed over at most s steps on the even schedule (b split as
    evenly as possible, earlier steps taking the remainder).
  strategy: which masked positions a step reveals: 'sequential' (leftmost n),
    'low_confidence_static' (n most confident), 'low_confidence_dynamic' (all with
    confidence > threshold, at least the n most confident), 'entropy_bounded' (lowest
    entropy first, the longest prefix whose cumulative entropy < entropy_bound, at least 1).
  temperature: 0 = greedy (argmax; confidence and entropy from softmax at T = 1);
    otherwise x0 is sampled from softmax(top_p(top_k(logits / T))) and confidence /
    entropy come from that processed distribution. top_k 0 and top_p 1 disable them.
  max_new_tokens: exactly this many tokens per sequence unless a stop id ends it earlier.
  mask_id: the mask token (required). stop_ids: EOS and stop tokens; the block is cut after
    the first one and the sequence finishes. pad_id: fills ids past each length (default
    mask_id).
  prompt_mode: 'engine' (the original engine: prompt prefilled in whole blocks aligned to
    position 0, the tail prompt_len % b placed in the first generated block as already
    revealed) or 'aligned' (the whole prompt prefilled with blocks aligned to its end, the
    response starting on a block boundary, as in training).
  commit_mode: 'separate' (one extra forward per finished block writes its KV, the
    original) or 'fused' (that KV is written by the forward of the next block's first
    step; same results, one forward per block fewer).
  reveal_all_on_last_step: t3d_jax default True: the last allowed step of a block reveals
    every remaining mask. False keeps the original (masks left in the committed block,
    step_map 0 there; only entropy_bounded with s < b can leave masks).
  max_length: optional static budget prompt + new tokens; fixes the KV-cache length
    (max_length + block_size) across batches. Must be a multiple of block_size.
  cache: bidirectional families only (LLaDA, Dream; sampling/canvas.py): 'none' (exact:
    every forward over the whole sequence), 'prefix' or 'dual' (Fast-dLLM's approximate
    caches, refreshed at each block's first step). A block-causal family's KV cache is
    exact and needs no setting.
  unroll_layers: True (default): the layers run unrolled over per-layer weights, split
    once before a batched decode's calls (sampler.decode_params). A scanned layer reads
    its weights through a dynamic slice that XLA materialises, i.e. every forward copies
    all layer weights once more (README, Benchmarks). The price is compile time, which
    grows with depth (36 layers: 2.4 -> 16-18 s on a 2-core CPU), and where the weights
    are tiny (width 64) the unrolled loop was slower; False scans them.
  """
  block_size: int = 4
  denoising_steps: int = 4
  strategy: str = "low_confidence_static"
  threshold: float = 0.9
  entropy_bound: float = 0.35
  temperature: float = 0.0
  top_k: int = 0
  top_p: float = 1.0
  max_new_tokens: int = 128
  mask_id: Optional[int] = None
  stop_ids: tuple = ()
  pad_id: Optional[int] = None
  prompt_mode: str = "engine"
  commit_mode: str = "fused"
  reveal_all_on_last_step: bool = True
  max_length: Optional[int] = None
  cache: str = "none"
  unroll_layers: bool = True

  def __post_init__(self):
    object.__setattr__(self, "stop_ids", tuple(int(t) for t in self.stop_ids))

  def replace(self, **kw) -> "DecodeConfig":
    return dataclasses.replace(self, **kw)

  @classmethod
  def from_config(cls, dc, ids, **overrides) -> "DecodeConfig":
    """From the ``config.decode`` section and a tokenizer's special ids (stop ids: EOS
    plus <|im_end|>/<|endoftext|> where present, plus ``dc.extra_stop_ids``); ``0`` for
    ``max_length`` means none. Validated: a bad value is a DecodeError naming the key."""
    if not token_ids(dc.extra_stop_ids, ids.vocab_size):
      raise DecodeError(f"config.decode: extra_stop_ids={dc.extra_stop_ids!r} must be a list "
                        f"of token ids in [0, {ids.vocab_size})")
    stops = tuple(ids.stop_ids) + tuple(int(t) for t in dc.extra_stop_ids
                                        if int(t) not in ids.stop_ids)
    kw = {f.name: dc[f.name] for f in dataclasses.fields(cls)
          if f.name not in TOKENIZER_FIELDS}
    kw.update(mask_id=ids.mask_id, stop_ids=stops, pad_id=ids.pad_id,
              max_length=dc.max_length or None)
    kw.update(overrides)
    try:
      return cls(**kw).validate(ids.vocab_size)
    except DecodeError as e:
      raise DecodeError(f"config.decode: {e}") from None

  def static(self) -> "DecodeConfig":
    """This config with TRACED_FIELDS at their defaults: what the compiled sampler is
    keyed on (the traced values come from steps.Knobs.of(self))."""
    return dataclasses.replace(self, **{f.name: f.default for f in dataclasses.fields(self)
                                        if f.name in TRACED_FIELDS})

  def prompt_tail(self, prompt_len: int) -> int:
    """Prompt tokens that sit in the first generated block (engine prompt mode)."""
    return prompt_len % self.block_size if self.prompt_mode == "engine" else 0

  @property
  def pad(self) -> int:
    return self.mask_id if self.pad_id is None else self.pad_id

  def validate(self, vocab_size: Optional[int] = None) -> "DecodeConfig":
    """Raise DecodeError naming the first bad field; return self."""
    def bad(msg):
      raise DecodeError(f"DecodeConfig: {msg}")
    problem = field_type_problem(type(self), vars(self))
    if problem:
      bad(problem)
    if self.mask_id is None:
      bad("mask_id is required (the tokenizer has no mask token?); "
          "t3d_jax never falls back to the pad id")
    if self.block_size < 1:
      bad(f"block_size must be >= 1, got {self.block_size}")
    if self.denoising_steps < 1:
      bad(f"denoising_steps must be >= 1, got {self.denoising_steps}")
    if self.strategy not in STRATEGIES:
      bad(f"strategy {self.strategy!r} is not one of {STRATEGIES}")
    if self.prompt_mode not in PROMPT_MODES:
      bad(f"prompt_mode {self.prompt_mode!r} is not one of {PROMPT_MODES}")
    if self.cache not in CACHES:
      bad(f"cache {self.cache!r} is not one of {CACHES}")
    if self.commit_mode not in COMMIT_MODES:
      bad(f"commit_mode {self.commit_mode!r} is not one of {COMMIT_MODES}")
    if self.temperature < 0:
      bad(f"temperature must be >= 0, got {self.temperature}")
    if self.top_k < 0:
      bad(f"top_k must be >= 0 (0 = off), got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      bad(f"top_p must be in (0, 1], got {self.top_p}")
    if len(self.stop_ids) > MAX_STOP_IDS:
      bad(f"{len(self.stop_ids)} stop ids: at most {MAX_STOP_IDS} (a traced fixed-width "
          "array of the compiled sampler)")
    if self.max_new_tokens < 1:
      bad(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
    if self.max_length is not None and self.max_length % self.block_size:
      bad(f"max_length={self.max_length} is not a multiple of block_size={self.block_size} "
          "(the KV-cache layout is made of whole blocks)")
    if self.max_length is not None and self.max_length < self.max_new_tokens:
      bad(f"max_length={self.max_length} < max_new_tokens={self.max_new_tokens}")
    if vocab_size is not None:
      ids = {"mask_id": self.mask_id, "pad_id": self.pad}
      ids.update({f"stop_ids[{i}]": t for i, t in enumerate(self.stop_ids)})
      for name, t in ids.items():
        if not 0 <= t < vocab_size:
          bad(f"{name}={t} is outside the vocabulary [0, {vocab_size})")
      if self.mask_id in self.stop_ids:
        bad(f"mask_id={self.mask_id} is also a stop id")
    return self


def transfer_schedule(block_size: int, steps: int) -> np.ndarray:
  """Tokens to reveal at each step of a block: b split evenly, remainder first."""
  base, rem = divmod(block_size, steps)
  return np.array([base + (i < rem) for i in range(steps)], np.int32)


def cache_length(dcfg: DecodeConfig, prompt_width: int) -> int:
  """KV-cache slots for prompts of padded width ``prompt_width``: prompt + new tokens
  rounded up to whole blocks, plus one block for the last block's overhang."""
  b = dcfg.block_size
  if dcfg.max_length is not None:
    return dcfg.max_length + b
  return -(-(prompt_width + dcfg.max_new_tokens) // b) * b + b


def check_inputs(dcfg: DecodeConfig, vocab_size: int, prompt_ids, prompt_lens) -> None:
  """Validate config and (concrete) prompts; raise DecodeError naming the problem."""
  dcfg.validate(vocab_size)
  shape = tuple(np.shape(prompt_ids))
  if len(shape) != 2:
    raise DecodeError(f"prompt_ids must be [batch, width], got shape {shape}")
  if tuple(np.shape(prompt_lens)) != shape[:1]:
    raise DecodeError(f"prompt_lens must be [batch]={shape[:1]}, got {np.shape(prompt_lens)}")
  if dcfg.max_length is not None and shape[1] > dcfg.max_length:
    raise DecodeError(f"prompt width {shape[1]} exceeds max_length={dcfg.max_length}")
  try:
    lens = np.asarray(prompt_lens)
  except Exception:  # traced: nothing more to check here
    return
  if lens.size and (lens.min() < 0 or lens.max() > shape[1]):
    raise DecodeError(f"prompt_lens must lie in [0, {shape[1]}] (the padded width), got "
                      f"min {lens.min()} max {lens.max()}")
  if dcfg.max_length is not None and lens.size:
    i = int(np.argmax(lens))
    if lens[i] + dcfg.max_new_tokens > dcfg.max_length:
      raise DecodeError(
          f"prompt too long: row {i} has {int(lens[i])} prompt tokens + max_new_tokens="
          f"{dcfg.max_new_tokens} > max_length={dcfg.max_length}")


@dataclasses.dataclass(frozen=True)
class Batching:
  """The decode section's keys that group prompts into calls (they never change a
  sequence's tokens: each draws from its own key)."""
  batch_size: int = 8          # sequences per decoding call
  data_parallel: bool = False  # shard each batch over this host's devices
  width_multiple: int = 64     # prompt widths rounded up to this
  extra_stop_ids: tuple = ()   # added to EOS/<|im_end|>/<|endoftext|>

  def __post_init__(self):
    problem = field_type_problem(type(self), vars(self))
    if problem:
      raise DecodeError(f"config decode.{problem}")
    if not token_ids(self.extra_stop_ids):
      raise DecodeError(f"config decode.extra_stop_ids={self.extra_stop_ids!r} must be a "
                        "list of token ids")
    for key in ("batch_size", "width_multiple"):
      if getattr(self, key) < 1:
        raise DecodeError(f"config decode.{key} must be >= 1, got {getattr(self, key)}")

  @classmethod
  def of(cls, dc) -> "Batching":
    """From the ``config.decode`` section."""
    return cls(**{f.name: dc[f.name] for f in dataclasses.fields(cls) if f.name in dc})


BATCHING_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Batching)}
